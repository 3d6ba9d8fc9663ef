"""The learned v2 chain as one device op (CPU, fp32, tiny official-format checkpoints) against the
synchronous stage chain on real MediaPipe faces.

Tolerances: the device op's glue is the torch port of the stages' NumPy glue; they differ only in float
round-off (heatmaps in float32 rather than float64, soft erosion as a direct convolution rather than
OpenCV's DFT, pooling summed in another order). Through the four networks that stays below 1e-4 on the
blended crop in 0..255 (5e-5 measured) and 1e-5 on the soft mask (4e-7 measured); rounding to uint8 then
flips the few values that lie within that distance of .5, by 1.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _learned_faces import meshes, pose, source

from engines.executor import CPUDevice
from stream.exceptions import InputError
from stream.frames import Frame, TrackedFace
from stream.stages.base import SourceBank, StageChain
from stream.stages.fsgan import erosion_kernel, from_network, output_pixels, pyramid, soft_erosion, to_network
from stream.stages.fsgan_device import (
    FsganV2DeviceChain,
    from_network_torch,
    overlap_unsupported,
    pyramid_torch,
    soft_erosion_torch,
    to_network_torch,
)
from stream.stages.learned import learned_chain, write_tiny_models

BLEND_ATOL = 1e-4
MASK_ATOL = 1e-5


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fsgan-models")
    write_tiny_models(root, "v2")
    return root


def bank() -> SourceBank:
    return SourceBank([source("hopper", 0, 0), source("hopper", 15, 0), source("hopper", 0, 15)])


def two_face_frame(index: int = 0) -> Frame:
    """The astronaut and Grace Hopper side by side: one face inside the source poses' triangle (three
    sources), one outside it (fewer), so the frame's pairs and faces differ in number."""
    (a, mesh_a), (h, mesh_h) = meshes()["astronaut"], meshes()["hopper"]
    image = np.zeros((max(a.shape[0], h.shape[0]), a.shape[1] + h.shape[1], 3), np.uint8)
    image[:a.shape[0], :a.shape[1]] = a
    image[:h.shape[0], a.shape[1]:] = h
    shifted = mesh_h.copy()
    shifted[:, 0] += a.shape[1]
    faces = []
    for i, (mesh, p) in enumerate(((mesh_a, pose(4, 4, 2)), (shifted, pose(30, 25, -8)))):
        x0, y0 = mesh[:, :2].min(0)
        x1, y1 = mesh[:, :2].max(0)
        faces.append(TrackedFace(i, mesh, p, (float(x0), float(y0), float(x1), float(y1))))
    return Frame(index, image, faces=faces)


