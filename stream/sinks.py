"""Video files out: re-encode the processed frames, copy everything else, lose nothing.

A :class:`VideoFileSink` writes what a :class:`~stream.sources.VideoFileSource` read, frame for frame:

- **Timestamps.** The video stream keeps the input's time base and every frame its ``pts``, so
  variable frame rate survives. (A muxer with a fixed clock rounds: Matroska counts milliseconds, and
  MP4 may scale a coarse time base up by a power of two; the times in seconds stay exact wherever the
  output clock can represent them. Matroska cannot store negative timestamps either: when a copied
  stream starts before zero — AAC encoder priming in an MP4 — the muxer shifts every stream by that
  amount, as ``ffmpeg`` does.) MP4/MOV edit lists are written in the video's own clock
  (``movie_timescale``), so a stream that starts late keeps its exact start.
- **Unmodified frames** (``frame.modified`` is false) are encoded from the decoded
  :class:`av.VideoFrame` itself, with no RGB round trip; modified ones are converted back from RGB
  with the input's colour matrix and range, the inverse of what the source did.
- **Copied streams.** Audio, subtitles and extra video streams (unprocessed) are remuxed packet for packet from the
  source's :class:`~stream.sources.PacketChannel` (no re-encode; ``pts``/``dts``/``duration`` kept).
  Fonts attached to a Matroska input are kept in a Matroska output. A QuickTime timecode track keeps
  its start timecode (the video stream's ``timecode`` tag, from which MP4/MOV write the track anew);
  other data streams (GPS...) are not copied (a warning says so). Audio of one or two channels whose
  layout the input leaves unnamed (PCM in AVI) is named mono or stereo, which MP4 needs to hold PCM; its
  packets are copied unchanged. An audio stream that carries no packet (a recorder's silent audio PID in a
  transport stream) is left out with a warning: nothing in it to keep, and no container takes it without
  its rate and channels; the source reads up to 2 minutes in for audio that starts late. A copied
  stream that the output container cannot hold (e.g. ``mov_text`` subtitles into Matroska, AAC into
  WebM) is refused with an
  :class:`~stream.exceptions.OutputError` when the sink is created, naming the stream and the
  containers that can take it; nothing is converted silently. (The MP4 muxer fills the gaps
  between ``mov_text`` cues with empty samples of its own; the cues themselves are unchanged.)
- **Metadata.** Container and stream metadata, stream languages/dispositions and the display
  rotation are kept. Every output is marked as synthetic: ``synthetic=true``,
  ``encoder_app=facestream <version>``, whatever the caller adds (``facestream_mode=swap``...) and a
  human-readable ``comment`` when the input has none. MP4/MOV are written with
  ``movflags=+use_metadata_tags`` so these custom keys survive, and end with an XMP packet
  (:func:`xmp_packet`: IPTC's Digital Source Type, the creator tool, the comment) in a top-level
  ``uuid`` box (:func:`append_xmp_box`).
- **Safety.** The output is written to a hidden temporary file next to ``path`` and renamed over it by
  :meth:`VideoFileSink.close`; an output that is the input file is refused before anything is opened
  for writing; :meth:`VideoFileSink.abort` (and any failure) removes the temporary file.

Encoding and muxing run in one thread per sink, fed through a bounded
:class:`~stream.handoff.Handoff`, so ``await sink.write(frame)`` only waits when the encoder is
``queue_size`` frames behind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import io
import logging
import os
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from xml.sax.saxutils import escape, quoteattr

import av
import numpy as np
from av.container import OutputContainer
from av.stream import Stream
from av.video.stream import VideoStream

from engines.cache import temp_beside
from stream import __version__
from stream.exceptions import EndOfStream, FacestreamError, OutputError
from stream.frames import Frame
from stream.handoff import Handoff
from stream.pipeline import PipelineStats, run_pipeline
from stream.sources import PacketChannel, VideoFileSource

logger = logging.getLogger(__name__)

#: Output extensions facestream knows how to write (FFmpeg may accept more).
OUTPUT_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".ts")
_ISOBMFF_MUXERS = frozenset({"mp4", "mov", "ipod", "3gp", "3g2", "ismv", "psp", "f4v"})
_MATROSKA_MUXERS = frozenset({"matroska", "webm"})
# Metadata the muxer writes itself, or that describes the input's encoding rather than its content.
_DROPPED_KEYS = frozenset({
    "encoder", "major_brand", "minor_version", "compatible_brands", "duration", "vendor_id",
    "number_of_frames", "number_of_bytes", "bps", "_statistics_writing_app",
    "_statistics_writing_date_utc", "_statistics_tags",
})
# Codecs whose quality is set by a CRF: its valid range (checked here: x264 would clamp 99 to 51 silently).
_CRF_RANGES = {"libx264": (0, 51), "libx264rgb": (0, 51), "libx265": (0, 51), "libvpx-vp9": (0, 63),
               "libvpx": (4, 63), "libsvtav1": (1, 63), "libaom-av1": (0, 63)}
# Speed presets, by x264's names (x265 has the same). Checked here: the encoders print their own
# complaint to stderr before failing with a bare "Invalid argument".
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
_X264_FAMILY = frozenset({"libx264", "libx264rgb", "libx265"})
# SVT-AV1 numbers its presets (13 fastest); x264's names map to ones of a like speed, numbers pass through.
_SVT_PRESETS = dict(zip(X264_PRESETS, ("12", "11", "10", "9", "8", "6", "4", "2", "1", "0"), strict=True))
# libvpx has no presets: its speed is ``deadline`` + ``cpu-used``. The x264 names map to settings of a
# like speed; all keep untouched 720p frames well above 38 dB at CRF 17 (44 dB measured, 60 noisy frames).
_VPX_SPEED = dict(zip(X264_PRESETS, (("realtime", 8), ("realtime", 8), ("realtime", 8), ("realtime", 7),
                                     ("realtime", 6), ("good", 4), ("good", 2), ("good", 1), ("good", 0),
                                     ("good", 0)), strict=True))
_PRESET_CODECS = _X264_FAMILY | {"libsvtav1", "libvpx", "libvpx-vp9"}
# The video encoder used when none is named: the container's usual one (WebM holds only VP8/VP9/AV1).
_DEFAULT_CODECS = {".webm": "libvpx-vp9"}
_DEFAULT_CODEC = "libx264"
# For frames of more than 8 bits, HEVC in these containers: H.264's deep profiles (High 10, High 4:2:2) play on
# few devices (no phone, TV or browser decodes them in hardware), HEVC Main 10 nearly everywhere, HDR included.
_DEEP_DEFAULT_CODEC = "libx265"
_DEEP_DEFAULT_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".ts"})
_WHERE_CODECS_FIT = ".mkv holds nearly every codec; .mp4/.mov hold mov_text subtitles"


def synthetic_marks(metadata: Mapping[str, str] | None = None) -> dict[str, str]:
    """``metadata`` with the marks every facestream output carries applied last, so that no caller or
    input tag can unset them: ``synthetic=true``, ``encoder_app=facestream <version>`` and, unless given,
    a ``comment`` saying the media is synthetic (naming ``facestream_mode`` when set)."""
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update({"synthetic": "true", "encoder_app": f"facestream {__version__}"})
    if "comment" not in meta:
        mode = meta.get("facestream_mode")
        meta["comment"] = f"Synthetic media: altered by facestream {__version__}" + (f" ({mode})" if mode else "")
    return meta


#: IPTC Digital Source Types, the field photo and video tools and C2PA readers look at for synthetic media.
_DIGITAL_SOURCE_TYPES = {
    "weight-free": "http://cv.iptc.org/newscodes/digitalsourcetype/compositeSynthetic",
    "learned": "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia",
}



def xmp_packet(tags: Mapping[str, str], *, learned: bool) -> bytes:
    """An XMP packet with IPTC's Digital Source Type, the creator tool and the comment of ``tags``."""
    source_type = _DIGITAL_SOURCE_TYPES["learned" if learned else "weight-free"]
    comment = escape(tags.get("comment", ""))
    text = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
        f"    Iptc4xmpExt:DigitalSourceType={quoteattr(source_type)}\n"
        f"    xmp:CreatorTool={quoteattr(tags.get('encoder_app', ''))}>\n"
        f'   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{comment}</rdf:li></rdf:Alt></dc:description>\n'
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="r"?>'
    )
    return text.encode("utf-8")


