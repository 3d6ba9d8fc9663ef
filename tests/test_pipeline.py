"""Pipeline ordering, overlap and shutdown with in-memory tracks and sinks (fakes, not mocks)."""

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable

import pytest

from stream.exceptions import EndOfStream, StageError
from stream.frames import Frame
from stream.pipeline import YieldToEncoder, run_pipeline
from stream.tracks import ProcessorTrack, SequentialSteps
from tests.trackutil import ListSource, numbered_frames


class MemorySink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.closed = False
        self.aborted = 0

    async def write(self, frame: Frame) -> None:
        self.frames.append(frame)

    async def close(self) -> int:
        self.closed = True
        return len(self.frames)

    async def abort(self) -> None:
        self.aborted += 1
        self.frames.clear()


def jittery(frame: Frame) -> Frame:
    # Uneven per-frame work: order must still be preserved.
    time.sleep(0.002 * (frame.index % 3))
    frame.image = frame.image + 1
    frame.modified = True
    return frame


async def test_frames_leave_in_order_with_timestamps_untouched():
    src = ListSource(numbered_frames(40))
    expected = [(f.index, f.pts) for f in src.frames]
    track = ProcessorTrack(ProcessorTrack(src, jittery, name="a"), jittery, name="b", queue_size=2)
    sink = MemorySink()
    stats = await run_pipeline(track, sink)
    assert [(f.index, f.pts) for f in sink.frames] == expected
    assert all(int(f.image[0, 0, 0]) == (f.index + 2) % 256 for f in sink.frames)
    assert sink.closed and stats.frames == 40 and stats.modified_frames == 40
    assert set(stats.step_seconds) >= {"a", "b"}


async def test_steps_overlap_across_frames():
    """Two steps on their own threads: step b of frame N runs while step a works on frame N+1."""
    active: set[str] = set()
    overlaps = 0
    lock = threading.Lock()

    def step(name: str):
        def fn(frame: Frame) -> Frame:
            nonlocal overlaps
            with lock:
                active.add(name)
                overlaps += len(active) > 1
            time.sleep(0.01)
            with lock:
                active.discard(name)
            return frame
        return fn

    track = ProcessorTrack(ProcessorTrack(ListSource(numbered_frames(12)), step("a"), name="a"), step("b"), name="b")
    await run_pipeline(track, MemorySink())
    assert overlaps > 0


async def test_failing_stage_shuts_everything_down_cleanly():
    src = ListSource(numbered_frames(50))

    def buggy(frame: Frame) -> Frame:
        if frame.index == 7:
            raise ValueError("bad pixel")
        return frame

    track = ProcessorTrack(ProcessorTrack(src, buggy, name="buggy"), jittery, name="after")
    sink = MemorySink()
    with pytest.raises(StageError, match=r"'buggy' failed at frame 7: ValueError: bad pixel"):
        await run_pipeline(track, sink)
    assert sink.aborted == 1 and not sink.closed and sink.frames == []
    assert src.stopped >= 1
    # No worker task is left running.
    await asyncio.sleep(0)
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("facestream-")]
    assert all(t.done() for t in leftovers)


async def test_cancelled_run_aborts_sink():
    src = ListSource(numbered_frames(10_000))

    def slow(frame: Frame) -> Frame:
        time.sleep(0.001)
        return frame

    sink = MemorySink()
    task = asyncio.create_task(run_pipeline(ProcessorTrack(src, slow, name="slow"), sink))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.aborted == 1 and src.stopped >= 1


async def test_keep_latest_processor_drops_under_slow_consumer():
    track = ProcessorTrack(ListSource(numbered_frames(30)), lambda f: f, name="fast", queue_size=1,
                           policy="keep_latest")
    got = []
    while True:
        try:
            frame = await track.recv()
        except EndOfStream:
            break
        got.append(frame.index)
        await asyncio.sleep(0.005)
    track.stop()
    track.stop()  # idempotent
    assert got == sorted(got) and got[-1] == 29
    assert track.dropped > 0 and len(got) + track.dropped == 30


@pytest.mark.parametrize("ahead", [0, 1])
async def test_stopping_waits_for_the_frame_in_progress_before_closing_resources(ahead):
    # A run stopped mid-frame (Ctrl-C, a failing sink) must not close a model under a running call:
    # the tracker's MediaPipe graph complained, or worse, when it did.
    started, events = threading.Event(), []

    def slow(frame: Frame) -> Frame:
        started.set()
        time.sleep(0.3)
        events.append("frame done")
        return frame

    def release() -> None:
        events.append("closed")

    # With `ahead` the next frame waits in the executor: it is dropped, never run after the close.
    track = ProcessorTrack(ListSource(numbered_frames(5)), slow, name="slow", on_close=release, ahead=ahead)
    pipeline = asyncio.create_task(run_pipeline(track, MemorySink(), stop=lambda: events.append("pipeline stop")))
    await asyncio.get_running_loop().run_in_executor(None, started.wait)
    pipeline.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pipeline
    assert events == ["frame done", "closed", "pipeline stop"]


