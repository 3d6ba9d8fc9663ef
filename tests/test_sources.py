"""Video sources on real files written by PyAV: frames, timestamps, copied streams and bad inputs."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import threading
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from clips import VFR_TICKS, decoded_frames, make_clip, stream_packets, textured_frame

from stream.exceptions import (
    EndOfStream,
    InputError,
    InputNotFoundError,
    TruncatedMediaError,
    UnsupportedMediaError,
)
from stream.frames import Frame
from stream.sources import VideoFileSource, load_image, probe_video, read_video_frames, sample_video_frames


async def _drain(source: VideoFileSource) -> list[Frame]:
    frames = []
    try:
        while True:
            frames.append(await source.recv())
    except EndOfStream:
        pass
    finally:
        source.stop()
    return frames


def _cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    n = int(len(data) * fraction)
    n -= 61 if n % 188 == 0 else 0  # mid-packet: a cut on a TS packet boundary looks like an end
    dst.write_bytes(data[:n])
    return dst


def _times(frames: list[Frame]) -> list[Fraction]:
    return [f.pts * f.time_base for f in frames]


# -- probing ---------------------------------------------------------------------------------------


def test_probe_describes_the_file(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=12, audio="aac", rotation=90,
                     metadata={"title": "probe me"})
    info = probe_video(clip.path)
    assert (info.codec, info.width, info.height, info.pix_fmt) == ("h264", 160, 120, "yuv420p")
    assert info.frames == 12
    assert info.average_rate == 30
    assert info.duration == pytest.approx(12 / 30, abs=1e-3)
    assert info.rotation == 90
    assert info.has_audio and not info.streaming and not info.truncated
    assert [(s.type, s.codec) for s in info.streams] == [("video", "h264"), ("audio", "aac")]
    assert info.streams[1].language == "fra"
    assert info.metadata["title"] == "probe me"
    assert "mp4" in info.format_name


# -- decoding --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cfr.mp4", "vfr.mp4", "cfr.mkv", "vfr.mkv"])
async def test_every_frame_with_its_timestamp(tmp_path: Path, name: str) -> None:
    ticks = VFR_TICKS if name.startswith("vfr") else None
    clip = make_clip(tmp_path / name, ticks=ticks)
    reference = decoded_frames(clip.path)
    source = VideoFileSource(clip.path, queue_size=3)
    frames = await _drain(source)
    assert [f.index for f in frames] == list(range(len(reference)))
    assert [f.pts for f in frames] == [f.pts for f in reference]
    # Seconds as written (Matroska's clock counts milliseconds).
    expected = [Fraction(round(t * 1000), 1000) for t in clip.times] if name.endswith("mkv") else clip.times
    assert [f.pts * f.time_base for f in frames] == expected
    assert source.frames_decoded == len(clip.pts) and not source.truncated
    tb = reference[0].time_base
    for frame, ref in zip(frames, reference, strict=True):
        assert frame.time_base == tb
        assert frame.image.dtype == np.uint8 and frame.image.shape == (120, 160, 3)
        assert frame.image.flags.c_contiguous
        np.testing.assert_array_equal(frame.image, ref.to_ndarray(format="rgb24"))
        assert isinstance(frame.source, av.VideoFrame) and frame.source.pts == frame.pts
        assert frame.timings["decode"] > 0
        assert not frame.modified
    assert all(a.capture_time <= b.capture_time for a, b in itertools.pairwise(frames))


async def test_rotation_comes_with_every_frame(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "rot.mp4", frames=5, rotation=270)
    frames = await _drain(VideoFileSource(clip.path))
    assert [f.rotation for f in frames] == [270] * 5


async def test_decoding_waits_for_the_consumer(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=20)
    source = VideoFileSource(clip.path, queue_size=2)
    first = await source.recv()
    for _ in range(1000):  # the thread refills the queue (up to 5 s on a loaded machine)...
        if source.frames_decoded >= 3:
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.1)  # ...and then must block
    assert source.frames_decoded == 3  # 1 taken + 2 queued; the 4th waits for room
    rest = await _drain(source)
    assert _times([first, *rest]) == clip.times


async def test_stop_ends_the_thread_and_the_stream(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=20)
    source = VideoFileSource(clip.path, queue_size=2)
    await source.recv()
    thread = source._thread
    source.stop()
    source.stop()  # idempotent
    assert thread is not None and not thread.is_alive()
    with pytest.raises(EndOfStream):
        await source.recv()
    never_started = VideoFileSource(clip.path)
    never_started.stop()
    with pytest.raises(EndOfStream):
        await never_started.recv()


async def test_realtime_paces_and_drops_for_a_slow_consumer(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=12)
    source = VideoFileSource(clip.path, queue_size=1, realtime=True)
    got = []
    try:
        while True:
            got.append((await source.recv()).pts * source.info.time_base)
            await asyncio.sleep(0.1)  # three frame periods per frame: most frames go stale
    except EndOfStream:
        pass
    source.stop()
    assert got == sorted(got) and set(got) <= set(clip.times)
    assert source.dropped > 0
    assert len(got) + source.dropped == 12


async def test_loop_keeps_timestamps_increasing(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mkv", frames=8)
    source = VideoFileSource(clip.path, loop=True)
    frames = [await source.recv() for _ in range(20)]
    source.stop()
    pts = [f.pts for f in frames]
    assert pts == sorted(set(pts))
    first_pass = [f.pts for f in decoded_frames(clip.path)]
    period = first_pass[-1] + (first_pass[1] - first_pass[0])  # the last frame lasts one period
    assert pts[:8] == first_pass and pts[8:16] == [p + period for p in first_pass]
    assert [f.index for f in frames] == list(range(20))


async def test_copied_streams_reach_the_channel_untouched(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mkv", frames=15, audio="libopus", subtitles="srt")
    source = VideoFileSource(clip.path)
    indices = {s.type: s.index for s in source.copy_streams}  # streams die with the source
    assert sorted(indices) == ["audio", "subtitle"]
    channel = source.open_passthrough()
    frames = await _drain(source)
    assert len(frames) == 15
    assert channel.ended and channel.complete
    packets = channel.drain()
    for kind, index in indices.items():
        got = [(p.pts, p.duration, p.time_base, bytes(p)) for i, p in packets if i == index]
        want = stream_packets(clip.path, kind)
        assert [(pts, dur, bytes_) for pts, dur, _, bytes_ in want] == [(p, d, b) for p, d, _, b in got]
        assert all(tb == Fraction(1, 1000) for _, _, tb, _ in got)
    with pytest.raises(RuntimeError, match="before the first recv"):
        source.open_passthrough()


async def test_without_a_passthrough_other_streams_are_not_kept(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=10, audio="aac")
    source = VideoFileSource(clip.path)
    frames = await _drain(source)
    assert len(frames) == 10


def test_read_video_frames_samples(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=10)
    frames = list(read_video_frames(clip.path, step=3))
    assert [f.index for f in frames] == [0, 3, 6, 9]
    assert _times(frames) == [clip.times[i] for i in (0, 3, 6, 9)]
    assert [f.index for f in read_video_frames(clip.path, step=2, max_frames=2)] == [0, 2]
    with pytest.raises(ValueError, match="step"):
        list(read_video_frames(clip.path, step=0))


def test_sample_video_frames_spreads_over_a_long_video(tmp_path: Path) -> None:
    # veryfast: B-frames, some of them referenced by no other frame, which the sampler does not decode.
    clip = make_clip(tmp_path / "b.mp4", frames=120, video_options={"preset": "veryfast"})
    full = {f.pts: f.to_ndarray(format="rgb24") for f in decoded_frames(clip.path)}
    frames = list(sample_video_frames(clip.path, 8))
    assert len(frames) == 8
    period = Fraction(120, 30) / 8
    for k, (frame, t) in enumerate(zip(frames, _times(frames), strict=True)):
        # the first frame at or after each multiple of duration / 8; at most 3 B-frames in a row are skipped
        assert k * period <= t <= k * period + Fraction(3, 30), (k, t)
        assert frame.index == t * 30
        # what was skipped was not needed: the frame is the one a full decode gives
        assert np.array_equal(frame.image, full[frame.pts]), k
    # a short video gives every (frames // count)-th frame, with exact indices
    short = make_clip(tmp_path / "s.mp4", frames=10)
    assert [f.index for f in sample_video_frames(short.path, 5)] == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="count"):
        list(sample_video_frames(short.path, 0))


# -- bad inputs ------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match=r"nope\.mp4") as err:
        VideoFileSource(tmp_path / "nope.mp4")
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(InputNotFoundError):
        list(read_video_frames(tmp_path / "nope.mp4"))


def test_text_file_is_not_media(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("these are not the frames you are looking for\n" * 20)
    with pytest.raises(UnsupportedMediaError, match="not a media file"):
        VideoFileSource(path)
    with pytest.raises(UnsupportedMediaError, match="directory"):
        probe_video(tmp_path)


@pytest.mark.parametrize("name", ["notes.txt", "readme.nfo"])
def test_text_file_that_ffmpeg_renders_as_ansi_art_is_not_a_video(tmp_path: Path, name: str) -> None:
    # FFmpeg's tty demuxer opens these extensions as a "video" of rendered text.
    path = tmp_path / name
    path.write_text("this is not a video\n" * 50)
    with pytest.raises(UnsupportedMediaError, match="not a video: it is a text file"):
        probe_video(path)


def test_audio_only_file_has_no_video(tmp_path: Path) -> None:
    path = tmp_path / "tone.m4a"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 48000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(UnsupportedMediaError, match="no video stream"):
        probe_video(path)


def test_mp4_without_its_index_is_truncated(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=20, audio="aac")  # moov written at the end
    cut = _cut(clip.path, tmp_path / "cut.mp4", 0.6)
    with pytest.raises(TruncatedMediaError, match="moov"):
        VideoFileSource(cut)


def test_faststart_mp4_cut_short_is_truncated(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=20, options={"movflags": "+faststart"})
    assert clip.path.read_bytes()[:64].find(b"moov") > 0  # index first, then the frames
    cut = _cut(clip.path, tmp_path / "cut.mp4", 0.6)
    with pytest.raises(TruncatedMediaError, match="cut short"):
        VideoFileSource(cut)


def test_video_codec_without_decoder_is_named(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=3)
    data = clip.path.read_bytes()
    assert data.count(b"avc1") >= 1
    evc = tmp_path / "evc.mp4"  # the same file, its sample entry claiming MPEG-5 EVC (no decoder)
    evc.write_bytes(data.replace(b"avc1", b"evc1"))
    with pytest.raises(UnsupportedMediaError, match=r"'evc.*no decoder"):
        VideoFileSource(evc)


def test_animated_webp_is_named_as_such(tmp_path: Path) -> None:
    from PIL import Image

    frames = [Image.fromarray(textured_frame(i)) for i in range(3)]
    animated, still = tmp_path / "anim.webp", tmp_path / "still.webp"
    frames[0].save(animated, save_all=True, append_images=frames[1:], duration=40, loop=0)
    frames[0].save(still)
    with pytest.raises(UnsupportedMediaError, match=r"anim\.webp: animated WebP cannot be decoded .* GIF or MP4"):
        VideoFileSource(animated)
    source = VideoFileSource(still)  # a still WebP is a photo like any other
    try:
        assert (source.info.width, source.info.height) == frames[0].size
    finally:
        source.stop()


def test_matroska_with_unknown_codec_id(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mkv", frames=3)
    data = clip.path.read_bytes()
    assert b"V_MPEG4/ISO/AVC" in data
    bad = tmp_path / "unknown.mkv"
    bad.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_FACESTREAM/XX"))  # same length: still valid EBML
    with pytest.raises(UnsupportedMediaError, match="no decoder"):
        probe_video(bad)


@pytest.mark.parametrize("name", ["a.ts", "a.mkv"])
async def test_cut_streaming_file_is_decoded_up_to_the_cut(
        tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture) -> None:
    clip = make_clip(tmp_path / name, frames=30, audio="aac" if name.endswith("ts") else "libopus",
                     format="mpegts" if name.endswith("ts") else None)
    full = decoded_frames(clip.path)
    cut = _cut(clip.path, tmp_path / f"cut{clip.path.suffix}", 0.55)
    assert probe_video(cut).truncated and not probe_video(clip.path).truncated
    source = VideoFileSource(cut)
    channel = source.open_passthrough()
    with caplog.at_level(logging.WARNING, logger="stream.sources"):
        frames = await _drain(source)
    assert source.truncated
    assert "ends mid-stream" in caplog.text
    assert 5 < len(frames) < 30
    assert [f.pts for f in frames] == [f.pts for f in full[:len(frames)]]
    for frame, ref in zip(frames, full, strict=False):  # whole frames only, never a half-decoded one
        np.testing.assert_array_equal(frame.image, ref.to_ndarray(format="rgb24"))
    assert channel.ended and len(channel) > 0


def _top_level_boxes(data: bytes) -> list[tuple[int, int, bytes]]:
    out, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        out.append((pos, size, data[pos + 4:pos + 8]))
        pos += size
    return out


@pytest.mark.parametrize("where", ["mdat", "moof"], ids=["in a fragment's samples", "in a fragment's header"])
async def test_cut_fragmented_mp4_is_decoded_up_to_the_cut(tmp_path: Path, where: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    # OBS, browsers and DASH write fragmented MP4 so that a crash leaves a file playable up to the cut.
    clip = make_clip(tmp_path / "a.mp4", frames=30, audio="aac", video_options={"preset": "veryfast"},  # B-frames
                     options={"movflags": "frag_keyframe+empty_moov+default_base_moof", "frag_duration": "100000"})
    data = clip.path.read_bytes()
    boxes = [b for b in _top_level_boxes(data) if b[2] == where.encode()]
    assert len(boxes) > 5
    pos, size, _ = boxes[-3]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:pos + (size // 2 if where == "mdat" else 20)])  # a moof's first 20 bytes: its header
    full = decoded_frames(clip.path)
    info = probe_video(cut)
    assert info.truncated and info.streaming and not probe_video(clip.path).truncated
    with av.open(str(clip.path)) as c:  # the samples the cut leaves whole
        whole = sum(e.pos + e.size <= cut.stat().st_size for e in c.streams.video[0].index_entries)
    source = VideoFileSource(cut)
    channel = source.open_passthrough()
    with caplog.at_level(logging.WARNING, logger="stream.sources"):
        frames = await _drain(source)
    assert source.truncated and "ends mid-stream" in caplog.text
    assert 5 < len(frames) == whole < 30  # every whole frame, and not the half one after them
    # In decode order the cut can leave a P-frame whole and the B-frames shown before it not: every frame
    # that comes out is the one of the uncut file with the same timestamp, decoded in full.
    by_pts = {f.pts: f for f in full}
    for frame in frames:
        np.testing.assert_array_equal(frame.image, by_pts[frame.pts].to_ndarray(format="rgb24"))
    assert channel.ended and len(channel) > 0


async def test_fragmented_mp4_cut_in_its_first_fragment(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=30, audio="aac", video_options={"preset": "veryfast"},
                     options={"movflags": "frag_keyframe+empty_moov+default_base_moof", "frag_duration": "100000"})
    data = clip.path.read_bytes()
    (moof, moof_size, _), (mdat, mdat_size, _) = [b for b in _top_level_boxes(data) if b[2] in (b"moof", b"mdat")][:2]
    with av.open(str(clip.path)) as c:  # the first fragment's video samples
        first = sorted((e.pos, e.size) for e in c.streams.video[0].index_entries if mdat < e.pos < mdat + mdat_size)
    assert len(first) >= 3, first
    # After the second video sample of the first fragment: its whole frames come out, the rest is the cut.
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:first[1][0] + first[1][1] + 10])
    frames = await _drain(VideoFileSource(cut))
    by_pts = {f.pts: f for f in decoded_frames(clip.path)}
    assert 1 <= len(frames) <= 2
    for frame in frames:
        np.testing.assert_array_equal(frame.image, by_pts[frame.pts].to_ndarray(format="rgb24"))
    # Inside the first frame or the first fragment's header: nothing whole to give, and one line says so.
    for end in (first[0][0] + first[0][1] // 2, moof + moof_size // 2):
        cut.write_bytes(data[:end])
        with pytest.raises(TruncatedMediaError, match="cut short before its first whole frame"):
            VideoFileSource(cut)


def test_plain_mp4_cut_short_still_fails_as_cut(tmp_path: Path) -> None:
    # Unlike a fragmented one, its index promises what the file no longer has.
    plain = make_clip(tmp_path / "plain.mp4", frames=20, options={"movflags": "+faststart"})
    assert not probe_video(plain.path).streaming
    with pytest.raises(TruncatedMediaError, match="cut short"):
        VideoFileSource(_cut(plain.path, tmp_path / "plain_cut.mp4", 0.6))


def test_cut_streaming_file_in_read_video_frames(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clip = make_clip(tmp_path / "a.ts", frames=30, format="mpegts")
    cut = _cut(clip.path, tmp_path / "cut.ts", 0.5)
    with caplog.at_level(logging.WARNING, logger="stream.sources"):
        frames = list(read_video_frames(cut))
    assert 5 < len(frames) < 30 and "ends mid-stream" in caplog.text
    assert f"cut short after frame {len(frames)}" in caplog.text



def test_cut_streaming_file_sampled(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Matroska keeps the whole clip's duration in its header: samples are spread past the cut.
    clip = make_clip(tmp_path / "a.mkv", frames=60)
    cut = _cut(clip.path, tmp_path / "cut.mkv", 0.5)
    with caplog.at_level(logging.WARNING, logger="stream.sources"):
        whole = list(read_video_frames(cut))
        caplog.clear()
        sampled = list(sample_video_frames(cut, 20))
    assert 5 < len(sampled) < 20 and _times(sampled) == sorted(set(_times(sampled)) & set(_times(whole)))
    # A decoder that skips frames cannot count them: the warning gives the time of the cut instead.
    found = re.search(r"cut short after (\d+\.\d\d) s", caplog.text)
    assert found, caplog.text
    assert float(found[1]) == pytest.approx(float(_times(whole)[-1] - _times(whole)[0]), abs=0.01)


def _damaged_png_clip(path: Path, bad_frame: int = 5) -> Path:
    """A 10-frame PNG-coded clip whose ``bad_frame`` has its PNG signature wiped: the decoder fails."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb24"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data)) if data.startswith(b"\x89PNG", i)]
    assert len(starts) == 10
    data[starts[bad_frame]:starts[bad_frame] + 8] = bytes(8)
    path.write_bytes(bytes(data))
    return path


