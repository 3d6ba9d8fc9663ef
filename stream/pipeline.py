"""Runs a chain of frame tracks into a sink, in order, with clean shutdown on any failure.

The chain is built from :class:`~stream.tracks.FrameTrack` objects: a source (decode thread + bounded
queue), then one :class:`~stream.tracks.ProcessorTrack` per step (tracking, the stage chain), each with
its own worker task and executor, so decode, tracking, stages and encode of consecutive frames overlap
while every frame leaves in input order. :func:`run_pipeline` pulls the last track into a
:class:`FrameSink`; if anything fails, the sink is aborted (no partial output) and every track stopped.

On 2 cores a swap runs tracking and the stages one after the other in one track
(:class:`~stream.tracks.SequentialSteps`; ``SwapOptions.split_steps``), and :class:`YieldToEncoder`
lowers the priority of the processing threads where the encoder sets the pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stream.exceptions import EndOfStream
from stream.frames import Frame
from stream.memory import MemoryWatch
from stream.tracks import FrameTrack, ProcessorTrack

logger = logging.getLogger(__name__)


class FrameSink(Protocol):
    """Where processed frames go (a file encoder, a WebRTC track, an RTSP push...)."""

    async def write(self, frame: Frame) -> None:
        """Take one frame; may wait (back-pressure)."""
        ...

    async def close(self) -> Any:
        """Flush and finalise; returns sink statistics."""
        ...

    async def abort(self) -> None:
        """Discard everything written so far (no partial output). Idempotent."""
        ...


@dataclass
class PipelineStats:
    """What happened in one run."""

    frames: int = 0
    frames_with_faces: int = 0
    faces: int = 0
    """Face detections summed over frames."""
    track_ids: set[int] = field(default_factory=set)
    max_faces_in_frame: int = 0
    modified_frames: int = 0
    step_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    """Seconds per step (decode, track, stages, paste...) summed over frames."""
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    """CPU time of the whole process (every thread, libraries' own included) while the run lasted: what
    the run cost on a machine whose cores it shares with nothing else."""
    memory: dict[str, Any] = field(default_factory=dict)
    """The process's resident memory over the run (:meth:`stream.memory.MemoryWatch.result`)."""
    sink: Any = None

    def add(self, frame: Frame) -> None:
        self.frames += 1
        n = len(frame.faces)
        self.faces += n
        self.frames_with_faces += n > 0
        self.max_faces_in_frame = max(self.max_faces_in_frame, n)
        self.track_ids.update(f.track_id for f in frame.faces)
        self.modified_frames += frame.modified
        for step, seconds in frame.timings.items():
            self.step_seconds[step] += seconds

    @property
    def fps(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        steps = dict(self.step_seconds)
        encode = getattr(self.sink, "encode_seconds", None)  # the sink's thread: conversion + encoder calls
        if encode is not None:
            steps.setdefault("encode", encode)
        return {
            "frames": self.frames,
            "frames_with_faces": self.frames_with_faces,
            "frames_without_face": self.frames - self.frames_with_faces,
            "frames_modified": self.modified_frames,
            "face_detections": self.faces,
            "distinct_faces": len(self.track_ids),
            "max_faces_in_frame": self.max_faces_in_frame,
            "wall_seconds": round(self.wall_seconds, 4),
            "fps": round(self.fps, 3),
            "cpu_seconds": round(self.cpu_seconds, 4),
            "cpu_ms_per_frame": round(1000 * self.cpu_seconds / max(self.frames, 1), 3),
            "cores_busy": round(self.cpu_seconds / self.wall_seconds, 3) if self.wall_seconds > 0 else 0.0,
            "ms_per_frame": {k: round(1000 * v / max(self.frames, 1), 3) for k, v in sorted(steps.items())},
            "memory": dict(self.memory),
        }


class YieldToEncoder:
    """Lowers the scheduling priority of a run's processing threads once the encoder proves its bottleneck.

    With few cores the encoder's threads (x264's) and the Python steps (tracking, stages) share them. Where
    the encoder sets the pace, its input queue full frame after frame, each millisecond a step takes a core
    from a runnable encoder thread delays the whole run, while the encoder itself leaves cores idle between
    its frame threads' dependencies; a step at a lower priority (niceness 10) runs in those gaps instead
    (MediaPipe's inference thread, a small share, keeps its priority). Those gaps are only so wide, though:
    a step thread that needs much of a core at the encoder's pace no longer keeps up once lowered, and the
    run slows down. So the threads are lowered only while the busiest step thread is busy at most
    ``max_busy`` of the time.
    Measured on 2 cores, alternate runs with the threads lowered after frame 60-65 of 300 and never lowered:
    camera-like footage (the step thread busy 0.28-0.32 of the time) 0.83-0.85 -> 0.83-0.90 of the transcode
    floor, panning footage (0.32-0.33) 0.79-0.81 -> 0.87-0.90; the still demo clip, whose encoding is
    cheaper (its step thread busy 0.54-0.62), 0.62-0.81 -> 0.62-0.65: lowered there cost 10 % of the
    swap's fps (4 alternate triples: 132 never, 119 lowered after frame 62-95, 118 from the first frame).

    Call it with every frame before the frame is written (:func:`run_pipeline`'s ``on_frame``). After
    ``start`` frames of warm-up it watches the last ``window`` frames: ``fill()`` is the encoder queue's
    fill (0 empty, 1 full, so the coming write waits), and the first time at least ``bound`` of them found
    it full, with no step thread busy more than ``max_busy`` of the wall time over those frames, the threads
    are lowered. For good, because an unprivileged process cannot raise a thread's priority back; hence a
    long window (1.5 s at 30 fps) of a queue full nearly throughout. An encoder that buffers frames of its
    own (x264's lookahead: 10 frames at ``veryfast``, 60 at ``placebo``) fills its queue only once its
    buffer is full.
    """

    def __init__(self, fill: Callable[[], float], tracks: Sequence[ProcessorTrack], *, start: int = 15,
                 window: int = 45, bound: float = 0.9, nice: int = 10, max_busy: float = 0.45,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if window < 1 or not 0 < bound <= 1:
            raise ValueError(f"window must be >= 1 and bound in (0, 1]; got {window}, {bound}")
        if not 0 < max_busy <= 1:
            raise ValueError(f"max_busy must be in (0, 1]; got {max_busy}")
        self.fill = fill
        self.tracks = tuple(tracks)
        self.start, self.window, self.bound, self.nice, self.max_busy = start, window, bound, nice, max_busy
        self.clock = clock
        self.lowered_at: int | None = None
        """Index of the frame after which the threads were lowered; None while they were not."""
        self.busy: float | None = None
        """Share of the wall time the busiest step thread was busy over the last full window (None before
        one, or where threads have no CPU clock)."""
        self._seen = 0
        self._done = False
        self._recent: deque[bool] = deque(maxlen=window)
        self._full = 0  # True values in _recent
        # (wall time, CPU seconds of each step thread) per watched frame, to measure the window's busy share
        self._cpu_marks: deque[tuple[float, list[float]]] = deque(maxlen=window + 1)

    def _busiest(self) -> float | None:
        """The largest share of the window's wall time a step thread spent on a CPU; None where the steps'
        threads have no CPU clocks. A thread that started within the window (a track's clocks are listed in
        the order its threads started) counts all its CPU time."""
        (w0, c0), (w1, c1) = self._cpu_marks[0], self._cpu_marks[-1]
        if w1 <= w0 or not c1:
            return None
        before = list(c0[:len(c1)]) + [0.0] * (len(c1) - len(c0))
        return max(b - a for a, b in zip(before, c1, strict=True)) / (w1 - w0)

    def __call__(self, frame: Frame) -> None:
        if self._done:
            return
        self._seen += 1
        if self._seen <= self.start:
            return
        if len(self._recent) == self.window:
            self._full -= self._recent[0]
        full = self.fill() >= 1.0
        self._recent.append(full)
        self._full += full
        self._cpu_marks.append((self.clock(), [c for t in self.tracks for c in t.thread_cpu_seconds()]))
        if len(self._recent) < self.window:
            return
        self.busy = self._busiest()
        if self._full >= self.bound * self.window and (self.busy is None or self.busy <= self.max_busy):
            self._done = True  # lowered, or nowhere to lower them (not Linux): either way, done watching
            if any([track.lower_priority(self.nice) for track in self.tracks]):
                self.lowered_at = frame.index
                logger.info("the encoder sets the pace (its queue full at %d of the last %d frames, the steps "
                            "busy %s of the time): processing threads lowered to niceness %d", self._full,
                            self.window, "?" if self.busy is None else f"{self.busy:.2f}", self.nice)


async def run_pipeline(
    track: FrameTrack,
    sink: FrameSink,
    *,
    on_frame: Callable[[Frame], None] | None = None,
    stop: Callable[[], None] | None = None,
) -> PipelineStats:
    """Pull every frame of ``track`` into ``sink`` and close it; on failure abort the sink and re-raise.

    The returned statistics include the run's wall and CPU time and the process's memory over it
    (:class:`stream.memory.MemoryWatch`, a sample every 16 frames).

    ``stop`` (optional) is called once at the end however the run ends, after ``track.stop()``: use it to
    release resources owned outside the tracks.
    """
    stats = PipelineStats()
    memory = MemoryWatch()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        while True:
            try:
                frame = await track.recv()
            except EndOfStream:
                break
            stats.add(frame)
            memory.frame()
            if on_frame is not None:
                on_frame(frame)
            await sink.write(frame)
        stats.sink = await sink.close()
    except BaseException:
        # Shielded so that a cancelled run still removes its partial output.
        with contextlib.suppress(Exception):
            await asyncio.shield(sink.abort())
        raise
    finally:
        track.stop()
        if stop is not None:
            stop()
        stats.wall_seconds = time.perf_counter() - t0
        stats.cpu_seconds = time.process_time() - c0
        stats.memory = memory.result()
    return stats
