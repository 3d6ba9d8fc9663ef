"""Weight-free completion: fill the face pixels the warp could not cover.

In the spirit of GLCIC's post-processing, holes are filled by fast-marching inpainting (Telea,
``cv2.inpaint``) seeded from the covered, warped source pixels. Inpainting works in a window around
the face at a reduced resolution (about ``work_size`` pixels per face), which keeps its cost bounded
for large faces and large holes; the fill is upsampled and cross-faded with the warp along the soft
coverage edge. Uncovered pixels outside the face region serve as seeds with the target's own colours,
so a hole reaching the face border fades towards the surroundings it will be blended into.

The fill is written into ``reenacted`` itself and ``completed`` is that same array (no crop-sized copy
per face); when every face pixel is covered — the common frontal case — the stage only checks that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import cv2
import numpy as np

from stream import mesh
from stream.choices import StageKind
from stream.exceptions import InputError
from stream.frames import FaceWork
from stream.stages.base import SourceBank
from stream.stages.color import to_uint8


def _clip01(x: np.ndarray) -> np.ndarray:
    """float32 ``x`` clipped to [0, 1] (two OpenCV thresholds: much faster than ``np.clip``)."""
    x = cv2.threshold(x, 1.0, 1.0, cv2.THRESH_TRUNC)[1]
    return cv2.threshold(x, 0.0, 0.0, cv2.THRESH_TOZERO)[1]


def check_hole_below(hole_below: float) -> None:
    """Raise :class:`InputError` unless ``hole_below`` is a usable coverage threshold, in (0, 1]."""
    if not 0 < hole_below <= 1:
        raise InputError(f"hole_below must be in (0, 1], got {hole_below}")


def fill_with_warp(fill: np.ndarray, warp: np.ndarray, coverage: np.ndarray, hole_below: float) -> np.ndarray:
    """float32 cross-fade of a hole ``fill`` with the ``warp`` by the warp's ``coverage`` (same size, any
    dtype): pure fill below ``hole_below``, pure warp at full coverage, i.e. ``fill + c (warp - fill)``
    with ``c`` rising linearly from 0 at ``hole_below`` to 1 at 1."""
    c = _clip01((coverage - hole_below) * np.float32(1.0 / max(1.0 - hole_below, 1e-6)))
    step = cv2.subtract(warp, fill, dtype=cv2.CV_32F)
    cv2.multiply(step, cv2.merge((c, c, c)), dst=step)
    return cv2.add(step, fill, dtype=cv2.CV_32F)


def inpaint_holes(image: np.ndarray, hole: np.ndarray, seeds: np.ndarray | None = None, *,
                  scale: float = 1.0, radius: float = 3.0) -> np.ndarray:
    """Telea-inpaint the ``hole`` pixels of float32 RGB ``image``; returns a float32 copy.

    ``seeds`` (same shape as ``image``, float or uint8), when given, replaces ``image`` at non-hole
    pixels before inpainting — only its values matter there. ``scale`` < 1 inpaints a downscaled copy
    and upsamples the fill. Non-hole pixels of the result equal ``image``.
    """
    out = np.array(image, np.float32)
    filled = _inpaint_u8(image if seeds is None else seeds, hole, scale, radius)
    cv2.copyTo(filled.astype(np.float32), hole.view(np.uint8) if hole.dtype == bool else hole.astype(np.uint8), out)
    return out


def _inpaint_u8(seeds: np.ndarray, hole: np.ndarray, scale: float, radius: float) -> np.ndarray:
    """uint8 Telea fill of ``hole`` from ``seeds`` (see :func:`inpaint_holes`), at full size."""
    h, w = hole.shape
    work = to_uint8(seeds)
    mask = hole.view(np.uint8) if hole.dtype == bool else hole.astype(np.uint8)
    if scale >= 1.0:
        return cv2.inpaint(work, mask, radius, cv2.INPAINT_TELEA)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(work, (sw, sh), interpolation=cv2.INTER_AREA)
    # A low-res pixel is a hole if any full-res pixel under it is: no hole colour leaks in.
    small_mask = cv2.resize(mask.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA)
    small_mask = cv2.compare(small_mask, 0.0, cv2.CMP_GT)
    filled = cv2.inpaint(small, small_mask, radius, cv2.INPAINT_TELEA)
    return cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)


class ClassicalCompleter:
    """``complete`` stage: Telea inpainting of uncovered face pixels, seeded from covered ones.

    Args:
        work_size: inpainting runs at a resolution where the face is about this many pixels
            (never upscaled).
        hole_below: pixels with ``coverage`` under this are holes; between it and 1 the warp is
            cross-faded with the fill.
        radius: Telea neighbourhood radius, in working pixels.
        name: the stage's name in timings.
    """

    kind: ClassVar[StageKind] = "complete"

    def __init__(self, *, work_size: int = 128, hole_below: float = 0.5, radius: float = 3.0,
                 name: str = "inpaint") -> None:
        if work_size < 16:
            raise InputError(f"work_size must be >= 16, got {work_size}")
        check_hole_below(hole_below)
        self.name = name
        self.work_size = work_size
        self.hole_below = hole_below
        self.radius = radius

    def set_source(self, bank: SourceBank) -> None:
        """Nothing per source."""

    def complete(self, work: FaceWork) -> np.ndarray:
        """``work.reenacted`` with the uncovered pixels of the face region filled, in place (the
        result is ``work.reenacted`` itself)."""
        if work.reenacted is None or work.coverage is None:
            raise RuntimeError("the complete stage needs reenacted/coverage from a reenact stage")
        reenacted, coverage = work.reenacted, work.coverage
        h, w = coverage.shape
        # Look for missing pixels only in the face mask's box (the whole crop without a mask).
        if work.face_mask is not None:
            bx, by, bw, bh = cv2.boundingRect(cv2.compare(work.face_mask, 0.0, cv2.CMP_GT))
        else:
            bx, by, bw, bh = 0, 0, w, h
        box = (slice(by, by + bh), slice(bx, bx + bw))
        missing = self._region(work, box) & (coverage[box] < 1.0)
        mx, my, mw, mh = cv2.boundingRect(missing.view(np.uint8))
        if mw == 0:
            return reenacted
        size = mesh.face_size(work.landmarks)
        scale = min(1.0, self.work_size / max(size, 1.0))
        # A window around the missing pixels, wide enough for Telea's neighbourhood and the rescale.
        margin = int(np.ceil((self.radius + 2) / scale)) + 2
        x0, y0 = max(bx + mx - margin, 0), max(by + my - margin, 0)
        x1, y1 = min(bx + mx + mw + margin, w), min(by + my + mh + margin, h)
        win = (slice(y0, y1), slice(x0, x1))
        cov = coverage[win]
        src = reenacted[win]
        # Fill the not fully covered pixels of the (slightly grown) face region; uncovered pixels
        # beyond it are seeds carrying the target's colours, so no black from outside the warp leaks in.
        grow = max(1, int(np.ceil(2 / scale)))
        near = cv2.dilate(self._region(work, win).view(np.uint8), np.ones((2 * grow + 1,) * 2, np.uint8))
        fill = cv2.bitwise_and(near, cv2.compare(cov, 1.0, cv2.CMP_LT))
        seeds = to_uint8(src)
        outside = cv2.bitwise_and(cv2.compare(near, 0, cv2.CMP_EQ), cv2.compare(cov, self.hole_below, cv2.CMP_LT))
        cv2.copyTo(work.image[win], outside, seeds)
        filled = _inpaint_u8(seeds, fill > 0, scale, self.radius)
        step = fill_with_warp(filled, src, cov, self.hole_below)
        # In place: nothing reads the unfilled warp after this stage, and a second crop-sized float
        # image per face costs more (fresh memory) than the whole fill.
        cv2.copyTo(step if reenacted.dtype == np.float32 else to_uint8(step), fill, reenacted[win])
        return reenacted

    @staticmethod
    def _region(work: FaceWork, win: tuple[slice, slice]) -> np.ndarray:
        """(bool) the face region inside ``win``: where it is replaced (the open mouth is kept)."""
        assert work.coverage is not None
        region = work.face_mask[win] > 0 if work.face_mask is not None else work.coverage[win] > 0
        if work.mouth_mask is not None:
            region &= work.mouth_mask[win] < 1  # the blend keeps the target there anyway
        return region

    def process(self, faces: Sequence[FaceWork]) -> None:
        for work in faces:
            work.completed = self.complete(work)

    def close(self) -> None:
        """Nothing to release."""
