"""Helpers for tests: synthesize clips with PyAV, read them back, compare frames."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from stream.demo import render_target_frames


def write_face_clip(path: Path, *, width: int = 640, height: int = 360, frames: int = 24,
                    pts: list[int] | None = None, time_base: Fraction = Fraction(1, 30),
                    audio: bool = True, empty_head: int = 4, empty_tail: int = 4, crf: int = 14,
                    grey: bool = False) -> Path:
    """A clip of the astronaut's head moving over a textured background, with frames without a face at both
    ends; ``pts`` (in ``time_base``) gives a variable frame rate; an AAC tone when ``audio``; black and white
    (chroma planes all 128) when ``grey``."""
    pts = list(range(frames)) if pts is None else pts
    assert len(pts) == frames
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=30)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.time_base = time_base
        v.codec_context.time_base = time_base
        v.options = {"crf": str(crf), "preset": "veryfast"}
        a = None
        if audio:
            a = out.add_stream("aac", rate=48000)
            a.layout = "mono"
        images = render_target_frames(width, height, frames, empty_head=empty_head, empty_tail=empty_tail)
        for p, rgb in zip(pts, images, strict=True):
            if grey:
                rgb = np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf.pts, vf.time_base = p, time_base
            out.mux(v.encode(vf))
        out.mux(v.encode(None))
        if a is not None:
            duration = float((pts[-1] + 1) * time_base)
            n = int(duration * 48000)
            tone = (0.2 * np.sin(2 * np.pi * 330 * np.arange(n) / 48000)).astype(np.float32)
            for start in range(0, n, 1024):
                chunk = tone[start:start + 1024][None]
                af = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                af.sample_rate, af.pts, af.time_base = 48000, start, Fraction(1, 48000)
                out.mux(a.encode(af))
            out.mux(a.encode(None))
    return path


def read_frames(path: Path) -> tuple[list[np.ndarray], list[int | None]]:
    """All frames as RGB arrays and their pts, in presentation order."""
    images, pts = [], []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            images.append(f.to_ndarray(format="rgb24"))
            pts.append(f.pts)
    return images, pts


def packet_summary(path: Path, kind: str) -> list[tuple[int | None, int]]:
    """(pts, size) of every packet of the first stream of ``kind`` (``audio``/``subtitle``)."""
    with av.open(str(path)) as c:
        streams = [s for s in c.streams if s.type == kind]
        if not streams:
            return []
        return [(p.pts, p.size) for p in c.demux(streams[0]) if p.size]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


_XMP_UUID = bytes.fromhex("be7acfcb97a942e89c71999491e3afac")  # Adobe's, for XMP in ISO media files
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"


def top_level_boxes(path: Path) -> list[tuple[bytes, bytes]]:
    """``(type, payload)`` of each top-level box of an MP4/MOV file, read by the ISO BMFF layout."""
    import struct

    data = Path(path).read_bytes()
    boxes, i = [], 0
    while i < len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[i + 8:i + 16])[0], 16
        elif size == 0:
            size = len(data) - i
        assert size >= header and i + size <= len(data), f"box {kind!r} at {i} overruns the file"
        boxes.append((kind, data[i + header:i + size]))
        i += size
    return boxes


def xmp_description(path: Path) -> dict[str, str]:
    """The attributes (``{namespace}name``) of the XMP packet's ``rdf:Description`` in the top-level XMP
    ``uuid`` box of an MP4/MOV file; asserts there is exactly one such box."""
    from xml.etree import ElementTree

    packets = [p[16:] for kind, p in top_level_boxes(path) if kind == b"uuid" and p[:16] == _XMP_UUID]
    assert len(packets) == 1, f"{len(packets)} XMP boxes in {path}"
    root = ElementTree.fromstring(packets[0])
    description = root.find(f".//{_RDF}Description")
    assert description is not None
    out = dict(description.attrib)
    for child in description:  # dc:description's text, under its tag
        li = child.find(f".//{_RDF}li")
        if li is not None:
            out[child.tag] = li.text or ""
    return out


def sound_of(path: Path) -> tuple[np.ndarray, float, float]:
    """(mono samples at their rate, first sample's time, rate) of a file's first audio stream."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        frames = list(c.decode(stream))
        start = float(frames[0].pts * frames[0].time_base)
        samples = np.concatenate([f.to_ndarray().reshape(f.layout.nb_channels if f.format.is_planar else 1, -1)[0]
                                  for f in frames])
        return samples, start, float(stream.rate)


def video_span(path: Path) -> tuple[float, float]:
    """Times (seconds) of the first and the last frame of a file's first video stream."""
    with av.open(str(path)) as c:
        times = [float(f.pts * f.time_base) for f in c.decode(video=0)]
    return times[0], times[-1]


def peak_hz(samples: np.ndarray, rate: float) -> float:
    """The strongest frequency of ``samples`` (a tone's pitch)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))
