"""The learned FSGAN stages: reenact (v2 appearance map or v1 stepwise), segment, complete, blend.

Each stage drives one :class:`Engine` (``engines.create_engine``: arrays in, list of arrays out) and
runs all faces of a frame as one batch. The networks see square ``resolution`` crops (256) at FSGAN's
crop scale, images in [-1, 1] NCHW, generators a two-level pyramid ``[x, pool(x)]`` (a 3x3, stride 2
average pool that ignores padding, as FSGAN's ``create_pyramid``; source images use ``cv2.pyrDown``
as FSGAN's ``Pyramids`` transform does).

What follows FSGAN's ``swap.py`` (v2) and ``face_swap_*`` / ``reenactment_stepwise.py`` (v1):

- reenact v2: the source frames of the target pose's appearance-map triangle are rotated to the
  target's roll, each reenacted by Gr from ``[source, target heatmaps]``, and the results mixed with
  the barycentric weights;
- reenact v1: one source (nearest pose) is reenacted in ``steps`` passes along landmarks whose head
  pose moves from the source's to the target's, the last pass at the target's own landmarks; Gr's
  segmentation head gives the reenacted face region;
- segment: S labels background / face / hair; the target's face (class 1) is softly eroded (the soft
  mask pastes the result, the hard one feeds Gc and Gb); with ``segment_reenacted`` S also finds the
  reenacted face, outside which the reenactment is discarded;
- complete: Gc fills the target face region from ``[reenacted with background -1, hard mask]``;
- blend: Gb harmonises ``[transfer, target, hard mask]``, ``transfer`` being the completed face inside
  the hard mask and the target outside; the output is pasted with the soft mask.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from stream.appearance_map import AppearanceMap
from stream.choices import StageKind
from stream.exceptions import InputError
from stream.frames import CropTransform, FaceWork, HeadPose, SourceFace, TrackedFace
from stream.heatmaps import heatmaps_v1, heatmaps_v2, normalize_points
from stream.landmarks98 import WFLW_GROUPS, mesh_to_ibug68, mesh_to_wflw98
from stream.stages.base import CropSpec, SourceBank

logger = logging.getLogger(__name__)

FACE_CLASS = 1
"""Segmentation classes of FSGAN's S: 0 background, 1 face, 2 hair."""


class Engine(Protocol):
    """What ``engines.create_engine`` returns: float32 NCHW arrays in, a list of arrays out."""

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]: ...

    def close(self) -> None: ...


# --- tensors ----------------------------------------------------------------------------------------

def to_network(images: np.ndarray) -> np.ndarray:
    """``(B, H, W, 3)`` pixels 0..255 -> ``(B, 3, H, W)`` float32 in [-1, 1]."""
    x = np.asarray(images, np.float32).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x * (2.0 / 255.0) - 1.0)


def from_network(x: np.ndarray) -> np.ndarray:
    """``(B, 3, H, W)`` in [-1, 1] -> ``(B, H, W, 3)`` float32 pixels clipped to 0..255."""
    return np.clip((np.asarray(x, np.float32).transpose(0, 2, 3, 1) + 1.0) * 127.5, 0.0, 255.0)


def output_pixels(image: np.ndarray) -> np.ndarray:
    """:func:`from_network` pixels (float, 0..255) -> uint8, rounded half to even."""
    return np.round(image).astype(np.uint8)


def pool_half(x: np.ndarray) -> np.ndarray:
    """3x3 average pool, stride 2, padding 1, padding not counted: ``(B, C, H, W)`` -> half size."""
    b, c, h, w = x.shape
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ones = np.pad(np.ones((h, w), np.float32), 1)
    ho, wo = (h + 1) // 2, (w + 1) // 2
    acc = np.zeros((b, c, ho, wo), np.float32)
    cnt = np.zeros((ho, wo), np.float32)
    for dy in range(3):
        for dx in range(3):
            acc += p[:, :, dy:dy + 2 * ho:2, dx:dx + 2 * wo:2]
            cnt += ones[dy:dy + 2 * ho:2, dx:dx + 2 * wo:2]
    return acc / cnt


def pyramid(x: np.ndarray, levels: int = 2) -> list[np.ndarray]:
    """FSGAN's ``create_pyramid``: ``[x, pool_half(x), ...]``."""
    out = [np.ascontiguousarray(x, np.float32)]
    for _ in range(levels - 1):
        out.append(pool_half(out[-1]))
    return out


