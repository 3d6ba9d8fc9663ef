"""The appearance map of FSGAN v2: which source frames, mixed how, best match a target head pose.

The source faces' (yaw, pitch) are points in the plane. Near-duplicates (closer than ``min_radius``
degrees) are fused to one point, the rest Delaunay-triangulated. A target pose inside the hull gets the
three sources of its enclosing triangle with its barycentric weights; a pose outside gets the nearest
point of the hull's boundary (one source on a vertex, two along an edge). Fewer than three distinct
poses, or all on one line, degrade to the nearest point of that segment (or the single source).
Roll is not part of the map: the reenactor rotates each source crop to the target's roll.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.spatial import Delaunay, QhullError, cKDTree

logger = logging.getLogger(__name__)

_EPS = 1e-9


@dataclass(frozen=True)
class Mix:
    """Up to three source faces and their weights (positive, summing to 1)."""

    indices: tuple[int, ...]
    """Indices into the poses the map was built from."""
    weights: tuple[float, ...]


def fuse_clusters(points: np.ndarray, radius: float) -> np.ndarray:
    """Indices of ``points`` to keep so that no two kept points are within ``radius``.

    Points with the most neighbours are kept first, so a dense cluster collapses onto its centre-most
    member rather than an outlier.
    """
    if len(points) < 2 or radius <= 0:
        return np.arange(len(points))
    neighbours = cKDTree(points).query_ball_point(points, r=radius)
    order = sorted(range(len(points)), key=lambda i: (-len(neighbours[i]), i))
    keep = np.ones(len(points), bool)
    for i in order:
        if keep[i]:
            for j in neighbours[i]:
                if j != i:
                    keep[j] = False
    return np.flatnonzero(keep)


def _project_to_segment(q: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``(t, distance)`` of the point ``a + t (b - a)`` of segment ab nearest ``q``, ``t`` in [0, 1]."""
    ab = b - a
    denom = float(ab @ ab)
    t = 0.0 if denom < _EPS else float(np.clip((q - a) @ ab / denom, 0.0, 1.0))
    return t, float(np.linalg.norm(a + t * ab - q))


class AppearanceMap:
    """Barycentric mixing of source faces over (yaw, pitch); see the module docstring."""

    def __init__(self, poses: np.ndarray, min_radius: float = 2.0) -> None:
        poses = np.asarray(poses, np.float64).reshape(-1, 2)
        if len(poses) == 0:
            raise ValueError("an appearance map needs at least one source pose")
        self.kept = fuse_clusters(poses, min_radius)
        self.points = poses[self.kept]
        self.tri: Delaunay | None = None
        self._hull_edges: np.ndarray | None = None
        self._segment: tuple[int, int] | None = None  # for collinear points: the extreme pair
        if len(self.points) >= 3:
            try:
                self.tri = Delaunay(self.points)
                self._hull_edges = self.tri.convex_hull
            except QhullError:
                self.tri = None
        if self.tri is None and len(self.points) >= 2:
            # Collinear (or two) points: the hull is the segment between the two extremes.
            centred = self.points - self.points.mean(0)
            axis = np.linalg.svd(centred, full_matrices=False)[2][0]
            proj = centred @ axis
            self._order = np.argsort(proj)
            self._proj = proj[self._order]
            self._axis = axis
        logger.debug("appearance map: %d poses, %d after fusing", len(poses), len(self.points))

    def __len__(self) -> int:
        return len(self.points)

    def _mix(self, local: list[int], weights: list[float]) -> Mix:
        w = np.clip(np.asarray(weights, np.float64), 0.0, None)
        pairs = [(int(self.kept[i]), float(x)) for i, x in zip(local, w / w.sum(), strict=True) if x > 1e-6]
        s = sum(x for _, x in pairs)
        return Mix(tuple(i for i, _ in pairs), tuple(x / s for _, x in pairs))

    def query(self, yaw: float, pitch: float) -> Mix:
        """The sources (indices into the poses given) and weights for a target at ``(yaw, pitch)``."""
        q = np.array([yaw, pitch], np.float64)
        if len(self.points) == 1:
            return self._mix([0], [1.0])
        if self.tri is None:
            # 1-D: linear interpolation between the neighbours along the line (clamped at the ends).
            x = float((q - self.points.mean(0)) @ self._axis)
            k = int(np.clip(np.searchsorted(self._proj, x), 1, len(self._proj) - 1))
            x0, x1 = self._proj[k - 1], self._proj[k]
            t = 0.0 if x1 - x0 < _EPS else float(np.clip((x - x0) / (x1 - x0), 0.0, 1.0))
            return self._mix([int(self._order[k - 1]), int(self._order[k])], [1 - t, t])
        simplex = int(self.tri.find_simplex(q))
        if simplex >= 0:
            tr = self.tri.transform[simplex]
            b = tr[:2] @ (q - tr[2])
            return self._mix(list(self.tri.simplices[simplex]), [b[0], b[1], 1 - b.sum()])
        # Outside the hull: the nearest point on its boundary.
        best: tuple[float, int, int, float] | None = None
        for i, j in self._hull_edges:
            t, d = _project_to_segment(q, self.points[i], self.points[j])
            if best is None or d < best[0]:
                best = (d, int(i), int(j), t)
        assert best is not None
        _, i, j, t = best
        return self._mix([i, j], [1 - t, t])
