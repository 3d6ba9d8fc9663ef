"""The v2 appearance map: which sources, with which barycentric weights, for a target pose."""

from __future__ import annotations

import numpy as np
import pytest

from stream.appearance_map import AppearanceMap, fuse_clusters

GRID = np.array([[-30, -10], [0, -10], [30, -10], [-30, 15], [0, 15], [30, 15], [5, 2]], np.float64)


def _blend(m: AppearanceMap, mix) -> np.ndarray:
    poses = GRID
    return sum(w * poses[i] for i, w in zip(mix.indices, mix.weights, strict=True))


def test_weights_sum_to_one_and_reproduce_the_query_inside_the_hull() -> None:
    m = AppearanceMap(GRID)
    rng = np.random.default_rng(0)
    for yaw, pitch in rng.uniform([-29, -9], [29, 14], (50, 2)):
        mix = m.query(yaw, pitch)
        assert 1 <= len(mix.indices) <= 3
        assert sum(mix.weights) == pytest.approx(1.0)
        assert all(w > 0 for w in mix.weights)
        np.testing.assert_allclose(_blend(m, mix), [yaw, pitch], atol=1e-6)


def test_exact_source_pose_gives_that_source_alone() -> None:
    m = AppearanceMap(GRID)
    for i, (yaw, pitch) in enumerate(GRID):
        mix = m.query(yaw, pitch)
        assert mix.indices == (i,) and mix.weights == pytest.approx((1.0,))


def test_outside_the_hull_uses_the_nearest_edge_or_vertex() -> None:
    m = AppearanceMap(GRID)
    edge = m.query(15.0, 40.0)  # above the top edge between (0, 15) and (30, 15)
    assert set(edge.indices) == {4, 5}
    np.testing.assert_allclose(_blend(m, edge), [15.0, 15.0], atol=1e-6)
    corner = m.query(60.0, -40.0)  # beyond the corner (30, -10)
    assert corner.indices == (2,) and corner.weights == pytest.approx((1.0,))


def test_degenerate_maps() -> None:
    one = AppearanceMap(np.array([[3.0, 4.0]]))
    assert one.query(50, -50).indices == (0,)
    line = AppearanceMap(np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]]))  # collinear: no triangles
    mix = line.query(15.0, 7.0)
    assert set(mix.indices) == {1, 2} and mix.weights == pytest.approx((0.5, 0.5))
    assert line.query(-30.0, 0.0).indices == (0,)


def test_near_duplicate_poses_are_fused() -> None:
    poses = np.array([[0.0, 0.0], [0.5, 0.2], [-0.4, 0.3], [20.0, 0.0], [0.0, 20.0]])
    keep = fuse_clusters(poses, 2.0)
    assert len(keep) == 3 and 3 in keep and 4 in keep
    m = AppearanceMap(poses, min_radius=2.0)
    assert len(m) == 3
    mix = m.query(0.0, 0.0)
    assert set(mix.indices) <= set(keep.tolist())  # indices refer to the poses given
