"""Live inputs and outputs: RTSP cameras, v4l2 devices and real-time files in; recordings, RTSP pushes
and v4l2 loopback devices out; and the swap processor (face tracker + stage chain) that runs between.

A :class:`CaptureSource` decodes in a thread of its own and hands frames to the event loop through a
keep-latest queue, so a slow consumer drops frames instead of falling behind the camera. An RTSP or
v4l2 input that fails (camera restarted, cable pulled, socket timeout) is reopened with exponential
backoff, capped so that the stream is back within about two seconds of the camera returning.

Live frames are stamped by the capture clock: ``capture_time`` is ``time.monotonic()`` when the frame
was decoded, and ``pts`` counts 1/90000 s from the first frame, so timestamps stay monotonic across
reconnects (the camera's own clock restarts with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Protocol

import av
import numpy as np

from stream.choices import FaceSelection
from stream.exceptions import EndOfStream, InputError, InputNotFoundError, NoFaceError, OutputError
from stream.frames import Frame
from stream.handoff import Handoff
from stream.pixels import lazy_capable, rgb_image, yuv420_frame
from stream.sinks import append_xmp_box, is_isobmff, same_file, synthetic_marks, xmp_packet
from stream.tracks import FrameTrack, SequentialSteps

logger = logging.getLogger(__name__)

LIVE_TIME_BASE = Fraction(1, 90000)
InputKind = Literal["rtsp", "v4l2", "file"]
OutputKind = Literal["file", "rtsp", "v4l2"]
_V4L2 = re.compile(r"^/dev/video\d+$")


# -- the processor ---------------------------------------------------------------------------------------


def source_bank_from_image(image: np.ndarray) -> Any:
    """A :class:`~stream.stages.base.SourceBank` of the largest face in ``image`` (RGB uint8), the image turned
    upright first where its face lies on its side or upside down (:func:`stream.swap.upright_source_face`)."""
    from stream.stages.base import SourceBank
    from stream.swap import upright_source_face

    face = upright_source_face(image)
    if face is None:
        raise NoFaceError("no face found in the source image")
    return SourceBank([face])


class SwapProcessor:
    """Face tracker + weight-free stage chain as one ``Frame -> Frame`` step (a session's processor).

    Stateful (the tracker smooths over frames): call it from one thread, frames in order.
    """

    def __init__(self, source_image: np.ndarray, *, faces: FaceSelection = "largest",
                 blend: str | None = None) -> None:
        from stream.stages import default_chain
        from stream.tracking import FaceTracker, TrackerConfig

        bank = source_bank_from_image(source_image)
        kwargs: dict[str, Any] = {"faces": faces}
        if blend is not None:
            kwargs["blend"] = blend
        self.chain = default_chain(**kwargs)
        self.chain.set_source(bank)
        # Live faces are near the camera: skip the small-face tile scans, and follow one face when only
        # the largest is swapped; both keep the tracker's share of the latency budget small.
        self.tracker = FaceTracker(TrackerConfig(max_faces=1 if faces == "largest" else 4, tile_detection=False))
        self._steps = SequentialSteps([("track", self.tracker), ("swap", self.chain)])
        self._closed = False

    def __call__(self, frame: Frame) -> Frame:
        return self._steps(frame)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._steps.close()


def swap_processor_factory(*, faces: FaceSelection = "largest",
                           blend: str | None = None) -> Callable[[np.ndarray], SwapProcessor]:
    """A :data:`~stream.serving.session.ProcessorFactory` building :class:`SwapProcessor` s."""

    def factory(source_image: np.ndarray) -> SwapProcessor:
        return SwapProcessor(source_image, faces=faces, blend=blend)

    return factory


# -- audio -----------------------------------------------------------------------------------------------


class LiveAudio:
    """The input's sound on its way to a recording or a push: decoded :class:`av.AudioFrame` s, each with its
    start in seconds on the clock of the frames' ``pts`` (what the output stamps video with).

    Thread-safe: a capture thread puts, the output's thread drains (at every frame it writes). Bounded, so
    that an output stalled on a frame holds only the last few seconds.
    """

    def __init__(self, channels: int = 2, *, max_frames: int = 512, present: bool = False) -> None:
        self.channels = channels
        """Channels of the input's sound (1 or more; the output keeps mono as mono, the rest as stereo)."""
        self.present = present
        """Whether the input has sound (an RTSP input says so once connected): an output opened without it
        adds no audio stream."""
        self._items: deque[tuple[av.AudioFrame, float]] = deque(maxlen=max_frames)
        self._lock = threading.Lock()

    def put(self, frame: av.AudioFrame, seconds: float) -> None:
        with self._lock:
            self._items.append((frame, seconds))

    def drain(self) -> list[tuple[av.AudioFrame, float]]:
        """Everything put since the last call, oldest first."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return items


class FileAudio(LiveAudio):
    """The first audio stream of a live file input (:class:`~stream.sources.VideoFileSource`), taken from its
    passthrough channel and decoded on the output's thread by a decoder of its own (the file's streams go
    with the source, which may stop before the output has written its last frame). Its clock is the file's,
    as the frames' ``pts`` are. :meth:`of` makes one for a source that has sound."""

    @classmethod
    def of(cls, source: FrameTrack) -> FileAudio | None:
        """The sound of a file source made by :func:`open_input`; None when it has none."""
        stream = next((s for s in getattr(source, "copy_streams", ()) if s.type == "audio"), None)
        return None if stream is None else cls(source, stream)

    def __init__(self, source: Any, stream: Any) -> None:
        ctx = stream.codec_context
        super().__init__(max(1, ctx.channels), present=True)
        self._index = stream.index
        self._time_base = stream.time_base
        self._decoder = av.CodecContext.create(ctx.name, "r")
        self._decoder.sample_rate = ctx.sample_rate
        self._decoder.layout = ctx.layout
        if ctx.extradata:
            self._decoder.extradata = ctx.extradata
        self._channel = source.open_passthrough()

    def drain(self) -> list[tuple[av.AudioFrame, float]]:
        out: list[tuple[av.AudioFrame, float]] = []
        for index, packet in self._channel.drain():
            if index != self._index or packet.pts is None:
                continue
            start = float(packet.pts * self._time_base)
            try:
                frames = self._decoder.decode(packet)
            except av.FFmpegError as exc:  # a damaged packet: a moment of silence, not a failed recording
                logger.debug("audio packet at %.3f s not decoded: %s", start, exc)
                continue
            for frame in frames:
                if frame.pts is not None and frame.time_base is not None:
                    start = float(frame.pts * frame.time_base)
                out.append((frame, start))
                start += frame.samples / frame.sample_rate
        return out


