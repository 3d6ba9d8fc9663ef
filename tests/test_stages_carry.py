"""PatchCarry: a face that moved affinely takes a recent frame's segment/complete/blend result, moved along.

Real faces (MediaPipe meshes of public-domain portraits); the reference for every carried frame is the
chain without the carry on the same frame.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from stagefaces import astronaut, grace_hopper, source, tracked

from stream.frames import Frame
from stream.stages import SourceBank, default_chain


def _moved(img: np.ndarray, lm: np.ndarray, dx: float, dy: float, angle: float = 0.0,
           gain: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The portrait and its landmarks moved by a rotation about the face centre and a shift (an affine
    motion), its pixels times ``gain``."""
    c = lm[:, :2].mean(0)
    m = cv2.getRotationMatrix2D((float(c[0]), float(c[1])), angle, 1.0)
    m[:, 2] += (dx, dy)
    out = cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    if gain != 1.0:
        out = cv2.convertScaleAbs(out, alpha=gain)
    pts = np.array(lm, np.float32)
    pts[:, :2] = pts[:, :2] @ m[:, :2].T.astype(np.float32) + m[:, 2].astype(np.float32)
    return out, pts


def _swap(chain, index: int, img: np.ndarray, lm: np.ndarray) -> tuple[np.ndarray, Frame]:
    frame = Frame(index=index, image=img.copy(), faces=[tracked(lm)])
    chain(frame)
    return frame.image, frame