def erosion_kernel(kernel_size: int) -> np.ndarray:
    """The cone kernel of FSGAN's ``SoftErosion``: ``(k, k)`` float32, highest at the centre, sum 1."""
    r = kernel_size // 2
    yy, xx = np.mgrid[:kernel_size, :kernel_size]
    dist = np.sqrt((xx - r) ** 2 + (yy - r) ** 2)
    kernel = (dist.max() - dist).astype(np.float32)
    return kernel / kernel.sum()


def soft_erosion(mask: np.ndarray, kernel_size: int = 21,
                 threshold: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """FSGAN's ``SoftErosion`` of a binary ``(H, W)`` mask: ``(soft, hard)``.

    The mask is convolved (zero padding) with a cone kernel; ``hard`` is where the result reaches
    ``threshold`` and ``soft`` is 1 there and falls off to 0 outside. FSGAN divides the fall-off by its
    maximum over the batch, which is just under ``threshold``; dividing by ``threshold`` instead keeps
    it per face and strictly below 1, so ``hard == (soft >= 1)``.
    """
    x = cv2.filter2D(mask.astype(np.float32), -1, erosion_kernel(kernel_size), borderType=cv2.BORDER_CONSTANT)
    x[x < 1e-6] = 0.0  # large kernels are convolved by DFT: round-off around zero
    hard = x >= threshold
    soft = np.where(hard, 1.0, np.minimum(x / threshold, 1.0 - 1e-6)).astype(np.float32)
    return soft, hard


# --- crops ------------------------------------------------------------------------------------------

def _bbox(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    x0, y0 = landmarks[:, :2].min(0)
    x1, y1 = landmarks[:, :2].max(0)
    return float(x0), float(y0), float(x1), float(y1)


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The (2, 3) affine ``a o b`` (apply ``b`` first)."""
    m = a[:, :2] @ b[:, :2]
    return np.concatenate([m, (a[:, :2] @ b[:, 2] + a[:, 2])[:, None]], axis=1)


@dataclass(frozen=True)
class SourceCrop:
    """A source face cut as the networks want it."""

    image: np.ndarray
    """(R, R, 3) uint8 RGB."""
    landmarks: np.ndarray
    """(478, 3) float32 in crop pixels."""
    pose: HeadPose


def source_transform(face: SourceFace, resolution: int, crop_scale: float) -> CropTransform | None:
    """The network crop of a source face, cut like a target's (None when the face is too small)."""
    proxy = TrackedFace(track_id=-1, landmarks=face.landmarks, pose=face.pose, bbox=_bbox(face.landmarks))
    h, w = face.image.shape[:2]
    return CropSpec(size=resolution, scale=crop_scale).transform(proxy, w, h)


def cut_source(face: SourceFace, resolution: int, crop_scale: float) -> SourceCrop | None:
    """The network crop of a source face (None when the face is too small to crop)."""
    tf = source_transform(face, resolution, crop_scale)
    if tf is None:
        return None
    return SourceCrop(tf.extract(face.image), tf.points_to_crop(face.landmarks), face.pose)


class _NetworkCrop:
    """Maps a chain crop (FaceWork) to the network's own crop when their scales differ (e.g. a v1
    network trained at crop scale 2.0 in a 1.2 chain) and the network's output back."""

    def __init__(self, resolution: int, crop_scale: float) -> None:
        self.resolution = resolution
        self.spec = CropSpec(size=resolution, scale=crop_scale)

    def matrix(self, w: FaceWork) -> np.ndarray | None:
        """(2, 3) chain crop -> network crop, or None when they coincide."""
        tf = self.spec.transform(w.target, 0, 0)
        if tf is None:
            return None
        m = _compose(tf.matrix, w.crop.inverse)
        same_size = w.crop.size == (self.resolution, self.resolution)
        if same_size and np.allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-4):
            return None
        return m

    @staticmethod
    def back(image: np.ndarray, m: np.ndarray | None, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Network-crop ``image`` in the chain crop, and where it has pixels (coverage)."""
        h, w = image.shape[:2]
        if m is None:
            return image, np.ones((h, w), np.float32)
        inv = cv2.invertAffineTransform(m)
        out = cv2.warpAffine(image, inv, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        cover = cv2.warpAffine(np.ones((h, w), np.float32), inv, size, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return out, cover


def _check_crop(w: FaceWork, resolution: int, stage: str) -> None:
    if w.image.shape[:2] != (resolution, resolution):
        raise InputError(f"{stage} needs {resolution}x{resolution} crops, got {w.image.shape[1]}x"
                         f"{w.image.shape[0]}; build the chain with CropSpec(size={resolution})")


def run_batched(engine: Engine, inputs: Sequence[np.ndarray], max_batch: int | None) -> list[np.ndarray]:
    """``engine(*inputs)``, in chunks of at most ``max_batch`` along the batch axis (None: one call)."""
    n = inputs[0].shape[0]
    if max_batch is None or n <= max_batch:
        return list(engine(*inputs))
    parts = [engine(*(x[i:i + max_batch] for x in inputs)) for i in range(0, n, max_batch)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def _single(outputs: Sequence[np.ndarray], stage: str) -> np.ndarray:
    if not outputs:
        raise RuntimeError(f"{stage}: the engine returned no output")
    return np.asarray(outputs[0], np.float32)


# --- stages -----------------------------------------------------------------------------------------

class _EngineStage:
    """What every learned stage has: one engine, its crop resolution, a batch limit and a name."""

    kind: ClassVar[StageKind]

    def __init__(self, engine: Engine, *, resolution: int, max_batch: int | None, name: str) -> None:
        self.engine = engine
        self.resolution = resolution
        self.max_batch = max_batch
        self.name = name

    def set_source(self, bank: SourceBank) -> None:
        """Nothing per source (the reenactors override this)."""

    def close(self) -> None:
        self.engine.close()


@dataclass(frozen=True)
class ReenactInputs:
    """What FSGAN v2's Gr needs for the faces of one frame, heatmaps aside: one row per (face, source)
    pair of the faces' appearance-map mixes, faces in order."""

    face_index: np.ndarray
    """(P,) int64: the face of each pair."""
    weights: np.ndarray
    """(P,) float32: its barycentric weight (a face's weights sum to 1)."""
    sources0: np.ndarray
    """(P, R, R, 3) uint8: the pair's source crop rotated to the face's roll."""
    sources1: np.ndarray
    """(P, R/2, R/2, 3) uint8: its ``cv2.pyrDown``."""
    points01: np.ndarray
    """(F, 98, 2) float32: each face's WFLW points in the network crop, normalised (heatmap input)."""
    mats: list[np.ndarray | None]
    """Per face, chain crop -> network crop (None: they coincide)."""

    @property
    def same_crop(self) -> bool:
        """The network's crop is the chain's for every face (its output needs no warp back)."""
        return all(m is None for m in self.mats)


class FsganReenactorV2(_EngineStage):
    """FSGAN v2 reenactment: appearance map over the source poses, Gr per source frame, barycentric mix."""

    kind: ClassVar[StageKind] = "reenact"

    def __init__(self, engine: Engine, *, resolution: int = 256, crop_scale: float = 1.2,
                 min_radius: float = 2.0, max_batch: int | None = None,
                 name: str = "fsgan_reenact_v2") -> None:
        super().__init__(engine, resolution=resolution, max_batch=max_batch, name=name)
        self.crop_scale = crop_scale
        self.min_radius = min_radius
        self._net_crop = _NetworkCrop(resolution, crop_scale)
        self._sources: dict[int, SourceCrop] = {}
        self._map: AppearanceMap | None = None

    def set_source(self, bank: SourceBank) -> None:
        usable = [f for f in bank.faces if source_transform(f, self.resolution, self.crop_scale) is not None]
        if not usable:
            raise InputError("every source face is too small for the reenactment network's crop")
        self._map = AppearanceMap(np.array([[f.pose.yaw, f.pose.pitch] for f in usable]), self.min_radius)
        # Only the frames left after fusing are ever used: crop those alone (a long video has many).
        self._sources = {}
        for i in self._map.kept:
            crop = cut_source(usable[i], self.resolution, self.crop_scale)
            assert crop is not None
            self._sources[int(i)] = crop
        logger.info("%s: appearance map of %d source frames (%d after fusing)", self.name, len(usable),
                    len(self._map))

    def _rotated(self, src: SourceCrop, target_roll: float) -> np.ndarray:
        """The source crop turned so that its roll becomes ``target_roll`` (about the crop centre). Both rolls
        are in stored pixels (:attr:`~stream.frames.HeadPose.image_roll`), as the axis-aligned crops show them."""
        angle = float(src.pose.image_roll - target_roll)  # cv2: positive = counter-clockwise in the image
        if abs(angle) < 1e-3:
            return src.image
        r = self.resolution
        m = cv2.getRotationMatrix2D((r * 0.5, r * 0.5), angle, 1.0)
        return cv2.warpAffine(src.image, m, (r, r), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(0, 0, 0))

    def inputs(self, faces: Sequence[FaceWork]) -> ReenactInputs:
        """Everything Gr needs for ``faces`` but the heatmaps: the sources each face mixes, rotated."""
        assert self._map is not None, "set_source() must be called before process()"
        r, half = self.resolution, self.resolution // 2
        mats = [self._net_crop.matrix(w) for w in faces]
        pairs: list[tuple[int, int, float]] = []
        for fi, w in enumerate(faces):
            mix = self._map.query(w.target.pose.yaw, w.target.pose.pitch)
            pairs.extend((fi, si, wt) for si, wt in zip(mix.indices, mix.weights, strict=True))
        n = len(pairs)
        pts = np.stack([mesh_to_wflw98(w.landmarks if m is None else _affine(w.landmarks, m))
                        for w, m in zip(faces, mats, strict=True)])
        images0 = np.empty((n, r, r, 3), np.uint8)
        images1 = np.empty((n, half, half, 3), np.uint8)
        for k, (fi, si, _) in enumerate(pairs):
            img = self._rotated(self._sources[si], faces[fi].target.pose.image_roll)
            images0[k] = img
            images1[k] = cv2.pyrDown(img)
        return ReenactInputs(
            face_index=np.array([fi for fi, _, _ in pairs], np.int64),
            weights=np.array([wt for _, _, wt in pairs], np.float32),
            sources0=images0, sources1=images1, points01=normalize_points(pts, r), mats=mats)

    def process(self, faces: Sequence[FaceWork]) -> None:
        if not faces:
            return
        r, half = self.resolution, self.resolution // 2
        inputs = self.inputs(faces)
        n = len(inputs.face_index)
        x0 = np.empty((n, 101, r, r), np.float32)
        x1 = np.empty((n, 101, half, half), np.float32)
        # Heatmaps once per face, then copied next to each of its sources.
        hm0, hm1 = heatmaps_v2(inputs.points01, r), heatmaps_v2(inputs.points01, half)
        for k, fi in enumerate(inputs.face_index):
            x0[k, 3:] = hm0[fi]
            x1[k, 3:] = hm1[fi]
        x0[:, :3] = to_network(inputs.sources0)
        x1[:, :3] = to_network(inputs.sources1)
        out = _single(run_batched(self.engine, (x0, x1), self.max_batch), self.name)
        mixed = np.zeros((len(faces), *out.shape[1:]), np.float32)
        for k, (fi, wt) in enumerate(zip(inputs.face_index, inputs.weights, strict=True)):
            mixed[fi] += wt * out[k]
        images = from_network(mixed)
        for w, img, m in zip(faces, images, inputs.mats, strict=True):
            w.reenacted, w.coverage = _NetworkCrop.back(img, m, w.crop.size)

    def close(self) -> None:
        self._sources = {}
        self._map = None
        super().close()


def _affine(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    out = points.astype(np.float32, copy=True)
    out[:, :2] = points[:, :2] @ m[:, :2].T + m[:, 2]
    if points.shape[1] > 2:
        out[:, 2:] = points[:, 2:] * float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    return out


def interpolate_pose(source: np.ndarray, target: np.ndarray, alpha: float) -> np.ndarray:
    """Source 3-D landmarks moved ``alpha`` (0..1) of the way to the target's head pose.

    The rigid transform (rotation about the centroid, then translation of the centroid) that best maps
    ``source`` onto ``target`` (Kabsch) is scaled to ``alpha`` -- rotation by its angle, translation
    linearly; the source's expression is kept. ``alpha = 0`` returns the source.
    """
    src = np.asarray(source, np.float64)[:, :3]
    tgt = np.asarray(target, np.float64)[:, :3]
    cs, ct = src.mean(0), tgt.mean(0)
    h = (src - cs).T @ (tgt - ct)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    partial = Rotation.from_rotvec(Rotation.from_matrix(rot).as_rotvec() * alpha)
    out = partial.apply(src - cs) + cs + alpha * (ct - cs)
    result = np.asarray(source, np.float32).copy()
    result[:, :3] = out
    return result


class FsganReenactorV1(_EngineStage):
    """FSGAN v1 stepwise reenactment: Gr applied ``steps`` times along an interpolated head pose."""

    kind: ClassVar[StageKind] = "reenact"

    def __init__(self, engine: Engine, *, steps: int = 2, resolution: int = 256, crop_scale: float = 1.2,
                 max_batch: int | None = None, name: str = "fsgan_reenact_v1") -> None:
        if steps < 1:
            raise InputError(f"reenactment steps must be at least 1, got {steps}")
        super().__init__(engine, resolution=resolution, max_batch=max_batch, name=name)
        self.steps = steps
        self.crop_scale = crop_scale
        self._net_crop = _NetworkCrop(resolution, crop_scale)
        self._faces: list[SourceFace] = []
        self._sources: dict[int, SourceCrop] = {}

    def set_source(self, bank: SourceBank) -> None:
        res, scale = self.resolution, self.crop_scale
        self._faces = [f for f in bank.faces if source_transform(f, res, scale) is not None]
        if not self._faces:
            raise InputError("every source face is too small for the reenactment network's crop")
        self._sources = {}  # crops are cut when a source is first chosen: a video may have many

    def _crop(self, face: SourceFace) -> SourceCrop:
        if source_transform(face, self.resolution, self.crop_scale) is None:
            face = self._faces[0]  # the chain's nearest source is too small: take a usable one
        crop = self._sources.get(id(face))
        if crop is None:
            crop = cut_source(face, self.resolution, self.crop_scale)
            assert crop is not None
            self._sources[id(face)] = crop
        return crop

    def landmark_steps(self, source: np.ndarray, target: np.ndarray) -> list[np.ndarray]:
        """The ``steps`` landmark sets (478, 3) the passes are driven by; the last is ``target``."""
        return [interpolate_pose(source, target, k / self.steps) for k in range(1, self.steps)] + [target]

    def process(self, faces: Sequence[FaceWork]) -> None:
        if not faces:
            return
        r, half = self.resolution, self.resolution // 2
        mats = [self._net_crop.matrix(w) for w in faces]
        srcs = [self._crop(w.source) for w in faces]
        targets = [w.landmarks if m is None else _affine(w.landmarks, m)
                   for w, m in zip(faces, mats, strict=True)]
        plans = [self.landmark_steps(s.landmarks, t) for s, t in zip(srcs, targets, strict=True)]
        level0 = to_network(np.stack([s.image for s in srcs]))
        level1 = to_network(np.stack([cv2.pyrDown(s.image) for s in srcs]))
        n = len(faces)
        image = seg = None
        for step in range(self.steps):
            pts = np.stack([mesh_to_ibug68(p[step]) for p in plans])
            x0 = np.empty((n, 71, r, r), np.float32)
            x1 = np.empty((n, 71, half, half), np.float32)
            x0[:, :3], x1[:, :3] = level0, level1
            heatmaps_v1(pts, r, out=x0[:, 3:])
            heatmaps_v1(pts / 2, half, out=x1[:, 3:])
            outputs = run_batched(self.engine, (x0, x1), self.max_batch)
            if len(outputs) < 2:
                raise RuntimeError(f"{self.name}: v1 Gr returns image and segmentation, got {len(outputs)}")
            image, seg = np.asarray(outputs[0], np.float32), np.asarray(outputs[1], np.float32)
            level0, level1 = pyramid(image)
        assert image is not None and seg is not None
        images = from_network(image)
        face = (seg.argmax(1) == FACE_CLASS).astype(np.float32)
        for w, img, fm, m in zip(faces, images, face, mats, strict=True):
            w.reenacted, cover = _NetworkCrop.back(img, m, w.crop.size)
            fm_chain, _ = _NetworkCrop.back(fm, m, w.crop.size)
            w.coverage = np.clip(fm_chain * cover, 0, 1)

    def close(self) -> None:
        self._faces = []
        self._sources = {}
        super().close()


def mouth_mask(w: FaceWork) -> np.ndarray:
    """The target's inner mouth in its crop: ``(h, w)`` uint8, 1 inside the inner-lip polygon."""
    mouth = np.zeros(w.image.shape[:2], np.uint8)
    lips = mesh_to_wflw98(w.landmarks)[list(WFLW_GROUPS["inner_lips"])]
    cv2.fillPoly(mouth, [np.round(lips).astype(np.int32)], 1)
    return mouth


class FsganSegmenter(_EngineStage):
    """FSGAN's S: the target's face region (soft-eroded) and, optionally, the reenacted face's."""

    kind: ClassVar[StageKind] = "segment"

    def __init__(self, engine: Engine, *, resolution: int = 256, erosion_kernel: int = 21,
                 erosion_threshold: float = 0.6, remove_mouth: bool = False, segment_reenacted: bool = True,
                 max_batch: int | None = None, name: str = "fsgan_segment") -> None:
        super().__init__(engine, resolution=resolution, max_batch=max_batch, name=name)
        self.erosion_kernel = erosion_kernel
        self.erosion_threshold = erosion_threshold
        self.remove_mouth = remove_mouth
        self.segment_reenacted = segment_reenacted

    def process(self, faces: Sequence[FaceWork]) -> None:
        if not faces:
            return
        for w in faces:
            _check_crop(w, self.resolution, self.name)
        images = [w.image.astype(np.float32) for w in faces]
        with_reenacted = self.segment_reenacted and all(w.reenacted is not None for w in faces)
        if with_reenacted:
            images += [w.reenacted for w in faces]  # type: ignore[misc]
        logits = _single(run_batched(self.engine, (to_network(np.stack(images)),), self.max_batch), self.name)
        labels = logits.argmax(1)
        for i, w in enumerate(faces):
            mouth = mouth_mask(w)
            face = labels[i] == FACE_CLASS
            if self.remove_mouth:
                face &= mouth == 0
            w.face_mask, _ = soft_erosion(face, self.erosion_kernel, self.erosion_threshold)
            w.mouth_mask = mouth.astype(np.float32)
            if with_reenacted:
                reenacted_face = (labels[len(faces) + i] == FACE_CLASS).astype(np.float32)
                w.coverage = reenacted_face if w.coverage is None else reenacted_face * w.coverage


def _hard(w: FaceWork, stage: str) -> np.ndarray:
    if w.face_mask is None:
        raise RuntimeError(f"{stage} needs the face mask of a segment stage")
    return (w.face_mask >= 1.0).astype(np.float32)


class FsganCompleter(_EngineStage):
    """FSGAN's Gc: inpaints the target face region the reenacted face does not cover."""

    kind: ClassVar[StageKind] = "complete"

    def __init__(self, engine: Engine, *, resolution: int = 256, max_batch: int | None = None,
                 name: str = "fsgan_complete") -> None:
        super().__init__(engine, resolution=resolution, max_batch=max_batch, name=name)

    def process(self, faces: Sequence[FaceWork]) -> None:
        if not faces:
            return
        for w in faces:
            _check_crop(w, self.resolution, self.name)
            if w.reenacted is None:
                raise RuntimeError(f"{self.name} needs the output of a reenact stage")
        x = np.empty((len(faces), 4, self.resolution, self.resolution), np.float32)
        x[:, :3] = to_network(np.stack([w.reenacted for w in faces]))  # type: ignore[misc]
        for i, w in enumerate(faces):
            if w.coverage is not None:
                x[i, :3, w.coverage < 0.5] = -1.0  # the background of the reenacted face is removed
            x[i, 3] = _hard(w, self.name)
        out = _single(run_batched(self.engine, pyramid(x), self.max_batch), self.name)
        for w, img in zip(faces, from_network(out), strict=True):
            w.completed = img


class FsganBlender(_EngineStage):
    """FSGAN's Gb: blends the completed face into the target crop; pasted with the soft face mask."""

    kind: ClassVar[StageKind] = "blend"

    def __init__(self, engine: Engine, *, resolution: int = 256, max_batch: int | None = None,
                 name: str = "fsgan_blend") -> None:
        super().__init__(engine, resolution=resolution, max_batch=max_batch, name=name)

    def process(self, faces: Sequence[FaceWork]) -> None:
        if not faces:
            return
        x = np.empty((len(faces), 7, self.resolution, self.resolution), np.float32)
        for i, w in enumerate(faces):
            _check_crop(w, self.resolution, self.name)
            face = w.completed if w.completed is not None else w.reenacted
            if face is None:
                raise RuntimeError(f"{self.name} needs a reenacted or completed face")
            hard = _hard(w, self.name)
            target = w.image.astype(np.float32)
            transfer = face * hard[..., None] + target * (1 - hard[..., None])
            x[i, :3] = to_network(transfer[None])[0]
            x[i, 3:6] = to_network(target[None])[0]
            x[i, 6] = hard
        out = _single(run_batched(self.engine, pyramid(x), self.max_batch), self.name)
        for w, img in zip(faces, from_network(out), strict=True):
            w.output = output_pixels(img)
            w.alpha = w.face_mask