class RecordingEngine:
    """Keeps the raw outputs of a real engine (the sync blender's float result before rounding)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.outputs: list[np.ndarray] = []

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        out = self.engine(*inputs)
        self.outputs.append(out[0])
        return out

    def close(self) -> None:
        self.engine.close()


def test_torch_glue_matches_the_numpy_glue() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 16, 12, 3)).astype(np.uint8)
    nchw = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    np.testing.assert_array_equal(to_network_torch(nchw).numpy(), to_network(pixels))
    x = rng.uniform(-1.2, 1.2, (2, 3, 16, 12)).astype(np.float32)
    np.testing.assert_array_equal(from_network_torch(torch.from_numpy(x)).permute(0, 2, 3, 1).numpy(),
                                  from_network(x))
    for a, b in zip(pyramid_torch(torch.from_numpy(x)), pyramid(x), strict=True):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-6)
    masks = np.zeros((2, 96, 80), np.uint8)
    cv2.ellipse(masks[0], (40, 48), (25, 35), 15, 0, 360, 1, -1)
    cv2.rectangle(masks[1], (0, 10), (60, 95), 1, -1)  # touches the border: zero padding matters
    soft, hard = soft_erosion_torch(torch.from_numpy(masks.astype(bool)), torch.from_numpy(erosion_kernel(21)))
    for i in range(2):
        ref_soft, ref_hard = soft_erosion(masks[i].astype(bool))
        np.testing.assert_array_equal(hard[i].numpy(), ref_hard)
        np.testing.assert_allclose(soft[i].numpy(), ref_soft, atol=1e-6)
        assert 0 < ref_hard.sum() < masks[i].sum()


@pytest.mark.parametrize("remove_mouth", [False, True])
def test_device_op_matches_the_synchronous_chain(models: Path, remove_mouth: bool) -> None:
    sync = learned_chain(models, backend="torch", remove_mouth=remove_mouth)
    sync.set_source(bank())
    blender = sync.stages[3]
    blender.engine = RecordingEngine(blender.engine)
    frame_sync = two_face_frame()
    work = sync.build_work(frame_sync)
    for stage in sync.stages:
        stage.process(work)
    ref_blend = from_network(blender.engine.outputs[-1])
    StageChain.paste(frame_sync, work)

    split = FsganV2DeviceChain(learned_chain(models, backend="torch", remove_mouth=remove_mouth))
    split.set_source(bank())
    frame = two_face_frame()
    prepared = split.prepare(frame)
    (batch,) = prepared.batches
    faces, pairs = batch[0].shape[0], batch[4].shape[0]
    assert faces == 2 and pairs > faces and batch[0].dtype == np.uint8  # ragged: faces vs (face, source) pairs
    assert len(batch) == (7 if remove_mouth else 6)
    blended, soft = split.compute(batch)
    assert blended.shape == (2, 256, 256, 3) and soft.shape == (2, 256, 256)
    np.testing.assert_allclose(blended, ref_blend, atol=BLEND_ATOL)
    np.testing.assert_allclose(soft, np.stack([w.face_mask for w in work]), atol=MASK_ATOL)
    rounded = output_pixels(blended)
    reference = np.stack([w.output for w in work])
    assert np.abs(rounded.astype(int) - reference).max() <= 1
    assert np.mean(rounded != reference) < 1e-4

    out = split.finish(frame, prepared, [[blended, soft]])
    assert out is frame and frame.modified and frame.dirty == frame_sync.dirty
    diff = np.abs(frame.image.astype(int) - frame_sync.image.astype(int))
    assert diff.max() <= 1 and np.mean(diff > 0) < 1e-4
    assert np.any(frame.image != two_face_frame().image)  # the faces were replaced
    split.close()
    sync.close()


def test_more_faces_than_a_batch_go_in_several_batches(models: Path) -> None:
    one = FsganV2DeviceChain(learned_chain(models, backend="torch"), max_faces=1)
    one.set_source(bank())
    assert one.max_batch == 3
    frame = two_face_frame()
    prepared = one.prepare(frame)
    assert [b[0].shape[0] for b in prepared.batches] == [1, 1]
    assert [b[4].shape[0] for b in prepared.batches] == [3, 2]  # inside the triangle, on its edge
    one.finish(frame, prepared, [one.compute(b) for b in prepared.batches])

    sync = learned_chain(models, backend="torch")
    sync.set_source(bank())
    ref = sync(two_face_frame())
    diff = np.abs(frame.image.astype(int) - ref.image.astype(int))
    assert diff.max() <= 1 and np.mean(diff > 0) < 1e-4
    one.close()
    sync.close()


def test_frames_without_faces_have_no_batch(models: Path) -> None:
    split = FsganV2DeviceChain(learned_chain(models, backend="torch"))
    split.set_source(bank())
    image = two_face_frame().image
    frame = Frame(3, image.copy())
    prepared = split.prepare(frame)
    assert prepared.batches == []
    assert split.finish(frame, prepared, []) is frame
    assert not frame.modified and np.array_equal(frame.image, image)
    assert isinstance(split.make_device(), CPUDevice)
    split.close()


def test_chains_it_cannot_run_are_refused(models: Path, tmp_path: Path) -> None:
    write_tiny_models(tmp_path, "v1")
    v1 = learned_chain(tmp_path, backend="torch", version="v1")
    assert "v2" in (overlap_unsupported(v1) or "")
    with pytest.raises(InputError, match="v2 chain"):
        FsganV2DeviceChain(v1)

    class NotTorch:
        """A real torch engine behind an interface the device op cannot reach into."""

        def __init__(self, engine) -> None:
            self.engine = engine
            self.device = engine.device

        def __call__(self, *inputs):
            return self.engine(*inputs)

        def close(self) -> None:
            self.engine.close()

    import engines

    wrapped = learned_chain(models, engine_factory=lambda model, **kw: NotTorch(
        engines.create_engine(model, backend="torch", precision=kw["precision"], max_batch=kw["max_batch"])))
    with pytest.raises(InputError, match="torch engines"):
        FsganV2DeviceChain(wrapped)
