"""Landmark heatmaps, drawn the way the FSGAN reenactment generators saw them in training.

The generator's input at each pyramid level is the source image next to one heatmap channel per target
landmark, at that level's resolution (256 and 128 for the released networks):

- **v2** (98 WFLW points, ``in_nc = 3 + 98 = 101``): a sharp disc per point. With ``d`` the distance from
  a pixel centre to the point, both in units of the heatmap side, the value is
  ``max(0, (((sqrt(2) - d) / sqrt(2)) ** 8 - 0.8) / 0.2)`` -- 1 at the point, 0 beyond
  ``d ~ 0.039`` (about 10 px at 256). Points are given normalised: pixel ``i``'s centre is
  ``(i + 0.5) / size``.
- **v1** (68 iBUG points, ``in_nc = 3 + 68 = 71``): a Gaussian per point. The point is truncated to an
  integer pixel, which gets ``exp(-(dx^2 + dy^2) / (4 sigma^2))`` (sigma = 2, i.e. a standard deviation
  of ``2 * sqrt(2)`` px) inside a ``kernel x kernel`` window (13 at 256, 7 at 128), peak 1. The 128
  level takes the points halved.

Both are written sparsely: only the window around each point is computed. :func:`heatmaps_v2_torch`
draws the v2 discs densely with torch on whatever device the points are on (every pixel outside a
point's window is 0 either way), so a GPU builds the generator's input from 98 points per face rather
than receiving 98 full-size planes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

V2_THRESHOLD = 0.8
"""Heatmap discs of v2: the value after the 8th power that maps to 0."""
V1_SIGMA = 2.0


def normalize_points(points_px: np.ndarray, size: int) -> np.ndarray:
    """Pixel coordinates (pixel centres at integers) of a ``size`` crop -> FSGAN's [0, 1] coordinates."""
    return ((points_px[..., :2] + 0.5) / float(size)).astype(np.float32)


def _v2_radius(size: int) -> int:
    # d_max where the disc reaches 0: (1 - d / sqrt2) ** 8 = threshold.
    d = math.sqrt(2) * (1 - V2_THRESHOLD ** (1 / 8))
    return math.ceil(d * size) + 1


def _scatter(out: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
    """Write ``values`` (B, N, W, W) at window ``rows`` (B, N, W) x ``cols`` (B, N, W) of ``out``,
    dropping what falls outside."""
    b, n, h, w = out.shape
    rr = np.broadcast_to(rows[..., :, None], values.shape)
    cc = np.broadcast_to(cols[..., None, :], values.shape)
    valid = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    bi = np.broadcast_to(np.arange(b)[:, None, None, None], values.shape)
    ni = np.broadcast_to(np.arange(n)[None, :, None, None], values.shape)
    # 4-D fancy indexing (not a flat view) so that ``out`` may be a strided view of a larger array.
    out[bi[valid], ni[valid], rr[valid], cc[valid]] = values[valid]


def _output(b: int, n: int, size: int, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return np.zeros((b, n, size, size), np.float32)
    if out.shape != (b, n, size, size):
        raise ValueError(f"out has shape {out.shape}, expected {(b, n, size, size)}")
    out[...] = 0
    return out


def heatmaps_v2(points01: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """v2 heatmaps: ``(B, N, 2)`` normalised points -> ``(B, N, size, size)`` float32 in [0, 1].

    ``out``: an array (or a view, e.g. the heatmap channels of a network input) to draw into.
    """
    points01 = np.asarray(points01, np.float32)
    b, n = points01.shape[:2]
    out = _output(b, n, size, out)
    r = _v2_radius(size)
    # Window of pixel indices around each point; far-away points are clamped (their values are 0).
    centre = np.clip(np.floor(points01 * size).astype(np.int64), -r - 1, size + r)  # (B, N, 2)
    offs = np.arange(-r, r + 1)
    ix = centre[..., 0, None] + offs  # (B, N, W)
    iy = centre[..., 1, None] + offs
    gx = (ix + 0.5) / size - points01[..., 0, None]
    gy = (iy + 0.5) / size - points01[..., 1, None]
    d = np.sqrt(gy[..., :, None] ** 2 + gx[..., None, :] ** 2)  # (B, N, W, W)
    v = ((math.sqrt(2) - d) / math.sqrt(2)) ** 8
    v = np.maximum((v - V2_THRESHOLD) / (1 - V2_THRESHOLD), 0).astype(np.float32)
    _scatter(out, iy, ix, v)
    return out


def heatmaps_v2_torch(points01: torch.Tensor, size: int) -> torch.Tensor:
    """:func:`heatmaps_v2` with torch: ``(B, N, 2)`` normalised points -> ``(B, N, size, size)`` float32.

    Computed densely in float32 on the points' device; agrees with :func:`heatmaps_v2` to ~1e-6.
    """
    import torch

    p = points01.float()
    centres = (torch.arange(size, device=p.device, dtype=torch.float32) + 0.5) / size
    gx = centres - p[..., 0, None]  # (B, N, W)
    gy = centres - p[..., 1, None]  # (B, N, H)
    d = (gy[..., :, None].square() + gx[..., None, :].square()).sqrt_()  # (B, N, H, W)
    v = d.mul_(-1.0 / math.sqrt(2)).add_(1.0).pow_(8)  # ((sqrt2 - d) / sqrt2) ** 8
    return v.sub_(V2_THRESHOLD).div_(1 - V2_THRESHOLD).clamp_(min=0.0)


def v1_kernel_size(size: int) -> int:
    """Window of the v1 Gaussians: 13 at 256, 7 at 128 (odd, about ``size / 20``)."""
    return {256: 13, 128: 7}.get(size, max(3, round(size / 20) | 1))


def heatmaps_v1(points_px: np.ndarray, size: int, sigma: float = V1_SIGMA, kernel: int | None = None,
                out: np.ndarray | None = None) -> np.ndarray:
    """v1 heatmaps: ``(B, N, 2)`` points in pixels of a ``size`` crop -> ``(B, N, size, size)`` in [0, 1]."""
    points_px = np.asarray(points_px, np.float32)
    b, n = points_px.shape[:2]
    out = _output(b, n, size, out)
    r = (v1_kernel_size(size) if kernel is None else kernel) // 2
    # The official code truncates to integers and clamps outliers onto the border.
    p = np.clip(points_px[..., :2].astype(np.int64), 0, size - 1)
    offs = np.arange(-r, r + 1)
    g = np.exp(-(offs.astype(np.float32) ** 2) / (4 * sigma * sigma))
    window = np.broadcast_to((g[:, None] * g[None, :]).astype(np.float32), (b, n, 2 * r + 1, 2 * r + 1))
    _scatter(out, p[..., 1, None] + offs, p[..., 0, None] + offs, window)
    return out


def pyramid_heatmaps(points_px: np.ndarray, size: int, version: str, levels: int = 2) -> list[np.ndarray]:
    """Heatmaps of ``(B, N, 2)`` crop-pixel points at ``size``, ``size / 2``...: one array per level.

    ``version`` ``"v2"``: the disc heatmaps of normalised points (same normalised points at each level);
    ``"v1"``: Gaussians of the points scaled with the level.
    """
    out = []
    for lvl in range(levels):
        s = size >> lvl
        if version == "v2":
            out.append(heatmaps_v2(normalize_points(points_px, size), s))
        elif version == "v1":
            out.append(heatmaps_v1(points_px / (1 << lvl), s))
        else:
            raise ValueError(f"unknown heatmap version {version!r}; choose from: v1, v2")
    return out
