"""MediaPipe face mesh (478 points) -> the 98-point WFLW layout the FSGAN networks were trained on.

FSGAN v2 draws its landmark heatmaps from the 98 WFLW points of an HRNet detector; v1 from the 68-point
iBUG layout. The mesh has no such points, so every WFLW point is a fixed linear blend of (at most) two
mesh vertices: ``wflw[k] = (1 - t) * mesh[a] + t * mesh[b]``.

How the table was made: each WFLW group is a polyline of mesh vertices (below), resampled at equal arc
length on two real frontal faces (scikit-image's astronaut, matplotlib's Grace Hopper), the arc positions
averaged, made left/right symmetric and rounded to 0.01. A fixed table keeps the map linear (one gather
per face), deterministic and free of per-frame geometry.

=========  ==========================================================  ===========================
WFLW       mesh polyline                                                note
=========  ==========================================================  ===========================
0-16       127 234 93 132 58 172 136 150 149 176 148 152                jaw, image-left half, 17 pts
16-32      152 377 400 378 379 365 397 288 361 323 454 356              jaw, image-right half
33-37      70 63 105 66 107                                             right brow top, outer->inner
38-41      55 65 52 53 (46)                                             right brow bottom, inner->outer
42-46      336 296 334 293 300                                          left brow top, inner->outer
47-50      (276) 283 282 295 285                                        left brow bottom, outer->inner
51-54      168 6 197 195 5 4                                            nose bridge, root->tip
55-59      98 97 2 326 327                                              nose base, right->left
60-64      33 246 161 160 159 158 157 173 133                           right eye top, outer->inner
65-67      (133) 155 154 153 145 144 163 7 (33)                         right eye bottom, inner->outer
68-72      362 398 384 385 386 387 388 466 263                          left eye top, inner->outer
73-75      (263) 249 390 373 374 380 381 382 (362)                      left eye bottom, outer->inner
76-82      61 185 40 39 37 0 267 269 270 409 291                        outer lip top, right->left
83-87      (291) 375 321 405 314 17 84 181 91 146 (61)                  outer lip bottom, left->right
88-92      78 191 80 81 82 13 312 311 310 415 308                       inner lip top, right->left
93-95      (308) 324 318 402 317 14 87 178 88 95 (78)                   inner lip bottom, left->right
96, 97     468, 473                                                     pupils (iris centres)
=========  ==========================================================  ===========================

"Right"/"left" are the subject's, as WFLW names them: the subject's right is the image's left. The jaw
needs care because the mesh's face oval continues over the forehead (vertex 10): only its lower part is
used, starting at eye height (127 / 356, the oval vertices level with the outer eye corners, where WFLW
starts its contour) and meeting at the chin (152 = WFLW 16). Parenthesised vertices are the ends of a
polyline that are already another WFLW point (a corner) and are not repeated.
"""

from __future__ import annotations

import numpy as np

# (mesh a, mesh b, t) per WFLW index: wflw = (1 - t) * mesh[a] + t * mesh[b]. See the module docstring.
MESH_TO_WFLW: tuple[tuple[int, int, float], ...] = (
    # 0-32: jaw, image left -> chin -> image right
    (127, 127, 0.0), (127, 234, 0.69), (234, 93, 0.37), (93, 132, 0.03), (93, 132, 0.64),
    (132, 58, 0.22), (132, 58, 0.78), (58, 172, 0.39), (172, 136, 0.03), (172, 136, 0.77),
    (136, 150, 0.49), (150, 149, 0.22), (149, 176, 0.06), (149, 176, 0.89), (176, 148, 0.67),
    (148, 152, 0.36), (152, 152, 0.0), (152, 377, 0.64), (377, 400, 0.33), (400, 378, 0.11),
    (400, 378, 0.94), (378, 379, 0.78), (379, 365, 0.51), (365, 397, 0.23), (365, 397, 0.97),
    (397, 288, 0.61), (288, 361, 0.22), (288, 361, 0.78), (361, 323, 0.36), (361, 323, 0.97),
    (323, 454, 0.63), (454, 356, 0.31), (356, 356, 0.0),
    # 33-37: right brow top
    (70, 70, 0.0), (63, 105, 0.33), (105, 66, 0.37), (66, 107, 0.23), (107, 107, 0.0),
    # 38-41: right brow bottom
    (55, 55, 0.0), (55, 65, 0.68), (65, 52, 0.49), (52, 53, 0.56),
    # 42-46: left brow top
    (336, 336, 0.0), (336, 296, 0.77), (296, 334, 0.63), (334, 293, 0.67), (300, 300, 0.0),
    # 47-50: left brow bottom
    (283, 282, 0.44), (282, 295, 0.51), (295, 285, 0.32), (285, 285, 0.0),
    # 51-54: nose bridge
    (168, 168, 0.0), (6, 197, 0.69), (195, 5, 0.48), (4, 4, 0.0),
    # 55-59: nose base
    (98, 98, 0.0), (98, 97, 0.92), (2, 2, 0.0), (326, 327, 0.08), (327, 327, 0.0),
    # 60-64: right eye top
    (33, 33, 0.0), (160, 159, 0.09), (159, 158, 0.57), (158, 157, 0.96), (133, 133, 0.0),
    # 65-67: right eye bottom
    (154, 153, 0.53), (153, 145, 0.97), (144, 163, 0.52),
    # 68-72: left eye top
    (362, 362, 0.0), (384, 385, 0.04), (385, 386, 0.43), (386, 387, 0.91), (263, 263, 0.0),
    # 73-75: left eye bottom
    (390, 373, 0.48), (374, 380, 0.03), (380, 381, 0.47),
    # 76-82: outer lip top
    (61, 61, 0.0), (40, 39, 0.50), (39, 37, 0.88), (0, 0, 0.0), (267, 269, 0.12), (269, 270, 0.50),
    (291, 291, 0.0),
    # 83-87: outer lip bottom
    (321, 405, 0.13), (405, 314, 0.65), (17, 17, 0.0), (84, 181, 0.35), (181, 91, 0.87),
    # 88-92: inner lip top
    (78, 78, 0.0), (81, 82, 0.07), (13, 13, 0.0), (312, 311, 0.93), (308, 308, 0.0),
    # 93-95: inner lip bottom
    (318, 402, 0.88), (14, 14, 0.0), (178, 88, 0.12),
    # 96-97: pupils
    (468, 468, 0.0), (473, 473, 0.0),
)
assert len(MESH_TO_WFLW) == 98

