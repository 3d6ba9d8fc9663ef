"""Video sinks on real files: nothing lost (frames, timestamps, audio, subtitles, rotation, metadata),
synthetic tags added, quality kept, and the output written safely."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from clips import VFR_TICKS, decoded_frames, make_clip, psnr, stream_packets, textured_frame
from mediautil import top_level_boxes, xmp_description

from stream import __version__
from stream.exceptions import EndOfStream, OutputError
from stream.frames import Frame
from stream.sinks import EncodeSettings, VideoFileSink, transcode
from stream.sources import HdrMetadata, VideoFileSource, probe_video


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "facestream-tmp" in p.name)


def _times(path: Path) -> list[Fraction]:
    return [f.pts * f.time_base for f in decoded_frames(path)]


def _tags(path: Path) -> dict[str, str]:
    with av.open(str(path)) as container:
        return {k.lower(): v for k, v in container.metadata.items()}


async def _run(src: Path, dst: Path, edit: Callable[[Frame], None] | None = None, **sink_args: object
               ) -> VideoFileSource:
    source = VideoFileSource(src)
    sink = VideoFileSink(dst, source, **sink_args)  # type: ignore[arg-type]
    try:
        while True:
            try:
                frame = await source.recv()
            except EndOfStream:
                break
            if edit is not None:
                edit(frame)
            await sink.write(frame)
        await sink.close()
    except BaseException:
        await sink.abort()
        raise
    finally:
        source.stop()
    return source


def _paint_every_third(frame: Frame) -> None:
    if frame.index % 3 == 0:
        frame.image = frame.image.copy()
        frame.image[20:60, 30:90] = (255, 0, 255)
        frame.modified = True


# -- timestamps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cfr.mp4", "vfr.mp4", "cfr.mkv", "vfr.mkv"])
@pytest.mark.parametrize("modify", [False, True], ids=["passthrough", "modified"])
async def test_every_frame_keeps_its_timestamp(tmp_path: Path, name: str, modify: bool) -> None:
    clip = make_clip(tmp_path / name, ticks=VFR_TICKS if name.startswith("vfr") else None)
    out = tmp_path / f"out{clip.path.suffix}"
    await _run(clip.path, out, _paint_every_third if modify else None)
    src, dst = decoded_frames(clip.path), decoded_frames(out)
    assert len(dst) == len(src) == len(clip.pts)
    assert [f.time_base for f in dst] == [f.time_base for f in src]
    assert [f.pts for f in dst] == [f.pts for f in src]
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    if modify:
        for i, (a, b) in enumerate(zip(src, dst, strict=True)):
            region = b.to_ndarray(format="rgb24")[24:56, 34:86].astype(int)
            is_magenta = bool(np.abs(region - (255, 0, 255)).mean() < 12)
            assert is_magenta == (i % 3 == 0), f"frame {i}"
            if i % 3:
                assert psnr(a.to_ndarray(format="rgb24"), b.to_ndarray(format="rgb24")) >= 38


async def test_timestamps_survive_a_change_of_container(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "vfr.mkv", ticks=VFR_TICKS)
    out = tmp_path / "out.mp4"
    await _run(clip.path, out)
    assert _times(out) == _times(clip.path)


async def test_streaming_input_keeps_its_start_offset(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "in.ts", ticks=range(7, 19), format="mpegts")  # starts at 7/30 s
    out = tmp_path / "out.mp4"
    await _run(clip.path, out)
    assert _times(clip.path)[0] >= Fraction(7, 30)
    assert _times(out) == _times(clip.path)  # exact: the MP4 edit list counts in the video's clock


# -- quality ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.mp4", "a.mkv"])
async def test_unmodified_frames_stay_above_38_db(tmp_path: Path, name: str) -> None:
    clip = make_clip(tmp_path / name, frames=30)
    out = tmp_path / f"out{clip.path.suffix}"
    stats = await transcode(clip.path, out)  # default EncodeSettings
    values = [psnr(a.to_ndarray(format="rgb24"), b.to_ndarray(format="rgb24"))
              for a, b in zip(decoded_frames(clip.path), decoded_frames(out), strict=True)]
    assert len(values) == 30 and min(values) >= 38.0, values
    assert stats.frames == 30 and stats.bytes == out.stat().st_size and stats.encode_seconds > 0


async def test_webm_output_is_vp9_by_default_with_every_frame_kept(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", ticks=VFR_TICKS)
    out = tmp_path / "out.webm"  # WebM holds no H.264: the default codec follows the container
    await transcode(clip.path, out)
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "vp9"
    src, dst = decoded_frames(clip.path), decoded_frames(out)
    assert len(dst) == len(src)
    # Matroska counts in milliseconds: each time is the input's to the nearest one.
    assert all(abs(a - b) <= Fraction(1, 1000) for a, b in zip(_times(clip.path), _times(out), strict=True))
    values = [psnr(a.to_ndarray(format="rgb24"), b.to_ndarray(format="rgb24")) for a, b in zip(src, dst, strict=True)]
    assert min(values) >= 38.0, values


def test_codec_follows_the_container_unless_named() -> None:
    assert EncodeSettings().for_output("x.webm").codec == "libvpx-vp9"
    assert EncodeSettings().for_output("x.MP4").codec == "libx264"
    assert EncodeSettings(codec="ffv1").for_output("x.webm").codec == "ffv1"
    assert EncodeSettings().for_output("x.mov", "prores", "yuv422p10le").codec == "libx265"
    assert EncodeSettings().for_output("x.avi", "hevc", "yuv420p10le").codec == "libx264"  # no HEVC in AVI
    assert EncodeSettings().for_output("x.mp4", "png", "rgb48be").codec == "libx264"  # HEVC would not keep it either
    assert EncodeSettings(codec="libx264").for_output("x.mp4", "hevc", "yuv420p10le").codec == "libx264"
    vp9 = EncodeSettings(codec="libvpx-vp9").codec_options()  # x264's preset names, as libvpx speeds
    assert vp9 == {"crf": "17", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
    assert EncodeSettings(codec="libvpx-vp9", preset="slow").codec_options()["deadline"] == "good"
    with pytest.raises(OutputError, match="unknown preset 'warp-speed'"):
        EncodeSettings(codec="libvpx-vp9", preset="warp-speed").codec_options()


def _deep_clip(path: Path, codec: str, pix_fmt: str, frames: int = 6, *, trc: int = 18, x265: str = "") -> None:
    """A clip of ``codec`` in ``pix_fmt`` tagged BT.2020 and ``trc`` (HLG, as a phone records HDR video;
    16 for HDR10's PQ), with ``x265`` added to libx265's parameters."""
    with av.open(str(path), "w") as container:
        quiet = {"x265-params": "log-level=error" + x265} if codec == "libx265" else {}
        video = container.add_stream(codec, rate=30, options={"preset": "ultrafast", "crf": "12", **quiet})
        video.width, video.height, video.pix_fmt = 160, 120, pix_fmt
        ctx = video.codec_context
        ctx.color_primaries, ctx.color_trc, ctx.colorspace = 9, trc, 9  # BT.2020, HLG (ARIB STD-B67), BT.2020 NCL
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(textured_frame(i), format="rgb24").reformat(format=pix_fmt)
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode())


@pytest.mark.parametrize(("codec", "pix_fmt", "suffix", "expect"), [
    ("libx265", "yuv420p10le", ".mp4", "hevc"),  # a phone's HDR video
    ("libx265", "yuv420p10le", ".mov", "hevc"),
    ("libx265", "yuv420p10le", ".mkv", "hevc"),
    ("libx264", "yuv420p10le", ".mp4", "h264"),  # 10-bit H.264 stays H.264: it plays where the input did
    ("libx265", "yuv420p", ".mp4", "h264"),  # 8 bits: H.264 plays everywhere and encodes faster
])
async def test_video_deeper_than_8_bits_is_written_as_hevc_unless_it_was_h264(
        tmp_path: Path, codec: str, pix_fmt: str, suffix: str, expect: str) -> None:
    src, out = tmp_path / "in.mp4", tmp_path / f"out{suffix}"
    _deep_clip(src, codec, pix_fmt)
    await _run(src, out, edit=_paint_every_third)
    with av.open(str(out)) as container:
        ctx = container.streams.video[0].codec_context
        assert ctx.name == expect
        assert ctx.pix_fmt == pix_fmt  # no bit lost
        assert (ctx.color_primaries, ctx.color_trc, ctx.colorspace) == (9, 18, 9)
        if expect == "hevc" and suffix != ".mkv":
            assert container.streams.video[0].codec_tag == "hvc1"  # what Apple's players need
    assert len(decoded_frames(out)) == 6


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
async def test_hdr10_mastering_display_and_light_levels_survive(tmp_path: Path, suffix: str) -> None:
    # A P3 display of 1000 cd/m^2 down to 0.005, content up to 1000 cd/m^2 (frame average 400): HDR10 as graded.
    display = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,50)"
    src, out = tmp_path / "pq.mp4", tmp_path / f"out{suffix}"
    _deep_clip(src, "libx265", "yuv420p10le", trc=16, x265=f":master-display={display}:max-cll=1000,400")
    assert probe_video(src).hdr == HdrMetadata(display, (1000, 400))
    await _run(src, out, edit=_paint_every_third)
    got = probe_video(out)
    assert got.codec == "hevc" and got.hdr == HdrMetadata(display, (1000, 400))
    hlg = tmp_path / "hlg.mp4"  # HLG needs none, and gets none
    _deep_clip(hlg, "libx265", "yuv420p10le")
    assert probe_video(hlg).hdr is None


async def test_svt_av1_keeps_its_configuration_off_stderr(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVT_LOG", "")
    monkeypatch.delenv("SVT_LOG")  # as a user's shell has it; restored afterwards
    clip = make_clip(tmp_path / "in.mp4", frames=4)
    out = tmp_path / "out.webm"
    await _run(clip.path, out, settings=EncodeSettings(codec="libsvtav1"))
    assert len(decoded_frames(out)) == 4
    assert "Svt[" not in capfd.readouterr().err


def test_crf_and_preset_are_checked_for_the_encoder() -> None:
    with pytest.raises(OutputError, match=r"crf 99 is outside libx264's range 0\.\.51"):
        EncodeSettings(crf=99).codec_options()  # x264 itself would clamp it to 51 without a word
    assert EncodeSettings(codec="libvpx-vp9", crf=60).codec_options()["crf"] == "60"
    with pytest.raises(OutputError, match="unknown preset 'warp' for libx265; choose from: ultrafast"):
        EncodeSettings(codec="libx265", preset="warp").codec_options()
    assert EncodeSettings(codec="libx265").codec_options() == {
        "crf": "17", "preset": "veryfast", "x265-params": "log-level=error"}
    # SVT-AV1 numbers its presets: x264's names map onto them, numbers pass through.
    assert EncodeSettings(codec="libsvtav1").codec_options()["preset"] == "10"
    assert EncodeSettings(codec="libsvtav1", preset="4").codec_options()["preset"] == "4"
    with pytest.raises(OutputError, match="or a number"):
        EncodeSettings(codec="libsvtav1", preset="99").codec_options()
    assert "preset" not in EncodeSettings(codec="ffv1").codec_options()  # no speed preset to set


@pytest.mark.parametrize("modify", [False, True], ids=["passthrough", "modified"])
async def test_odd_frame_size_is_kept_whole(tmp_path: Path, modify: bool, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    # VP9 (a browser's recording, a cropped clip) stores 161x121 in 4:2:0; H.264 cannot halve an odd size.
    clip = make_clip(tmp_path / "odd.webm", frames=9, size=(161, 121), codec="libvpx-vp9")
    out = tmp_path / "out.mp4"
    with caplog.at_level(logging.WARNING, logger="stream.sinks"):
        await _run(clip.path, out, _paint_every_third if modify else None)
    assert "161x121 is odd-sized" in caplog.text and "writing yuv444p" in caplog.text
    src, dst = decoded_frames(clip.path), decoded_frames(out)
    assert len(dst) == len(src) == 9
    assert {(f.width, f.height, f.format.name) for f in dst} == {(161, 121, "yuv444p")}
    for i, (a, b) in enumerate(zip(src, dst, strict=True)):
        if modify and i % 3 == 0:
            region = b.to_ndarray(format="rgb24")[24:56, 34:86].astype(int)
            assert np.abs(region - (255, 0, 255)).mean() < 12, f"frame {i}"
        else:
            # Unchanged beyond encoding: against the input as the encoder got it (chroma upsampled once;
            # a player upsamples 4:2:0 its own way, so RGB of the two differs by more than the encode).
            assert psnr(a.reformat(format="yuv444p").to_ndarray(), b.to_ndarray()) >= 38, f"frame {i}"
    # VP9 can store the odd size in 4:2:0 itself: nothing to change.
    caplog.clear()
    await transcode(clip.path, tmp_path / "out.webm")
    webm = decoded_frames(tmp_path / "out.webm")
    assert {(f.width, f.height, f.format.name) for f in webm} == {(161, 121, "yuv420p")}
    assert "odd-sized" not in caplog.text


async def test_rgb_round_trip_is_the_inverse_of_decoding(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=10)
    out = tmp_path / "out.mp4"
    await transcode(clip.path, out, EncodeSettings(codec="libx264", crf=0, preset="ultrafast"),
                    rgb_roundtrip=True)
    for a, b in zip(decoded_frames(clip.path), decoded_frames(out), strict=True):
        # Lossless encode: what is left is the YUV 4:2:0 -> RGB -> YUV 4:2:0 conversion itself.
        assert psnr(a.to_ndarray(format="rgb24"), b.to_ndarray(format="rgb24")) > 40


# -- copied streams --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "codec"), [("a.mp4", "aac"), ("a.mkv", "libopus")])
async def test_audio_is_copied_packet_for_packet(tmp_path: Path, name: str, codec: str) -> None:
    clip = make_clip(tmp_path / name, frames=24, audio=codec)
    out = tmp_path / f"out{clip.path.suffix}"
    await _run(clip.path, out, _paint_every_third)
    before, after = stream_packets(clip.path, "audio"), stream_packets(out, "audio")
    assert len(after) == len(before) > 20
    assert after == before  # same pts, durations and bytes: not re-encoded
    with av.open(str(clip.path)) as a, av.open(str(out)) as b:
        sa, sb = a.streams.audio[0], b.streams.audio[0]
        assert sb.codec_context.name == sa.codec_context.name
        assert (sb.sample_rate, sb.time_base) == (sa.sample_rate, sa.time_base)
        assert sb.metadata.get("language") == "fra"


async def test_subtitles_are_copied_into_matroska(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mkv", frames=20, audio="libopus", subtitles="srt")
    out = tmp_path / "out.mkv"
    await _run(clip.path, out)
    before, after = stream_packets(clip.path, "subtitle"), stream_packets(out, "subtitle")
    assert len(before) == 2 and after == before
    with av.open(str(out)) as container:
        sub = next(s for s in container.streams if s.type == "subtitle")
        assert sub.codec_context.name in ("subrip", "srt")
        assert sub.metadata.get("language") == "eng"


async def test_mov_text_subtitles_are_kept_in_mp4(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=20, subtitles="mov_text")
    out = tmp_path / "out.mp4"
    await _run(clip.path, out)
    def cues(path: Path) -> list[tuple[int | None, int | None, bytes]]:
        # The MP4 muxer fills gaps with empty samples of its own; the cues are what matters.
        packets = stream_packets(path, "subtitle")
        return [(pts, dur, data) for pts, dur, _, data in packets if data[:2] != b"\0\0"]

    assert cues(out) == cues(clip.path) and len(cues(out)) == 2


async def test_stream_the_output_cannot_hold_is_refused_up_front(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=5, subtitles="mov_text")
    source = VideoFileSource(clip.path)
    try:
        with pytest.raises(OutputError, match=r"cannot hold the mov_text subtitle stream #1"):
            VideoFileSink(tmp_path / "out.mkv", source)
    finally:
        source.stop()
    assert not (tmp_path / "out.mkv").exists()
    assert _leftovers(tmp_path) == []


async def test_codec_the_container_cannot_hold_is_refused(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mkv", frames=5, audio="libopus")
    source = VideoFileSource(clip.path)
    try:
        with pytest.raises(OutputError, match="cannot hold"):
            # WebM takes no H.264 (named: left out, the codec would follow the container)
            VideoFileSink(tmp_path / "out.webm", source, settings=EncodeSettings(codec="libx264"))
        with pytest.raises(OutputError, match="opus audio stream #1"):
            VideoFileSink(tmp_path / "out.mov", source)  # Opus in MOV fails when the header is written
    finally:
        source.stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mkv"]


def _clip_with_pcm(path: Path, layout: str, frames: int = 5) -> Path:
    """H.264 + 16-bit PCM of ``layout`` into ``path``'s container. AVI stores stereo without naming its
    layout (as cameras and old captures write it); "3c" is three unnamed channels, which Matroska keeps so."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=30, options={"crf": "12", "preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=48000, layout=layout)
        channels = audio.codec_context.layout.nb_channels
        for i in range(frames):
            vf = av.VideoFrame.from_ndarray(np.full((120, 160, 3), 40 * i, np.uint8), format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, 30)
            out.mux(video.encode(vf))
        out.mux(video.encode(None))
        tone = (np.sin(np.arange(1600) / 8) * 8000).astype(np.int16)
        af = av.AudioFrame.from_ndarray(np.stack([tone] * channels).T.reshape(1, -1), format="s16", layout=layout)
        af.sample_rate, af.pts = 48000, 0
        out.mux(audio.encode(af))
        out.mux(audio.encode(None))
    return path


