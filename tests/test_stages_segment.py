"""The mesh segmenter: soft face mask inside the oval, open-mouth mask."""

from __future__ import annotations

import numpy as np
import pytest
from stagefaces import astronaut, grace_hopper, rescale, source, work_for

from stream import mesh
from stream.exceptions import InputError
from stream.stages import Stage
from stream.stages.segment import MeshSegmenter, fill_polygon, soft_erode


def _segmented(image: np.ndarray, landmarks: np.ndarray, **options: float):
    work = work_for(image, landmarks, source(*grace_hopper()))
    MeshSegmenter(**options).process([work])
    return work


def _ramp_width(mask: np.ndarray) -> float:
    """Mean width in pixels of the soft edge: the area with 0 < mask < 1 over the edge length."""
    soft = (mask > 0.02) & (mask < 0.98)
    edge = np.abs(np.diff(mask > 0.5, axis=0)).sum() + np.abs(np.diff(mask > 0.5, axis=1)).sum()
    return soft.sum() / max(edge / 1.27, 1)  # 4/pi: axis-aligned steps overcount a curve's length


def test_face_mask_lies_inside_the_face_oval_with_a_soft_edge() -> None:
    work = _segmented(*astronaut())
    mask = work.face_mask
    assert mask is not None and mask.dtype == np.float32 and mask.shape == work.image.shape[:2]
    oval = fill_polygon(mesh.polygon(work.landmarks, mesh.FACE_OVAL), mask.shape).astype(bool)
    assert (mask[~oval] == 0).all()
    nose = np.round(work.landmarks[1, :2]).astype(int)
    assert mask[nose[1], nose[0]] == 1.0
    assert mask.max() == 1.0 and 0.0 < mask[(mask > 0) & (mask < 1)].mean() < 1.0
    # Eroded: the mask's support is well inside the oval, not touching it.
    assert (mask > 0).sum() < 0.9 * oval.sum()
    assert (mask > 0.5).sum() > 0.4 * oval.sum()


def test_soft_edge_scales_with_the_face() -> None:
    small = _segmented(*rescale(*astronaut(), 100)).face_mask
    large = _segmented(*rescale(*astronaut(), 250)).face_mask
    ratio = _ramp_width(large) / _ramp_width(small)
    assert ratio == pytest.approx(2.5, rel=0.2)


def test_forehead_option_lowers_the_top_of_the_mask() -> None:
    img, lm = astronaut()
    full = _segmented(img, lm, forehead=1.0).face_mask
    brows = _segmented(img, lm, forehead=0.0).face_mask
    top = lambda m: np.flatnonzero((m > 0).any(1))[0]  # noqa: E731
    assert top(brows) > top(full) + 5
    assert (brows <= full + 1e-6).all()


def test_mouth_mask_only_when_the_mouth_is_open() -> None:
    closed = _segmented(*grace_hopper())
    assert closed.mouth_mask is not None and not closed.mouth_mask.any()
    smiling = _segmented(*astronaut())
    mouth = smiling.mouth_mask
    assert mouth is not None and mouth.max() == pytest.approx(1.0)
    inner = fill_polygon(mesh.polygon(smiling.landmarks, mesh.LIPS_INNER), mouth.shape).astype(bool)
    assert (mouth[inner] > 0.99).mean() > 0.95
    # It stays near the lips: nothing around the eyes or the chin.
    assert mouth[: int(smiling.landmarks[1, 1])].max() == 0  # above the nose tip
    assert mouth[int(smiling.landmarks[152, 1]):].max() == 0  # below the chin


def test_opening_a_closed_mouth_turns_the_mouth_mask_on_gradually() -> None:
    img, lm = grace_hopper()
    width = np.linalg.norm(lm[78, :2] - lm[308, :2])
    lower = [mesh.LIPS_INNER[i] for i in range(1, 10)]
    peaks = []
    for gap in (0.02, 0.09, 0.2):
        opened = np.array(lm)
        opened[lower, 1] += gap * width
        peaks.append(_segmented(img, opened).mouth_mask.max())
    assert peaks[0] == 0 and 0 < peaks[1] < 1 and peaks[2] == pytest.approx(1.0)


def test_no_erosion_along_the_crop_edge() -> None:
    img, lm = astronaut()
    # Shift the face so its left side leaves the frame: the crop is clipped at the frame border.
    shift = int(lm[:, 0].min()) + 25
    cut = np.ascontiguousarray(img[:, shift:])
    moved = np.array(lm)
    moved[:, 0] -= shift
    work = _segmented(cut, moved)
    assert work.crop.origin[0] == 0
    mask = work.face_mask
    eye_row = int(work.landmarks[33, 1])
    assert mask[eye_row, 0] == 1.0  # the face continues off-frame: full weight up to the border


def test_soft_erode_distances() -> None:
    binary = np.zeros((60, 60), np.uint8)
    binary[10:50, 10:50] = 1
    soft = soft_erode(binary, erode=5, feather=10)
    assert soft[30, 30] == 1.0 and soft[30, 12] == 0.0  # 3 px inside the edge: within the erosion
    assert 0 < soft[30, 22] < 1  # 13 px inside: on the ramp
    assert (np.diff(soft[30, 10:31]) >= 0).all()


def test_segmenter_is_a_stage_and_validates_options() -> None:
    stage = MeshSegmenter()
    assert isinstance(stage, Stage) and stage.kind == "segment"
    with pytest.raises(InputError, match="forehead"):
        MeshSegmenter(forehead=1.5)
    with pytest.raises(InputError, match="mouth_open"):
        MeshSegmenter(mouth_open=(0.2, 0.1))
