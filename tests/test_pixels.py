"""Lazy RGB frames: boxes of decoded 4:2:0 frames are converted on demand, bit-exact with the whole
frame, pastes are kept as patches, and a chain run on a lazy frame gives what it gives on the RGB frame."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from mediautil import write_face_clip

from stream.frames import Frame
from stream.pixels import ArrayPixels, Pixels, lazy_capable, region_rgb, region_shrunk, rgb_image
from stream.sources import read_video_frames
from stream.stages import default_chain
from stream.stages.base import SourceBank
from stream.swap import largest_source_face
from stream.tracking import FaceTracker, TrackerConfig


def decoded(width: int = 96, height: int = 64, *, full_range: bool = False, colorspace: int | None = None,
            seed: int = 0) -> av.VideoFrame:
    """A 4:2:0 frame with independent random Y, U and V samples (chroma differs in every 2x2 cell)."""
    rng = np.random.default_rng(seed)
    vf = av.VideoFrame(width, height, "yuv420p")
    for plane in vf.planes:
        rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
        rows[:plane.height, :plane.width] = rng.integers(16, 240, (plane.height, plane.width), np.uint8)
    vf.color_range = 2 if full_range else 1
    if colorspace is not None:
        vf.colorspace = colorspace
    return vf


BOXES = [(0, 0, 96, 64), (1, 1, 9, 9), (10, 7, 33, 40), (95, 63, 96, 64), (37, 0, 80, 63), (0, 11, 1, 12)]


@pytest.mark.parametrize("full_range", [False, True])
@pytest.mark.parametrize("colorspace", [None, 1])  # unspecified (BT.601), BT.709
def test_a_box_converts_exactly_as_the_same_box_of_the_whole_frame(full_range, colorspace):
    vf = decoded(full_range=full_range, colorspace=colorspace)
    whole = rgb_image(vf)
    for x0, y0, x1, y1 in BOXES:
        box = region_rgb(vf, x0, y0, x1, y1)
        assert box.shape == (y1 - y0, x1 - x0, 3)
        assert np.array_equal(box, whole[y0:y1, x0:x1]), (x0, y0, x1, y1)


def test_the_matrix_and_range_are_the_frames_own():
    a, b = rgb_image(decoded(colorspace=1)), rgb_image(decoded(colorspace=5))
    assert not np.array_equal(a, b), "BT.709 and BT.601 must convert differently (else the test above is empty)"
    assert not np.array_equal(rgb_image(decoded(full_range=True)), rgb_image(decoded(full_range=False)))


def test_lazy_frame_reads_match_the_whole_image_and_patches_win():
    vf = decoded()
    whole = rgb_image(vf)
    frame = Frame(index=0, source=vf)
    assert frame.lazy and frame.shape == (64, 96, 3) and isinstance(frame, Pixels)
    assert np.array_equal(frame.rgb(10, 7, 33, 40), whole[7:40, 10:33])
    patch = np.full((10, 12, 3), 200, np.uint8)
    frame.write(20, 20, patch)
    second = np.full((4, 4, 3), 9, np.uint8)
    frame.write(30, 28, second)  # overlaps the first: written later, it wins
    expected = whole.copy()
    expected[20:30, 20:32] = 200
    expected[28:32, 30:34] = 9
    assert frame.lazy, "writing keeps the frame lazy"
    for box in [(0, 0, 96, 64), (18, 18, 40, 40), (21, 21, 25, 25), (31, 29, 33, 31), (50, 50, 60, 60)]:
        x0, y0, x1, y1 = box
        assert np.array_equal(frame.rgb(*box), expected[y0:y1, x0:x1]), box
    assert np.array_equal(frame.image, expected), "the whole image has the patches"
    assert not frame.lazy
    frame.write(0, 0, np.zeros((2, 2, 3), np.uint8))
    assert frame.image[:2, :2].max() == 0, "after that, writes go to the image"


def test_grey_and_samples_follow_the_brightness():
    # A smooth image, so 4:2:0 subsampling does not matter: luma must track RGB -> grey closely.
    y, x = np.mgrid[0:64, 0:96]
    rgb = np.stack([(x * 2.5), (y * 3.5), (x + y) * 1.5], -1).clip(0, 255).astype(np.uint8)
    vf = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p", threads=1)
    frame = Frame(index=0, source=vf)
    assert frame.lazy
    ref = cv2.cvtColor(rgb_image(vf), cv2.COLOR_RGB2GRAY).astype(int)
    grey = frame.grey(5, 6, 70, 50).astype(int)
    assert grey.shape == (44, 65)
    assert np.abs(grey - ref[6:50, 5:70]).max() <= 3
    arr = ArrayPixels(rgb_image(vf))
    assert np.array_equal(arr.grey(5, 6, 70, 50), ref[6:50, 5:70])
    s = frame.samples(0, 0, 96, 64, 8)
    assert s.shape == (8, 12) and s.dtype == np.int16
    assert np.corrcoef(s.ravel(), ref[4::8, 4::8].ravel())[0, 1] > 0.99  # luma, as grey
    assert np.array_equal(arr.samples(0, 0, 96, 64, 8), rgb_image(vf)[4::8, 4::8, 1])  # RGB arrays: green


def test_shrunk_boxes_convert_and_shrink_in_one_pass_close_to_shrinking_the_rgb():
    y, x = np.mgrid[0:128, 0:192]
    rgb = np.stack([x * 1.3, y * 1.9, 128 + 60 * np.sin(x / 9.0) * np.cos(y / 7.0)], -1).clip(0, 255).astype(np.uint8)
    vf = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p", threads=1)
    frame = Frame(index=0, source=vf)
    whole = rgb_image(vf)
    for box, size in [((0, 0, 192, 128), (48, 32)), ((10, 20, 106, 84), (32, 21)), ((0, 0, 192, 128), (64, 42)),
                      ((0, 0, 192, 128), (96, 64))]:  # halving: OpenCV's fast path
        x0, y0, x1, y1 = box
        ref = cv2.resize(whole[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA).astype(int)
        got = frame.shrunk(*box, size)
        assert got.shape == (size[1], size[0], 3) and got.dtype == np.uint8
        # Brightness within a grey level; colour within a few (swscale places the subsampled chroma
        # a fraction of a pixel differently while shrinking: blue texture at 4:2:0 resolution shows it).
        grey = cv2.cvtColor(got, cv2.COLOR_RGB2GRAY).astype(int)
        assert np.abs(grey - cv2.cvtColor(ref.astype(np.uint8), cv2.COLOR_RGB2GRAY)).mean() < 1.0, box
        assert np.abs(got - ref).mean() < 4.0, box
        assert frame.lazy, "shrinking a box converts no whole image"
        assert np.array_equal(ArrayPixels(whole).shrunk(*box, size), ref)
    with pytest.raises(ValueError, match="even bounds"):
        region_shrunk(vf, 1, 0, 33, 32, (8, 8))
    # An odd box, or one a stage pasted into, is shrunk from its RGB.
    assert np.array_equal(frame.shrunk(3, 5, 67, 45, (16, 10)),
                          cv2.resize(whole[5:45, 3:67], (16, 10), interpolation=cv2.INTER_AREA))
    frame.write(0, 0, np.zeros((40, 40, 3), np.uint8))
    expected = whole.copy()
    expected[:40, :40] = 0
    assert np.array_equal(frame.shrunk(0, 0, 96, 64, (24, 16)),
                          cv2.resize(expected[:64, :96], (24, 16), interpolation=cv2.INTER_AREA))


def test_other_pixel_formats_are_converted_whole():
    vf = decoded().reformat(format="yuv444p")
    assert not lazy_capable(vf)
    assert not lazy_capable(av.VideoFrame(95, 63, "yuv420p"))
    frame = Frame(index=0, source=vf)
    assert not frame.lazy
    assert np.array_equal(frame.rgb(3, 5, 40, 30), rgb_image(vf)[5:30, 3:40])
    frame.write(0, 0, np.zeros((4, 4, 3), np.uint8))  # straight into the whole image
    assert frame.image[:4, :4].max() == 0 and frame.rgb(0, 0, 4, 4).max() == 0


def test_a_frame_needs_pixels():
    with pytest.raises(ValueError, match="image or a decoded source"):
        Frame(index=0)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_face_clip(tmp_path_factory.mktemp("pixels") / "clip.mp4", frames=12, audio=False,
                           empty_head=1, empty_tail=1, time_base=Fraction(1, 30))


def test_tracking_and_the_chain_give_the_same_swap_on_lazy_and_rgb_frames(clip):
    """File sources now hand out lazy frames: the swap must not change (up to the tracker's brightness,
    which lazy frames take from the decoded luma) and nothing but the pasted boxes is converted."""
    from skimage import data

    lazy = list(read_video_frames(clip))
    assert all(f.lazy for f in lazy)
    eager = [Frame(index=f.index, image=rgb_image(f.source), pts=f.pts, source=f.source) for f in lazy]
    sf = largest_source_face(np.ascontiguousarray(data.astronaut()))
    assert sf is not None
    for frames in (lazy, eager):
        with FaceTracker(TrackerConfig()) as tracker:
            for f in frames:
                tracker(f)
    for a, b in zip(lazy, eager, strict=True):
        assert len(a.faces) == len(b.faces)
        for fa, fb in zip(a.faces, b.faces, strict=True):
            assert np.abs(fa.landmarks[:, :2] - fb.landmarks[:, :2]).mean() < 1.0
        b.faces = a.faces  # the same landmarks for both, so that the chain is compared alone
    results = []
    for frames in (lazy, eager):
        chain = default_chain()
        chain.set_source(SourceBank([sf]))
        results.append([chain(f) for f in frames])
    faced = [f for f in results[0] if f.faces]
    assert len(faced) >= 8
    for a, b in zip(*results, strict=True):
        assert a.dirty == b.dirty
        assert a.lazy, "a swapped file frame stays lazy: only its pasted boxes exist as RGB"
        assert np.array_equal(a.image, b.image)


def test_to_yuv420_reuses_the_decoded_planes_and_converts_only_what_was_pasted():
    vf = decoded(96, 64, colorspace=1)
    vf.pict_type = av.video.frame.PictureType.I
    original = vf.to_ndarray().copy()
    frame = Frame(index=0, source=vf)
    out = frame.to_yuv420()
    assert out is vf and out.pict_type == av.video.frame.PictureType.NONE, "unmodified: the decoded frame"
    assert np.array_equal(out.to_ndarray(), original)

    frame.write(10, 6, np.full((20, 30, 3), (200, 40, 90), np.uint8))
    frame.modified, frame.dirty = True, [(10, 6, 40, 26)]
    expected_rgb = frame.rgb(0, 0, 96, 64).copy()
    out = frame.to_yuv420()
    assert out is vf
    planes = out.to_ndarray()
    y_new, y_old = planes[:64], original[:64]
    changed = np.argwhere(y_new != y_old)
    assert changed.size and changed[:, 0].min() >= 6 and changed[:, 0].max() < 26
    assert changed[:, 1].min() >= 10 and changed[:, 1].max() < 40, "only the pasted box changed"
    # Inside the box, the pasted colour came back (through 4:2:0 and the frame's own BT.709 matrix).
    back = rgb_image(out)[8:24, 12:38].astype(int)
    assert np.abs(back - expected_rgb[8:24, 12:38]).max() <= 3

    whole = Frame(index=1, source=decoded(96, 64, seed=1))
    whole.image[:] = 128  # a change nobody described by boxes: the whole image is converted
    whole.modified = True
    out = whole.to_yuv420()
    assert out is not whole.source and out.format.name == "yuv420p"
    assert np.abs(rgb_image(out).astype(int) - 128).max() <= 2


def test_webrtc_frames_are_lazy_and_go_back_out_as_their_own_planes():
    from stream.serving.session import frame_to_video_frame, video_frame_to_frame

    vf = decoded(64, 48)
    vf.pts, vf.time_base = 3000, Fraction(1, 90000)
    frame = video_frame_to_frame(vf, 7, 1.5)
    assert frame.lazy and frame.index == 7 and frame.pts == 3000
    frame.write(8, 8, np.zeros((8, 8, 3), np.uint8))
    frame.modified, frame.dirty = True, [(8, 8, 16, 16)]
    out = frame_to_video_frame(frame)
    assert out is vf and out.pts == 3000
    assert rgb_image(out)[9:15, 9:15].max() <= 3


def _natural_box() -> np.ndarray:
    """A face-sized box of a real photo (skin, hair, a saturated flag): what write-back converts."""
    from stream.demo import sample_face_images

    return np.ascontiguousarray(sample_face_images()["astronaut"][40:460, 60:400])


@pytest.mark.parametrize("full_range", [False, True])
@pytest.mark.parametrize("colorspace", [2, 1, 5, 6, 9, 4, 7])  # unspecified, BT.709, BT.601 x2, BT.2020, FCC, 240M
def test_pasted_boxes_go_back_in_the_frames_own_matrix_and_range(full_range, colorspace):
    from stream.pixels import rgb_to_yuv420, split_420

    rgb = _natural_box()
    h, w = rgb.shape[:2]
    sws = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format="yuv420p", dst_colorspace=colorspace, dst_color_range=2 if full_range else 1, threads=1)
    ref = split_420(sws.to_ndarray(), h, w)
    ours = rgb_to_yuv420(rgb, colorspace, full_range)
    assert [p.shape for p in ours] == [(h, w), (h // 2, w // 2), (h // 2, w // 2)]
    assert np.abs(ours[0].astype(int) - ref[0]).max() <= 1, "luma: swscale's matrix and range"
    for mine, theirs in zip(ours[1:], ref[1:], strict=True):
        assert np.abs(mine.astype(int) - theirs).mean() < 1.0, "chroma: the same matrix (a wrong one is off by 5+)"
    # Read back as a 4:2:0 frame is (chroma shared by each 2x2 cell), it comes as close to the pasted RGB as
    # swscale's own conversion does.
    frame = av.VideoFrame(w, h, "yuv420p")
    for plane, values in zip(frame.planes, ours, strict=True):
        np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:values.shape[0], :values.shape[1]] = values
    for vf in (frame, sws):
        vf.colorspace, vf.color_range = colorspace, 2 if full_range else 1
    err_ours, err_sws = (np.abs(rgb_image(vf).astype(int) - rgb).mean() for vf in (frame, sws))
    assert err_ours <= err_sws + 0.05, (err_ours, err_sws)


def test_a_jpeg_range_frame_gets_its_paste_back_in_full_range():
    rgb = _natural_box()[:64, :96]
    vf = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuvj420p", threads=1)
    frame = Frame(index=0, source=vf)
    assert frame.lazy
    paste = np.ascontiguousarray(rgb[::-1, ::-1])  # the photo turned round: every pixel changes
    frame.write(0, 0, paste)
    frame.modified, frame.dirty = True, [(0, 0, 96, 64)]
    out = frame.to_yuv420()
    assert out.format.name == "yuvj420p"
    assert np.abs(rgb_image(out).astype(int) - paste).mean() < 3


def test_an_odd_box_is_refused():
    from stream.pixels import rgb_to_yuv420

    with pytest.raises(ValueError, match="even size"):
        rgb_to_yuv420(np.zeros((5, 8, 3), np.uint8), 1, False)
