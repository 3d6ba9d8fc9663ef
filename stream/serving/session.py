"""One browser (or aiortc) peer: its peer connection, its processing chain and its cleanup.

Frames flow ``remote track -> RemoteVideoSource (keep-latest) -> ProcessorTrack (executor, keep-latest)
-> OutputVideoTrack -> encoder``. The reader drains aiortc's unbounded receive queue as fast as frames
arrive and keeps only the newest, so a slow processor drops frames instead of building up latency.
Everything a session starts (tasks, threads, the processor) is released by :meth:`Session.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from fractions import Fraction
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from stream.exceptions import EndOfStream, FacestreamError, InputError
from stream.frames import Frame
from stream.handoff import Handoff
from stream.pixels import lazy_capable, rgb_image
from stream.serving.metrics import LatencyWindow, RateMeter, ServingMetrics
from stream.tracks import FrameProcessor, FrameTrack, ProcessorTrack

logger = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90000)


ProcessorFactory = Callable[[np.ndarray], FrameProcessor]
"""Builds a session's processor from the source face image ((H, W, 3) uint8 RGB); may raise
:class:`~stream.exceptions.NoFaceError`. Called on the session's worker thread."""


def video_frame_to_frame(vf: av.VideoFrame, index: int, capture_time: float) -> Frame:
    """A pipeline :class:`Frame` for a decoded ``vf`` (pts/time_base kept): lazy for 4:2:0, which converts
    only the boxes read (see :mod:`stream.pixels`), else an RGB copy."""
    t0 = time.perf_counter()
    image = None if lazy_capable(vf) else rgb_image(vf)
    frame = Frame(index=index, image=image, pts=vf.pts, time_base=vf.time_base, capture_time=capture_time,
                  source=vf)
    frame.timings["convert"] = time.perf_counter() - t0
    return frame


def frame_to_video_frame(frame: Frame) -> av.VideoFrame:
    """``frame`` as a 4:2:0 ``av.VideoFrame`` (:meth:`Frame.to_yuv420`) with the frame's own pts/time_base."""
    vf = frame.to_yuv420()
    vf.pts = frame.pts
    vf.time_base = frame.time_base if frame.time_base is not None else VIDEO_TIME_BASE
    return vf


class RemoteVideoSource(FrameTrack):
    """A :class:`FrameTrack` over an aiortc video track, keeping only the newest ``queue_size`` frames.

    A reader task owned by this track pulls every decoded frame from ``track`` (stamping
    ``capture_time`` on arrival) into a keep-latest queue; :meth:`recv` converts the newest to RGB in
    ``executor`` (the default executor when None).
    """

    def __init__(self, track: MediaStreamTrack, *, queue_size: int = 1,
                 executor: Executor | None = None) -> None:
        self.track = track
        self._queue: Handoff[tuple[av.VideoFrame, float]] = Handoff(queue_size, "keep_latest")
        self._executor = executor
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self.received = 0
        self._index = 0

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    async def _read(self) -> None:
        try:
            while True:
                vf = await self.track.recv()
                self.received += 1
                await self._queue.put((vf, time.monotonic()))
        except MediaStreamError:
            self._queue.finish()
        except asyncio.CancelledError:
            self._queue.finish()
            raise
        except Exception as exc:  # the consumer sees it as the end of the stream
            logger.warning("reading the remote track failed: %s", exc)
            self._queue.finish(exc)

    async def recv(self) -> Frame:
        if self._task is None and not self._stopped:
            self._task = asyncio.get_running_loop().create_task(self._read(), name="facestream-remote-reader")
        vf, captured = await self._queue.get()
        index = self._index
        self._index += 1
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, video_frame_to_frame, vf, index, captured)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
        self._queue.finish()

    async def aclose(self) -> None:
        task = self._task
        self.stop()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class OutputVideoTrack(MediaStreamTrack):
    """The aiortc track a session sends back: processed frames, timestamps as they came in.

    Each frame handed to the encoder is accounted in ``on_frame(frame, latency)``; a processing
    error ends the track and calls ``on_error``.
    """

    kind = "video"

    def __init__(self, upstream: FrameTrack, on_frame: Callable[[Frame, float], None],
                 on_error: Callable[[BaseException], None]) -> None:
        super().__init__()
        self.upstream = upstream
        self._on_frame = on_frame
        self._on_error = on_error

    async def recv(self) -> av.VideoFrame:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        try:
            frame = await self.upstream.recv()
        except EndOfStream:
            self.stop()
            raise MediaStreamError from None
        except FacestreamError as exc:
            self.stop()
            self._on_error(exc)
            raise MediaStreamError from exc
        vf = frame_to_video_frame(frame)
        self._on_frame(frame, time.monotonic() - frame.capture_time)
        return vf