class _AudioEncoder:
    """AAC at 48 kHz for a live output: the input's sound resampled, gaps (an outage, a reconnect) filled
    with silence and overlaps dropped, so that it stays on the video's clock; cut where the video starts
    (``start``, seconds) and where it ends."""

    RATE = 48000
    SAMPLES = 1024  # the AAC encoder's frame
    SLACK = 0.2  # seconds by which the input's clock may wander from the samples' count before it is followed

    def __init__(self, container: Any, channels: int, start: float = 0.0) -> None:
        self.layout = "mono" if channels == 1 else "stereo"
        self._first = round(start * self.RATE)  # nothing before the video's first frame
        self.stream = container.add_stream("aac", rate=self.RATE)
        self.stream.layout = self.layout
        self.stream.time_base = Fraction(1, self.RATE)
        self._resampler: av.AudioResampler | None = None
        self._input: tuple[str, str, int] | None = None  # the (format, layout, rate) it resamples
        self._pending = np.zeros((1 if channels == 1 else 2, 0), np.float32)
        self._start: int | None = None  # sample index (output clock) of the first sample
        self._fed = 0  # samples fed since (the encoded ones, then those still pending)

    def feed(self, frame: av.AudioFrame, seconds: float, until: float | None = None) -> list[av.Packet]:
        """Encode ``frame`` (starting at ``seconds``); nothing of it after ``until`` (seconds)."""
        at = round(seconds * self.RATE)
        frame.pts = None  # the resampler need not keep time: the samples' count does
        settings = (frame.format.name, frame.layout.name, frame.sample_rate)
        if settings != self._input:  # the first sound, or a camera back with other settings: resample those
            self._input = settings
            self._resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.RATE)
        assert self._resampler is not None
        chunks = [out.to_ndarray() for out in self._resampler.resample(frame)]
        data = np.concatenate(chunks, axis=1) if chunks else self._pending[:, :0]
        if self._start is None:
            if at < self._first:  # sound from before the first frame
                data, at = data[:, self._first - at:], self._first
            if not data.shape[1]:
                return []
            self._start = at
        end = self._start + self._fed
        if at > end + self.SLACK * self.RATE:  # the input was away: silence until it is back
            self._append(np.zeros((self._pending.shape[0], at - end), np.float32))
        elif at < end - self.SLACK * self.RATE:  # before what is written already (a clock reset): skip
            return []
        self._append(data)
        if until is not None:
            limit = round(until * self.RATE) - self._start
            if self._fed > limit:
                keep = max(0, self._pending.shape[1] - (self._fed - limit))
                self._pending = self._pending[:, :keep]
                self._fed = limit
        return self._encode(final=False)

    def _append(self, samples: np.ndarray) -> None:
        self._pending = np.concatenate([self._pending, samples.astype(np.float32, copy=False)], axis=1)
        self._fed += samples.shape[1]

    def _encode(self, *, final: bool) -> list[av.Packet]:
        packets: list[av.Packet] = []
        n = self.SAMPLES
        assert self._start is not None
        while self._pending.shape[1] >= n or (final and self._pending.shape[1]):
            pts = self._start + self._fed - self._pending.shape[1]  # the first pending sample's
            chunk = np.ascontiguousarray(self._pending[:, :n])
            self._pending = self._pending[:, n:]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self.layout)
            frame.sample_rate, frame.pts, frame.time_base = self.RATE, pts, Fraction(1, self.RATE)
            packets.extend(self.stream.encode(frame))
        return packets

    def flush(self) -> list[av.Packet]:
        return [*self._encode(final=True), *self.stream.encode(None)] if self._start is not None else []


