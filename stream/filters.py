"""Causal smoothing of noisy per-frame measurements (landmarks) with the One-Euro filter.

The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) is an exponential low-pass whose cutoff
frequency rises with the signal's speed: ``cutoff = min_cutoff + beta * |dx/dt|``. A still face is
smoothed hard (jitter removed), a moving face hardly at all (no lag). Time enters through real
timestamps, so variable frame rates and dropped frames are handled.

:class:`OneEuroFilter` works on whole arrays at once (all 478 landmarks of a face in one call). The
speed that drives the cutoff can be measured per element, or as the Euclidean norm over one axis
(``norm_axis=-1`` on ``(N, 3)`` landmarks: one cutoff per point, so a point's x, y and z are smoothed
alike and its direction of motion is not distorted), and in units of a caller-given ``scale`` (a face's
size) so that one ``beta`` suits small and large faces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stream.exceptions import InputError

__all__ = ["OneEuroConfig", "OneEuroFilter", "smoothing_alpha"]


@dataclass(frozen=True)
class OneEuroConfig:
    """Parameters of a One-Euro filter."""

    min_cutoff: float = 1.0
    """Cutoff frequency (Hz) when the signal is still: lower removes more jitter but lags slow drifts."""
    beta: float = 5.0
    """How fast the cutoff rises with speed, in Hz per (scale unit per second); higher follows fast
    motion more tightly. With landmarks measured in face heights, ``beta=5`` gives a 6 Hz cutoff at one
    face height per second."""
    d_cutoff: float = 1.0
    """Cutoff frequency (Hz) of the low-pass applied to the speed estimate itself."""

    def __post_init__(self) -> None:
        for name in ("min_cutoff", "d_cutoff"):
            value = getattr(self, name)
            if not value > 0:
                raise InputError(f"One-Euro {name} must be > 0; got {value!r}")
        if not self.beta >= 0:
            raise InputError(f"One-Euro beta must be >= 0; got {self.beta!r}")


def smoothing_alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    """Weight of the new sample in an exponential low-pass with ``cutoff`` Hz after ``dt`` seconds."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, dtype=np.float64))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """A One-Euro filter over arrays of a fixed shape; see the module docstring.

    Call it with each new measurement and its timestamp (seconds, increasing). The first call, and
    the first after :meth:`reset`, returns the measurement unchanged. A repeated timestamp (a duplicated
    frame) returns the previous output; one that goes back (a seek) restarts the filter.
    """

    def __init__(self, config: OneEuroConfig = OneEuroConfig(), *, norm_axis: int | None = None) -> None:
        self.config = config
        self.norm_axis = norm_axis
        self._x: np.ndarray | None = None  # last filtered value (float64)
        self._dx: np.ndarray | None = None  # last filtered velocity, in scale units per second
        self._t = 0.0

    def reset(self) -> None:
        """Forget the history; the next sample passes through unchanged."""
        self._x = None
        self._dx = None

    @property
    def initialized(self) -> bool:
        return self._x is not None

    def __call__(self, x: np.ndarray, t: float, *, scale: float = 1.0) -> np.ndarray:
        """Filter sample ``x`` taken at time ``t`` (seconds); ``scale`` is the unit speed is measured in.

        Returns an array of ``x``'s shape and dtype.
        """
        x64 = np.asarray(x, dtype=np.float64)
        if self._x is None or self._x.shape != x64.shape or float(t) < self._t:
            self._x = x64.copy()
            self._dx = np.zeros_like(x64)
            self._t = float(t)
            return np.array(x, copy=True)
        dt = float(t) - self._t
        if dt == 0:
            return self._x.astype(x.dtype)
        cfg = self.config
        # Velocity, low-passed at d_cutoff while signed so that noise averages out, then its size.
        velocity = (x64 - self._x) / (dt * max(float(scale), 1e-9))
        self._dx = self._dx + smoothing_alpha(cfg.d_cutoff, dt) * (velocity - self._dx)
        speed = (np.abs(self._dx) if self.norm_axis is None
                 else np.linalg.norm(self._dx, axis=self.norm_axis, keepdims=True))
        # The cutoff rises with speed: still points are smoothed, moving points follow.
        a = smoothing_alpha(cfg.min_cutoff + cfg.beta * speed, dt)
        self._x = self._x + a * (x64 - self._x)
        self._t = float(t)
        return self._x.astype(x.dtype)
