"""A sample clip built from public-domain faces that ship inside dependencies.

The target is scikit-image's ``astronaut`` (Eileen Collins, NASA, public domain) moving over a textured
background with a soft-edged head; the source is matplotlib's ``grace_hopper.jpg`` (public domain). The
clip has frames without a face at both ends and a stereo tone as its audio, so a run shows that frames,
timestamps and sound survive.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from stream.exceptions import InputError


def sample_faces() -> tuple[np.ndarray, Path]:
    """``(astronaut RGB image, path of grace_hopper.jpg)``; needs the ``demo`` extra."""
    try:
        import matplotlib.cbook
        import skimage.data
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InputError("the demo needs scikit-image and matplotlib: pip install 'facestream[demo]'") from exc
    astronaut = skimage.data.astronaut()
    hopper = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return astronaut, hopper


def sample_face_images() -> dict[str, np.ndarray]:
    """RGB images of both portraits, by id: ``astronaut`` (512x512) and ``grace_hopper`` (600x512)."""
    astronaut, hopper = sample_faces()
    return {"astronaut": np.ascontiguousarray(astronaut),
            "grace_hopper": cv2.cvtColor(cv2.imread(str(hopper), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)}


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([90 + 60 * np.sin(x / 97.0), 110 + 50 * np.cos(y / 71.0), 140 + 40 * np.sin((x + y) / 150.0)],
                    axis=-1)
    noise = cv2.GaussianBlur(rng.normal(0, 18, (height, width, 3)).astype(np.float32), (0, 0), 2.0)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _head_sprite(astronaut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The astronaut's head and shoulders with a feathered elliptical alpha."""
    sprite = astronaut[0:300, 90:390].copy()
    h, w = sprite.shape[:2]
    alpha = np.zeros((h, w), np.float32)
    cv2.ellipse(alpha, (w // 2 + 10, h // 2 - 5), (int(w * 0.42), int(h * 0.48)), 0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 9)
    return sprite, alpha


def render_target_frames(width: int = 1280, height: int = 720, frames: int = 90, *, seed: int = 0,
                         empty_head: int = 8, empty_tail: int = 8,
                         sensor_noise: float = 0.0) -> Iterator[np.ndarray]:
    """The target clip's RGB frames: no face for ``empty_head`` frames, then a moving, turning head.

    ``sensor_noise`` > 0 adds fresh Gaussian noise of that many grey levels (standard deviation) to every
    frame, as a camera sensor does: without it the background is still, which an encoder codes almost
    for free, so such a clip says little about the cost of encoding real footage.
    """
    check_sensor_noise(sensor_noise)  # now, not on the first frame: a bad value must not start a file
    return _render(width, height, frames, seed, empty_head, empty_tail, sensor_noise)


def check_sensor_noise(sigma: float) -> None:
    """Raise :class:`InputError` unless ``sigma`` is a usable noise level (finite, >= 0)."""
    if not (math.isfinite(sigma) and sigma >= 0):
        raise InputError(f"sensor noise must be a finite number of grey levels >= 0, got {sigma:g}")


def _render(width: int, height: int, frames: int, seed: int, empty_head: int, empty_tail: int,
            sensor_noise: float) -> Iterator[np.ndarray]:
    astronaut, _ = sample_faces()
    rng = np.random.default_rng(seed)
    grain = np.random.default_rng(seed + 1)  # its own stream: the scene is the same with or without noise
    bg = _background(width, height, rng)
    sprite, alpha = _head_sprite(astronaut)
    base_scale = min(width, height) / 720 * 1.1
    for i in range(frames):
        frame = bg.copy()
        if empty_head <= i < frames - empty_tail:
            t = (i - empty_head) / max(frames - empty_head - empty_tail - 1, 1)
            cx = width * (0.35 + 0.3 * t)
            cy = height * (0.5 + 0.05 * math.sin(2 * math.pi * t))
            angle = 8 * math.sin(2 * math.pi * t)
            scale = base_scale * (0.9 + 0.2 * t)
            sh, sw = sprite.shape[:2]
            m = cv2.getRotationMatrix2D((sw / 2, sh / 2), angle, scale)
            m[:, 2] += (cx - sw / 2, cy - sh / 2)
            warped = cv2.warpAffine(sprite, m, (width, height), flags=cv2.INTER_LINEAR)
            a = cv2.warpAffine(alpha, m, (width, height), flags=cv2.INTER_LINEAR)[..., None]
            frame = (warped * a + frame * (1 - a) + 0.5).astype(np.uint8)
        if sensor_noise > 0:
            noise = grain.standard_normal(frame.shape, np.float32) * np.float32(sensor_noise)
            frame = cv2.add(frame, noise, dtype=cv2.CV_8U)  # rounded and saturated
        yield frame


def write_target_clip(path: Path, *, width: int = 1280, height: int = 720, frames: int = 90, fps: int = 30,
                      audio: bool = True, sensor_noise: float = 0.0) -> Path:
    """Encode the sample target clip (H.264 near-lossless + AAC tone) to ``path``; ``sensor_noise``: see
    :func:`render_target_frames`."""
    import av

    frames_iter = render_target_frames(width, height, frames, sensor_noise=sensor_noise)
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.options = {"crf": "12", "preset": "veryfast"}
        a = None
        if audio:
            a = out.add_stream("aac", rate=48000)
            a.layout = "stereo"
        samples_per_frame = 48000 // fps
        sample_pos = 0
        for i, rgb in enumerate(frames_iter):
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf.pts = i
            vf.time_base = Fraction(1, fps)
            out.mux(v.encode(vf))
            if a is not None:
                t = (sample_pos + np.arange(samples_per_frame)) / 48000.0
                tone = (0.2 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
                af = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
                af.sample_rate = 48000
                af.pts = sample_pos
                af.time_base = Fraction(1, 48000)
                sample_pos += samples_per_frame
                out.mux(a.encode(af))
        out.mux(v.encode(None))
        if a is not None:
            out.mux(a.encode(None))
    return path


def side_by_side(before: np.ndarray, after: np.ndarray, path: Path) -> Path:
    """Save a before/after PNG for a quick look."""
    both = np.concatenate([before, after], axis=1)
    cv2.imwrite(str(path), cv2.cvtColor(both, cv2.COLOR_RGB2BGR))
    return path