# -- inputs ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReconnectPolicy:
    """How a live input retries: delays ``initial * factor**n`` capped at ``maximum`` seconds."""

    initial: float = 0.1
    factor: float = 2.0
    maximum: float = 0.5
    """Cap of the delay between attempts. A returning camera is reached at most this long after it
    listens again; its first keyframe (one GOP, typically <= 1 s) and ~0.2 s of setup follow."""
    open_timeout: float = 5.0
    """Seconds to connect and read the stream's header."""
    read_timeout: float = 2.0
    """Seconds without data before the connection is declared dead (socket and demuxer)."""

    def delay(self, attempt: int) -> float:
        return min(self.maximum, self.initial * self.factor ** max(0, attempt))


def input_kind(spec: str) -> InputKind:
    """``rtsp`` for ``rtsp(s)://`` URLs, ``v4l2`` for ``/dev/videoN``, otherwise ``file``."""
    if spec.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if _V4L2.match(spec):
        return "v4l2"
    return "file"


@dataclass
class CaptureStats:
    """Counters of a live input."""

    frames: int = 0
    """Frames decoded."""
    reconnects: int = 0
    """Successful re-opens after a failure."""
    failures: int = 0
    """Opens or reads that failed (each followed by a retry)."""
    connected: bool = False
    last_error: str | None = None
    outage_seconds: list[float] = field(default_factory=list)
    """For every reconnect: seconds from the last frame before the failure to the first frame after."""


