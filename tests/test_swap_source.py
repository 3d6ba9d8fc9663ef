"""SOURCE as a video: the bank holds one face per sampled frame, and each target gets the nearest pose."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from stream.demo import sample_faces
from stream.swap import load_source_bank
from stream.tracking import detect_faces
from tests.mediautil import read_frames
from tests.test_swap_cli import facestream


def _portrait(turn: float = 0.0) -> np.ndarray:
    """Grace Hopper, seen as if turned: a trapezoid warp (one side taller) reads as a few degrees of yaw."""
    image = cv2.cvtColor(cv2.imread(str(sample_faces()[1])), cv2.COLOR_BGR2RGB)
    image = np.ascontiguousarray(image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2])
    h, w = image.shape[:2]
    d = turn * h
    m = cv2.getPerspectiveTransform(np.float32([[0, 0], [w, 0], [w, h], [0, h]]),
                                    np.float32([[0, d], [w, -d], [w, h + d], [0, h - d]]))
    return cv2.warpPerspective(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE)


@pytest.fixture(scope="module")
def source_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Grace Hopper turned one way for 6 frames, then the other way for 6."""
    path = tmp_path_factory.mktemp("src") / "source.mp4"
    views = (_portrait(0.12), _portrait(-0.12))
    h, w = views[0].shape[:2]
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        v.options = {"crf": "16"}
        for i in range(12):
            vf = av.VideoFrame.from_ndarray(views[i >= 6], format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, 10)
            out.mux(v.encode(vf))
        out.mux(v.encode(None))
    return path


def test_bank_from_video_picks_the_nearest_pose(source_video: Path):
    bank = load_source_bank(source_video, max_frames=12)
    assert len(bank) == 12
    yaws = np.array([f.pose.yaw for f in bank.faces])
    assert (yaws[:6] > 2).all() and (yaws[6:] < -2).all(), yaws
    # Crops, not full frames, are kept; landmarks are in crop pixels and lie inside it.
    for face in bank.faces:
        hh, ww = face.image.shape[:2]
        assert face.landmarks[:, 0].min() >= 0 and face.landmarks[:, 0].max() < ww
        assert face.landmarks[:, 1].min() >= 0 and face.landmarks[:, 1].max() < hh
    for image, want in ((_portrait(0.1), slice(0, 6)), (_portrait(-0.1), slice(6, 12))):
        pose = detect_faces(image, max_faces=1)[0].pose
        chosen = bank.nearest(pose)[0]
        assert chosen.frame_index in range(12)[want], (pose.yaw, chosen.frame_index)


def test_swap_with_a_source_video(source_video: Path, tmp_path: Path):
    from tests.mediautil import write_face_clip

    clip = write_face_clip(tmp_path / "target.mp4", frames=10, empty_head=1, empty_tail=1, audio=False)
    out = tmp_path / "out.mp4"
    r = facestream("swap", "--source", source_video, clip, "-o", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert read_frames(out)[1] == read_frames(clip)[1]
