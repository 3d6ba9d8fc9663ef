"""Per-track state that weight-free stages reuse across nearby frames.

Some per-face quantities change slowly along a track — the colour statistics of the face, say — so a
stage may compute them every few frames and reuse them in between; others move with the face's
landmarks — the warp's dense map — and are carried through the landmarks' affine motion
(:class:`AffineMemo`). The chain runs several frames at
once (``ProcessorTrack(workers=N)``), so frames of one track can reach a stage out of order and from
several threads: :class:`TrackMemo` therefore reuses an entry only for frames within ``reuse`` frames
of the one that computed it (before or after), lets only a newer frame replace it (or any frame after
a jump back of more than ``expire`` frames: a restarted stream — far more than the chain ever has in
flight), forgets tracks not seen for a while, and locks around every access. Reuse is thus always
within bounds whatever the order; the order only decides how often it happens.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import cv2
import numpy as np

from stream.exceptions import InputError

T = TypeVar("T")
R = TypeVar("R")


class TrackMemo(Generic[T]):
    """A small thread-safe store of one value per key (a track id, or a tuple starting with one).

    Args:
        reuse: an entry serves frames whose index is less than this far from the entry's frame
            (1: never reused).
        expire: entries this many frames older than the newest one stored are dropped.
        max_entries: at most this many entries are kept (the oldest frames go first).
    """

    def __init__(self, reuse: int, *, expire: int = 90, max_entries: int = 64) -> None:
        if reuse < 1:
            raise InputError(f"reuse must be >= 1, got {reuse}")
        if expire < reuse:
            raise InputError(f"expire must be >= reuse ({reuse}), got {expire}")
        if max_entries < 1:
            raise InputError(f"max_entries must be >= 1, got {max_entries}")
        self.reuse = reuse
        self.expire = expire
        self.max_entries = max_entries
        self._entries: dict[Hashable, tuple[int, T]] = {}
        self._clock: int | None = None  # the newest frame stored since the last restart
        self._lock = threading.Lock()

    def get(self, key: Hashable, frame_index: int) -> T | None:
        """The value stored for ``key`` if it was computed within ``reuse`` frames of ``frame_index``."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or abs(frame_index - entry[0]) >= self.reuse:
            return None
        return entry[1]

    def put(self, key: Hashable, frame_index: int, value: T) -> None:
        """Store ``value`` computed at ``frame_index``, unless a newer frame's value is stored (an older
        frame never replaces it, except after a jump back of more than ``expire`` frames: a restart)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or frame_index > entry[0] or entry[0] - frame_index > self.expire:
                self._entries[key] = (frame_index, value)
            # Age is measured from the newest frame, so a straggler from another worker cannot evict
            # fresh entries; a jump back of more than ``expire`` is a restart and resets the clock.
            if self._clock is None or frame_index > self._clock or self._clock - frame_index > self.expire:
                self._clock = frame_index
            self._evict(self._clock)

    def _evict(self, clock: int) -> None:
        stale = [k for k, (i, _) in self._entries.items() if abs(clock - i) > self.expire]
        for k in stale:
            del self._entries[k]
        if len(self._entries) > self.max_entries:
            by_age = sorted(self._entries, key=lambda k: self._entries[k][0])
            for k in by_age[:len(self._entries) - self.max_entries]:
                del self._entries[k]

    def clear(self) -> None:
        """Forget everything (a new source, or the end of a stream)."""
        with self._lock:
            self._entries.clear()
            self._clock = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def fit_affine(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares (2, 3) affine map taking points ``src`` (N, 2) onto ``dst``, and each point's residual.

    Solved in closed form on centred points with element-wise numpy: LAPACK's ``lstsq`` would wake
    OpenBLAS's thread pool, whose spinning threads cost more CPU than the fit itself.
    """
    n = len(src)
    sm, dm = src.sum(0) / n, dst.sum(0) / n
    sx, sy = src[:, 0] - sm[0], src[:, 1] - sm[1]
    dx, dy = dst[:, 0] - dm[0], dst[:, 1] - dm[1]
    cxx, cxy, cyy = float((sx * sx).sum()), float((sx * sy).sum()), float((sy * sy).sum())
    det = cxx * cyy - cxy * cxy
    m = np.zeros((2, 3))
    if abs(det) > 1e-12 * max(cxx * cyy, 1e-300):
        b = np.array([[(dx * sx).sum(), (dx * sy).sum()], [(dy * sx).sum(), (dy * sy).sum()]])
        m[:, :2] = b @ (np.array([[cyy, -cxy], [-cxy, cxx]]) / det)
    m[:, 2] = dm - m[:, :2] @ sm
    rx = m[0, 0] * src[:, 0] + m[0, 1] * src[:, 1] + m[0, 2] - dst[:, 0]
    ry = m[1, 0] * src[:, 0] + m[1, 1] * src[:, 1] + m[1, 2] - dst[:, 1]
    return m, np.sqrt(rx * rx + ry * ry)