class CaptureSource(FrameTrack):
    """Frames of an RTSP URL or a v4l2 device, decoded in a thread of its own.

    RTSP runs over TCP with socket timeouts; both reconnect with backoff until :meth:`stop`.
    ``dropped`` counts frames the consumer was too slow to take (keep-latest queue of ``queue_size``).
    Files are :class:`stream.sources.VideoFileSource` (see :func:`open_input`).
    """

    def __init__(
        self,
        spec: str,
        *,
        reconnect: ReconnectPolicy | None = None,
        queue_size: int = 1,
        options: dict[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.kind: InputKind = input_kind(spec)
        if self.kind == "file":
            raise InputError(f"not a live capture: {spec!r}; expected rtsp://... or /dev/videoN")
        self.policy = reconnect or ReconnectPolicy()
        self.extra_options = dict(options or {})
        self.stats = CaptureStats()
        self._queue: Handoff[Frame] = Handoff(queue_size, "keep_latest")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0: float | None = None
        self._stopped = False
        self._got_frames = False
        self._last_frame_at: float | None = None
        self.audio: LiveAudio | None = None
        """Set before the first :meth:`recv` to have the input's sound decoded into it (RTSP), stamped on the
        frames' clock: each connection's audio is placed by the offset between its first video frame's
        capture time and its stream time."""

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    # -- thread side --

    def _open(self) -> av.container.InputContainer:
        options = {}
        fmt = None
        if self.kind == "rtsp":
            # TCP (no losses, passes NAT), a socket I/O timeout, no input buffering, and a short stream
            # analysis: the default (~2 s of packets) would double the time to the first frame.
            options = {"rtsp_transport": "tcp", "timeout": str(int(self.policy.read_timeout * 1e6)),
                       "fflags": "nobuffer", "flags": "low_delay", "max_delay": "200000",
                       "analyzeduration": "100000"}
        elif self.kind == "v4l2":
            fmt = "v4l2"
        options.update(self.extra_options)
        timeout = (self.policy.open_timeout, self.policy.read_timeout)
        container = av.open(self.spec, format=fmt, options=options, timeout=timeout)
        if not container.streams.video:
            container.close()
            raise InputError(f"INPUT has no video stream: {self.spec}")
        if self.audio is not None and container.streams.audio:
            self.audio.channels = max(1, container.streams.audio[0].codec_context.channels)
            self.audio.present = True
        return container

    def _run(self) -> None:
        attempt = 0
        last_frame_at: float | None = None
        failed = False
        try:
            while not self._stop.is_set():
                try:
                    container = self._open()
                except (av.FFmpegError, OSError) as exc:
                    self.stats.failures += 1
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                    # Said once while it has never answered (a typo'd URL, a camera still booting):
                    # otherwise the run would wait in silence. Outages already said "reconnecting".
                    logger.log(logging.INFO if failed else logging.WARNING,
                               "%s: cannot open (%s); retrying until it answers", self.spec,
                               self.stats.last_error)
                    self._stop.wait(self.policy.delay(attempt))
                    attempt += 1
                    failed = True
                    continue
                self.stats.connected = True
                try:
                    ended = self._decode(container, failed, last_frame_at)
                    last_frame_at = self._last_frame_at
                    if ended:
                        break
                except (av.FFmpegError, OSError) as exc:
                    last_frame_at = self._last_frame_at
                    self.stats.failures += 1
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                    logger.warning("%s: stream failed (%s); reconnecting", self.spec, self.stats.last_error)
                finally:
                    self.stats.connected = False
                    with contextlib.suppress(Exception):
                        container.close()
                failed = True
                attempt = 0 if self._got_frames else attempt + 1
                self._stop.wait(self.policy.delay(attempt))
            self._deliver(None)
        except BaseException as exc:  # handed to the consumer
            logger.error("%s: capture thread failed: %s", self.spec, exc)
            self._deliver(exc)

    def _decode(self, container: av.container.InputContainer, after_failure: bool,
                last_frame_at: float | None) -> bool:
        """Decode until the stream ends; True when it ended for good (stop)."""
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"  # frame threading would hold frames back
        self._got_frames = False
        self._last_frame_at = last_frame_at
        sound = container.streams.audio[0] if self.audio is not None and container.streams.audio else None
        offset: float | None = None  # this connection's capture clock (seconds from the first frame) - stream time
        held: list[av.AudioFrame] = []  # sound that came before this connection's first video frame
        for packet in container.demux(*[s for s in (stream, sound) if s is not None]):
            if self._stop.is_set():
                return True
            if sound is not None and packet.stream.index == sound.index:
                held.extend(packet.decode())
                if offset is not None:
                    self._put_audio(held, offset)
                    held = []
                else:
                    held = held[-64:]
                continue
            for vf in packet.decode():
                now = time.monotonic()
                if not self._got_frames:
                    self._got_frames = True
                    if after_failure:
                        self.stats.reconnects += 1
                        if last_frame_at is not None:
                            self.stats.outage_seconds.append(now - last_frame_at)
                        logger.info("%s: reconnected", self.spec)
                self._last_frame_at = now
                frame = self._to_frame(vf, now)
                if offset is None and vf.pts is not None and vf.time_base is not None:
                    offset = (now - (self._t0 or now)) - float(vf.pts * vf.time_base)
                self._deliver(frame)
        # A camera's stream "ending" (server hung up) is a failure to recover from.
        return self._stop.is_set()

    def _put_audio(self, frames: list[av.AudioFrame], offset: float) -> None:
        assert self.audio is not None
        for af in frames:
            if af.pts is not None and af.time_base is not None:
                self.audio.put(af, float(af.pts * af.time_base) + offset)

    def _to_frame(self, vf: av.VideoFrame, now: float) -> Frame:
        t0 = time.perf_counter()
        image = None if lazy_capable(vf) else rgb_image(vf)  # 4:2:0 stays YUV: only boxes read are converted
        if self._t0 is None:
            self._t0 = now
        frame = Frame(index=self.stats.frames, image=image, pts=round((now - self._t0) * 90000),
                      time_base=LIVE_TIME_BASE, capture_time=now, source=vf)
        frame.timings["decode"] = time.perf_counter() - t0
        self.stats.frames += 1
        return frame

    def _deliver(self, item: Frame | BaseException | None) -> None:
        """Hand a frame (never waits: keep-latest), the end (None) or an error to the loop side."""
        if self._queue.finished or self._queue.closed:
            return
        if item is None or isinstance(item, BaseException):
            self._queue.finish(item)
        else:
            self._queue.put_sync(item)  # returns False once stop() closed the queue

    # -- loop side --

    async def recv(self) -> Frame:
        if self._thread is None and not self._stopped:
            self._thread = threading.Thread(target=self._run, name=f"facestream-capture-{self.kind}",
                                            daemon=True)
            self._thread.start()
        return await self._queue.get()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self._queue.close()  # the capture thread's puts return False from now on; recv ends the stream

    async def aclose(self) -> None:
        """``stop()`` and wait for the decode thread (at most about ``read_timeout``)."""
        self.stop()
        thread = self._thread
        if thread is not None and thread.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, thread.join, self.policy.open_timeout + 1)


def open_input(spec: str, *, reconnect: ReconnectPolicy | None = None, queue_size: int = 1) -> FrameTrack:
    """The live source for ``spec``: :class:`CaptureSource` for ``rtsp://`` and ``/dev/videoN``, a
    :class:`~stream.sources.VideoFileSource` paced in real time (keep-latest) for a file."""
    if input_kind(spec) != "file":
        return CaptureSource(spec, reconnect=reconnect, queue_size=queue_size)
    from stream.sources import VideoFileSource

    if not Path(spec).is_file():
        raise InputNotFoundError(f"INPUT not found: {spec} (expected rtsp://..., /dev/videoN or a video file)")
    return VideoFileSource(spec, realtime=True, queue_size=queue_size)


def input_counters(source: FrameTrack) -> dict[str, Any]:
    """Frames, drops and reconnects of a source made by :func:`open_input`."""
    if isinstance(source, CaptureSource):
        st = source.stats
        return {"frames_in": st.frames, "dropped_in": source.dropped, "reconnects": st.reconnects,
                "failures": st.failures, "outage_seconds": [round(x, 3) for x in st.outage_seconds],
                "last_error": st.last_error}
    return {"frames_in": int(getattr(source, "frames_decoded", 0)), "dropped_in": int(getattr(source, "dropped", 0)),
            "reconnects": 0, "failures": 0, "outage_seconds": [], "last_error": None}


# -- outputs ---------------------------------------------------------------------------------------------


class LiveOutput(Protocol):
    """Where ``facestream live`` sends processed frames."""

    async def write(self, frame: Frame) -> None: ...

    async def close(self) -> dict[str, Any]: ...


def output_kind(spec: str) -> OutputKind:
    """``rtsp`` for ``rtsp://`` URLs (push), ``v4l2`` for ``/dev/videoN`` (loopback), else ``file``."""
    if spec.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if _V4L2.match(spec):
        return "v4l2"
    return "file"


class EncodedOutput:
    """A recording file or an RTSP push, H.264 tuned for latency, encoded on a thread of its own, with the
    input's sound (``audio``) as AAC when it has any.

    Opened at the first frame (its size fixes the stream's); timestamps come from the frames'
    ``pts`` (the capture clock), so dropped frames show as gaps in time, not as a faster video. The
    container carries the synthetic-media marks (:func:`stream.sinks.synthetic_marks`) over ``metadata``.

    An RTSP push that fails after it was up (the server restarted, the network dropped) is reopened
    with ``reconnect``'s back-off; frames that arrive while it is down are counted in ``dropped`` and
    the new session starts with a keyframe, its sound with that frame. A push that cannot be opened at all
    fails at once.
    """

    def __init__(self, target: str, *, fps: float = 30.0, kind: OutputKind = "file", crf: int = 23,
                 metadata: dict[str, str] | None = None, reconnect: ReconnectPolicy | None = None,
                 audio: LiveAudio | None = None) -> None:
        self.target = target
        self.audio = audio
        """The input's sound, sent as AAC beside the video."""
        self._sound: _AudioEncoder | None = None  # the open container's (a push's session's)
        self._with_sound = False
        self._held: list[tuple[av.AudioFrame, float]] = []  # sound waiting for its video frames
        self._last_time: float | None = None  # seconds: where the last video frame written ends
        self.kind = kind
        self.fps = fps
        self.crf = crf
        self.metadata = synthetic_marks(metadata)
        self.reconnect = reconnect or ReconnectPolicy()
        if kind == "file":
            parent = Path(target).resolve().parent
            if not parent.is_dir():
                raise OutputError(f"OUTPUT directory does not exist: {parent}")
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="facestream-output")
        self._container: Any = None
        self._stream: Any = None
        self._last_pts = -1
        self._retry_at = 0.0
        self._attempt = 0
        self.frames = 0
        self.dropped = 0
        """Frames that came while an RTSP push was down."""
        self.reconnects = 0
        self.failures = 0

    def _open(self, frame: Frame, start: float) -> None:
        fmt = "rtsp" if self.kind == "rtsp" else None
        # A socket timeout (microseconds), so a push to a vanished server fails instead of hanging.
        timeout = str(int(self.reconnect.read_timeout * 1e6))
        options = {"rtsp_transport": "tcp", "timeout": timeout} if self.kind == "rtsp" else {}
        # The muxer interleaves by time and waits for every stream: a camera whose sound stops would hold
        # the picture back for up to its default 10 s. A push must not wait; a file may.
        if self.kind == "rtsp":
            options["max_interleave_delta"] = "300000"  # microseconds
        try:
            self._container = av.open(self.target, "w", format=fmt, options=options)
        except (av.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot open OUTPUT {self.target}: {exc}") from exc
        if is_isobmff(self._container):
            self._container.options["movflags"] = "+use_metadata_tags"  # keep synthetic=... in MP4
        self._container.metadata.update(self.metadata)
        stream = self._container.add_stream("libx264", rate=round(self.fps))
        stream.width, stream.height = frame.width - frame.width % 2, frame.height - frame.height % 2
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": str(self.crf)}
        self._stream = stream
        if self.audio is not None and self.audio.present:
            self._sound = _AudioEncoder(self._container, self.audio.channels, start)
            self._with_sound = True

    def _encode(self, frame: Frame) -> None:
        pts = round(frame.pts * frame.time_base * 1000) if frame.pts is not None and frame.time_base else 0
        pts = max(pts, self._last_pts + 1)
        if self._container is None:
            self._open(frame, pts / 1000)
        if (frame.width, frame.height) == (self._stream.width, self._stream.height):
            vf = frame.to_yuv420()  # the decoded planes, with only what stages pasted converted back
        else:
            vf = yuv420_frame(frame.image[: self._stream.height, : self._stream.width])
        vf.pts, vf.time_base = pts, Fraction(1, 1000)
        try:
            self._container.mux(self._stream.encode(vf))
            self._last_time = pts / 1000 + 1 / self.fps
            self._mux_sound()
        except (av.FFmpegError, OSError) as exc:
            raise OutputError(f"writing OUTPUT {self.target} failed: {exc}") from exc
        self._last_pts = pts
        self.frames += 1

    def _mux_sound(self, *, final: bool = False) -> None:
        """Encode and mux the sound up to the end of the last video frame written; what comes later waits for
        the frames it goes with (sound arrives ahead of them: they are processed), so that a recording
        stopped at any moment ends its sound with its picture. ``final``: cut there, drop the rest."""
        if self._sound is None or self.audio is None or self._last_time is None:
            return
        self._held.extend(self.audio.drain())
        until = self._last_time
        later = [item for item in self._held if item[1] >= until]
        for frame, seconds in self._held:
            if seconds < until:
                self._container.mux(self._sound.feed(frame, seconds, until if final else None))
        self._held = [] if final else later

    def _write(self, frame: Frame) -> None:
        if self.kind != "rtsp" or self.frames == 0:
            self._encode(frame)  # a file, or a push not yet up: any failure is final
            return
        if self._container is None and time.monotonic() < self._retry_at:
            self.dropped += 1
            return
        reopening = self._container is None
        try:
            self._encode(frame)
        except OutputError as exc:
            self._drop_connection(exc)
            self.dropped += 1
            return
        if reopening:
            self.reconnects += 1
            self._attempt = 0
            logger.info("%s: push resumed", self.target)

    def _drop_connection(self, exc: Exception) -> None:
        """Close a failed push (without flushing into a dead socket) and schedule the next attempt."""
        if self._attempt == 0:
            logger.warning("%s: push failed (%s); reconnecting", self.target, exc)
        self.failures += 1
        container, self._container, self._stream, self._sound = self._container, None, None, None
        self._held = []  # the next session's sound starts with its first frame
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()
        self._retry_at = time.monotonic() + self.reconnect.delay(self._attempt)
        self._attempt += 1

    def _close(self) -> None:
        if self._container is None:
            return
        try:
            self._container.mux(self._stream.encode(None))
            if self._sound is not None:
                # The sound that came with the last frames, none of it past the video's end.
                self._mux_sound(final=True)
                self._container.mux(self._sound.flush())
        except (av.FFmpegError, OSError) as exc:
            logger.warning("flushing %s failed: %s", self.target, exc)
        finally:
            container, self._container = self._container, None
            if self.kind == "rtsp":
                with contextlib.suppress(Exception):  # a server gone away: nothing more can be sent
                    container.close()
            else:
                container.close()
                if is_isobmff(container):  # the same XMP marks as a facestream swap's MP4/MOV
                    append_xmp_box(self.target, xmp_packet(self.metadata, learned=False))

    async def write(self, frame: Frame) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._write, frame)

    async def close(self) -> dict[str, Any]:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        finally:
            self._executor.shutdown(wait=False)
        report: dict[str, Any] = {"output": self.target, "kind": self.kind, "frames": self.frames,
                                  "audio": self._with_sound}
        if self.kind == "rtsp":
            report.update(dropped=self.dropped, reconnects=self.reconnects, failures=self.failures)
        return report


