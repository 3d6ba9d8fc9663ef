"""Video files and images in: probing, threaded decoding, and the streams a sink copies as they are.

:class:`VideoFileSource` is the :class:`~stream.tracks.FrameTrack` of a video file. One thread per
source demuxes and decodes (aiortc ``rtcrtpreceiver.py::decoder_worker``) and hands RGB frames to the
pipeline through a bounded :class:`~stream.handoff.Handoff`: policy ``block`` for files, so decoding is
back-pressured by the slowest stage and nothing is lost; ``keep_latest`` with pacing by ``pts`` for a
file played as if it were live (``realtime=True``).

**Copied streams.** Audio, subtitles and any further video streams are not decoded: a sink that wants
them calls :meth:`VideoFileSource.open_passthrough` before the first ``recv()`` and gets a
:class:`PacketChannel` that the same demux thread fills with the original packets (``pts``, ``dts``,
``duration`` and ``time_base`` untouched). The channel has no size limit of its own and needs none: the
demuxer only reads on while the frame handoff has room, so the channel holds at most the non-video
packets that the file interleaves with those few frames (plus what the pipeline has in flight), and the
sink drains it after every frame it writes. A hard limit would deadlock instead: the demuxer would wait
for the sink, which waits for a frame the demuxer has not read yet. Without a passthrough the other
streams are discarded by the demuxer and cost nothing.

**Damaged files.** Problems are found when the file is probed, before anything is written, where the
container allows it: a missing file (:class:`~stream.exceptions.InputNotFoundError`), a file that is not
media or has no video stream, or a video codec with no decoder
(:class:`~stream.exceptions.UnsupportedMediaError`), an MP4/MOV cut short — no ``moov`` index, or an
index pointing past the end of the file (:class:`~stream.exceptions.TruncatedMediaError`). Streaming
containers (MPEG-TS, Matroska/WebM, FLV, ..., and fragmented MP4 as OBS and browsers record it) are meant
to be playable up to any cut, so a cut one — detected from the TS packet size, the Matroska segment size or
the fragments' boxes — is decoded up to the cut, with ``truncated=True`` and a warning; the incomplete last
packet of each stream is dropped rather than shown half-decoded. Errors in the middle of a stream end it
with an error for indexed containers (MP4, MOV, AVI) and with a warning for streaming ones.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType

import av
import av.logging
import cv2
import numpy as np
from av.container import InputContainer
from av.stream import Disposition, Stream
from av.video.stream import VideoStream

from stream.exceptions import (
    FacestreamError,
    InputError,
    InputNotFoundError,
    TruncatedMediaError,
    UnsupportedMediaError,
)
from stream.frames import Frame
from stream.handoff import Handoff
from stream.pixels import lazy_capable, rgb_image
from stream.tracks import FrameTrack

logger = logging.getLogger(__name__)

#: Container families that can be played up to any cut (no index needed): a cut file is decoded up
#: to the cut with a warning. Everything else (MP4/MOV/AVI...) is strict.
STREAMING_FORMATS = frozenset({"mpegts", "matroska", "webm", "flv", "mpeg", "ogg", "nut", "h264", "hevc",
                               "mpegvideo", "m4v", "ivf", "obu"})
_ISOBMFF_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid")
_TS_PACKET_SIZES = (188, 192, 204)
_PROBE_MAX_PACKETS = 512  # a decoder that has produced no frame after this many packets never will


@dataclass(frozen=True)
class StreamInfo:
    """One stream of a container, as :func:`probe_video` reports it."""

    index: int
    type: str
    """``video``, ``audio``, ``subtitle``, ``data`` or ``attachment``."""
    codec: str | None
    """Codec name, ``None`` when FFmpeg has no decoder for it."""
    language: str | None = None
    time_base: Fraction | None = None


@dataclass(frozen=True)
class HdrMetadata:
    """An HDR10 video's static metadata, from its first frame, in the units of HEVC's SEI messages (and x265's
    options): what a TV tone-maps the picture with, so a re-encode must carry it."""

    master_display: str | None = None
    """The mastering display, as ``G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)``: chromaticities in 0.00002, luminance
    in 0.0001 cd/m^2."""
    max_cll: tuple[int, int] | None = None
    """Maximum content light level and maximum frame-average light level, cd/m^2."""

    def x265_params(self) -> list[str]:
        """``key=value`` items for libx265's ``x265-params``."""
        items = [] if self.master_display is None else [f"master-display={self.master_display}"]
        return items + ([] if self.max_cll is None else ["max-cll={},{}".format(*self.max_cll)])


