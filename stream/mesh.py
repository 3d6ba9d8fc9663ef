"""Topology of MediaPipe's face mesh: triangles, ordered contours and a few measures on landmarks.

MediaPipe ships the mesh only as edge sets (``mediapipe.solutions.face_mesh_connections``). The
triangle list is derived from ``FACEMESH_TESSELATION`` once, lazily: the edge graph is laid out in the
plane with a Tutte embedding (face oval pinned to a circle), the faces of that planar embedding are
walked, and the three holes the tessellation leaves (the two eyes and the mouth opening) are closed with
strips between the upper and lower lid/lip. Triangles are oriented so that a face seen from the front
has positive :func:`signed_areas` in image coordinates (x right, y down); a negative area therefore
means the triangle is back-facing (folded away, self-occluded) in that view.

Landmark indices 0..467 are the mesh; 468..477 (iris, with ``refine_landmarks``) are not triangulated.
:func:`extended_points` appends a ring of 36 points just outside the face oval, and
:func:`extended_triangles` the band between the oval and that ring, so a warp can reach slightly past
the face for blending.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
from mediapipe.python.solutions import face_mesh_connections as _conn

N_MESH = 468
"""Number of triangulated mesh vertices (iris points excluded)."""


def _ordered_loops(edges: Iterable[tuple[int, int]]) -> list[tuple[int, ...]]:
    """Chain an edge set made of disjoint simple cycles into ordered vertex loops."""
    adj: dict[int, list[int]] = defaultdict(list)
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    if any(len(n) != 2 for n in adj.values()):
        raise ValueError("edge set is not a union of simple cycles")
    loops, seen = [], set()
    for start in sorted(adj):
        if start in seen:
            continue
        loop, prev, cur = [start], None, start
        while True:
            nxt = min(adj[cur]) if prev is None else next(n for n in adj[cur] if n != prev)
            if nxt == start:
                break
            loop.append(nxt)
            prev, cur = cur, nxt
        seen.update(loop)
        loops.append(tuple(loop))
    return loops


def _rotate_to(loop: tuple[int, ...], first: int, then: int | None = None) -> tuple[int, ...]:
    """``loop`` starting at ``first``; when ``then`` is given, running towards that neighbour."""
    i = loop.index(first)
    out = loop[i:] + loop[:i]
    if then is not None and out[1] != then:
        out = (out[0], *out[:0:-1])
    return out


FACE_OVAL: tuple[int, ...] = _rotate_to(_ordered_loops(_conn.FACEMESH_FACE_OVAL)[0], 10, 338)
"""The 36 face-oval points from the top of the forehead (10) towards the image's right (338): on a
frontal face it winds like the triangles, with a positive shoelace area in image coordinates."""
_lip_loops = _ordered_loops(_conn.FACEMESH_LIPS)
LIPS_OUTER: tuple[int, ...] = _rotate_to(next(lp for lp in _lip_loops if 61 in lp), 61)
"""Outer lip contour (20 points), starting at the mouth corner 61."""
LIPS_INNER: tuple[int, ...] = _rotate_to(next(lp for lp in _lip_loops if 78 in lp), 78)
"""Inner lip contour (20 points) — the mouth opening — starting at the inner corner 78."""
RIGHT_EYE: tuple[int, ...] = _rotate_to(_ordered_loops(_conn.FACEMESH_RIGHT_EYE)[0], 33)
"""The subject's right eye contour (image left in a frontal view), 16 points from the outer corner 33."""
LEFT_EYE: tuple[int, ...] = _rotate_to(_ordered_loops(_conn.FACEMESH_LEFT_EYE)[0], 263)
"""The subject's left eye contour (image right), 16 points from the outer corner 263."""
del _lip_loops
_OVAL_IDX = np.array(FACE_OVAL)
_OVAL_NEXT = np.roll(_OVAL_IDX, -1)

# Corners that split each hole of the tessellation into an upper and a lower chain.
_HOLE_CORNERS = {RIGHT_EYE: (33, 133), LEFT_EYE: (362, 263), LIPS_INNER: (78, 308)}
# Inner-lip pairs (upper, lower) across the opening, and the inner corners for the mouth width.
_MOUTH_PAIRS = ((82, 87), (13, 14), (312, 317))
_MOUTH_CORNERS = (78, 308)


