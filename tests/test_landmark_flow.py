"""Optical-flow propagation of a face mesh, against the mesh network run on every frame."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from stream.landmark_flow import LandmarkFlow
from stream.tracking import FaceTracker, TrackerConfig, detect_faces


def _hopper() -> np.ndarray:
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1])


def _textured_background(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(128, 40, (h, w, 3)).astype(np.float32), (0, 0), 3)
    return np.clip(noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def hopper_face() -> tuple[np.ndarray, np.ndarray]:
    """Grace Hopper's portrait shrunk so her face is about 150 px tall, and its mesh."""
    img = _hopper()
    img = cv2.resize(img, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)
    return img, detect_faces(img)[0].landmarks


def _turning(img: np.ndarray, n: int, size: tuple[int, int] = (640, 480)) -> list[np.ndarray]:
    """The portrait moving right and turning (yaw up to 20 degrees, a little pitch) as a plane seen in
    perspective, over a textured background."""
    w, h = size
    ih, iw = img.shape[:2]
    bg = _textured_background(w, h, 0)
    corners = np.float32([[0, 0], [iw, 0], [iw, ih], [0, ih]])
    out = []
    for i in range(n):
        t = i / max(n - 1, 1)
        rot = cv2.Rodrigues(np.array([math.radians(6 * math.sin(4 * math.pi * t)),
                                      math.radians(20 * math.sin(2 * math.pi * t)), 0.0]))[0]
        f = 3.0 * ih
        pts3 = np.c_[corners - (iw / 2, ih / 2), np.zeros(4)] @ rot.T
        pts3[:, 2] += f
        proj = pts3[:, :2] / pts3[:, 2:] * f + (w * (0.4 + 0.2 * t), h / 2)
        hmat = cv2.getPerspectiveTransform(corners, proj.astype(np.float32))
        frame = cv2.warpPerspective(img, hmat, (w, h))
        mask = cv2.warpPerspective(np.full((ih, iw), 255, np.uint8), hmat, (w, h))[..., None] > 0
        out.append(np.where(mask, frame, bg))
    return out


def _jaw_drop(img: np.ndarray, mesh: np.ndarray, opening: float) -> np.ndarray:
    """The portrait with everything below the lips pushed down by ``opening`` face heights (the jaw
    dropping: the mouth stretches open), fading out to the sides and below the chin."""
    h, w = img.shape[:2]
    face_h = float(np.ptp(mesh[:, 1]))
    lips_y = float(mesh[[13, 14], 1].mean())
    mouth_x = float(mesh[[61, 291], 0].mean())
    chin_y = float(mesh[152, 1])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    across = np.exp(-((xx - mouth_x) / (0.3 * face_h)) ** 2)
    below = np.clip((yy - lips_y) / (0.04 * face_h), 0, 1)
    fade = np.clip(1 - (yy - chin_y - 0.2 * face_h) / (0.2 * face_h), 0, 1)
    return cv2.remap(img, xx, yy - opening * face_h * across * below * fade, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT)


def _shifted(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REFLECT)


def _meshes(frames: list[np.ndarray], mesh_every: int) -> tuple[list[np.ndarray], dict[str, int]]:
    with FaceTracker(TrackerConfig(max_faces=1, smoothing=None, mesh_every=mesh_every)) as tracker:
        out = [tracker.track(f, timestamp=i / 30)[0].landmarks for i, f in enumerate(frames)]
        return out, dict(tracker.counters)


def test_propagated_mesh_stays_on_a_moving_turning_face(hopper_face) -> None:
    img, _ = hopper_face
    frames = _turning(img, 24)
    meshed, _ = _meshes(frames, 1)
    carried, counters = _meshes(frames, 6)
    assert counters["flow"] >= 12, counters  # most frames came from the flow
    err = np.concatenate([np.linalg.norm(a[:468, :2] - b[:468, :2], axis=1) / np.ptp(a[:, 1])
                          for a, b in zip(meshed, carried, strict=True)])
    assert np.percentile(err, 95) < 0.02, np.percentile(err, 95)
    assert err.mean() < 0.01, err.mean()


def test_flow_follows_a_shift_and_hands_back_when_the_mouth_opens(hopper_face) -> None:
    img, mesh = hopper_face
    flow = LandmarkFlow()
    flow.keyframe(img, mesh)
    # A rigid shift: followed, the mesh moves with it.
    for k in range(1, 4):
        moved = flow.propagate(_shifted(img, 3.0 * k, 2.0 * k))
        assert moved is not None, flow.last_reason
        shift = (moved[:, :2] - mesh[:, :2]).mean(axis=0)
        assert np.allclose(shift, (3.0 * k, 2.0 * k), atol=0.5), shift
    # The jaw drops a little more each frame: the flow gives up before the mouth is 4% of the face open.
    flow.keyframe(img, mesh)
    given_up_at = None
    for k in range(1, 9):
        if flow.propagate(_jaw_drop(img, mesh, 0.01 * k)) is None:
            given_up_at = 0.01 * k
            break
    assert given_up_at is not None and given_up_at <= 0.04, given_up_at
    assert "mouth" in flow.last_reason, flow.last_reason