class Step:
    """A named step that records which frames it saw and in what order, and can fail on one frame."""

    def __init__(self, name: str, log: list[tuple[str, int]], fail_at: int | None = None) -> None:
        self.name, self.log, self.fail_at, self.closed = name, log, fail_at, 0

    def __call__(self, frame: Frame) -> Frame:
        if frame.index == self.fail_at:
            raise ValueError(f"{self.name} broke")
        self.log.append((self.name, frame.index))
        time.sleep(0.001)
        return frame

    def close(self) -> None:
        self.closed += 1
        if self.fail_at is not None:
            raise RuntimeError(f"{self.name} could not close")


async def test_sequential_steps_run_each_frame_through_every_step_in_order_and_time_each():
    log: list[tuple[str, int]] = []
    steps = [Step("track", log), Step("swap", log)]
    sink = MemorySink()
    await run_pipeline(ProcessorTrack(ListSource(numbered_frames(6)), SequentialSteps(
        [(s.name, s) for s in steps]), name="swap"), sink)
    assert log == [(name, i) for i in range(6) for name in ("track", "swap")]
    assert [f.index for f in sink.frames] == list(range(6))
    for frame in sink.frames:
        assert 0.001 <= frame.timings["track"] < 1 and 0.001 <= frame.timings["swap"] < 1


async def test_sequential_steps_name_the_failing_step_and_close_every_step():
    log: list[tuple[str, int]] = []
    steps = [Step("track", log), Step("swap", log, fail_at=3)]
    seq = SequentialSteps([(s.name, s) for s in steps])
    sink = MemorySink()
    with pytest.raises(StageError, match=r"'swap' failed at frame 3: ValueError: swap broke"):
        await run_pipeline(ProcessorTrack(ListSource(numbered_frames(9)), seq, name="both"), sink)
    assert sink.aborted == 1 and ("track", 3) in log and ("swap", 3) not in log
    steps[0].fail_at = 99  # its close fails now: the next step is still closed, and the failure re-raised
    with pytest.raises(RuntimeError, match="track could not close"):
        seq.close()
    assert [s.closed for s in steps] == [1, 1]
    with pytest.raises(ValueError, match="at least one step"):
        SequentialSteps([])


@pytest.mark.parametrize("ahead", [0, 1, 3])
async def test_ahead_queues_frames_for_the_worker_and_keeps_them_in_order(ahead):
    """With ``ahead`` the next frames already wait in the executor while one is processed, so the
    worker never waits for the event loop between frames; one worker still sees them in order."""
    src = ListSource(numbered_frames(12))
    seen: list[tuple[int, int]] = []

    def stateful(frame: Frame) -> Frame:
        time.sleep(0.05 if frame.index == 0 else 0.001)
        seen.append((frame.index, len(src.frames)))  # how many frames the source still holds
        return frame

    sink = MemorySink()
    await run_pipeline(ProcessorTrack(src, stateful, name="s", ahead=ahead), sink)
    assert [i for i, _ in seen] == list(range(12)) and [f.index for f in sink.frames] == list(range(12))
    assert seen[0][1] == 12 - 1 - ahead  # frame 0 itself and `ahead` more taken from the source
    with pytest.raises(ValueError, match="ahead must be >= 0"):
        ProcessorTrack(src, stateful, name="s", ahead=-1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="only Linux gives threads a niceness of their own")
async def test_lower_priority_reaches_the_worker_threads_and_no_other():
    """Frames processed after ``lower_priority`` run at the lowered niceness, on the thread that already
    ran frames and on threads that start later; the event loop's thread keeps its own."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    seen: dict[int, int] = {}

    def record(frame: Frame) -> Frame:
        seen[frame.index] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return frame

    track = ProcessorTrack(ListSource(numbered_frames(12)), record, name="w", workers=2)

    def lower_after_frame_5(frame: Frame) -> None:
        if frame.index == 5:
            assert track.lower_priority(min(base + 5, 19)) is True

    await run_pipeline(track, MemorySink(), on_frame=lower_after_frame_5)
    lowered = min(base + 5, 19)
    assert [seen[i] for i in range(4)] == [base] * 4  # at most 2 frames in flight when it is lowered
    assert [seen[i] for i in range(8, 12)] == [lowered] * 4
    assert os.getpriority(os.PRIO_PROCESS, 0) == base


class FakeSteps:
    """Stands in for the processing tracks: records the niceness it was asked for; its one thread is busy
    ``busy_at(frame)`` of each frame's 10 ms (none: no CPU clocks)."""

    def __init__(self, can: bool = True, busy_at: Callable[[int], float] | None = None) -> None:
        self.asked: list[int] = []
        self.can = can
        self.busy_at = busy_at
        self.cpu = 0.0

    def lower_priority(self, nice: int) -> bool:
        self.asked.append(nice)
        return self.can

    def thread_cpu_seconds(self) -> list[float]:
        return [] if self.busy_at is None else [self.cpu]


