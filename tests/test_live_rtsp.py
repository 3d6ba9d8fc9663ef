"""Live input from a real RTSP server (GStreamer's gst-rtsp-server), restarted mid-stream."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from liveutil import RtspServer, face_frames, free_port, rtsp_server_missing, write_jpeg
from mediautil import peak_hz, sound_of, video_span

from stream.live import CaptureSource

REPO = Path(__file__).resolve().parents[1]
_missing = rtsp_server_missing()
pytestmark = [pytest.mark.rtsp, pytest.mark.skipif(_missing is not None, reason=_missing or "")]


@pytest.fixture
def face_jpeg(tmp_path: Path) -> Path:
    return write_jpeg(tmp_path / "camera.jpg", face_frames(320, 240, 1)[0])


async def test_capture_resumes_after_the_server_restarts(face_jpeg: Path) -> None:
    server = RtspServer(face_jpeg, free_port())
    server.start()
    source = CaptureSource(server.url)
    try:
        before = [await source.recv() for _ in range(5)]
        assert before[0].image.shape == (240, 320, 3)
        assert source.stats.connected and source.stats.reconnects == 0
        server.stop()
        # Whatever was decoded before the hang-up is still delivered, then nothing until it is back.
        time.sleep(1.0)
        server.start()
        t_back = time.monotonic()
        after = await source.recv()
        while after.capture_time < t_back:
            after = await source.recv()
        more = [await source.recv() for _ in range(3)]
    finally:
        await source.aclose()
        server.stop()
    stats = source.stats
    assert stats.reconnects == 1 and stats.failures >= 1
    assert stats.outage_seconds and stats.outage_seconds[0] >= 1.0
    frames = [*before, after, *more]
    assert all(b.pts > a.pts and b.capture_time > a.capture_time for a, b in itertools.pairwise(frames))
    assert np.abs(after.image.astype(int) - before[-1].image).mean() < 8  # the same camera picture
    print(f"RTSP back {after.capture_time - t_back:.2f} s after the server listened again")


def _run_live_cli(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "stream", "live", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_live_command_survives_a_camera_restart(tmp_path: Path, face_jpeg: Path) -> None:
    from matplotlib import cbook

    hopper = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    server = RtspServer(face_jpeg, free_port())
    server.start()
    report_path = tmp_path / "report.json"
    proc = _run_live_cli(["--source", str(hopper), server.url, "-o", str(tmp_path / "rec.mkv"),
                          "--duration", "9", "--report", str(report_path)], tmp_path)
    try:
        time.sleep(4.5)  # model loading, connection, a few seconds of frames
        server.stop()
        time.sleep(1.0)
        server.start()
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    assert proc.returncode == 0, err
    report = json.loads(report_path.read_text())
    assert report["reconnects"] >= 1 and report["failures"] >= 1, report
    assert report["frames_out"] > 0 and report["output"]["frames"] == report["frames_out"]
    with av.open(str(tmp_path / "rec.mkv")) as c:
        stream = c.streams.video[0]
        times = [float(f.pts * stream.time_base) for f in c.decode(stream)]
    assert len(times) == report["frames_out"]
    assert all(b > a for a, b in itertools.pairwise(times))
    assert report["output"]["audio"] is False, "a camera without a microphone: no (empty) audio track"
    with av.open(str(tmp_path / "rec.mkv")) as c:
        assert not c.streams.audio
    gaps = np.diff(times)
    # One hole where the camera was away, frames on both sides of it.
    hole = int(np.argmax(gaps))
    assert gaps[hole] >= 1.0 and hole >= 1 and len(times) - hole - 1 >= 5, (times, report)


def _live_from(server: RtspServer, output: str, seconds: int, tmp_path: Path) -> dict:
    """Run ``facestream live`` from the started ``server`` to ``output`` for ``seconds``, then stop the server;
    the run's report (it must have succeeded)."""
    from matplotlib import cbook

    hopper = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    try:
        proc = _run_live_cli(["--source", str(hopper), server.url, "-o", output, "--duration", str(seconds),
                              "--report", str(tmp_path / "r.json")], tmp_path)
        _out, err = proc.communicate(timeout=60)
    finally:
        server.stop()
    assert proc.returncode == 0, err
    return json.loads((tmp_path / "r.json").read_text())


def test_live_command_pushes_to_an_rtsp_server(tmp_path: Path, face_jpeg: Path) -> None:
    server = RtspServer(face_jpeg, free_port())
    server.record_dir = tmp_path
    server.start()
    report = _live_from(server, server.url.replace("/face", "/record"), 4, tmp_path)
    with av.open(str(tmp_path / "record.mkv")) as c:
        received = sum(1 for _ in c.decode(video=0))
    assert report["output"]["frames"] > 0 and received >= report["output"]["frames"] - 2, (received, report)