@functools.cache
def canonical_layout() -> np.ndarray:
    """(468, 2) float64 planar layout of the mesh graph (Tutte embedding), image orientation.

    The face oval lies on the unit circle; every other vertex is the mean of its neighbours. It is only
    a topological layout (the tessellation as a planar map), not a face shape.
    """
    edges = {tuple(sorted(e)) for e in _conn.FACEMESH_TESSELATION}
    lap = np.zeros((N_MESH, N_MESH))
    for a, b in edges:
        lap[a, b] = lap[b, a] = -1.0
    lap[np.diag_indices(N_MESH)] = -lap.sum(1)
    pos = np.zeros((N_MESH, 2))
    ang = np.linspace(0.0, 2 * np.pi, len(FACE_OVAL), endpoint=False)
    oval = np.array(FACE_OVAL)
    pos[oval] = np.c_[np.sin(ang), -np.cos(ang)]
    fixed = np.zeros(N_MESH, bool)
    fixed[oval] = True
    free = ~fixed
    pos[free] = np.linalg.solve(lap[np.ix_(free, free)], -lap[np.ix_(free, fixed)] @ pos[fixed])
    # Image orientation: the subject's right cheek (234) on the left, forehead (10) above the chin (152).
    if pos[234, 0] > pos[454, 0]:
        pos[:, 0] *= -1
    if pos[10, 1] > pos[152, 1]:
        pos[:, 1] *= -1
    return pos


def _planar_faces(edges: set[tuple[int, int]], pos: np.ndarray) -> list[list[int]]:
    """The faces of a straight-line planar embedding, each as a vertex cycle."""
    nbrs: dict[int, list[int]] = defaultdict(list)
    for a, b in edges:
        nbrs[a].append(b)
        nbrs[b].append(a)
    for v, ns in nbrs.items():
        ns.sort(key=lambda u, v=v: np.arctan2(pos[u, 1] - pos[v, 1], pos[u, 0] - pos[v, 0]))
    seen: set[tuple[int, int]] = set()
    faces = []
    for a, b in sorted(edges):
        for u, v in ((a, b), (b, a)):
            face = []
            while (u, v) not in seen:
                seen.add((u, v))
                face.append(u)
                ring = nbrs[v]
                u, v = v, ring[ring.index(u) - 1]
            if face:
                faces.append(face)
    return faces


def _strip(loop: tuple[int, ...], corners: tuple[int, int], pos: np.ndarray) -> list[tuple[int, int, int]]:
    """Triangulate a lid/lip hole as a zipper between its two chains from corner to corner, by x."""
    loop = _rotate_to(loop, corners[0])
    k = loop.index(corners[1])
    upper = list(loop[: k + 1])
    lower = [loop[0], *loop[:k - 1:-1]]
    tris = []
    i = j = 0
    while i < len(upper) - 1 or j < len(lower) - 1:
        step_upper = j == len(lower) - 1 or (
            i < len(upper) - 1 and pos[upper[i + 1], 0] <= pos[lower[j + 1], 0])
        if step_upper:
            tris.append((upper[i], upper[i + 1], lower[j]))
            i += 1
        else:
            tris.append((upper[i], lower[j + 1], lower[j]))
            j += 1
    return [t for t in tris if len(set(t)) == 3]


@functools.cache
def triangles() -> np.ndarray:
    """(F, 3) int32 triangles over vertices 0..467, holes (eyes, mouth) closed, oriented front-facing."""
    pos = canonical_layout()
    edges = {tuple(sorted(e)) for e in _conn.FACEMESH_TESSELATION}
    tris: list[tuple[int, ...]] = []
    holes = {frozenset(loop): loop for loop in _HOLE_CORNERS}
    for face in _planar_faces(edges, pos):
        if len(face) == 3:
            tris.append(tuple(face))
        elif frozenset(face) in holes:
            loop = holes.pop(frozenset(face))
            tris.extend(_strip(loop, _HOLE_CORNERS[loop], pos))
        elif set(face) != set(FACE_OVAL):
            raise ValueError(f"unexpected {len(face)}-sided face in the tessellation")
    if holes:
        raise ValueError("the tessellation's eye/mouth holes were not found")
    out = np.array(tris, dtype=np.int32)
    flip = signed_areas(pos, out) < 0
    out[flip] = out[flip][:, ::-1]
    out.setflags(write=False)
    return out


