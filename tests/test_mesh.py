"""Face-mesh topology derived from MediaPipe's edge sets, and the scan-line rasteriser."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from mediapipe.python.solutions import face_mesh_connections as conn
from stagefaces import astronaut, grace_hopper

from stream import mesh


def _edges(tris: np.ndarray) -> Counter:
    return Counter(tuple(sorted(e)) for t in tris.tolist()
                   for e in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])))


def _loop_edges(loop: tuple[int, ...]) -> set[tuple[int, int]]:
    return {tuple(sorted((loop[i], loop[(i + 1) % len(loop)]))) for i in range(len(loop))}


def test_triangles_tile_a_disc_bounded_by_the_face_oval() -> None:
    tris = mesh.triangles()
    assert tris.shape[1] == 3 and tris.min() == 0 and tris.max() == mesh.N_MESH - 1
    assert len({tuple(sorted(t)) for t in tris.tolist()}) == len(tris)  # no duplicates
    count = _edges(tris)
    # Every tessellation edge is used; the only added edges close the eye and mouth holes.
    tess = {tuple(sorted(e)) for e in conn.FACEMESH_TESSELATION}
    assert tess <= set(count)
    added = set(count) - tess
    holes = set(mesh.LEFT_EYE) | set(mesh.RIGHT_EYE) | set(mesh.LIPS_INNER)
    assert all(a in holes and b in holes for a, b in added)
    # A triangulated disc: interior edges in two triangles, boundary edges (the oval) in one,
    # and Euler's V - E + F = 1.
    boundary = {e for e, n in count.items() if n == 1}
    assert boundary == _loop_edges(mesh.FACE_OVAL)
    assert set(count.values()) == {1, 2}
    assert mesh.N_MESH - len(count) + len(tris) == 1


def test_triangles_are_front_facing_on_a_frontal_face() -> None:
    assert (mesh.signed_areas(mesh.canonical_layout(), mesh.triangles()) > 0).all()
    for _, lm in (astronaut(), grace_hopper()):
        areas = mesh.signed_areas(lm, mesh.triangles())
        # A few tiny lip/eye-corner triangles may fold in a real mesh; the face as a whole faces us.
        assert (areas > 0).mean() > 0.97
        assert areas.sum() > 0


def test_contours_are_ordered_loops_of_mediapipe_edges() -> None:
    for loop, edges in ((mesh.FACE_OVAL, conn.FACEMESH_FACE_OVAL), (mesh.LEFT_EYE, conn.FACEMESH_LEFT_EYE),
                        (mesh.RIGHT_EYE, conn.FACEMESH_RIGHT_EYE)):
        assert _loop_edges(loop) == {tuple(sorted(e)) for e in edges}
    lips = {tuple(sorted(e)) for e in conn.FACEMESH_LIPS}
    assert _loop_edges(mesh.LIPS_INNER) | _loop_edges(mesh.LIPS_OUTER) == lips
    assert 13 in mesh.LIPS_INNER and 0 in mesh.LIPS_OUTER
    # The oval winds the same way as the triangles (positive area on a frontal face).
    _, lm = astronaut()
    oval = mesh.polygon(lm, mesh.FACE_OVAL).astype(np.float64)
    x, y = oval[:, 0], oval[:, 1]
    assert np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)) > 0


def test_extended_mesh_adds_a_band_outside_the_oval() -> None:
    _, lm = grace_hopper()
    pts = mesh.extended_points(lm, margin=0.1)
    tris = mesh.extended_triangles()
    assert pts.shape == (mesh.N_MESH + len(mesh.FACE_OVAL), 3)
    assert len(tris) == len(mesh.triangles()) + 2 * len(mesh.FACE_OVAL)
    count = _edges(tris)
    ring = tuple(range(mesh.N_MESH, mesh.N_MESH + len(mesh.FACE_OVAL)))
    assert {e for e, n in count.items() if n == 1} == _loop_edges(ring)
    assert (mesh.signed_areas(pts, tris[len(mesh.triangles()):]) > 0).all()
    # The ring is 10 % further from the oval's centroid than the oval.
    oval = lm[list(mesh.FACE_OVAL), :2]
    centre = oval.mean(0)
    ratio = np.linalg.norm(pts[mesh.N_MESH:, :2] - centre, axis=1) / np.linalg.norm(oval - centre, axis=1)
    np.testing.assert_allclose(ratio, 1.1, rtol=1e-4)


def test_mouth_open_ratio_separates_open_and_closed_mouths() -> None:
    _, closed = grace_hopper()
    _, smiling = astronaut()
    assert mesh.mouth_open_ratio(closed) < 0.03
    assert mesh.mouth_open_ratio(smiling) > 0.1
    # Opening the mouth by moving the lower inner lip down raises the ratio.
    opened = np.array(closed)
    width = np.linalg.norm(closed[78, :2] - closed[308, :2])
    lower = [mesh.LIPS_INNER[i] for i in range(1, 10)]
    opened[lower, 1] += 0.3 * width
    assert mesh.mouth_open_ratio(opened) == pytest.approx(mesh.mouth_open_ratio(closed) + 0.3, abs=0.02)


def test_face_size_of_a_scaled_face() -> None:
    _, lm = astronaut()
    scaled = np.array(lm) * 2.5
    assert mesh.face_size(scaled) == pytest.approx(2.5 * mesh.face_size(lm), rel=1e-6)


def _brute_force_cover(points: np.ndarray, tris: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    p = np.stack([xs, ys], -1).astype(np.float64)
    inside = np.zeros((len(tris), *shape), bool)
    for k, (a, b, c) in enumerate(points[tris]):
        def side(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            return (v[0] - u[0]) * (p[..., 1] - u[1]) - (v[1] - u[1]) * (p[..., 0] - u[0])
        s = np.stack([side(a, b), side(b, c), side(c, a)])
        inside[k] = (s >= -1e-9).all(0) | (s <= 1e-9).all(0)
    return inside


def test_rasterize_matches_point_in_triangle_and_paints_in_order() -> None:
    rng = np.random.default_rng(0)
    points = rng.uniform(-5, 45, size=(30, 2))
    tris = rng.integers(0, 30, size=(25, 3))
    tris = tris[np.array([len(set(t)) == 3 for t in tris.tolist()])]
    shape = (40, 41)
    ids = mesh.rasterize_triangles(points, tris, shape)
    inside = _brute_force_cover(points, tris, shape)
    covered = inside.any(0)
    # Pixels on an edge may go either way by rounding; everything else must agree.
    margin = np.zeros(shape, bool)
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    for a, b, c in points[tris]:
        for u, v in ((a, b), (b, c), (c, a)):
            d = np.abs((v[0] - u[0]) * (ys - u[1]) - (v[1] - u[1]) * (xs - u[0])) / np.hypot(*(v - u))
            margin |= d < 1e-6
    sure = ~margin
    assert ((ids >= 0) == covered)[sure].all()
    # The last triangle containing a pixel wins.
    last = np.where(covered, len(tris) - 1 - np.argmax(inside[::-1], axis=0), -1)
    assert (ids == last)[sure].all()


def test_rasterize_a_real_mesh_leaves_no_cracks() -> None:
    _, lm = grace_hopper()
    pts = mesh.extended_points(lm) - (100, 100, 0)
    ids = mesh.rasterize_triangles(pts, mesh.extended_triangles(), (500, 400))
    filled = ids >= 0
    # Every pixel inside the convex region of the mesh is painted: no holes between triangles.
    import cv2

    hull = np.zeros_like(filled, np.uint8)
    cv2.fillPoly(hull, [np.round(pts[mesh.N_MESH:, :2]).astype(np.int32)], 1)
    interior = cv2.erode(hull, np.ones((5, 5), np.uint8)) > 0
    assert filled[interior].all()
    assert not filled[0, 0] and filled.sum() > 0.9 * interior.sum()
