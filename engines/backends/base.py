"""The :class:`Engine` protocol every inference backend implements, and what they share.

An engine is a compiled, ready-to-run network: call it with NumPy arrays (one per input, NCHW,
batch first), get a list of NumPy arrays back (one per output, always ``float32`` whatever the
compute precision), and ``close()`` it to release device memory. Engines are not thread-safe; use
one per worker (the executor in :mod:`engines.executor` owns its engine).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, get_args, runtime_checkable

import numpy as np

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "BackendName",
    "Engine",
    "EngineBase",
    "Precision",
    "check_precision",
]

BackendName = Literal["auto", "torch", "onnxruntime", "tensorrt"]
Precision = Literal["fp32", "fp16", "int8"]
BACKENDS: tuple[str, ...] = get_args(BackendName)
PRECISIONS: tuple[str, ...] = get_args(Precision)


@runtime_checkable
class Engine(Protocol):
    """A ready-to-run network."""

    name: str
    """What runs (registry name or file stem)."""
    backend: str
    """``torch``, ``onnxruntime`` or ``tensorrt``."""
    precision: str
    """``fp32`` or ``fp16``: the precision the network computes in."""
    device: str
    """``cpu`` or ``cuda:N``."""
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Run one batch: one array per input (``input_names`` order); returns float32 outputs."""
        ...

    def close(self) -> None:
        """Release the engine's resources; calling it twice is safe."""
        ...


def check_precision(backend: str, precision: str, supported: Sequence[str]) -> None:
    """Raise ValueError naming the supported precisions when ``precision`` is not one of them."""
    if precision not in supported:
        raise ValueError(
            f"precision {precision!r} is not supported by the {backend} backend; supported: {', '.join(supported)}"
        )


class EngineBase:
    """Shared plumbing: argument checks and context-manager support."""

    name: str
    backend: str
    precision: str
    device: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def _check_inputs(self, inputs: Sequence[np.ndarray]) -> None:
        if len(inputs) != len(self.input_names):
            raise ValueError(
                f"{self.name}: expected {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}"
            )

    def close(self) -> None:  # pragma: no cover - overridden where there is something to free
        """Release resources (nothing by default)."""

    def __enter__(self) -> EngineBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.backend}/{self.precision} on {self.device}>"