class VirtualCameraOutput:
    """A v4l2 loopback device (``/dev/videoN`` of v4l2loopback) through pyvirtualcam, opened at the
    first frame. pyvirtualcam is optional: ``pip install 'facestream[virtualcam]'``."""

    def __init__(self, device: str, *, fps: float = 30.0) -> None:
        try:
            import pyvirtualcam
        except ImportError as exc:
            raise OutputError(f"OUTPUT {device} needs pyvirtualcam: pip install 'facestream[virtualcam]'") from exc
        self._pyvirtualcam = pyvirtualcam
        self.device = device
        self.fps = fps
        self._camera: Any = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="facestream-vcam")
        self.frames = 0

    def _write(self, frame: Frame) -> None:
        if self._camera is None:
            try:
                self._camera = self._pyvirtualcam.Camera(frame.width, frame.height, self.fps, device=self.device)
            except Exception as exc:  # pyvirtualcam raises RuntimeError for a missing loopback device
                raise OutputError(f"cannot open virtual camera {self.device}: {exc}") from exc
        self._camera.send(frame.image)
        self.frames += 1

    async def write(self, frame: Frame) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._write, frame)

    async def close(self) -> dict[str, Any]:
        if self._camera is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._camera.close)
        self._executor.shutdown(wait=False)
        return {"output": self.device, "kind": "v4l2", "frames": self.frames}