async def test_decode_error_in_an_indexed_file_is_an_error(tmp_path: Path) -> None:
    source = VideoFileSource(_damaged_png_clip(tmp_path / "bad.mov"))  # frame 0 is fine: probe passes
    frames = []
    with pytest.raises(InputError, match="damaged"):
        while True:
            frames.append(await source.recv())
    source.stop()
    assert len(frames) <= 5 and not source.truncated


async def test_decode_error_in_a_streaming_file_ends_it_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = VideoFileSource(_damaged_png_clip(tmp_path / "bad.nut"))
    with caplog.at_level(logging.WARNING, logger="stream.sources"):
        frames = await _drain(source)
    assert 0 < len(frames) <= 5 and source.truncated
    assert "decoding failed after frame" in caplog.text


# -- images ----------------------------------------------------------------------------------------


def test_load_image_is_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200  # red
    rgb[5:10, :, 2] = 99
    path = tmp_path / "red.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(load_image(path), rgb)


def test_load_image_of_a_shipped_portrait() -> None:
    from matplotlib import cbook
    from matplotlib import image as mpimg

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = load_image(path)
    reference = mpimg.imread(path)
    assert image.shape == reference.shape and image.dtype == np.uint8
    assert float(np.abs(image.astype(int) - reference.astype(int)).mean()) < 1.0


def test_load_image_errors(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError):
        load_image(tmp_path / "missing.png")
    text = tmp_path / "face.jpg"
    text.write_text("not an image")
    with pytest.raises(UnsupportedMediaError, match="cannot read image"):
        load_image(text)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(UnsupportedMediaError, match="cannot read image"):
        load_image(empty)


def test_stop_waits_for_a_decode_thread_whose_start_a_signal_cut_short() -> None:
    # Ctrl-C/SIGTERM raised inside Thread.start() leaves a thread that runs but is not marked started;
    # Thread.join() refuses it ("cannot join thread before it is started"), which stop() used to raise.
    from stream.sources import _join

    done = threading.Event()
    late = threading.Thread(target=done.set)
    starter = threading.Timer(0.05, late.start)  # it comes up while _join is already waiting
    starter.start()
    _join(late, 5.0)
    assert done.is_set() and not late.is_alive()
    never = threading.Thread(target=done.set)  # never started at all: gives up at the timeout, no error
    _join(never, 0.05)
    assert not never.is_alive()