def _audio_layout(path: Path) -> str:
    with av.open(str(path)) as c:
        return c.streams.audio[0].codec_context.layout.name


async def test_a_copy_the_container_would_fail_to_finish_is_refused_before_the_run(tmp_path: Path) -> None:
    # MP4's muxer takes the header of PCM with three unnamed channels and fails only when it finishes the file
    # ("unsupported channel layout"): after the whole run. Found from a first packet, up front.
    clip = _clip_with_pcm(tmp_path / "cam.mkv", "3c")
    assert _audio_layout(clip) == "3 channels"
    source = VideoFileSource(clip)
    try:
        with pytest.raises(OutputError, match=r"\.mp4 files cannot hold the pcm_s16le audio stream #1 .*layout"):
            VideoFileSink(tmp_path / "out.mp4", source)
    finally:
        source.stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam.mkv"]
    await transcode(clip, tmp_path / "out.mov")  # MOV holds it: the same samples (its demuxer cuts PCM anew)
    assert b"".join(p[3] for p in stream_packets(tmp_path / "out.mov", "audio")) == \
        b"".join(p[3] for p in stream_packets(clip, "audio"))


async def test_unnamed_stereo_pcm_is_copied_into_mp4_as_stereo(tmp_path: Path) -> None:
    # AVI stores two channels without their layout; MP4 writes PCM only with one. Two unnamed channels are
    # stereo (as FFmpeg's tools take them): the packets go in unchanged, the layout named.
    clip = _clip_with_pcm(tmp_path / "cam.avi", "stereo")
    assert _audio_layout(clip) == "2 channels"
    await transcode(clip, tmp_path / "out.mp4")
    assert stream_packets(tmp_path / "out.mp4", "audio") == stream_packets(clip, "audio")
    assert _audio_layout(tmp_path / "out.mp4") == "stereo"


