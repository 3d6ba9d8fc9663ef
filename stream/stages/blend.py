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

import functools
from collections.abc import Callable, Sequence
from typing import ClassVar

import cv2
import numpy as np

from stream import mesh
from stream.choices import BLEND_MODES, COLOR_TRANSFERS, BlendMode, ColorTransfer, StageKind
from stream.exceptions import InputError
from stream.frames import FaceWork
from stream.stages.base import SourceBank
from stream.stages.color import (
    apply_lab_lut,
    correct_colors,
    masked_stats,
    reference_lab_stats,
    reinhard_lut,
    to_uint8,
    warm_up_lab,
)
from stream.stages.temporal import AffineMemo, TrackMemo, carry_matrix, seam_miss


@functools.lru_cache(maxsize=64)
def _checkerboard(h: int, w: int) -> np.ndarray:
    """(h, w) bool, True where ``y + x`` is even (the "red" pixels of red-black ordering); read-only,
    cached (solver grids of one face repeat their sizes frame after frame)."""
    out = ((np.arange(h)[:, None] + np.arange(w)[None, :]) & 1) == 0
    out.setflags(write=False)
    return out


def _sor(h: np.ndarray, fixed: np.ndarray, sweeps: int, omega: float) -> np.ndarray:
    """``sweeps`` red-black over-relaxed Gauss-Seidel sweeps of Laplace's equation on the free pixels
    of ``h`` (in place; 4-neighbour mean, replicated border = zero normal derivative at the image edge).

    One half-sweep is two OpenCV calls: the relaxation ``h + omega (mean - h)`` is a single 3x3
    filter, copied onto the pixels of one colour through a mask.
    """
    if sweeps <= 0:
        return h
    red = _checkerboard(*fixed.shape)
    free = ~fixed
    colours = ((red & free).view(np.uint8), (~red & free).view(np.uint8))
    q = omega / 4
    kernel = np.array([[0, q, 0], [q, 1 - omega, q], [0, q, 0]], np.float32)
    buf = np.empty_like(h)
    for _ in range(sweeps):
        for update in colours:
            cv2.filter2D(h, -1, kernel, dst=buf, borderType=cv2.BORDER_REPLICATE)
            cv2.copyTo(buf, update, h)
    return h