def open_output(spec: str, *, fps: float = 30.0, metadata: dict[str, str] | None = None,
                reconnect: ReconnectPolicy | None = None, audio: LiveAudio | None = None) -> LiveOutput:
    """The :class:`LiveOutput` for ``spec``: a recording file, an ``rtsp://`` push or ``/dev/videoN``;
    ``audio`` goes beside the video in a recording or a push (a virtual camera has no sound)."""
    kind = output_kind(spec)
    if kind == "v4l2":
        return VirtualCameraOutput(spec, fps=fps)
    return EncodedOutput(spec, fps=fps, kind=kind, metadata=metadata, reconnect=reconnect, audio=audio)


# -- the live run ----------------------------------------------------------------------------------------


async def pump(track: FrameTrack, on_frame: Callable[[Frame], Any], stop: asyncio.Event | None = None) -> int:
    """Pull ``track`` until it ends or ``stop`` is set, awaiting ``on_frame`` (sync or async) per frame;
    returns the number of frames."""
    n = 0
    stop_wait = asyncio.ensure_future(stop.wait()) if stop is not None else None
    try:
        while True:
            recv = asyncio.ensure_future(track.recv())
            waiters = {recv} if stop_wait is None else {recv, stop_wait}
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if recv not in done:
                recv.cancel()
                with contextlib.suppress(asyncio.CancelledError, EndOfStream):
                    await recv
                return n
            try:
                frame = recv.result()
            except EndOfStream:
                return n
            result = on_frame(frame)
            if asyncio.iscoroutine(result):
                await result
            n += 1
    finally:
        if stop_wait is not None:
            stop_wait.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stop_wait


