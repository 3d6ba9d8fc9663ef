"""Weight-free segmentation: the face and open-mouth regions from the target's face mesh.

``face_mask`` is the face-oval polygon with its forehead lowered towards the brows (hair often
covers the top of the oval), softly eroded: the mask is 1 deeper than ``erode`` inside the polygon
and falls smoothly to 0 over ``feather`` towards its edge (both relative to the face size). This is
FSGAN's "soft erosion" done with one distance transform instead of repeated convolutions. Where the
polygon is cut by the crop edge (a face at the frame border) there is nothing to blend against, so no
erosion is applied along that edge.

``mouth_mask`` covers the target's inner-lip polygon when its mouth is open, so its real teeth and
tongue are kept instead of stretched source lips; it fades in between two mouth-open ratios so a
mouth opening over several frames does not flicker.
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

_SHIFT = 4  # fixed-point bits for sub-pixel polygon filling


def fill_polygon(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(h, w) uint8 mask, 1 inside the polygon ``points`` ((N, 2) pixels, centres at integers)."""
    out = np.zeros(shape, np.uint8)
    pts = np.round(np.asarray(points, np.float64) * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(out, [pts], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return out


def _smoothstep(t: np.ndarray) -> np.ndarray:
    """3t^2 - 2t^3 of ``t`` in [0, 1]: a ramp with no kink where it meets 0 and 1."""
    return t * t * (3.0 - 2.0 * t)


# Lookup of the ramp on 8-bit indices: 0 for t <= 0, 255 for t >= 1 and 254 steps strictly between,
# so which pixels are exactly 0 or 1 (what later stages test: the paste region, the kept mouth) is
# the same as with float arithmetic.
_EPS = 1e-4
_GAIN = 254.0 + 2 * _EPS
_OFFSET = 0.5 - _EPS
_RAMP = np.concatenate([[0.0], _smoothstep((np.arange(1, 255) - 0.5 + _EPS) / _GAIN), [1.0]])
_RAMP = _RAMP.astype(np.float32).reshape(256, 1)


def _ramp(dist: np.ndarray, start: float, width: float, scale: float = 1.0) -> np.ndarray:
    """float32 ``scale * smoothstep(clip((dist - start) / width, 0, 1))`` (``width`` < 0: falling).

    One saturating conversion to 8 bits and one table lookup: 254 steps inside the ramp are far
    finer than anything a soft mask needs, and it is several times faster than float arithmetic.
    """
    a = _GAIN / width
    index = cv2.addWeighted(dist, a, dist, 0.0, _OFFSET - start * a, dtype=cv2.CV_8U)
    table = _RAMP if scale == 1.0 else _RAMP * np.float32(scale)
    return cv2.LUT(index, table)


def soft_erode(mask: np.ndarray, erode: float, feather: float) -> np.ndarray:
    """float32 mask: 0 within ``erode`` px of the edge of binary ``mask``, rising smoothly to 1 over
    the next ``feather`` px. The image border is not an edge."""
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_REPLICATE)
    # The 5x5 chamfer distance is within ~2 % of Euclidean, plenty for a soft edge, 4x faster.
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_5)[1:-1, 1:-1]
    return _ramp(dist, erode, max(feather, 1e-6))


def face_polygon(landmarks: np.ndarray, forehead: float = 0.6) -> np.ndarray:
    """(36, 2) face-oval polygon with the part above the brows scaled by ``forehead`` (1 = full oval).

    "Above" follows the face's own up direction (chin 152 -> forehead 10), so tilted heads work.
    """
    lm = np.asarray(landmarks, np.float64)[:, :2]
    oval = lm[list(mesh.FACE_OVAL)]
    up = lm[10] - lm[152]
    up /= max(np.linalg.norm(up), 1e-9)
    brow = lm[[105, 334]].mean(0)  # mid-brow points of both eyebrows
    h = (oval - brow) @ up
    lift = np.maximum(h, 0.0) * (1.0 - forehead)
    return (oval - lift[:, None] * up).astype(np.float32)