def _hdr_metadata(frame: av.VideoFrame) -> HdrMetadata | None:
    """The HDR10 static metadata a decoded frame carries as side data; None when it carries none."""
    display: str | None = None
    light: tuple[int, int] | None = None
    try:
        side_data = list(frame.side_data)
    except ValueError:  # PyAV names every type while it lists them, and fails on one it has no name for (EXIF)
        return None
    for data in side_data:
        kind, raw = data.type.name, bytes(data)
        if kind == "MASTERING_DISPLAY_METADATA" and len(raw) >= 88:
            # AVMasteringDisplayMetadata: primaries R, G, B then the white point as (x, y) rationals, min and max
            # luminance as rationals, has_primaries, has_luminance.
            v = struct.unpack("=22i", raw[:88])  # the C struct, in this machine's byte order
            ratio = [v[k] / v[k + 1] if v[k + 1] else 0.0 for k in range(0, 20, 2)]
            if v[20] and v[21]:
                (rx, ry, gx, gy, bx, by, wx, wy), (lo, hi) = ratio[:8], ratio[8:]
                xy = [round(c * 50000) for c in (gx, gy, bx, by, rx, ry, wx, wy)]
                display = "G({},{})B({},{})R({},{})WP({},{})L({},{})".format(*xy, round(hi * 10000), round(lo * 10000))
        elif kind == "CONTENT_LIGHT_LEVEL" and len(raw) >= 8:
            light = struct.unpack("=2I", raw[:8])
    if display is None and light is None:
        return None
    return HdrMetadata(display, light)


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns about a video file without decoding more than one frame."""

    path: Path
    format_name: str
    """FFmpeg demuxer name, e.g. ``mov,mp4,m4a,3gp,3g2,mj2`` or ``matroska,webm``."""
    video_index: int
    """Index of the video stream that is decoded (the first one that is not cover art)."""
    codec: str
    width: int
    height: int
    pix_fmt: str | None
    time_base: Fraction
    average_rate: Fraction | None
    """Mean frame rate; ``None`` when unknown. Variable frame rate files keep their own timestamps."""
    frames: int | None
    """Frame count from the container's index/header, ``None`` when it has none."""
    duration: float | None
    """Seconds, from the stream (or the container) header; ``None`` when unknown."""
    rotation: int
    """Display rotation in degrees counter-clockwise (0, 90, 180, 270), from the display matrix."""
    has_audio: bool
    streaming: bool
    """A streaming container (TS, Matroska...): playable up to a cut, see the module docstring."""
    truncated: bool
    """A streaming container that is visibly cut short; frames are delivered up to the cut."""
    streams: tuple[StreamInfo, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    """Container metadata (title, creation_time, ...)."""
    hdr: HdrMetadata | None = None
    """HDR10 static metadata of the first frame, None when it has none (SDR, HLG)."""


# -- opening and probing --------------------------------------------------------------------------


def _check_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputNotFoundError(f"input not found: {p}")
    if p.is_dir():
        raise UnsupportedMediaError(f"cannot read {p}: it is a directory, not a media file")
    return p


def _looks_like_isobmff(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(8)
    return len(head) == 8 and head[4:8] in _ISOBMFF_BOXES


class _FilePrefix(io.RawIOBase):
    """The first ``end`` bytes of a file, as a seekable binary file (for ``av.open``)."""

    def __init__(self, path: Path, end: int) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed with this object
        self._end = end

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = max(0, min(len(buffer), self._end - self._file.tell()))
        data = self._file.read(n)
        buffer[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._file.tell(), os.SEEK_END: self._end}[whence]
        return self._file.seek(min(max(0, base + offset), self._end))

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()
        super().close()


@dataclass(frozen=True)
class _Fragments:
    """The top-level layout of a fragmented MP4/MOV."""

    cut: bool
    """A fragment (``moof`` or ``mdat``) runs past the end of the file."""
    whole_end: int
    """Where the last whole fragment ends: what FFmpeg can open when the cut split a ``moof``."""


def _mp4_fragments(path: Path) -> _Fragments | None:
    """The fragment layout of an MP4/MOV whose samples live in fragments (a ``moof`` before any
    top-level ``mdat``: OBS, browsers and DASH write them so that a cut file plays up to the cut); None
    for an ordinary MP4. Reads only the 8- or 16-byte box headers."""
    size = path.stat().st_size
    fragmented, whole_end, pos, kind = False, 0, 0, b""
    with open(path, "rb") as f:
        while pos + 8 <= size:
            f.seek(pos)
            head = f.read(16)
            length, kind = int.from_bytes(head[:4], "big"), head[4:8]
            if length == 1 and len(head) == 16:
                length = int.from_bytes(head[8:16], "big")
            elif length == 0:  # the box runs to the end of the file
                length = size - pos
            if kind == b"moof":
                fragmented = True
            elif kind == b"mdat" and not fragmented:
                return None
            if length < 8:
                break
            if pos + length > size:
                return _Fragments(cut=kind in (b"moof", b"mdat"), whole_end=whole_end) if fragmented else None
            pos += length
            if kind == b"mdat":
                whole_end = pos
    if not fragmented:
        return None
    # Cut between boxes: a header cut short, or a moof whose mdat never came.
    return _Fragments(cut=pos < size or kind == b"moof", whole_end=whole_end)


def _first_partial_samples(container: InputContainer, path: Path) -> dict[int, int]:
    """Stream index -> byte position of its first sample that runs past the end of a cut MP4/MOV."""
    if not _format_names(container) & {"mp4", "mov"}:
        return {}
    size = path.stat().st_size
    out = {}
    for stream in container.streams:
        cut = [e.pos for e in stream.index_entries if e.pos + e.size > size]
        if cut:
            out[stream.index] = min(cut)
    return out


# How far FFmpeg reads into a file to learn a stream's parameters when its defaults (5 MB, 5 s) left one
# without them: a transport stream whose audio starts late.
_LONG_PROBE = MappingProxyType({"probesize": str(256 << 20), "analyzeduration": str(120 * 1_000_000)})


def _open_input(path: Path, options: Mapping[str, str] | None = None) -> InputContainer:
    """``av.open`` (with format ``options``) with FFmpeg's errors turned into facestream's."""
    try:
        return av.open(str(path), mode="r", metadata_errors="replace", options=dict(options or {}))
    except av.error.FileNotFoundError as exc:
        raise InputNotFoundError(f"input not found: {path}") from exc
    except av.error.PermissionError as exc:
        raise InputError(f"cannot read {path}: permission denied") from exc
    except av.FFmpegError as exc:
        fragments = _mp4_fragments(path) if _looks_like_isobmff(path) else None
        if fragments is not None and fragments.cut and fragments.whole_end > 0:
            # Cut inside a fragment's header, which FFmpeg will not open past: read the whole fragments
            # before it (probing finds the cut from the boxes and says so).
            try:
                return av.open(_FilePrefix(path, fragments.whole_end), mode="r", metadata_errors="replace",
                               options=dict(options or {}))
            except av.FFmpegError:
                pass
        if fragments is not None and fragments.cut:
            raise TruncatedMediaError(f"cannot read {path}: the fragmented MP4 is cut short before its first whole "
                                      "frame") from exc
        if _looks_like_isobmff(path):
            raise TruncatedMediaError(
                f"cannot read {path}: the MP4/MOV has no complete index (moov atom); the file is cut "
                "short or still being written") from exc
        raise UnsupportedMediaError(
            f"cannot read {path}: not a media file FFmpeg recognises ({exc.strerror})") from exc


def _format_names(container: InputContainer) -> set[str]:
    return set(container.format.name.split(","))


def _undecodable_codec_name(container: InputContainer, index: int) -> str:
    """Name the codec of a stream that FFmpeg cannot decode (PyAV exposes no codec for it).

    ``av_dump_format`` is the only place that names it; its output goes through FFmpeg's log, so the
    log level is raised for the duration of the call. Only used to word an error message.
    """
    previous = av.logging.get_level()
    try:
        av.logging.set_level(av.logging.INFO)
        dump = container.dumps_format()
    except Exception:  # naming the codec is best effort; the error is raised either way
        return "unknown"
    finally:
        av.logging.set_level(previous)
    match = re.search(rf"Stream #\d+:{index}\b[^\n]*?: Video: ([^,\n]+)", dump)
    if match is None or match.group(1).strip() == "none":
        return "unknown"
    return re.sub(r" / 0x[0-9a-fA-F]+\)", ")", match.group(1).strip())  # "evc (evc1 / 0x..)" -> "evc (evc1)"


# Demuxers that render text as pictures: FFmpeg opens any .txt/.nfo/.asc as "video" through them.
_TEXT_AS_VIDEO_FORMATS = frozenset({"tty", "bintext", "xbin", "adf", "idf"})


def _pick_video_stream(container: InputContainer, path: Path) -> VideoStream:
    if _format_names(container) & _TEXT_AS_VIDEO_FORMATS:
        raise UnsupportedMediaError(f"{path} is not a video: it is a text file ({container.format.long_name})")
    candidates = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    if not candidates:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        raise UnsupportedMediaError(f"{path} has no video stream (streams: {kinds})")
    video = candidates[0]
    if video.codec_context is None:
        name = _undecodable_codec_name(container, video.index)
        raise UnsupportedMediaError(
            f"{path}: video codec {name!r} (stream #{video.index}) has no decoder in this FFmpeg build")
    return video


def _read_vint(data: bytes, pos: int) -> tuple[int, int, bool]:
    """An EBML variable-length integer at ``pos``: (value, next position, all value bits set)."""
    first = data[pos]
    length = 8 - first.bit_length() + 1
    if first == 0 or pos + length > len(data):
        raise ValueError("bad EBML integer")
    value = first & (0xFF >> length)
    for b in data[pos + 1:pos + length]:
        value = (value << 8) | b
    return value, pos + length, value == (1 << (7 * length)) - 1


def _matroska_segment_end(path: Path) -> int | None:
    """Byte offset where the Matroska segment ends, from its header; ``None`` if unknown (live)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    try:
        if head[:4] != b"\x1a\x45\xdf\xa3":
            return None
        size, pos, _ = _read_vint(head, 4)
        pos += size
        if head[pos:pos + 4] != b"\x18\x53\x80\x67":
            return None
        size, pos, unknown = _read_vint(head, pos + 4)
    except (ValueError, IndexError):
        return None
    return None if unknown else pos + size


def _detect_cut(container: InputContainer, path: Path, streaming: bool) -> bool:
    """Whether the file is visibly cut short. Raises for indexed containers; returns for streaming."""
    size = path.stat().st_size
    names = _format_names(container)
    if "mp4" in names or "mov" in names:
        for stream in container.streams:
            entries = stream.index_entries
            n = len(entries)
            end = max((e.pos + e.size for e in entries[max(0, n - 4):n]), default=0)
            if end > size:
                if streaming:  # fragmented: the fragments before the cut are whole
                    return True
                raise TruncatedMediaError(
                    f"{path} is cut short: its index needs {end} bytes but the file has {size}")
        return False
    if not streaming:
        return False
    if "mpegts" in names:
        return all(size % n for n in _TS_PACKET_SIZES)
    if "matroska" in names:
        end = _matroska_segment_end(path)
        return end is not None and end > size
    return False


def _stream_infos(container: InputContainer) -> tuple[StreamInfo, ...]:
    out = []
    for s in container.streams:
        if s.codec_context is not None:
            codec: str | None = s.codec_context.name
        elif s.type in ("data", "attachment"):
            codec = getattr(s, "name", None)
        else:
            codec = None
        out.append(StreamInfo(s.index, s.type, codec, s.metadata.get("language"), s.time_base))
    return tuple(out)


def _is_animated_webp(path: Path) -> bool:
    """Whether ``path`` is a WebP file whose extended header (``VP8X``) has its animation flag set."""
    try:
        with open(path, "rb") as f:
            head = f.read(21)
    except OSError:
        return False
    return len(head) == 21 and head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X" and bool(head[20] & 0x02)


def _first_frame(container: InputContainer, video: VideoStream, path: Path, *, cut: bool) -> av.VideoFrame:
    # A cut MP4's sample that runs past the end is not decoded (a fragmented MP4 cut in its first fragment:
    # its whole frames are still in the decoder when that sample comes).
    partial_at = _first_partial_samples(container, path).get(video.index) if cut else None
    try:
        for n, packet in enumerate(container.demux(video)):
            whole = packet.size and (partial_at is None or packet.pos is None or packet.pos < partial_at)
            for frame in video.decode(packet if whole else None):
                return frame
            if n >= _PROBE_MAX_PACKETS or not whole:
                break
    except av.FFmpegError as exc:
        if _is_animated_webp(path):
            raise UnsupportedMediaError(
                f"{path}: animated WebP cannot be decoded (FFmpeg reads still WebP images only); "
                "convert it to GIF or MP4 first") from exc
        raise UnsupportedMediaError(
            f"{path}: cannot decode the {video.codec_context.name} video stream ({exc.strerror})") from exc
    if cut:
        raise TruncatedMediaError(f"{path}: the file is cut short before its first whole frame")
    raise UnsupportedMediaError(f"{path}: the {video.codec_context.name} video stream has no decodable frame")


def _probe(container: InputContainer, path: Path, *, decode_first: bool) -> VideoInfo:
    video = _pick_video_stream(container, path)
    names = _format_names(container)
    fragments = _mp4_fragments(path) if names & {"mp4", "mov"} else None
    # A fragmented MP4 indexes each fragment where it is: like a streaming container, it plays up to a cut.
    streaming = bool(names & STREAMING_FORMATS) or fragments is not None
    truncated = _detect_cut(container, path, streaming) or (fragments is not None and fragments.cut)
    ctx = video.codec_context
    rotation = 0
    hdr = None
    if decode_first:
        first = _first_frame(container, video, path, cut=truncated)
        rotation, hdr = int(first.rotation) % 360, _hdr_metadata(first)
    tb = video.time_base or Fraction(1, 90000)
    if video.duration is not None:
        duration: float | None = float(video.duration * tb)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    else:
        duration = None
    return VideoInfo(
        path=path,
        format_name=container.format.name,
        video_index=video.index,
        codec=ctx.name,
        width=ctx.width,
        height=ctx.height,
        pix_fmt=ctx.pix_fmt,
        time_base=tb,
        average_rate=video.average_rate,
        frames=video.frames or None,
        duration=duration,
        rotation=rotation,
        has_audio=any(s.type == "audio" for s in container.streams),
        streaming=streaming,
        truncated=truncated,
        streams=_stream_infos(container),
        metadata=MappingProxyType(dict(container.metadata)),
        hdr=hdr,
    )


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Open ``path``, check that its video can be decoded (one frame is) and describe it.

    Raises :class:`InputNotFoundError`, :class:`UnsupportedMediaError` or :class:`TruncatedMediaError`
    (see the module docstring); nothing else is opened or written.
    """
    p = _check_path(path)
    container = _open_input(p)
    try:
        return _probe(container, p, decode_first=True)
    finally:
        container.close()


# -- decoding --------------------------------------------------------------------------------------


class PacketChannel:
    """Packets of the copied streams, from a source's demux thread to one sink (thread to thread).

    Each entry is ``(input stream index, packet)``. The index is read while the input is open: a
    packet's ``stream`` must not be touched once the source has stopped (PyAV frees the stream with
    its container). Bounded by the source's frame back-pressure, see :mod:`stream.sources`.
    :meth:`drain` never blocks; :attr:`ended` is set once the demuxer has pushed its last packet
    (end of file, cut, error or stop).
    """

    def __init__(self) -> None:
        self._packets: deque[tuple[int, av.Packet]] = deque()
        self._ended = threading.Event()
        self.complete = False
        """True when the channel ended at the end of the input (every packet was delivered)."""
        self.pushed = 0

    def push(self, packet: av.Packet) -> None:
        """Queue ``packet`` (demux thread, input still open)."""
        self._packets.append((packet.stream.index, packet))
        self.pushed += 1

    def end(self, *, complete: bool) -> None:
        if not self._ended.is_set():
            self.complete = complete
            self._ended.set()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def wait_ended(self, timeout: float | None = None) -> bool:
        """Wait (in a thread) until the demuxer is done; ``False`` on timeout."""
        return self._ended.wait(timeout)

    def drain(self) -> list[tuple[int, av.Packet]]:
        """Every ``(stream index, packet)`` queued so far, oldest first."""
        out = []
        while True:
            try:
                out.append(self._packets.popleft())
            except IndexError:
                return out

    def __len__(self) -> int:
        return len(self._packets)


class _Cut(Exception):
    """A streaming container ended mid-way; the message says why."""


def _iter_decoded(
    container: InputContainer,
    video: VideoStream,
    info: VideoInfo,
    *,
    on_packet: Callable[[av.Packet], None] | None = None,
    stop: threading.Event | None = None,
) -> Iterator[tuple[av.VideoFrame, float]]:
    """Demux and decode ``video``, yielding ``(frame, seconds spent demuxing and decoding for it)``.

    Packets of other demuxed streams go to ``on_packet``. Raises :class:`_Cut` when a streaming file
    ends early (a cut or a damaged packet) and :class:`InputError` for a damaged indexed file. In a
    file known to be cut, each stream's packets are held back by one so that the incomplete last one
    is never used.
    """
    holdback = info.truncated and "mpegts" in _format_names(container)
    held: dict[int, av.Packet] = {}
    # A cut fragmented MP4 hands out its last sample of each stream cut short: the index knows where that
    # sample starts, so it is dropped (as TS's held-back packet) instead of decoded or copied half.
    partial_at = _first_partial_samples(container, info.path) if info.truncated and info.streaming else {}
    pending = 0.0  # work done for frames not yet out of the decoder
    decoded = 0
    last_pts: int | None = None

    def position() -> str:
        # A decoder that skips frames (sample_video_frames) counts only those it outputs: say the time.
        if video.codec_context.skip_frame == "DEFAULT" or last_pts is None:
            return f"frame {decoded}"
        return f"{float((last_pts - (video.start_time or 0)) * info.time_base):.2f} s"

    def fail(what: str, exc: av.FFmpegError) -> Exception:
        if info.streaming:
            return _Cut(f"{what} after {position()} ({exc.strerror})")
        return InputError(f"cannot read {info.path}: {what} after {position()} ({exc.strerror}); "
                          "the file is damaged")

    def decode(packet: av.Packet | None) -> list[av.VideoFrame]:
        try:
            return video.decode(packet)
        except av.FFmpegError as exc:
            raise fail("decoding failed", exc) from exc

    demux = container.demux()
    while stop is None or not stop.is_set():
        t0 = time.perf_counter()
        try:
            packet = next(demux)
        except StopIteration:
            break
        except av.FFmpegError as exc:
            raise fail("reading failed", exc) from exc
        if not packet.size:  # PyAV's end-of-file flush packets; flushing is done below
            continue
        if packet.pos is not None and packet.pos >= partial_at.get(packet.stream.index, packet.pos + 1):
            continue
        if holdback:
            previous = held.get(packet.stream.index)
            held[packet.stream.index] = packet
            if previous is None:
                continue
            packet = previous
        if packet.stream.index != video.index:
            if on_packet is not None:
                on_packet(packet)
            continue
        frames = decode(packet)
        pending += time.perf_counter() - t0
        for frame in frames:
            decoded, last_pts = decoded + 1, frame.pts if frame.pts is not None else last_pts
            yield frame, pending
            pending = 0.0
    if stop is not None and stop.is_set():
        return
    t0 = time.perf_counter()
    frames = decode(None)
    pending += time.perf_counter() - t0
    for frame in frames:
        decoded, last_pts = decoded + 1, frame.pts if frame.pts is not None else last_pts
        yield frame, pending
        pending = 0.0
    if info.truncated:
        raise _Cut(f"the file is cut short after {position()}")


def _make_frame(vframe: av.VideoFrame, index: int, time_base: Fraction, decode_s: float) -> Frame:
    # 4:2:0 frames stay YUV: what reads them converts the boxes it needs (stream.pixels). Other formats
    # are converted whole here, on the decode thread.
    t0 = time.perf_counter()
    image = None if lazy_capable(vframe) else rgb_image(vframe)
    return Frame(
        index=index,
        image=image,
        pts=vframe.pts,
        time_base=time_base,
        rotation=int(vframe.rotation) % 360,
        capture_time=time.monotonic(),
        source=vframe,
        timings={"decode": decode_s + time.perf_counter() - t0},
    )


class _PtsFiller:
    """Timestamps for frames that come without one (raw elementary streams): one frame period on."""

    def __init__(self, info: VideoInfo) -> None:
        rate = info.average_rate or Fraction(25)
        self.step = max(1, round(1 / (rate * info.time_base)))
        self.last: int | None = None

    def __call__(self, vframe: av.VideoFrame) -> None:
        if vframe.pts is None:
            vframe.pts = 0 if self.last is None else self.last + self.step
        self.last = vframe.pts


def _join(thread: threading.Thread, timeout: float) -> None:
    """``thread.join(timeout)``, also for a thread whose ``start()`` a signal cut short: Ctrl-C or SIGTERM
    raised while ``start()`` waited for the new thread leaves one that runs but is not marked started yet,
    which ``join`` refuses ("cannot join thread before it is started")."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            thread.join(max(0.0, deadline - time.monotonic()))
            return
        except RuntimeError:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.001)


def _unknown_audio(stream: Stream) -> bool:
    """An audio stream whose sample rate or channel count the container did not give."""
    if stream.type != "audio":
        return False
    ctx = stream.codec_context
    return not ctx.sample_rate or not ctx.layout.nb_channels


class VideoFileSource(FrameTrack):
    """A video file as a :class:`FrameTrack`; decoding runs in a thread of its own.

    Args:
        path: the video file. It is probed here, so a bad input fails before any output exists.
        queue_size: decoded frames buffered ahead of the pipeline.
        realtime: deliver frames at the pace of their timestamps, dropping the oldest when the
            pipeline falls behind (a file standing in for a live camera).
        loop: start over at the end (live stand-in); timestamps keep increasing across passes, and
            the copied streams are only copied for the first pass.
    """

    def __init__(self, path: str | os.PathLike[str], *, queue_size: int = 8, realtime: bool = False,
                 loop: bool = False) -> None:
        self.info = probe_video(path)
        self.path = self.info.path
        self.realtime = realtime
        self.loop = loop
        self.truncated = False
        """Set once a cut streaming file has been decoded up to its cut (a warning is logged)."""
        self.frames_decoded = 0
        self._handoff: Handoff[Frame] = Handoff(queue_size, "keep_latest" if realtime else "block")
        self._open_options: Mapping[str, str] | None = None
        self._container = _open_input(self.path)
        if any(_unknown_audio(s) for s in self._container.streams):
            self._container.close()  # read further for the missing parameters
            self._open_options = _LONG_PROBE
            self._container = self.reopen()
        self._video: VideoStream = self._container.streams[self.info.video_index]
        self._video.thread_type = "AUTO"
        skipped = [s for s in self._container.streams
                   if s.index != self._video.index and s.disposition & Disposition.attached_pic]
        for s in skipped:
            logger.warning("%s: not copying stream #%d (cover art)", self.path, s.index)
        for s in self._container.streams:
            if _unknown_audio(s):
                # Declared but without a packet in the first 2 minutes (a transport stream's silent audio PID):
                # no container can hold it without its rate and channels (audio starting later still is lost).
                logger.warning("%s: not copying %s audio stream #%d: no packet tells its sample rate and channels",
                               self.path, s.codec_context.name, s.index)
                skipped.append(s)
        self.copy_streams: tuple[Stream, ...] = tuple(
            s for s in self._container.streams if s.index != self._video.index and s not in skipped)
        """The input's other streams, which a sink may copy packet for packet (see
        :meth:`open_passthrough`)."""
        self._channel: PacketChannel | None = None
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def reopen(self) -> InputContainer:
        """The input opened again, as this source opened it (streams with the same parameters), for a reader
        of its own; the caller closes it."""
        return _open_input(self.path, self._open_options)

    @property
    def video_stream(self) -> VideoStream:
        """The input stream being decoded (a sink reads its codec parameters and metadata)."""
        return self._video

    @property
    def dropped(self) -> int:
        """Frames dropped because the pipeline fell behind (``realtime`` only)."""
        return self._handoff.dropped

    def open_passthrough(self) -> PacketChannel:
        """The channel of :attr:`copy_streams` packets; call once, before the first :meth:`recv`."""
        if self._thread is not None or self._stopped:
            raise RuntimeError("open_passthrough() must be called before the first recv()")
        if self._channel is not None:
            raise RuntimeError("open_passthrough() was already called; a source feeds one sink")
        self._channel = PacketChannel()
        return self._channel

    async def recv(self) -> Frame:
        if self._thread is None and not self._stopped:
            self._thread = threading.Thread(target=self._run, name=f"facestream-decode-{self.path.name}",
                                            daemon=True)
            self._thread.start()
        return await self._handoff.get()

    def stop(self) -> None:
        """Stop decoding and close the file; waits for the decode thread to finish its frame.

        The input's streams (:attr:`video_stream`, :attr:`copy_streams`, packets' ``stream``) must
        not be used after this: PyAV frees them with the container.
        """
        if self._stopped:
            return
        self._stopped = True
        self._stop_event.set()
        self._handoff.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            _join(thread, 5.0)
        if thread is not None and thread.is_alive():
            # Closing the container under a running decoder would crash; the daemon thread exits
            # at its next frame and the container is freed with the source.
            logger.warning("%s: decode thread did not stop within 5 s", self.path)
            return
        if self._channel is not None:
            self._channel.end(complete=False)
        with contextlib.suppress(Exception):
            self._container.close()

    # -- the decode thread -------------------------------------------------------------------------

    def _run(self) -> None:
        channel = self._channel
        copy = {s.index for s in self.copy_streams} if channel is not None else set()
        for s in self._container.streams:
            if s.index != self._video.index and s.index not in copy:
                s.discard = av.stream.Discard.all  # the demuxer skips what nobody copies
        try:
            self._decode_all(channel)
        except _Cut as cut:
            self.truncated = True
            logger.warning("%s ends mid-stream: %s; processed the %d frames up to the cut",
                           self.path, cut, self.frames_decoded)
            if channel is not None:
                channel.end(complete=True)
            self._handoff.finish()
        except FacestreamError as exc:
            self._handoff.finish(exc)
        except Exception as exc:
            logger.debug("decode thread failed", exc_info=True)
            error = InputError(f"decoding {self.path} failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            self._handoff.finish(error)
        else:
            if channel is not None:
                channel.end(complete=True)
            self._handoff.finish()
        finally:
            if channel is not None:
                channel.end(complete=False)  # no-op after a complete end

    def _decode_all(self, channel: PacketChannel | None) -> None:
        fill_pts = _PtsFiller(self.info)
        tb = self.info.time_base
        offset = 0  # added to pts on every pass after the first (loop)
        clock0: float | None = None
        pts0 = 0
        while True:
            end = offset
            on_packet = channel.push if channel is not None and not channel.ended else None
            for vframe, decode_s in _iter_decoded(self._container, self._video, self.info,
                                                   on_packet=on_packet, stop=self._stop_event):
                fill_pts(vframe)
                if offset:
                    vframe.pts += offset
                end = vframe.pts + max(int(vframe.duration or 0), fill_pts.step)
                frame = _make_frame(vframe, self.frames_decoded, tb, decode_s)
                if self.realtime:
                    if clock0 is None:
                        clock0, pts0 = time.monotonic(), vframe.pts
                    delay = clock0 + float((vframe.pts - pts0) * tb) - time.monotonic()
                    if delay > 0 and self._stop_event.wait(delay):
                        return
                if not self._handoff.put_sync(frame):
                    return  # the consumer stopped
                self.frames_decoded += 1
            if not self.loop or self._stop_event.is_set() or self.frames_decoded == 0:
                return
            if channel is not None:
                channel.end(complete=True)
            offset = end
            fill_pts.last = None
            self._container.seek(0, backward=True, any_frame=False, stream=self._video)
            self._video.codec_context.flush_buffers()


# -- synchronous readers (source faces) ------------------------------------------------------------


def read_video_frames(path: str | os.PathLike[str], *, step: int = 1,
                      max_frames: int | None = None) -> Iterator[Frame]:
    """Every ``step``-th frame of a video (at most ``max_frames``), decoded synchronously.

    ``Frame.index`` is the frame's position in the video. Errors as :func:`probe_video`; a cut streaming
    file ends at the cut.
    """
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    p = _check_path(path)
    with contextlib.closing(_open_input(p)) as container:
        info = _probe(container, p, decode_first=False)
        yield from _read_frames(container, info, step=step, max_frames=max_frames)


def sample_video_frames(path: str | os.PathLike[str], count: int) -> Iterator[Frame]:
    """About ``count`` frames spread evenly over a video, decoded synchronously: a SOURCE video's faces.

    A video of at most ``2 * count`` frames gives every ``frames // count``-th frame, with
    ``Frame.index`` its position. A longer one is sampled by time, one frame per ``duration / count``
    seconds, and its decoder skips the frames no other frame refers to (an H.264/HEVC file's
    non-reference B-frames: a third of a 60 s 1080p clip's decoding time); ``Frame.index`` is then the
    position estimated from the frame's timestamp. A video whose length is unknown gives its first
    ``count`` frames. Errors as :func:`probe_video`; a cut streaming file ends at the cut.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    p = _check_path(path)
    with contextlib.closing(_open_input(p)) as container:
        info = _probe(container, p, decode_first=False)
        if info.duration and (info.frames is None or info.frames > 2 * count):
            period = Fraction(info.duration).limit_denominator(1_000_000) / count
            yield from _read_frames(container, info, period=period, max_frames=count)
        else:
            yield from _read_frames(container, info, step=max(1, (info.frames or count) // count), max_frames=count)


def _read_frames(container: InputContainer, info: VideoInfo, *, step: int = 1, period: Fraction | None = None,
                 max_frames: int | None = None) -> Iterator[Frame]:
    """Frames of an opened, probed video: every ``step``-th, or with ``period`` (seconds) the first at or
    after each multiple of it from the first frame's time, skipping unreferenced frames in decoding."""
    video: VideoStream = container.streams[info.video_index]
    video.thread_type = "AUTO"
    if period is not None:
        video.codec_context.skip_frame = "NONREF"  # their indices are lost anyway: estimated below
    for s in container.streams:
        if s.index != video.index:
            s.discard = av.stream.Discard.all
    fill_pts = _PtsFiller(info)
    start: Fraction | None = None
    yielded = 0
    try:
        for index, (vframe, decode_s) in enumerate(_iter_decoded(container, video, info)):
            if max_frames is not None and yielded >= max_frames:
                return
            fill_pts(vframe)
            if period is None:
                if index % step:
                    continue
            else:
                t = vframe.pts * info.time_base
                start = t if start is None else start
                if t < start + yielded * period:
                    continue
                index = round((t - start) * info.average_rate) if info.average_rate else yielded
            yield _make_frame(vframe, index, info.time_base, decode_s)
            yielded += 1
    except _Cut as cut:
        logger.warning("%s ends mid-stream: %s", info.path, cut)


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB, turned upright by its EXIF orientation."""
    p = _check_path(path)
    data = np.fromfile(p, dtype=np.uint8)  # imdecode copes with any path encoding; imread may not
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise UnsupportedMediaError(f"cannot read image {p}: not an image format OpenCV can decode")
    return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))


__all__ = [
    "STREAMING_FORMATS",
    "PacketChannel",
    "StreamInfo",
    "VideoFileSource",
    "VideoInfo",
    "load_image",
    "probe_video",
    "read_video_frames",
    "sample_video_frames",
]
