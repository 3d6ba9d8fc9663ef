"""Weight-free blending of the completed source face into the target crop.

Three modes (:data:`stream.choices.BlendMode`), all after Reinhard colour transfer
(:mod:`stream.stages.color`) and all pasting with the soft face mask minus the open-mouth mask:

``poisson``
    Gradient-domain cloning: inside the paste region the result keeps the source's gradients while
    meeting the target along the region's edge — ``source + h`` with ``h`` harmonic and equal to
    ``target - source`` outside the region. ``h`` is solved coarse to fine (a cascadic multigrid of
    red-black SOR sweeps, OpenCV filters doing the work) at a reduced resolution — ``h`` is smooth —
    so no sparse solver is needed and the cost does not grow with the face's size. Where the region
    meets the crop's edge (a face at the frame border) the solver uses a free (Neumann) boundary, so
    such faces need no padding and get no artificial seam.
``pyramid``
    Laplacian-pyramid blending: each frequency band is mixed with the mask blurred to that band's
    scale, so low frequencies (shading, colour) blend over a wide zone and details over a narrow one.
``alpha``
    Plain alpha compositing with the soft mask: the cheapest, kept as a baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import cv2
import numpy as np

from stream import mesh
from stream.choices import BLEND_MODES, COLOR_TRANSFERS, BlendMode, ColorTransfer, StageKind
from stream.exceptions import InputError
from stream.frames import FaceWork
from stream.stages.base import SourceBank
from stream.stages.color import correct_colors, to_uint8

_NEIGHBOURS = np.array([[0, 0.25, 0], [0.25, 0, 0.25], [0, 0.25, 0]], np.float32)


def _sor(h: np.ndarray, fixed: np.ndarray, values: np.ndarray, sweeps: int, omega: float) -> np.ndarray:
    """``sweeps`` red-black over-relaxed Gauss-Seidel sweeps of Laplace's equation on the free pixels
    (4-neighbour mean, replicated border = zero normal derivative at the image edge)."""
    yy, xx = np.indices(fixed.shape[:2])
    red = ((yy + xx) % 2 == 0).reshape(fixed.shape[:2] + (1,) * (fixed.ndim - 2))
    colours = (red & ~fixed, ~red & ~fixed)
    for _ in range(sweeps):
        for update in colours:
            mean = cv2.filter2D(h, -1, _NEIGHBOURS, borderType=cv2.BORDER_REPLICATE).reshape(h.shape)
            np.copyto(h, h + omega * (mean - h), where=update)
    return h


def harmonic_fill(values: np.ndarray, fixed: np.ndarray, *, min_size: int = 8, coarse_sweeps: int = 30,
                  sweeps: int = 4, omega: float = 1.6) -> np.ndarray:
    """Solve Laplace's equation for the pixels where ``fixed`` is False, ``values`` held where True.

    Coarse to fine (cascadic multigrid): at each halving a coarse pixel is fixed if at least half of
    its pixels are (to the mean of those); the coarsest grid gets ``coarse_sweeps`` red-black SOR
    sweeps, each finer one ``sweeps`` times 2**level from the upsampled solution. Image borders are
    free (zero normal derivative). ``values`` is (h, w) or (h, w, c); the result is float32 of the
    same shape. Accuracy is a few percent of the fixed values' range, and smooth: meant for blending.
    """
    values = np.asarray(values, np.float32)
    shape = values.shape
    values = values.reshape(*shape[:2], -1)
    f3 = fixed[..., None]
    pyramid = [(values, f3)]
    while min(pyramid[-1][1].shape[:2]) > 2 * min_size:
        v, f = pyramid[-1]
        size = ((f.shape[1] + 1) // 2, (f.shape[0] + 1) // 2)
        fw = cv2.resize(f[..., 0].astype(np.float32), size, interpolation=cv2.INTER_AREA)[..., None]
        vw = cv2.resize(np.where(f, v, 0).astype(np.float32), size, interpolation=cv2.INTER_AREA)
        vw = vw.reshape(*vw.shape[:2], -1)
        pyramid.append((vw / np.maximum(fw, 1e-6), fw >= 0.5))
    v, f = pyramid[-1]
    # Start the coarsest grid from the mean of its fixed values.
    start = v[f[..., 0]].mean(0) if f.any() else 0.0
    h = np.where(f, v, start).astype(np.float32)
    h = _sor(h, f, v, coarse_sweeps, omega)
    for level in range(len(pyramid) - 2, -1, -1):
        v, f = pyramid[level]
        h = cv2.resize(h, (f.shape[1], f.shape[0]), interpolation=cv2.INTER_LINEAR).reshape(v.shape)
        np.copyto(h, v, where=f)
        h = _sor(h, f, v, sweeps * 2 ** level, omega)
    return h.reshape(shape)


def poisson_blend(fg: np.ndarray, bg: np.ndarray, region: np.ndarray, *, scale: float = 1.0,
                  robust: float = 0.1) -> np.ndarray:
    """Seamless cloning of float32 ``fg`` into ``bg`` over the boolean ``region`` (guidance: the
    gradients of ``fg``); pixels outside ``region`` are ``bg``.

    ``scale`` < 1 solves for the (smooth) correction on a grid that much coarser and upsamples it:
    along the region's edge the result then meets ``bg`` in its low frequencies only, which a soft
    paste mask hides. ``robust`` > 0 clips the edge differences ``bg - fg`` per channel to their
    ``robust`` .. ``1 - robust`` quantiles, so a strand of hair or a glasses frame crossing the edge
    does not bleed its colour into the face.
    """
    bg = np.asarray(bg, np.float32)
    fg = np.asarray(fg, np.float32)
    h, w = region.shape
    fixed = ~region
    diff = bg - fg
    if scale < 1.0:
        size = (max(2, round(w * scale)), max(2, round(h * scale)))
        fw = cv2.resize(fixed.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        diff = cv2.resize(np.where(fixed[..., None], diff, 0), size, interpolation=cv2.INTER_AREA)
        diff /= np.maximum(fw, 1e-6)[..., None]
        fixed = fw > 0  # a coarse pixel is fixed if any of its pixels is, to their mean
    if robust > 0:
        ring = fixed & (cv2.dilate((~fixed).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
        if ring.any():
            lo, hi = np.quantile(diff[ring], [robust, 1 - robust], axis=0)
            diff = np.clip(diff, lo, hi)
    corr = harmonic_fill(diff, fixed)
    if scale < 1.0:
        corr = cv2.resize(corr, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.where(region[..., None], fg + corr, bg)


def pyramid_levels(size: float) -> int:
    """Laplacian levels for a face of ``size`` pixels: the coarsest band about 1/8 of the face."""
    return int(np.clip(np.floor(np.log2(max(size, 2.0) / 8.0)), 1, 6))


def pyramid_blend(fg: np.ndarray, bg: np.ndarray, mask: np.ndarray,
                  levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Laplacian-pyramid blend of float32 ``fg`` over ``bg`` with ``mask`` in [0, 1].

    Returns the blend and its reach: (h, w) float32 in [0, 1], 1 wherever the blend may differ from
    ``bg`` by a visible amount (the mask blurred to the coarsest band's scale, normalised).
    """
    diff = np.asarray(fg, np.float32) - np.asarray(bg, np.float32)
    gm = [np.asarray(mask, np.float32)]
    lap = []
    cur = diff
    for _ in range(levels):
        down = cv2.pyrDown(cur)
        lap.append(cur - cv2.pyrUp(down, dstsize=(cur.shape[1], cur.shape[0])))
        gm.append(cv2.pyrDown(gm[-1]))
        cur = down
    out = cur * gm[-1][..., None]
    reach = gm[-1]
    for band, g in zip(reversed(lap), reversed(gm[:-1]), strict=True):
        size = (band.shape[1], band.shape[0])
        out = cv2.pyrUp(out, dstsize=size) + band * g[..., None]
        reach = cv2.pyrUp(reach, dstsize=size)
    # The coarsest band spreads furthest; where its (upsampled) mask has faded below ~0.5 % the
    # difference from bg is below about one grey level, so reach = mask support widened to that scale.
    reach = np.maximum(np.clip(reach * 5.0 - 0.025, 0.0, 1.0), mask)
    return bg + out, reach.astype(np.float32)


