"""Weight-free completion: fill the face pixels the warp could not cover.

In the spirit of GLCIC's post-processing, holes are filled by fast-marching inpainting (Telea,
``cv2.inpaint``) seeded from the covered, warped source pixels. Inpainting works in a window around
the face at a reduced resolution (about ``work_size`` pixels per face), which keeps its cost bounded
for large faces and large holes; the fill is upsampled and cross-faded with the warp along the soft
coverage edge. Uncovered pixels outside the face region serve as seeds with the target's own colours,
so a hole reaching the face border fades towards the surroundings it will be blended into.

When every face pixel is covered — the common frontal case — the stage only checks that and passes
``reenacted`` through.
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


def inpaint_holes(image: np.ndarray, hole: np.ndarray, seeds: np.ndarray | None = None, *,
                  scale: float = 1.0, radius: float = 3.0) -> np.ndarray:
    """Telea-inpaint the ``hole`` pixels of float32 RGB ``image``; returns a float32 copy.

    ``seeds`` (same shape as ``image``), when given, replaces ``image`` at non-hole pixels before
    inpainting — only its values matter there. ``scale`` < 1 inpaints a downscaled copy and upsamples
    the fill. Non-hole pixels of the result equal ``image``.
    """
    h, w = hole.shape
    src = image if seeds is None else seeds
    work = np.clip(src, 0, 255).astype(np.uint8)
    mask = hole.astype(np.uint8)
    if scale < 1.0:
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
        small = cv2.resize(work, (sw, sh), interpolation=cv2.INTER_AREA)
        # A low-res pixel is a hole if any full-res pixel under it is: no hole colour leaks in.
        small_mask = (cv2.resize(mask.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA) > 0)
        filled = cv2.inpaint(small, small_mask.astype(np.uint8), radius, cv2.INPAINT_TELEA)
        filled = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)
    else:
        filled = cv2.inpaint(work, mask, radius, cv2.INPAINT_TELEA)
    out = image.astype(np.float32, copy=True)
    out[hole] = filled[hole]
    return out


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
        if not 0 < hole_below <= 1:
            raise InputError(f"hole_below must be in (0, 1], got {hole_below}")
        self.name = name
        self.work_size = work_size
        self.hole_below = hole_below
        self.radius = radius

    def set_source(self, bank: SourceBank) -> None:
        """Nothing per source."""

    def complete(self, work: FaceWork) -> np.ndarray:
        """``work.reenacted`` with the uncovered pixels of the face region filled."""
        if work.reenacted is None or work.coverage is None:
            raise RuntimeError("the complete stage needs reenacted/coverage from a reenact stage")
        reenacted, coverage = work.reenacted, work.coverage
        region = work.face_mask > 0 if work.face_mask is not None else coverage > 0
        if work.mouth_mask is not None:
            region &= work.mouth_mask < 1  # the blend keeps the target there anyway
        missing = region & (coverage < 1.0)
        if not missing.any():
            return reenacted
        size = mesh.face_size(work.landmarks)
        scale = min(1.0, self.work_size / max(size, 1.0))
        # A window around the missing pixels, wide enough for Telea's neighbourhood and the rescale.
        margin = int(np.ceil((self.radius + 2) / scale)) + 2
        ys, xs = np.nonzero(missing)
        h, w = coverage.shape
        x0, y0 = max(int(xs.min()) - margin, 0), max(int(ys.min()) - margin, 0)
        x1, y1 = min(int(xs.max()) + margin + 1, w), min(int(ys.max()) + margin + 1, h)
        cov = coverage[y0:y1, x0:x1]
        win = reenacted[y0:y1, x0:x1]
        # Fill the not fully covered pixels of the (slightly grown) face region; uncovered pixels
        # beyond it are seeds carrying the target's colours, so no black from outside the warp leaks in.
        grow = max(1, int(np.ceil(2 / scale)))
        near = cv2.dilate(region[y0:y1, x0:x1].astype(np.uint8), np.ones((2 * grow + 1,) * 2, np.uint8)) > 0
        fill = near & (cov < 1.0)
        outside = ((cov < self.hole_below) & ~near)[..., None]
        seeds = np.where(outside, work.image[y0:y1, x0:x1].astype(np.float32), win)
        filled = inpaint_holes(win, fill, seeds, scale=scale, radius=self.radius)
        # Cross-fade: pure fill below `hole_below` coverage, pure warp at full coverage.
        c = np.clip((cov - self.hole_below) / max(1.0 - self.hole_below, 1e-6), 0.0, 1.0)[..., None]
        out = reenacted.copy()
        out[y0:y1, x0:x1] = c * win + (1.0 - c) * filled
        return out

    def process(self, faces: Sequence[FaceWork]) -> None:
        for work in faces:
            work.completed = self.complete(work)

    def close(self) -> None:
        """Nothing to release."""
