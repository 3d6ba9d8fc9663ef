"""The mesh-warp reenactor: exactness of the piecewise-affine map, coverage, the Stage protocol."""

from __future__ import annotations

import numpy as np
import pytest
from stagefaces import astronaut, crop_around, grace_hopper, rescale, source, work_for

from stream import mesh
from stream.exceptions import InputError
from stream.stages import SourceBank, Stage
from stream.stages.reenact import MeshWarpReenactor


def _coordinate_source(face_px: float = 110) -> tuple[np.ndarray, np.ndarray]:
    """Grace Hopper's landmarks on an image whose red/green values are their own x/y (< 256 px)."""
    img, lm = rescale(*crop_around(*grace_hopper(), 1.4), face_px)
    h, w = img.shape[:2]
    assert h <= 256 and w <= 256
    ys, xs = np.mgrid[0:h, 0:w]
    coded = np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.uint8)
    return coded, lm


def _target(face_px: float, integer_landmarks: bool) -> tuple[np.ndarray, np.ndarray]:
    img, lm = rescale(*astronaut(), face_px)
    if integer_landmarks:
        lm = np.round(lm)  # pixel centres: the map there must hit the source landmarks exactly
    return img, lm


def _piecewise_affine_truth(tgt: np.ndarray, src: np.ndarray, tris: np.ndarray, shape: tuple[int, int]):
    """For every pixel inside exactly one front-facing target triangle: that triangle and the
    barycentric image of the pixel in the source (an independent evaluation of the warp)."""
    h, w = shape
    truth = np.full((h, w, 2), np.nan)
    owner = np.full((h, w), -1)
    hits = np.zeros((h, w), int)
    areas = mesh.signed_areas(tgt, tris)
    for k in np.flatnonzero(areas > 1e-6):
        a, b, c = tgt[tris[k], :2].astype(np.float64)
        x0, y0 = np.maximum(np.floor(np.minimum(np.minimum(a, b), c)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(np.maximum(np.maximum(a, b), c)).astype(int) + 1, (w, h))
        if x1 <= x0 or y1 <= y0:
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1]
        p = np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float64)
        uv = np.linalg.solve(np.array([b - a, c - a]).T, (p - a).T).T
        inside = ((uv >= -1e-9).all(1) & (uv.sum(1) <= 1 + 1e-9)).reshape(ys.shape)
        sa, sb, sc = src[tris[k], :2].astype(np.float64)
        mapped = (sa + uv[:, :1] * (sb - sa) + uv[:, 1:] * (sc - sa)).reshape(*ys.shape, 2)
        win = (slice(y0, y1), slice(x0, x1))
        truth[win][inside] = mapped[inside]
        owner[win][inside] = k
        hits[win][inside] += 1
    return truth, np.where(hits == 1, owner, -1)


def _only_own_triangles(pts: np.ndarray, tris: np.ndarray, v: int) -> bool:
    """Whether every front-facing triangle containing vertex ``v``'s position has ``v`` as a corner."""
    p = pts[v, :2].astype(np.float64)
    a, b, c = (pts[tris[:, i], :2].astype(np.float64) for i in range(3))

    def side(u: np.ndarray, w: np.ndarray) -> np.ndarray:
        return (w[:, 0] - u[:, 0]) * (p[1] - u[:, 1]) - (w[:, 1] - u[:, 1]) * (p[0] - u[:, 0])

    s = np.stack([side(a, b), side(b, c), side(c, a)])
    front = mesh.signed_areas(pts, tris) > 1e-6
    holders = front & (s >= -1e-6).all(0)
    return bool((tris[holders] == v).any(1).all())


@pytest.mark.parametrize(("face_px", "step"), [(100, 1), (250, None)])
def test_warp_sends_target_landmarks_to_source_landmarks(face_px: float, step: int | None) -> None:
    coded, src_lm = _coordinate_source()
    img, lm = _target(face_px, integer_landmarks=True)
    work = work_for(img, lm, source(coded, src_lm))
    stage = MeshWarpReenactor(step=step)
    stage.set_source(SourceBank([work.source]))
    stage.process([work])
    assert work.reenacted is not None and work.coverage is not None
    assert work.reenacted.dtype == np.float32 and work.reenacted.shape == work.image.shape
    tgt = mesh.extended_points(work.landmarks)
    tris = mesh.extended_triangles()
    pix = np.round(tgt[:mesh.N_MESH, :2]).astype(int)
    decoded = work.reenacted[pix[:, 1], pix[:, 0], :2]
    covered = work.coverage[pix[:, 1], pix[:, 0]] >= 1
    # Landmarks hidden in the target by a nearer fold of the mesh (around the lips) show that fold.
    visible = np.array([_only_own_triangles(tgt, tris, v) for v in range(mesh.N_MESH)])
    check = covered & visible
    assert check.mean() > 0.8  # all but the folded lips/eye corners
    err = np.linalg.norm(decoded - src_lm[:mesh.N_MESH, :2], axis=1)[check]
    if step == 1:
        assert err.max() < 0.5
    else:  # the upsampled map is exact at grid points and off by a fraction of a pixel at kinks
        assert (err < 0.5).mean() > 0.98 and err.max() < 1.0


