"""Weight-free reenactment: the source face warped onto the target's face mesh.

The warp is piecewise affine over the mesh triangulation (:mod:`stream.mesh`), i.e. a dense flow that
follows the geometry of both faces. Per target crop the map "crop pixel -> source pixel" is built on a
grid ``step`` times coarser than the crop — a triangle-id map rasterised with numpy scan lines, then one
affine matrix per triangle applied to every grid point at once — and upsampled bilinearly, which is
exact up to the kinks at triangle edges because the piecewise-affine map is continuous. One
``cv2.remap`` over the face's bounding box then samples the source.

Per-source work happens in :meth:`MeshWarpReenactor.set_source`: the source is cropped around its
face, converted to float32, given a half-resolution pyramid (so a large source is not aliased onto a
small target), and each of its triangles is judged usable or not — back-facing or hidden behind a
nearer part of the face (a z-buffer over the source mesh), degenerate or seen edge-on; the source
half of every triangle's affine map (its corner and edge vectors, per pyramid level) is kept too, so a
frame only inverts its own 2x2 edge matrices. Target pixels
whose triangle is unusable in the source, or that would sample outside the source image, get
``coverage`` 0 and are left to the ``complete`` stage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from stream import mesh
from stream.choices import StageKind
from stream.exceptions import InputError
from stream.frames import FaceWork, SourceFace
from stream.stages.base import SourceBank
from stream.stages.color import to_uint8
from stream.stages.temporal import AffineMemo, carry_matrix

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedSource:
    """A source face made ready for warping (built once per source)."""

    levels: tuple[np.ndarray, ...]
    """RGB crops around the face, float32 (uint8, rounded, for an eight-bit warp); ``levels[k]`` is
    downscaled by ``2**k``."""
    points: np.ndarray
    """(504, 3) extended mesh points in ``levels[0]`` pixels."""
    valid: np.ndarray
    """(F,) bool per triangle of :func:`stream.mesh.extended_triangles`: usable as a warp source."""
    size: float
    """Face size (:func:`stream.mesh.face_size`) in ``levels[0]`` pixels."""
    corners: tuple[np.ndarray, ...]
    """Per level: (F, 2, 3) float64, each triangle's first corner and its two edge vectors (as
    columns) in that level's pixels — the source half of every per-frame affine map."""


@dataclass(frozen=True)
class WarpMap:
    """The dense map of one target crop: for crop pixels ``[y0:y0+h, x0:x0+w]``, where to sample."""

    x0: int
    y0: int
    planes: np.ndarray
    """(h, w, 3) float32: source x and y in ``PreparedSource.levels[level]`` pixels, and the coverage.
    One array, so that carrying the map to the next frame is one resampling, not three."""
    level: int

    @property
    def map_x(self) -> np.ndarray:
        """(h, w) view: x in ``PreparedSource.levels[level]`` pixels."""
        return self.planes[..., 0]

    @property
    def map_y(self) -> np.ndarray:
        """(h, w) view: y in ``PreparedSource.levels[level]`` pixels."""
        return self.planes[..., 1]

    @property
    def coverage(self) -> np.ndarray:
        """(h, w) view in [0, 1]: 1 where a usable source triangle maps inside the source image."""
        return self.planes[..., 2]


def _corners(points: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """(F, 2, 3) float64: per triangle, columns ``[p1 - p0, p2 - p0, p0]`` of its corners' x, y."""
    p = np.asarray(points, np.float64)[:, :2][tris]  # (F, 3, 2)
    return np.stack([p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], p[:, 0]], -1)


