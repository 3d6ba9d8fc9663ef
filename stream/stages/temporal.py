"""Per-track state that weight-free stages reuse across nearby frames.

Some per-face quantities change slowly along a track — the colour statistics of the face, say — so a
stage may compute them every few frames and reuse them in between. The chain runs several frames at
once (``ProcessorTrack(workers=N)``), so frames of one track can reach a stage out of order and from
several threads: :class:`TrackMemo` therefore reuses an entry only for frames within ``reuse`` frames
of the one that computed it (before or after), lets only a newer frame replace it (or any frame after
a jump back of more than ``expire`` frames: a restarted stream — far more than the chain ever has in
flight), forgets tracks not seen for a while, and locks around every access. Reuse is thus always
within bounds whatever the order; the order only decides how often it happens.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Generic, TypeVar

from stream.exceptions import InputError

T = TypeVar("T")


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
