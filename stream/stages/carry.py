"""Carry a face's finished swap to the next frames while the face only moves by an affine map.

Between two runs of the mesh network the tracker moves a face's mesh by an affine map, and the
weight-free stages' per-track memos then carry their own intermediate results through that map (the
warp's dense map, the blend's Poisson correction) instead of computing them again. The stages still
draw their masks, fill the holes, transfer the colours and check the seam every frame, though.
:class:`PatchCarry` carries the rest of the result instead: after the reenact stage has warped the
source (its texture is sampled from the source every frame, so it stays as sharp as on any frame), the
face's colour table, the smooth remainder of the blend (what it added to the recoloured warp: the
Poisson correction), the filled holes and the paste weights of a recent frame are moved along by one
``cv2.warpAffine`` each, and the chain skips its other stages for that face.

The stages would have made the same of such a frame: the source is still, and the masks, the fill and
the correction follow the landmarks. What they read of the target is its colour (the colour transfer)
and its pixels along the paste mask's soft edge, which the blend meets. A carried patch is therefore
used only while the target itself moved with the face: along that edge, and in its mean colour under
the face, the target's pixels must match the stored frame's moved the same way (within
``seam_tolerance`` and ``color_tolerance`` grey levels). A cut, a light switched on, hair or a hand
crossing the edge, a mouth opening (its landmarks then move on their own) make the stages run.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import cv2
import numpy as np

from stream import mesh
from stream.exceptions import InputError
from stream.frames import FaceWork
from stream.stages.color import to_uint8
from stream.stages.complete import check_hole_below, fill_with_warp
from stream.stages.temporal import AffineMemo, carry_matrix, seam_miss

__all__ = ["PatchCarry"]

_BAND = (0.02, 0.98)  # paste weights between which patch and target mix visibly: the seam

Recolour = Callable[[np.ndarray], np.ndarray]
"""The colour transfer a frame's blend used: uint8 RGB in, uint8 RGB out."""


@dataclass(frozen=True)
class _Patch:
    rest: np.ndarray  # float32 (h, w, 4): what the blend added to the recoloured warp, and the paste weights
    output: np.ndarray  # the blended face, uint8 RGB (its holes' fill is carried from it)
    target: np.ndarray  # the target's pixels there, uint8 RGB
    corner: tuple[int, int]  # the window's top-left, frame pixels
    recolour: Recolour