def load_face_image(path: Path) -> np.ndarray:
    """The source face image at ``path`` as (H, W, 3) uint8 RGB."""
    from stream.serving.faces import decode_image

    if not path.is_file():
        raise InputNotFoundError(f"SOURCE not found: {path}")
    return decode_image(path.read_bytes())


@dataclass(frozen=True)
class LiveOptions:
    """One ``facestream live`` run."""

    source: Path
    """Image of the face to put in (PNG, JPEG or WebP)."""
    input: str
    """``rtsp://`` URL, ``/dev/videoN`` or a video file (paced in real time)."""
    output: str | None = None
    """Recording file, ``rtsp://`` push URL or ``/dev/videoN`` loopback; None: no output."""
    faces: FaceSelection = "largest"
    fps: float = 30.0
    """Nominal output rate (encoders need one; timestamps follow the capture clock)."""
    duration: float | None = None
    """Stop after this many seconds (None: until stopped)."""
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    queue_size: int = 1


def check_live_paths(options: LiveOptions) -> None:
    """Refuse a recording OUTPUT that is the INPUT file or the SOURCE image: the recording is written in
    place while they are read (:class:`OutputError`)."""
    if options.output is None or output_kind(options.output) != "file":
        return
    out = Path(options.output)
    if input_kind(options.input) == "file" and same_file(out, Path(options.input)):
        raise OutputError(f"OUTPUT is the same file as INPUT: {out}; choose another name")
    if same_file(out, options.source):
        raise OutputError(f"OUTPUT is the same file as SOURCE: {out}; choose another name")


