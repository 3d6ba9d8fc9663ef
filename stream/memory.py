"""Resident memory of this process over a run: where it started and ended, its peak, and whether it kept
growing (a leak shows as a steady slope over the second half of a long run, after queues and caches have
filled).

Read from Linux's ``/proc/self``; elsewhere every figure is None. The peak is the kernel's high-water
mark (``VmHWM``), exact for every allocation however brief, when the run raised it above what the
process had reached before; otherwise (an earlier, larger phase of the same process) it is the largest
of the samples taken, a lower bound, and the result says so. :func:`reset_peak_rss` lowers the mark to
the current size first; it is process-wide, so only a caller that owns the process (the ``facestream``
commands) should use it.
"""

from __future__ import annotations

import os
from typing import Any

_MIB = 1 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int | None:
    """The process's resident set size now, or None where ``/proc`` has no answer."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_bytes() -> int | None:
    """The process's peak resident set size (``VmHWM``) since it started or since :func:`reset_peak_rss`."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_rss() -> bool:
    """Lower the process's peak mark to its current size; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def start_afresh() -> bool:
    """Before a measured run: collect garbage, hand the allocator's free pages back to the system (glibc's
    ``malloc_trim``), so that what the run finds resident is what is still in use, not what an earlier run
    freed, and lower the peak mark (:func:`reset_peak_rss`, whose result this returns)."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
    return reset_peak_rss()


def _slope(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of ``(x, y)`` points (0 for fewer than two distinct x)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


class MemoryWatch:
    """Samples the resident size every ``every`` frames of a run (a read of ``/proc/self/statm``, ~15 us).

    Call :meth:`frame` once per frame and :meth:`result` at the end. The growth is measured over the second
    half of the run and only when that half is at least ``min_growth_frames`` long: a swap's memory
    settles only after a few hundred frames (queues, the encoder's look-ahead, allocator arenas and
    MediaPipe fill up), and a slope taken earlier is that warm-up, not a leak.
    """

    def __init__(self, every: int = 16, min_growth_frames: int = 500) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.min_growth_frames = min_growth_frames
        self._start = rss_bytes()
        self._mark = peak_rss_bytes()
        self._samples: list[tuple[int, int]] = []
        self._frames = 0

    def frame(self) -> None:
        """Count one frame; take a sample on every ``every``-th."""
        self._frames += 1
        if self._start is not None and self._frames % self.every == 0:
            rss = rss_bytes()
            if rss is not None:
                self._samples.append((self._frames, rss))

    def result(self) -> dict[str, Any]:
        """``rss_start_mib``, ``rss_end_mib``, ``rss_peak_mib``, ``rss_added_mib`` (peak over start: what
        the run itself needed beyond what the process held), ``peak_exact`` and
        ``growth_mib_per_1000_frames`` (the least-squares slope over the second half of the run; None for
        a run too short to tell). Sizes in MiB, None where unknown."""
        end = rss_bytes()
        known = [r for r in (self._start, end) if r is not None] + [r for _, r in self._samples]
        mark = peak_rss_bytes()
        sampled = max(known) if known else None
        # The kernel's mark counts every page that was ever resident; if this run raised it, the run's
        # peak is that mark. If not, the samples are all that is known of this run.
        exact = mark is not None and self._mark is not None and mark > self._mark
        peak = max([mark, *known]) if exact and mark is not None else sampled
        half = self._frames // 2
        tail = [p for p in self._samples if p[0] > half]
        long_enough = self._frames - half >= self.min_growth_frames and len(tail) >= 4
        growth = round(_slope(tail) * 1000 / _MIB, 2) if long_enough else None
        return {
            "rss_start_mib": _mib(self._start),
            "rss_end_mib": _mib(end),
            "rss_peak_mib": _mib(peak),
            "rss_added_mib": _mib(peak - self._start) if peak is not None and self._start is not None else None,
            "peak_exact": exact,
            "growth_mib_per_1000_frames": growth,
        }


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / _MIB, 1)
