"""Source faces a session can pick: the built-in public-domain portraits and uploaded images."""

from __future__ import annotations

import logging
import secrets
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import cv2
import numpy as np

from stream.exceptions import InputError
from stream.stills import jpeg_segments, webp_size

logger = logging.getLogger(__name__)

MAX_SIDE = 1024
"""Uploaded faces are downscaled so their longer side is at most this many pixels."""


@dataclass(frozen=True)
class StoredFace:
    """A face image a session may use as its source."""

    id: str
    name: str
    image: np.ndarray = field(repr=False)
    """(H, W, 3) uint8 RGB."""
    thumbnail: bytes = field(repr=False)
    """JPEG, 96 pixels high."""
    builtin: bool = False

    def describe(self) -> dict[str, object]:
        h, w = self.image.shape[:2]
        return {"id": self.id, "name": self.name, "builtin": self.builtin, "width": w, "height": h,
                "thumbnail": f"faces/{self.id}.jpg"}


def image_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from a PNG, JPEG or WebP header, without decoding the pixels.

    Raises :class:`InputError` for anything else, so a tiny file cannot claim a huge image unseen.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if data[:2] == b"\xff\xd8":
        for marker, payload in jpeg_segments(data):
            # SOF0-SOF15, less DHT, JPG and DAC, which share the range: precision, then height and width.
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and len(payload) >= 5:
                h, w = struct.unpack(">HH", payload[1:5])
                return int(w), int(h)
        raise InputError("JPEG without a frame header; upload a PNG, JPEG or WebP image")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        try:
            return webp_size(data)
        except (ValueError, struct.error) as e:
            raise InputError(f"unreadable WebP header ({e}); upload a PNG, JPEG or WebP image") from None
    raise InputError("unsupported image format; upload a PNG, JPEG or WebP image")


def decode_image(data: bytes, *, max_pixels: int = 4096 * 4096) -> np.ndarray:
    """Decode PNG, JPEG or WebP ``data`` to (H, W, 3) uint8 RGB, refusing images over ``max_pixels``."""
    w, h = image_size(data)
    if w <= 0 or h <= 0 or w * h > max_pixels:
        raise InputError(f"image of {w}x{h} pixels is too large; at most {max_pixels} pixels")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError("cannot decode the image; upload a PNG, JPEG or WebP image")
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def _fit(image: np.ndarray, max_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    s = max_side / max(h, w)
    if s >= 1:
        return np.ascontiguousarray(image)
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def _thumbnail(image: np.ndarray, height: int = 96) -> bytes:
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise InputError("cannot encode a thumbnail of the face")
    return buf.tobytes()


def builtin_faces() -> list[tuple[str, str, np.ndarray]]:
    """``(id, name, image)`` of the public-domain portraits that ship inside optional dependencies."""
    from stream.demo import sample_face_images

    try:
        images = sample_face_images()
    except InputError:
        logger.debug("scikit-image/matplotlib missing: no built-in faces")
        return []
    names = {"astronaut": "Astronaut (Eileen Collins)", "grace_hopper": "Grace Hopper"}
    return [(key, names[key], image) for key, image in images.items()]


class FaceStore:
    """Built-in and uploaded faces by id; uploads beyond ``max_uploads`` evict the oldest upload."""

    def __init__(self, *, max_uploads: int = 32, max_pixels: int = 4096 * 4096, builtin: bool = True) -> None:
        self.max_uploads = max_uploads
        self.max_pixels = max_pixels
        self._faces: OrderedDict[str, StoredFace] = OrderedDict()
        self._lock = threading.Lock()
        if builtin:
            for face_id, name, image in builtin_faces():
                self.add(image, name, face_id=face_id, builtin=True)

    def __len__(self) -> int:
        return len(self._faces)

    def add(self, image: np.ndarray, name: str, *, face_id: str | None = None,
            builtin: bool = False) -> StoredFace:
        """Store an RGB ``image`` (downscaled to :data:`MAX_SIDE`) and return it with its id."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"a face image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        image = _fit(image, MAX_SIDE)
        face_id = face_id or f"u-{secrets.token_hex(6)}"
        face = StoredFace(face_id, name[:80], image, _thumbnail(image), builtin)
        with self._lock:
            self._faces[face.id] = face
            uploads = [k for k, f in self._faces.items() if not f.builtin]
            for k in uploads[: max(0, len(uploads) - self.max_uploads)]:
                del self._faces[k]
        return face

    def add_encoded(self, data: bytes, name: str = "upload") -> StoredFace:
        """Decode a PNG, JPEG or WebP upload and store it (blocking: call it in an executor)."""
        return self.add(decode_image(data, max_pixels=self.max_pixels), name)

    def get(self, face_id: str) -> StoredFace:
        """The face ``face_id``; raises :class:`InputError` naming the known ids."""
        with self._lock:
            face = self._faces.get(face_id)
            if face is None:
                known = ", ".join(self._faces) or "none"
                raise InputError(f"unknown face {face_id!r}; known faces: {known}")
            return face

    def default(self) -> StoredFace | None:
        with self._lock:
            return next(iter(self._faces.values()), None)

    def describe(self) -> list[dict[str, object]]:
        with self._lock:
            return [f.describe() for f in self._faces.values()]