def test_flow_follows_an_accelerating_face_or_hands_back(hopper_face) -> None:
    """A head that speeds up by 4 px a frame each frame (its last velocity predicts it worse and worse):
    every mesh the flow returns is on the face; it may give up, but not before the motion is fast."""
    img, mesh = hopper_face
    flow = LandmarkFlow()
    flow.keyframe(img, mesh)
    x = v = 0.0
    followed = 0
    for _ in range(10):
        v += 4.0
        x += v
        moved = flow.propagate(_shifted(img, x, 0.5 * x))
        if moved is None:
            break
        followed += 1
        shift = (moved[:, :2] - mesh[:, :2]).mean(axis=0)
        assert np.allclose(shift, (x, 0.5 * x), atol=0.75), (x, shift)
    assert followed >= 4, flow.last_reason  # up to 16 px a frame (a tenth of the face) and speeding up


def test_flow_hands_back_when_the_face_is_gone(hopper_face) -> None:
    img, mesh = hopper_face
    flow = LandmarkFlow()
    assert not flow.ready and flow.propagate(img) is None
    flow.keyframe(img, mesh)
    assert flow.propagate(np.full_like(img, 96)) is None
    flow.reset()
    assert not flow.ready and flow.propagate(img) is None


def test_tracker_remeshes_while_the_mouth_moves(hopper_face) -> None:
    """Talking: the jaw opens and closes; the tracker meshes those frames itself and stays on the lips."""
    img, mesh = hopper_face
    openings = [0.06 * (0.5 - 0.5 * math.cos(2 * math.pi * i / 12)) for i in range(18)]
    frames = [_jaw_drop(img, mesh, o) for o in openings]
    meshed, _ = _meshes(frames, 1)
    carried, counters = _meshes(frames, 6)
    assert any(k.startswith("remesh:mouth") for k in counters), counters
    lips = [0, 13, 14, 17, 37, 84, 267, 314, 61, 291]
    err = np.concatenate([np.linalg.norm(a[lips, :2] - b[lips, :2], axis=1) / np.ptp(a[:, 1])
                          for a, b in zip(meshed, carried, strict=True)])
    assert np.percentile(err, 95) < 0.025, np.percentile(err, 95)


def test_carried_mesh_jitters_less_on_a_still_noisy_face(hopper_face) -> None:
    img, _ = hopper_face
    rng = np.random.default_rng(3)
    frames = [np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8) for _ in range(14)]
    jitter = {}
    for k in (1, 6):
        with FaceTracker(TrackerConfig(max_faces=1, mesh_every=k)) as tracker:
            seq = np.array([tracker.track(f, timestamp=i / 30)[0].landmarks for i, f in enumerate(frames)])
        jitter[k] = float(np.linalg.norm(np.diff(seq[3:, :468, :2], axis=0), axis=-1).mean())
    assert jitter[6] <= jitter[1], jitter


def test_tracker_backs_off_the_flow_when_it_keeps_failing(hopper_face) -> None:
    """Heavy blocky flicker breaks the flow on every frame: it is tried less and less often."""
    img, _ = hopper_face
    rng = np.random.default_rng(4)
    h, w = img.shape[:2]
    frames = []
    for _ in range(24):
        blocks = rng.integers(-50, 50, (h // 12 + 1, w // 12 + 1, 1)).repeat(12, 0).repeat(12, 1)[:h, :w]
        frames.append(np.clip(img.astype(np.int16) + blocks, 0, 255).astype(np.uint8))
    _, counters = _meshes(frames, 6)
    failures = sum(v for k, v in counters.items() if k.startswith("remesh:"))
    assert counters.get("flow", 0) <= 4, counters
    assert 1 <= failures <= 6, counters  # 23 frames after the first: without backing off, ~23 tries


def test_patch_ncc_is_matchtemplates_normed_correlation():
    """The mouth/eye check computes TM_CCOEFF_NORMED itself (matchTemplate's DFT is slower at these sizes);
    it must give matchTemplate's value, flat patches included."""
    from stream.landmark_flow import _ncc

    rng = np.random.default_rng(4)
    flat, other_flat = np.full((12, 16), 7, np.uint8), np.full((12, 16), 9, np.uint8)
    cases = [(flat, other_flat), (flat, rng.integers(0, 255, (12, 16), np.uint8)),
             (rng.integers(0, 255, (12, 16), np.uint8), flat)]
    for shape in [(1, 5), (20, 30), (70, 100)]:
        a = rng.integers(0, 255, shape, np.uint8)
        b = np.clip(a.astype(int) + rng.integers(-60, 60, shape), 0, 255).astype(np.uint8)
        cases += [(a, b), (a, 255 - a)]
    for image, ref in cases:
        centred = ref.astype(np.float32) - ref.astype(np.float32).mean()
        got = _ncc(image, centred, float(np.sqrt(np.vdot(centred, centred))))
        want = float(cv2.matchTemplate(image, ref, cv2.TM_CCOEFF_NORMED)[0, 0])
        assert got == pytest.approx(want, abs=1e-4), (image.shape, want)
