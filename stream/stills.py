"""Still images out: a swapped photo written as PNG, JPEG or WebP, marked as synthetic like every output.

:class:`ImageFileSink` takes the place of :class:`~stream.sinks.VideoFileSink` when OUTPUT is an image,
so a photo goes through the same source, tracking and stages as a video's frame. It writes the one
frame upright (a JPEG's EXIF orientation, which FFmpeg reads as a display rotation, is applied to the
pixels, and no orientation tag is written), to a hidden temporary file next to the output that
``close`` renames into place and ``abort`` removes.

**Marks.** The tags of :func:`~stream.sinks.synthetic_marks` go into the file, and an XMP packet gives
IPTC's Digital Source Type, the field photo tools and C2PA readers look at for synthetic media
(``compositeSynthetic`` for the weight-free chain, ``compositeWithTrainedAlgorithmicMedia`` for the
learned networks):

- PNG: one ``tEXt`` chunk per tag (``iTXt`` when a value is not Latin-1), ``Comment`` and ``Software``
  under PNG's own keywords, and the XMP packet in an ``iTXt`` chunk ``XML:com.adobe.xmp``;
- JPEG: a ``COM`` segment with the comment and the XMP packet in an ``APP1`` segment, both after the
  ``JFIF`` header;
- WebP (lossy, like the JPEG): WebP has no text chunks, so the XMP packet, in an ``XMP`` chunk of WebP's
  extended format, carries the comment and the creator tool along with the source type.

**What the photo carried.** The INPUT's colour profile (ICC) and EXIF (camera, date, exposure...) are copied
into the output (:func:`photo_metadata`): without its profile a wide-gamut phone photo (Display P3) would be
shown as sRGB, its colours dulled. They are read from JPEG, PNG and WebP photos; of a TIFF, the profile only
(a TIFF keeps its EXIF among its own image tags, not as a block to copy). The EXIF orientation is set to 1, as
the pixels are written upright. A malformed EXIF block is left out rather than copied.

The pipeline's frames are 8-bit RGB: a 16-bit PNG comes out 8-bit and an alpha channel is not kept.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import cv2
import numpy as np

from stream.exceptions import OutputError
from stream.frames import Frame
from stream.reports import check_output_path
from stream.sinks import SinkStats, synthetic_marks, write_whole, xmp_packet

#: Image extensions an OUTPUT may have.
IMAGE_OUTPUT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def is_image_output(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an image OUTPUT (by its extension)."""
    return Path(path).suffix.lower() in IMAGE_OUTPUT_EXTENSIONS


@dataclass(frozen=True)
class PhotoMetadata:
    """What a photo carries besides its pixels that an output keeps (see the module docstring)."""

    icc: bytes | None = None
    """The ICC colour profile."""
    exif: bytes | None = None
    """The EXIF block (a TIFF structure, without JPEG's ``Exif\\0\\0`` prefix), orientation set to 1."""


_ICC_TAG = b"ICC_PROFILE\0"
_EXIF_TAG = b"Exif\0\0"
_ICC_CHUNK = 0xFFFF - 2 - len(_ICC_TAG) - 2  # profile bytes per APP2 segment


def jpeg_segments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(marker, payload)`` of a JPEG's segments before its first scan (none when ``data`` is not a JPEG); a
    payload cut short by the end of ``data`` comes shorter than its length says."""
    if data[:2] != b"\xff\xd8":
        return
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD7:  # fill byte; markers with no length
            at += 1 if marker == 0xFF else 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image: no more metadata
            return
        end = at + 2 + struct.unpack(">H", data[at + 2:at + 4])[0]
        yield marker, data[at + 4:end]
        at = end


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """``(type, data)`` of a PNG's chunks up to its image data."""
    at = 8
    while at + 8 <= len(data):
        n, kind = struct.unpack(">I", data[at:at + 4])[0], data[at + 4:at + 8]
        if kind in (b"IDAT", b"IEND"):
            return
        yield kind, data[at + 8:at + 8 + n]
        at += 12 + n


def _riff_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """``(fourcc, payload)`` of a WebP file's chunks, within the length its RIFF header gives."""
    end = min(len(data), 8 + struct.unpack("<I", data[4:8])[0])
    at = 12
    while at + 8 <= end:
        kind, n = data[at:at + 4], struct.unpack("<I", data[at + 4:at + 8])[0]
        yield kind, data[at + 8:at + 8 + n]
        at += 8 + n + (n & 1)  # a chunk's payload is padded to an even length


