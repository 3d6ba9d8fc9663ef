"""Real faces for the stage tests: public-domain images shipped in dependencies, meshed by MediaPipe.

Landmarks come from ``mediapipe.solutions.face_mesh.FaceMesh(static_image_mode=True,
refine_landmarks=True)`` directly (the project's tracker is tested on its own), converted to the
pipeline's convention: (478, 3) float32 pixels, z in the x pixel scale.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from stream.frames import FaceWork, HeadPose, SourceFace, TrackedFace
from stream.stages.base import CropSpec


def detect(image: np.ndarray) -> np.ndarray:
    """Face-mesh landmarks of the single face in RGB ``image``."""
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True,
                                         max_num_faces=1) as fm:
        result = fm.process(np.ascontiguousarray(image))
    assert result.multi_face_landmarks, "MediaPipe found no face"
    h, w = image.shape[:2]
    pts = result.multi_face_landmarks[0].landmark
    return np.array([[p.x * w, p.y * h, p.z * w] for p in pts], dtype=np.float32)


@functools.cache
def astronaut() -> tuple[np.ndarray, np.ndarray]:
    """skimage's astronaut (512x512, smiling with teeth showing) and its landmarks."""
    from skimage import data

    img = np.ascontiguousarray(data.astronaut())
    lm = detect(img)
    img.setflags(write=False)
    lm.setflags(write=False)
    return img, lm


@functools.cache
def grace_hopper() -> tuple[np.ndarray, np.ndarray]:
    """matplotlib's grace_hopper.jpg (600x512, mouth closed, glasses) and its landmarks."""
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    lm = detect(img)
    img.setflags(write=False)
    lm.setflags(write=False)
    return img, lm


def zero_pose() -> HeadPose:
    return HeadPose(0.0, 0.0, 0.0, np.eye(3), np.zeros(3))


def tracked(landmarks: np.ndarray, track_id: int = 0) -> TrackedFace:
    lm = np.asarray(landmarks, np.float32)
    x0, y0 = lm[:, :2].min(0)
    x1, y1 = lm[:, :2].max(0)
    return TrackedFace(track_id, lm, zero_pose(), (float(x0), float(y0), float(x1), float(y1)))


def source(image: np.ndarray, landmarks: np.ndarray) -> SourceFace:
    return SourceFace(np.ascontiguousarray(image), np.asarray(landmarks, np.float32), zero_pose())


def rescale(image: np.ndarray, landmarks: np.ndarray, face_px: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` resized so the face size (:func:`stream.mesh.face_size`) is ``face_px``."""
    from stream import mesh

    k = face_px / mesh.face_size(landmarks)
    out = cv2.resize(image, None, fx=k, fy=k, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)
    lm = np.array(landmarks, np.float32) * k
    lm[:, :2] += (k - 1) / 2  # pixel centres: x' + .5 = k (x + .5)
    return out, lm


def work_for(image: np.ndarray, landmarks: np.ndarray, src: SourceFace, scale: float = 1.4) -> FaceWork:
    """A FaceWork for the face of ``image`` the way StageChain cuts it (region crop)."""
    face = tracked(landmarks)
    tf = CropSpec(size=None, scale=scale).transform(face, image.shape[1], image.shape[0])
    assert tf is not None
    return FaceWork(target=face, crop=tf, image=tf.extract(image),
                    landmarks=tf.points_to_crop(face.landmarks),
                    source=src)


def crop_around(image: np.ndarray, landmarks: np.ndarray,
                scale: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """The region of ``image`` around the face (``scale`` times the landmarks' box), landmarks moved."""
    lm = np.array(landmarks, np.float32)
    lo, hi = lm[:, :2].min(0), lm[:, :2].max(0)
    c, half = (lo + hi) / 2, (hi - lo) * scale / 2
    x0, y0 = np.maximum(np.floor(c - half).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(c + half).astype(int), (image.shape[1], image.shape[0]))
    lm[:, :2] -= (x0, y0)
    return np.ascontiguousarray(image[y0:y1, x0:x1]), lm
