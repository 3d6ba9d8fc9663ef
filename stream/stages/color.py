"""Colour correction for blending: match the source face's colours to the target's.

Reinhard et al.'s colour transfer: per channel of CIELAB (OpenCV's 8-bit scaling), shift and scale
the source pixels so their mean and standard deviation inside a mask equal the target's inside its
mask. Skin tone and overall brightness then follow the target scene's lighting; Poisson blending
would fix only the low frequencies near the seam, this fixes the whole face.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from stream.choices import COLOR_TRANSFERS, ColorTransfer
from stream.exceptions import InputError


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and saturate to uint8 (OpenCV's saturate_cast: several times faster than ``np.clip``)."""
    if image.dtype == np.uint8:
        return image
    return cv2.add(np.asarray(image, np.float32), 0.0, dtype=cv2.CV_8U)


@functools.cache
def warm_up_lab() -> None:
    """Build OpenCV's 8-bit CIELAB tables now (once per process; about 0.1 s on one core).

    OpenCV fills them on the first 8-bit RGB<->LAB conversion, whatever its size: without this, the
    first frame with a face pays for them, a hitch a live stream would drop frames over.
    """
    cv2.cvtColor(np.zeros((1, 1, 3), np.uint8), cv2.COLOR_RGB2LAB)


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """float32 8-bit-scaled CIELAB (L*255/100, a+128, b+128) of an RGB image with values 0..255.

    OpenCV's 8-bit conversion runs on lookup tables, several times faster than the float one; the
    mean/std transfer is unaffected by the per-channel scaling, and the rounding to 8 bits is far
    below what the transfer changes.
    """
    return cv2.cvtColor(to_uint8(rgb), cv2.COLOR_RGB2LAB).astype(np.float32)


def masked_stats(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel mean and standard deviation over ``mask > 0``; None when the mask is empty."""
    mask = np.asarray(mask)
    m = np.ascontiguousarray(mask).view(np.uint8) if mask.dtype == bool else (mask > 0).astype(np.uint8)
    if cv2.countNonZero(m) == 0:
        return None
    image = np.ascontiguousarray(image if image.dtype == np.uint8 else image.astype(np.float32))
    mean, std = cv2.meanStdDev(image, mask=m)
    return mean.ravel().astype(np.float32), std.ravel().astype(np.float32)


FLAT_SPREAD = 2.0
"""Standard deviation (8-bit LAB levels) of a reference channel below which :func:`reinhard_lut` may scale
that channel of the image by less than ``1 / max_gain``. A face in colour spreads 3-10 levels in ``a`` and
``b``; a grey picture, none."""


def reinhard_lut(image_stats: tuple[np.ndarray, np.ndarray], reference_stats: tuple[np.ndarray, np.ndarray],
                 *, max_gain: float = 2.0, strength: float = 1.0) -> np.ndarray:
    """The per-channel LAB map of Reinhard's transfer as a (256, 1, 3) uint8 lookup table for ``cv2.LUT``.

    ``image_stats`` and ``reference_stats`` are :func:`masked_stats` of 8-bit LAB images. Scales are
    limited to ``[1 / max_gain, max_gain]``, except that a reference channel with almost no spread
    (:data:`FLAT_SPREAD`) lets its scale go down to 0 along with it: a black-and-white video (an IR
    camera at night) has none in ``a`` and ``b``, and its faces must come out without colour, not with
    half the source's. ``strength`` in [0, 1] moves only part of the way.
    """
    (mu_s, sd_s), (mu_r, sd_r) = image_stats, reference_stats
    # The floor falls linearly with the reference's spread below FLAT_SPREAD, so a video whose spread
    # hovers there gets no jump in colour from frame to frame.
    floor = np.minimum(sd_r / FLAT_SPREAD, 1.0) / max_gain
    gain = np.clip(sd_r / np.maximum(sd_s, 1e-3), floor, max_gain)
    gain = 1 + strength * (gain - 1)
    shift = mu_s + strength * (mu_r - mu_s)
    levels = np.arange(256, dtype=np.float32)[:, None]
    table = levels * gain.astype(np.float32) + (shift - mu_s * gain).astype(np.float32)
    # Round half to even and saturate, as OpenCV's per-pixel affine transform did.
    return np.clip(np.rint(table), 0, 255).astype(np.uint8).reshape(256, 1, 3)


def apply_lab_lut(lab: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """uint8 RGB of an 8-bit LAB image after the per-channel table ``lut`` (:func:`reinhard_lut`)."""
    return cv2.cvtColor(cv2.LUT(lab, lut), cv2.COLOR_LAB2RGB)


def reinhard_transfer(image: np.ndarray, image_mask: np.ndarray, reference: np.ndarray,
                      reference_mask: np.ndarray, *, max_gain: float = 2.0,
                      strength: float = 1.0) -> np.ndarray:
    """``image`` (RGB 0..255) recoloured so its LAB statistics inside ``image_mask`` match those of
    ``reference`` inside ``reference_mask``; float32 RGB 0..255.

    Scales are limited to ``[1 / max_gain, max_gain]`` so a tiny or flat region cannot blow the
    colours up; ``strength`` in [0, 1] moves only part of the way. With an empty mask the image is
    returned unchanged (as float32). The reference's statistics are taken on every other pixel.
    """
    lab = cv2.cvtColor(to_uint8(image), cv2.COLOR_RGB2LAB)
    src_stats = masked_stats(lab, image_mask)
    ref_stats = reference_lab_stats(reference, reference_mask)
    if src_stats is None or ref_stats is None:
        return np.asarray(image, np.float32)
    lut = reinhard_lut(src_stats, ref_stats, max_gain=max_gain, strength=strength)
    return apply_lab_lut(lab, lut).astype(np.float32)


def reference_lab_stats(reference: np.ndarray, reference_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`masked_stats` of ``reference``'s LAB inside ``reference_mask``, on every other pixel
    (statistics of a face need no more, and this is four times cheaper)."""
    ref = cv2.cvtColor(np.ascontiguousarray(to_uint8(reference)[::2, ::2]), cv2.COLOR_RGB2LAB)
    return masked_stats(ref, np.asarray(reference_mask)[::2, ::2])


def correct_colors(mode: ColorTransfer, image: np.ndarray, image_mask: np.ndarray, reference: np.ndarray,
                   reference_mask: np.ndarray) -> np.ndarray:
    """Apply colour transfer ``mode`` (``"lab"`` or ``"none"``); float32 RGB 0..255."""
    if mode == "none":
        return np.asarray(image, np.float32)
    if mode == "lab":
        return reinhard_transfer(image, image_mask, reference, reference_mask)
    raise InputError(f"unknown colour transfer {mode!r}; choose from: {', '.join(COLOR_TRANSFERS)}")