def _ts_with_audio_from(path: Path, start: float | None, seconds: float) -> Path:
    """A small H.264 + MP2 transport stream whose audio PID carries packets only from ``start`` seconds on
    (None: never, as a recorder with its audio off writes it)."""
    with av.open(str(path), "w", format="mpegts") as out:
        video = out.add_stream("libx264", rate=30, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("mp2", rate=48000, layout="stereo")
        pos = None if start is None else round(start * 48000)
        for i in range(round(30 * seconds)):
            vf = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i % 250, np.uint8), format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, 30)
            out.mux(video.encode(vf))
            while pos is not None and pos < (i + 1) * 1600 and i >= 30 * start:
                tone = (np.sin(np.arange(1152) / 9) * 8000).astype(np.int16)
                af = av.AudioFrame.from_ndarray(np.stack([tone, tone]).T.reshape(1, -1), format="s16", layout="stereo")
                af.sample_rate, af.pts, af.time_base = 48000, pos, Fraction(1, 48000)
                pos += 1152
                out.mux(audio.encode(af))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    return path


async def test_an_audio_stream_without_packets_is_left_out_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Its rate and channels are unknown, so no container takes it: it used to fail the whole run.
    clip = _ts_with_audio_from(tmp_path / "rec.ts", None, 1.0)
    with caplog.at_level(logging.WARNING, logger="stream.sources"):
        await transcode(clip, tmp_path / "out.mkv")
    assert "not copying mp3float audio stream #1: no packet tells its sample rate and channels" in caplog.text
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert [s.type for s in c.streams] == ["video"]
        assert sum(1 for _ in c.decode(video=0)) == 30


