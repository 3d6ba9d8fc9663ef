"""SOURCE as a video: the bank holds one face per sampled frame, and each target gets the nearest pose."""

from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from stream.demo import sample_faces
from stream.exceptions import NoFaceError
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
    return _write_views(tmp_path_factory.mktemp("src") / "source.mp4", (_portrait(0.12), _portrait(-0.12)))


def _write_views(path: Path, views: tuple[np.ndarray, np.ndarray]) -> Path:
    """12 frames at 10 fps: the first view for 6, then the second for 6."""
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


def _turned_points(pts: np.ndarray, size: tuple[int, int], turn: int | None) -> np.ndarray:
    """Pixel positions ``pts`` (N, 2) of an upright image of ``size`` (w, h), in that image turned by ``turn``
    (a ``cv2.rotate`` code; None: not turned)."""
    w, h = size
    x, y = pts[:, 0], pts[:, 1]
    return {None: pts, cv2.ROTATE_90_CLOCKWISE: np.stack([h - 1 - y, x], 1),
            cv2.ROTATE_90_COUNTERCLOCKWISE: np.stack([y, w - 1 - x], 1),
            cv2.ROTATE_180: np.stack([w - 1 - x, h - 1 - y], 1)}[turn]


@pytest.mark.parametrize("turn", [cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_90_COUNTERCLOCKWISE, cv2.ROTATE_180])
def test_a_photo_lying_sideways_or_upside_down_is_turned_upright(turn: int, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture):
    # A scan, or a photo whose EXIF orientation was lost. Lying on its side the face is missed by the detector, which
    # looks for upright faces; upside down it is found, and meshed the right way up (the tracker turns a face that
    # scores higher turned: tests/test_tracking.py). The source bank turns the photo upright all the same.
    upright = _portrait()
    h, w = upright.shape[:2]
    want = detect_faces(upright, max_faces=1)[0].landmarks[:, :2]
    path = tmp_path / "turned.png"
    cv2.imwrite(str(path), cv2.cvtColor(cv2.rotate(upright, turn), cv2.COLOR_RGB2BGR))
    as_is = detect_faces(cv2.rotate(upright, turn), max_faces=1)
    assert not as_is or np.abs(as_is[0].landmarks[:, :2] - _turned_points(want, (w, h), turn)).max() < 0.01 * h
    with caplog.at_level(logging.INFO, logger="stream.swap"):
        bank = load_source_bank(path)
    assert "the source face stands upright with the image turned" in caplog.text
    (face,) = bank.faces
    assert np.array_equal(face.image, upright)
    assert np.abs(face.landmarks[:, :2] - want).max() < 0.5