class Session:
    """One peer connection and what runs for it.

    ``processor`` is None for a view-only session that receives ``feed_track`` (the output of a
    ``facestream live`` run) instead of sending its own camera.
    """

    def __init__(
        self,
        session_id: str,
        metrics: ServingMetrics,
        *,
        processor: FrameProcessor | None = None,
        executor: ThreadPoolExecutor | None = None,
        feed_track: MediaStreamTrack | None = None,
        queue_size: int = 1,
        connect_timeout: float = 30.0,
        on_closed: Callable[[Session], None] | None = None,
    ) -> None:
        if (processor is None) == (feed_track is None):
            raise ValueError("a session needs exactly one of processor and feed_track")
        self.id = session_id
        self.metrics = metrics
        self.pc = RTCPeerConnection()
        self.created = time.monotonic()
        self.latency = LatencyWindow()
        self.rate = RateMeter()
        self.frames_out = 0
        self.last_pts: int | None = None
        self.error: str | None = None
        self._processor = processor
        if processor is not None and executor is None:
            executor = ThreadPoolExecutor(1, thread_name_prefix=f"facestream-session-{session_id}")
        self._executor = executor
        self._feed_track = feed_track
        self._queue_size = queue_size
        self._connect_timeout = connect_timeout
        self._on_closed = on_closed
        self._source: RemoteVideoSource | None = None
        self._processed: ProcessorTrack | None = None
        self._output: OutputVideoTrack | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._close_task: asyncio.Task[None] | None = None
        self._dropped_reported = 0

    # -- lifecycle ---------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._close_task is not None

    @property
    def dropped(self) -> int:
        n = 0
        if self._source is not None:
            n += self._source.dropped
        if self._processed is not None:
            n += self._processed.dropped
        return n

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"facestream-session-{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("session %s: task %s failed", self.id, task.get_name(), exc_info=task.exception())

    async def accept(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        """Apply the remote ``offer`` and return the local answer (ICE candidates included).

        Raises :class:`InputError` when the offer cannot be used (unparsable SDP, no video).
        """
        pc = self.pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and self._processor is not None and self._source is None:
                self._attach(track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            logger.info("session %s: connection %s", self.id, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                self.request_close()

        try:
            await pc.setRemoteDescription(offer)
        except Exception as exc:  # aiortc raises ValueError, KeyError, ... on bad SDP
            raise InputError(f"unusable SDP offer: {type(exc).__name__}: {exc}") from exc
        if self._feed_track is not None:
            if not any(t.kind == "video" for t in pc.getTransceivers()):
                raise InputError("the offer has no video m-line to send the live feed on")
            pc.addTrack(self._feed_track)
        elif self._source is None:
            raise InputError("the offer has no video track to process; send the camera's video")
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        self._spawn(self._watch_connect(), "connect-timeout")
        return pc.localDescription

    def _attach(self, track: MediaStreamTrack) -> None:
        assert self._processor is not None
        self._source = RemoteVideoSource(track, queue_size=self._queue_size)
        self._processed = ProcessorTrack(self._source, self._processor, name="process",
                                         queue_size=self._queue_size, policy="keep_latest",
                                         executor=self._executor)
        self._output = OutputVideoTrack(self._processed, self._account, self._failed)
        self.pc.addTrack(self._output)

    async def _watch_connect(self) -> None:
        await asyncio.sleep(self._connect_timeout)
        if self.pc.connectionState != "connected":
            logger.warning("session %s: not connected after %.0f s, closing", self.id, self._connect_timeout)
            self.request_close()

    def _account(self, frame: Frame, latency: float) -> None:
        self.frames_out += 1
        self.last_pts = frame.pts
        self.latency.add(latency)
        self.rate.tick()
        self.metrics.observe(frame, latency)
        dropped = self.dropped
        if dropped > self._dropped_reported:
            self.metrics.dropped.inc(dropped - self._dropped_reported)
            self._dropped_reported = dropped

    def _failed(self, exc: BaseException) -> None:
        self.error = str(exc)
        logger.error("session %s: processing failed: %s", self.id, exc)
        self.request_close()

    def request_close(self) -> None:
        """Start closing (from a callback); :meth:`close` awaits it."""
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(
                self._close(), name=f"facestream-session-{self.id}-close")
            self._close_task.add_done_callback(self._task_done_close)

    def _task_done_close(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("session %s: close failed", self.id, exc_info=task.exception())

    async def close(self) -> None:
        """Close the peer connection and release everything; safe to call many times and concurrently."""
        self.request_close()
        assert self._close_task is not None
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        if self._output is not None:
            self._output.stop()
        if self._processed is not None:
            await self._processed.aclose()
        if self._source is not None:
            await self._source.aclose()
        if self._feed_track is not None:
            self._feed_track.stop()
        await self.pc.close()
        if self._processor is not None:
            loop = asyncio.get_running_loop()
            # Same single worker thread as processing: runs after any frame still in flight.
            try:
                await loop.run_in_executor(self._executor, self._processor.close)
            except Exception:
                logger.exception("session %s: closing the processor failed", self.id)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        await asyncio.gather(*[t for t in self._tasks if t is not current], return_exceptions=True)
        logger.info("session %s closed after %d frames", self.id, self.frames_out)
        if self._on_closed is not None:
            self._on_closed(self)

    # -- reporting -----------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What the page shows: fps, added latency p50/p95 (ms), frames, drops."""
        p50, p95 = self.latency.percentiles(50, 95)
        return {
            "id": self.id,
            "state": self.pc.connectionState,
            "mode": "process" if self._processor is not None else "view",
            "fps": round(self.rate.rate(), 2),
            "latency_ms": {"p50": None if p50 is None else round(p50 * 1000, 2),
                           "p95": None if p95 is None else round(p95 * 1000, 2)},
            "frames_in": self._source.received if self._source is not None else 0,
            "frames_out": self.frames_out,
            "dropped": self.dropped,
            "error": self.error,
            "uptime_s": round(time.monotonic() - self.created, 1),
        }
