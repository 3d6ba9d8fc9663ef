"""The weight-free default chain end to end through StageChain: real faces swapped both ways."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.transform import PiecewiseAffineTransform, warp
from stagefaces import astronaut, grace_hopper, rescale, source, tracked

from stream import mesh
from stream.exceptions import InputError
from stream.frames import Frame
from stream.stages import SourceBank, StageChain, default_chain


def _swap(chain: StageChain, image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The swapped frame and the frame-sized paste weights of its face."""
    frame = Frame(index=0, image=image.copy(), faces=[tracked(landmarks)])
    alpha = np.zeros(image.shape[:2], np.float32)
    # The same work the chain does, kept to read the paste weights.
    probe = Frame(index=0, image=image.copy(), faces=[tracked(landmarks)])
    works = chain.build_work(probe)
    for stage in chain.stages:
        stage.process(works)
    for w in works:
        x0, y0 = w.crop.origin
        cw, ch = w.crop.size
        alpha[y0:y0 + ch, x0:x0 + cw] = np.maximum(alpha[y0:y0 + ch, x0:x0 + cw], w.alpha)
    out = chain(frame)
    assert out is frame and frame.modified
    assert set(frame.timings) >= {s.name for s in chain.stages} | {"paste"}
    return frame.image, alpha


def _band_grey(rgb: np.ndarray) -> np.ndarray:
    """Grey, band-passed (difference of Gaussians): the face's structure — features, wrinkles, frames —
    without the low-frequency lighting and skin tone that blending deliberately takes from the target."""
    grey = cv2.cvtColor(np.clip(rgb, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return cv2.GaussianBlur(grey, (0, 0), 1.0) - cv2.GaussianBlur(grey, (0, 0), 5.0)


def _ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    x, y = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def _aligned_source(src_img: np.ndarray, src_lm: np.ndarray, tgt_lm: np.ndarray,
                    shape: tuple[int, int]) -> np.ndarray:
    """The source image warped into the target's geometry by scikit-image's own piecewise-affine
    transform (its Delaunay triangulation of the landmarks, independent of stream.mesh)."""
    tform = PiecewiseAffineTransform.from_estimate(tgt_lm[:mesh.N_MESH, :2].astype(np.float64),
                                                   src_lm[:mesh.N_MESH, :2].astype(np.float64))
    assert tform
    return warp(src_img, tform, output_shape=shape, preserve_range=True, order=1)


@pytest.mark.parametrize("direction", ["grace_onto_astronaut", "astronaut_onto_grace"])
def test_default_chain_puts_the_source_face_on_the_target(direction: str) -> None:
    (src_img, src_lm), (tgt_img, tgt_lm) = (grace_hopper(), astronaut())
    if direction == "astronaut_onto_grace":
        (src_img, src_lm), (tgt_img, tgt_lm) = (tgt_img, tgt_lm), (src_img, src_lm)
    tgt_img, tgt_lm = rescale(tgt_img, tgt_lm, 150)
    chain = default_chain()
    chain.set_source(SourceBank([source(src_img, src_lm)]))
    out, alpha = _swap(chain, tgt_img, tgt_lm)
    # Pixels outside the paste region are untouched, bit for bit.
    np.testing.assert_array_equal(out[alpha == 0], tgt_img[alpha == 0])
    assert (alpha > 0).sum() > 0.3 * mesh.face_size(tgt_lm) ** 2
    # Inside it, the structure is the source's, not the target's.
    aligned = _aligned_source(src_img, src_lm, tgt_lm, tgt_img.shape[:2])
    region = alpha > 0.9
    to_source = _ncc(_band_grey(out), _band_grey(aligned), region)
    to_target = _ncc(_band_grey(out), _band_grey(tgt_img), region)
    assert to_source > 0.7
    assert to_source > to_target + 0.4
    # And the colours follow the target: the face's mean colour is nearer the target's than the source's.
    mean_out, mean_tgt, mean_src = (im[region].reshape(-1, 3).mean(0) for im in (out, tgt_img, aligned))
    assert np.abs(mean_out - mean_tgt).sum() < np.abs(mean_src - mean_tgt).sum()
    chain.close()
    chain.close()


def _two_faces() -> tuple[np.ndarray, list]:
    img, lm = astronaut()
    small, small_lm = rescale(img, lm, 60)
    canvas = np.ascontiguousarray(np.concatenate([img, np.zeros((512, small.shape[1], 3), np.uint8)], 1))
    canvas[:small.shape[0], 512:] = small
    shifted = np.array(small_lm)
    shifted[:, 0] += 512
    return canvas, [tracked(lm, 0), tracked(shifted, 1)]


@pytest.mark.parametrize(("faces", "changed"), [("all", (True, True)), ("largest", (True, False))])
def test_face_selection(faces: str, changed: tuple[bool, bool]) -> None:
    canvas, tracked_faces = _two_faces()
    chain = default_chain(faces=faces, blend="alpha")  # type: ignore[arg-type]
    chain.set_source(SourceBank([source(*grace_hopper())]))
    frame = Frame(index=3, image=canvas.copy(), faces=tracked_faces)
    chain(frame)
    diff = np.abs(frame.image.astype(int) - canvas.astype(int)).sum(-1) > 0
    assert (diff[:, :512].any(), diff[:, 512:].any()) == changed


def test_frame_without_faces_passes_through() -> None:
    chain = default_chain()
    chain.set_source(SourceBank([source(*grace_hopper())]))
    img, _ = astronaut()
    frame = Frame(index=0, image=img.copy())
    assert chain(frame) is frame and not frame.modified
    np.testing.assert_array_equal(frame.image, img)


def test_default_chain_options() -> None:
    for mode in ("poisson", "pyramid", "alpha"):
        chain = default_chain(blend=mode)  # type: ignore[arg-type]
        assert [s.kind for s in chain.stages] == ["reenact", "segment", "complete", "blend"]
        assert chain.crop.size is None
    with pytest.raises(InputError, match="poisson, pyramid, alpha"):
        default_chain(blend="soft")  # type: ignore[arg-type]