def test_an_upright_photo_is_not_turned(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    path = tmp_path / "upright.png"
    upright = _portrait(0.1)
    cv2.imwrite(str(path), cv2.cvtColor(upright, cv2.COLOR_RGB2BGR))
    with caplog.at_level(logging.INFO, logger="stream.swap"):
        (face,) = load_source_bank(path).faces
    assert "turned" not in caplog.text and np.array_equal(face.image, upright)


FAR = (1700.0, 500.0)


def _far_photo() -> np.ndarray:
    """Someone far off in a 4-megapixel photo: a 60 px face at :data:`FAR`. Shrunk whole, or in its largest tiles,
    the photo shows the face too small; the way-up check, which looks at it that way, finds the face only with the
    photo turned a quarter turn (near its smallest size the detector is erratic)."""
    from tests.test_tracking import Face, _canvas

    photo = _canvas(2400, 1800)
    Face("grace_hopper", 60).paste(photo, FAR)
    return photo


def _found_far(landmarks: np.ndarray) -> bool:
    (x0, y0), (x1, y1) = landmarks[:, :2].min(axis=0), landmarks[:, :2].max(axis=0)
    return abs((x0 + x1) / 2 - FAR[0]) < 12 and abs((y0 + y1) / 2 - FAR[1]) < 12 and 45 < y1 - y0 < 80


def test_a_small_face_in_a_big_photo_is_found(tmp_path: Path):
    path = tmp_path / "far.png"
    cv2.imwrite(str(path), cv2.cvtColor(_far_photo(), cv2.COLOR_RGB2BGR))
    (face,) = load_source_bank(path).faces
    assert _found_far(face.landmarks)


def test_a_photo_inputs_small_face_the_way_up_check_saw_only_turned_is_found_as_it_stands():
    from stream.frames import Frame
    from stream.swap import UprightPhotoTracker, upright_rotation
    from stream.tracking import FaceTracker, image_tracker

    photo = _far_photo()
    with image_tracker() as t:
        assert upright_rotation(t, photo) != 0  # the case: the way-up check is misled
    step = UprightPhotoTracker(FaceTracker())
    try:
        frame = step(Frame(0, photo, pts=0, time_base=Fraction(1, 10)))
    finally:
        step.close()
    assert step.rotation == 0
    assert len(frame.faces) == 1 and _found_far(frame.faces[0].landmarks)


def test_every_face_of_a_group_photo_is_swapped(tmp_path: Path):
    # A video's tracker looks at one region a frame; a photo has one frame, and a group's faces are small in it.
    from tests.test_tracking import GROUP, group_photo

    photo, out, report = tmp_path / "group.png", tmp_path / "swapped.png", tmp_path / "report.json"
    before = group_photo(everyone="grace_hopper")
    cv2.imwrite(str(photo), cv2.cvtColor(before, cv2.COLOR_RGB2BGR))
    source = tmp_path / "astronaut.png"
    cv2.imwrite(str(source), cv2.cvtColor(sample_faces()[0], cv2.COLOR_RGB2BGR))
    r = facestream("swap", "--source", source, photo, "-o", out, "--report", report, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads(report.read_text())["face_detections"] == len(GROUP)
    after = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    for (_, height), (x, y) in GROUP:
        half = int(0.3 * height)
        box = (slice(int(y) - half, int(y) + half), slice(int(x) - half, int(x) + half))
        assert np.abs(after[box].astype(int) - before[box]).mean() > 8, f"the {height} px face was not swapped"


def test_no_face_in_a_tiny_photo_says_it_is_too_small(tmp_path: Path):
    tiny = tmp_path / "avatar.png"
    image = _portrait()
    cv2.imwrite(str(tiny), cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), (40, 46), interpolation=cv2.INTER_AREA))
    with pytest.raises(NoFaceError, match=r"no face found in SOURCE: .*avatar\.png \(a 40x46 image: too small"):
        load_source_bank(tiny)
    # A photo that size is not blamed when the face is missing for another reason.
    wall = tmp_path / "wall.png"
    cv2.imwrite(str(wall), np.full((256, 256, 3), 120, np.uint8))
    with pytest.raises(NoFaceError, match=r"wall\.png$"):
        load_source_bank(wall)


def test_a_photo_input_is_tracked_the_way_up_decided_on_its_first_frame(monkeypatch: pytest.MonkeyPatch):
    # An animated WebP or a multi-page TIFF has several frames: the detector scores the way up once, not per frame.
    from stream.frames import Frame
    from stream.swap import UprightPhotoTracker
    from stream.tracking import FaceTracker

    turned = np.ascontiguousarray(cv2.rotate(_portrait(), cv2.ROTATE_90_CLOCKWISE))
    scored: list[int] = []
    real = FaceTracker.detection_score

    def counting(self: FaceTracker, image: object, *, rotation: int = 0) -> float:
        scored.append(rotation)
        return real(self, image, rotation=rotation)

    monkeypatch.setattr(FaceTracker, "detection_score", counting)
    step = UprightPhotoTracker(FaceTracker())
    try:
        frames = [step(Frame(i, turned.copy(), pts=i, time_base=Fraction(1, 10))) for i in range(3)]
    finally:
        step.close()
    assert sorted(scored) == [0, 90, 180, 270] and step.rotation == 90
    assert all(len(f.faces) == 1 for f in frames)
    assert frames[0].rotation == 0  # the frame keeps its own rotation: it is written as it came


@pytest.mark.parametrize("turn", [cv2.ROTATE_90_COUNTERCLOCKWISE, cv2.ROTATE_90_CLOCKWISE])
def test_a_source_video_turned_with_no_rotation_tag_gives_a_face_in_every_frame(
        turn: int, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """A video re-encoded without its rotation tag: its faces lie on their side or upside down, which the
    detector, made for upright faces, mostly misses as they are. Once a frame's face is found turned upright,
    the other frames are looked at that way up too, so every frame gives a face, with its pose as upright."""
    views = (np.ascontiguousarray(cv2.rotate(_portrait(0.12), turn)),
             np.ascontiguousarray(cv2.rotate(_portrait(-0.12), turn)))
    path = _write_views(tmp_path / "turned.mp4", views)
    assert not detect_faces(views[0]) or not detect_faces(views[1])  # as they are, some frames show no face
    with caplog.at_level(logging.INFO, logger="stream.swap"):
        bank = load_source_bank(path, max_frames=12)
    assert len(bank) == 12
    assert "the source video's faces stand upright with it turned" in caplog.text
    yaws = np.array([f.pose.yaw for f in bank.faces])
    assert (yaws[:6] > 2).all() and (yaws[6:] < -2).all(), yaws
