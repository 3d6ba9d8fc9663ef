"""Carry a face mesh from frame to frame with sparse optical flow, between runs of the mesh network.

The mesh network costs about 3 ms a face on a CPU core; following a few dozen of its points with
pyramidal Lucas-Kanade (``cv2.calcOpticalFlowPyrLK``) on a small grey crop of the face costs a tenth
of that. :class:`LandmarkFlow` keeps, per face, the last *keyframe* mesh (one the network produced)
and moves it to each new frame:

1. The face's box (with a margin for motion) is cut from the frame, turned grey and shrunk so the face
   is about :data:`CROP_FACE_PX` pixels tall.
2. :data:`RIGID_POINTS` (brows, eye corners, nose, cheeks: parts that move with the skull) and
   :data:`CHECK_POINTS` (lips, chin, eyelids: parts that move on their own) are tracked from the
   previous frame with a forward-backward check.
3. An affine map is fitted from the keyframe's rigid points to where they are now (least squares,
   outliers dropped) and moves all 478 points of the keyframe mesh (``z`` is scaled with it); an affine
   map rather than a similarity follows the foreshortening of a head turning by a few degrees. What it
   leaves of each tracked point's motion is spread to the mesh points near it (Gaussian weights).

:meth:`LandmarkFlow.propagate` returns None, asking the caller to run the network again, when the result
cannot be trusted: too few points survive the forward-backward check or the face's texture changed
(occlusion, the face left), the rigid fit leaves residuals (the head turned out of the image plane),
the lips, chin or lids moved away from where the rigid motion puts them, the mouth or an eye no longer
looks as in the keyframe once the motion is undone (talking, blinking: inner lips and teeth have no
texture that flows with the landmarks), or the face moved more than a fraction of its height in one
frame. All thresholds are in face heights so they
hold for small and large faces alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from stream.pixels import Pixels, as_pixels

__all__ = ["CHECK_POINTS", "CROP_FACE_PX", "RIGID_POINTS", "FlowLimits", "LandmarkFlow"]

CROP_FACE_PX = 72.0
"""Smallest face height in the grey crop optical flow runs on: larger faces are shrunk by the whole
factor that keeps them between this and twice this."""

RIGID_POINTS = np.array([
    70, 105, 107, 336, 334, 300,  # brows
    33, 133, 362, 263,  # eye corners
    168, 197, 4, 2, 98, 327, 129, 358,  # nose
    50, 280, 205, 425, 117, 346,  # cheeks
    9, 108, 337,  # forehead
])
"""Mesh points that move with the skull: the affine motion is fitted to these."""

CHECK_POINTS = np.array([
    61, 291, 0, 17, 13, 14, 37, 267, 84, 314, 40, 270, 91, 321, 78, 308,  # lips
    152, 148, 377, 176, 400, 199, 175,  # chin
    159, 145, 386, 374, 160, 144, 385, 380,  # eyelids
])
"""Mesh points that move on their own (jaw, lips, lids): they check that the rigid motion holds there,
and carry what small non-rigid motion there is to the mesh points around them."""

# Regions whose look is compared with the keyframe's (mouth, right eye, left eye): an opening mouth or a
# closing eye changes their pixels even where no texture flows along with the landmarks.
_LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409)
_RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
_LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
_PATCH_REGIONS = (_LIPS, _RIGHT_EYE, _LEFT_EYE)
_PATCH_PAD = 0.2  # patch margin around a region's points, in face heights

_SPREAD = 0.1  # reach (Gaussian sigma, face heights) of a tracked point's residual motion
_SPREAD_FLOOR = 0.05  # total weight below which a mesh point keeps the affine motion alone
_LK_WIN = (11, 11)
# Two pyramid levels above the crop. One is 10-35 % cheaper a propagation with the same drift against meshing
# every frame, but the mesh then moves a little less affinely over several frames where the head turns fastest:
# faces carried by the patch carry (stages.carry) came 2 dB further from the stages' own result (10th
# percentile 40.8 -> 38.6 dB on the demo clip).
_LK_LEVELS = 2
_LK_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 10, 0.03)


@dataclass(frozen=True)
class FlowLimits:
    """When propagated landmarks are no longer trusted (distances in face heights)."""

    max_fb_error: float = 0.02
    """Forward-backward error above which a tracked point is dropped."""
    min_good_fraction: float = 0.6
    """Fraction of the rigid points that must survive the forward-backward check."""
    max_rigid_residual: float = 0.012
    """Mean distance of the rigid points from the fitted affine motion (out-of-plane turns show here)."""
    max_check_residual: float = 0.02
    """Distance from the rigid motion, averaged over the 3 worst lip/chin/lid points (mouth, blinks)."""
    min_check_fraction: float = 0.5
    """Fraction of the lip/chin/lid points that must survive the forward-backward check."""
    min_patch_ncc: float = 0.95
    """Lowest normalised cross-correlation of the mouth and each eye with their look in the keyframe
    once the fitted motion is undone: an opening mouth or a blink changes these pixels even where no
    texture flows along with the landmarks (inner lips, teeth)."""
    max_patch_error: float = 12.0
    """Mean Lucas-Kanade patch error (mean absolute grey difference, 0-255) of the rigid points."""
    max_step: float = 0.25
    """Largest motion of the face in one frame."""


def _affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares (2, 3) affine map of ``src`` (N, 2) onto ``dst`` (centred normal equations).

    The 2x2 system is solved in closed form: LAPACK would wake OpenBLAS's thread pool, whose workers
    then spin for a while on every frame.
    """
    ms, md = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - ms, dst - md
    sxx, sxy, syy = float(s[:, 0] @ s[:, 0]), float(s[:, 0] @ s[:, 1]), float(s[:, 1] @ s[:, 1])
    det = sxx * syy - sxy * sxy
    if abs(det) < 1e-12:
        return np.hstack([np.eye(2), (md - ms)[:, None]])
    inv = np.array([[syy, -sxy], [-sxy, sxx]]) / det
    a = (inv @ (s.T @ d)).T
    return np.hstack([a, (md - a @ ms)[:, None]])


