"""The learned FSGAN stages on tiny random networks (engines' ``.tiny`` registry variants)."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _learned_faces import meshes, source, tracked

import engines
from stream.frames import FaceWork, Frame
from stream.heatmaps import heatmaps_v2
from stream.stages.base import CropSpec, SourceBank, StageChain
from stream.stages.fsgan import (
    FsganBlender,
    FsganCompleter,
    FsganReenactorV1,
    FsganReenactorV2,
    FsganSegmenter,
    SourceCrop,
    from_network,
    interpolate_pose,
    pool_half,
    pyramid,
    soft_erosion,
    to_network,
)

CROP = CropSpec(size=256, scale=1.2)


class Recorder:
    """An engine that records the batch shapes it was called with, around a real one."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.calls: list[tuple[tuple[int, ...], ...]] = []
        self.closed = 0

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        self.calls.append(tuple(x.shape for x in inputs))
        return self.engine(*inputs)

    def close(self) -> None:
        self.closed += 1
        self.engine.close()


def tiny(name: str, **kwargs) -> Recorder:
    torch.manual_seed(0)
    model = engines.create_network(f"{name}.tiny")
    if name == "fsgan_segmentation_v2":  # random logits are nearly flat: favour the face class
        with torch.no_grad():
            model.final.bias[1] += 4.0
    return Recorder(engines.create_engine(model, backend="torch", **kwargs))


def work(name: str = "astronaut", yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0,
         bank: SourceBank | None = None) -> FaceWork:
    image, _ = meshes()[name]
    face = tracked(name, yaw, pitch, roll)
    tf = CROP.transform(face, image.shape[1], image.shape[0])
    assert tf is not None
    src = bank.nearest(face.pose)[0] if bank else source(name)
    return FaceWork(face, tf, tf.extract(image), tf.points_to_crop(face.landmarks), src)


# --- tensors ----------------------------------------------------------------------------------------

def test_network_range_round_trip() -> None:
    img = np.random.default_rng(0).integers(0, 256, (2, 8, 6, 3)).astype(np.uint8)
    x = to_network(img)
    assert x.shape == (2, 3, 8, 6) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_allclose(from_network(x), img, atol=1e-3)
    assert from_network(np.full((1, 3, 2, 2), 5.0)).max() == 255


def test_pyramid_is_fsgans_padded_average_pool() -> None:
    x = np.random.default_rng(1).normal(size=(2, 4, 17, 16)).astype(np.float32)
    ref = F.avg_pool2d(torch.from_numpy(x), 3, stride=2, padding=1, count_include_pad=False).numpy()
    np.testing.assert_allclose(pool_half(x), ref, atol=1e-5)
    levels = pyramid(x[:, :, :16], 2)
    assert [lv.shape for lv in levels] == [(2, 4, 16, 16), (2, 4, 8, 8)]


def test_soft_erosion() -> None:
    mask = np.zeros((128, 128), bool)
    mask[20:110, 30:100] = True
    soft, hard = soft_erosion(mask)
    assert soft.dtype == np.float32 and soft.min() >= 0 and soft.max() == 1.0
    np.testing.assert_array_equal(hard, soft >= 1.0)
    assert hard[65, 65] and not hard[20, 65] and mask[20, 65]
    assert hard.sum() < mask.sum() and np.all(mask[hard])  # eroded
    # Soft edge: falls from 1 across the mask's border to 0 a kernel radius (10 px) outside.
    assert 0 < soft[15, 65] < soft[18, 65] < 1 and soft[9, 65] == 0.0


def test_interpolate_pose() -> None:
    _, mesh = meshes()["astronaut"]
    rot = cv2.Rodrigues(np.array([0.0, 0.6, 0.2]))[0]
    target = mesh.copy()
    target[:, :3] = (mesh[:, :3] - mesh[:, :3].mean(0)) @ rot.T + mesh[:, :3].mean(0) + [20.0, -5.0, 0.0]
    np.testing.assert_allclose(interpolate_pose(mesh, target, 0.0), mesh, atol=1e-3)
    np.testing.assert_allclose(interpolate_pose(mesh, target, 1.0), target, atol=1e-2)
    half = interpolate_pose(mesh, target, 0.5)
    # Half the rotation angle and half the translation.
    c0, c1 = mesh[:, :3].mean(0), half[:, :3].mean(0)
    np.testing.assert_allclose(c1 - c0, [10.0, -2.5, 0.0], atol=1e-2)
    h = (mesh[:, :3] - c0).T @ (half[:, :3] - c1)
    u, _, vt = np.linalg.svd(h)
    angle = np.linalg.norm(cv2.Rodrigues(vt.T @ u.T)[0])
    assert angle == pytest.approx(0.5 * np.linalg.norm([0.0, 0.6, 0.2]), rel=1e-3)


# --- stages -----------------------------------------------------------------------------------------

