"""The face-mesh -> WFLW-98 map on real faces (MediaPipe FaceMesh, static mode)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from _learned_faces import images, mesh_of

from stream.landmarks98 import (
    MESH_TO_WFLW,
    WFLW_FLIP,
    WFLW_GROUPS,
    WFLW_TO_68,
    mesh_to_ibug68,
    mesh_to_wflw98,
    wflw98_to_68,
)


@pytest.fixture(scope="module")
def meshes() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """name -> (image, mesh, mesh of the horizontally flipped image)."""
    import mediapipe as mp

    out = {}
    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True)
    with mesh as fm:
        for name, image in images().items():
            out[name] = (image, mesh_of(fm, image), mesh_of(fm, np.ascontiguousarray(image[:, ::-1])))
    return out


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def test_table_is_valid() -> None:
    assert len(MESH_TO_WFLW) == 98
    for a, b, t in MESH_TO_WFLW:
        assert 0 <= a < 478 and 0 <= b < 478 and 0.0 <= t < 1.0
    assert sorted(WFLW_FLIP) == list(range(98))
    assert np.array_equal(WFLW_FLIP[WFLW_FLIP], np.arange(98))  # an involution
    assert len(set(WFLW_TO_68.tolist())) == 68


@pytest.mark.parametrize("name", ["astronaut", "hopper"])
def test_wflw_order_on_a_real_face(meshes, name: str) -> None:
    _, mesh, _ = meshes[name]
    p = mesh_to_wflw98(mesh)
    assert p.shape == (98, 2) and p.dtype == np.float32
    jaw = p[:33]
    # The contour sweeps once around the nose tip, from the image's left down to the chin (16, the lowest
    # point) and up the right: its angle about the tip falls monotonically from ~180 to ~0 degrees.
    angle = np.degrees(np.arctan2(jaw[:, 1] - p[54, 1], jaw[:, 0] - p[54, 0]))
    angle = np.where(angle < -90, angle + 360, angle)
    assert np.all(np.diff(angle) < 0) and angle[0] > 150 and angle[-1] < 30
    assert int(np.argmax(jaw[:, 1])) in (15, 16, 17)
    assert np.all(np.diff(jaw[:17, 1]) > -1) and np.all(np.diff(jaw[16:, 1]) < 1)
    # The contour is the lower face boundary: from eye height down, below the mouth and nose.
    eye_y = p[[60, 72], 1].mean()
    tol = 0.1 * (jaw[16, 1] - eye_y)
    assert abs(jaw[0, 1] - eye_y) < tol and abs(jaw[32, 1] - eye_y) < tol
    assert jaw[16, 1] > p[76:96, 1].max() > p[51:60, 1].max()
    assert jaw[0, 0] < p[60:76, 0].min() and jaw[32, 0] > p[60:76, 0].max()
    # Brows above the eyes, eyes above the nose base, nose base above the mouth.
    assert p[33:51, 1].max() < p[60:76, 1].mean() < p[55:60, 1].mean() < p[76:88, 1].mean()
    # Subject's right (image left) before left: brows, eyes, pupils, corners.
    assert p[33:42, 0].mean() < p[42:51, 0].mean() and p[60:68, 0].mean() < p[68:76, 0].mean()
    assert p[96, 0] < p[97, 0] and p[76, 0] < p[82, 0] and p[88, 0] < p[92, 0]
    # Eyes and lips are closed polygons with a consistent winding (same sign for all, none degenerate).
    for group in ("right_eye", "left_eye", "outer_lips"):
        assert _polygon_area(p[list(WFLW_GROUPS[group])]) > 5.0, group
    # Pupils lie inside their eye polygons.
    for eye, pupil in (("right_eye", 96), ("left_eye", 97)):
        poly = p[list(WFLW_GROUPS[eye])].reshape(-1, 1, 2)
        assert cv2.pointPolygonTest(poly, tuple(map(float, p[pupil])), False) >= 0
    # The nose bridge descends from between the eyes to the tip.
    assert np.all(np.diff(p[51:55, 1]) > 0)


@pytest.mark.parametrize("name", ["astronaut", "hopper"])
def test_symmetric_points_mirror_under_flip(meshes, name: str) -> None:
    image, mesh, mesh_flipped = meshes[name]
    width = image.shape[1]
    p = mesh_to_wflw98(mesh)
    q = mesh_to_wflw98(mesh_flipped)
    # Flip the flipped image's points back; WFLW's right/left swap must bring them onto the originals.
    back = q[WFLW_FLIP].copy()
    back[:, 0] = width - back[:, 0]
    face = p[:33, 0].max() - p[:33, 0].min()
    err = np.linalg.norm(back - p, axis=1)
    assert err.max() < 0.04 * face, (int(err.argmax()), float(err.max()))
    # Without the permutation the mirror does not match (the test can tell left from right).
    unpermuted = q.copy()
    unpermuted[:, 0] = width - unpermuted[:, 0]
    assert np.linalg.norm(unpermuted - p, axis=1).mean() > 0.1 * face


def test_68_point_subset(meshes) -> None:
    _, mesh, _ = meshes["astronaut"]
    p98 = mesh_to_wflw98(mesh)
    p68 = mesh_to_ibug68(mesh)
    assert p68.shape == (68, 2)
    np.testing.assert_array_equal(p68, wflw98_to_68(p98))
    np.testing.assert_array_equal(p68[0], p98[0])
    np.testing.assert_array_equal(p68[8], p98[16])  # chin
    np.testing.assert_array_equal(p68[16], p98[32])
    np.testing.assert_array_equal(p68[48:], p98[76:96])  # mouth
    assert np.all(np.diff(p68[4:13, 0]) > 0)  # along the jaw, left to right


def test_batches_and_rejects_short_meshes() -> None:
    rng = np.random.default_rng(0)
    mesh = rng.uniform(0, 100, (2, 3, 478, 3)).astype(np.float32)
    out = mesh_to_wflw98(mesh)
    assert out.shape == (2, 3, 98, 2)
    np.testing.assert_allclose(out[1, 2], mesh_to_wflw98(mesh[1, 2]))
    with pytest.raises(ValueError, match="478"):
        mesh_to_wflw98(mesh[..., :468, :])