class AffineMemo(Generic[T]):
    """Per track, a value computed for one frame, reused while the face's landmarks only move by an
    affine map.

    Between two runs of the mesh network the tracker carries a face's mesh by an affine map (plus what
    little non-rigid motion optical flow finds), so most frames' landmarks are an affine image of an
    earlier frame's. Anything a stage derives from the landmarks alone — the warp's dense map, the
    harmonic blend correction — then moves with that map, and carrying the stored value through it
    (one ``cv2.warpAffine``) stands for recomputing it. :meth:`get` returns the value and the map only
    when the affine fit explains every landmark to within ``tolerance`` pixels (99th percentile), the
    scale changed by less than ``max_scale_change``, and the value is less than ``reuse`` frames old
    (:class:`TrackMemo`'s rules, so any order of frames from several workers is safe).

    Args:
        reuse: an entry serves frames less than this many frames from the one that computed it
            (1: never reused).
        tolerance: largest landmark residual of the affine fit, pixels.
        max_scale_change: relative change of scale (square root of the map's determinant) allowed.
    """

    def __init__(self, reuse: int, *, tolerance: float = 0.3, max_scale_change: float = 0.1) -> None:
        if tolerance < 0:
            raise InputError(f"reuse tolerance must be >= 0 pixels, got {tolerance}")
        self.tolerance = tolerance
        self.max_scale_change = max_scale_change
        self._memo: TrackMemo[tuple[np.ndarray, T]] = TrackMemo(reuse)
        self.counters = {"computed": 0, "reused": 0}
        """How often :meth:`get` missed (the caller computed) and hit."""

    @property
    def enabled(self) -> bool:
        return self._memo.reuse > 1

    def get(self, key: Hashable, frame_index: int, landmarks: np.ndarray) -> tuple[T, np.ndarray] | None:
        """``(value, M)`` with ``M`` the (2, 3) map from the stored frame's pixels to this frame's, or None.

        ``landmarks``: (N, 2+) frame pixels of this frame's face, in the same layout as stored.
        """
        hit = self._find(key, frame_index, landmarks)
        self.counters["computed" if hit is None else "reused"] += 1
        return hit

    def carry(self, key: Hashable, frame_index: int, landmarks: np.ndarray,
              move: Callable[[T, np.ndarray], R | None]) -> R | None:
        """``move(value, M)`` for what :meth:`get` would return, or None when there is nothing to carry or
        ``move`` declines it (returns None): the caller then computes afresh, and :attr:`counters` count
        the frame as computed."""
        hit = self._find(key, frame_index, landmarks)
        moved = None if hit is None else move(*hit)
        self.counters["computed" if moved is None else "reused"] += 1
        return moved

    def _find(self, key: Hashable, frame_index: int, landmarks: np.ndarray) -> tuple[T, np.ndarray] | None:
        entry = self._memo.get(key, frame_index) if self.enabled else None
        if entry is None:
            return None
        ref, value = entry
        m, residual = fit_affine(ref, np.asarray(landmarks, np.float64)[:, :2])
        k = int(0.99 * (len(residual) - 1))
        scale = float(np.sqrt(abs(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0])))
        if float(np.partition(residual, k)[k]) > self.tolerance or abs(scale - 1.0) > self.max_scale_change:
            return None
        return value, m

    def put(self, key: Hashable, frame_index: int, landmarks: np.ndarray, value: T) -> None:
        """Store ``value`` computed for a frame whose face has ``landmarks`` (frame pixels)."""
        if self.enabled:
            self._memo.put(key, frame_index, (np.asarray(landmarks, np.float64)[:, :2].copy(), value))

    def clear(self) -> None:
        self._memo.clear()


def carry_matrix(motion: np.ndarray, old_origin: tuple[float, float],
                 new_origin: tuple[float, float]) -> np.ndarray:
    """(2, 3) map from a pixel of the new frame's array (origin ``new_origin`` in frame pixels) to where
    it was in the old frame's array (origin ``old_origin``), for ``cv2.WARP_INVERSE_MAP``, given the
    ``motion`` (2, 3) from old frame pixels to new ones."""
    inv = cv2.invertAffineTransform(motion)
    out = inv.copy()
    out[:, 2] = inv[:, :2] @ np.asarray(new_origin, np.float64) + inv[:, 2] - np.asarray(old_origin, np.float64)
    return out


def seam_miss(miss: np.ndarray, edge: np.ndarray, size: float) -> float:
    """How far (grey levels) a seam misses along ``edge`` ((h, w) bool): ``miss`` ((h, w, c) float32, zero
    off the edge) averaged over stretches of the edge about 1/8 of a face of ``size`` pixels long, then
    over channels and stretches. What shows of a seam is its low frequencies (its texture is the
    source's either way), so a miss that changes sign from pixel to pixel counts for little."""
    k = max(3, int(size / 8) | 1)
    channels = miss.shape[2] if miss.ndim == 3 else 1
    total = np.abs(cv2.boxFilter(miss, -1, (k, k), normalize=False))
    if channels > 1:
        total = cv2.transform(total, np.full((1, channels), 1.0 / channels))
    mask = edge.view(np.uint8)
    count = cv2.boxFilter(mask, cv2.CV_32F, (k, k), normalize=False)
    return float(cv2.mean(cv2.divide(total, count), mask=mask)[0])
