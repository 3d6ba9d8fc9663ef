import numpy as np
import pytest

from stream.exceptions import InputError, NoFaceError
from stream.frames import CropTransform, HeadPose, SourceFace, TrackedFace
from stream.stages.base import CropSpec, SourceBank, select_faces


def pose(yaw=0.0, pitch=0.0, roll=0.0) -> HeadPose:
    return HeadPose(yaw, pitch, roll, np.eye(3), np.zeros(3))


def face(track_id: int, bbox: tuple[float, float, float, float], yaw: float = 0.0) -> TrackedFace:
    x0, y0, x1, y1 = bbox
    lm = np.zeros((478, 3), np.float32)
    lm[:, 0] = np.linspace(x0, x1, 478)
    lm[:, 1] = np.linspace(y0, y1, 478)
    return TrackedFace(track_id=track_id, landmarks=lm, pose=pose(yaw), bbox=bbox)


def test_region_crop_extract_and_paste_are_exact_slices():
    img = np.random.default_rng(0).integers(0, 255, (50, 80, 3), np.uint8)
    tf = CropTransform.region(10, 5, 40, 25)
    assert tf.is_region and tf.origin == (10, 5) and tf.size == (30, 20)
    crop = tf.extract(img)
    assert np.array_equal(crop, img[5:25, 10:40])
    crop[:] = 7
    assert not np.array_equal(img[5:25, 10:40], crop), "extract must copy"
    out = img.copy()
    alpha = np.zeros((20, 30), np.float32)
    alpha[5:15, 5:25] = 1.0
    tf.paste(out, crop, alpha)
    assert np.all(out[10:20, 15:35] == 7)
    changed = np.any(out != img, axis=-1)
    assert changed.sum() == 10 * 20, "only the alpha region changes"


def test_scaled_crop_round_trip_and_points():
    img = np.zeros((200, 300, 3), np.uint8)
    img[80:120, 130:170] = 200
    spec = CropSpec(size=64, scale=1.2)
    tf = spec.transform(face(0, (120.0, 70.0, 180.0, 130.0)), 300, 200)
    assert tf is not None and not tf.is_region and tf.size == (64, 64)
    pts = np.array([[150.0, 100.0, 10.0], [120.0, 70.0, 0.0]])
    mapped = tf.points_to_crop(pts)
    assert np.allclose(mapped[0, :2], [32, 32])  # the box centre maps to the crop centre
    assert np.isclose(mapped[0, 2], 10.0 * 64 / 72)  # z scaled with the crop
    crop = tf.extract(img)
    assert crop.shape == (64, 64, 3) and crop[32, 32, 0] == 200
    out = np.zeros_like(img)
    tf.paste(out, crop, np.ones((64, 64), np.float32))
    assert abs(int(out[100, 150, 0]) - 200) <= 1
    assert out[0, 0, 0] == 0 and out[199, 299, 0] == 0, "pixels outside the crop untouched"


def test_region_crop_is_clipped_at_the_frame_border():
    spec = CropSpec(size=None, scale=1.5)
    tf = spec.transform(face(0, (-20.0, 10.0, 40.0, 70.0)), 100, 100)
    assert tf is not None and tf.origin[0] == 0 and tf.size[0] <= 100
    assert spec.transform(face(0, (-500.0, -500.0, -400.0, -400.0)), 100, 100) is None


def test_select_faces():
    faces = [face(1, (0, 0, 10, 10)), face(2, (0, 0, 30, 30)), face(3, (0, 0, 20, 20))]
    assert [f.track_id for f in select_faces(faces, "all")] == [1, 2, 3]
    assert [f.track_id for f in select_faces(faces, "largest")] == [2]
    assert select_faces([], "largest") == []
    with pytest.raises(InputError, match=r"'smallest'.*all, largest"):
        select_faces(faces, "smallest")  # type: ignore[arg-type]


def test_source_bank_nearest_pose():
    img = np.zeros((4, 4, 3), np.uint8)
    lm = np.zeros((478, 3), np.float32)
    bank = SourceBank([SourceFace(img, lm, pose(yaw), frame_index=i) for i, yaw in enumerate([-30, 0, 25])])
    assert bank.nearest(pose(yaw=20))[0].frame_index == 2
    assert [f.frame_index for f in bank.nearest(pose(yaw=-10), k=2)] == [1, 0]
    with pytest.raises(NoFaceError):
        SourceBank([])


def test_source_bank_of_one_face_does_not_read_the_target_pose():
    from stream.pose import LazyHeadPose

    img = np.zeros((4, 4, 3), np.uint8)
    only = SourceFace(img, np.zeros((478, 3), np.float32), pose(0), frame_index=0)
    unreadable = LazyHeadPose(np.zeros((10, 3), np.float32))  # reading it raises
    assert SourceBank([only]).nearest(unreadable) == [only]


def test_paste_reports_only_the_region_alpha_touches():
    img = np.zeros((60, 90, 3), np.uint8)
    tf = CropTransform.region(20, 10, 70, 50)
    crop = np.full((40, 50, 3), 255, np.uint8)
    alpha = np.zeros((40, 50), np.float32)
    assert tf.paste(img, crop, alpha) is None and not img.any()
    alpha[5:12, 30:41] = 0.5
    assert tf.paste(img, crop, alpha) == (50, 15, 61, 22)
    assert np.all(img[15:22, 50:61] == 128) and np.count_nonzero(img.any(-1)) == 7 * 11
    scaled = CropSpec(size=32).transform(face(0, (20.0, 10.0, 60.0, 50.0)), 90, 60)
    alpha = np.zeros((32, 32), np.float32)
    alpha[10:20, 10:20] = 1.0
    out = np.zeros_like(img)
    x0, y0, x1, y1 = scaled.paste(out, np.full((32, 32, 3), 200, np.uint8), alpha)
    ys, xs = np.nonzero(out.any(-1))
    assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