#: Adobe's UUID for an XMP packet in an ISO base media file (XMP Specification Part 3, MPEG-4).
XMP_UUID = bytes.fromhex("be7acfcb97a942e89c71999491e3afac")


def append_xmp_box(path: str | os.PathLike[str], xmp: bytes) -> None:
    """Append ``xmp`` to the finished MP4/MOV file ``path`` as a top-level ``uuid`` box with XMP's UUID,
    where Adobe's XMP specification puts it for MPEG-4 files and where exiftool reads it. Nothing
    before it moves, so the sample offsets in ``moov`` stay right; players skip boxes they do not know."""
    with open(path, "ab") as f:
        f.write(struct.pack(">I4s", 8 + len(XMP_UUID) + len(xmp), b"uuid") + XMP_UUID + xmp)


def is_isobmff(container: OutputContainer) -> bool:
    """MP4/MOV family: custom metadata keys are written only with ``movflags=+use_metadata_tags``."""
    return bool(set(container.format.name.split(",")) & _ISOBMFF_MUXERS)


@dataclass(frozen=True)
class EncodeSettings:
    """How the video stream is re-encoded.

    The defaults keep frames that no stage touched at >= 38 dB PSNR against the decoded input on
    textured content (gradients, texture, sensor noise; ``tests/test_sinks.py``). Measured with
    ``tests/bench_sinks.py`` (minimum PSNR over frames, unmodified / through RGB): CRF 17 veryfast
    38.7 / 37.1 dB at 160x120 and 40.7 / 39.6 dB at 1280x720; CRF 18 gives 38.3 dB at 160x120. The
    ``medium`` preset adds about 1 dB at the same CRF but encodes 1.5-2.5x slower, which a real-time
    pipeline cannot spare, so ``veryfast`` is the default.
    """

    codec: str | None = None
    """An FFmpeg encoder name (``libx264``, ``libx265``, ``libvpx-vp9``, ``ffv1``...); ``None`` picks the
    output container's usual one (:meth:`for_output`): ``libvpx-vp9`` for ``.webm``, else ``libx264``, or
    ``libx265`` for frames of more than 8 bits that were not H.264 already."""
    crf: int | None = 17
    """Constant rate factor for CRF codecs (lower is better; ``None`` leaves the encoder default)."""
    preset: str | None = "veryfast"
    """Speed/size trade-off for x264/x265/SVT-AV1; ``None`` leaves the encoder default."""
    pix_fmt: str | None = None
    """Output pixel format; ``None`` keeps the input's when the encoder supports it."""
    threads: int = 0
    """Encoder threads; 0 lets the encoder choose."""
    options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    """Extra encoder options (FFmpeg AVOptions), applied last."""

    def for_output(self, path: str | os.PathLike[str], source_codec: str | None = None,
                   source_pix_fmt: str | None = None) -> EncodeSettings:
        """These settings with the codec filled in for an output at ``path`` when none was named: the container's
        usual one; for an MP4, MOV, MKV or TS output of frames deeper than 8 bits (``source_pix_fmt``) that
        were not H.264 (``source_codec``, the decoder's name), such as a phone's HDR video or a 10-bit camera
        file, HEVC rather than H.264, whose 10-bit profiles few devices play (see ``_DEEP_DEFAULT_CODEC``).
        A 10-bit H.264 input stays H.264: it plays where the input did."""
        if self.codec is not None:
            return self
        suffix = Path(path).suffix.lower()
        codec = _DEFAULT_CODECS.get(suffix, _DEFAULT_CODEC)
        if (suffix in _DEEP_DEFAULT_SUFFIXES and source_codec != "h264" and pix_fmt_bits(source_pix_fmt) > 8
                and source_pix_fmt in encoder_formats(_DEEP_DEFAULT_CODEC)):  # HEVC keeps those bits (not RGB48)
            codec = _DEEP_DEFAULT_CODEC
        return replace(self, codec=codec)

    def codec_options(self) -> dict[str, str]:
        """The encoder's AVOptions for these settings; :class:`OutputError` for a CRF or preset the
        encoder does not take."""
        codec = self.codec or _DEFAULT_CODEC
        opts: dict[str, str] = {}
        if self.crf is not None and codec in _CRF_RANGES:
            lo, hi = _CRF_RANGES[codec]
            if not lo <= self.crf <= hi:
                raise OutputError(f"crf {self.crf} is outside {codec}'s range {lo}..{hi} (lower is better)")
            opts["crf"] = str(self.crf)
            if codec.startswith("libvpx"):
                opts["b"] = "0"  # constant quality mode
        preset = self.preset
        if preset is not None and codec in _PRESET_CODECS:
            numeric = codec == "libsvtav1" and preset.lstrip("-").isdigit() and -2 <= int(preset) <= 13
            if preset not in X264_PRESETS and not numeric:
                raise OutputError(f"unknown preset {preset!r} for {codec}; choose from: {', '.join(X264_PRESETS)}"
                                  + (" or a number -2..13" if codec == "libsvtav1" else ""))
            if codec in _X264_FAMILY:
                opts["preset"] = preset
            elif codec == "libsvtav1":
                opts["preset"] = preset if numeric else _SVT_PRESETS[preset]
            else:
                deadline, cpu_used = _VPX_SPEED[preset]
                # row-mt: libvpx otherwise threads over tile columns only, a few at 720p.
                opts.update({"deadline": deadline, "cpu-used": str(cpu_used), "row-mt": "1"})
        if codec == "libx265":
            opts["x265-params"] = "log-level=error"  # x265 writes its statistics straight to stderr
        opts.update({str(k): str(v) for k, v in self.options.items()})
        return opts