async def test_audio_that_starts_late_in_a_transport_stream_is_copied(tmp_path: Path) -> None:
    # FFmpeg's default probe (5 s) ends before the first audio packet; the source reads further for it.
    clip = _ts_with_audio_from(tmp_path / "rec.ts", 20.0, 21.0)
    with av.open(str(clip)) as c:
        assert c.streams.audio[0].codec_context.sample_rate == 0  # what the default probe finds
    await transcode(clip, tmp_path / "out.mkv")
    assert b"".join(p[3] for p in stream_packets(tmp_path / "out.mkv", "audio")) == \
        b"".join(p[3] for p in stream_packets(clip, "audio"))


# -- metadata --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "dst"), [("a.mkv", "out.mkv"), ("a.mp4", "out.mp4"), ("a.mov", "out.mov"),
                                          ("a.mp4", "out.mkv")])
async def test_chapters_survive(tmp_path: Path, src: str, dst: str, caplog: pytest.LogCaptureFixture) -> None:
    clip = make_clip(tmp_path / src, frames=30, chapters=[(0.0, 0.5, "Intro"), (0.5, 1.0, "Main")])

    def table(path: Path) -> list[tuple[Fraction, Fraction, str]]:
        with av.open(str(path)) as c:
            return [(ch["start"] * ch["time_base"], ch["end"] * ch["time_base"], ch["metadata"]["title"])
                    for ch in c.chapters()]

    assert table(clip.path) == [(0, Fraction(1, 2), "Intro"), (Fraction(1, 2), 1, "Main")]
    with caplog.at_level(logging.WARNING, logger="stream.sinks"):
        await transcode(clip.path, tmp_path / dst)
    assert table(tmp_path / dst) == table(clip.path)
    assert "not copying" not in caplog.text  # MP4's chapter track is not "a data stream left behind"


