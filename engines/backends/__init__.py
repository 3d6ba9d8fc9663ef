"""Inference backends and the one factory that picks and builds them.

    engine = create_engine(model, backend="auto", precision="fp16")
    outputs = engine(level0, level1)     # NumPy in, list of float32 NumPy out

``auto`` takes the first available of: TensorRT (CUDA) > torch on CUDA > ONNX Runtime with CUDA >
ONNX Runtime on CPU > torch on CPU. Heavy or optional dependencies (TensorRT, cuda-python,
ONNX Runtime's CUDA provider) are imported only when a backend needs them.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from engines.backends.base import BACKENDS, PRECISIONS, Engine, EngineBase, check_precision

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "PRECISIONS",
    "Engine",
    "EngineBase",
    "available_backends",
    "create_engine",
    "resolve_backend",
]

logger = logging.getLogger(__name__)

AUTO_ORDER: tuple[tuple[str, str], ...] = (
    ("tensorrt", "cuda"),
    ("torch", "cuda"),
    ("onnxruntime", "cuda"),
    ("onnxruntime", "cpu"),
    ("torch", "cpu"),
)
"""``(backend, device kind)`` in the order ``auto`` tries them."""


def _available(backend: str, kind: str) -> bool:
    if backend == "tensorrt":
        from engines.backends.tensorrt_backend import tensorrt_available

        return kind == "cuda" and tensorrt_available()
    if backend == "torch":
        import torch

        return kind == "cpu" or torch.cuda.is_available()
    try:
        from engines.backends.onnxruntime_backend import cuda_provider_available
    except ImportError:
        return False
    return kind == "cpu" or cuda_provider_available()


def available_backends() -> list[tuple[str, str]]:
    """The ``(backend, device kind)`` pairs usable here, in ``auto`` order."""
    return [(backend, kind) for backend, kind in AUTO_ORDER if _available(backend, kind)]


def resolve_backend(backend: str = "auto", device: str | None = None) -> tuple[str, str]:
    """Turn ``auto`` and/or a missing device into a concrete ``(backend, device)``.

    Raises:
        ValueError: unknown backend (the message lists the known ones) or device.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    kind = None if device is None else device.partition(":")[0]
    if kind not in (None, "cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda[:N]'")
    if backend != "auto" and device is not None:
        return backend, device  # explicit: an unavailable backend raises its own precise error
    for candidate, candidate_kind in AUTO_ORDER:
        if backend in ("auto", candidate) and kind in (None, candidate_kind) and _available(candidate, candidate_kind):
            return candidate, device or ("cuda:0" if candidate_kind == "cuda" else "cpu")
    if backend == "auto":
        return "torch", device or "cpu"
    return backend, "cuda:0" if backend == "tensorrt" else "cpu"


def _resolve_source(source: Any) -> nn.Module | Path:
    if isinstance(source, nn.Module):
        return source
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.suffix in (".onnx", ".pth", ".pt", ".plan", ".engine"):
            if not path.is_file():
                raise FileNotFoundError(f"model file {str(path)!r} does not exist")
            if path.suffix in (".pth", ".pt"):
                from engines.checkpoints import load_checkpoint

                return load_checkpoint(path)
            return path
        from engines.registry import create_network

        logger.warning("%s: building the registered network with random weights", source)
        return create_network(str(source))
    raise TypeError(f"source must be an nn.Module, a model file or a network name, got {type(source).__name__}")


def create_engine(
    source: nn.Module | str | os.PathLike[str],
    backend: str = "auto",
    precision: str = "fp32",
    device: str | None = None,
    *,
    max_batch: int = 8,
    work_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Engine:
    """Build an engine for ``source``.

    Args:
        source: An ``nn.Module``, a checkpoint (``.pth``), an ONNX file, a TensorRT plan
            (``.plan``/``.engine``), or a registered network name (random weights).
        backend: ``auto``, ``torch``, ``onnxruntime`` or ``tensorrt``.
        precision: ``fp32`` or ``fp16`` (``int8`` is not implemented by any backend yet).
        device: ``cpu`` or ``cuda[:N]``; ``None`` lets the backend choice decide.
        max_batch: Largest batch the engine must accept (ONNX export/TensorRT profile).
        work_dir: Where modules are exported to ONNX for onnxruntime/tensorrt (default: a
            temporary directory that lives as long as the engine).
        options: Passed to the backend's engine class (e.g. ``cuda_graphs=True`` for torch,
            ``threads=2`` for onnxruntime, ``cache=EngineCache(...)`` for tensorrt).

    Raises:
        ValueError: unknown backend, device or precision (messages list the valid ones).
        BackendUnavailableError: the named backend cannot run here.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    backend, device = resolve_backend(backend, device)
    if backend == "tensorrt":
        from engines.backends.tensorrt_backend import import_tensorrt

        import_tensorrt()  # fail fast, before loading or exporting anything
    resolved = _resolve_source(source)
    config = getattr(resolved, "network_config", None)
    if config is not None:
        options.setdefault("name", config.name)
    logger.info("engine: %s on %s at %s", backend, device, precision)

    if backend == "torch":
        from engines.backends.torch_backend import TorchEngine

        if not isinstance(resolved, nn.Module):
            raise ValueError(f"the torch backend needs a module or checkpoint, got {resolved}")
        return TorchEngine(resolved, precision=precision, device=device, **options)

    if backend == "onnxruntime":
        from engines.backends.onnxruntime_backend import OnnxRuntimeEngine

        check_precision("onnxruntime", precision, ("fp32", "fp16"))
        onnx_path, keepalive = _as_onnx(resolved, precision, max_batch, work_dir)
        engine = OnnxRuntimeEngine(onnx_path, device=device, **options)
        engine._keepalive = keepalive  # type: ignore[attr-defined]
        return engine

    from engines.backends.tensorrt_backend import TensorRTEngine, load_or_build_engine

    check_precision("tensorrt", precision, ("fp16", "fp32"))
    index = int(device.partition(":")[2] or 0)
    if isinstance(resolved, Path) and resolved.suffix in (".plan", ".engine"):
        options.setdefault("name", resolved.stem)
        return TensorRTEngine(resolved.read_bytes(), device=index, precision=precision, **options)
    onnx_path, keepalive = _as_onnx(resolved, precision, max_batch, work_dir)
    engine = load_or_build_engine(onnx_path, max_batch=max_batch, precision=precision, device=index, **options)
    engine._keepalive = keepalive  # type: ignore[attr-defined]
    return engine


def _as_onnx(
    resolved: nn.Module | Path, precision: str, max_batch: int, work_dir: str | os.PathLike[str] | None
) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    """An ONNX file for ``resolved``: itself if it is one, else an export (dynamic batch)."""
    if isinstance(resolved, Path):
        if resolved.suffix != ".onnx":
            raise ValueError(f"expected an ONNX file or a module, got {resolved}")
        return resolved, None
    from engines.export import export_onnx

    keepalive = None
    if work_dir is None:
        keepalive = tempfile.TemporaryDirectory(prefix="facestream-onnx-")
        work_dir = keepalive.name
    config = getattr(resolved, "network_config", None)
    stem = config.name if config is not None else type(resolved).__name__
    path = Path(work_dir) / f"{stem}-{precision}.onnx"
    export_onnx(resolved, path, fp16=precision == "fp16", batch="dynamic", max_batch=max(max_batch, 2))
    return path, keepalive
