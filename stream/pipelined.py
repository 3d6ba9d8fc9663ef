"""Frames through the pipelined executor: host pre-step, one device op, host post-step, in order.

A :class:`SplitChain` is a per-frame job cut in three: ``prepare(frame)`` on the host (crops, source
selection...) gives the device inputs of the frame as one batch (or a few, for a frame with more faces
than a batch holds); ``compute(inputs, stream)`` is one device operation over such a batch (every network
and the glue between them, no host round trip); ``finish(frame, prepared, outputs)`` pastes the result
back on the host. :class:`FramePipeline` runs them through :class:`~engines.executor.PipelinedExecutor`
(upload, compute and download on their own streams) with up to ``depth`` frames in flight, so on a GPU
frame N+1 uploads while N computes and N-1 downloads, and the host prepares and pastes while the device
works. :class:`PipelinedTrack` is the same as a pull track for the asyncio pipeline.

Frames leave strictly in input order, every one of them: a frame without faces has no batch and passes
through behind the frames before it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from engines.executor import Device, PipelinedExecutor, Stream
from stream.exceptions import EndOfStream
from stream.frames import Frame
from stream.tracks import FrameTrack, WorkerTrack

logger = logging.getLogger(__name__)

DEFAULT_DEPTH = 3
"""Frames in flight: one uploading, one computing, one downloading."""


@dataclass
class Prepared:
    """What the host pre-step made of one frame."""

    batches: list[list[np.ndarray]]
    """Device inputs, one list of arrays per executor batch (empty: nothing for the device)."""
    state: Any = None
    """Whatever the post-step needs (the frame's faces, their crops...)."""


class SplitChain(Protocol):
    """A per-frame job as host pre-step, device op and host post-step (see the module docstring)."""

    max_batch: int
    """Largest batch size of any input of :meth:`compute` (sizes the staging buffers)."""

    def prepare(self, frame: Frame) -> Prepared:
        """Host pre-step; runs on the pipeline's thread, in frame order."""
        ...

    def compute(self, inputs: list[Any], stream: Stream) -> list[Any]:
        """One device op over one batch of device inputs; enqueues its work on ``stream``."""
        ...

    def finish(self, frame: Frame, prepared: Prepared, outputs: list[list[np.ndarray]]) -> Frame:
        """Host post-step with the outputs of each of ``prepared.batches``; returns the frame."""
        ...


class FramePipeline:
    """The synchronous core: a :class:`SplitChain` over a :class:`PipelinedExecutor`.

    Not thread-safe: one thread calls :meth:`submit`, :meth:`collect` and :meth:`close` (the executor's
    streams are its own threads or CUDA streams).
    """

    def __init__(self, chain: SplitChain, device: Device, *, depth: int = DEFAULT_DEPTH) -> None:
        self.chain = chain
        self.depth = depth
        self.executor = PipelinedExecutor(device, chain.compute, depth=depth, max_batch=chain.max_batch,
                                          ragged=True)

    def submit(self, frame: Frame) -> Prepared:
        """Run the pre-step of ``frame`` and queue its batches on the device."""
        prepared = self.chain.prepare(frame)
        for batch in prepared.batches:
            self.executor.submit(batch)
        return prepared

    def collect(self, frame: Frame, prepared: Prepared) -> Frame:
        """Wait for the outputs of the oldest submitted frame (``frame``) and run its post-step."""
        t0 = time.perf_counter()
        outputs = [self.executor.get() for _ in prepared.batches]
        if prepared.batches:
            frame.timings["device_wait"] = time.perf_counter() - t0
        return self.chain.finish(frame, prepared, outputs)

    def run(self, frames: Iterable[Frame]) -> Iterator[Frame]:
        """Every frame of ``frames`` processed, in order, up to ``depth`` in flight."""
        pending: deque[tuple[Frame, Prepared]] = deque()
        for frame in frames:
            pending.append((frame, self.submit(frame)))
            if len(pending) >= self.depth:
                yield self.collect(*pending.popleft())
        while pending:
            yield self.collect(*pending.popleft())

    def close(self) -> None:
        """Finish what is in flight and stop the executor's streams. Idempotent."""
        self.executor.close()


class PipelinedTrack(WorkerTrack):
    """Runs a :class:`SplitChain` over every frame of ``upstream`` with ``depth`` frames in flight.

    One worker task pulls frames and hands the pre-step + submit and the wait + post-step of each frame
    to a single thread, which owns the :class:`FramePipeline` (the executor's streams run beside it).
    Frames leave in input order through a bounded :class:`~stream.handoff.Handoff`. A failure ends the
    stream after the frames before the failing one: the next ``recv`` raises :class:`StageError` naming
    ``name`` and the frame (a :class:`FacestreamError` is raised as is), and the upstream is stopped.
    ``stop()`` cancels the worker; the pipeline is then closed on its thread after the job in progress
    (in-flight work finishes, the streams stop), then ``on_close`` runs; :meth:`aclose` waits for that.
    """

    def __init__(
        self,
        upstream: FrameTrack,
        chain: SplitChain,
        device_factory: Callable[[], Device],
        *,
        name: str,
        depth: int = DEFAULT_DEPTH,
        queue_size: int = 4,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        super().__init__(upstream, name=name, queue_size=queue_size, policy="block")
        self.chain = chain
        self.depth = depth
        self._device_factory = device_factory
        self._on_close = on_close
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"facestream-{name}")
        self._pipeline: FramePipeline | None = None  # made and used on self._thread only
        self._closed: Future[None] | None = None

    def _submit(self, frame: Frame) -> Prepared:
        if self._pipeline is None:
            self._pipeline = FramePipeline(self.chain, self._device_factory(), depth=self.depth)
        t0 = time.perf_counter()
        prepared = self._pipeline.submit(frame)
        frame.timings[self.name] = time.perf_counter() - t0
        return prepared

    def _collect(self, frame: Frame, prepared: Prepared) -> Frame:
        assert self._pipeline is not None
        t0 = time.perf_counter()
        out = self._pipeline.collect(frame, prepared)
        out.timings[self.name] = out.timings.get(self.name, 0.0) + time.perf_counter() - t0
        return out

    def _close(self) -> None:
        try:
            if self._pipeline is not None:
                self._pipeline.close()
        except Exception:
            logger.exception("%s: closing the pipeline failed", self.name)
        finally:
            if self._on_close is not None:
                try:
                    self._on_close()
                except Exception:
                    logger.exception("%s: on_close failed", self.name)

    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        # (frame, its pre-step's result, or the error that stopped it): oldest first.
        in_flight: deque[tuple[Frame, Prepared | BaseException]] = deque()
        pulling = True
        while True:
            while pulling and len(in_flight) < self.depth:
                try:
                    frame = await self.upstream.recv()
                except EndOfStream:
                    pulling = False
                    break
                try:
                    in_flight.append((frame, await loop.run_in_executor(self._thread, self._submit, frame)))
                except Exception as exc:
                    # The frames before this one are still delivered; nothing after it is pulled.
                    in_flight.append((frame, exc))
                    pulling = False
            if not in_flight:
                break
            frame, prepared = in_flight.popleft()
            if isinstance(prepared, BaseException):
                raise self._error(frame, prepared)
            try:
                out = await loop.run_in_executor(self._thread, self._collect, frame, prepared)
            except Exception as exc:
                raise self._error(frame, exc)  # noqa: B904 - StageError sets its own cause
            await self._queue.put(out)

    def stop(self) -> None:
        if not self._stop_worker():
            return
        # Queued behind the job in progress on the pipeline's thread: nothing is closed under it.
        self._closed = self._thread.submit(self._close)
        self._thread.shutdown(wait=False)

    async def aclose(self) -> None:
        """``stop()``, then wait until the worker has ended and the pipeline and ``on_close`` are done."""
        await self._await_worker()
        assert self._closed is not None
        await asyncio.wrap_future(self._closed)