@pytest.mark.parametrize(("face_px", "step", "p99"), [(100, 1, 0.05), (250, None, 0.5)])
def test_warp_interior_follows_each_triangles_affine_map(face_px: float, step: int | None,
                                                         p99: float) -> None:
    coded, src_lm = _coordinate_source()
    img, lm = _target(face_px, integer_landmarks=False)
    work = work_for(img, lm, source(coded, src_lm))
    stage = MeshWarpReenactor(step=step)
    stage.set_source(SourceBank([work.source]))
    stage.process([work])
    tgt = mesh.extended_points(work.landmarks)
    truth, owner = _piecewise_affine_truth(tgt, mesh.extended_points(src_lm), mesh.extended_triangles(),
                                           work.image.shape[:2])
    check = (owner >= 0) & (work.coverage >= 1)
    assert check.sum() > 0.5 * (owner >= 0).sum()
    err = np.linalg.norm(work.reenacted[..., :2] - truth, axis=-1)[check]
    assert np.percentile(err, 99) < p99
    assert err.mean() < p99 / 2


def test_coverage_is_zero_for_triangles_folded_in_the_source() -> None:
    img, src_lm = grace_hopper()
    folded = np.array(src_lm)
    # Push a cheek vertex far across its neighbours: the triangles around it turn back-facing.
    v = 205
    tris = mesh.extended_triangles()
    around = np.flatnonzero((tris == v).any(1))
    centre = folded[np.unique(tris[around])][:, :2].mean(0)
    folded[v, :2] = centre + 3.0 * (centre - folded[v, :2]) + 40 * np.array([1.0, 0.3])
    back = np.flatnonzero(mesh.signed_areas(mesh.extended_points(folded), tris) <= 0)
    assert np.isin(around, back).sum() >= 3
    work = work_for(*astronaut(), source(img, folded))
    stage = MeshWarpReenactor(step=1)
    stage.set_source(SourceBank([work.source]))
    stage.process([work])
    tgt = mesh.extended_points(work.landmarks)
    _, owner = _piecewise_affine_truth(tgt, mesh.extended_points(folded), tris, work.image.shape[:2])
    in_back = np.isin(owner, back[np.isin(back, around)])
    assert in_back.sum() > 20
    assert (work.coverage[in_back] == 0).all()
    assert (work.reenacted[in_back] == 0).all()
    # Triangles far from the fold are still covered.
    near_fold = np.isin(tris, tris[around]).any(1)
    ok = np.isin(owner, np.flatnonzero(~near_fold))
    assert (work.coverage[ok] >= 1).mean() > 0.9


def test_coverage_is_zero_where_the_source_image_ends() -> None:
    img, lm = grace_hopper()
    cut = int(np.median(lm[:, 0]))  # keep only the image's left half of the face
    half = np.ascontiguousarray(img[:, :cut])
    work = work_for(*astronaut(), source(half, lm))
    stage = MeshWarpReenactor(step=1)
    stage.set_source(SourceBank([work.source]))
    stage.process([work])
    tgt = mesh.extended_points(work.landmarks)
    truth, owner = _piecewise_affine_truth(tgt, mesh.extended_points(lm), mesh.extended_triangles(),
                                           work.image.shape[:2])
    inside = owner >= 0
    beyond = inside & (truth[..., 0] > cut + 1)
    within = inside & (truth[..., 0] < cut - 2)
    assert beyond.sum() > 100 and within.sum() > 100
    assert (work.coverage[beyond] == 0).all()
    assert (work.coverage[within] > 0).mean() > 0.95


def test_big_source_is_sampled_from_a_reduced_level() -> None:
    coded, src_lm = _coordinate_source(110)
    big, big_lm = rescale(coded, src_lm, 440)  # the coordinate ramp scaled by ~4 stays linear
    img, lm = _target(100, integer_landmarks=True)
    work = work_for(img, lm, source(big, big_lm))
    stage = MeshWarpReenactor(step=1)
    stage.set_source(SourceBank([work.source]))
    wm = stage.dense_map(work)
    assert wm is not None and wm.level == 2


@pytest.mark.parametrize("face_px", [100, 250])
def test_eight_bit_warp_is_the_float_warp_rounded(face_px: float) -> None:
    """Same map, same coverage; the samples differ only by the rounding of the source levels and of the
    result (and OpenCV's fixed-point 8-bit interpolation): within 1 grey level almost everywhere."""
    img, lm = _target(face_px, integer_landmarks=False)
    src = source(*grace_hopper())
    out = []
    for eight_bit in (False, True):
        work = work_for(img, lm, src)
        stage = MeshWarpReenactor(eight_bit=eight_bit)
        stage.set_source(SourceBank([src]))
        stage.process([work])
        out.append(work)
    flt, u8 = out
    assert u8.reenacted.dtype == np.uint8 and u8.reenacted.shape == flt.reenacted.shape
    np.testing.assert_array_equal(u8.coverage, flt.coverage)
    covered = flt.coverage > 0
    diff = np.abs(u8.reenacted.astype(np.float32) - flt.reenacted)[covered]
    assert covered.mean() > 0.2 and np.percentile(diff, 99) <= 1.5 and diff.max() <= 3
    assert (u8.reenacted[~covered] == 0).all()


def test_reenactor_is_a_stage_and_validates_options() -> None:
    stage = MeshWarpReenactor()
    assert isinstance(stage, Stage) and stage.kind == "reenact"
    with pytest.raises(InputError, match="step"):
        MeshWarpReenactor(step=0)
    with pytest.raises(InputError, match="margin"):
        MeshWarpReenactor(margin=2.0)
    stage.close()
    stage.close()