class PatchCarry:
    """Per track, what a frame's segment, complete and blend stages made of the warped source, carried
    through the landmarks' affine motion to the next frames; see the module docstring.

    Args:
        recolour: the colour transfer the blend used for a face (called right after the blend), None
            when it cannot be reproduced: that face is then not carried.
        reuse: a patch serves frames less than this many frames after the one the stages made it for
            (1: never carried).
        tolerance: largest landmark residual (pixels, 99th percentile) of the affine motion.
        seam_tolerance: how far (grey levels) the target along the paste mask's soft edge may differ
            from the stored frame's target moved the same way, averaged over stretches of the edge about
            1/8 of the face long (a seam's low frequencies, which are what shows).
        color_tolerance: the same for the mean colour of the target under the face.
        hole_below: warp coverage under which a pixel is all fill, cross-faded with the warp above it, as
            the chain's complete stage does (:class:`~stream.stages.complete.ClassicalCompleter`).
    """

    def __init__(self, recolour: Callable[[FaceWork], Recolour | None], reuse: int = 6, *,
                 tolerance: float = 0.3, seam_tolerance: float = 6.0, color_tolerance: float = 3.0,
                 hole_below: float = 0.5) -> None:
        if seam_tolerance < 0 or color_tolerance < 0:
            raise InputError(f"seam and colour tolerances must be >= 0, got {seam_tolerance}, {color_tolerance}")
        check_hole_below(hole_below)
        self.hole_below = hole_below
        self.recolour = recolour
        self.seam_tolerance = seam_tolerance
        self.color_tolerance = color_tolerance
        self.patches: AffineMemo[_Patch] = AffineMemo(reuse, tolerance=tolerance)

    @property
    def counters(self) -> dict[str, int]:
        """How many faces were carried (``reused``) and how many went through the stages (``computed``)."""
        return self.patches.counters

    @staticmethod
    def _key(work: FaceWork) -> Hashable:
        return work.target.track_id, id(work.source)

    def carry(self, work: FaceWork) -> bool:
        """Fill ``work.output`` and ``work.alpha`` from the warped source (``work.reenacted`` and
        ``work.coverage``) and a recent frame of the track; False (nothing filled) when there is none to
        carry or the target did not move with the face."""
        if not work.crop.is_region or work.reenacted is None or work.coverage is None:
            return False
        moved = self.patches.carry(self._key(work), work.frame_index, work.target.landmarks,
                                   lambda patch, motion: self._move(patch, motion, work))
        if moved is None:
            return False
        work.output, work.alpha = moved
        return True

    def _move(self, patch: _Patch, motion: np.ndarray, work: FaceWork) -> tuple[np.ndarray, np.ndarray] | None:
        assert work.reenacted is not None and work.coverage is not None
        crop_w, crop_h = work.crop.size
        ph, pw = patch.target.shape[:2]
        corners = np.array([[0, 0], [pw, 0], [0, ph], [pw, ph]], np.float64) + np.subtract(patch.corner, 0.5)
        ends = corners @ motion[:, :2].T + motion[:, 2] - work.crop.origin
        x0, y0 = np.maximum(np.floor(ends.min(0)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(ends.max(0)).astype(int) + 1, (crop_w, crop_h))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return None
        a = carry_matrix(motion, patch.corner, (work.crop.origin[0] + x0, work.crop.origin[1] + y0))
        size = (int(x1 - x0), int(y1 - y0))
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        rest = cv2.warpAffine(patch.rest, a, size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        alpha = np.ascontiguousarray(rest[..., 3])
        # The checks read every other pixel each way (a quarter of the work): what they measure, a mean colour
        # and a seam's miss averaged over stretches of 1/8 of the face, hardly changes.
        alpha2 = np.ascontiguousarray(alpha[::2, ::2])
        edge = cv2.inRange(alpha2, _BAND[0], _BAND[1]) > 0
        if not edge.any():  # no soft edge, or one too thin to show at half size: let the stages run
            return None
        half = a.copy()
        half[:, :2] *= 2  # pixel (u, v) of the half-size window is (2u, 2v) of the window
        then = cv2.warpAffine(patch.target, half, ((size[0] + 1) // 2, (size[1] + 1) // 2), flags=flags,
                              borderMode=cv2.BORDER_REPLICATE)
        now = np.ascontiguousarray(work.image[y0:y1:2, x0:x1:2])
        # The target under the face: its mean colour drives the colour transfer.
        inner = cv2.compare(alpha2, 0.5, cv2.CMP_GT)
        if np.abs(np.subtract(cv2.mean(now, inner)[:3], cv2.mean(then, inner)[:3])).max() > self.color_tolerance:
            return None
        miss = np.zeros(now.shape, np.float32)
        cv2.subtract(now, then, dst=miss, mask=edge.view(np.uint8), dtype=cv2.CV_32F)
        if seam_miss(miss, edge, mesh.face_size(work.landmarks) / 2) > self.seam_tolerance:
            return None
        win = (slice(y0, y1), slice(x0, x1))
        out = cv2.add(rest[..., :3], patch.recolour(to_uint8(work.reenacted[win])), dtype=cv2.CV_8U)
        cov = work.coverage[win]
        holes = cv2.bitwise_and(cv2.compare(alpha, 0.0, cv2.CMP_GT), cv2.compare(cov, 1.0, cv2.CMP_LT))
        hx, hy, hw, hh = cv2.boundingRect(holes)
        if hw:
            # Where the warp does not cover the face, the fill: pure below hole_below, cross-faded above.
            box = (slice(hy, hy + hh), slice(hx, hx + hw))
            shift = a.copy()
            shift[:, 2] += shift[:, :2] @ (hx, hy)
            fill = cv2.warpAffine(patch.output, shift, (hw, hh), flags=flags, borderMode=cv2.BORDER_REPLICATE)
            mixed = fill_with_warp(fill, out[box], cov[box], self.hole_below)
            cv2.copyTo(to_uint8(mixed), holes[box], out[box])
        output = work.image.copy()
        output[win] = out
        full = np.zeros((crop_h, crop_w), np.float32)
        full[win] = alpha
        return output, full

    def put(self, work: FaceWork) -> None:
        """Keep what the stages made of ``work`` (a region crop, after its blend)."""
        fg = work.completed if work.completed is not None else work.reenacted
        if not work.crop.is_region or work.output is None or work.alpha is None or fg is None:
            return
        recolour = self.recolour(work)
        if recolour is None:
            return
        x, y, w, h = cv2.boundingRect(cv2.compare(work.alpha, 0.0, cv2.CMP_GT))
        if w == 0:
            return
        win = (slice(y, y + h), slice(x, x + w))
        output = work.output[win].copy()
        alpha = work.alpha[win]
        added = cv2.subtract(output, self._recoloured(work, fg, recolour, x, y, w, h), dtype=cv2.CV_32F)
        added[alpha <= 0] = 0  # the target there, not the blend's: nothing to carry
        rest = cv2.merge((added, alpha))
        corner = (work.crop.origin[0] + x, work.crop.origin[1] + y)
        patch = _Patch(rest, output, work.image[win].copy(), corner, recolour)
        self.patches.put(self._key(work), work.frame_index, work.target.landmarks, patch)

    @staticmethod
    def _recoloured(work: FaceWork, fg: np.ndarray, recolour: Recolour, x: int, y: int, w: int,
                    h: int) -> np.ndarray:
        """``recolour`` of ``fg``'s box ``(x, y, w, h)``: what the blend made of it when its window holds the
        box (it does for the weight-free blend), else computed again."""
        if work.recoloured is not None:
            rx, ry, pixels = work.recoloured
            if rx <= x and ry <= y and x + w <= rx + pixels.shape[1] and y + h <= ry + pixels.shape[0]:
                return pixels[y - ry:y - ry + h, x - rx:x - rx + w]
        return recolour(to_uint8(fg[y:y + h, x:x + w]))

    def clear(self) -> None:
        """Forget every patch (a new source, the end of a stream)."""
        self.patches.clear()