def _riff_chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) & 1)


def _tiff_icc(data: bytes) -> bytes | None:
    """The ICC profile of a TIFF file (tag 34675 of its first image); None when it has none."""
    e = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(e + "I", data[4:8])[0]
    for k in range(struct.unpack(e + "H", data[ifd:ifd + 2])[0]):
        at = ifd + 2 + 12 * k
        tag, kind, count = struct.unpack(e + "HHI", data[at:at + 8])
        if tag == 0x8773 and kind in (1, 7):  # InterColorProfile: BYTE or UNDEFINED
            start = at + 8 if count <= 4 else struct.unpack(e + "I", data[at + 8:at + 12])[0]
            profile = data[start:start + count]
            return profile if len(profile) == count else None
    return None


def _upright_exif(tiff: bytes) -> bytes | None:
    """``tiff`` (an EXIF block) with its orientation tag, if any, set to 1 (upright); None when malformed."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    e = "<" if tiff[:2] == b"II" else ">"
    ifd = struct.unpack(e + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        return None
    out = bytearray(tiff)
    for k in range(struct.unpack(e + "H", tiff[ifd:ifd + 2])[0]):
        at = ifd + 2 + 12 * k
        if at + 12 > len(tiff):
            return None
        tag, kind = struct.unpack(e + "HH", tiff[at:at + 4])
        if tag == 0x0112 and kind == 3:  # Orientation, a SHORT held in the entry itself
            out[at + 8:at + 10] = struct.pack(e + "H", 1)
    return bytes(out)


def photo_metadata(path: str | os.PathLike[str]) -> PhotoMetadata:
    """The ICC profile and EXIF of a JPEG, PNG or WebP file, and the profile of a TIFF; empty for other files,
    or what cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return PhotoMetadata()
    icc: bytes | None = None
    exif: bytes | None = None
    try:
        if data[:2] == b"\xff\xd8":
            parts: dict[int, bytes] = {}
            for marker, payload in jpeg_segments(data):
                if marker == 0xE1 and payload.startswith(_EXIF_TAG) and exif is None:
                    exif = payload[len(_EXIF_TAG):]
                elif marker == 0xE2 and payload.startswith(_ICC_TAG) and len(payload) > len(_ICC_TAG) + 2:
                    parts[payload[len(_ICC_TAG)]] = payload[len(_ICC_TAG) + 2:]
            icc = b"".join(parts[k] for k in sorted(parts)) or None
        elif data[:8] == b"\x89PNG\r\n\x1a\n":
            for kind, payload in _png_chunks(data):
                if kind == b"iCCP" and b"\0" in payload[:80]:
                    icc = zlib.decompress(payload[payload.index(b"\0") + 2:])
                elif kind == b"eXIf":
                    exif = payload
        elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            for kind, payload in _riff_chunks(data):
                if kind == b"ICCP":
                    icc = payload
                elif kind == b"EXIF":
                    # The chunk holds the TIFF structure; some writers keep JPEG's prefix before it.
                    exif = payload.removeprefix(_EXIF_TAG)
        elif data[:4] in (b"II*\0", b"MM\0*"):
            icc = _tiff_icc(data)
    except (struct.error, zlib.error, IndexError):
        return PhotoMetadata()
    return PhotoMetadata(icc=icc, exif=_upright_exif(exif) if exif else None)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_text(keyword: str, value: str) -> bytes:
    key = keyword.encode("latin-1", "replace")[:79]  # PNG keywords: 1-79 Latin-1 characters
    try:
        return _png_chunk(b"tEXt", key + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:  # iTXt: uncompressed, no language tag, UTF-8 text
        return _png_chunk(b"iTXt", key + b"\0\0\0\0\0" + value.encode("utf-8"))


def mark_png(data: bytes, tags: Mapping[str, str], xmp: bytes, carried: PhotoMetadata = PhotoMetadata()) -> bytes:
    """``data`` (a PNG file) with ``tags`` and ``xmp`` in text chunks right after its header chunk, and the
    ``carried`` colour profile and EXIF of the photo it came from."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    end_of_ihdr = 8 + 12 + struct.unpack(">I", data[8:12])[0]
    names = {"comment": "Comment", "encoder_app": "Software"}  # PNG's own keywords
    chunks = b"".join(_png_text(names.get(k, k), v) for k, v in tags.items())
    chunks += _png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + xmp)
    if carried.icc:
        chunks += _png_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(carried.icc))
    if carried.exif:
        chunks += _png_chunk(b"eXIf", carried.exif)
    return data[:end_of_ihdr] + chunks + data[end_of_ihdr:]


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    if len(payload) + 2 > 0xFFFF:
        raise ValueError("JPEG segment too long")
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def mark_jpeg(data: bytes, tags: Mapping[str, str], xmp: bytes, carried: PhotoMetadata = PhotoMetadata()) -> bytes:
    """``data`` (a JPEG file) with a ``COM`` comment and an XMP ``APP1`` segment after its JFIF header, and the
    ``carried`` EXIF (``APP1``) and colour profile (``APP2``, split as ICC specifies) of the photo it came from."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file")
    at = 2
    if data[2:4] == b"\xff\xe0":  # JFIF's APP0 must stay first
        at = 4 + struct.unpack(">H", data[4:6])[0]
    segments = b""
    if carried.exif and len(_EXIF_TAG) + len(carried.exif) + 2 <= 0xFFFF:  # EXIF has one segment at most
        segments += _jpeg_segment(0xE1, _EXIF_TAG + carried.exif)
    comment = tags.get("comment", "Synthetic media").encode("utf-8")
    segments += _jpeg_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0" + xmp) + _jpeg_segment(0xFE, comment)
    if carried.icc:
        parts = [carried.icc[i:i + _ICC_CHUNK] for i in range(0, len(carried.icc), _ICC_CHUNK)]
        if len(parts) <= 255:
            segments += b"".join(_jpeg_segment(0xE2, _ICC_TAG + bytes((n, len(parts))) + part)
                                 for n, part in enumerate(parts, 1))
    return data[:at] + segments + data[at:]


