"""`facestream swap` end to end: real media made with PyAV, real MediaPipe, the real CLI process."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from stream.demo import sample_faces
from tests.mediautil import packet_summary, psnr, read_frames, write_face_clip, xmp_description

REPO = Path(__file__).resolve().parents[1]


def facestream(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # The package is importable from any working directory, installed or not.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "stream", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    _, hopper = sample_faces()
    # Variable frame rate: irregular gaps between timestamps.
    rng = np.random.default_rng(3)
    vfr_pts = np.cumsum(rng.integers(800, 2600, size=24)).tolist()
    return {
        "source": Path(hopper),
        "cfr": write_face_clip(d / "cfr.mp4"),
        "vfr": write_face_clip(d / "vfr.mkv", pts=vfr_pts, time_base=Fraction(1, 48000)),
    }


@pytest.fixture(scope="module")
def swapped(media: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("out")
    out, report = d / "out.mp4", d / "report.json"
    before = sha256(media["cfr"])
    r = facestream("swap", "--source", media["source"], media["cfr"], "-o", out, "--report", report, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert sha256(media["cfr"]) == before, "the input must never be touched"
    return {"out": out, "report": json.loads(report.read_text()), "stderr": r.stderr, "dir": d}


def test_every_frame_and_timestamp_survive(media, swapped):
    (_, pts_in), (_, pts_out) = read_frames(media["cfr"]), read_frames(swapped["out"])
    assert pts_out == pts_in
    assert swapped["report"]["frames"] == len(pts_in)


def test_audio_is_copied_not_reencoded(media, swapped):
    audio_in = packet_summary(media["cfr"], "audio")
    assert audio_in, "fixture must have audio"
    assert packet_summary(swapped["out"], "audio") == audio_in


def test_output_is_tagged_synthetic(swapped):
    with av.open(str(swapped["out"])) as c:
        tags = {k.lower(): v for k, v in c.metadata.items()}
    assert tags.get("synthetic") == "true"
    assert "facestream" in tags.get("comment", "").lower() or "facestream" in tags
    xmp = xmp_description(swapped["out"])
    assert xmp["{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}DigitalSourceType"].endswith("/compositeSynthetic")
    assert xmp["{http://purl.org/dc/elements/1.1/}description"] == tags["comment"]


def test_frames_without_a_face_are_unchanged_beyond_encoding(media, swapped):
    frames_in, _ = read_frames(media["cfr"])
    frames_out, _ = read_frames(swapped["out"])
    report = swapped["report"]
    assert report["frames_without_face"] >= 8  # 4 empty frames at each end
    for i in [0, 1, 2, 3, len(frames_in) - 1]:
        assert psnr(frames_in[i], frames_out[i]) >= 38.0, f"frame {i}"


class FaceAligner:
    """Aligns faces to the source face's own landmark layout, for an identity comparison.

    All 468 mesh points fix a similarity transform; the score is the grey-level normalised cross-correlation
    over the upper face (brows, eyes, nose): where identity shows, and where the swap must not keep the
    target (the target's open mouth is kept on purpose, so the mouth is left out).
    """

    SIZE = 128
    UPPER_FACE = (70, 300, 33, 263, 234, 454, 2, 98, 327)

    def __init__(self, source: np.ndarray) -> None:
        ref = self.landmarks(source)
        assert ref is not None, "no face in the source image"
        centre = ref.mean(0)
        scale = np.linalg.norm(ref - centre, axis=1).mean()
        self.canon = ((ref - centre) / scale * 40 + self.SIZE / 2).astype(np.float32)
        mask = np.zeros((self.SIZE, self.SIZE), np.uint8)
        cv2.fillConvexPoly(mask, cv2.convexHull(self.canon[list(self.UPPER_FACE)].astype(np.int32)), 1)
        self.mask = mask.astype(bool)

    @staticmethod
    def landmarks(image: np.ndarray) -> np.ndarray | None:
        from stream.tracking import detect_faces

        faces = detect_faces(image, max_faces=1)
        return faces[0].landmarks[:468, :2].astype(np.float32) if faces else None

    def crop(self, image: np.ndarray) -> np.ndarray:
        lm = self.landmarks(image)
        assert lm is not None, "face lost"
        m, _ = cv2.estimateAffinePartial2D(lm, self.canon)
        return cv2.warpAffine(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32), m, (self.SIZE,) * 2)

    def ncc(self, a: np.ndarray, b: np.ndarray) -> float:
        a, b = a[self.mask], b[self.mask]
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_face_looks_like_the_source_and_the_rest_is_unchanged(media, swapped):
    from stream.tracking import detect_faces

    frames_in, _ = read_frames(media["cfr"])
    frames_out, _ = read_frames(swapped["out"])
    src_img = cv2.cvtColor(cv2.imread(str(media["source"])), cv2.COLOR_BGR2RGB)
    aligner = FaceAligner(src_img)
    src_crop = aligner.crop(src_img)
    margins = []
    for i in range(6, len(frames_in) - 6, 2):
        out_crop, tgt_crop = aligner.crop(frames_out[i]), aligner.crop(frames_in[i])
        to_source, to_target = aligner.ncc(out_crop, src_crop), aligner.ncc(out_crop, tgt_crop)
        margins.append(to_source - to_target)
        # Outside a generous box around the target face, the frame is unchanged beyond encoding.
        x0, y0, x1, y1 = detect_faces(frames_in[i], max_faces=1)[0].bbox
        w, h = x1 - x0, y1 - y0
        mask = np.ones(frames_in[i].shape[:2], bool)
        mask[max(0, int(y0 - h)):int(y1 + h), max(0, int(x0 - w)):int(x1 + w)] = False
        assert psnr(frames_in[i][mask], frames_out[i][mask]) >= 38.0, f"frame {i} changed outside the face"
    assert len(margins) >= 4
    assert min(margins) > 0, f"output closer to the target than to the source in some frame: {margins}"
    assert float(np.mean(margins)) > 0.1, margins


def test_variable_frame_rate_survives(media, tmp_path):
    out = tmp_path / "vfr_out.mkv"
    r = facestream("swap", "--source", media["source"], media["vfr"], "-o", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    _, pts_in = read_frames(media["vfr"])
    _, pts_out = read_frames(out)
    with av.open(str(media["vfr"])) as a, av.open(str(out)) as b:
        tb_in, tb_out = a.streams.video[0].time_base, b.streams.video[0].time_base
    assert [p * tb_out for p in pts_out] == [p * tb_in for p in pts_in]


def test_a_black_and_white_video_gets_its_faces_swapped_without_colour(media, tmp_path):
    # An IR camera at night, an old film: the source's colours must not tint the face pasted into it.
    clip = write_face_clip(tmp_path / "grey.mp4", frames=16, audio=False, grey=True)
    out, report = tmp_path / "grey_out.mp4", tmp_path / "grey.json"
    r = facestream("swap", "--source", media["source"], clip, "-o", out, "--report", report, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads(report.read_text())["frames_with_faces"] >= 6

    def chroma(path: Path) -> np.ndarray:
        with av.open(str(path)) as c:
            return np.stack([f.to_ndarray(format="yuv420p")[f.height:] for f in c.decode(video=0)]).astype(int) - 128

    assert np.abs(chroma(clip)).max() == 0, "the fixture must be black and white"
    planes_in, planes_out = read_frames(clip)[0], read_frames(out)[0]
    changed = max(int((np.abs(a.astype(int) - b) > 30).sum()) for a, b in zip(planes_in, planes_out, strict=True))
    assert changed > 2000, f"the faces must have been swapped: {changed} values changed by over 30 levels"
    tint = int(np.abs(chroma(out)).max())
    assert tint <= 1, f"colour came into the black-and-white video: up to {tint} levels of chroma"


def test_faces_largest_and_report(media, swapped, tmp_path):
    report = swapped["report"]
    for key in ("frames", "frames_with_faces", "frames_without_face", "ms_per_frame", "fps", "distinct_faces"):
        assert key in report
    assert report["frames_with_faces"] >= 12
    assert {"decode", "track"} <= set(report["ms_per_frame"])
    # The patch carry took some faces, never more than there were; the others went through the stages.
    assert 0 < report["faces_carried"] < report["face_detections"]
    # A fresh process whose largest phase is the run: its peak is the kernel's mark, above where it began.
    memory = report["memory"]
    assert memory["peak_exact"] is True and memory["rss_peak_mib"] > memory["rss_start_mib"] > 0
    out = tmp_path / "largest.mp4"
    r = facestream("swap", "--source", media["source"], media["cfr"], "-o", out, "--faces", "largest",
                   "--no-progress")
    assert r.returncode == 0, r.stderr
    assert out.exists()


def _video_packets(path: Path, index: int) -> list[tuple[int | None, bytes]]:
    with av.open(str(path)) as c:
        return [(p.pts, bytes(p)) for p in c.demux(c.streams[index]) if p.size]


def test_a_further_video_stream_is_copied_unchanged_with_a_warning(media, swapped, tmp_path):
    # A multi-track recording: the same picture twice. Only the first is swapped; the second keeps the
    # original face, which the user must be told (and the report says which streams).
    assert swapped["report"]["unswapped_video_streams"] == []
    assert "copied unchanged" not in swapped["stderr"]
    clip = tmp_path / "two.mp4"
    with av.open(str(media["cfr"])) as src, av.open(str(clip), "w") as out:
        tracks = [out.add_stream_from_template(src.streams.video[0]) for _ in range(2)]
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                for track in tracks:
                    packet.stream = track
                    out.mux(packet)
    out, report = tmp_path / "out.mp4", tmp_path / "report.json"
    r = facestream("swap", "--source", media["source"], clip, "-o", out, "--report", report, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"{clip}: video stream #1 is copied unchanged: only stream #0 has its faces swapped" in r.stderr
    assert json.loads(report.read_text())["unswapped_video_streams"] == [1]
    assert _video_packets(out, 1) == _video_packets(clip, 1)
    assert _video_packets(out, 0) != _video_packets(clip, 0)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_outputs_get_the_permissions_of_any_new_file(swapped):
    # Not mkstemp's private 0600: a web server or another user reads the video like any file made here.
    expected = 0o666 & ~_umask()
    for name in ("out.mp4", "report.json"):
        assert (swapped["dir"] / name).stat().st_mode & 0o777 == expected, name


@pytest.mark.parametrize("turn", [cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180])
def test_a_photo_lying_on_its_side_or_upside_down_has_its_face_swapped(media, tmp_path, turn):
    # No EXIF tag says which way is up (a scan; a photo whose tag was stripped): the face is found the way up it
    # stands, swapped, and the photo comes out as it went in, turned as it was.
    astronaut, _ = sample_faces()
    upright = np.ascontiguousarray(astronaut[:, 40:470])
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), cv2.cvtColor(cv2.rotate(upright, turn), cv2.COLOR_RGB2BGR))
    out, report = tmp_path / "out.png", tmp_path / "report.json"
    r = facestream("-v", "swap", "--source", media["source"], photo, "-o", out, "--report", report, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "the faces of the photo stand upright with it turned" in r.stderr
    assert json.loads(report.read_text())["frames_with_faces"] == 1
    got = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    back = {cv2.ROTATE_90_CLOCKWISE: cv2.ROTATE_90_COUNTERCLOCKWISE, cv2.ROTATE_180: cv2.ROTATE_180}[turn]
    got = cv2.rotate(got, back)
    assert got.shape == upright.shape
    src_img = cv2.cvtColor(cv2.imread(str(media["source"])), cv2.COLOR_BGR2RGB)
    aligner = FaceAligner(src_img)
    out_crop = aligner.crop(got)
    assert aligner.ncc(out_crop, aligner.crop(src_img)) > aligner.ncc(out_crop, aligner.crop(upright)) + 0.05
    assert psnr(got[:, :60], upright[:, :60]) >= 38.0 and psnr(got[-60:], upright[-60:]) >= 38.0


@pytest.mark.parametrize(("photo_suffix", "suffix"), [(".jpg", ".png"), (".jpg", ".jpg"), (".webp", ".webp")])
def test_a_photo_swapped_into_an_image_is_upright_and_marked_synthetic(media, tmp_path, photo_suffix, suffix):
    from PIL import Image, ImageOps

    astronaut, _ = sample_faces()
    upright = np.ascontiguousarray(astronaut[:, 40:470])  # 512 x 430: a turn shows in the size
    photo = tmp_path / f"photo{photo_suffix}"
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise, as a phone held upright stores it
    exif[0x010F], exif[0x0132] = "Test Camera Co", "2026:11:22 10:00:00"  # Make, DateTime
    icc = _icc_profile()
    Image.fromarray(np.rot90(upright, 1)).save(photo, exif=exif.tobytes(), icc_profile=icc, quality=98,
                                               **({"subsampling": 0} if photo_suffix == ".jpg" else {}))
    out = tmp_path / f"out{suffix}"
    before = sha256(photo)
    r = facestream("swap", "--source", media["source"], photo, "-o", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert sha256(photo) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([photo.name, out.name]), "no temporary file left"
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()
    with Image.open(out) as im:
        got = np.asarray(im.convert("RGB"))
        info = dict(im.info)
    assert got.shape == upright.shape  # the pixels are turned upright, not left to a tag
    # The face is the source's; away from it the photo is unchanged beyond (JPEG) coding.
    src_img = cv2.cvtColor(cv2.imread(str(media["source"])), cv2.COLOR_BGR2RGB)
    aligner = FaceAligner(src_img)
    out_crop = aligner.crop(got)
    assert aligner.ncc(out_crop, aligner.crop(src_img)) > aligner.ncc(out_crop, aligner.crop(upright)) + 0.05
    with Image.open(photo) as im:  # decoded and turned by its EXIF tag
        seen = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert psnr(got[:, :60], seen[:, :60]) >= 38.0 and psnr(got[-60:], seen[-60:]) >= 38.0
    # Marked as synthetic where image tools look: IPTC Digital Source Type in XMP, and text fields.
    xmp = info["xmp"].decode() if isinstance(info["xmp"], bytes) else info["xmp"]
    assert "digitalsourcetype/compositeSynthetic" in xmp and "facestream" in xmp
    if suffix == ".png":
        assert info["synthetic"] == "true" and "facestream" in info["Comment"] and "facestream" in info["Software"]
    elif suffix == ".jpg":
        assert b"Synthetic media" in info["comment"]
    else:  # WebP has no text chunks: the XMP packet holds the comment
        assert "Synthetic media" in xmp
    # What the photo carried is kept: its colour profile, and its EXIF with the orientation now upright.
    assert info["icc_profile"] == icc
    with Image.open(out) as im:
        kept = im.getexif()
    assert kept[0x010F] == "Test Camera Co" and kept[0x0132] == "2026:11:22 10:00:00" and kept[0x0112] == 1


def _icc_profile() -> bytes:
    """A real ICC profile (littleCMS's sRGB), as a camera or phone embeds one."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_bench_measures_the_swap_against_the_transcode_floor_of_the_same_run(media, tmp_path):
    out = tmp_path / "bench.json"
    before = sha256(media["cfr"])
    r = facestream("bench", media["cfr"], "--source", media["source"], "--json", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sha256(media["cfr"]) == before
    assert "swap / transcode floor:" in r.stdout and "end-to-end fps" in r.stdout
    result = json.loads(out.read_text())
    floor, swap = result["transcode_floor"], result["swap"]
    frames = len(read_frames(media["cfr"])[1])
    assert floor["frames"] == swap["frames"] == frames
    assert floor["fps"] > 0 and swap["fps"] > 0
    assert result["ratio_to_floor"] == pytest.approx(swap["fps"] / floor["fps"], abs=1e-3)
    added = 1000 / swap["fps"] - 1000 / floor["fps"]
    assert result["added_ms_per_frame"] == pytest.approx(added, abs=1e-3)
    assert f"the swap adds {result['added_ms_per_frame']:.2f} ms of wall time per frame" in r.stdout
    # Per step, as the issue asks: decode, track, each stage, encode (the floor has no track or stages).
    assert {"decode", "encode"} <= set(floor["ms_per_frame"]) and "track" not in floor["ms_per_frame"]
    assert {"decode", "track", "mesh_warp", "mesh_segment", "inpaint", "blend_poisson", "encode"} <= set(
        swap["ms_per_frame"])
    assert swap["frames_with_faces"] > 0
    # On 2 cores tracking and the stages share one thread, and the table says so; apart with more cores.
    assert swap["split_steps"] is (result["machine"]["cpus"] > 2)
    assert ("track and swap one after the other" in r.stdout) is not swap["split_steps"]
    # Too short a clip for the encoder to prove the bottleneck; the table says when it did.
    assert swap["priority_lowered_at"] is None and "the encoder set the pace" not in r.stdout
    from stream.bench import format_swap_table

    result["swap"]["priority_lowered_at"] = 60
    assert "the encoder set the pace: from frame 60 on" in format_swap_table(result)
    # The process's CPU time: the swap does everything the floor does and more.
    assert 0 < floor["cpu_ms_per_frame"] < swap["cpu_ms_per_frame"]
    assert floor["cores_busy"] > 0 and swap["cores_busy"] > 0
    assert "cpu ms/frame" in r.stdout
    # Memory per run: each run's own peak (the bench lowers the process's mark before each); the swap holds
    # MediaPipe and the stages on top of what the floor holds.
    for run in (floor, swap):
        memory = run["memory"]
        assert memory["peak_exact"] is True
        assert memory["rss_peak_mib"] >= max(memory["rss_start_mib"], memory["rss_end_mib"]) > 0
        assert memory["growth_mib_per_1000_frames"] is None  # a clip this short shows only the warm-up
    assert swap["memory"]["rss_peak_mib"] > floor["memory"]["rss_peak_mib"]
    assert f"{'peak RSS MiB':<16}{floor['memory']['rss_peak_mib']:>16.0f}" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]  # its videos went to a temp dir


def test_bench_breakdown_separates_tracking_from_the_stages(media, tmp_path):
    out = tmp_path / "breakdown.json"
    r = facestream("bench", media["cfr"], "--source", media["source"], "--breakdown", "--json", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["breakdown"]
    assert list(rows) == ["transcode floor", "full", "tracking only", "stages only"]
    frames = len(read_frames(media["cfr"])[1])
    assert {row["frames"] for row in rows.values()} == {frames}
    floor = rows["transcode floor"]
    assert floor["added_ms_per_frame"] == 0 and floor["ratio_to_floor"] == 1
    for name in ("full", "tracking only", "stages only"):
        row = rows[name]
        assert row["ratio_to_floor"] == pytest.approx(row["fps"] / floor["fps"], abs=1e-3)
        assert row["added_ms_per_frame"] == pytest.approx(1000 / row["fps"] - 1000 / floor["fps"], abs=1e-2)
        assert row["cpu_ms_per_frame"] > floor["cpu_ms_per_frame"], name  # each does more than the floor
    for row in rows.values():
        assert row["memory"]["rss_peak_mib"] >= row["memory"]["rss_start_mib"] > 0
    assert "tracking only" in r.stdout and "stages only" in r.stdout and "peak MiB" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["breakdown.json"]


def test_swap_hooks_run_tracking_alone_or_the_stages_on_given_faces(media, tmp_path):
    """The bench's variants: without stages every frame goes out unmodified (faces still tracked); with
    replayed faces the stages swap exactly the frames that have them."""
    from stream.bench import ReplayFaces, tracked_faces
    from stream.swap import SwapOptions, swap_video

    options = SwapOptions(source=media["source"], input=media["cfr"], output=tmp_path / "a.mp4", progress=False)
    alone = asyncio.run(swap_video(options, stages=False))
    assert alone["frames_modified"] == 0 and alone["frames_with_faces"] > 0
    faces = tracked_faces(media["cfr"])
    keep = {i: f for i, f in faces.items() if i % 2 == 0}
    replayed = asyncio.run(swap_video(dataclasses.replace(options, output=tmp_path / "b.mp4"),
                                      tracker=ReplayFaces(keep)))
    assert replayed["frames_with_faces"] == sum(1 for f in keep.values() if f)
    assert replayed["frames_modified"] == replayed["frames_with_faces"]


def test_tracking_and_stages_on_one_thread_or_two_give_the_same_video(media, tmp_path):
    """Where cores are few, tracking and the stage chain run one after the other on one thread: the
    frames come out exactly as from two threads, and the report still times each step."""
    from stream.swap import SwapOptions, swap_video

    options = SwapOptions(source=media["source"], input=media["cfr"], output=tmp_path / "two.mp4", progress=False)
    two = asyncio.run(swap_video(dataclasses.replace(options, split_steps=True)))
    one = asyncio.run(swap_video(dataclasses.replace(options, output=tmp_path / "one.mp4", split_steps=False)))
    assert one["split_steps"] is False and two["split_steps"] is True
    assert one["frames_modified"] == two["frames_modified"] > 0
    assert one["frames"] == two["frames"] and one["distinct_faces"] == two["distinct_faces"]
    for report in (one, two):
        assert report["ms_per_frame"]["track"] > 0 and report["ms_per_frame"]["swap"] > 0
    a, pts_a = read_frames(tmp_path / "one.mp4")
    b, pts_b = read_frames(tmp_path / "two.mp4")
    assert pts_a == pts_b and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="only Linux gives threads a niceness of their own")
def test_processing_yields_to_the_encoder_only_when_the_encoder_sets_the_pace(tmp_path):
    """x264's slowest preset makes the encoder the bottleneck: once its lookahead (60 frames) is full its
    queue stays full, and the tracking and stage threads are lowered in priority, only they. Its fastest
    leaves the pace to the stages: nothing is lowered. Either way the video is whole."""
    from stream.swap import SwapOptions, swap_video

    _, hopper = sample_faces()
    clip = write_face_clip(tmp_path / "in.mp4", width=480, height=270, frames=160, empty_head=0, empty_tail=0,
                           audio=False)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    runs = {}
    for name, preset, on in (("slow", "placebo", True), ("fast", "ultrafast", True), ("off", "placebo", False)):
        options = SwapOptions(source=Path(hopper), input=clip, output=tmp_path / f"{name}.mp4", progress=False,
                              preset=preset, yield_to_encoder=on)
        runs[name] = asyncio.run(swap_video(options))
        assert runs[name]["frames"] == 160 and runs[name]["frames_modified"] > 150
    assert 60 + 45 <= runs["slow"]["priority_lowered_at"] < 160
    assert runs["fast"]["priority_lowered_at"] is None and runs["off"]["priority_lowered_at"] is None
    assert 0 < runs["slow"]["steps_busy"] <= 0.45 and runs["off"]["steps_busy"] is None  # under max_busy
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the caller's thread keeps its priority


def test_demo_builds_the_sample_clip_swaps_it_and_says_where(tmp_path):
    d = tmp_path / "demo"
    r = facestream("demo", "--output-dir", d, "--frames", "24", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = d / "swapped.mp4"
    assert f"result:  {result}" in r.stdout
    assert {"target.mp4", "source.jpg", "swapped.mp4", "before_after.png", "report.json"} <= {
        p.name for p in d.iterdir()}
    (_, pts_in), (_, pts_out) = read_frames(d / "target.mp4"), read_frames(result)
    assert pts_out == pts_in and len(pts_in) == 24
    report = json.loads((d / "report.json").read_text())
    assert report["frames_with_faces"] > 0 and report["frames_modified"] == report["frames_with_faces"]
    with av.open(str(result)) as c:
        assert c.metadata.get("synthetic") == "true"


def test_sensor_noise_changes_every_frame_by_sigma_and_keeps_the_scene() -> None:
    from stream.demo import render_target_frames

    still = list(render_target_frames(320, 180, 4, empty_head=1, empty_tail=0))
    noisy = list(render_target_frames(320, 180, 4, empty_head=1, empty_tail=0, sensor_noise=3.0))
    for a, b in zip(still, noisy, strict=True):
        d = b.astype(np.float32) - a.astype(np.float32)
        assert abs(float(d.mean())) < 0.2 and 2.7 < float(d.std()) < 3.3
    # Fresh noise in every frame: the still background (a corner the face never reaches) moves.
    assert np.array_equal(still[0][:20, :20], still[1][:20, :20])
    moved = np.abs(noisy[1][:20, :20].astype(np.float32) - noisy[0][:20, :20]).mean()
    assert float(moved) > 2.0  # two independent draws of sigma 3: about 3.4 on average


def test_demo_with_sensor_noise_builds_a_noisy_clip_and_refuses_a_negative_sigma(tmp_path):
    d = tmp_path / "noisy"
    r = facestream("demo", "--output-dir", d, "--frames", "3", "--sensor-noise", "4", "--no-swap", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    frames, _ = read_frames(d / "target.mp4")
    corner = [f[:40, :40].astype(np.float32) for f in frames]
    assert float(np.abs(corner[1] - corner[0]).mean()) > 2.0  # no face there: only the noise moves
    bad = tmp_path / "bad"
    r = facestream("demo", "--output-dir", bad, "--sensor-noise", "-1", "--no-swap", cwd=tmp_path)
    assert r.returncode != 0 and "sensor noise" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not bad.exists()


# ---- bad input: one line, exit code != 0, no traceback, no output, input untouched ----

def _bad_inputs(tmp: Path, media: dict[str, Path]) -> dict[str, tuple[list[str | Path], str]]:
    text = tmp / "notes.txt"
    text.write_text("this is not a video\n" * 50)
    truncated = tmp / "cut.mp4"
    data = media["cfr"].read_bytes()
    # Keep the header but drop the end of the file: with moov at the end, the index is gone.
    truncated.write_bytes(data[: len(data) // 2])
    noface = tmp / "wall.png"
    cv2.imwrite(str(noface), np.full((256, 256, 3), 120, np.uint8))
    broken_img = tmp / "broken.jpg"
    broken_img.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 40)
    src = media["source"]
    return {
        "missing input": (["--source", src, tmp / "nope.mp4"], "not found"),
        "missing source": (["--source", tmp / "nope.jpg", media["cfr"]], "not found"),
        "not a video": (["--source", src, text], "notes.txt"),
        "truncated mp4": (["--source", src, truncated], "cut.mp4"),
        "no face in source": (["--source", noface, media["cfr"]], "no face"),
        "unreadable image": (["--source", broken_img, media["cfr"]], "broken.jpg"),
    }


@pytest.mark.parametrize("case", ["missing input", "missing source", "not a video", "truncated mp4",
                                  "no face in source", "unreadable image"])
def test_bad_input_gets_one_line_and_no_output(case, media, tmp_path):
    args, needle = _bad_inputs(tmp_path, media)[case]
    out = tmp_path / "out.mp4"
    before = {p: sha256(p) for p in tmp_path.iterdir()}
    r = facestream("swap", *args, "-o", out, "--no-progress")
    assert r.returncode != 0
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("facestream: error:"), r.stderr
    assert needle.lower() in lines[0].lower()
    assert "Traceback" not in r.stderr
    assert not out.exists()
    assert {p: sha256(p) for p in tmp_path.iterdir()} == before, "no file created, none changed"


BAD_OPTIONS = {
    "report is the input": (["swap", "--source", "{src}", "{clip}", "-o", "{out}", "--report", "{clip}"],
                            "--report"),
    "report in a missing directory": (["swap", "--source", "{src}", "{clip}", "-o", "{out}", "--report",
                                       "{tmp}/nope/r.json"], "does not exist"),
    "output is the source": (["swap", "--source", "{clip2}", "{clip}", "-o", "{clip2}"], "same file as SOURCE"),
    "crf out of range": (["swap", "--source", "{src}", "{clip}", "-o", "{out}", "--crf", "99"], "crf 99"),
    "unknown preset": (["swap", "--source", "{src}", "{clip}", "-o", "{out}", "--preset", "warp"], "preset 'warp'"),
    "bench json is the input": (["bench", "{clip}", "--source", "{src}", "--json", "{clip}"], "--json"),
    "image output of a video": (["swap", "--source", "{src}", "{clip}", "-o", "{tmp}/out.png"],
                                "needs an image INPUT"),
    "encoder options for an image": (["swap", "--source", "{src}", "{src}", "-o", "{tmp}/out.jpg", "--crf", "20"],
                                     "--crf set the video encoder"),
    "unknown output extension": (["swap", "--source", "{src}", "{clip}", "-o", "{tmp}/out.gif"], "'.gif'"),
    # A photo's user is told which image outputs there are, not only the video ones.
    "unknown image extension": (["swap", "--source", "{src}", "{src}", "-o", "{tmp}/out.tif"], ".png, .jpg"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_options_get_one_line_and_touch_nothing(case, media, tmp_path):
    # Checked before the run: no output, and above all no input replaced by a report.
    clip, clip2 = tmp_path / "in.mp4", tmp_path / "in2.mp4"
    clip.write_bytes(media["cfr"].read_bytes())
    clip2.write_bytes(media["cfr"].read_bytes())
    template, needle = BAD_OPTIONS[case]
    args = [a.format(src=media["source"], clip=clip, clip2=clip2, out=tmp_path / "out.mp4", tmp=tmp_path)
            for a in template]
    before = {p: sha256(p) for p in tmp_path.iterdir()}
    r = facestream(*args, "--no-progress" if args[0] == "swap" else "--repeat=1", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("facestream: error:") and needle in lines[0], r.stderr
    assert {p: sha256(p) for p in tmp_path.iterdir()} == before, "no file created, none changed"


@pytest.mark.parametrize(("argv", "needle"), [
    (["demo", "--output-dir", "{tmp}/file.txt"], "is a file, not a directory"),
    (["demo", "--frames", "0", "--output-dir", "{tmp}/d"], "--frames must be at least 1"),
    (["bench", "{tmp}/file.txt", "--repeat", "0"], "--repeat must be at least 1"),
    (["bench", "--live", "--duration", "0"], "--duration must be a positive"),
    (["bench", "--engines", "--batch", "0"], "--batch must be at least 1"),
], ids=["demo dir is a file", "demo no frames", "bench repeat 0", "live bench duration 0", "engines batch 0"])
def test_demo_and_bench_options_get_one_line(argv, needle, tmp_path, capsys):
    from stream.cli import main

    (tmp_path / "file.txt").write_text("not a directory")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("facestream: error:") and needle in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_output_equal_to_input_is_refused(media, tmp_path):
    clip = tmp_path / "same.mp4"
    clip.write_bytes(media["cfr"].read_bytes())
    before = sha256(clip)
    r = facestream("swap", "--source", media["source"], clip, "-o", clip, "--no-progress")
    assert r.returncode != 0 and "same file" in r.stderr and "Traceback" not in r.stderr
    assert sha256(clip) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.mp4"]


def test_output_hard_linked_to_input_is_refused(media, tmp_path):
    import os

    clip = tmp_path / "in.mp4"
    clip.write_bytes(media["cfr"].read_bytes())
    link = tmp_path / "link.mp4"
    os.link(clip, link)
    before = sha256(clip)
    r = facestream("swap", "--source", media["source"], clip, "-o", link, "--no-progress")
    assert r.returncode != 0 and "same file" in r.stderr and "Traceback" not in r.stderr
    assert sha256(clip) == before


@pytest.mark.parametrize(("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "terminated")], ids=["SIGINT", "SIGTERM"])
def test_a_stopped_run_leaves_nothing_behind(tmp_path, sig, code, word):
    # Ctrl-C, or kill / docker stop / systemd (SIGTERM) while frames are being written.
    clip = write_face_clip(tmp_path / "long.mp4", frames=600, audio=False, empty_head=0, empty_tail=0, crf=23)
    work = tmp_path / "out"
    work.mkdir()
    before = sha256(clip)
    _, hopper = sample_faces()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "stream", "swap", "--source", hopper, clip, "-o",
                             work / "out.mp4", "--no-progress"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(work.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # the temporary output appears once the pipeline runs
        assert proc.poll() is None, "the run ended before it could be stopped"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert err.splitlines()[-1] == f"facestream: {word}", err
    assert "Traceback" not in err
    assert list(work.iterdir()) == [], "no output, no temporary file"
    assert sha256(clip) == before


def test_pipeline_commands_run_opencv_on_one_thread(tmp_path):
    from stream.cli import main

    cv2.setNumThreads(4)
    try:
        assert main(["models", "--json"]) == 0  # a command outside the pipeline
        others = cv2.getNumThreads()
        missing = tmp_path / "missing.mp4"
        assert main(["swap", "--source", str(missing), str(missing), "-o", str(tmp_path / "out.mp4")]) == 1
        assert cv2.getNumThreads() == 1, "the pipeline parallelises frames; OpenCV's pool would only add hand-offs"
        assert others == 4, "commands outside the pipeline leave OpenCV as it was"
    finally:
        cv2.setNumThreads(-1)


class _Terminal(io.StringIO):
    """stderr as a terminal shows it: '\r' returns to the start of the line, later text overwrites."""

    def isatty(self) -> bool:
        return True

    def screen(self) -> list[str]:
        lines = []
        for raw in self.getvalue().split("\n"):
            line = ""
            for part in raw.split("\r"):
                line = part + line[len(part):]
            lines.append(line.rstrip())
        return lines


def test_progress_line_gives_way_to_the_summary(monkeypatch):
    from stream import swap

    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    clock = itertools.count()  # a second between frames: every one is shown
    monkeypatch.setattr(swap.time, "monotonic", lambda: float(next(clock)))
    progress = swap.Progress(total=300, enabled=True)
    for _ in range(271):
        progress(None)
    assert term.screen() == ["facestream: frame 271/300    1.0 fps"]
    progress.done()  # the run wrote all 300: no stale "271/300" may stay above the summary
    print("facestream: wrote out.mp4", file=sys.stderr)
    assert term.screen() == ["facestream: wrote out.mp4", ""]