@functools.cache
def extended_triangles() -> np.ndarray:
    """:func:`triangles` plus the band between the face oval and the ring of :func:`extended_points`."""
    oval = np.array(FACE_OVAL)
    ring = N_MESH + np.arange(len(oval))
    nxt = np.roll(np.arange(len(oval)), -1)
    band = np.concatenate([np.c_[oval, ring, ring[nxt]], np.c_[oval, ring[nxt], oval[nxt]]]).astype(np.int32)
    # Orient the band like the rest of the mesh, using a layout with the ring outside the oval.
    pos = np.concatenate([canonical_layout(), canonical_layout()[oval] * 1.2])
    flip = signed_areas(pos, band) < 0
    band[flip] = band[flip][:, ::-1]
    out = np.concatenate([triangles(), band])
    out.setflags(write=False)
    return out


def extended_points(landmarks: np.ndarray, margin: float = 0.1) -> np.ndarray:
    """Mesh points 0..467 followed by 36 points pushed ``margin`` (relative) out from the face oval.

    Each ring point moves its oval point away from the oval's centroid by ``margin`` times their
    distance (in x, y; z is kept), so source and target rings correspond.
    """
    pts = np.asarray(landmarks, dtype=np.float32)[:N_MESH]
    oval = pts[_OVAL_IDX]
    ring = oval.copy()
    centre = oval[:, :2].mean(0)
    ring[:, :2] = oval[:, :2] + margin * (oval[:, :2] - centre)
    return np.concatenate([pts, ring])


