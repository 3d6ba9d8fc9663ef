"""The classical completer: Telea inpainting of uncovered face pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from stagefaces import astronaut, grace_hopper, rescale, source, work_for

from stream.exceptions import InputError
from stream.stages import MeshSegmenter, Stage
from stream.stages.complete import ClassicalCompleter, inpaint_holes


def _smooth_face(shape: tuple[int, int]) -> np.ndarray:
    """A smooth synthetic 'skin' image: gentle shading in each channel."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w] / max(h, w)
    r = 170 + 50 * np.sin(2.5 * xs + 0.5) * np.cos(1.5 * ys)
    g = 120 + 40 * xs - 30 * ys
    b = 100 + 30 * np.cos(3 * ys + xs)
    return np.stack([r, g, b], -1).astype(np.float32)


def _work_with_hole(face_px: float, hole_frac: float):
    img, lm = rescale(*astronaut(), face_px)
    work = work_for(img, lm, source(*grace_hopper()))
    MeshSegmenter().process([work])
    truth = _smooth_face(work.image.shape[:2])
    coverage = np.ones(work.image.shape[:2], np.float32)
    centre = np.round(work.landmarks[205, :2]).astype(int)  # on a cheek
    radius = int(hole_frac * face_px)
    cv2.circle(coverage, tuple(int(v) for v in centre), radius, 0.0, -1)
    coverage = cv2.GaussianBlur(coverage, (5, 5), 0)  # a soft coverage edge, as the warp makes
    hole = coverage < 0.5
    work.reenacted = np.where(coverage[..., None] > 0, truth, 0).astype(np.float32)
    work.coverage = coverage
    return work, truth, hole


@pytest.mark.parametrize("face_px", [100, 260])
def test_completion_fills_a_hole_close_to_the_truth(face_px: float) -> None:
    work, truth, hole = _work_with_hole(face_px, 0.12)
    before = work.reenacted.copy()
    stage = ClassicalCompleter()
    stage.process([work])
    out = work.completed
    assert out is not None and out.dtype == np.float32 and out.shape == truth.shape
    err = np.abs(out - truth)[hole].mean()
    naive = np.abs(truth[hole] - truth[~hole & (work.coverage >= 1)].mean(0)).mean()  # mean-colour fill
    assert err < 4.0 and err < 0.5 * naive
    # Fully covered pixels are untouched (the fill is written in place: compare with a copy).
    full = work.coverage >= 1
    np.testing.assert_array_equal(out[full], before[full])
    assert out is work.reenacted


def test_an_eight_bit_warp_is_completed_in_place() -> None:
    """The weight-free chain's warp is uint8: the fill goes into it, rounded, as into a float one."""
    work, truth, hole = _work_with_hole(100, 0.12)
    as_float = ClassicalCompleter().complete(work).copy()
    work, _, _ = _work_with_hole(100, 0.12)
    work.reenacted = np.rint(work.reenacted).astype(np.uint8)
    ClassicalCompleter().process([work])
    out = work.completed
    assert out is work.reenacted and out.dtype == np.uint8
    assert np.abs(out.astype(np.float32) - truth)[hole].mean() < 4.0
    assert np.abs(out.astype(np.float32) - as_float)[hole].max() <= 2


def test_full_coverage_is_passed_through_without_work() -> None:
    img, lm = astronaut()
    work = work_for(img, lm, source(*grace_hopper()))
    MeshSegmenter().process([work])
    work.reenacted = _smooth_face(work.image.shape[:2])
    work.coverage = np.ones(work.image.shape[:2], np.float32)
    ClassicalCompleter().process([work])
    assert work.completed is work.reenacted


def test_holes_outside_the_face_mask_are_left_alone() -> None:
    work, _, _ = _work_with_hole(120, 0.1)
    work.coverage[:] = 1.0
    work.coverage[:5, :5] = 0.0  # a corner of the crop, far outside the face
    ClassicalCompleter().process([work])
    assert work.completed is work.reenacted


def test_inpaint_holes_keeps_known_pixels_and_downscales() -> None:
    img = _smooth_face((80, 90))
    hole = np.zeros((80, 90), bool)
    hole[30:45, 40:60] = True
    for scale in (1.0, 0.5):
        out = inpaint_holes(img, hole, scale=scale)
        np.testing.assert_array_equal(out[~hole], img[~hole])
        assert np.abs(out - img)[hole].mean() < 4.0


def test_completer_needs_a_reenact_stage_and_validates_options() -> None:
    stage = ClassicalCompleter()
    assert isinstance(stage, Stage) and stage.kind == "complete"
    img, lm = astronaut()
    with pytest.raises(RuntimeError, match="reenact"):
        stage.process([work_for(img, lm, source(*grace_hopper()))])
    with pytest.raises(InputError, match="work_size"):
        ClassicalCompleter(work_size=4)