def harmonic_fill(values: np.ndarray, fixed: np.ndarray, *, min_size: int = 8, coarse_sweeps: int = 8,
                  sweeps: int = 4, omega: float = 1.8) -> np.ndarray:
    """Solve Laplace's equation for the pixels where ``fixed`` is False, ``values`` held where True.

    Coarse to fine (cascadic multigrid): at each halving a coarse pixel is fixed if at least half of
    its pixels are (to the mean of those); the coarsest grid gets ``coarse_sweeps`` red-black SOR
    sweeps, each finer one ``sweeps + 2 * level`` from the upsampled solution (level 0 the finest).
    The default schedule was measured against a direct sparse solve on real face blends: closer to
    it (mean and 99th percentile) than 4 * 2**level sweeps at omega 1.6, with a third fewer sweeps,
    whose count matters as much as their size on these small grids. Image borders are
    free (zero normal derivative). ``values`` is (h, w) or (h, w, c); the result is float32 of the
    same shape. Accuracy is a few percent of the fixed values' range, and smooth: meant for blending.
    """
    values = np.asarray(values, np.float32)
    shape = values.shape
    # OpenCV keeps a trailing channel axis only for c > 1: work on (h, w) or (h, w, c > 1) arrays.
    values = values.reshape(shape[:2]) if values.ndim == 3 and shape[2] == 1 else values
    fixed = np.asarray(fixed, bool)
    weight = fixed.astype(np.float32)
    values = _masked(values, weight)
    pyramid = [(values, fixed)]
    while min(pyramid[-1][1].shape) > 2 * min_size:
        v, f = pyramid[-1]
        size = ((f.shape[1] + 1) // 2, (f.shape[0] + 1) // 2)
        fw = cv2.resize(weight, size, interpolation=cv2.INTER_AREA)
        vw = cv2.resize(v, size, interpolation=cv2.INTER_AREA)  # v is 0 on free pixels
        f = fw >= 0.5
        weight = f.astype(np.float32)
        pyramid.append((_masked(_divide(vw, fw), weight), f))
    v, f = pyramid[-1]
    # Start the coarsest grid from the mean of its fixed values.
    start = v[f].mean(0) if f.any() else 0.0
    h = np.where(f.reshape(f.shape + (1,) * (v.ndim - 2)), v, np.float32(start)).astype(np.float32)
    h = _sor(h, f, coarse_sweeps, omega)
    for level in range(len(pyramid) - 2, -1, -1):
        v, f = pyramid[level]
        h = cv2.resize(h, (f.shape[1], f.shape[0]), interpolation=cv2.INTER_LINEAR)
        cv2.copyTo(v, f.view(np.uint8), h)
        h = _sor(h, f, sweeps + 2 * level, omega)
    return h.reshape(shape)


def _masked(values: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``values`` times the (h, w) ``weight`` on every channel."""
    return values * (weight if values.ndim == 2 else weight[..., None])


def _divide(values: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``values`` divided by the (h, w) ``weight`` on every channel (weights below 1e-6 count as 1e-6)."""
    inv = 1.0 / np.maximum(weight, np.float32(1e-6))
    return values * (inv if values.ndim == 2 else inv[..., None])


def _quantiles(values: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
    """Per-column quantiles of (n, c) ``values``, linearly interpolated as :func:`numpy.quantile`
    does, from one partial sort (several times faster than ``np.quantile``)."""
    n = len(values)
    pos = [q * (n - 1) for q in qs]
    lows = [int(np.floor(p)) for p in pos]
    kth = sorted({k for i in lows for k in (i, min(i + 1, n - 1))})
    part = np.partition(values, kth, axis=0)
    return [part[i] + (part[min(i + 1, n - 1)] - part[i]) * np.float32(p - i) for i, p in zip(lows, pos, strict=True)]


def _clip_channels(image: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(h, w, c) float32 ``image`` clipped per channel to ``[lo, hi]`` (OpenCV with per-channel
    scalars for up to four channels)."""
    c = image.shape[2]
    if c > 4:
        return np.clip(image, lo.astype(np.float32), hi.astype(np.float32))
    pad = (0.0,) * (4 - c)
    out = cv2.min(cv2.max(image, tuple(map(float, lo)) + pad), tuple(map(float, hi)) + pad)
    return out.reshape(image.shape)


def _edge(fixed: np.ndarray) -> np.ndarray:
    """The fixed pixels next to a free one (8-neighbourhood): the values a harmonic fill must meet."""
    return fixed & (cv2.dilate((~fixed).view(np.uint8), np.ones((3, 3), np.uint8)) > 0)


ROBUST = 0.1
"""The quantile at each end to which :func:`poisson_correction` clips the edge values by default."""


def poisson_correction(diff: np.ndarray, fixed: np.ndarray, *, scale: float = 1.0,
                       robust: float = ROBUST) -> np.ndarray:
    """The smooth correction of seamless cloning: harmonic where ``fixed`` is False and equal to
    ``diff`` (``bg - fg``, float32 (h, w, c), zero on free pixels) where it is True.

    ``scale`` < 1 solves on a grid that much coarser (a coarse pixel is fixed if any of its pixels
    is, to their mean) and upsamples the result. ``robust`` > 0 clips the values next to the free
    region per channel to their ``robust`` .. ``1 - robust`` quantiles first (see :func:`poisson_blend`).
    Returns float32 (h, w, c).
    """
    h, w = fixed.shape
    if scale < 1.0:
        size = (max(2, round(w * scale)), max(2, round(h * scale)))
        fw = cv2.resize(fixed.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        diff = _divide(cv2.resize(diff, size, interpolation=cv2.INTER_AREA), fw)
        diff = diff.reshape(*diff.shape[:2], -1)
        fixed = fw > 0
    if robust > 0:
        ring = _edge(fixed)
        if ring.any():
            lo, hi = _quantiles(diff[ring], (robust, 1 - robust))
            diff = _clip_channels(diff, lo, hi)
    corr = harmonic_fill(diff, fixed)
    if scale < 1.0:
        corr = cv2.resize(corr, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
    return corr


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
    region = np.asarray(region, bool)
    fixed = ~region
    diff = (bg - fg) * fixed[..., None]
    corr = poisson_correction(diff, fixed, scale=scale, robust=robust)
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
            many pixels (it is smooth; the soft paste mask hides the finer part of the seam), reached
            by a whole shrink factor (:meth:`poisson_factor`).
        color_reuse: the colour transfer's statistics of a track are computed every this many frames
            and reused in between (1: every frame), unless the target's window changed its mean
            colour by more than ``color_tolerance`` grey levels (a cut, a light switched on). The
            transfer itself is applied to every frame.
        color_tolerance: see ``color_reuse`` and ``correction_reuse``.
        correction_reuse: a track's Poisson correction is carried to the next frames, up to this many
            (1: solved every frame), through the affine motion of its landmarks
            (:class:`~stream.stages.temporal.AffineMemo`: one ``cv2.warpAffine`` for a solve). Target
            and warped source move with the face, so while it moves affinely their difference along
            the paste region's edge — what the correction is made of — moves with it too. The carried
            correction is checked against that difference in this frame, and the frame is solved
            afresh when they differ by more than ``seam_tolerance`` or the target's window changed its
            mean colour by more than ``color_tolerance``.
        reuse_tolerance: largest landmark residual (pixels) of that affine motion.
        seam_tolerance: how far (grey levels) a carried correction may miss what it must meet along the
            paste region's edge (the target less the recoloured source, clipped as the solver clips
            it), averaged over stretches of the edge about 1/8 of the face long — a seam's low
            frequencies, which are what shows. Measured on the demo clip: 2 to 3 on carried frames;
            13 to 15 on the first frames of a track, whose edge crossed hair that moved otherwise.
        name: the stage's name in timings.
    """

    kind: ClassVar[StageKind] = "blend"

    def __init__(self, *, mode: BlendMode = "poisson", color: ColorTransfer = "lab", poisson_size: int = 96,
                 color_reuse: int = 4, color_tolerance: float = 3.0, correction_reuse: int = 6,
                 reuse_tolerance: float = 0.3, seam_tolerance: float = 6.0, name: str | None = None) -> None:
        if mode not in BLEND_MODES:
            raise InputError(f"unknown blend mode {mode!r}; choose from: {', '.join(BLEND_MODES)}")
        if color not in COLOR_TRANSFERS:
            raise InputError(f"unknown colour transfer {color!r}; choose from: {', '.join(COLOR_TRANSFERS)}")
        if color_reuse < 1 or color_tolerance < 0:
            raise InputError(f"color_reuse must be >= 1 and color_tolerance >= 0, got {color_reuse}, {color_tolerance}")
        if correction_reuse < 1 or seam_tolerance < 0:
            raise InputError(f"correction_reuse must be >= 1 and seam_tolerance >= 0, got {correction_reuse}, "
                             f"{seam_tolerance}")
        self.mode: BlendMode = mode
        self.color: ColorTransfer = color
        self.poisson_size = poisson_size
        self.color_tolerance = color_tolerance
        self.seam_tolerance = seam_tolerance
        self.name = name or f"blend_{mode}"
        # Per (track, source face): the LAB lookup table and the target window's mean colour.
        self._colour: TrackMemo[tuple[np.ndarray, np.ndarray]] = TrackMemo(color_reuse)
        # Per (track, source face): a recent frame's Poisson correction, where its window's top-left
        # corner was in that frame, and the window's mean colour.
        self.corrections: AffineMemo[tuple[np.ndarray, tuple[int, int], np.ndarray]] = AffineMemo(
            correction_reuse, tolerance=reuse_tolerance)
        if color == "lab":
            warm_up_lab()  # at set-up, not on the first frame with a face

    def set_source(self, bank: SourceBank) -> None:
        """Forget the colour statistics and corrections (they depend on the source)."""
        self._colour.clear()
        self.corrections.clear()

    def poisson_factor(self, size: float) -> int:
        """How many times smaller than the crop the Poisson correction of a face of ``size`` pixels is
        solved: the whole number nearest ``size / poisson_size``, at least 1.

        A whole factor, not the exact ratio: a grid just short of the crop's costs more than the crop's
        own (two resamplings, and no fewer multigrid levels) and misplaces the seam by a fraction of a
        pixel, and halving or thirding keeps OpenCV's fast area filter.
        """
        return max(1, round(size / self.poisson_size))

    def blend(self, work: FaceWork) -> tuple[np.ndarray, np.ndarray]:
        """``(output, alpha)`` for one face: uint8 RGB crop and float32 paste weights."""
        fg_full = work.completed if work.completed is not None else work.reenacted
        if fg_full is None or work.face_mask is None:
            raise RuntimeError("the blend stage needs reenacted/completed and face_mask from earlier stages")
        image = work.image
        h, w = image.shape[:2]
        output = image.copy()
        alpha = np.zeros((h, w), np.float32)
        # Everything happens in the window of the face mask (the mouth mask only removes pixels).
        bx, by, bw, bh = cv2.boundingRect(cv2.compare(work.face_mask, 0.0, cv2.CMP_GT))
        if bw == 0:
            return output, alpha
        size = mesh.face_size(work.landmarks)
        levels = pyramid_levels(size)
        pad = {"alpha": 1, "poisson": 2, "pyramid": 2 ** (levels + 1)}[self.mode]
        x0, y0 = max(bx - pad, 0), max(by - pad, 0)
        x1, y1 = min(bx + bw + pad, w), min(by + bh + pad, h)
        win = (slice(y0, y1), slice(x0, x1))
        face = work.face_mask[win]
        mouth = None if work.mouth_mask is None else work.mouth_mask[win]
        m = face if mouth is None or not cv2.countNonZero(mouth) else face * (1.0 - mouth)
        if not m.any():
            return output, alpha
        bg8 = image[win]
        cov = None if work.coverage is None else work.coverage[win]
        fg8 = to_uint8(fg_full[win])
        # The target window's mean colour: a change beyond color_tolerance (a cut, a light switched on)
        # ends the reuse of colour statistics and of the Poisson correction.
        fingerprint = np.array(cv2.mean(bg8)[:3], np.float32)
        if self.color != "none":
            fg8 = self._recolour(work, fg8, m, cov, bg8, fingerprint)
        work.recoloured = (x0, y0, fg8)
        # Beyond the warped/filled face the source has nothing: the target shows there, so blurred
        # bands and the solver see a continuous image. Inside the paste region ``valid`` is 1.
        valid = (face > 0).astype(np.float32)
        if cov is not None:
            valid = np.maximum(cov, valid)
        region = m > 0
        if self.mode == "poisson":
            fixed = ~region
            # bg - fg where the solver holds values (zero elsewhere), with fg = bg + valid (fg - bg).
            weight = valid * fixed
            diff = cv2.subtract(bg8, fg8, dtype=cv2.CV_32F)
            cv2.multiply(diff, cv2.merge((weight, weight, weight)), dst=diff)
            # Frame pixels (where carrying is defined) only for a crop that is a region of the frame.
            corner = (work.crop.origin[0] + x0, work.crop.origin[1] + y0) if work.crop.is_region else None
            corr = None if corner is None else self.corrections.carry(
                self._key(work), work.frame_index, work.target.landmarks,
                lambda stored, motion: self._carry(stored, motion, corner, diff, fixed, fingerprint, size))
            if corr is None:
                corr = poisson_correction(diff, fixed, scale=1.0 / self.poisson_factor(size))
                if corner is not None:
                    self.corrections.put(self._key(work), work.frame_index, work.target.landmarks,
                                         (corr, corner, fingerprint))
            out8 = cv2.add(corr, fg8, dtype=cv2.CV_8U)
            cv2.copyTo(out8, region.view(np.uint8), output[win])
            alpha[win] = m
            return output, alpha
        bg = bg8.astype(np.float32)
        fg = bg + valid[..., None] * (fg8.astype(np.float32) - bg)
        if self.mode == "alpha":
            out, a = fg, m
        else:
            out, a = pyramid_blend(fg, bg, m, levels)
            if work.mouth_mask is not None:  # coarse bands reach into the mouth: keep it the target's
                a = a * (1.0 - work.mouth_mask[win])
        output[win] = to_uint8(out)
        alpha[win] = a
        return output, alpha

    @staticmethod
    def _key(work: FaceWork) -> tuple[int, int]:
        return work.target.track_id, id(work.source)

    def _carry(self, stored: tuple[np.ndarray, tuple[int, int], np.ndarray], motion: np.ndarray,
               corner: tuple[int, int], diff: np.ndarray, fixed: np.ndarray, fingerprint: np.ndarray,
               size: float) -> np.ndarray | None:
        """A stored correction moved by ``motion`` into this frame's window (top-left ``corner`` in the
        frame, shaped like ``diff``), or None when it would not meet this frame's edge values: the
        window's colour changed, or the mean difference from ``diff`` (the edge values, clipped as
        :func:`poisson_correction` clips them) along the paste region's edge exceeds ``seam_tolerance``."""
        old, old_corner, old_fingerprint = stored
        if np.abs(old_fingerprint - fingerprint).max() > self.color_tolerance:
            return None
        h, w = fixed.shape
        # The correction is smooth: past the old window's edge, its edge values are the best guess.
        corr = cv2.warpAffine(old, carry_matrix(motion, old_corner, corner), (w, h),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE).reshape(diff.shape)
        edge = _edge(fixed)
        if not edge.any():
            return None
        values = diff[edge]
        lo, hi = _quantiles(values, (ROBUST, 1 - ROBUST))
        miss = np.zeros_like(corr)
        miss[edge] = np.clip(values, lo, hi) - corr[edge]
        return corr if seam_miss(miss, edge, size) <= self.seam_tolerance else None

    def _recolour(self, work: FaceWork, fg8: np.ndarray, m: np.ndarray, cov: np.ndarray | None,
                  bg8: np.ndarray, fingerprint: np.ndarray) -> np.ndarray:
        """Reinhard transfer of the face window ``fg8`` towards the target ``bg8`` (uint8 RGB)."""
        inner = m > 0.5
        covered = inner if cov is None else inner & (cov > 0.5)
        if self.color != "lab":
            return to_uint8(correct_colors(self.color, fg8, covered, bg8, inner))
        lab = cv2.cvtColor(fg8, cv2.COLOR_RGB2LAB)
        key = self._key(work)
        cached = self._colour.get(key, work.frame_index)
        if cached is not None and np.abs(cached[1] - fingerprint).max() <= self.color_tolerance:
            return apply_lab_lut(lab, cached[0])
        src_stats = masked_stats(lab, covered)
        ref_stats = reference_lab_stats(bg8, inner)
        if src_stats is None or ref_stats is None:
            return fg8
        lut = reinhard_lut(src_stats, ref_stats)
        self._colour.put(key, work.frame_index, (lut, fingerprint))
        return apply_lab_lut(lab, lut)

    def recolour_function(self, work: FaceWork) -> Callable[[np.ndarray], np.ndarray] | None:
        """The colour transfer :meth:`blend` applied to ``work`` (call it right after), as a function of
        uint8 RGB; None when there is none to reproduce (no colour statistics for its track)."""
        if self.color == "none":
            return lambda rgb: rgb
        cached = self._colour.get(self._key(work), work.frame_index)
        if cached is None:
            return None
        lut = cached[0]
        return lambda rgb: apply_lab_lut(cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB), lut)

    def process(self, faces: Sequence[FaceWork]) -> None:
        for work in faces:
            work.output, work.alpha = self.blend(work)

    def close(self) -> None:
        """Forget the per-track state. Safe to call twice."""
        self._colour.clear()
        self.corrections.clear()