def _sharpness(img: np.ndarray, lm: np.ndarray) -> float:
    x0, y0 = lm[:, :2].min(0).astype(int) + 20
    x1, y1 = lm[:, :2].max(0).astype(int) - 20
    return float(cv2.Laplacian(cv2.cvtColor(img[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY), cv2.CV_32F).var())


def _chains():
    bank = SourceBank([source(*grace_hopper())])
    carried, plain = default_chain(), default_chain(carry=False)
    carried.set_source(bank)
    plain.set_source(bank)
    return carried, plain


def test_a_face_moved_affinely_is_carried_as_sharp_and_close_to_the_stages_result() -> None:
    img, lm = astronaut()
    carried, plain = _chains()
    for i, (dx, dy, angle) in enumerate([(0, 0, 0), (2.3, 1.4, 0.0), (4.6, 2.7, 1.5), (7.2, 3.9, 3.0)]):
        frame_img, frame_lm = _moved(img, lm, dx, dy, angle)
        got, frame = _swap(carried, i, frame_img, frame_lm)
        want, _ = _swap(plain, i, frame_img, frame_lm)
        if i == 0:
            assert "mesh_segment" in frame.timings  # nothing to carry yet: every stage ran
            continue
        assert "mesh_segment" not in frame.timings and "carry" in frame.timings, frame.timings
        changed = np.any(want != frame_img, axis=2)
        assert changed.sum() > 5000
        err = np.mean((got[changed].astype(np.float64) - want[changed]) ** 2)
        psnr = 10 * np.log10(255 ** 2 / max(err, 1e-9))
        assert psnr > 36, (i, psnr)
        # The texture is sampled from the source every frame: no resampled-patch blur.
        assert _sharpness(got, frame_lm) > 0.9 * _sharpness(want, frame_lm), i
        # Outside the face the frame is as it came (the moved paste weights may reach a pixel further).
        near = cv2.dilate(changed.view(np.uint8), np.ones((5, 5), np.uint8)) > 0
        assert (got[~near] == frame_img[~near]).all()
    assert carried.carry.counters == {"computed": 1, "reused": 3}


@pytest.mark.parametrize("change", ["light", "mouth", "far"])
def test_the_stages_run_when_the_target_did_not_just_move_with_the_face(change: str) -> None:
    img, lm = astronaut()
    carried, plain = _chains()
    _swap(carried, 0, img, lm)
    _swap(plain, 0, img, lm)
    frame_img, frame_lm = _moved(img, lm, 2.0, 1.0, gain=1.25 if change == "light" else 1.0)
    index = 1
    if change == "mouth":  # the jaw drops on its own (everything below the lips): no affine map explains it
        frame_lm[frame_lm[:, 1] > frame_lm[14, 1], 1] += 3.0
    if change == "far":  # beyond the frames a patch may serve
        index = 6
    got, frame = _swap(carried, index, frame_img, frame_lm)
    want, _ = _swap(plain, index, frame_img, frame_lm)
    assert "mesh_segment" in frame.timings, frame.timings
    assert carried.carry.counters["reused"] == 0
    assert np.array_equal(got, want)


@pytest.mark.parametrize("seam_tolerance", [None, 1e9])
def test_something_crossing_the_paste_edge_makes_the_stages_run(seam_tolerance: float | None) -> None:
    """A dark bar across the paste mask's soft edge at the cheek (a hand, a strand of hair) would show as a
    seam: the seam check declines the patch. The colour check is switched off here, so that the seam check
    alone is tested (with no seam tolerance either, the face is carried)."""
    img, lm = astronaut()
    carried, _ = _chains()
    carried.carry.color_tolerance = 1e9
    if seam_tolerance is not None:
        carried.carry.seam_tolerance = seam_tolerance
    _swap(carried, 0, img, lm)
    frame_img, frame_lm = _moved(img, lm, 2.0, 1.0)
    x, y = (int(v) for v in frame_lm[454, :2])  # the face oval at the left cheek; the paste edge runs inside it
    cv2.rectangle(frame_img, (x - 14, y - 20), (x + 1, y + 20), (30, 25, 20), -1)
    _, frame = _swap(carried, 1, frame_img, frame_lm)
    if seam_tolerance is None:
        assert "mesh_segment" in frame.timings and carried.carry.counters["reused"] == 0
    else:
        assert "mesh_segment" not in frame.timings and carried.carry.counters["reused"] == 1


def test_the_patch_takes_the_blends_recoloured_face_instead_of_recolouring_again(monkeypatch) -> None:
    """Keeping a patch reuses the colour transfer the blend just applied (no second pass); the carried
    frame comes out as when the patch recolours the face itself."""
    from stream.stages.carry import PatchCarry

    img, lm = astronaut()
    frame_img, frame_lm = _moved(img, lm, 2.0, 1.0)
    results, calls = [], []
    for reuse_blends in (True, False):
        carried, _ = _chains()
        make = carried.carry.recolour

        def counting(work, make=make, tag=reuse_blends):
            fn = make(work)
            return None if fn is None else (lambda rgb: calls.append(tag) or fn(rgb))

        carried.carry.recolour = counting
        if not reuse_blends:
            monkeypatch.setattr(PatchCarry, "_recoloured", staticmethod(
                lambda work, fg, recolour, x, y, w, h: recolour(np.rint(fg[y:y + h, x:x + w]).astype(np.uint8))))
        _swap(carried, 0, img, lm)
        got, frame = _swap(carried, 1, frame_img, frame_lm)
        assert "mesh_segment" not in frame.timings
        results.append(got)
    assert calls.count(True) == 1  # the carried frame's own recolour only; none when the patch was kept
    assert calls.count(False) == 2
    assert np.array_equal(results[0], results[1])


def test_set_source_forgets_the_patches() -> None:
    img, lm = astronaut()
    carried, _ = _chains()
    _swap(carried, 0, img, lm)
    carried.set_source(SourceBank([source(*astronaut())]))
    _, frame = _swap(carried, 1, *_moved(img, lm, 1.0, 1.0))
    assert "mesh_segment" in frame.timings


def test_bad_options_are_refused() -> None:
    from stream.exceptions import InputError
    from stream.stages import CropSpec, MeshBlender, PatchCarry, StageChain

    for kwargs in ({"hole_below": 0.0}, {"seam_tolerance": -1.0}, {"color_tolerance": -1.0}):
        with pytest.raises(InputError):
            PatchCarry(lambda work: None, **kwargs)
    with pytest.raises(InputError, match="reenact"):  # the carry starts from the warped source
        StageChain([MeshBlender()], CropSpec(), carry=PatchCarry(lambda work: None))