@pytest.mark.parametrize("dst", ["out.mov", "out.mp4", "out.mkv"])
async def test_a_timecode_track_keeps_its_start_timecode(tmp_path: Path, dst: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    clip = make_clip(tmp_path / "a.mov", frames=5, video_metadata={"timecode": "01:02:03:04"})
    with av.open(str(clip.path)) as c:  # the input: a QuickTime timecode track beside the video
        assert [(s.type, s.metadata.get("timecode")) for s in c.streams] == [
            ("video", "01:02:03:04"), ("data", "01:02:03:04")]
    out = tmp_path / dst
    with caplog.at_level(logging.INFO, logger="stream.sinks"):
        await _run(clip.path, out)
    assert "not copying" not in caplog.text and "start timecode 01:02:03:04, which is kept" in caplog.text
    with av.open(str(out)) as c:
        tags = {k.lower(): v for k, v in c.streams.video[0].metadata.items()}  # Matroska's are upper case
        assert tags.get("timecode") == "01:02:03:04"
        tracks = [s.metadata.get("timecode") for s in c.streams if s.type == "data"]
    assert tracks == ([] if dst == "out.mkv" else ["01:02:03:04"])  # MP4/MOV: a timecode track again


@pytest.mark.parametrize("name", ["a.mp4", "a.mov", "a.mkv"])
async def test_rotation_metadata_and_synthetic_tags(tmp_path: Path, name: str) -> None:
    clip = make_clip(tmp_path / name, frames=6, rotation=90, audio="aac",
                     metadata={"title": "holiday", "artist": "someone"},
                     video_metadata={"language": "deu"})
    out = tmp_path / f"out{clip.path.suffix}"
    await _run(clip.path, out, metadata={"facestream_mode": "swap"})
    assert [f.rotation for f in decoded_frames(out)] == [90] * 6
    tags = _tags(out)
    assert tags["title"] == "holiday" and tags["artist"] == "someone"
    assert tags["synthetic"] == "true"
    assert tags["encoder_app"] == f"facestream {__version__}"
    assert tags["facestream_mode"] == "swap"
    assert "synthetic" in tags["comment"].lower()
    if name != "a.mov":  # FFmpeg's MOV muxer drops ISO 639 languages (Macintosh codes only)
        with av.open(str(out)) as container:
            assert container.streams.video[0].metadata.get("language") == "deu"


_IPTC = "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}"
_XMP = "{http://ns.adobe.com/xap/1.0/}"
_DC = "{http://purl.org/dc/elements/1.1/}"


@pytest.mark.parametrize(("name", "learned"), [("a.mp4", False), ("a.mov", True), ("a.m4v", False)])
async def test_mp4_and_mov_carry_the_marks_as_xmp_too(tmp_path: Path, name: str, learned: bool) -> None:
    clip = make_clip(tmp_path / name, frames=6, audio="aac")
    out = tmp_path / f"out{clip.path.suffix}"
    await _run(clip.path, out, metadata={"facestream_mode": "swap"}, learned=learned)
    kinds = [kind for kind, _ in top_level_boxes(out)]
    assert kinds[-1] == b"uuid" and b"moov" in kinds and b"mdat" in kinds
    xmp = xmp_description(out)
    kind = "compositeWithTrainedAlgorithmicMedia" if learned else "compositeSynthetic"
    assert xmp[f"{_IPTC}DigitalSourceType"] == f"http://cv.iptc.org/newscodes/digitalsourcetype/{kind}"
    assert xmp[f"{_XMP}CreatorTool"] == f"facestream {__version__}"
    assert xmp[f"{_DC}description"] == _tags(out)["comment"]
    # Appended after everything else: every frame and audio packet is where the index says.
    assert len(decoded_frames(out)) == 6
    assert stream_packets(out, "audio") == stream_packets(clip.path, "audio")


async def test_matroska_carries_the_marks_in_its_tags_only(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mkv", frames=3)
    out = tmp_path / "out.mkv"
    await _run(clip.path, out)
    assert _tags(out)["synthetic"] == "true" and b"xmpmeta" not in out.read_bytes()


async def test_an_input_comment_is_not_replaced(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=3, metadata={"comment": "my words"})
    out = tmp_path / "out.mp4"
    await _run(clip.path, out)
    assert _tags(out)["comment"] == "my words" and _tags(out)["synthetic"] == "true"


async def test_neither_caller_nor_input_can_unset_the_synthetic_marks(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=3, metadata={"synthetic": "false", "encoder_app": "camera"})
    out = tmp_path / "out.mp4"
    await _run(clip.path, out, metadata={"synthetic": "no", "encoder_app": "something else"})
    tags = _tags(out)
    assert tags["synthetic"] == "true" and tags["encoder_app"] == f"facestream {__version__}"


# -- safety ----------------------------------------------------------------------------------------


async def test_output_equal_to_input_is_refused(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=5)
    digest = _sha(clip.path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.mp4").symlink_to(clip.path)
    os.link(clip.path, tmp_path / "hard.mp4")
    source = VideoFileSource(clip.path)
    try:
        for same in (clip.path, tmp_path / "sub" / ".." / "a.mp4", tmp_path / "link.mp4",
                     tmp_path / "hard.mp4"):
            with pytest.raises(OutputError, match="is the input file"):
                VideoFileSink(same, source)
    finally:
        source.stop()
    assert _sha(clip.path) == digest
    assert _leftovers(tmp_path) == []


async def test_bad_output_paths_and_settings(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=3)
    source = VideoFileSource(clip.path)
    try:
        with pytest.raises(OutputError, match="does not exist"):
            VideoFileSink(tmp_path / "missing" / "out.mp4", source)
        with pytest.raises(OutputError, match="extension"):
            VideoFileSink(tmp_path / "out.xyz", source)
        with pytest.raises(OutputError, match="directory"):
            VideoFileSink(tmp_path, source)
        with pytest.raises(OutputError, match="unknown video encoder 'nope'"):
            VideoFileSink(tmp_path / "out.mp4", source, settings=EncodeSettings(codec="nope"))
        with pytest.raises(OutputError, match="unknown preset 'warp-speed'"):
            VideoFileSink(tmp_path / "out.mp4", source, settings=EncodeSettings(preset="warp-speed"))
        with pytest.raises(OutputError, match="cannot open encoder libx264 for 160x120 yuv420p"):
            VideoFileSink(tmp_path / "out.mp4", source, settings=EncodeSettings(options={"profile": "no-such"}))
    finally:
        source.stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


async def test_abort_leaves_nothing_behind(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=20, audio="aac")
    digest = _sha(clip.path)
    out = tmp_path / "out.mp4"
    source = VideoFileSource(clip.path)
    sink = VideoFileSink(out, source)
    assert len(_leftovers(tmp_path)) == 1  # written next to the output, under a hidden name
    for _ in range(8):
        await sink.write(await source.recv())
    await sink.abort()
    await sink.abort()  # idempotent
    source.stop()
    assert not out.exists() and _leftovers(tmp_path) == []
    assert _sha(clip.path) == digest
    with pytest.raises(OutputError, match="after"):
        await sink.write(Frame(index=0, image=np.zeros((120, 160, 3), np.uint8), pts=0))


async def test_abort_keeps_an_existing_output_and_abort_before_writing(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=5)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")
    source = VideoFileSource(clip.path)
    sink = VideoFileSink(out, source)
    await sink.abort()
    source.stop()
    assert out.read_bytes() == b"previous result" and _leftovers(tmp_path) == []


async def test_close_without_frames_saves_nothing(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=5)
    source = VideoFileSource(clip.path)
    sink = VideoFileSink(tmp_path / "out.mp4", source)
    with pytest.raises(OutputError, match="no frames"):
        await sink.close()
    source.stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


async def test_a_failing_pipeline_leaves_no_file(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=12)
    out = tmp_path / "out.mp4"

    def explode(frame: Frame) -> None:
        if frame.index == 5:
            raise RuntimeError("stage broke")

    with pytest.raises(RuntimeError, match="stage broke"):
        await _run(clip.path, out, explode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


async def test_encoder_failure_surfaces_as_output_error(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=6)
    out = tmp_path / "out.mp4"
    source = VideoFileSource(clip.path)
    sink = VideoFileSink(out, source, queue_size=1)
    await sink.write(await source.recv())
    broken = await source.recv()
    broken.image, broken.modified = np.zeros((120, 160), np.uint8), True  # a stage returned grey
    with pytest.raises(OutputError, match=r"writing .*out\.mp4 failed"):
        await sink.write(broken)
        while True:  # the failure reaches write() or close(), whichever comes first
            await sink.write(await source.recv())
    source.stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


async def test_input_bytes_never_change(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mkv", frames=12, audio="libopus", subtitles="srt")
    digest = _sha(clip.path)
    await _run(clip.path, tmp_path / "out.mkv", _paint_every_third)
    assert _sha(clip.path) == digest


async def test_cut_stream_is_written_up_to_the_cut(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.ts", frames=30, format="mpegts", audio="aac")
    data = clip.path.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[:len(data) // 2 + 77])
    out = tmp_path / "out.mp4"
    source = await _run(cut, out)
    assert source.truncated
    got = _times(out)
    assert 5 < len(got) < 30 and got == _times(clip.path)[:len(got)]
    assert len(stream_packets(out, "audio")) > 0


async def test_context_manager_closes_or_aborts(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=4)
    source = VideoFileSource(clip.path)
    async with VideoFileSink(tmp_path / "ok.mp4", source) as sink:
        for _ in range(4):
            await sink.write(await source.recv())
    source.stop()
    assert len(decoded_frames(tmp_path / "ok.mp4")) == 4
    source = VideoFileSource(clip.path)
    with pytest.raises(KeyError):
        async with VideoFileSink(tmp_path / "bad.mp4", source) as sink:
            await sink.write(await source.recv())
            raise KeyError("boom")
    source.stop()
    assert not (tmp_path / "bad.mp4").exists() and _leftovers(tmp_path) == []


async def test_attachments_are_kept_in_matroska_only(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clip = make_clip(tmp_path / "plain.mkv", frames=4)
    with_font = tmp_path / "font.mkv"
    with av.open(str(clip.path)) as inp, av.open(str(with_font), "w") as out:
        video = out.add_stream_from_template(inp.streams.video[0])
        out.add_attachment("font.ttf", "font/ttf", b"not really a font" * 4)
        for packet in inp.demux(inp.streams.video[0]):
            if packet.size:
                packet.stream = video
                out.mux(packet)
    await transcode(with_font, tmp_path / "out.mkv")
    with av.open(str(tmp_path / "out.mkv")) as container:
        attachment = next(s for s in container.streams if s.type == "attachment")
        assert attachment.name == "font.ttf" and attachment.data == b"not really a font" * 4
    with caplog.at_level(logging.WARNING, logger="stream.sinks"):
        await transcode(with_font, tmp_path / "out.mp4")
    assert "not copying font.ttf attachment stream #1" in caplog.text
    assert len(decoded_frames(tmp_path / "out.mp4")) == 4


@pytest.mark.parametrize(("size", "region"), [((160, 120), (30, 20, 91, 77)), ((96, 100), (1, 3, 50, 53))])
async def test_dirty_regions_are_written_back_into_the_decoded_planes(tmp_path: Path, size, region) -> None:
    """Only the changed regions go back through RGB: every other Y/U/V sample is the decoder's own."""
    clip = make_clip(tmp_path / "in.mp4", size=size, frames=3).path
    source = VideoFileSource(clip)
    sink = VideoFileSink(tmp_path / "out.mp4", source)
    try:
        frame = await source.recv()
        x0, y0, x1, y1 = region
        frame.image[y0:y1, x0:x1] = (250, 10, 120)
        frame.modified, frame.dirty = True, [region]
        before = frame.source.to_ndarray()  # the regions are written into the decoded frame itself
        patched = frame.decoded_frame()
        assert patched is not None
        after = patched.to_ndarray()
        w, h = size
        changed = before != after
        luma = changed.reshape(-1)[: w * h].reshape(h, w)
        ys, xs = np.nonzero(luma)
        # Changes stay within the region widened to even bounds (4:2:0 chroma pairs).
        assert ys.min() >= (y0 & ~1) and ys.max() < y1 + 1 and xs.min() >= (x0 & ~1) and xs.max() < x1 + 1
        full = sink._from_rgb(frame.image).to_ndarray()
        # Inside the region the result equals a whole-frame conversion.
        np.testing.assert_array_equal(after.reshape(-1)[: w * h].reshape(h, w)[y0 + 1:y1 - 1, x0 + 1:x1 - 1],
                                      full.reshape(-1)[: w * h].reshape(h, w)[y0 + 1:y1 - 1, x0 + 1:x1 - 1])
        frame.dirty = []
        assert frame.decoded_frame() is None, "no regions: the caller converts the whole frame"
    finally:
        await sink.abort()
        source.stop()
