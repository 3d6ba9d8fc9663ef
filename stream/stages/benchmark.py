"""Per-stage timings of the weight-free default chain.

``python -m stream.stages.benchmark`` meshes the public-domain faces that ship with scikit-image and
matplotlib (the ``demo`` extra) and prints a JSON table: Grace Hopper onto the astronaut, once with a
~250 px face and once in a 1280x720 frame, for each blend mode. Times are in milliseconds, the
minimum and the median over the repeats (the minimum is the stage's cost on an idle core).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import cv2
import numpy as np

from stream.choices import BLEND_MODES, BlendMode
from stream.frames import Frame, HeadPose, SourceFace, TrackedFace
from stream.stages import SourceBank, default_chain


def benchmark_default_chain(source: SourceFace, frame: Frame, *,
                            blend_modes: Sequence[BlendMode] = BLEND_MODES,
                            repeats: int = 20) -> dict[str, dict[str, dict[str, float]]]:
    """Run the default chain ``repeats`` times on copies of ``frame`` (which must carry its faces).

    Returns ``{blend_mode: {stage_name | "paste" | "total": {"min_ms": .., "median_ms": ..}}}``.
    Per-source preparation (``set_source``) is done once, outside the timings.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for mode in blend_modes:
        chain = default_chain(blend=mode, carry=False)  # a repeat of one frame would carry: time every stage
        chain.set_source(SourceBank([source]))
        samples: dict[str, list[float]] = {}
        for i in range(repeats + 1):
            # Consecutive indices, as in a stream: per-track state is reused as often as it would be there.
            f = Frame(index=frame.index + i, image=frame.image.copy(), faces=list(frame.faces))
            t0 = time.perf_counter()
            chain(f)
            total = time.perf_counter() - t0
            if i == 0:
                continue  # warm-up: first-call allocations
            for name, seconds in f.timings.items():
                samples.setdefault(name, []).append(seconds * 1e3)
            samples.setdefault("total", []).append(total * 1e3)
        out[mode] = {name: {"min_ms": round(float(np.min(v)), 3), "median_ms": round(float(np.median(v)), 3)}
                     for name, v in samples.items()}
        chain.close()
    return out


def _detect(image: np.ndarray) -> np.ndarray:
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True,
                                         max_num_faces=1) as fm:
        result = fm.process(image)
    if not result.multi_face_landmarks:
        raise RuntimeError("MediaPipe found no face in the benchmark image")
    h, w = image.shape[:2]
    return np.array([[p.x * w, p.y * h, p.z * w] for p in result.multi_face_landmarks[0].landmark],
                    np.float32)


def _tracked(landmarks: np.ndarray) -> TrackedFace:
    pose = HeadPose(0.0, 0.0, 0.0, np.eye(3), np.zeros(3))
    lo, hi = landmarks[:, :2].min(0), landmarks[:, :2].max(0)
    return TrackedFace(0, landmarks, pose, (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])))


def _scenario(image: np.ndarray, landmarks: np.ndarray, face_px: float,
              frame_size: tuple[int, int] | None) -> Frame:
    """``image`` scaled to a face of ``face_px``, optionally cut/padded to ``frame_size`` around it."""
    from stream import mesh

    k = face_px / mesh.face_size(landmarks)
    img = cv2.resize(image, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC)
    lm = landmarks * k
    lm[:, :2] += (k - 1) / 2
    if frame_size is not None:
        w, h = frame_size
        cx, cy = lm[:, :2].mean(0)
        x0, y0 = int(cx - w / 2), int(cy - h / 2)
        canvas = np.zeros((h, w, 3), np.uint8)
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + w, img.shape[1]), min(y0 + h, img.shape[0])
        canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
        img = canvas
        lm = lm.copy()
        lm[:, :2] -= (x0, y0)
    return Frame(index=0, image=np.ascontiguousarray(img), faces=[_tracked(lm)])


def main(repeats: int = 20) -> dict[str, object]:
    """Benchmark Grace Hopper onto the astronaut: a ~250 px face, and a 720p frame with one face."""
    from stream.demo import sample_face_images

    cv2.setNumThreads(1)  # one core, as the brief of the stages asks
    faces = sample_face_images()
    target, grace = faces["astronaut"], faces["grace_hopper"]
    pose = HeadPose(0.0, 0.0, 0.0, np.eye(3), np.zeros(3))
    source = SourceFace(grace, _detect(grace), pose)
    target_lm = _detect(target)
    results: dict[str, object] = {}
    for label, face_px, size in (("face_250px", 250.0, None), ("frame_720p_face_200px", 200.0, (1280, 720))):
        frame = _scenario(target, target_lm, face_px, size)
        results[label] = {"frame": f"{frame.width}x{frame.height}",
                          "modes": benchmark_default_chain(source, frame, repeats=repeats)}
    return results


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