def signed_areas(points: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Twice the signed area of each triangle in image coordinates (> 0: front-facing)."""
    p = np.asarray(points)[:, :2]
    a, b, c = p[tris[:, 0]], p[tris[:, 1]], p[tris[:, 2]]
    return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])


_MOUTH_IDX = np.array(_MOUTH_PAIRS).T  # (2, 3): upper lids, lower lids


def face_size(landmarks: np.ndarray) -> float:
    """A face-size scale in pixels: the square root of the face-oval polygon's area."""
    lm = np.asarray(landmarks)
    a = lm[_OVAL_IDX, :2].astype(np.float64)
    b = lm[_OVAL_NEXT, :2].astype(np.float64)
    return float(np.sqrt(abs(float(np.dot(a[:, 0], b[:, 1]) - np.dot(a[:, 1], b[:, 0]))) / 2))


def mouth_open_ratio(landmarks: np.ndarray) -> float:
    """Mean gap between the inner lips divided by the mouth width (inner corners): ~0 closed, >0.1 open."""
    p = np.asarray(landmarks)[:, :2].astype(np.float64)
    gap = np.sqrt(((p[_MOUTH_IDX[0]] - p[_MOUTH_IDX[1]]) ** 2).sum(1)).mean()
    width = float(np.hypot(*(p[_MOUTH_CORNERS[0]] - p[_MOUTH_CORNERS[1]])))
    return float(gap / width) if width > 1e-6 else 0.0


def polygon(landmarks: np.ndarray, contour: tuple[int, ...]) -> np.ndarray:
    """(N, 2) float32 points of an ordered ``contour`` (e.g. :data:`FACE_OVAL`) from ``landmarks``."""
    return np.asarray(landmarks, dtype=np.float32)[list(contour), :2]


def _sort_corners(v: np.ndarray) -> tuple[np.ndarray, ...]:
    """``ax, ay, bx, by, cx, cy`` of (F, 3, 2) triangles with corners sorted by (y, x) (a sorting
    network of three compare-exchanges, much faster than a general sort of such short rows)."""
    px, py = [v[:, i, 0] for i in range(3)], [v[:, i, 1] for i in range(3)]

    def exchange(i: int, j: int) -> None:
        swap = (py[j] < py[i]) | ((py[j] == py[i]) & (px[j] < px[i]))
        px[i], px[j] = np.where(swap, px[j], px[i]), np.where(swap, px[i], px[j])
        py[i], py[j] = np.where(swap, py[j], py[i]), np.where(swap, py[i], py[j])

    exchange(0, 1)
    exchange(1, 2)
    exchange(0, 1)
    return px[0], py[0], px[1], py[1], px[2], py[2]


def rasterize_triangles(points: np.ndarray, tris: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(h, w) int32 map of which triangle covers each pixel centre, -1 where none (numpy scan lines).

    ``points`` are in pixel units with pixel centres at integer coordinates. Triangles are painted in
    the order given, a later one over an earlier one (painter's algorithm: pass them far to near).
    Pixel centres on an edge belong to both triangles, so a closed mesh leaves no cracks.
    """
    h, w = shape
    ids = np.full(h * w, -1, dtype=np.int32)
    v = np.asarray(points, dtype=np.float64)[:, :2][tris]  # (F, 3, 2)
    if len(v) == 0:
        return ids.reshape(h, w)
    # Corners sorted by (y, x): top a, middle b, bottom c. Every edge then runs from its upper (then
    # left) end, so two triangles sharing an edge compute bit-identical crossings: no cracks.
    ax, ay, bx, by, cx, cy = _sort_corners(v)
    y0 = np.maximum(np.ceil(ay), 0).astype(np.int64)
    y1 = np.minimum(np.floor(cy), h - 1).astype(np.int64)
    nrows = np.maximum(y1 - y0 + 1, 0)
    total_rows = int(nrows.sum())
    if total_rows == 0:
        return ids.reshape(h, w)

    def edge(x0: np.ndarray, y0_: np.ndarray, x1: np.ndarray, y1_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # dx/dy, and for a horizontal edge its x extent (painted on the row it lies on).
        dy = y1_ - y0_
        flat = dy == 0
        return np.where(flat, 0.0, (x1 - x0) / np.where(flat, 1.0, dy)), np.where(flat, x1 - x0, 0.0)

    (s_ac, e_ac), (s_ab, e_ab), (s_bc, e_bc) = edge(ax, ay, cx, cy), edge(ax, ay, bx, by), edge(bx, by, cx, cy)
    tid = np.repeat(np.arange(len(v), dtype=np.int32), nrows)
    y = (np.repeat(y0 - np.cumsum(nrows) + nrows, nrows) + np.arange(total_rows)).astype(np.float64)
    # Long edge a-c crosses every row; of the short ones a-b covers rows up to b, b-c rows from b
    # (a row through b itself takes both).
    tay, tby = ay[tid], by[tid]
    xl = ax[tid] + (y - tay) * s_ac[tid]
    xr = xl + e_ac[tid]
    upper = y <= tby
    xb = np.where(upper, ax[tid] + (y - tay) * s_ab[tid], bx[tid] + (y - tby) * s_bc[tid])
    xe = xb + np.where(upper, e_ab[tid], e_bc[tid])
    np.minimum(xl, xb, out=xl)
    np.maximum(xr, xe, out=xr)
    mid = np.flatnonzero(y == tby)  # rows through the middle corner: the a-b edge ends there too
    if mid.size:
        t = tid[mid]
        xm = bx[t] + (y[mid] - by[t]) * s_bc[t]
        xl[mid] = np.minimum(xl[mid], xm)
        xr[mid] = np.maximum(xr[mid], xm + e_bc[t])
    x0 = np.maximum(np.ceil(xl), 0)
    x1 = np.minimum(np.floor(xr), w - 1)
    npx = np.maximum(x1 - x0 + 1, 0).astype(np.int64)
    total = int(npx.sum())
    if total == 0:
        return ids.reshape(h, w)
    # Flat pixel index = row start + running offset within the row's span.
    start = y.astype(np.int64) * w + x0.astype(np.int64)
    flat_idx = np.repeat(start - np.cumsum(npx) + npx, npx) + np.arange(total)
    # Sequential fancy assignment: with repeated indices the last write wins (painter's order).
    ids[flat_idx] = np.repeat(tid, npx)
    return ids.reshape(h, w)