def watch_frames(fill_at: Callable[[int], float], steps: FakeSteps) -> tuple[YieldToEncoder, list[int]]:
    """A watcher (warm-up 10 frames, window 20) over 200 frames of 10 ms whose encoder queue is
    ``fill_at(index)`` full at each; also the frames at which it read the fill."""
    read: list[int] = []
    now = 0

    def fill() -> float:
        read.append(now)
        return fill_at(now)

    watch = YieldToEncoder(fill, [steps], start=10, window=20, nice=7, clock=lambda: now * 0.01)
    for frame in numbered_frames(200):
        now = frame.index
        if steps.busy_at is not None:
            steps.cpu += 0.01 * steps.busy_at(now)
        watch(frame)
    return watch, read


def test_yield_to_encoder_lowers_the_steps_once_the_encoder_queue_stays_full():
    """The queue fills at frame 50 (an encoder's own buffer full): 18 of the last 20 frames full at 67."""
    steps = FakeSteps()
    watch, read = watch_frames(lambda i: 1.0 if i >= 50 else 0.25, steps)
    assert steps.asked == [7] and watch.lowered_at == 67
    assert read == list(range(10, 68))  # not during the warm-up, nor once lowered


@pytest.mark.parametrize(("fill_at", "lowered_at"), [
    (lambda i: float(i % 2), None),  # full every other frame: the stages keep up as often as not
    (lambda i: 0.0, None),  # never full: the stages set the pace
    (lambda i: 1.0 if i % 10 else 0.5, 29),  # full 9 frames in 10: at the bound, the first full window
])
def test_yield_to_encoder_lowers_the_steps_only_when_the_queue_is_full_nearly_throughout(fill_at, lowered_at):
    steps = FakeSteps()
    watch, read = watch_frames(fill_at, steps)
    assert watch.lowered_at == lowered_at
    assert steps.asked == ([] if lowered_at is None else [7])
    assert len(read) == (190 if lowered_at is None else lowered_at - 9)


@pytest.mark.parametrize(("busy_at", "lowered_at", "busy"), [
    (lambda i: 0.3, 67, 0.3),  # the steps need under half a core: lowered, they still keep up in the gaps
    (lambda i: 0.6, None, 0.6),  # they need more: lowered, they would set the pace; left alone
    # From frame 100 on they need less: lowered once the window's share is down to max_busy (0.45).
    (lambda i: 0.6 if i < 100 else 0.4, 115, (4 * 0.6 + 16 * 0.4) / 20),
])
def test_yield_to_encoder_leaves_steps_that_need_much_of_a_core(busy_at, lowered_at, busy):
    steps = FakeSteps(busy_at=busy_at)
    watch, _ = watch_frames(lambda i: 1.0 if i >= 50 else 0.25, steps)
    assert watch.lowered_at == lowered_at
    assert steps.asked == ([] if lowered_at is None else [7])
    assert watch.busy == pytest.approx(busy)


def test_yield_to_encoder_counts_a_step_thread_that_starts_within_the_window():
    """A second worker thread starts at frame 35 and needs 0.9 of a core: its CPU counts from its start,
    the busiest thread is too busy, and the steps are not lowered (the first thread alone needs 0.2)."""
    now = 0

    class TwoThreads(FakeSteps):
        def __init__(self) -> None:
            super().__init__(busy_at=lambda i: 0.2)
            self.cpu2 = 0.0

        def thread_cpu_seconds(self) -> list[float]:
            return [self.cpu] + ([self.cpu2] if now >= 35 else [])

    steps = TwoThreads()
    watch = YieldToEncoder(lambda: 1.0, [steps], start=30, window=20, nice=7, clock=lambda: now * 0.01)
    for frame in numbered_frames(100):
        now = frame.index
        steps.cpu += 0.002
        if now >= 35:
            steps.cpu2 += 0.009
        watch(frame)
    assert steps.asked == [] and watch.lowered_at is None
    assert watch.busy == pytest.approx(0.9)  # the last window: the second thread throughout


async def test_processor_track_reports_its_threads_cpu_time():
    def burn(frame: Frame) -> Frame:
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.02:
            pass
        return frame

    track = ProcessorTrack(ListSource(numbered_frames(3)), burn, name="b")
    assert track.thread_cpu_seconds() == []  # no thread has run a frame yet
    cpu: list[list[float]] = []  # read as each frame comes out, while the thread lives
    await run_pipeline(track, MemorySink(), on_frame=lambda f: cpu.append(track.thread_cpu_seconds()))
    if not hasattr(time, "pthread_getcpuclockid"):
        assert cpu[-1] == []
        return
    assert len(cpu[-1]) == 1 and cpu[-1][0] >= 0.059  # one thread, the 3 frames' 60 ms of CPU at least


def test_yield_to_encoder_stops_watching_where_threads_have_no_priority_of_their_own():
    steps = FakeSteps(can=False)
    watch, read = watch_frames(lambda i: 1.0, steps)
    assert steps.asked == [7] and watch.lowered_at is None and read == list(range(10, 30))