@functools.cache
def encoder_formats(name: str) -> frozenset[str]:
    """The pixel formats FFmpeg's encoder ``name`` takes; empty when this build has no such encoder."""
    try:
        return frozenset(f.name for f in av.codec.Codec(name, "w").video_formats or ())
    except (av.FFmpegError, ValueError):
        return frozenset()


def pix_fmt_bits(pix_fmt: str | None) -> int:
    """Bits per sample of ``pix_fmt`` (its first component); 8 when it is unknown."""
    try:
        return av.VideoFormat(pix_fmt).components[0].bits if pix_fmt else 8
    except (ValueError, av.FFmpegError):
        return 8


@dataclass(frozen=True)
class SinkStats:
    """What a sink wrote."""

    path: Path
    frames: int
    bytes: int
    encode_seconds: float
    """Time spent converting and encoding video frames (the sink's thread, not wall time)."""
    copied_packets: int
    """Packets of audio/subtitle/extra streams remuxed as they were."""
    wall_seconds: float
    """From the first ``write`` to the end of ``close``."""

    @property
    def fps(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else 0.0


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file (same path after symlinks, or a hard link)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def write_whole(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a :func:`temp_beside` file renamed over it: a reader never sees
    half a file, and a failed write leaves the previous one as it was."""
    tmp = temp_beside(path, ".facestream-tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _kept_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in metadata.items() if k.lower() not in _DROPPED_KEYS}


def _codec_name(stream: Stream) -> str:
    ctx = stream.codec_context
    return ctx.name if ctx is not None else getattr(stream, "name", None) or "unknown"


def _describe(stream: Stream) -> str:
    return f"{_codec_name(stream)} {stream.type} stream #{stream.index}"


# What an audio stream of 1 or 2 channels with no named layout (PCM in AVI or WAV, say) is taken to be, as
# FFmpeg's own tools guess: the MP4 muxer writes no PCM track without a layout ("unsupported channel layout").
_GUESSED_LAYOUTS = {1: "mono", 2: "stereo"}


def _add_copy(container: OutputContainer, template: Stream) -> Stream:
    """A stream of ``container`` that takes ``template``'s packets unchanged (``add_stream_from_template``);
    an audio stream of 1 or 2 unnamed channels gets its conventional layout named (the samples are the same)."""
    out = container.add_stream_from_template(template, opaque=True)
    if template.type == "audio":
        layout = template.codec_context.layout
        guess = _GUESSED_LAYOUTS.get(layout.nb_channels)
        if guess is not None and all(c.name == "NONE" for c in layout.channels):
            out.codec_context.layout = guess
    return out


class VideoFileSink:
    """Encodes frames of ``source`` into ``path``; see the module docstring.

    Args:
        path: the output file; its extension picks the container (one of :data:`OUTPUT_EXTENSIONS`).
        source: the source whose frames are written; its other streams are copied.
        settings: video encoder settings.
        metadata: extra container metadata, e.g. ``{"facestream_mode": "swap"}``.
        queue_size: frames buffered ahead of the encoder thread.
        learned: the frames were made by learned networks: an MP4/MOV's XMP packet gives IPTC's Digital
            Source Type ``compositeWithTrainedAlgorithmicMedia`` instead of ``compositeSynthetic``.

    Raises :class:`OutputError` when ``path`` is the input, its directory is missing or not
    writable, the extension is unknown, or the container cannot hold the codec or a copied stream.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        source: VideoFileSource,
        *,
        settings: EncodeSettings = EncodeSettings(),
        metadata: Mapping[str, str] = MappingProxyType({}),
        queue_size: int = 8,
        learned: bool = False,
    ) -> None:
        self.path = Path(path)
        self.source = source
        self.settings = settings.for_output(self.path, source.info.codec, source.info.pix_fmt)
        if settings.codec is None and self.settings.codec == _DEEP_DEFAULT_CODEC:
            logger.info("%s is %d-bit %s: encoding HEVC (%s), which phones and TVs play at that depth; --codec "
                        "libx264 is faster, but its 10-bit H.264 plays on few devices", source.path,
                        pix_fmt_bits(source.info.pix_fmt), source.info.codec, _DEEP_DEFAULT_CODEC)
        self._check_output_path()
        self._queue: Handoff[Frame] = Handoff(queue_size, "block")
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread: threading.Thread | None = None
        self._aborting = False
        self._closed = False
        self._error: BaseException | None = None
        self._frames = 0
        self._copied = 0
        self._encode_seconds = 0.0
        self._t_first: float | None = None
        self._warned_resize = False
        self._tmp = temp_beside(self.path, f".facestream-tmp{self.path.suffix}")  # the suffix picks the muxer
        try:
            self._container = self._open_container()
            self._video = self._add_video_stream()
            self._copy_map: dict[int, Stream] = {}
            # An MKV's or MP4's table of contents, with titles: frames keep their timestamps, so the chapter
            # times stay right.
            chapters = self.source.video_stream.container.chapters()
            self._channel: PacketChannel | None = self._add_copy_streams(chapters=bool(chapters))
            self._set_container_metadata(metadata)
            # MP4/MOV also get the marks as XMP, which photo and video tools read (Matroska has no place
            # for it: its tags carry the marks).
            self._xmp = (xmp_packet(dict(self._container.metadata), learned=learned)
                         if is_isobmff(self._container) else None)
            if chapters:
                self._container.set_chapters(chapters)
            self._write_header()
            self._try_copies()
        except BaseException:
            self._discard_tmp()
            raise

    # -- construction -------------------------------------------------------------------------------

    def _check_output_path(self) -> None:
        out, src = self.path, self.source.path
        if same_file(out, src):
            raise OutputError(f"output {out} is the input file; choose another output path")
        if out.is_dir():
            raise OutputError(f"output {out} is a directory; give a file name such as {out / 'out.mp4'}")
        if not out.parent.is_dir():
            raise OutputError(f"output directory {out.parent} does not exist")
        if out.suffix.lower() not in OUTPUT_EXTENSIONS:
            raise OutputError(f"unknown output extension {out.suffix or '(none)'!r} in {out}; "
                              f"use one of: {', '.join(OUTPUT_EXTENSIONS)}")
        if not os.access(out.parent, os.W_OK):
            raise OutputError(f"cannot write to {out.parent}: permission denied")

    def _discard_tmp(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    def _open_container(self) -> OutputContainer:
        try:
            container = av.open(str(self._tmp), mode="w")
        except (av.FFmpegError, ValueError) as exc:
            raise OutputError(f"cannot write {self.path}: {exc}") from exc
        if is_isobmff(container):
            container.options["movflags"] = "+use_metadata_tags"  # keep custom keys (synthetic=...)
            # Edit lists (a stream starting after 0, B-frame delay) are counted in the movie time
            # scale, 1/1000 by default; the video's own clock keeps its start exact.
            container.options["movie_timescale"] = str(self.source.info.time_base.denominator)
        return container

    def _add_video_stream(self) -> VideoStream:
        info, s = self.source.info, self.settings
        name = s.codec or _DEFAULT_CODEC  # EncodeSettings.for_output filled it in
        src_stream = self.source.video_stream
        src_ctx = src_stream.codec_context
        try:
            codec = av.codec.Codec(name, "w")
        except (av.FFmpegError, ValueError) as exc:  # UnknownCodecError is a ValueError
            raise OutputError(f"unknown video encoder {name!r}; try libx264, libx265, libvpx-vp9 "
                              "or ffv1") from exc
        if codec.type != "video":
            raise OutputError(f"{name!r} is a {codec.type} encoder, not a video encoder")
        supported = set(encoder_formats(codec.name))
        if s.pix_fmt is not None:
            pix_fmt = s.pix_fmt
        elif info.pix_fmt in supported or not supported:
            pix_fmt = info.pix_fmt or "yuv420p"
        else:
            pix_fmt = "yuv420p" if "yuv420p" in supported else sorted(supported)[0]
        if supported and pix_fmt not in supported:
            raise OutputError(f"encoder {name} cannot write pixel format {pix_fmt!r}; "
                              f"choose from: {', '.join(sorted(supported))}")
        if s.pix_fmt is None:
            pix_fmt = self._fit_odd_size(codec.name, pix_fmt, supported)
        options = s.codec_options()
        if codec.name == "libsvtav1":
            # SVT-AV1 prints its whole configuration to stderr unless told otherwise, and only through its
            # environment (read when an encoder starts): errors only, unless the user set a level of their own.
            os.environ.setdefault("SVT_LOG", "1")
        if codec.name == "libx265" and info.hdr is not None and "x265-params" not in s.options:
            # HDR10's mastering display and light levels, which TVs tone-map with, into the new bitstream's SEI.
            options["x265-params"] = ":".join([options["x265-params"], *info.hdr.x265_params()])
        try:
            stream = self._container.add_stream(name, rate=info.average_rate or None, options=options)
        except ValueError as exc:
            raise OutputError(f"{self.path.suffix} files cannot hold {name} video; "
                              f"{_WHERE_CODECS_FIT}") from exc
        ctx = stream.codec_context
        if codec.canonical_name == "hevc" and is_isobmff(self._container):
            ctx.codec_tag = "hvc1"  # FFmpeg's default, hev1, is what Apple's players refuse to play
        ctx.width, ctx.height, ctx.pix_fmt = info.width, info.height, pix_fmt
        ctx.time_base = info.time_base
        stream.time_base = info.time_base
        ctx.thread_count = s.threads
        for attr in ("color_range", "color_primaries", "color_trc", "colorspace"):
            with contextlib.suppress(AttributeError, ValueError):
                setattr(ctx, attr, getattr(src_ctx, attr))
        if src_ctx.sample_aspect_ratio:
            ctx.sample_aspect_ratio = src_ctx.sample_aspect_ratio
        if info.rotation:
            stream.set_display_rotation(info.rotation)
        stream.metadata.update(_kept_metadata(src_stream.metadata))
        stream.disposition = src_stream.disposition
        self._pix_fmt = pix_fmt
        # The inverse of the source's YUV->RGB conversion (its matrix and range), for modified frames.
        self._colorspace = int(src_ctx.colorspace)
        self._color_range = int(src_ctx.color_range)
        try:
            ctx.open()  # bad settings fail here, before any frame is processed
        except av.FFmpegError as exc:
            raise OutputError(f"cannot open encoder {name} for {info.width}x{info.height} {pix_fmt} "
                              f"with {options}: {exc.strerror}") from exc
        return stream

    def _fit_odd_size(self, codec: str, pix_fmt: str, supported: set[str]) -> str:
        """``pix_fmt``, or its full-chroma sibling when the frames have an odd width or height that the
        encoder cannot store with chroma at half that resolution (H.264/H.265 cannot; VP9 can).

        Screen recordings, GIFs and cropped clips are often odd-sized; scaling or cropping them would
        lose pixels, and 4:4:4 keeps them all (at the cost of players that decode only 4:2:0).
        """
        w, h = self.source.info.width, self.source.info.height
        if not (w % 2 or h % 2) or not _halves_chroma(pix_fmt, w, h) or _encoder_opens(codec, pix_fmt, w, h):
            return pix_fmt
        depth = pix_fmt_bits(pix_fmt)
        candidates = sorted(
            name for name in supported
            if name.startswith("yuv") and len(av.VideoFormat(name).components) == 3  # Y, U, V: no alpha
            and pix_fmt_bits(name) == depth and not _halves_chroma(name, w, h))
        # The same family (full/limited range, endianness) with 4:4:4 in place of 4:2:x first.
        sibling = pix_fmt.replace("420", "444").replace("422", "444").replace("440", "444")
        ordered = ([sibling] if sibling in candidates else []) + [c for c in candidates if c != sibling]
        for name in ordered:
            if _encoder_opens(codec, name, w, h):
                logger.warning("%s: %dx%d is odd-sized, which %s cannot store with %s's half-size chroma; "
                               "writing %s (full chroma; browsers and some players cannot play it)",
                               self.path, w, h, codec, pix_fmt, name)
                return name
        raise OutputError(f"encoder {codec} cannot store the odd frame size {w}x{h} of {self.source.path}; "
                          "try --codec ffv1 or --codec libvpx-vp9 (.mkv)")

    def _add_copy_streams(self, *, chapters: bool) -> PacketChannel | None:
        is_matroska = bool(set(self._container.format.name.split(",")) & _MATROSKA_MUXERS)
        for src in self.source.copy_streams:
            if src.type == "data":
                if chapters and _codec_name(src) == "bin_data":
                    # MP4/MOV keep chapters in a text track that FFmpeg shows as data: they are written
                    # anew (set_chapters), in whatever form the output container keeps them.
                    logger.info("%s: %s holds the chapters, which are copied", self.path, _describe(src))
                elif timecode := src.metadata.get("timecode"):
                    # A QuickTime timecode track: its start time is the video stream's "timecode" tag, from
                    # which the MP4/MOV muxer writes the track anew (Matroska keeps the tag).
                    self._video.metadata.setdefault("timecode", timecode)
                    logger.info("%s: %s holds the start timecode %s, which is kept", self.path, _describe(src),
                                timecode)
                else:
                    logger.warning("%s: not copying %s (data streams are not kept)", self.path, _describe(src))
                continue
            if src.type == "attachment" and not is_matroska:
                logger.warning("%s: not copying %s (only Matroska outputs hold attachments)",
                               self.path, _describe(src))
                continue
            try:
                out = _add_copy(self._container, src)
            except ValueError as exc:
                raise OutputError(
                    f"{self.path.suffix} files cannot hold the {_describe(src)} of {self.source.path} "
                    f"(copied without re-encoding); {_WHERE_CODECS_FIT}") from exc
            if src.type != "attachment":  # attachments copy their own metadata
                out.metadata.update(_kept_metadata(src.metadata))
                out.disposition = src.disposition
                self._copy_map[src.index] = out
        if not self._copy_map:
            return None
        return self.source.open_passthrough()

    def _set_container_metadata(self, extra: Mapping[str, str]) -> None:
        meta = _kept_metadata(self.source.info.metadata)
        meta.update({str(k): str(v) for k, v in extra.items()})
        self._container.metadata.update(synthetic_marks(meta))

    def _try_copies(self) -> None:
        """Mux the first packet of each copied stream into an in-memory file of this format and finish it.

        Some pairs of container and codec pass the header and fail only when the file is finished (PCM
        audio of more than 2 unnamed channels in MP4: "unsupported channel layout"), which would be after the
        whole run.
        """
        wanted = set(self._copy_map)  # attachments are copied with the header, not as packets
        if not wanted:
            return
        try:
            src = self.source.reopen()
        except (FacestreamError, av.FFmpegError, OSError):
            return  # best effort: the run itself reports what it meets
        with src:
            firsts: dict[int, av.Packet] = {}
            for n, packet in enumerate(src.demux()):
                if packet.size and packet.stream.index in wanted:
                    firsts.setdefault(packet.stream.index, packet)
                if len(firsts) == len(wanted) or n >= 2000:
                    break
            previous = av.logging.get_level()
            av.logging.set_level(av.logging.ERROR)
            try:
                with av.logging.Capture() as logs:
                    for index, packet in firsts.items():
                        try:
                            with av.open(io.BytesIO(), "w", format=self._container.format.name) as probe:
                                packet.stream = _add_copy(probe, src.streams[index])
                                probe.start_encoding()
                                probe.mux(packet)
                        except (av.FFmpegError, ValueError) as exc:
                            reason = logs[-1][2].strip() if logs else getattr(exc, "strerror", None) or str(exc)
                            raise OutputError(
                                f"{self.path.suffix} files cannot hold the {_describe(src.streams[index])} of "
                                f"{self.source.path} (copied without re-encoding): {reason}; {_WHERE_CODECS_FIT}"
                            ) from exc
            finally:
                av.logging.set_level(previous)

    def _write_header(self) -> None:
        """Write the header now: a stream the container rejects fails here, before any processing."""
        try:
            self._container.start_encoding()
        except av.FFmpegError as exc:
            copied = ", ".join(_describe(s) for s in self.source.copy_streams
                               if s.index in self._copy_map) or "none"
            with contextlib.suppress(Exception):
                self._container.close()
            raise OutputError(
                f"{self.path.suffix} files cannot hold the streams of {self.source.path} "
                f"({self.settings.codec} video; copied: {copied}): {exc.strerror}; {_WHERE_CODECS_FIT}"
            ) from exc

    # -- the encoder thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                try:
                    frame = self._queue.get_sync()
                except EndOfStream:
                    break
                self._encode(frame)
                self._mux_copies()
            if not self._aborting:
                self._finish()
        except BaseException as exc:
            self._error = exc
            self._queue.close()
            self._done.set_exception(exc)
        else:
            self._done.set_result(None)
        finally:
            if self._error is not None or self._aborting:
                with contextlib.suppress(Exception):
                    self._container.close()

    def _encode(self, frame: Frame) -> None:
        t0 = time.perf_counter()
        src = frame.source
        # The decoded frame itself (pasted boxes written back) when it can carry the changes in this
        # output's pixel format: every pixel outside the boxes stays the decoder's own.
        vf = frame.decoded_frame() if src is not None and (not frame.modified or src.format.name == self._pix_fmt) \
            else None
        if vf is None:
            vf = self._from_rgb(frame.image)
            if src is not None:
                vf.duration = src.duration
        ctx = self._video.codec_context
        if (vf.width, vf.height) != (ctx.width, ctx.height):  # the input changed size mid-stream
            if not self._warned_resize:
                logger.warning("%s: input frames changed size to %dx%d; scaling to %dx%d", self.path,
                               vf.width, vf.height, ctx.width, ctx.height)
                self._warned_resize = True
            vf = vf.reformat(width=ctx.width, height=ctx.height, format=self._pix_fmt)
        vf.pts = frame.pts
        vf.time_base = self._video.codec_context.time_base
        packets = self._video.encode(vf)
        self._encode_seconds += time.perf_counter() - t0
        self._frames += 1
        self._container.mux(packets)

    def _from_rgb(self, image: np.ndarray) -> av.VideoFrame:
        """An RGB image in the encoder's pixel format, with the source's matrix and range."""
        # threads=1: swscale's own slice threading is several times slower here than one thread.
        return av.VideoFrame.from_ndarray(image, format="rgb24").reformat(
            format=self._pix_fmt, dst_colorspace=self._colorspace, dst_color_range=self._color_range, threads=1)

    def _mux_copies(self) -> None:
        if self._channel is None:
            return
        for index, packet in self._channel.drain():
            out = self._copy_map.get(index)
            if out is None:
                continue
            packet.stream = out
            self._container.mux(packet)
            self._copied += 1

    def _finish(self) -> None:
        t0 = time.perf_counter()
        packets = self._video.encode(None)
        self._encode_seconds += time.perf_counter() - t0
        self._container.mux(packets)
        if self._channel is not None:
            # The source ends its channel before it reports the end of its frames, so after a full
            # run every packet is here; after an early stop, copies end where demuxing stopped.
            self._mux_copies()
            if not self._channel.complete:
                logger.info("%s: the input was not read to the end; copied streams stop where it stopped",
                            self.path)
        self._container.close()
        if self._xmp is not None:
            append_xmp_box(self._tmp, self._xmp)

    def _start(self) -> None:
        self._t_first = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name=f"facestream-encode-{self.path.name}",
                                        daemon=True)
        self._thread.start()

    def _raise_failure(self) -> None:
        exc = self._error
        if isinstance(exc, FacestreamError):
            raise exc
        raise OutputError(f"writing {self.path} failed: {type(exc).__name__}: {exc}") from exc

    # -- public -------------------------------------------------------------------------------------

    @property
    def queue_fill(self) -> float:
        """How full the encoder's input queue is (0 empty, 1 full: the next :meth:`write` waits)."""
        return len(self._queue) / self._queue.maxsize

    async def write(self, frame: Frame) -> None:
        """Queue ``frame`` for encoding; waits only while the encoder is ``queue_size`` frames behind."""
        if self._closed or self._aborting:
            raise OutputError(f"write() to {self.path} after close() or abort()")
        if self._thread is None:
            self._start()
        if self._error is not None or not await self._queue.put(frame):
            await self.abort()
            self._raise_failure()

    async def close(self) -> SinkStats:
        """Flush the encoder, copy the remaining packets and move the file into place."""
        if self._aborting:
            raise OutputError(f"close() of {self.path} after abort()")
        if self._closed:
            raise OutputError(f"close() of {self.path} called twice")
        if self._frames == 0 and self._thread is None:
            await self.abort()
            raise OutputError(f"no frames were written to {self.path}; nothing saved")
        self._closed = True
        self._queue.finish()
        try:
            await asyncio.wrap_future(self._done)
            os.replace(self._tmp, self.path)
        except BaseException:
            self._aborting = True
            await self._join()
            self._discard_tmp()
            if self._error is not None:
                self._raise_failure()
            raise
        assert self._t_first is not None
        return SinkStats(path=self.path, frames=self._frames, bytes=self.path.stat().st_size,
                         encode_seconds=self._encode_seconds, copied_packets=self._copied,
                         wall_seconds=time.perf_counter() - self._t_first)

    async def abort(self) -> None:
        """Stop encoding and delete the temporary file; ``path`` is left as it was. Idempotent."""
        if self._aborting and self._thread is None:
            self._discard_tmp()
            return
        self._aborting = True
        self._queue.close()
        await self._join()
        if self._thread is None:
            with contextlib.suppress(Exception):
                self._container.close()
        self._discard_tmp()

    async def _join(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wrap_future(self._done)

    async def __aenter__(self) -> VideoFileSink:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        """Abort on an exception; otherwise close if the caller has not."""
        if exc_type is not None:
            await self.abort()
        elif not self._closed and not self._aborting:
            await self.close()


def _halves_chroma(pix_fmt: str, width: int, height: int) -> bool:
    """Whether ``pix_fmt`` stores chroma at a lower resolution than the (odd) dimension ``width`` or
    ``height`` (which then cannot be split evenly)."""
    fmt = av.VideoFormat(pix_fmt, width, height)
    return any(c.is_chroma and ((width % 2 and c.width < width) or (height % 2 and c.height < height))
               for c in fmt.components)


def _encoder_opens(codec: str, pix_fmt: str, width: int, height: int) -> bool:
    """Whether ``codec`` accepts frames of this size and format (a throwaway context, opened)."""
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, pix_fmt
    ctx.time_base = Fraction(1, 25)
    try:
        ctx.open()
    except av.FFmpegError:
        return False
    return True


async def transcode_stats(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    settings: EncodeSettings = EncodeSettings(),
    *,
    rgb_roundtrip: bool = False,
    metadata: Mapping[str, str] = MappingProxyType({}),
    queue_size: int = 8,
) -> PipelineStats:
    """Decode ``input`` and encode it into ``output`` with nothing in between; the run's statistics.

    The benchmark's *transcode floor*: the same source, sink, settings and pipeline as a real run, so the
    difference to a swap is the processing. ``rgb_roundtrip=True`` marks every frame modified, so
    each one is converted back from RGB as a processed frame would be.
    """
    source = VideoFileSource(input, queue_size=queue_size)
    try:
        sink = VideoFileSink(output, source, settings=settings, queue_size=queue_size,
                             metadata={"facestream_mode": "transcode", **metadata})
    except BaseException:
        source.stop()
        raise

    def mark(frame: Frame) -> None:
        frame.modified = frame.modified or rgb_roundtrip

    return await run_pipeline(source, sink, on_frame=mark)


async def transcode(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    settings: EncodeSettings = EncodeSettings(),
    *,
    rgb_roundtrip: bool = False,
    metadata: Mapping[str, str] = MappingProxyType({}),
    queue_size: int = 8,
) -> SinkStats:
    """:func:`transcode_stats`, returning what the sink wrote."""
    stats = await transcode_stats(input, output, settings, rgb_roundtrip=rgb_roundtrip, metadata=metadata,
                                  queue_size=queue_size)
    return stats.sink


__all__ = ["OUTPUT_EXTENSIONS", "EncodeSettings", "SinkStats", "VideoFileSink", "transcode", "transcode_stats"]
