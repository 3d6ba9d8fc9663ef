"""Landmark heatmaps as FSGAN draws them (v2 discs, v1 Gaussians)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream.heatmaps import heatmaps_v1, heatmaps_v2, heatmaps_v2_torch, normalize_points, pyramid_heatmaps


def _dense_v2(p01: np.ndarray, size: int) -> np.ndarray:
    """The disc formula evaluated on every pixel (the reference the sparse drawing must match)."""
    c = (np.arange(size) + 0.5) / size
    d = np.sqrt((c[None, :] - p01[0]) ** 2 + (c[:, None] - p01[1]) ** 2)
    v = ((math.sqrt(2) - d) / math.sqrt(2)) ** 8
    return np.maximum((v - 0.8) / 0.2, 0)


def test_v2_matches_the_disc_formula_everywhere() -> None:
    rng = np.random.default_rng(1)
    pts = rng.uniform(-0.1, 1.1, (2, 5, 2)).astype(np.float32)  # some points outside the crop
    hm = heatmaps_v2(pts, 64)
    assert hm.shape == (2, 5, 64, 64) and hm.dtype == np.float32
    for b in range(2):
        for n in range(5):
            np.testing.assert_allclose(hm[b, n], _dense_v2(pts[b, n], 64), atol=1e-6)


@pytest.mark.parametrize("size", [256, 128])
def test_v2_torch_matches_the_numpy_drawing(size: int) -> None:
    """Dense float32 (torch) vs windowed float64 (NumPy): equal to float32 round-off, zero off the discs."""
    import torch

    pts = np.random.default_rng(2).uniform(-0.1, 1.1, (3, 98, 2)).astype(np.float32)
    ref = heatmaps_v2(pts, size)
    hm = heatmaps_v2_torch(torch.from_numpy(pts), size)
    assert hm.dtype == torch.float32 and hm.shape == ref.shape
    np.testing.assert_allclose(hm.numpy(), ref, atol=5e-6)


@pytest.mark.parametrize("size", [256, 128])
def test_v2_peak_at_the_landmark_and_disc_radius(size: int) -> None:
    px = np.array([[[100.0, 60.0], [4.0, 250.0]]], np.float32) * size / 256
    hm = heatmaps_v2(normalize_points(px, size), size)
    for n in range(2):
        y, x = np.unravel_index(hm[0, n].argmax(), hm[0, n].shape)
        assert (x, y) == tuple(np.round(px[0, n]).astype(int))
        assert hm[0, n].max() > 0.95
    # Non-zero out to d = sqrt(2) * (1 - 0.8 ** (1/8)) of the side: about 10 px at 256.
    radius = math.sqrt(2) * (1 - 0.8 ** (1 / 8)) * size
    ys, xs = np.nonzero(hm[0, 0])
    dist = np.hypot(xs - px[0, 0, 0], ys - px[0, 0, 1])
    assert radius - 1.5 < dist.max() <= radius + 0.5


def test_v1_gaussian_peak_sigma_and_window() -> None:
    pts = np.array([[[40.7, 30.2], [-5.0, 300.0]]], np.float32)
    hm = heatmaps_v1(pts, 256)
    assert hm.shape == (1, 2, 256, 256)
    # Peak 1 at the truncated pixel; exp(-d^2 / (4 sigma^2)) with sigma = 2 around it.
    assert hm[0, 0, 30, 40] == pytest.approx(1.0)
    assert hm[0, 0, 30, 42] == pytest.approx(math.exp(-4 / 16), rel=1e-5)
    assert hm[0, 0, 33, 37] == pytest.approx(math.exp(-18 / 16), rel=1e-5)
    # 13 x 13 window at 256.
    ys, xs = np.nonzero(hm[0, 0])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (34, 46, 24, 36)
    # Outliers are clamped onto the border, as the official code does.
    assert hm[0, 1, 255, 0] == pytest.approx(1.0)
    # 7 x 7 at 128.
    small = heatmaps_v1(pts / 2, 128)
    assert np.count_nonzero(small[0, 0]) == 49


def test_pyramids_channel_counts_and_preallocated_output() -> None:
    pts = np.random.default_rng(2).uniform(0, 256, (3, 98, 2)).astype(np.float32)
    v2 = pyramid_heatmaps(pts, 256, "v2")
    assert [h.shape for h in v2] == [(3, 98, 256, 256), (3, 98, 128, 128)]
    v1 = pyramid_heatmaps(pts[:, :68], 256, "v1")
    assert [h.shape for h in v1] == [(3, 68, 256, 256), (3, 68, 128, 128)]
    buf = np.full((3, 101, 256, 256), 7.0, np.float32)
    heatmaps_v2(normalize_points(pts, 256), 256, out=buf[:, 3:])
    np.testing.assert_array_equal(buf[:, 3:], v2[0])
    assert np.all(buf[:, :3] == 7.0)
    with pytest.raises(ValueError, match="unknown heatmap version"):
        pyramid_heatmaps(pts, 256, "v3")
