"""Head pose from a MediaPipe face mesh, without a canonical face model file.

MediaPipe 0.10.21's wheel does not ship ``canonical_face_model.obj`` (only the face-geometry protos),
so instead of a Procrustes fit against it the pose is read off the mesh itself. The mesh's ``(x, y, z)``
is a weak-perspective 3D shape (``z`` in the same pixel scale as ``x``), so its own anatomy gives a
rigid head frame in closed form:

* **lateral axis** ``X``: the mean of the vectors from the subject's right to left of five mirror
  pairs on rigid parts of the face (outer and inner eye corners, cheeks at the tragion, irises,
  temples). Mirror pairs make the frame exactly symmetric: a mirrored face gives the opposite yaw and
  roll and the same pitch.
* **vertical axis** ``Y`` (toward the chin): from the centre of the upper midline (forehead, glabella,
  nose bridge) to the base of the nose (subnasale and alae), orthogonalised against ``X``. Both ends
  sit on the skull, unlike the chin, which moves with the jaw.
* ``Z = X x Y`` (into the head).

``R = [X Y Z]`` maps the head frame to the camera frame of the upright image (``x`` right, ``y`` down,
``z`` away from the viewer), so ``R = I`` for a face looking straight into the camera. Jaw, lips and
eyelids are left out of every axis, so talking and blinking do not move the pose. (A plane fitted
through rigid upper-face points was tried for ``Z`` and rejected: the forehead arc curves back to the
ears about as much as it spans vertically, so its normal is ill-defined.)

Angles follow :class:`stream.frames.HeadPose` and decompose ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``:
roll is the in-plane rotation applied last, so rotating an image by ``a`` degrees clockwise adds
exactly ``a`` to roll and leaves yaw and pitch unchanged; yaw > 0 when the face turns toward the
image's left; pitch > 0 when it looks down. The forehead-to-nose-base line of a face looking into the
camera leans forward at the bottom by :data:`PITCH_OFFSET_DEG`, which is removed so that such a face
reads a pitch of about 0 (measured on two portraits that look into the camera, scikit-image's astronaut
and matplotlib's Grace Hopper: 5.9 and 2.0 degrees before the correction).

Accuracy is that of the mesh's depth. Faces re-rendered from their own mesh as turned by 20 degrees of
pitch read 18-23 degrees, but turned by 30 degrees of yaw they read only 14-16: the network's depth
leans toward a frontal face when the cheeks and hair do not turn with it. Yaw is monotonic and
sign-correct, and source and target poses are measured the same way, which is what matching them
needs.

``translation`` is the centre of the rigid points used, in upright pixels (``z`` in the mesh's
relative depth): a weak-perspective model whose unit is the pixel.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from stream.exceptions import InputError
from stream.frames import HeadPose

__all__ = ["PITCH_OFFSET_DEG", "LazyHeadPose", "estimate_pose", "euler_from_matrix", "matrix_from_euler",
           "stored_to_upright_matrix", "upright_size"]

# (subject's right, subject's left) landmark pairs on rigid parts of the face.
_MIRROR_PAIRS = np.array([
    (33, 263),   # outer eye corners
    (133, 362),  # inner eye corners
    (234, 454),  # cheeks at the tragion
    (468, 473),  # iris centres
    (21, 251),   # temples
])
# Upper midline (forehead top, forehead, glabella, nose bridge) and nose base (subnasale, alae).
_UPPER_MIDLINE = np.array([10, 151, 9, 8, 168])
_NOSE_BASE = np.array([2, 98, 327])
_RIGID = np.unique(np.concatenate([_MIRROR_PAIRS.ravel(), _UPPER_MIDLINE, _NOSE_BASE]))

PITCH_OFFSET_DEG = 4.0
"""Forward lean of the forehead-to-nose-base line of a face looking into the camera; removed."""


# The neutral face's axes are pitched forward by PITCH_OFFSET_DEG: undo that in the head frame.
_PITCH_CORRECTION = np.array([
    [1.0, 0.0, 0.0],
    [0.0, math.cos(math.radians(PITCH_OFFSET_DEG)), math.sin(math.radians(PITCH_OFFSET_DEG))],
    [0.0, -math.sin(math.radians(PITCH_OFFSET_DEG)), math.cos(math.radians(PITCH_OFFSET_DEG))],
])


def upright_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    """``(width, height)`` of a ``width`` x ``height`` stored image once displayed upright."""
    return (height, width) if rotation % 180 else (width, height)


def stored_to_upright_matrix(width: int, height: int, rotation: int) -> np.ndarray:
    """(2, 3) affine map from stored pixels to upright (displayed) pixels.

    ``rotation`` is the display rotation in degrees counter-clockwise (PyAV's ``VideoFrame.rotation``
    normalised to 0, 90, 180 or 270): the displayed image is the stored one turned that far
    counter-clockwise, like ``np.rot90(image, rotation // 90)``.
    """
    r = int(rotation) % 360
    if r == 0:
        return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    if r == 90:  # stored (x, y) -> (y, W - x)
        return np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, float(width)]])
    if r == 180:
        return np.array([[-1.0, 0.0, float(width)], [0.0, -1.0, float(height)]])
    if r == 270:  # stored (x, y) -> (H - y, x)
        return np.array([[0.0, -1.0, float(height)], [1.0, 0.0, 0.0]])
    raise InputError(f"rotation must be one of 0, 90, 180, 270 degrees; got {rotation!r}")


def matrix_from_euler(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``Rz(roll) @ Ry(yaw) @ Rx(pitch)`` for angles in degrees (the :class:`HeadPose` convention)."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    cy, sy, cp, sp, cr, sr = math.cos(y), math.sin(y), math.cos(p), math.sin(p), math.cos(r), math.sin(r)
    rz = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    return rz @ ry @ rx


def euler_from_matrix(rotation: np.ndarray) -> tuple[float, float, float]:
    """``(yaw, pitch, roll)`` in degrees of a rotation matrix, inverse of :func:`matrix_from_euler`."""
    m = np.asarray(rotation, dtype=np.float64)
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, -m[2, 0]))))
    pitch = math.degrees(math.atan2(m[2, 1], m[2, 2]))
    roll = math.degrees(math.atan2(m[1, 0], m[0, 0]))
    return yaw, pitch, roll


def estimate_pose(landmarks: np.ndarray, *, image_size: tuple[int, int] | None = None,
                  rotation: int = 0) -> HeadPose:
    """Head pose of a ``(478, 3)`` mesh in stored pixels, relative to the upright image.

    ``image_size`` (stored ``(width, height)``) is needed only when ``rotation`` is not 0, to place
    ``translation`` in upright pixels.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] < 478 or pts.shape[1] != 3:
        raise InputError(f"landmarks must be (478, 3); got {pts.shape}")
    rotation = int(rotation) % 360
    if rotation:
        if image_size is None:
            raise InputError("estimate_pose needs image_size when rotation is not 0")
        m = stored_to_upright_matrix(image_size[0], image_size[1], rotation)
        up = pts.copy()
        up[:, :2] = pts[:, :2] @ m[:, :2].T + m[:, 2]
        pts = up

    lateral = (pts[_MIRROR_PAIRS[:, 1]] - pts[_MIRROR_PAIRS[:, 0]]).sum(axis=0)
    x_axis = lateral / (np.linalg.norm(lateral) or 1.0)

    down = pts[_NOSE_BASE].mean(axis=0) - pts[_UPPER_MIDLINE].mean(axis=0)
    down -= x_axis * float(down @ x_axis)
    y_axis = down / (np.linalg.norm(down) or 1.0)
    z_axis = np.cross(x_axis, y_axis)
    rot = np.stack([x_axis, y_axis, z_axis], axis=1) @ _PITCH_CORRECTION
    centre = pts[_RIGID].mean(axis=0)
    yaw, pitch, roll = euler_from_matrix(rot)
    return HeadPose(yaw=yaw, pitch=pitch, roll=roll, rotation=rot.astype(np.float32),
                    translation=centre.astype(np.float32), display_rotation=rotation)


class LazyHeadPose(HeadPose):
    """The :func:`estimate_pose` of a mesh, estimated when one of its fields is first read.

    The tracker gives every face of every frame a pose, but a swap from one source image reads none of them
    (the source is chosen by pose only among several): put off, the estimate costs nothing there (0.17 ms a
    face and frame measured on 2 cores). Reads as a :class:`HeadPose` in every way; new poses derived
    from it are built with :class:`HeadPose` itself (this constructor takes a mesh).
    """

    def __init__(self, landmarks: np.ndarray, *, image_size: tuple[int, int] | None = None,
                 rotation: int = 0) -> None:
        object.__setattr__(self, "_args", (landmarks, image_size, rotation))

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not set yet: the fields, before the first read.
        args = None if name.startswith("__") else self.__dict__.get("_args")
        if args is None:
            raise AttributeError(name)
        landmarks, image_size, rotation = args
        pose = estimate_pose(landmarks, image_size=image_size, rotation=rotation)
        for f in dataclasses.fields(HeadPose):
            object.__setattr__(self, f.name, getattr(pose, f.name))
        self.__dict__.pop("_args", None)  # (two threads reading at once both estimate it: the same pose)
        return getattr(self, name)