_A = np.array([r[0] for r in MESH_TO_WFLW], np.intp)
_B = np.array([r[1] for r in MESH_TO_WFLW], np.intp)
_T = np.array([r[2] for r in MESH_TO_WFLW], np.float32)[:, None]


def _wflw_flip() -> np.ndarray:
    perm = np.arange(98)
    pairs = [(list(range(0, 16)), list(range(32, 16, -1))),
             (list(range(33, 42)), [46, 45, 44, 43, 42, 50, 49, 48, 47]),
             ([55, 56], [59, 58]),
             ([*range(60, 68), 96], [72, 71, 70, 69, 68, 75, 74, 73, 97]),
             ([76, 77, 78, 87, 86], [82, 81, 80, 83, 84]),
             ([88, 89, 95], [92, 91, 93])]
    for right, left in pairs:
        perm[right], perm[left] = left, right
    return perm


WFLW_FLIP: np.ndarray = _wflw_flip()
"""Permutation of the 98 WFLW indices under a horizontal flip of the image (right <-> left)."""

WFLW_TO_68: np.ndarray = np.array(
    [*range(0, 33, 2),  # jaw: every other contour point, 0..32
     33, 34, 35, 36, 37, 42, 43, 44, 45, 46,  # brows: the upper contours
     51, 52, 53, 54, 55, 56, 57, 58, 59,  # nose
     60, 61, 63, 64, 65, 67, 68, 69, 71, 72, 73, 75,  # eyes: corners and two points per lid
     *range(76, 96)],  # mouth: same 20 points in the same order
    np.intp)
"""WFLW index of each of the 68 iBUG points (the layout of FSGAN v1)."""
assert WFLW_TO_68.shape == (68,)

# Groups of the 98-point layout (for drawing, tests and per-part processing).
WFLW_GROUPS: dict[str, tuple[int, ...]] = {
    "jaw": tuple(range(0, 33)),
    "right_brow": tuple(range(33, 42)),
    "left_brow": tuple(range(42, 51)),
    "nose": tuple(range(51, 60)),
    "right_eye": tuple(range(60, 68)),
    "left_eye": tuple(range(68, 76)),
    "outer_lips": tuple(range(76, 88)),
    "inner_lips": tuple(range(88, 96)),
    "pupils": (96, 97),
}


def mesh_to_wflw98(mesh: np.ndarray) -> np.ndarray:
    """The 98 WFLW points of face-mesh landmarks ``(..., 478, C)`` as ``(..., 98, 2)`` float32 (x, y)."""
    if mesh.shape[-2] < 478:
        raise ValueError(f"need 478 face-mesh points (refined iris), got {mesh.shape[-2]}")
    xy = mesh[..., :2].astype(np.float32, copy=False)
    return (xy[..., _A, :] * (1 - _T) + xy[..., _B, :] * _T).astype(np.float32)


def wflw98_to_68(points: np.ndarray) -> np.ndarray:
    """The 68 iBUG points of 98 WFLW points ``(..., 98, C)`` -> ``(..., 68, C)``."""
    return points[..., WFLW_TO_68, :]


def mesh_to_ibug68(mesh: np.ndarray) -> np.ndarray:
    """The 68 iBUG points of face-mesh landmarks ``(..., 478, C)`` as ``(..., 68, 2)`` float32."""
    return wflw98_to_68(mesh_to_wflw98(mesh))