def test_v2_reenactor_batches_all_faces_and_mixes_the_triangle() -> None:
    bank = SourceBank([source("astronaut", 0, 0), source("hopper", 20, 0), source("astronaut", 0, 20)])
    engine = tiny("fsgan_reenactment_v2")
    stage = FsganReenactorV2(engine)
    stage.set_source(bank)
    exact = work("hopper", yaw=20, pitch=0, bank=bank)  # on a source pose: that source alone
    inside = work("astronaut", yaw=5, pitch=5, bank=bank)  # inside the triangle: all three
    stage.process([exact, inside])
    assert engine.calls == [((4, 101, 256, 256), (4, 101, 128, 128))]  # one batch: 1 + 3 sources
    for w in (exact, inside):
        assert w.reenacted.shape == (256, 256, 3) and w.reenacted.dtype == np.float32
        assert np.isfinite(w.reenacted).all() and w.reenacted.min() >= 0 and w.reenacted.max() <= 255
        assert w.coverage.shape == (256, 256) and np.all(w.coverage == 1)
    stage.close()
    assert engine.closed == 1


def test_v2_reenactor_feeds_the_target_heatmaps_and_the_rolled_source() -> None:
    bank = SourceBank([source("astronaut", roll=0.0)])
    seen: list[tuple[np.ndarray, ...]] = []
    real = tiny("fsgan_reenactment_v2")

    def spy(*inputs: np.ndarray) -> list[np.ndarray]:
        seen.append(tuple(x.copy() for x in inputs))
        return real(*inputs)

    spy.close = real.close  # type: ignore[attr-defined]
    stage = FsganReenactorV2(spy)
    stage.set_source(bank)
    w = work("hopper", roll=-30.0, bank=bank)
    stage.process([w])
    x0, x1 = seen[0]
    from stream.heatmaps import normalize_points
    from stream.landmarks98 import mesh_to_wflw98

    expected = heatmaps_v2(normalize_points(mesh_to_wflw98(w.landmarks)[None], 256), 256)
    np.testing.assert_allclose(x0[0, 3:], expected[0], atol=1e-6)
    assert x1.shape == (1, 101, 128, 128)
    # The source crop is turned by (source roll - target roll) = +30 degrees, counter-clockwise:
    # its eye line, level in the source, now rises to the right (y down).
    crop = stage._sources[0]
    rotated = stage._rotated(crop, -30.0)
    np.testing.assert_allclose(to_network(rotated[None])[0], x0[0, :3], atol=1e-6)
    m = cv2.getRotationMatrix2D((128.0, 128.0), 30.0, 1.0)
    eyes = crop.landmarks[[33, 263], :2] @ m[:, :2].T + m[:, 2]
    tilt = math.degrees(math.atan2(-(eyes[1, 1] - eyes[0, 1]), eyes[1, 0] - eyes[0, 0]))
    base = math.degrees(math.atan2(-(crop.landmarks[263, 1] - crop.landmarks[33, 1]),
                                   crop.landmarks[263, 0] - crop.landmarks[33, 0]))
    assert tilt - base == pytest.approx(30.0, abs=0.5)


def test_v2_reenactor_turns_the_source_to_the_roll_the_stored_pixels_show() -> None:
    # A phone's portrait video: stored sideways, shown upright by its display rotation. The pose's roll is
    # the upright picture's, but the crops are cut from the stored pixels, where the face lies a quarter turn
    # further: the source must be turned to that.
    bank = SourceBank([source("astronaut", roll=0.0)])
    seen: list[np.ndarray] = []
    real = tiny("fsgan_reenactment_v2")

    def spy(*inputs: np.ndarray) -> list[np.ndarray]:
        seen.append(inputs[0][:, :3].copy())
        return real(*inputs)

    spy.close = real.close  # type: ignore[attr-defined]
    stage = FsganReenactorV2(spy)
    stage.set_source(bank)
    w = work("hopper", roll=-30.0, bank=bank)  # -30 degrees in the stored pixels
    upright = dataclasses.replace(w.target.pose, roll=-120.0, display_rotation=90)  # shown a quarter turn on
    w.target = dataclasses.replace(w.target, pose=upright)
    assert upright.image_roll == pytest.approx(-30.0)
    stage.process([w])
    np.testing.assert_allclose(seen[0][0], to_network(stage._rotated(stage._sources[0], -30.0)[None])[0], atol=1e-6)


def test_v1_reenactor_runs_steps_passes() -> None:
    bank = SourceBank([source("astronaut")])
    engine = tiny("fsgan_reenactment_v1")
    stage = FsganReenactorV1(engine, steps=3)
    stage.set_source(bank)
    faces = [work("hopper", bank=bank), work("astronaut", bank=bank)]
    stage.process(faces)
    assert engine.calls == [((2, 71, 256, 256), (2, 71, 128, 128))] * 3
    plan = stage.landmark_steps(stage._sources[id(bank.faces[0])].landmarks, faces[0].landmarks)
    assert len(plan) == 3 and np.array_equal(plan[-1], faces[0].landmarks)
    for w in faces:
        assert w.reenacted.shape == (256, 256, 3) and np.isfinite(w.reenacted).all()
        assert w.coverage.shape == (256, 256) and set(np.unique(w.coverage)) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="steps"):
        FsganReenactorV1(engine, steps=0)


