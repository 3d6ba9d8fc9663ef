"""Reinhard colour transfer in LAB."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from stagefaces import astronaut, grace_hopper

from stream.exceptions import InputError
from stream.stages.color import FLAT_SPREAD, correct_colors, masked_stats, reinhard_lut, reinhard_transfer, to_lab


def _face_patches() -> tuple[np.ndarray, np.ndarray]:
    a, la = astronaut()
    g, lg = grace_hopper()
    def patch(img: np.ndarray, lm: np.ndarray) -> np.ndarray:
        cx, cy = np.round(lm[1, :2]).astype(int)  # around the nose tip: mostly skin
        return np.ascontiguousarray(img[cy - 40:cy + 40, cx - 40:cx + 40])
    return patch(a, la), patch(g, lg)


def test_transfer_matches_the_reference_statistics_inside_the_masks() -> None:
    src, ref = _face_patches()
    src_mask = np.zeros(src.shape[:2], bool)
    src_mask[10:70, 10:70] = True
    ref_mask = np.zeros(ref.shape[:2], bool)
    ref_mask[20:60, 5:75] = True
    out = reinhard_transfer(src, src_mask, ref, ref_mask)
    assert out.dtype == np.float32 and out.shape == src.shape
    mu_o, sd_o = masked_stats(to_lab(out), src_mask)
    mu_r, sd_r = masked_stats(to_lab(ref), ref_mask)
    mu_s, _ = masked_stats(to_lab(src), src_mask)
    np.testing.assert_allclose(mu_o, mu_r, atol=1.5)
    np.testing.assert_allclose(sd_o, sd_r, rtol=0.15, atol=1.0)
    assert np.abs(mu_s - mu_r).max() > 5  # the two faces really differ to begin with


def test_transfer_undoes_a_colour_cast() -> None:
    src, _ = _face_patches()
    mask = np.ones(src.shape[:2], bool)
    cast = np.clip(src.astype(np.float32) * [1.0, 0.85, 0.7] + [10, 0, 0], 0, 255)
    out = reinhard_transfer(cast, mask, src, mask)
    assert np.abs(out - src).mean() < 0.25 * np.abs(cast - src).mean()


def test_a_grey_reference_gives_a_face_without_colour() -> None:
    src, ref = _face_patches()
    grey = np.repeat(cv2.cvtColor(ref, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    mask = np.ones(src.shape[:2], bool)
    out = to_lab(reinhard_transfer(src, mask, grey, mask))
    assert np.abs(out[..., 1:] - 128).max() <= 2  # no colour left (LAB <-> RGB rounding), not half the source's
    mu_o, sd_o = masked_stats(out, mask)
    mu_r, sd_r = masked_stats(to_lab(grey), mask)
    assert abs(mu_o[0] - mu_r[0]) < 1.5 and abs(sd_o[0] - sd_r[0]) < 0.15 * sd_r[0]  # lightness as before


def test_the_colour_scale_falls_smoothly_to_zero_with_the_references_spread() -> None:
    # A video whose chroma spread hovers near FLAT_SPREAD must not jump between two tints.
    src = (np.full(3, 128.0, np.float32), np.full(3, 8.0, np.float32))
    slopes = []
    for spread in np.linspace(0.0, 2 * FLAT_SPREAD, 41):
        lut = reinhard_lut(src, (np.full(3, 128.0, np.float32), np.full(3, spread, np.float32)))
        slopes.append((int(lut[255, 0, 1]) - int(lut[0, 0, 1])) / 255)
    steps = np.diff(slopes)
    assert slopes[0] == 0 and abs(slopes[-1] - 0.5) < 0.01  # no colour left; the usual floor of 1 / max_gain
    assert (steps >= -0.01).all() and steps.max() < 0.05, slopes  # the clamp alone jumped by 0.5


def test_empty_mask_and_none_mode_leave_the_image() -> None:
    src, ref = _face_patches()
    empty = np.zeros(src.shape[:2], bool)
    np.testing.assert_array_equal(reinhard_transfer(src, empty, ref, ~empty), src.astype(np.float32))
    full = ~empty
    np.testing.assert_array_equal(correct_colors("none", src, full, ref, full), src.astype(np.float32))
    with pytest.raises(InputError, match="lab, none"):
        correct_colors("hsv", src, full, ref, full)  # type: ignore[arg-type]


@pytest.mark.parametrize(("color", "warmed"), [("lab", 1), ("none", 0)])
def test_a_lab_blender_builds_the_lab_tables_when_it_is_made(color: str, warmed: int) -> None:
    # OpenCV builds its 8-bit LAB tables on the first conversion (~0.1 s): the blender does it at
    # set-up so that the first frame with a face does not stall a live stream.
    from stream.stages.blend import MeshBlender
    from stream.stages.color import warm_up_lab

    warm_up_lab.cache_clear()
    MeshBlender(color=color)
    assert warm_up_lab.cache_info().currsize == warmed
