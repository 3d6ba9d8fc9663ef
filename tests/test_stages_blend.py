"""The blender: its Poisson solver, pyramid blending, and faces at the frame border."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.sparse import lil_matrix
from scipy.sparse.linalg import spsolve
from stagefaces import astronaut, grace_hopper, rescale, source, work_for

from stream import mesh
from stream.exceptions import InputError
from stream.frames import FaceWork
from stream.stages import ClassicalCompleter, MeshSegmenter, MeshWarpReenactor, SourceBank, Stage
from stream.stages.blend import MeshBlender, harmonic_fill, poisson_blend, poisson_correction, pyramid_blend


def _exact_harmonic(values: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """Direct sparse solve of the same discrete problem (4-neighbour Laplacian, replicated border)."""
    h, w = fixed.shape
    idx = -np.ones((h, w), int)
    free = np.argwhere(~fixed)
    idx[~fixed] = np.arange(len(free))
    a = lil_matrix((len(free), len(free)))
    rhs = np.zeros(len(free))
    for n, (y, x) in enumerate(free):
        a[n, n] = 4.0
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            yy, xx = min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)
            if fixed[yy, xx]:
                rhs[n] += values[yy, xx]
            else:
                a[n, idx[yy, xx]] -= 1.0
    out = values.astype(np.float64).copy()
    out[~fixed] = spsolve(a.tocsr(), rhs)
    return out


def test_harmonic_fill_matches_a_direct_solve() -> None:
    rng = np.random.default_rng(1)
    h, w = 48, 56
    yy, xx = np.mgrid[0:h, 0:w]
    free = (yy - 24) ** 2 / 18 ** 2 + (xx - 26) ** 2 / 22 ** 2 < 1
    free[20:30, 50:] = True  # a free strip reaching the image border (Neumann there)
    values = (40 * np.sin(xx / 7.0) + 30 * np.cos(yy / 5.0) + rng.normal(0, 5, (h, w))).astype(np.float32)
    exact = _exact_harmonic(values, ~free)
    approx = harmonic_fill(values[..., None], ~free, sweeps=30, coarse_sweeps=200)[..., 0]
    span = values[~free].max() - values[~free].min()
    assert np.abs(approx - exact)[free].max() < 0.02 * span
    # The default (fast) schedule is a close approximation too.
    fast = harmonic_fill(values[..., None], ~free)[..., 0]
    assert np.abs(fast - exact)[free].mean() < 0.02 * span


def test_poisson_blend_solves_the_guided_interpolation() -> None:
    a, _ = astronaut()
    g, _ = grace_hopper()
    bg = a[100:180, 150:230].astype(np.float32)
    fg = g[150:230, 180:260].astype(np.float32)
    region = np.zeros(bg.shape[:2], np.uint8)
    cv2.ellipse(region, (40, 40), (25, 30), 0, 0, 360, 1, -1)
    region = region > 0
    ours = poisson_blend(fg, bg, region, robust=0.0)
    np.testing.assert_array_equal(ours[~region], bg[~region])
    # fg's gradients inside, bg at the edge: fg + the harmonic interpolant of (bg - fg).
    diff = bg - fg
    exact = fg + np.stack([_exact_harmonic(diff[..., c], ~region) for c in range(3)], -1)
    ring = ~region & (cv2.dilate(region.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    span = np.ptp(diff[ring], axis=0).max()  # the range of the boundary values
    err = np.abs(ours - exact)[region]
    assert err.mean() < 0.02 * span and err.max() < 0.08 * span
    # Solving at half resolution stays close (the correction is smooth).
    coarse = poisson_blend(fg, bg, region, robust=0.0, scale=0.5)
    assert np.abs(coarse - exact)[region].mean() < 0.03 * span


def test_poisson_solve_shrinks_by_whole_factors() -> None:
    blender = MeshBlender(poisson_size=96)
    assert [blender.poisson_factor(s) for s in (10, 96, 100, 143, 150, 239, 290)] == [1, 1, 1, 1, 2, 2, 3]
    # A face a little over poisson_size: its crop's own grid, not one a few percent coarser, so the
    # correction meets bg - fg at the seam (a fractional grid misplaces it by part of a pixel).
    rng = np.random.default_rng(3)
    h, w = 100, 96
    yy, xx = np.mgrid[0:h, 0:w]
    fixed = ((yy - 50) / 42) ** 2 + ((xx - 48) / 40) ** 2 > 1
    low = cv2.resize(rng.normal(0, 20, (6, 6)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    diff = ((low + rng.normal(0, 4, (h, w)).astype(np.float32)) * fixed)[..., None]
    exact = _exact_harmonic(diff[..., 0], fixed)
    seam = ~fixed & (cv2.dilate(fixed.view(np.uint8), np.ones((7, 7), np.uint8)) > 0)

    def seam_error(scale: float) -> float:
        corr = poisson_correction(diff, fixed, scale=scale, robust=0.0)[..., 0]
        return float(np.abs(corr - exact)[seam].mean())

    ours = seam_error(1.0 / blender.poisson_factor(100))
    assert ours < 0.5
    assert ours < 0.5 * seam_error(96 / 100)


def test_blender_solves_a_face_just_over_poisson_size_on_its_own_grid() -> None:
    # Through the stage itself: a 110 px face with poisson_size 96 is solved at full size, exactly as
    # with poisson_size 110 (a fractional grid, 96/110 of the crop, would give another result).
    img, lm = rescale(*astronaut(), 110)
    work = _prepared(img, lm)
    assert MeshBlender().poisson_factor(mesh.face_size(work.landmarks)) == 1
    out96, alpha96 = MeshBlender(poisson_size=96).blend(work)
    out110, alpha110 = MeshBlender(poisson_size=110).blend(work)
    np.testing.assert_array_equal(out96, out110)
    np.testing.assert_array_equal(alpha96, alpha110)
    assert (out96 != work.image).any()


def test_pyramid_blend_keeps_fg_inside_and_bg_beyond_its_reach() -> None:
    g, _ = grace_hopper()
    a, _ = astronaut()
    fg = g[100:300, 100:300].astype(np.float32)
    bg = a[100:300, 100:300].astype(np.float32)
    mask = np.zeros((200, 200), np.float32)
    mask[60:140, 60:140] = 1.0
    out, reach = pyramid_blend(fg, bg, mask, levels=4)
    assert np.abs(out - fg)[90:110, 90:110].mean() < 2.0
    assert (reach >= mask).all()
    np.testing.assert_allclose(out[reach == 0], bg[reach == 0], atol=1.5)  # about a grey level
    assert (reach == 0).sum() > 0.3 * reach.size


def _prepared(image: np.ndarray, landmarks: np.ndarray) -> FaceWork:
    src = source(*grace_hopper())
    work = work_for(image, landmarks, src)
    bank = SourceBank([src])
    for stage in (MeshWarpReenactor(), MeshSegmenter(), ClassicalCompleter()):
        stage.set_source(bank)
        stage.process([work])
    return work


def _at_frame_border() -> tuple[np.ndarray, np.ndarray]:
    img, lm = astronaut()
    shift = int(lm[:, 0].min()) + 20  # the face's left side leaves the frame
    moved = np.array(lm)
    moved[:, 0] -= shift
    return np.ascontiguousarray(img[:, shift:]), moved


@pytest.mark.parametrize("mode", ["poisson", "pyramid", "alpha"])
def test_blend_at_the_frame_border_has_no_seam(mode: str) -> None:
    frame, lm = _at_frame_border()
    work = _prepared(frame, lm)
    assert work.crop.origin[0] == 0 and (work.face_mask[:, 0] > 0).any()
    MeshBlender(mode=mode).process([work])
    out, alpha = work.output, work.alpha
    assert out is not None and out.dtype == np.uint8 and out.shape == work.image.shape
    assert alpha is not None and alpha.dtype == np.float32 and alpha.min() >= 0 and alpha.max() <= 1
    pasted = frame.copy()
    work.crop.paste(pasted, out, alpha)
    x0, y0 = work.crop.origin
    w, h = work.crop.size
    crop_before = frame[y0:y0 + h, x0:x0 + w].astype(np.float32)
    crop_after = pasted[y0:y0 + h, x0:x0 + w].astype(np.float32)
    change = np.abs(crop_after - crop_before).max(-1)
    # Changed where the face was pasted, and fading to nothing at the paste region's edge.
    assert change[alpha > 0.9].mean() > 10
    rim = (alpha > 0) & (alpha < 0.05)
    assert rim.sum() > 50 and change[rim].mean() < 4.0
    # At the frame border the face continues: no jump between the first columns beyond the
    # image's own texture.
    rows = alpha[:, 0] > 0.5
    jump_after = np.abs(crop_after[rows, 0] - crop_after[rows, 1]).mean()
    jump_before = np.abs(crop_before[rows, 0] - crop_before[rows, 1]).mean()
    inner_after = np.abs(crop_after[rows, 5] - crop_after[rows, 6]).mean()
    assert jump_after < max(2 * jump_before, 2 * inner_after, 3.0)


@pytest.mark.parametrize("mode", ["poisson", "pyramid", "alpha"])
def test_open_mouth_is_kept_and_nothing_changes_outside_alpha(mode: str) -> None:
    img, lm = astronaut()
    work = _prepared(img, lm)
    assert work.mouth_mask is not None and work.mouth_mask.max() > 0.99
    MeshBlender(mode=mode).process([work])
    assert (work.alpha <= 1 - work.mouth_mask + 1e-6).all()
    pasted = img.copy()
    work.crop.paste(pasted, work.output, work.alpha)
    full = np.zeros(img.shape[:2], np.float32)
    x0, y0 = work.crop.origin
    w, h = work.crop.size
    full[y0:y0 + h, x0:x0 + w] = work.alpha
    np.testing.assert_array_equal(pasted[full == 0], img[full == 0])
    assert (pasted[full > 0.5] != img[full > 0.5]).any()


def test_blender_is_a_stage_and_validates_options() -> None:
    stage = MeshBlender()
    assert isinstance(stage, Stage) and stage.kind == "blend"
    with pytest.raises(InputError, match="poisson, pyramid, alpha"):
        MeshBlender(mode="feather")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="lab, none"):
        MeshBlender(color="rgb")  # type: ignore[arg-type]
    img, lm = astronaut()
    with pytest.raises(RuntimeError, match="face_mask"):
        stage.process([work_for(img, lm, source(*grace_hopper()))])