@pytest.mark.parametrize("sound", [False, True], ids=["picture", "with-sound"])
async def test_rtsp_push_resumes_after_the_server_restarts(tmp_path: Path, face_jpeg: Path, sound: bool) -> None:
    from stream.frames import Frame
    from stream.live import EncodedOutput, LiveAudio, ReconnectPolicy

    picture = face_frames(320, 240, 1)[0]
    server = RtspServer(face_jpeg, free_port())
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    server.record_dir = first
    server.start()
    push = server.url.replace("/face", "/record-av" if sound else "/record")
    audio = LiveAudio(1, present=True) if sound else None
    out = EncodedOutput(push, fps=30, kind="rtsp", reconnect=ReconnectPolicy(maximum=0.2, read_timeout=1.0),
                        audio=audio)
    t0 = time.monotonic()
    index = 0
    heard = 0  # samples of the tone put so far (48 kHz, from t0)

    async def send(seconds: float) -> None:
        nonlocal index, heard
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            now = time.monotonic()
            if audio is not None:  # the sound up to a frame ahead, as a capture thread puts it
                upto = round((now - t0 + 1 / 30) * 48000)
                tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(heard, upto) / 48000)
                chunk = av.AudioFrame.from_ndarray(tone[None].astype(np.float32), format="fltp", layout="mono")
                chunk.sample_rate = 48000
                audio.put(chunk, heard / 48000)
                heard = upto
            await out.write(Frame(index=index, image=picture, pts=round((now - t0) * 90000),
                                  time_base=Fraction(1, 90000), capture_time=now))
            index += 1
            await asyncio.sleep(1 / 30)

    try:
        await send(1.5)
        server.stop()
        await send(1.5)  # the server is gone: writes fail, then are dropped between attempts
        server.record_dir = second
        server.start()
        await send(2.5)
        report = await out.close()
        await asyncio.sleep(0.5)  # the server finishes its file
    finally:
        server.stop()
    assert report["reconnects"] >= 1 and report["failures"] >= 1 and report["dropped"] >= 1, report
    assert report["frames"] + report["dropped"] == index, report
    # (The first session's file is cut short by the server's death; the second is the push resumed.)
    with av.open(str(second / ("record-av.mkv" if sound else "record.mkv"))) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    # It starts with a keyframe, so all of it decodes: about 2.5 s at 30 fps, less the reconnection.
    assert len(decoded) >= 30, (len(decoded), report)
    first_frame = decoded[0]
    assert np.abs(first_frame.astype(int) - picture).mean() < 12
    assert report["audio"] is sound, report
    if sound:
        # The resumed session's sound starts with its first frame, not with what was put during the outage.
        samples, start, rate = sound_of(second / "record-av.mkv")
        begin, last = video_span(second / "record-av.mkv")
        assert abs(start - begin) < 0.3 and abs(start + len(samples) / rate - last) < 0.4, (start, begin, last)
        assert abs(peak_hz(samples, rate) - 440) < 5


def test_live_recording_of_a_camera_keeps_its_microphone(tmp_path: Path, face_jpeg: Path) -> None:
    """An IP camera's G.711 A-law sound (8 kHz) is recorded as AAC beside the swapped picture, on its clock."""
    server = RtspServer(face_jpeg, free_port())
    server.audio = True
    server.start()
    rec = tmp_path / "rec.mp4"
    report = _live_from(server, str(rec), 5, tmp_path)
    assert report["output"]["audio"] is True and report["frames_out"] > 10, report
    with av.open(str(rec)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
    samples, start, rate = sound_of(rec)
    first, last = video_span(rec)
    end = start + len(samples) / rate
    # Sound from the first frame to the last: what came before the first frame (the camera's first keyframe
    # is up to a GOP away) is left out, what came after the last one too (to within a 128 ms RTP packet).
    assert abs(start - first) < 0.05 and -0.05 < end - last < 0.25, (start, end, first, last)
    assert abs(peak_hz(samples[len(samples) // 4:3 * len(samples) // 4], rate) - 440) < 5


def test_live_push_of_a_camera_carries_its_microphone(tmp_path: Path, face_jpeg: Path) -> None:
    """Restreaming a camera with a microphone sends its sound along: the server receives H.264 and AAC, the
    tone over the picture's span."""
    server = RtspServer(face_jpeg, free_port())
    server.audio = True
    server.record_dir = tmp_path
    server.start()
    report = _live_from(server, server.url.replace("/face", "/record-av"), 5, tmp_path)
    assert report["output"]["audio"] is True and report["output"]["frames"] > 10, report
    received = tmp_path / "record-av.mkv"
    with av.open(str(received)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
        frames = sum(1 for _ in c.decode(video=0))
    assert frames >= report["output"]["frames"] - 2, (frames, report)
    samples, start, rate = sound_of(received)
    first, last = video_span(received)
    end = start + len(samples) / rate
    # The server stamps what it receives by arrival (RTP over TCP): the two tracks line up within a packet or two.
    assert abs(start - first) < 0.3 and abs(end - last) < 0.4, (start, end, first, last)
    assert abs(peak_hz(samples[len(samples) // 4:3 * len(samples) // 4], rate) - 440) < 5