class MeshBlender:
    """``blend`` stage: colour transfer, then Poisson, Laplacian-pyramid or alpha blending.

    Args:
        mode: ``"poisson"``, ``"pyramid"`` or ``"alpha"`` (see the module docstring).
        color: colour transfer before blending, ``"lab"`` (Reinhard) or ``"none"``.
        poisson_size: the Poisson correction is solved at a resolution where the face is about this
            many pixels (it is smooth; the soft paste mask hides the finer part of the seam).
        name: the stage's name in timings.
    """

    kind: ClassVar[StageKind] = "blend"

    def __init__(self, *, mode: BlendMode = "poisson", color: ColorTransfer = "lab", poisson_size: int = 96,
                 name: str | None = None) -> None:
        if mode not in BLEND_MODES:
            raise InputError(f"unknown blend mode {mode!r}; choose from: {', '.join(BLEND_MODES)}")
        if color not in COLOR_TRANSFERS:
            raise InputError(f"unknown colour transfer {color!r}; choose from: {', '.join(COLOR_TRANSFERS)}")
        self.mode: BlendMode = mode
        self.color: ColorTransfer = color
        self.poisson_size = poisson_size
        self.name = name or f"blend_{mode}"

    def set_source(self, bank: SourceBank) -> None:
        """Nothing per source."""

    def blend(self, work: FaceWork) -> tuple[np.ndarray, np.ndarray]:
        """``(output, alpha)`` for one face: uint8 RGB crop and float32 paste weights."""
        fg_full = work.completed if work.completed is not None else work.reenacted
        if fg_full is None or work.face_mask is None:
            raise RuntimeError("the blend stage needs reenacted/completed and face_mask from earlier stages")
        image = work.image
        h, w = image.shape[:2]
        mask = work.face_mask if work.mouth_mask is None else work.face_mask * (1.0 - work.mouth_mask)
        output = image.copy()
        alpha = np.zeros((h, w), np.float32)
        ys, xs = np.nonzero(mask > 0)
        if ys.size == 0:
            return output, alpha
        size = mesh.face_size(work.landmarks)
        levels = pyramid_levels(size)
        pad = {"alpha": 1, "poisson": 2, "pyramid": 2 ** (levels + 1)}[self.mode]
        x0, y0 = max(int(xs.min()) - pad, 0), max(int(ys.min()) - pad, 0)
        x1, y1 = min(int(xs.max()) + pad + 1, w), min(int(ys.max()) + pad + 1, h)
        win = (slice(y0, y1), slice(x0, x1))
        bg8 = image[win]
        bg = bg8.astype(np.float32)
        m = mask[win]
        fg = fg_full[win]
        if self.color != "none":
            inner = m > 0.5
            covered = inner if work.coverage is None else inner & (work.coverage[win] > 0.5)
            fg = correct_colors(self.color, fg, covered, bg8, inner)
        # Beyond the warped/filled face the source has nothing: show the target there, so blurred
        # bands and the solver see a continuous image.
        valid = work.face_mask[win] > 0
        if work.coverage is not None:
            valid = np.maximum(work.coverage[win], valid)
        fg = bg + valid[..., None] * (fg - bg)
        if self.mode == "alpha":
            out, a = fg, m
        elif self.mode == "pyramid":
            out, a = pyramid_blend(fg, bg, m, levels)
            if work.mouth_mask is not None:  # coarse bands reach into the mouth: keep it the target's
                a = a * (1.0 - work.mouth_mask[win])
        else:
            out, a = poisson_blend(fg, bg, m > 0, scale=min(1.0, self.poisson_size / size)), m
        output[win] = to_uint8(out)
        alpha[win] = a
        return output, alpha

    def process(self, faces: Sequence[FaceWork]) -> None:
        for work in faces:
            work.output, work.alpha = self.blend(work)

    def close(self) -> None:
        """Nothing to release."""
