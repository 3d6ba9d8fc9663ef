"""Calibration sets: real face crops turned into a network's inputs, saved as ``.npz``.

The image channels come from real photographs (centre square crop, resized to the network's
input size, scaled to its value range). The auxiliary channels FSGAN's generators take are
synthesised with the same structure the pipeline gives them: landmark heatmaps (Gaussian blobs on
a face-shaped ellipse, one channel each) for reenactment, a face mask (filled ellipse) for
inpainting and blending, and for blending a second, shifted view as the target. Each sample is
stored at every pyramid level the network consumes (2x2 average pooling), under the network's
input names, so a set feeds any :class:`engines.backends.Engine` of that network directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from engines.registry import NetworkConfig, get_network_config

__all__ = ["build_calibration_set", "face_crop", "load_calibration_set"]


def face_crop(image: np.ndarray, size: int, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Centre square crop of an RGB uint8 image, resized to ``size``, as float32 CHW in ``value_range``."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = cv2.resize(image[top : top + side, left : left + side], (size, size), interpolation=cv2.INTER_AREA)
    lo, hi = value_range
    return (crop.astype(np.float32).transpose(2, 0, 1) / 255.0) * (hi - lo) + lo


def _ellipse_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    centre = (int(size * rng.uniform(0.45, 0.55)), int(size * rng.uniform(0.48, 0.58)))
    axes = (int(size * rng.uniform(0.28, 0.34)), int(size * rng.uniform(0.36, 0.42)))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(-10, 10)), 0, 360, 1, thickness=-1)
    return mask.astype(np.float32)


def _heatmaps(
    channels: int, size: int, rng: np.random.Generator, value_range: tuple[float, float]
) -> np.ndarray:
    """One Gaussian blob per channel, placed around a face-shaped ellipse with jitter."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angles = np.linspace(0, 2 * np.pi, channels, endpoint=False) + rng.uniform(0, 0.2)
    cx, cy = size * rng.uniform(0.45, 0.55), size * rng.uniform(0.48, 0.58)
    sigma = max(size / 64.0, 1.0)
    out = np.empty((channels, size, size), np.float32)
    for c, angle in enumerate(angles):
        x = cx + size * 0.3 * np.cos(angle) + rng.normal(0, size / 100)
        y = cy + size * 0.38 * np.sin(angle) + rng.normal(0, size / 100)
        out[c] = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    lo, hi = value_range
    return out * (hi - lo) + lo


def _network_input(config: NetworkConfig, face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The finest-level input tensor (C, H, W) of ``config`` for one face crop."""
    size = face.shape[-1]
    lo, hi = config.value_range
    if config.task == "segmentation":
        parts = [face]
    elif config.task == "reenactment":
        parts = [face, _heatmaps(config.in_channels - 3, size, rng, config.value_range)]
    elif config.task == "inpainting":
        mask = _ellipse_mask(size, rng)
        parts = [np.where(mask > 0, face, lo), (mask * (hi - lo) + lo)[None]]
    elif config.task == "blending":
        mask = _ellipse_mask(size, rng)
        shift = int(size * 0.05)
        target = np.roll(face, (shift, -shift), axis=(1, 2))
        parts = [np.where(mask > 0, face, lo), target, (mask * (hi - lo) + lo)[None]]
    else:
        raise ValueError(f"no calibration recipe for task {config.task!r}")
    x = np.concatenate(parts, axis=0).astype(np.float32)
    if x.shape[0] != config.in_channels:
        raise ValueError(f"{config.name}: built {x.shape[0]} channels, network takes {config.in_channels}")
    return x


def _pyramid(x: np.ndarray, levels: int) -> list[np.ndarray]:
    out = [x]
    for _ in range(levels - 1):
        n, c, h, w = out[-1].shape
        out.append(out[-1].reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5), dtype=np.float32))
    return out


def build_calibration_set(
    network: str | NetworkConfig,
    images: Iterable[np.ndarray],
    path: str | os.PathLike[str],
    *,
    size: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a calibration set for ``network`` built from RGB uint8 ``images`` to ``path`` (``.npz``).

    The file holds one ``(N, C, H, W)`` float32 array per network input name plus ``network``
    (the registry name) and ``seed``.

    Raises:
        ValueError: no images, or an image that is not HxWx3.
    """
    config = get_network_config(network) if isinstance(network, str) else network
    side = size or config.input_size
    rng = np.random.default_rng(seed)
    samples = [_network_input(config, face_crop(img, side, config.value_range), rng) for img in images]
    if not samples:
        raise ValueError("a calibration set needs at least one image")
    levels = _pyramid(np.stack(samples), config.pyramid_levels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = dict(zip(config.input_names, levels, strict=True))
    np.savez_compressed(path, network=np.array(config.name), seed=np.array(seed), **arrays)
    return path


def load_calibration_set(path: str | os.PathLike[str]) -> tuple[str, dict[str, np.ndarray]]:
    """``(network name, {input name: (N, C, H, W) array})`` from a :func:`build_calibration_set` file."""
    with np.load(path, allow_pickle=False) as data:
        name = str(data["network"])
        config = get_network_config(name)
        return name, {n: data[n] for n in config.input_names}
