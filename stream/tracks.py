"""Pull-based frame tracks, in the manner of aiortc's ``MediaStreamTrack``.

Every source and every processing step is a :class:`FrameTrack`: ``await track.recv()`` returns the next
:class:`~stream.frames.Frame` and raises :class:`~stream.exceptions.EndOfStream` after the last one;
``stop()`` may be called any number of times. A :class:`ProcessorTrack` pulls from its upstream in a
worker task it owns, runs its function in an executor (never on the event loop) and hands results on
through a bounded :class:`~stream.handoff.Handoff`, so consecutive steps overlap across frames while
frames leave in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Protocol, runtime_checkable

from stream.choices import DropPolicy
from stream.exceptions import EndOfStream, FacestreamError, StageError
from stream.frames import Frame
from stream.handoff import Handoff

logger = logging.getLogger(__name__)


_THREAD_NICE = sys.platform.startswith("linux") and hasattr(os, "setpriority")


def _renice(tid: int, nice: int) -> None:
    """Raise thread ``tid``'s niceness to ``nice`` (never lower it: that needs privileges); a thread that
    has ended is left alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)


class FrameTrack(ABC):
    """A stream of frames; see the module docstring."""

    kind = "video"

    @abstractmethod
    async def recv(self) -> Frame:
        """The next frame; raises :class:`EndOfStream` after the last."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop producing frames and release resources. Idempotent."""


class WorkerTrack(FrameTrack):
    """A track fed by one worker task of its own, through a bounded :class:`~stream.handoff.Handoff`.

    The task starts at the first ``recv``, runs :meth:`_produce` (pull from ``upstream``, put frames into
    ``self._queue``) and ends the queue: cleanly after the last frame, with the error that stopped it
    (the next ``recv`` raises it, and the upstream is stopped), or on cancellation by ``stop()``.
    """

    def __init__(self, upstream: FrameTrack, *, name: str, queue_size: int = 4,
                 policy: DropPolicy = "block") -> None:
        self.upstream = upstream
        self.name = name
        self._queue: Handoff[Frame] = Handoff(queue_size, policy)
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def dropped(self) -> int:
        """Frames dropped by this track's queue (only with the keep-latest policy)."""
        return self._queue.dropped

    @abstractmethod
    async def _produce(self) -> None:
        """Pull frames from ``upstream`` and put the results into ``self._queue``, in order, to the end."""

    def _error(self, frame: Frame, exc: BaseException) -> BaseException:
        """A facestream error as is, anything else as a :class:`StageError` naming this step and frame."""
        return exc if isinstance(exc, FacestreamError) else StageError(self.name, frame.index, exc)

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work(), name=f"facestream-{self.name}")
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s worker failed", self.name, exc_info=task.exception())

    async def _work(self) -> None:
        try:
            await self._produce()
            self._queue.finish()
        except asyncio.CancelledError:
            self._queue.finish()
            raise
        except BaseException as exc:  # handed to the consumer, which decides what to do
            self._queue.finish(exc)
            self.upstream.stop()

    async def recv(self) -> Frame:
        if self._task is None and not self._stopped:
            self._start()
        return await self._queue.get()

    def _stop_worker(self) -> bool:
        """Cancel the worker, end the queue and stop the upstream; False when already stopped."""
        if self._stopped:
            return False
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
        self._queue.finish()
        self.upstream.stop()
        return True

    async def _await_worker(self) -> None:
        """``stop()``, then wait for the worker task to end."""
        task = self._task
        self.stop()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@runtime_checkable
class FrameProcessor(Protocol):
    """A per-frame step with resources: what a live session runs on every frame (face tracker + stage
    chain), and what a swap runs as its tracker."""

    def __call__(self, frame: Frame) -> Frame:
        """Process ``frame`` (in place or not) and return it; runs on one worker thread."""
        ...

    def close(self) -> None:
        """Release models and buffers. Safe to call twice."""
        ...


class SequentialSteps:
    """Several per-frame steps run one after the other on the calling thread, as one
    :class:`FrameProcessor`: each is timed in ``frame.timings`` under its name, and an exception from
    one ends the frame as a :class:`~stream.exceptions.StageError` naming that step.

    A live session's processor (tracker, then stages), and what :func:`stream.swap.swap_video` runs
    instead of one :class:`ProcessorTrack` per step where cores are few: a Python step on a thread of its
    own gains no core there, only GIL hand-overs with the other.
    """

    def __init__(self, steps: Sequence[tuple[str, FrameProcessor]]) -> None:
        if not steps:
            raise ValueError("SequentialSteps needs at least one step")
        self.steps = tuple(steps)

    def __call__(self, frame: Frame) -> Frame:
        for name, step in self.steps:
            t0 = time.perf_counter()
            try:
                frame = step(frame)
            except FacestreamError:
                raise
            except Exception as exc:
                raise StageError(name, frame.index, exc) from exc
            frame.timings[name] = time.perf_counter() - t0
        return frame

    def close(self) -> None:
        """Close every step, in order, all of them even when one fails; the first failure is re-raised."""
        error: BaseException | None = None
        for _, step in self.steps:
            try:
                step.close()
            except Exception as exc:  # the others still release theirs
                error = error or exc
        if error is not None:
            raise error


