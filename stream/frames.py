"""The data that flows through the pipeline: frames, tracked faces, head poses and face crops.

Coordinates are always pixels of the *stored* (decoded, not display-rotated) image, ``x`` to the right
and ``y`` down. Landmarks are MediaPipe face-mesh points, ``(478, 3)`` float32: ``x, y`` in pixels and
``z`` a relative depth in the same pixel scale (smaller is nearer the camera).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import av
import av.video.frame
import cv2
import numpy as np

from stream.pixels import (
    lazy_capable,
    luma,
    plane_view,
    region_rgb,
    region_shrunk,
    rgb_image,
    write_back,
    yuv420_frame,
)


@dataclass(frozen=True)
class HeadPose:
    """Head orientation in degrees (camera frame; yaw > 0 turns to the image's left, pitch > 0 looks
    down, roll > 0 tilts clockwise in the image) and the rigid transform that produced it."""

    yaw: float
    pitch: float
    roll: float
    rotation: np.ndarray = field(repr=False)  # (3, 3) rotation matrix, model -> camera
    translation: np.ndarray = field(repr=False)  # (3,) translation, model -> camera
    display_rotation: int = 0
    """Display rotation (degrees counter-clockwise) of the image whose stored pixels the landmarks are in: the
    angles are relative to that image shown upright."""

    @property
    def image_roll(self) -> float:
        """Roll in the stored pixels (degrees in [-180, 180)): what an axis-aligned crop of the stored image
        shows, which differs from :attr:`roll` by the display rotation (a phone's portrait video)."""
        return (self.roll + self.display_rotation + 180.0) % 360.0 - 180.0

    def as_vector(self) -> np.ndarray:
        """``[yaw, pitch, roll]`` in degrees as float32, the space source frames are matched in."""
        return np.array([self.yaw, self.pitch, self.roll], dtype=np.float32)


@dataclass
class TrackedFace:
    """One face in one frame, as the tracker reports it."""

    track_id: int
    """Stable across frames while the face stays tracked; never reused within a run."""
    landmarks: np.ndarray
    """(478, 3) float32 face-mesh points in frame pixels (smoothed)."""
    pose: HeadPose
    bbox: tuple[float, float, float, float]
    """``(x0, y0, x1, y1)`` of the landmarks, frame pixels."""
    score: float = 1.0
    """Detector/landmark confidence in [0, 1]."""

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.bbox
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


class Frame:
    """A decoded video frame travelling through the pipeline.

    ``pts``/``time_base`` are copied from the decoder and never changed by any stage, so every frame
    leaves with the timestamp it came in with.

    A frame made from a decoded 4:2:0 ``source`` without an ``image`` converts to RGB only what is read
    (:meth:`rgb`, :meth:`grey`, :meth:`samples`; see :mod:`stream.pixels`), and :meth:`write` keeps what
    stages paste as patches; reading :attr:`image` converts the whole frame once (patches applied) and
    from then on it is an ordinary array. Either way every read sees the same pixels.
    """

    __slots__ = (
        "_image",
        "_patches",
        "capture_time",
        "dirty",
        "faces",
        "index",
        "modified",
        "pts",
        "rotation",
        "source",
        "time_base",
        "timings",
    )

    def __init__(
        self,
        index: int,
        image: np.ndarray | None = None,
        pts: int | None = None,
        time_base: Fraction | None = None,
        rotation: int = 0,
        capture_time: float = 0.0,
        faces: list[TrackedFace] | None = None,
        modified: bool = False,
        dirty: list[tuple[int, int, int, int]] | None = None,
        source: av.VideoFrame | None = None,
        timings: dict[str, float] | None = None,
    ) -> None:
        if image is None and source is None:
            raise ValueError("a Frame needs an image or a decoded source frame")
        self.index = index
        """0-based position in the input's decode order of frames (presentation order)."""
        self._image = image
        self._patches: list[tuple[int, int, np.ndarray]] = []
        self.pts = pts
        self.time_base = time_base
        self.rotation = rotation
        """Display rotation in degrees (0, 90, 180, 270), as the container's display matrix says."""
        self.capture_time = capture_time
        """``time.monotonic()`` when the frame was captured or decoded; latency is measured from it."""
        self.faces: list[TrackedFace] = [] if faces is None else faces
        self.modified = modified
        """True once a stage changed the pixels; unmodified frames may be re-encoded from ``source``."""
        self.dirty: list[tuple[int, int, int, int]] = [] if dirty is None else dirty
        """Regions ``(x0, y0, x1, y1)`` changed by stages. A sink may convert only these back to the
        source's pixel format (faster, and every other pixel stays bit-exact); empty with ``modified``
        set means "anything may have changed"."""
        self.source = source
        """The decoded frame this came from, when there is one."""
        self.timings: dict[str, float] = {} if timings is None else timings
        """Seconds spent per step (``decode``, ``track``, each stage...), for reports and benchmarks."""

    def __repr__(self) -> str:
        return (f"Frame(index={self.index}, size={self.width}x{self.height}, pts={self.pts}, "
                f"faces={len(self.faces)}, modified={self.modified}, lazy={self.lazy})")

    # -- pixels ----------------------------------------------------------------------------------

    @property
    def image(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB, C-contiguous, stored orientation (converted from ``source`` on first use)."""
        if self._image is None:
            assert self.source is not None
            image = rgb_image(self.source)
            for x0, y0, patch in self._patches:
                image[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]] = patch
            self._image, self._patches = image, []
        return self._image

    @image.setter
    def image(self, value: np.ndarray) -> None:
        self._image, self._patches = value, []

    @property
    def lazy(self) -> bool:
        """Whether reads convert boxes of ``source`` (no whole RGB image exists yet)."""
        return self._image is None and self.source is not None and lazy_capable(self.source)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(height, width, 3)`` of the RGB image."""
        if self._image is not None:
            h, w = self._image.shape[:2]
            return int(h), int(w), 3
        assert self.source is not None
        return int(self.source.height), int(self.source.width), 3

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    def rgb(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """(y1 - y0, x1 - x0, 3) uint8 RGB of a box inside the frame; may be a view (read, don't write)."""
        if not self.lazy:
            return self.image[y0:y1, x0:x1]
        assert self.source is not None
        over = [p for p in self._patches if _intersects(p, x0, y0, x1, y1)]
        if over:
            px, py, patch = over[-1]
            if px <= x0 and py <= y0 and x1 <= px + patch.shape[1] and y1 <= py + patch.shape[0]:
                return patch[y0 - py:y1 - py, x0 - px:x1 - px]
        out = region_rgb(self.source, x0, y0, x1, y1)  # a new array: patches go straight in
        for px, py, patch in over:
            ix0, iy0 = max(x0, px), max(y0, py)
            ix1, iy1 = min(x1, px + patch.shape[1]), min(y1, py + patch.shape[0])
            out[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = patch[iy0 - py:iy1 - py, ix0 - px:ix1 - px]
        return out

    def grey(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """(y1 - y0, x1 - x0) uint8 brightness of a box: the decoded luma for lazy frames, RGB -> grey
        otherwise (see :class:`stream.pixels.Pixels`)."""
        src = self._decoded_only(x0, y0, x1, y1)
        if src is not None:
            return luma(src, x0, y0, x1, y1)
        return cv2.cvtColor(np.ascontiguousarray(self.rgb(x0, y0, x1, y1)), cv2.COLOR_RGB2GRAY)

    def samples(self, x0: int, y0: int, x1: int, y1: int, step: int) -> np.ndarray:
        """int16 brightness on a sparse grid of a box (see :class:`stream.pixels.Pixels`)."""
        src = self._decoded_only(x0, y0, x1, y1)
        if src is not None:
            y = plane_view(src.planes[0])
            return y[y0 + step // 2:y1:step, x0 + step // 2:x1:step].astype(np.int16)
        return self.image[y0 + step // 2:y1:step, x0 + step // 2:x1:step, 1].astype(np.int16)

    def shrunk(self, x0: int, y0: int, x1: int, y1: int, size: tuple[int, int]) -> np.ndarray:
        """(h, w, 3) uint8 RGB of a box shrunk to ``size = (w, h)`` with an area filter (see
        :class:`stream.pixels.Pixels`).

        A lazy frame's even box shrunk 3x or more is converted and shrunk in one swscale pass (0.4 ms for
        720p to 320x180, against 1.25 ms converting then shrinking); OpenCV's area filter has a fast path
        for halving, which wins below that (0.34 against 0.57 ms for 720x720 to 360x360)."""
        src = self._decoded_only(x0, y0, x1, y1)
        if src is not None and not (x0 | y0 | x1 | y1) & 1 and x1 - x0 >= 3 * size[0]:
            return region_shrunk(src, x0, y0, x1, y1, size)
        return cv2.resize(np.ascontiguousarray(self.rgb(x0, y0, x1, y1)), size, interpolation=cv2.INTER_AREA)

    def decoded_frame(self) -> av.VideoFrame | None:
        """The decoded ``source`` carrying every change, for an encoder (frame type left to the encoder).

        ``source`` itself when no stage changed the frame; ``source`` with the ``dirty`` boxes converted back
        into its planes (in place: the frame is done with once encoded) when those boxes describe every
        change and its boxes convert on their own (:func:`~stream.pixels.lazy_capable`, same size); None
        otherwise (no source, or a change only the whole :attr:`image` holds).
        """
        src = self.source
        if src is None:
            return None
        if self.modified:
            if not (self.dirty and lazy_capable(src) and (src.height, src.width) == (self.height, self.width)):
                return None
            src = write_back(src, self.dirty, self.rgb)
        src.pict_type = av.video.frame.PictureType.NONE
        return src

    def to_yuv420(self) -> av.VideoFrame:
        """The frame as a 4:2:0 ``VideoFrame`` for an encoder (pts not set): :meth:`decoded_frame` when that is
        4:2:0, otherwise the whole RGB image, converted."""
        vf = self.decoded_frame()
        return vf if vf is not None and lazy_capable(vf) else yuv420_frame(self.image)

    def _decoded_only(self, x0: int, y0: int, x1: int, y1: int) -> av.VideoFrame | None:
        """The decoded frame when the box's pixels are all still its own (lazy, no patch there), else None."""
        if self.lazy and not any(_intersects(p, x0, y0, x1, y1) for p in self._patches):
            return self.source
        return None

    def write(self, x0: int, y0: int, pixels: np.ndarray) -> None:
        """Put (h, w, 3) uint8 RGB ``pixels`` at ``(x0, y0)``; a lazy frame keeps them as a patch (owned
        from now on: do not write into ``pixels`` afterwards). Does not touch ``dirty``/``modified``."""
        if self.lazy:
            self._patches.append((x0, y0, pixels))
        else:
            h, w = pixels.shape[:2]
            self.image[y0:y0 + h, x0:x0 + w] = pixels


def _intersects(patch: tuple[int, int, np.ndarray], x0: int, y0: int, x1: int, y1: int) -> bool:
    px, py, p = patch
    return px < x1 and x0 < px + p.shape[1] and py < y1 and y0 < py + p.shape[0]


@dataclass(frozen=True)
class SourceFace:
    """A face to put in: one image (or video frame) of the source person with its mesh and pose."""

    image: np.ndarray
    """(H, W, 3) uint8 RGB; may be a crop around the face to save memory."""
    landmarks: np.ndarray
    """(478, 3) float32 in ``image`` pixels."""
    pose: HeadPose
    frame_index: int = 0
    """Which frame of a source video this came from (0 for an image)."""


@dataclass(frozen=True)
class CropTransform:
    """An affine map from frame pixels to a crop of ``size = (width, height)`` pixels.

    The weight-free stages work on an axis-aligned region at native resolution (``matrix`` a pure
    translation, so extracting and pasting are slices); learned networks work on a square, scaled
    crop (e.g. 256x256 at crop scale 1.2).
    """

    matrix: np.ndarray
    """(2, 3) float64, frame -> crop."""
    size: tuple[int, int]

    @classmethod
    def region(cls, x0: int, y0: int, x1: int, y1: int) -> CropTransform:
        """An axis-aligned region ``[x0, x1) x [y0, y1)`` of the frame at native resolution."""
        m = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]], dtype=np.float64)
        return cls(m, (int(x1 - x0), int(y1 - y0)))

    @property
    def is_region(self) -> bool:
        m = self.matrix
        return bool(m[0, 0] == 1 and m[1, 1] == 1 and m[0, 1] == 0 and m[1, 0] == 0
                    and float(m[0, 2]).is_integer() and float(m[1, 2]).is_integer())

    @property
    def origin(self) -> tuple[int, int]:
        """Top-left frame pixel of a region crop."""
        return int(-self.matrix[0, 2]), int(-self.matrix[1, 2])

    @property
    def inverse(self) -> np.ndarray:
        """(2, 3) crop -> frame."""
        return cv2.invertAffineTransform(self.matrix)

    def points_to_crop(self, pts: np.ndarray) -> np.ndarray:
        """Map ``(N, 2+)`` frame points into the crop; extra columns (z) are scaled by the crop scale."""
        out = pts.astype(np.float32, copy=True)
        out[:, :2] = pts[:, :2] @ self.matrix[:, :2].T + self.matrix[:, 2]
        if pts.shape[1] > 2:
            out[:, 2:] = pts[:, 2:] * float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))
        return out

    def extract(self, image: np.ndarray) -> np.ndarray:
        """The crop of ``image`` (a copy for region crops so stages may write into it)."""
        w, h = self.size
        if self.is_region:
            x0, y0 = self.origin
            return image[y0:y0 + h, x0:x0 + w].copy()
        return cv2.warpAffine(image, self.matrix, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT101)

    def paste_region(self, frame: Frame, base: np.ndarray, crop: np.ndarray,
                     alpha: np.ndarray) -> tuple[int, int, int, int] | None:
        """:meth:`paste` of a region crop into ``frame`` (lazy or not), compositing onto ``base``, the crop's
        pixels as they were extracted, unless an earlier paste wrote into the box since.

        The changed box is widened to even frame pixels inside the crop, so that a lazy frame's sink
        finds it whole in one patch. Returns the box, or None when ``alpha`` is all zero.
        """
        box = _nonzero_box(alpha)
        if box is None:
            return None
        ox, oy = self.origin
        w, h = self.size
        x0, y0 = max(ox, (ox + box[0]) & ~1), max(oy, (oy + box[1]) & ~1)
        x1, y1 = min(ox + w, ox + box[2] + ((ox + box[2]) & 1)), min(oy + h, oy + box[3] + ((oy + box[3]) & 1))
        win = (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))
        if any(dx0 < x1 and x0 < dx1 and dy0 < y1 and y0 < dy1 for dx0, dy0, dx1, dy1 in frame.dirty):
            dst = frame.rgb(x0, y0, x1, y1).copy()  # another face was pasted here: composite onto that
        else:
            dst = base[win].copy()
        _composite(dst, crop[win], alpha[win])
        frame.write(x0, y0, dst)
        return x0, y0, x1, y1

    def paste(self, image: np.ndarray, crop: np.ndarray, alpha: np.ndarray) -> tuple[int, int, int, int] | None:
        """Composite ``crop`` into ``image`` in place with per-pixel ``alpha`` in [0, 1] (crop-sized).

        Returns the frame region ``(x0, y0, x1, y1)`` that changed, or None when ``alpha`` is all zero.
        """
        box = _nonzero_box(alpha)
        if box is None:
            return None
        bx0, by0, bx1, by1 = box
        if self.is_region:
            x0, y0 = self.origin
            dst = image[y0 + by0:y0 + by1, x0 + bx0:x0 + bx1]
            _composite(dst, crop[by0:by1, bx0:bx1], alpha[by0:by1, bx0:bx1])
            return x0 + bx0, y0 + by0, x0 + bx1, y0 + by1
        inv = self.inverse
        h, w = image.shape[:2]
        # Only touch the frame's bounding box of the warped (non-zero part of the) crop.
        corners = np.array([[bx0, by0], [bx1, by0], [bx0, by1], [bx1, by1]], dtype=np.float64) @ inv[:, :2].T \
            + inv[:, 2]
        x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 2, [w, h])
        if x1 <= x0 or y1 <= y0:
            return None
        shift = inv.copy()
        shift[:, 2] -= (x0, y0)
        size = (int(x1 - x0), int(y1 - y0))
        warped = cv2.warpAffine(crop, shift, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        a = cv2.warpAffine(alpha.astype(np.float32), shift, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        _composite(image[y0:y1, x0:x1], warped, a)
        return int(x0), int(y0), int(x1), int(y1)


def _nonzero_box(alpha: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` bounding the pixels where ``alpha > 0``."""
    x, y, w, h = cv2.boundingRect(cv2.compare(np.asarray(alpha, np.float32), 0.0, cv2.CMP_GT))
    if w == 0:
        return None
    return x, y, x + w, y + h


def _composite(dst: np.ndarray, src: np.ndarray, alpha: np.ndarray) -> None:
    """``dst = src * alpha + dst * (1 - alpha)`` in place, rounded, for uint8 ``dst``.

    Computed as ``dst + alpha (src - dst)`` in three OpenCV passes (several times faster than numpy).
    """
    a = np.asarray(alpha, np.float32)
    diff = cv2.subtract(src, dst, dtype=cv2.CV_32F)
    cv2.multiply(diff, cv2.merge((a, a, a)), dst=diff)
    out = cv2.add(diff, dst, dtype=cv2.CV_8U)
    dst[:] = out


@dataclass
class FaceWork:
    """One target face of one frame on its way through the stage chain.

    Built by :class:`stream.stages.base.StageChain`; each stage reads what earlier stages wrote and
    fills its own fields. All arrays are crop-sized (``crop.size``).
    """

    target: TrackedFace
    crop: CropTransform
    image: np.ndarray
    """Target crop, (h, w, 3) uint8 RGB."""
    landmarks: np.ndarray
    """Target landmarks in crop pixels, (478, 3) float32."""
    source: SourceFace
    """Source face chosen for this target (nearest pose)."""
    frame_index: int = 0
    reenacted: np.ndarray | None = None
    """reenact: source face warped/reenacted to the target's geometry, (h, w, 3) float32 RGB 0..255 (uint8
    from a reenact stage that samples in 8 bits)."""
    coverage: np.ndarray | None = None
    """reenact: (h, w) float32 in [0, 1], where ``reenacted`` holds real source pixels."""
    face_mask: np.ndarray | None = None
    """segment: (h, w) float32 in [0, 1], the target face region to replace (softly eroded)."""
    mouth_mask: np.ndarray | None = None
    """segment: (h, w) float32 in [0, 1], the target's open-mouth interior to keep."""
    completed: np.ndarray | None = None
    """complete: ``reenacted`` with uncovered face pixels filled, (h, w, 3), of ``reenacted``'s dtype."""
    output: np.ndarray | None = None
    """blend: final crop, (h, w, 3) uint8 RGB."""
    alpha: np.ndarray | None = None
    """blend: (h, w) float32 in [0, 1], how much of ``output`` is pasted into the frame."""
    recoloured: tuple[int, int, np.ndarray] | None = None
    """blend (weight-free): ``(x0, y0, pixels)``, the colour-corrected foreground (uint8 RGB) over the window
    at ``(x0, y0)`` of the crop that the blend worked in, for a later step that needs it again."""
