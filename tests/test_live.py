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
from mediautil import read_frames, xmp_description

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
