"""Still images out: a swapped photo written as PNG or JPEG, marked as synthetic like every output.

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
  ``JFIF`` header.

The pipeline's frames are 8-bit RGB: a 16-bit PNG comes out 8-bit and an alpha channel is not kept.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import cv2
import numpy as np

from stream.exceptions import OutputError
from stream.frames import Frame
from stream.reports import check_output_path
from stream.sinks import SinkStats, synthetic_marks, write_whole, xmp_packet

#: Image extensions an OUTPUT may have.
IMAGE_OUTPUT_EXTENSIONS = (".png", ".jpg", ".jpeg")

def is_image_output(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an image OUTPUT (by its extension)."""
    return Path(path).suffix.lower() in IMAGE_OUTPUT_EXTENSIONS


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_text(keyword: str, value: str) -> bytes:
    key = keyword.encode("latin-1", "replace")[:79]  # PNG keywords: 1-79 Latin-1 characters
    try:
        return _png_chunk(b"tEXt", key + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:  # iTXt: uncompressed, no language tag, UTF-8 text
        return _png_chunk(b"iTXt", key + b"\0\0\0\0\0" + value.encode("utf-8"))


def mark_png(data: bytes, tags: Mapping[str, str], xmp: bytes) -> bytes:
    """``data`` (a PNG file) with ``tags`` and ``xmp`` in text chunks right after its header chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    end_of_ihdr = 8 + 12 + struct.unpack(">I", data[8:12])[0]
    names = {"comment": "Comment", "encoder_app": "Software"}  # PNG's own keywords
    chunks = b"".join(_png_text(names.get(k, k), v) for k, v in tags.items())
    chunks += _png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + xmp)
    return data[:end_of_ihdr] + chunks + data[end_of_ihdr:]


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    if len(payload) + 2 > 0xFFFF:
        raise ValueError("JPEG segment too long")
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def mark_jpeg(data: bytes, tags: Mapping[str, str], xmp: bytes) -> bytes:
    """``data`` (a JPEG file) with a ``COM`` comment and an XMP ``APP1`` segment after its JFIF header."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file")
    at = 2
    if data[2:4] == b"\xff\xe0":  # JFIF's APP0 must stay first
        at = 4 + struct.unpack(">H", data[4:6])[0]
    comment = tags.get("comment", "Synthetic media").encode("utf-8")
    segments = _jpeg_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0" + xmp) + _jpeg_segment(0xFE, comment)
    return data[:at] + segments + data[at:]


class ImageFileSink:
    """Writes the one frame of a still INPUT to an image ``path`` (see the module docstring).

    Args:
        path: the output file, ``.png`` (lossless) or ``.jpg``/``.jpeg``.
        input_path: the INPUT, which ``path`` may not be.
        metadata: tags besides the synthetic marks, e.g. ``{"facestream_mode": "swap/weight-free"}``.
        learned: the frame went through learned networks (the Digital Source Type says so).
        jpeg_quality: 1-100.

    Raises :class:`OutputError` when ``path`` is the input, a directory, in a missing or unwritable
    directory, or has another extension, and from :meth:`write` when a second frame comes.
    """

    def __init__(self, path: str | os.PathLike[str], input_path: str | os.PathLike[str], *,
                 metadata: Mapping[str, str] = MappingProxyType({}), learned: bool = False,
                 jpeg_quality: int = 95) -> None:
        self.path = out = Path(path)
        check_output_path(out, "output", {"INPUT": Path(input_path)})
        if not is_image_output(out):
            raise OutputError(f"unknown image extension {out.suffix or '(none)'!r} in {out}; "
                              f"use one of: {', '.join(IMAGE_OUTPUT_EXTENSIONS)}")
        if not 1 <= jpeg_quality <= 100:
            raise OutputError(f"JPEG quality must be in 1..100, got {jpeg_quality}")
        self.tags = synthetic_marks(metadata)
        self.learned = learned
        self.jpeg_quality = jpeg_quality
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
        png = self.path.suffix.lower() == ".png"
        # JPEG in 4:4:4: halved chroma alone costs saturated colours ~1 dB, below what a video output keeps.
        params = ([cv2.IMWRITE_PNG_COMPRESSION, 3] if png else
                  [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality,
                   cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
        ok, buf = cv2.imencode(".png" if png else ".jpg", bgr, params)
        if not ok:
            raise OutputError(f"cannot encode {self.path.name}: OpenCV's encoder failed")
        data = (mark_png if png else mark_jpeg)(buf.tobytes(), self.tags, xmp)
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


__all__ = ["IMAGE_OUTPUT_EXTENSIONS", "ImageFileSink", "is_image_output", "mark_jpeg", "mark_png", "xmp_packet"]