def _webp_size(kind: bytes, bitstream: bytes) -> tuple[int, int]:
    """Width and height of a WebP image from its ``VP8 `` or ``VP8L`` bitstream's header."""
    if kind == b"VP8 " and bitstream[3:6] == b"\x9d\x01\x2a":  # a key frame's start code, then 14-bit sizes
        w, h = struct.unpack("<HH", bitstream[6:10])
        return w & 0x3FFF, h & 0x3FFF
    if kind == b"VP8L" and bitstream[:1] == b"\x2f":  # signature, then 14 bits each of width - 1, height - 1
        bits = struct.unpack("<I", bitstream[1:5])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise ValueError("not a WebP image header")


def webp_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of a WebP file from its headers (its canvas, in the extended format); ValueError
    when ``data`` is not a WebP file or its first chunk is cut short."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP file")
    for kind, payload in _riff_chunks(data):
        if kind == b"VP8X" and len(payload) >= 10:
            return int.from_bytes(payload[4:7], "little") + 1, int.from_bytes(payload[7:10], "little") + 1
        return _webp_size(kind, payload)
    raise ValueError("WebP file without an image chunk")


def mark_webp(data: bytes, tags: Mapping[str, str], xmp: bytes, carried: PhotoMetadata = PhotoMetadata()) -> bytes:
    """``data`` (a WebP file in the simple format OpenCV writes: one ``VP8 `` or ``VP8L`` chunk) rewritten in
    WebP's extended format with the ``carried`` colour profile (``ICCP``) and EXIF (``EXIF``) and ``xmp``
    (``XMP ``). WebP has no text chunks: the marks of ``tags`` reach the file through ``xmp``, which holds
    the comment and the creator tool; ``tags`` is taken for the signature :func:`mark_png` and
    :func:`mark_jpeg` share."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP file")
    chunks = list(_riff_chunks(data))
    if len(chunks) != 1 or chunks[0][0] not in (b"VP8 ", b"VP8L"):
        raise ValueError("not a simple-format WebP file (one VP8 or VP8L chunk)")
    kind, bitstream = chunks[0]
    w, h = _webp_size(kind, bitstream)
    flags = 0x04 | (0x20 if carried.icc else 0) | (0x08 if carried.exif else 0)  # XMP, ICC, EXIF
    header = struct.pack("<B3x", flags) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    # The order the container specification sets: VP8X, ICCP, the image, EXIF, XMP.
    body = b"WEBP" + _riff_chunk(b"VP8X", header)
    if carried.icc:
        body += _riff_chunk(b"ICCP", carried.icc)
    body += _riff_chunk(kind, bitstream)
    if carried.exif:
        body += _riff_chunk(b"EXIF", carried.exif)
    body += _riff_chunk(b"XMP ", xmp)
    return b"RIFF" + struct.pack("<I", len(body)) + body


class ImageFileSink:
    """Writes the one frame of a still INPUT to an image ``path`` (see the module docstring).

    Args:
        path: the output file, ``.png`` (lossless), ``.jpg``/``.jpeg`` or ``.webp``.
        input_path: the INPUT, which ``path`` may not be.
        metadata: tags besides the synthetic marks, e.g. ``{"facestream_mode": "swap/weight-free"}``.
        learned: the frame went through learned networks (the Digital Source Type says so).
        quality: of a JPEG or WebP, 1-100.

    Raises :class:`OutputError` when ``path`` is the input, a directory, in a missing or unwritable
    directory, or has another extension, and from :meth:`write` when a second frame comes.
    """

    def __init__(self, path: str | os.PathLike[str], input_path: str | os.PathLike[str], *,
                 metadata: Mapping[str, str] = MappingProxyType({}), learned: bool = False,
                 quality: int = 95) -> None:
        self.path = out = Path(path)
        check_output_path(out, "output", {"INPUT": Path(input_path)})
        if not is_image_output(out):
            raise OutputError(f"unknown image extension {out.suffix or '(none)'!r} in {out}; "
                              f"use one of: {', '.join(IMAGE_OUTPUT_EXTENSIONS)}")
        if not 1 <= quality <= 100:
            raise OutputError(f"image quality must be in 1..100, got {quality}")
        self.tags = synthetic_marks(metadata)
        self.input_path = Path(input_path)
        self.learned = learned
        self.quality = quality
        self._data: bytes | None = None
        self._encode_seconds = 0.0
        self._t_first: float | None = None
        self._done = False

    async def write(self, frame: Frame) -> None:
        """Encode ``frame`` (off the event loop); a second frame is an :class:`OutputError`."""
        if self._done:
            raise OutputError(f"write() to {self.path} after close() or abort()")
        if self._data is not None:
            raise OutputError(f"INPUT has more than one frame, and an image OUTPUT ({self.path.name}) holds "
                              "one; write a video instead")
        self._t_first = time.perf_counter()
        self._data = await asyncio.to_thread(self._encode, frame)

    def _encode(self, frame: Frame) -> bytes:
        t0 = time.perf_counter()
        upright = np.rot90(frame.image, (frame.rotation % 360) // 90)
        bgr = cv2.cvtColor(np.ascontiguousarray(upright), cv2.COLOR_RGB2BGR)
        xmp = xmp_packet(self.tags, learned=self.learned)
        ext = {".jpeg": ".jpg"}.get(self.path.suffix.lower(), self.path.suffix.lower())
        params, mark = {
            ".png": ([cv2.IMWRITE_PNG_COMPRESSION, 3], mark_png),
            # JPEG in 4:4:4: halved chroma alone costs saturated colours ~1 dB, below what a video output keeps.
            ".jpg": ([cv2.IMWRITE_JPEG_QUALITY, self.quality,
                      cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444], mark_jpeg),
            ".webp": ([cv2.IMWRITE_WEBP_QUALITY, self.quality], mark_webp),  # lossy WebP is 4:2:0 always
        }[ext]
        ok, buf = cv2.imencode(ext, bgr, params)
        if not ok:
            raise OutputError(f"cannot encode {self.path.name}: OpenCV's encoder failed")
        # Read here, off the event loop: the whole INPUT file is read again.
        carried = photo_metadata(self.input_path)
        data = mark(buf.tobytes(), self.tags, xmp, carried)
        self._encode_seconds += time.perf_counter() - t0
        return data

    async def close(self) -> SinkStats:
        """Write the image next to ``path`` and rename it into place."""
        if self._done:
            raise OutputError(f"close() of {self.path} after close() or abort()")
        self._done = True
        if self._data is None:
            raise OutputError(f"no frames were written to {self.path}; nothing saved")
        # On the event loop, not a thread: a run interrupted here must not see the file appear after it.
        write_whole(self.path, self._data)
        assert self._t_first is not None
        return SinkStats(path=self.path, frames=1, bytes=len(self._data), encode_seconds=self._encode_seconds,
                         copied_packets=0, wall_seconds=time.perf_counter() - self._t_first)

    async def abort(self) -> None:
        """Drop the frame; ``path`` is left as it was. Idempotent."""
        self._done = True
        self._data = None


__all__ = ["IMAGE_OUTPUT_EXTENSIONS", "ImageFileSink", "PhotoMetadata", "is_image_output", "jpeg_segments",
           "mark_jpeg", "mark_png", "mark_webp", "photo_metadata", "webp_size", "xmp_packet"]