def _ncc(image: np.ndarray, ref: np.ndarray, ref_norm: float) -> float:
    """Normalised cross-correlation of ``image`` with a same-size patch ``ref`` given less its mean (and
    its norm): ``cv2.matchTemplate``'s TM_CCOEFF_NORMED at its one position, flat patches included (a
    flat ``ref`` matches anything: 1; a flat ``image`` matches no textured ``ref``: 0). matchTemplate
    goes through a DFT for patches this size, five times slower than the two sums."""
    if ref_norm <= 1e-3:
        return 1.0
    # ``ref`` sums to 0, so ``image``'s mean drops out of the dot product; its norm less the mean is its
    # standard deviation times sqrt(n) (one OpenCV pass: a third of the time of the numpy steps).
    norm = float(cv2.meanStdDev(image)[1][0, 0]) * math.sqrt(image.size)
    return float(np.vdot(image.astype(np.float32), ref)) / (norm * ref_norm) if norm > 1e-3 else 0.0


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


class LandmarkFlow:
    """Propagates one face's keyframe mesh to later frames by optical flow; see the module docstring.

    Not thread-safe; one instance per tracked face.
    """

    def __init__(self, limits: FlowLimits = FlowLimits()) -> None:
        self.limits = limits
        self._indices = np.concatenate([RIGID_POINTS, CHECK_POINTS])
        self._n_rigid = len(RIGID_POINTS)
        self._key: np.ndarray | None = None  # keyframe mesh (478, 3), stored pixels
        self._key_xy = np.zeros((len(self._indices), 2))  # keyframe positions of the tracked points
        self._pts = self._key_xy  # tracked points in the previous frame, stored pixels
        self._grey = np.zeros((8, 8), np.uint8)  # previous frame's grey crop
        self._origin = np.zeros(2)  # previous crop's top-left corner, stored pixels
        self._key_origin = np.zeros(2)  # the keyframe crop's
        self._scale = 1.0  # crop pixels per stored pixel
        self._box = (8, 8)  # crop size, stored pixels (fixed per keyframe)
        self._height = 1.0  # keyframe face height, stored pixels
        self._velocity = np.zeros(2)  # last per-frame motion of the face centre
        self._centre = np.zeros(2)  # face centre in the previous frame
        self._weights = np.zeros((0, 0), np.float32)  # (478, tracked points) Gaussian weights
        # (corner in keyframe crop, grey patch less its mean as float32, that patch's norm)
        self._patches: list[tuple[np.ndarray, np.ndarray, float]] = []
        self.since_keyframe = 0
        """Frames propagated since the last keyframe."""
        self.last_reason = ""
        """Why the last :meth:`propagate` returned None (empty after a success)."""

    @property
    def trackable(self) -> bool:
        """False when the last :meth:`propagate` failed because the points could not be followed at all
        (rather than because the face turned, talked or moved fast): the image does not suit the flow."""
        return self.last_reason not in ("flow lost", "appearance changed")

    @property
    def ready(self) -> bool:
        """Whether there is a keyframe to propagate from."""
        return self._key is not None

    def reset(self) -> None:
        """Forget the keyframe; :meth:`propagate` returns None until the next :meth:`keyframe`."""
        self._key = None
        self.since_keyframe = 0

    def keyframe(self, image: np.ndarray | Pixels, landmarks: np.ndarray) -> None:
        """Start from ``landmarks`` ((478, 3), stored pixels), which the network found in ``image`` (RGB or
        :class:`~stream.pixels.Pixels`; the same kind for every frame of one face)."""
        key = np.asarray(landmarks, dtype=np.float32)
        xy = key[self._indices, :2].astype(np.float64)
        centre = key[:, :2].mean(axis=0).astype(np.float64)
        # Keep the face's speed across keyframes: it predicts where to look in the next frame.
        self._velocity = centre - self._centre if self._key is not None else np.zeros(2)
        self._key, self._key_xy, self._pts, self._centre = key, xy, xy.copy(), centre
        self._height = float(np.ptp(key[:, 1])) or 1.0
        # Shrink by a whole factor: the area filter's fast path, with no aliasing.
        self._scale = 1.0 / max(1, int(self._height // CROP_FACE_PX))
        # Gaussian weights of the tracked points for each mesh point (see propagate).
        a = key[:, :2] / (_SPREAD * self._height)
        b = (xy / (_SPREAD * self._height)).astype(np.float32)
        d2 = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * (a @ b.T)
        self._weights = np.exp(np.minimum(-0.5 * d2, 0.0, out=d2), out=d2)
        # The crop: the tracked points' extent plus a margin for motion and the flow window.
        extent = np.ptp(key[:, :2], axis=0)
        pad = 0.3 * self._height + _LK_WIN[0] / self._scale
        self._box = (int(extent[0] + 2 * pad), int(extent[1] + 2 * pad))
        self._grey, self._origin = self._crop(image, xy, self._velocity)
        self._key_origin = self._origin
        self._patches = []
        pad = _PATCH_PAD * self._height * self._scale
        gh, gw = self._grey.shape[:2]
        for region in _PATCH_REGIONS:
            c = self._to_crop(key[list(region), :2].astype(np.float64), self._origin)
            x0, y0 = np.maximum(np.floor(c.min(axis=0) - pad), 0).astype(int)
            x1, y1 = np.ceil(c.max(axis=0) + pad).astype(int)
            x1, y1 = min(x1, gw), min(y1, gh)
            if x1 - x0 >= 4 and y1 - y0 >= 4:
                ref = self._grey[y0:y1, x0:x1].astype(np.float32)
                ref -= ref.mean()
                self._patches.append((np.array([x0, y0], np.float64), ref, float(np.sqrt(np.vdot(ref, ref)))))
        self.since_keyframe = 0

    def propagate(self, image: np.ndarray | Pixels) -> np.ndarray | None:
        """The keyframe mesh moved to ``image`` ((478, 3) float32), or None when it cannot be trusted.

        ``image`` is the next frame after the last :meth:`keyframe` or successful :meth:`propagate`
        (RGB, stored pixels). After None, call :meth:`keyframe` before propagating again.
        """
        key = self._key
        if key is None:
            return self._fail("no keyframe")
        lim, s, r, height = self.limits, self._scale, self._n_rigid, self._height
        grey, origin = self._crop(image, self._pts, self._velocity)
        prev_c = self._to_crop(self._pts, self._origin)
        nxt, status, err = cv2.calcOpticalFlowPyrLK(
            self._grey, grey, prev_c, self._to_crop(self._pts + self._velocity, origin), winSize=_LK_WIN,
            maxLevel=_LK_LEVELS, criteria=_LK_CRITERIA, flags=cv2.OPTFLOW_USE_INITIAL_FLOW)
        back, status_b, _ = cv2.calcOpticalFlowPyrLK(
            grey, self._grey, nxt, prev_c.copy(), winSize=_LK_WIN, maxLevel=_LK_LEVELS,
            criteria=_LK_CRITERIA, flags=cv2.OPTFLOW_USE_INITIAL_FLOW)
        fb = back - prev_c
        good = ((status[:, 0] & status_b[:, 0]) == 1) & (
            (fb * fb).sum(axis=1) < (lim.max_fb_error * height * s) ** 2)
        cur = (nxt.astype(np.float64) + 0.5) / s - 0.5 + origin
        rigid_good = good[:r]
        n_good = int(rigid_good.sum())
        if n_good < max(lim.min_good_fraction * r, 6):
            return self._fail("flow lost")
        if float(err[:r, 0][rigid_good].mean()) > lim.max_patch_error:
            return self._fail("appearance changed")
        if good[r:].mean() < lim.min_check_fraction:
            return self._fail("mouth or lids lost")

        # Rigid motion: an affine fit, refitted once without its outliers.
        src, dst = self._key_xy[:r][rigid_good], cur[:r][rigid_good]
        m = _affine(src, dst)
        res = np.hypot(*(_apply(m, src) - dst).T)
        keep = res <= max(3.0 * float(res.mean()), 0.005 * height)
        if keep.sum() >= 6 and not keep.all():
            m = _affine(src[keep], dst[keep])
            res = np.hypot(*(_apply(m, src[keep]) - dst[keep]).T)
        if float(res.mean()) > lim.max_rigid_residual * height:
            return self._fail("not rigid")
        predicted = _apply(m, self._key_xy)
        check = np.hypot(*(cur[r:] - predicted[r:]).T)[good[r:]]
        if check.size >= 3 and float(np.sort(check)[-3:].mean()) > lim.max_check_residual * height:
            return self._fail("mouth or lids moved")
        if self._patch_similarity(grey, origin, m) < lim.min_patch_ncc:
            return self._fail("mouth or eyes changed")

        out = key.copy()
        out[:, :2] = _apply(m, key[:, :2])
        # What the affine motion leaves (perspective, small non-rigid motion) is spread to each mesh
        # point from the well-tracked points near it; far from all of them it fades to nothing.
        w = self._weights * good
        resid = ((cur - predicted) * good[:, None]).astype(np.float32)
        out[:, :2] += (w @ resid) / (w.sum(axis=1, keepdims=True) + _SPREAD_FLOOR)
        out[:, 2] *= math.sqrt(abs(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]))
        centre = out[:, :2].mean(axis=0).astype(np.float64)
        step = centre - self._centre
        if float(np.hypot(*step)) > lim.max_step * height:
            return self._fail("fast motion")
        # Points that failed the check continue from where the rigid motion puts them.
        cur[~good] = predicted[~good]
        self._pts, self._grey, self._origin = cur, grey, origin
        self._velocity, self._centre = step, centre
        self.since_keyframe += 1
        self.last_reason = ""
        return out

    def _patch_similarity(self, grey: np.ndarray, origin: np.ndarray, m: np.ndarray) -> float:
        """Lowest normalised cross-correlation of the keyframe's mouth and eye patches with ``grey``,
        sampled where the fitted motion ``m`` (keyframe -> now, stored pixels) puts them."""
        s = self._scale
        a = m[:, :2]
        # keyframe-crop pixels -> stored -> moved -> current-crop pixels, as one affine map
        t = s * (a @ (0.5 / s - 0.5 + self._key_origin) + m[:, 2] - origin + 0.5) - 0.5
        worst = 1.0
        for p0, ref, ref_norm in self._patches:
            warp = np.hstack([a, (a @ p0 + t)[:, None]])
            cur = cv2.warpAffine(grey, warp, (ref.shape[1], ref.shape[0]),
                                 flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
            worst = min(worst, _ncc(cur, ref, ref_norm))
        return worst

    def _fail(self, reason: str) -> None:
        self.last_reason = reason
        return None

    def _to_crop(self, pts: np.ndarray, origin: np.ndarray) -> np.ndarray:
        # Pixel centres: the resize maps stored x to (x + 0.5) * scale - 0.5 in the crop.
        return (((pts - origin) + 0.5) * self._scale - 0.5).astype(np.float32)

    def _crop(self, image: np.ndarray | Pixels, pts: np.ndarray, velocity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grey crop of the keyframe's size centred on ``pts`` moved by ``velocity``, at ``self._scale``.

        Lucas-Kanade needs both images of one size, so the box only moves (kept inside the frame).
        """
        image = as_pixels(image)
        h, w = image.shape[:2]
        bw, bh = min(w, self._box[0]), min(h, self._box[1])
        cx, cy = (pts.min(axis=0) + pts.max(axis=0)) / 2 + velocity
        x0 = int(min(max(round(cx - bw / 2), 0), w - bw))
        y0 = int(min(max(round(cy - bh / 2), 0), h - bh))
        grey = image.grey(x0, y0, x0 + bw, y0 + bh)
        if self._scale < 1.0:  # fx/fy (not a size) so that the mapping is exactly the scale
            grey = cv2.resize(grey, None, fx=self._scale, fy=self._scale, interpolation=cv2.INTER_AREA)
        return grey, np.array([float(x0), float(y0)])