def _triangle_affines(dst: np.ndarray, src_corners: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """(F, 6) affine maps ``(a00, a01, a02, a10, a11, a12)`` taking each ``dst`` triangle onto the
    source triangle whose :func:`_corners` are ``src_corners`` (same order as ``tris``)."""
    p = np.asarray(dst, np.float64)[:, :2]
    p0, p1, p2 = p[tris[:, 0]], p[tris[:, 1]], p[tris[:, 2]]
    e1x, e1y = p1[:, 0] - p0[:, 0], p1[:, 1] - p0[:, 1]
    e2x, e2y = p2[:, 0] - p0[:, 0], p2[:, 1] - p0[:, 1]
    det = e1x * e2y - e1y * e2x
    inv_det = 1.0 / np.where(np.abs(det) < 1e-12, 1e-12, det)
    # Inverse of the target edge matrix [e1 e2] (columns), then source edges times it.
    i00, i01, i10, i11 = e2y * inv_det, -e2x * inv_det, -e1y * inv_det, e1x * inv_det
    out = np.empty((len(tris), 6))
    for row in range(2):
        f1, f2, s0 = src_corners[:, row, 0], src_corners[:, row, 1], src_corners[:, row, 2]
        a, b = f1 * i00 + f2 * i10, f1 * i01 + f2 * i11
        out[:, 3 * row] = a
        out[:, 3 * row + 1] = b
        out[:, 3 * row + 2] = s0 - a * p0[:, 0] - b * p0[:, 1]
    return out


class MeshWarpReenactor:
    """``reenact`` stage: piecewise-affine warp of the source mesh onto the target mesh.

    Args:
        margin: how far (relative to the face) the warped mesh reaches beyond the face oval.
        step: the dense map is computed every ``step`` crop pixels and upsampled (1 = exact
            everywhere); None picks one per face, a grid step of about 1/100 of the face size,
            which keeps the map within ~0.3 px of exact at the 99th percentile (measured; errors
            concentrate at the kinks between triangles of very different stretch).
        min_cos: source triangles seen more edge-on than this (cosine of the angle between the
            triangle's normal and the view direction, from the mesh's z) count as degenerate.
        reuse: a track's dense map is carried to the next frames, through the affine motion of its
            landmarks, for up to this many frames (1: rebuilt every frame) — see
            :class:`~stream.stages.temporal.AffineMemo`. The source is still sampled afresh every
            frame, so the result keeps its sharpness.
        reuse_tolerance: largest landmark residual (pixels) of that affine motion.
        eight_bit: sample the source levels rounded to uint8 into a uint8 ``reenacted`` (what every later
            stage of the weight-free chain rounds it to anyway) instead of float32: a quarter of the memory
            read and written per face and frame. The default chain's choice: its stages took 2.18-2.26 ->
            2.06-2.12 ms a frame on the demo clip (the two chains interleaved frame by frame, 2 runs). Sources
            are prepared in that dtype only (a source video's bank holds levels for every frame it keeps).
        name: the stage's name in timings.
    """

    kind: ClassVar[StageKind] = "reenact"

    def __init__(self, *, margin: float = 0.1, step: int | None = None, min_cos: float = 0.05,
                 reuse: int = 6, reuse_tolerance: float = 0.3, eight_bit: bool = False,
                 name: str = "mesh_warp") -> None:
        if step is not None and step < 1:
            raise InputError(f"step must be >= 1, got {step}")
        if not 0 <= margin <= 1:
            raise InputError(f"margin must be in [0, 1], got {margin}")
        self.name = name
        self.margin = margin
        self.step = step
        self.min_cos = min_cos
        self.eight_bit = eight_bit
        self._tris = mesh.extended_triangles()
        self._prepared: dict[int, tuple[SourceFace, PreparedSource]] = {}
        # Per (track, source face): the map of a recent frame and its crop's origin in the frame.
        self.maps: AffineMemo[tuple[tuple[int, int], WarpMap]] = AffineMemo(reuse, tolerance=reuse_tolerance)

    # -- per source -----------------------------------------------------------------------------

    def set_source(self, bank: SourceBank) -> None:
        self._prepared = {id(f): (f, self.prepare(f)) for f in bank.faces}
        self.maps.clear()

    def prepare(self, face: SourceFace) -> PreparedSource:
        """Crop, pyramid and triangle usability of one source face."""
        pts = mesh.extended_points(face.landmarks, self.margin)
        h, w = face.image.shape[:2]
        size = mesh.face_size(face.landmarks)
        pad = max(4, int(0.05 * size))
        x0, y0 = np.maximum(np.floor(pts[:, :2].min(0)).astype(int) - pad, 0)
        x1, y1 = np.minimum(np.ceil(pts[:, :2].max(0)).astype(int) + pad + 1, (w, h))
        if x1 - x0 < 2 or y1 - y0 < 2:
            raise InputError(f"source face at frame {face.frame_index} lies outside its image")
        pts = pts.copy()
        pts[:, :2] -= (x0, y0)
        levels = [face.image[y0:y1, x0:x1].astype(np.float32)]
        while size / 2 ** len(levels) >= 48 and min(levels[-1].shape[:2]) >= 16:
            prev = levels[-1]
            levels.append(cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2),
                                     interpolation=cv2.INTER_AREA))
        corners = []
        for k in range(len(levels)):
            f = 2.0 ** k
            corners.append(_corners((pts[:, :2] + 0.5) / f - 0.5, self._tris))
        if self.eight_bit:  # only what the warp samples is kept (a source video's bank holds one per frame)
            levels = [to_uint8(lv) for lv in levels]
        return PreparedSource(tuple(levels), pts, self._usable(pts, size), size, tuple(corners))

    def _usable(self, pts: np.ndarray, size: float) -> np.ndarray:
        tris = self._tris
        area = mesh.signed_areas(pts, tris)
        p = pts.astype(np.float64)[tris]
        area3 = np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1)
        ok = (area > 1e-6 * size * size) & (area >= self.min_cos * area3)
        # Self-occlusion: paint the usable triangles far to near at ~128 px per face and keep those
        # that stay mostly visible (small ones cannot be judged and are kept).
        scale = min(1.0, 128.0 / max(size, 1.0))
        q = pts[:, :2] * scale
        shape = (int(np.ceil(q[:, 1].max())) + 2, int(np.ceil(q[:, 0].max())) + 2)
        idx = np.flatnonzero(ok)
        idx = idx[np.argsort(-p[idx, :, 2].mean(1), kind="stable")]
        ids = mesh.rasterize_triangles(q, tris[idx], shape)
        seen = np.bincount(ids[ids >= 0], minlength=len(idx))
        expected = area[idx] * scale * scale / 2
        hidden = (expected >= 6) & (seen < 0.4 * expected)
        ok[idx[hidden]] = False
        return ok

    # -- per frame ------------------------------------------------------------------------------

    def _lookup(self, source: SourceFace) -> PreparedSource:
        hit = self._prepared.get(id(source))
        if hit is None or hit[0] is not source:
            # A source that was not in the bank (e.g. built by hand): prepare it and keep it.
            prepared = self.prepare(source)
            self._prepared[id(source)] = (source, prepared)
            return prepared
        return hit[1]

    def grid_step(self, face_size: float) -> int:
        """The grid step of the dense map for a target face of ``face_size`` pixels."""
        return self.step or int(np.clip(face_size // 100, 1, 4))

    def dense_map(self, work: FaceWork) -> WarpMap | None:
        """The map from ``work``'s crop into its source; None when no target triangle is visible.

        Carried from a recent frame of the same track when the landmarks moved by an affine map
        (``reuse``), else built from the meshes.
        """
        if not work.crop.is_region:
            return self.build_map(work)
        key = (work.target.track_id, id(work.source))
        carried = self.maps.carry(key, work.frame_index, work.target.landmarks,
                                  lambda stored, motion: self._carry(stored[1], stored[0], motion, work))
        if carried is not None:
            return carried
        wm = self.build_map(work)
        if wm is not None:
            self.maps.put(key, work.frame_index, work.target.landmarks, (work.crop.origin, wm))
        return wm

    @staticmethod
    def _carry(old: WarpMap, origin: tuple[int, int], motion: np.ndarray, work: FaceWork) -> WarpMap | None:
        """``old`` (built for a crop at ``origin``) moved by ``motion`` (old frame -> this frame) into
        ``work``'s crop: one affine resampling of its planes, over the box the old map lands in."""
        crop_w, crop_h = work.crop.size
        oh, ow = old.planes.shape[:2]
        ox, oy = origin[0] + old.x0, origin[1] + old.y0  # the old map's top-left, old frame pixels
        corners = np.array([[0, 0], [ow, 0], [0, oh], [ow, oh]], np.float64) + np.array([ox - 0.5, oy - 0.5])
        moved = corners @ motion[:, :2].T + motion[:, 2] - work.crop.origin
        x0, y0 = np.maximum(np.floor(moved.min(0)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(moved.max(0)).astype(int) + 1, (crop_w, crop_h))
        if x1 <= x0 or y1 <= y0:
            return None
        new_x, new_y = work.crop.origin[0] + x0, work.crop.origin[1] + y0
        a = carry_matrix(motion, (ox, oy), (new_x, new_y))
        size = (int(x1 - x0), int(y1 - y0))
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        # Outside the old map nothing is sampled (far outside the source) and nothing is covered.
        planes = cv2.warpAffine(old.planes, a, size, flags=flags, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=(-1e6, -1e6, 0.0))
        return WarpMap(int(x0), int(y0), planes, old.level)

    def build_map(self, work: FaceWork) -> WarpMap | None:
        """The map from ``work``'s crop into its source, built from the two meshes."""
        src = self._lookup(work.source)
        tgt = mesh.extended_points(work.landmarks, self.margin)
        tris = self._tris
        crop_w, crop_h = work.crop.size
        tgt_size = mesh.face_size(work.landmarks)
        ratio = src.size / max(tgt_size, 1e-6)
        level = int(np.clip(np.floor(np.log2(max(ratio, 1e-6))), 0, len(src.levels) - 1))

        # Draw only triangles facing the camera in the target, far to near.
        draw = np.flatnonzero(mesh.signed_areas(tgt, tris) > 1e-6)
        if draw.size == 0:
            return None
        drawn = tris[draw]
        draw = draw[np.argsort(-tgt[drawn, 2].sum(1), kind="stable")]
        drawn = tris[draw]
        s = self.grid_step(tgt_size)
        used = np.zeros(len(tgt), bool)
        used[drawn.ravel()] = True
        lo, hi = tgt[used, :2].min(0), tgt[used, :2].max(0)
        x0, y0 = max(int(np.floor(lo[0])), 0), max(int(np.floor(lo[1])), 0)
        x1, y1 = min(int(np.ceil(hi[0])) + 1, crop_w), min(int(np.ceil(hi[1])) + 1, crop_h)
        if x1 <= x0 or y1 <= y0:
            return None
        gw, gh = -(-(x1 - x0) // s), -(-(y1 - y0) // s)
        # Grid point (i, j) sits at crop pixel (x0 + (i + .5) s - .5, ...), the centre convention of
        # cv2.resize, so upsampling by exactly ``s`` lands every value on its pixel.
        grid_pts = (tgt[:, :2] - (x0, y0) + 0.5) / s - 0.5
        ids = mesh.rasterize_triangles(grid_pts, drawn, (gh, gw))
        inside = ids >= 0
        # One grid step of extrapolation past the mesh edge, so bilinear upsampling near the edge
        # mixes only real map values.
        grown = cv2.dilate(ids.astype(np.float32), np.ones((3, 3), np.uint8)).astype(np.int32)
        ids = np.where(inside, ids, grown)
        # Row -1 (no triangle) maps far outside any image: every upsampled pixel that mixes it in then
        # samples nothing (remap's constant border) instead of a random source pixel.
        aff = np.empty((len(draw) + 1, 6), np.float32)
        aff[:-1] = _triangle_affines(tgt, src.corners[level][draw], drawn)
        aff[-1] = (0, 0, -1e6, 0, 0, -1e6)
        # One gather per coefficient (much faster than gathering (gh, gw, 2, 3) blocks).
        a00, a01, a02, a10, a11, a12 = (np.take(np.ascontiguousarray(c), ids) for c in aff.T)
        gx = (x0 - 0.5 + s * (np.arange(gw, dtype=np.float32) + 0.5))[None, :]
        gy = (y0 - 0.5 + s * (np.arange(gh, dtype=np.float32) + 0.5))[:, None]
        mx = a00 * gx + a01 * gy + a02
        my = a10 * gx + a11 * gy + a12
        lh, lw = src.levels[level].shape[:2]
        cov = inside & np.append(src.valid[draw], False)[ids]
        cov &= (mx >= -0.5) & (mx <= lw - 0.5) & (my >= -0.5) & (my <= lh - 0.5)
        planes = cv2.merge((mx, my, cov.view(np.uint8).astype(np.float32)))
        w, h = min(gw * s, crop_w - x0), min(gh * s, crop_h - y0)
        if s > 1:
            planes = cv2.resize(planes, (gw * s, gh * s), interpolation=cv2.INTER_LINEAR)
        return WarpMap(x0, y0, planes[:h, :w], level)

    def process(self, faces: Sequence[FaceWork]) -> None:
        for work in faces:
            h, w = work.image.shape[:2]
            levels = self._lookup(work.source).levels
            out = np.zeros((h, w, 3), levels[0].dtype)  # the dtype the source was prepared in
            coverage = np.zeros((h, w), np.float32)
            wm = self.dense_map(work)
            if wm is not None:
                src = levels[wm.level]
                ph, pw = wm.planes.shape[:2]
                # Uncovered pixels hold no source (no folded or out-of-image samples leak on): send
                # them outside the image, where remap's constant border writes 0. (Into a copy: the
                # map itself may be carried to later frames, where these pixels' neighbours need it.)
                map_x, map_y, cov = cv2.split(wm.planes)
                map_x = np.where(cov > 0, map_x, np.float32(-1e6))
                cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR,
                          dst=out[wm.y0:wm.y0 + ph, wm.x0:wm.x0 + pw],
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                coverage[wm.y0:wm.y0 + ph, wm.x0:wm.x0 + pw] = cov
            work.reenacted = out
            work.coverage = coverage

    def close(self) -> None:
        self._prepared = {}
        self.maps.clear()