def test_v1_reenactor_at_its_own_crop_scale() -> None:
    """A network trained at crop scale 2.0 in a 1.2 chain: its wider crop is mapped back."""
    bank = SourceBank([source("astronaut")])
    stage = FsganReenactorV1(tiny("fsgan_reenactment_v1"), steps=1, crop_scale=2.0)
    stage.set_source(bank)
    w = work("hopper", bank=bank)
    stage.process([w])
    assert w.reenacted.shape == (256, 256, 3) and np.isfinite(w.reenacted).all()
    assert isinstance(next(iter(stage._sources.values())), SourceCrop)


def test_segment_complete_blend_shapes_and_ranges() -> None:
    bank = SourceBank([source("astronaut")])
    faces = [work("hopper", bank=bank), work("astronaut", bank=bank)]
    for w in faces:
        w.reenacted = w.image.astype(np.float32)[::-1].copy()  # any face-sized image
        w.coverage = np.ones((256, 256), np.float32)
        w.landmarks[[324, 318, 402, 317, 14, 87, 178, 88, 95], 1] += 16  # open the mouth
    seg = tiny("fsgan_segmentation_v2")
    segmenter = FsganSegmenter(seg, remove_mouth=True)
    segmenter.process(faces)
    assert seg.calls == [((4, 3, 256, 256),)]  # targets and reenacted faces in one batch
    for w in faces:
        assert w.face_mask.shape == (256, 256) and w.face_mask.min() >= 0 and w.face_mask.max() == 1
        assert w.mouth_mask.shape == (256, 256) and w.mouth_mask.sum() > 0
        assert w.coverage.shape == (256, 256)
    # remove_mouth keeps the target's inner mouth: less face mask there, nothing more anywhere.
    kept = [FaceWork(w.target, w.crop, w.image, w.landmarks, w.source, reenacted=w.reenacted) for w in faces]
    FsganSegmenter(tiny("fsgan_segmentation_v2"), remove_mouth=False).process(kept)
    for w, k in zip(faces, kept, strict=True):
        assert np.all(w.face_mask <= k.face_mask) and w.face_mask.sum() < k.face_mask.sum()
    completer = FsganCompleter(tiny("fsgan_inpainting_v2"))
    completer.process(faces)
    assert completer.engine.calls == [((2, 4, 256, 256), (2, 4, 128, 128))]
    blender = FsganBlender(tiny("fsgan_blending_v2"))
    blender.process(faces)
    assert blender.engine.calls == [((2, 7, 256, 256), (2, 7, 128, 128))]
    for w in faces:
        assert w.completed.shape == (256, 256, 3) and np.isfinite(w.completed).all()
        assert w.output.shape == (256, 256, 3) and w.output.dtype == np.uint8
        assert w.alpha is w.face_mask


def test_stages_need_network_sized_crops() -> None:
    image, _ = meshes()["astronaut"]
    face = tracked("astronaut")
    tf = CropSpec(size=128).transform(face, image.shape[1], image.shape[0])
    w = FaceWork(face, tf, tf.extract(image), tf.points_to_crop(face.landmarks), source("astronaut"))
    with pytest.raises(ValueError, match="256x256"):
        FsganSegmenter(tiny("fsgan_segmentation_v2")).process([w])


def test_chain_pastes_a_finite_face_into_the_frame() -> None:
    image, _ = meshes()["astronaut"]
    stages = [FsganReenactorV2(tiny("fsgan_reenactment_v2")), FsganSegmenter(tiny("fsgan_segmentation_v2")),
              FsganCompleter(tiny("fsgan_inpainting_v2")), FsganBlender(tiny("fsgan_blending_v2"))]
    chain = StageChain(stages, CROP)
    chain.set_source(SourceBank([source("hopper")]))
    frame = Frame(0, image.copy(), faces=[tracked("astronaut")])
    chain(frame)
    assert frame.modified
    changed = np.any(frame.image != image, axis=2)
    x0, y0, x1, y1 = frame.faces[0].bbox
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 1000
    # Only the face's crop is touched.
    side = max(x1 - x0, y1 - y0) * 1.2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    assert xs.min() >= cx - side / 2 - 2 and xs.max() <= cx + side / 2 + 2
    assert ys.min() >= cy - side / 2 - 2 and ys.max() <= cy + side / 2 + 2
    assert set(frame.timings) >= {"fsgan_reenact_v2", "fsgan_segment", "fsgan_complete", "fsgan_blend"}
    chain.close()


def test_batches_larger_than_max_batch_are_split() -> None:
    bank = SourceBank([source("astronaut", 0, 0), source("hopper", 20, 0), source("astronaut", 0, 20)])
    whole = FsganReenactorV2(tiny("fsgan_reenactment_v2"))
    split = FsganReenactorV2(tiny("fsgan_reenactment_v2"), max_batch=2)
    a, b = [work("astronaut", 5, 5, bank=bank)], [work("astronaut", 5, 5, bank=bank)]
    for stage, faces in ((whole, a), (split, b)):
        stage.set_source(bank)
        stage.process(faces)
    assert [c[0][0] for c in split.engine.calls] == [2, 1]
    np.testing.assert_allclose(a[0].reenacted, b[0].reenacted, atol=1e-3)