class ProcessorTrack(WorkerTrack):
    """Applies ``fn`` to every frame of ``upstream`` in a worker task and an executor.

    ``fn`` runs on a single thread by default, so stateful steps (tracking) see frames in order. With
    ``workers=N`` a stateless ``fn`` runs on up to N frames at once; results still leave in input order
    (an ordered parallel map: at most N frames in flight, the oldest awaited first). ``ahead=K`` hands
    the workers K more frames, queued in the executor (still run in order, first come first served), so
    that a worker starts on the next frame as soon as it is done instead of after a round trip through
    the event loop (0.5-1 ms a frame measured under load); for files, not live tracks, whose newest
    frame must be free to replace the ones waiting. An exception from ``fn`` ends the stream: the next
    ``recv`` raises :class:`StageError` naming ``name`` and the frame, and the upstream is stopped.
    """

    def __init__(
        self,
        upstream: FrameTrack,
        fn: Callable[[Frame], Frame],
        *,
        name: str,
        queue_size: int = 4,
        policy: DropPolicy = "block",
        executor: Executor | None = None,
        on_close: Callable[[], None] | None = None,
        workers: int = 1,
        ahead: int = 0,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if ahead < 0:
            raise ValueError(f"ahead must be >= 0, got {ahead}")
        super().__init__(upstream, name=name, queue_size=queue_size, policy=policy)
        self.workers = workers
        self.ahead = ahead
        self._fn = fn
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(workers, thread_name_prefix=f"facestream-{name}")
        self._on_close = on_close
        self._inflight: set[concurrent.futures.Future[Frame]] = set()
        self._local = threading.local()
        self._threads: set[int] = set()  # native ids of the threads that ran fn
        self._clocks: list[int] = []  # their CPU-time clocks, where there are such clocks
        self._threads_lock = threading.Lock()
        self._nice: int | None = None

    def lower_priority(self, nice: int) -> bool:
        """Run ``fn`` at niceness ``nice`` (at least) from now on, on the threads that ran it so far and on
        any that start later; False where threads have no priority of their own (only Linux schedules a
        thread's niceness apart from its process's) or belong to an executor passed in (shared: not this
        track's to lower). One-way: an unprivileged process may raise its threads' niceness, never lower
        it back, so the threads keep it for their life (the track's)."""
        if not _THREAD_NICE or not self._own_executor:
            return False
        with self._threads_lock:
            self._nice = nice
            threads = list(self._threads)
        for tid in threads:
            _renice(tid, nice)
        return True

    def thread_cpu_seconds(self) -> list[float]:
        """CPU seconds each thread that ran ``fn`` has used so far, over its whole life (an executor of the
        track's own runs nothing else; a shared one's threads count what else they ran too), in the order
        the threads started (a thread that has ended reads 0); empty where threads have no CPU clock of
        their own."""
        with self._threads_lock:
            clocks = list(self._clocks)
        out = []
        for clock in clocks:
            try:
                out.append(time.clock_gettime(clock))
            except OSError:  # the thread has ended: keep the others' places
                out.append(0.0)
        return out

    def _run(self, frame: Frame) -> Frame:
        self._local.inside = True
        if not getattr(self._local, "seen", False):  # a thread's first frame
            self._local.seen = True
            tid = threading.get_native_id()
            clock = None
            if hasattr(time, "pthread_getcpuclockid"):
                with contextlib.suppress(OSError):
                    clock = time.pthread_getcpuclockid(threading.get_ident())
            with self._threads_lock:
                self._threads.add(tid)
                if clock is not None:
                    self._clocks.append(clock)
                nice = self._nice
            if nice is not None:
                _renice(tid, nice)
        try:
            t0 = time.perf_counter()
            out = self._fn(frame)
            out.timings.setdefault(self.name, time.perf_counter() - t0)
            return out
        finally:
            self._local.inside = False

    def _submit(self, frame: Frame) -> asyncio.Future[Frame]:
        future = self._executor.submit(self._run, frame)
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        return asyncio.wrap_future(future)

    async def _produce(self) -> None:
        pending: deque[tuple[Frame, asyncio.Future[Frame]]] = deque()
        upstream_done = False
        try:
            while True:
                while not upstream_done and len(pending) < self.workers + self.ahead:
                    try:
                        frame = await self.upstream.recv()
                    except EndOfStream:
                        upstream_done = True
                        break
                    pending.append((frame, self._submit(frame)))
                if not pending:
                    break
                frame, future = pending.popleft()
                try:
                    out = await future
                except FacestreamError:
                    raise
                except Exception as exc:
                    raise StageError(self.name, frame.index, exc) from exc
                await self._queue.put(out)
        finally:
            for _, future in pending:
                future.cancel()

    def stop(self) -> None:
        """Stop the worker and the upstream. With its own executor, also wait (up to 30 s) for the calls
        already running: whoever closes ``fn``'s models next (``on_close``, the pipeline's ``stop``) must
        not pull them from under a frame in progress. A shared executor runs its owner's clean-up after
        them anyway, and the loop is not held up for them."""
        if not self._stop_worker():
            return
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
            running = [f for f in list(self._inflight) if not f.done()]
            if running and not getattr(self._local, "inside", False):
                concurrent.futures.wait(running, timeout=30.0)
        if self._on_close is not None:
            with contextlib.suppress(Exception):
                self._on_close()

    async def aclose(self) -> None:
        """``stop()`` and wait for the worker task to finish."""
        await self._await_worker()
