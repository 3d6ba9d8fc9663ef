"""Tiny real media files for the media tests, written with PyAV into a test's ``tmp_path``.

Every clip is deterministic (seeded), small (160x120 by default, tens of frames) and made of content
an encoder finds realistic: smooth gradients, a sliding texture, a moving block and a little sensor
noise (not pure noise, which no codec can keep at 38 dB).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.subtitles.subtitle import SubtitleSet

# Irregular frame gaps (in 1/30 s ticks): a variable frame rate clip.
VFR_TICKS = (0, 1, 3, 4, 8, 9, 10, 15, 16, 17, 20, 21, 22, 30, 31, 32, 33, 40, 41, 45)

_ASS_HEADER = (
    b"[Script Info]\nScriptType: v4.00+\nPlayResX: 384\nPlayResY: 288\n\n[V4+ Styles]\n"
    b"Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, "
    b"Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, "
    b"Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\n"
    b"Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0\n\n"
    b"[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
)
SRT = "1\n00:00:00,100 --> 00:00:00,300\nHello\n\n2\n00:00:00,400 --> 00:00:00,600\nWorld\n\n"


def textured_frame(i: int, width: int = 160, height: int = 120, seed: int = 0) -> np.ndarray:
    """Frame ``i`` of a moving, textured test scene, (H, W, 3) uint8 RGB."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 60 + 120 * x / width
    g = 50 + 140 * y / height
    b = 128 + 60 * np.sin((x + 3 * i) / 9.0) * np.cos((y - 2 * i) / 13.0)
    img = np.stack([r, g, b], axis=-1)
    x0, y0 = (10 + 4 * i) % (width - 40), (8 + 3 * i) % (height - 30)
    img[y0:y0 + 30, x0:x0 + 40] = (220, 200 - 2 * (i % 50), 40)
    rng = np.random.default_rng(seed * 1000 + i)
    img += rng.normal(0.0, 2.0, img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


@dataclass
class Clip:
    """A written clip and what went into it."""

    path: Path
    pts: list[int]
    time_base: Fraction
    images: list[np.ndarray] = field(repr=False)

    @property
    def times(self) -> list[Fraction]:
        return [p * self.time_base for p in self.pts]


def make_clip(
    path: Path,
    *,
    frames: int = 20,
    size: tuple[int, int] = (160, 120),
    ticks: Sequence[int] | None = None,
    rate: int = 30,
    audio: str | None = None,
    subtitles: str | None = None,
    rotation: int = 0,
    metadata: Mapping[str, str] | None = None,
    video_metadata: Mapping[str, str] | None = None,
    format: str | None = None,
    options: Mapping[str, str] | None = None,
    codec: str = "libx264",
    video_options: Mapping[str, str] | None = None,
    chapters: Sequence[tuple[float, float, str]] = (),
) -> Clip:
    """Write an H.264 clip (or ``codec``: ``libvpx-vp9`` stores odd sizes in 4:2:0); ``ticks`` (in
    1/``rate`` s) gives a variable frame rate.

    ``audio``: an encoder (``aac``, ``libopus``) for a mono 440 Hz tone as long as the video.
    ``subtitles``: ``"srt"`` (Matroska: two SubRip cues) or ``"mov_text"`` (MP4/MOV).
    """
    width, height = size
    ticks = list(ticks) if ticks is not None else list(range(frames))
    container = av.open(str(path), "w", format=format, options=dict(options or {}))
    container.metadata.update(metadata or {})
    if chapters:  # (start s, end s, title)
        container.set_chapters([{"id": i + 1, "start": round(a * 1000), "end": round(b * 1000),
                                 "time_base": Fraction(1, 1000), "metadata": {"title": title}}
                                for i, (a, b, title) in enumerate(chapters)])
    tb = Fraction(1, rate)
    quality = {"libx264": {"crf": "12", "preset": "ultrafast"},
               "libvpx-vp9": {"crf": "12", "b": "0", "deadline": "realtime", "cpu-used": "8"}}[codec]
    video = container.add_stream(codec, rate=rate, options={**quality, **(video_options or {})})
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.codec_context.time_base = tb
    video.time_base = tb
    video.metadata.update(video_metadata or {})
    if rotation:
        video.set_display_rotation(rotation)
    aud = None
    if audio is not None:
        aud = container.add_stream(audio, rate=48000)
        aud.layout = "mono"
        aud.metadata["language"] = "fra"
    srt_input = None
    if subtitles == "srt":
        srt_path = path.with_suffix(".srt")
        srt_path.write_text(SRT)
        srt_input = av.open(str(srt_path))
        sub = container.add_stream_from_template(srt_input.streams[0])
        sub.metadata["language"] = "eng"
        for packet in srt_input.demux():
            if packet.size:
                packet.stream = sub
                container.mux(packet)
    elif subtitles == "mov_text":
        sub = container.add_stream("mov_text")
        sub.codec_context.subtitle_header = _ASS_HEADER
        sub.codec_context.time_base = Fraction(1, 1000)
        sub.time_base = Fraction(1, 1000)
        for start, text in ((100, b"Hello"), (400, b"World")):
            packet = sub.codec_context.encode_subtitle(
                SubtitleSet.create(b"0,0,Default,,0,0,0,," + text, 0, 200, pts=start))
            packet.stream = sub
            packet.time_base = sub.time_base
            container.mux(packet)
    images = []
    for i, t in enumerate(ticks):
        img = textured_frame(i, width, height)
        images.append(img)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = t, tb
        container.mux(video.encode(frame))
    container.mux(video.encode(None))
    if aud is not None:
        _write_tone(container, aud, seconds=(ticks[-1] + 1) / rate)
    container.close()
    if srt_input is not None:
        srt_input.close()
    return Clip(path, ticks, tb, images)


def _write_tone(container: av.container.OutputContainer, stream: av.audio.AudioStream,
                seconds: float) -> None:
    sr = 48000
    size = stream.codec_context.frame_size or 960
    total = int(seconds * sr)
    for start in range(0, total, size):
        t = np.arange(start, start + size) / sr
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = sr, start, Fraction(1, sr)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def decoded_frames(path: Path) -> list[av.VideoFrame]:
    """All frames of the first video stream, decoded plainly with PyAV."""
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def stream_packets(path: Path, kind: str) -> list[tuple[int | None, int | None, int, bytes]]:
    """``(pts, duration, time in µs, payload)`` of every packet of the first ``kind`` stream."""
    with av.open(str(path)) as container:
        stream = next(s for s in container.streams if s.type == kind)
        return [(p.pts, p.duration, round(float(p.pts * p.time_base) * 1e6) if p.pts is not None else -1,
                 bytes(p)) for p in container.demux(stream) if p.size]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