async def run_live(
    options: LiveOptions,
    *,
    processor: Any = None,
    stop: asyncio.Event | None = None,
    on_frame: Callable[[Frame, float], None] | None = None,
) -> dict[str, Any]:
    """Capture -> process (keep-latest) -> output until the input ends, ``stop`` is set or
    ``options.duration`` passes; returns a report (frames, drops, reconnects, latency p50/p95).

    ``processor`` defaults to a :class:`SwapProcessor` of ``options.source``; ``on_frame(frame,
    latency)`` sees every processed frame (metrics, a :class:`~stream.serving.feed.LiveFeed`).
    """
    from stream.serving.metrics import LatencyWindow, RateMeter
    from stream.tracks import ProcessorTrack

    check_live_paths(options)
    loop = asyncio.get_running_loop()
    source = open_input(options.input, reconnect=options.reconnect, queue_size=options.queue_size)
    mode = {"facestream_mode": "live/weight-free" if processor is None else "live"}
    audio: LiveAudio | None = None
    if options.output is not None and output_kind(options.output) != "v4l2":  # recordings, pushes keep the sound
        if isinstance(source, CaptureSource) and source.kind == "rtsp":
            audio = source.audio = LiveAudio()
        else:
            audio = FileAudio.of(source)
    output = (open_output(options.output, fps=options.fps, metadata=mode, reconnect=options.reconnect,
                          audio=audio) if options.output else None)
    executor = ThreadPoolExecutor(1, thread_name_prefix="facestream-live")
    own_processor = processor is None
    if processor is None:
        image = await loop.run_in_executor(executor, load_face_image, options.source)
        processor = await loop.run_in_executor(executor, swap_processor_factory(faces=options.faces), image)
    processed = ProcessorTrack(source, processor, name="process", queue_size=options.queue_size,
                               policy="keep_latest", executor=executor)
    latency = LatencyWindow(100_000)
    rate = RateMeter()
    stop = stop or asyncio.Event()
    timer = loop.call_later(options.duration, stop.set) if options.duration else None
    t_start = time.monotonic()
    frames = 0

    async def handle(frame: Frame) -> None:
        nonlocal frames
        frames += 1
        lat = time.monotonic() - frame.capture_time
        latency.add(lat)
        rate.tick()
        if on_frame is not None:
            on_frame(frame, lat)
        if output is not None:
            await output.write(frame)

    output_report: dict[str, Any] | None = None
    try:
        await pump(processed, handle, stop)
    finally:
        if timer is not None:
            timer.cancel()
        await processed.aclose()
        if isinstance(source, CaptureSource):
            await source.aclose()
        if output is not None:
            output_report = await output.close()
        if own_processor:
            await loop.run_in_executor(executor, processor.close)
        executor.shutdown(wait=False)
    wall = time.monotonic() - t_start
    p50, p95 = latency.percentiles(50, 95)
    counters = input_counters(source)
    return {
        "input": options.input,
        "input_kind": input_kind(options.input),
        **counters,
        "frames_out": frames,
        "dropped": counters["dropped_in"] + processed.dropped,
        "latency_ms": {"p50": None if p50 is None else round(p50 * 1000, 2),
                       "p95": None if p95 is None else round(p95 * 1000, 2)},
        "fps": round(frames / wall, 2) if wall > 0 else 0.0,
        "wall_seconds": round(wall, 3),
        "output": output_report,
    }