class MeshSegmenter:
    """``segment`` stage: soft face mask and open-mouth mask from the target mesh.

    Args:
        erode: mask erosion, relative to the face size (:func:`stream.mesh.face_size`).
        feather: width of the soft edge, relative to the face size.
        forehead: how much of the forehead above the brows the mask keeps (0 brows .. 1 full oval).
        mouth_open: mouth-open ratios (:func:`stream.mesh.mouth_open_ratio`) between which the mouth
            mask fades in.
        mouth_grow: how far the mouth mask reaches past the inner-lip polygon, relative to the mouth
            width (MediaPipe's inner-lip contour tends to sit inside the visible opening).
        name: the stage's name in timings.
    """

    kind: ClassVar[StageKind] = "segment"

    def __init__(self, *, erode: float = 0.03, feather: float = 0.08, forehead: float = 0.35,
                 mouth_open: tuple[float, float] = (0.06, 0.12), mouth_grow: float = 0.06,
                 name: str = "mesh_segment") -> None:
        if not 0 <= forehead <= 1:
            raise InputError(f"forehead must be in [0, 1], got {forehead}")
        if not 0 <= mouth_open[0] < mouth_open[1]:
            raise InputError(f"mouth_open must be (low, high) with 0 <= low < high, got {mouth_open}")
        if erode < 0 or feather <= 0:
            raise InputError(f"erode must be >= 0 and feather > 0, got {erode}, {feather}")
        self.name = name
        self.erode = erode
        self.feather = feather
        self.forehead = forehead
        self.mouth_open = mouth_open
        self.mouth_grow = mouth_grow

    def set_source(self, bank: SourceBank) -> None:
        """Nothing per source: both masks come from the target."""

    def face_mask(self, landmarks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Soft face mask of crop size ``shape`` for crop-pixel ``landmarks``."""
        size = mesh.face_size(landmarks)
        poly = face_polygon(landmarks, self.forehead)
        h, w = shape
        out = np.zeros(shape, np.float32)
        # Work on the polygon's box plus one empty pixel (not past the crop: there the face goes on).
        x0, y0 = np.maximum(np.floor(poly.min(0)).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(poly.max(0)).astype(int) + 2, (w, h))
        if x1 <= x0 or y1 <= y0:
            return out
        binary = fill_polygon(poly - (x0, y0), (y1 - y0, x1 - x0))
        out[y0:y1, x0:x1] = soft_erode(binary, self.erode * size, self.feather * size)
        return out

    def mouth_mask(self, landmarks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Soft mask of the open mouth's interior; all zeros for a closed mouth."""
        lo, hi = self.mouth_open
        weight = float(np.clip((mesh.mouth_open_ratio(landmarks) - lo) / (hi - lo), 0.0, 1.0))
        if weight == 0.0:
            return np.zeros(shape, np.float32)
        poly = mesh.polygon(landmarks, mesh.LIPS_INNER)
        width = float(np.linalg.norm(poly[0] - poly[mesh.LIPS_INNER.index(308)]))
        grow = max(1.0, self.mouth_grow * width)
        # Grow then soften inside a box around the mouth only.
        pad = int(np.ceil(3 * grow)) + 2
        x0, y0 = np.maximum(np.floor(poly.min(0)).astype(int) - pad, 0)
        x1, y1 = np.minimum(np.ceil(poly.max(0)).astype(int) + pad + 1, (shape[1], shape[0]))
        out = np.zeros(shape, np.float32)
        if x1 <= x0 or y1 <= y0:
            return out
        box = fill_polygon(poly - (x0, y0), (y1 - y0, x1 - x0))
        dist = cv2.distanceTransform(1 - box, cv2.DIST_L2, cv2.DIST_MASK_5)
        out[y0:y1, x0:x1] = _ramp(dist, 2 * grow, -grow, weight)  # 1 up to `grow` out, 0 from 2x
        return out

    def process(self, faces: Sequence[FaceWork]) -> None:
        for work in faces:
            shape = work.image.shape[:2]
            work.face_mask = self.face_mask(work.landmarks, shape)
            work.mouth_mask = self.mouth_mask(work.landmarks, shape)

    def close(self) -> None:
        """Nothing to release."""
