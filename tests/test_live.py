"""Live inputs/outputs without a network: classification, backoff, recordings, a real-time file run."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import logging
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from liveutil import face_frames, write_jpeg
from mediautil import peak_hz, read_frames, sound_of, video_span, xmp_description

from stream.exceptions import EndOfStream, InputError, InputNotFoundError, OutputError
from stream.frames import Frame
from stream.live import (
    CaptureSource,
    EncodedOutput,
    LiveOptions,
    ReconnectPolicy,
    input_kind,
    open_input,
    open_output,
    output_kind,
    pump,
    run_live,
)
from stream.tracks import FrameTrack


def test_kinds_of_inputs_and_outputs() -> None:
    assert input_kind("rtsp://cam.local:554/stream") == "rtsp"
    assert input_kind("/dev/video3") == "v4l2"
    assert input_kind("clip.mp4") == "file"
    assert input_kind("/dev/video") == "file"
    assert output_kind("rtsp://127.0.0.1:8554/out") == "rtsp"
    assert output_kind("/dev/video10") == "v4l2"
    assert output_kind("rec.mkv") == "file"


def test_backoff_grows_and_is_capped() -> None:
    policy = ReconnectPolicy(initial=0.1, factor=2.0, maximum=0.5)
    delays = [policy.delay(n) for n in range(8)]
    assert delays[:3] == pytest.approx([0.1, 0.2, 0.4])
    assert max(delays) == pytest.approx(0.5) and delays == sorted(delays)


def test_bad_inputs_fail_early(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a live capture"):
        CaptureSource(str(tmp_path / "clip.mp4"))
    with pytest.raises(InputNotFoundError, match=r"missing\.mp4"):
        open_input(str(tmp_path / "missing.mp4"))
    with pytest.raises(OutputError, match="does not exist"):
        open_output(str(tmp_path / "no" / "dir" / "out.mp4"))


async def test_an_input_that_never_answers_is_said_once_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    from liveutil import free_port

    url = f"rtsp://127.0.0.1:{free_port()}/cam"  # nothing listens: every open is refused
    source = CaptureSource(url, reconnect=ReconnectPolicy(initial=0.01, maximum=0.02))
    with caplog.at_level(logging.INFO, logger="stream.live"):
        recv = asyncio.ensure_future(source.recv())
        deadline = time.monotonic() + 10
        while source.stats.failures < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        source.stop()
        with pytest.raises(EndOfStream):
            await recv
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert source.stats.failures >= 3 and len(warnings) == 1, caplog.text
    assert "cannot open" in warnings[0].getMessage() and "Connection refused" in warnings[0].getMessage()


async def test_a_recording_may_not_replace_its_input_or_source(tmp_path: Path) -> None:
    clip = _write_clip(tmp_path / "cam.mp4", face_frames(160, 120, 3))
    face = write_jpeg(tmp_path / "face.jpg", face_frames(160, 120, 1)[0])
    before = clip.read_bytes(), face.read_bytes()
    with pytest.raises(OutputError, match="same file as INPUT"):
        await run_live(LiveOptions(source=face, input=str(clip), output=str(tmp_path / "." / "cam.mp4")))
    with pytest.raises(OutputError, match="same file as SOURCE"):
        await run_live(LiveOptions(source=face, input=str(clip), output=str(face)))
    assert (clip.read_bytes(), face.read_bytes()) == before


def test_live_report_path_is_checked_before_the_session(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    from matplotlib import cbook

    from stream.cli import main

    clip = _write_clip(tmp_path / "cam.mp4", face_frames(320, 240, 3))
    face = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    before = clip.read_bytes()
    # A report over the input, or in a missing directory: refused up front, not after the session.
    assert main(["live", "--source", str(face), str(clip), "--report", str(clip)]) == 1
    err = capsys.readouterr().err
    assert err == f"facestream: error: --report {clip} is the same file as INPUT; choose another name\n"
    assert main(["live", "--source", str(face), str(clip), "--report", str(tmp_path / "no" / "r.json")]) == 1
    assert "--report directory does not exist" in capsys.readouterr().err
    assert clip.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["cam.mp4"]
    # Where it can go, the report is written after the session.
    assert main(["live", "--source", str(face), str(clip), "--report", str(tmp_path / "r.json")]) == 0
    assert '"frames_in": 3' in (tmp_path / "r.json").read_text()


@pytest.mark.skipif(importlib.util.find_spec("pyvirtualcam") is not None, reason="pyvirtualcam is installed")
def test_virtual_camera_output_names_the_missing_extra() -> None:
    with pytest.raises(OutputError, match=r"pyvirtualcam.*facestream\[virtualcam\]"):
        open_output("/dev/video42")


async def test_recording_keeps_capture_clock_timestamps(tmp_path: Path) -> None:
    out = EncodedOutput(str(tmp_path / "rec.mkv"), fps=30, metadata={"synthetic": "false", "title": "cam"})
    t0 = time.monotonic()
    # 0, 1, 2 then a gap (frames dropped upstream) and 6, 7: the recording shows the gap in time.
    for i, slot in enumerate([0, 1, 2, 6, 7]):
        image = np.full((64, 96, 3), 40 * i, np.uint8)
        frame = Frame(index=i, image=image, pts=slot * 3000, time_base=Fraction(1, 90000), capture_time=t0)
        await out.write(frame)
    report = await out.close()
    assert report["frames"] == 5
    images, pts = read_frames(tmp_path / "rec.mkv")
    with av.open(str(tmp_path / "rec.mkv")) as c:
        tb = c.streams.video[0].time_base
        meta = {k.lower(): v for k, v in c.metadata.items()}
    # Marked as synthetic whatever the caller passed; the caller's other tags are kept.
    assert meta["synthetic"] == "true" and meta["title"] == "cam" and "synthetic media" in meta["comment"].lower()
    seconds = [round(float(p * tb), 3) for p in pts]
    assert seconds == pytest.approx([0.0, 1 / 30, 2 / 30, 6 / 30, 7 / 30], abs=0.002)
    assert [int(im.mean()) for im in images] == pytest.approx([0, 40, 80, 120, 160], abs=3)


class _Endless(FrameTrack):
    def __init__(self) -> None:
        self.n = 0

    async def recv(self) -> Frame:
        await asyncio.sleep(0.01)
        self.n += 1
        return Frame(index=self.n, image=np.zeros((8, 8, 3), np.uint8))


async def test_pump_stops_when_asked_and_at_the_end() -> None:
    stop = asyncio.Event()
    seen: list[int] = []

    def on_frame(frame: Frame) -> None:
        seen.append(frame.index)
        if len(seen) == 5:
            stop.set()

    assert await pump(_Endless(), on_frame, stop) == 5
    assert seen == [1, 2, 3, 4, 5]

    class _Three(_Endless):
        async def recv(self) -> Frame:
            if self.n == 3:
                raise EndOfStream("done")
            return await super().recv()

    assert await pump(_Three(), lambda f: None) == 3


def _write_clip(path: Path, frames: list[np.ndarray], fps: int = 15) -> Path:
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.options = {"crf": "16", "preset": "ultrafast"}
        for i, rgb in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            out.mux(s.encode(vf))
        out.mux(s.encode(None))
    return path


async def test_live_run_on_a_real_time_file_records_swapped_frames(tmp_path: Path) -> None:
    from matplotlib import cbook

    frames = face_frames(320, 240, 20)
    clip = _write_clip(tmp_path / "cam.mp4", frames)
    source = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    t0 = time.monotonic()
    report = await run_live(LiveOptions(source=source, input=str(clip), output=str(tmp_path / "rec.mp4")))
    wall = time.monotonic() - t0
    assert report["input_kind"] == "file" and report["frames_in"] == 20
    assert report["frames_out"] + report["dropped"] == 20 and report["frames_out"] >= 5
    assert report["latency_ms"]["p50"] is not None
    assert wall >= 19 / 15 * 0.9  # paced like a camera, not decoded as fast as possible
    images, pts = read_frames(tmp_path / "rec.mp4")
    assert len(images) == report["frames_out"] == report["output"]["frames"]
    with av.open(str(tmp_path / "rec.mp4")) as c:
        assert c.metadata.get("synthetic") == "true" and c.metadata.get("facestream_mode") == "live/weight-free"
    xmp = xmp_description(tmp_path / "rec.mp4")  # the same XMP marks as a swap's MP4
    assert xmp["{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}DigitalSourceType"].endswith("/compositeSynthetic")
    assert all(b > a for a, b in itertools.pairwise(pts))
    # Face pixels changed, the textured background did not.
    from stream.tracking import detect_faces

    last_in = frames[-1]
    x0, y0, x1, y1 = (int(v) for v in detect_faces(last_in, max_faces=1)[0].bbox)
    out = images[-1].astype(np.float32)
    face_change = np.abs(out[y0:y1, x0:x1] - last_in[y0:y1, x0:x1]).mean()
    corner_change = np.abs(out[:40, -60:] - last_in[:40, -60:]).mean()
    assert face_change > 2 * corner_change + 4, (face_change, corner_change)


def test_face_jpeg_helper_round_trips(tmp_path: Path) -> None:
    from stream.live import load_face_image

    rgb = face_frames(160, 120, 1)[0]
    image = load_face_image(write_jpeg(tmp_path / "f.jpg", rgb))
    assert image.shape == rgb.shape and np.abs(image.astype(int) - rgb).mean() < 6


async def test_a_live_recording_of_a_file_keeps_itssound_of(tmp_path: Path) -> None:
    from matplotlib import cbook
    from mediautil import write_face_clip

    clip = write_face_clip(tmp_path / "talk.mp4", width=320, height=240, frames=45)  # a 330 Hz tone, 1.5 s
    source = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    report = await run_live(LiveOptions(source=source, input=str(clip), output=str(tmp_path / "rec.mp4")))
    assert report["output"]["audio"] is True
    samples, start, rate = sound_of(tmp_path / "rec.mp4")
    first, last = video_span(tmp_path / "rec.mp4")
    end = start + len(samples) / rate
    # The sound spans the picture (to within an AAC frame or two), on the file's own clock.
    assert abs(start - first) < 0.05 and abs(end - (last + 1 / 30)) < 0.1, (start, end, first, last)
    assert abs(peak_hz(samples[len(samples) // 4:3 * len(samples) // 4], rate) - 330) < 5
    assert 0.1 < float(np.sqrt(np.mean(samples ** 2))) < 0.2  # the tone's level (0.2 peak: rms 0.14)

    quiet = _write_clip(tmp_path / "quiet.mp4", face_frames(320, 240, 6))  # no audio stream
    report = await run_live(LiveOptions(source=source, input=str(quiet), output=str(tmp_path / "q.mp4")))
    assert report["output"]["audio"] is False
    with av.open(str(tmp_path / "q.mp4")) as c:
        assert not c.streams.audio


def test_live_sound_fills_an_outage_with_silence_and_stays_on_the_video_clock(tmp_path: Path) -> None:
    from stream.live import _AudioEncoder

    rate = 8000  # a camera's G.711 rate: resampled to 48 kHz for AAC
    chunk = 160  # 20 ms, as RTP sends it
    tone = lambda n0: (0.3 * np.sin(2 * np.pi * 440 * (n0 + np.arange(chunk)) / rate)).astype(np.float32)  # noqa: E731

    def frame(n0: int) -> av.AudioFrame:
        f = av.AudioFrame.from_ndarray(tone(n0)[None], format="fltp", layout="mono")
        f.sample_rate = rate
        return f

    path = tmp_path / "sound.mp4"
    with av.open(str(path), "w") as out:
        sound = _AudioEncoder(out, 1)
        # 1 s of sound from 0.5 s, the camera away for 2 s, 1 s more (its clock a little off, as after a
        # reconnect), and half a second from before what was written (a clock gone back): skipped.
        for n0 in range(0, rate, chunk):
            out.mux(sound.feed(frame(n0), 0.5 + n0 / rate))
        for n0 in range(0, rate, chunk):
            out.mux(sound.feed(frame(n0), 3.53 + n0 / rate))
        for n0 in range(0, rate // 2, chunk):
            out.mux(sound.feed(frame(n0), 1.0 + n0 / rate))
        out.mux(sound.flush())
    samples, start, out_rate = sound_of(path)
    assert out_rate == 48000 and abs(start - 0.5) < 0.03  # AAC primes with 1024 samples (21 ms)
    level = lambda t0, t1: float(np.sqrt(np.mean(samples[int((t0 - start) * 48000):int((t1 - start) * 48000)] ** 2)))  # noqa: E731
    assert level(0.6, 1.4) > 0.15 and level(3.6, 4.4) > 0.15, "the tone on both sides"
    assert level(1.6, 3.4) < 0.01, "silence while the camera was away"
    # The second second starts where its clock says (3.53 s), not right after the first (1.5 s).
    loud = np.flatnonzero(np.abs(samples) > 0.05) / 48000 + start
    resumed = loud[loud > 2.0][0]
    assert abs(resumed - 3.53) < 0.03, resumed
    assert abs(start + len(samples) / 48000 - 4.53) < 0.05, "ends where its clock says: nothing appended"


def test_live_sound_goes_on_when_a_camera_comes_back_with_other_audio_settings(tmp_path: Path) -> None:
    from stream.live import _AudioEncoder

    def tone(rate: int, layout: str, t0: float) -> av.AudioFrame:
        n = rate // 50  # 20 ms
        t = t0 + np.arange(n) / rate
        wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        f = av.AudioFrame.from_ndarray(np.tile(wave, (2 if layout == "stereo" else 1, 1)), format="fltp", layout=layout)
        f.sample_rate = rate
        return f

    path = tmp_path / "sound.mp4"
    with av.open(str(path), "w") as out:
        sound = _AudioEncoder(out, 1)
        # 1 s of 8 kHz mono, then the camera reconfigured: 1 s of 16 kHz stereo straight after.
        for k in range(50):
            out.mux(sound.feed(tone(8000, "mono", k / 50), k / 50))
        for k in range(50, 100):
            out.mux(sound.feed(tone(16000, "stereo", k / 50), k / 50))
        out.mux(sound.flush())
    samples, start, rate = sound_of(path)
    assert abs(start + len(samples) / rate - 2.0) < 0.05, "both seconds, one after the other"
    second = samples[int((1.2 - start) * rate):int((1.8 - start) * rate)]
    assert float(np.sqrt(np.mean(second ** 2))) > 0.15 and abs(peak_hz(second, rate) - 440) < 5
