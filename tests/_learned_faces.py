"""Real faces with their MediaPipe meshes, shared by the learned-stage tests (not a test module)."""

from __future__ import annotations

import functools

import numpy as np

from stream.frames import HeadPose, SourceFace, TrackedFace


def images() -> dict[str, np.ndarray]:
    """Public-domain faces that ship in dependencies, RGB uint8."""
    from stream.demo import sample_face_images

    faces = sample_face_images()
    return {"astronaut": faces["astronaut"], "hopper": faces["grace_hopper"]}


def mesh_of(fm, image: np.ndarray) -> np.ndarray:
    """(478, 3) face-mesh points in pixels of ``image`` from a MediaPipe FaceMesh."""
    result = fm.process(image)
    assert result.multi_face_landmarks, "MediaPipe found no face"
    h, w = image.shape[:2]
    marks = result.multi_face_landmarks[0].landmark
    return np.array([[p.x * w, p.y * h, p.z * w] for p in marks], np.float32)


@functools.cache
def meshes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (image, mesh), computed once per test session."""
    import mediapipe as mp

    out = {}
    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True)
    with mesh as fm:
        for name, image in images().items():
            out[name] = (image, mesh_of(fm, image))
    return out


def pose(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> HeadPose:
    return HeadPose(yaw, pitch, roll, np.eye(3), np.zeros(3))


def bbox(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    x0, y0 = landmarks[:, :2].min(0)
    x1, y1 = landmarks[:, :2].max(0)
    return float(x0), float(y0), float(x1), float(y1)


def source(name: str, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> SourceFace:
    image, mesh = meshes()[name]
    return SourceFace(image, mesh, pose(yaw, pitch, roll))


def tracked(name: str, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0,
            track_id: int = 0) -> TrackedFace:
    _, mesh = meshes()[name]
    return TrackedFace(track_id, mesh, pose(yaw, pitch, roll), bbox(mesh))
