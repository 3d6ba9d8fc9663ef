"""TensorRT engine (TensorRT 10/11 Python API), built from an FP16 ONNX graph.

Build: a *strongly typed* network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``) parsed from
the ONNX file with ``trt.OnnxParser`` — TensorRT keeps the graph's own types, so an FP16 graph from
:func:`engines.export.export_onnx` (``fp16=True``) runs in FP16 without precision flags — one
optimisation profile covering batch ``1..max_batch``, a persistent timing cache, and
``build_serialized_network``. Plans are cached by :class:`engines.cache.EngineCache`.

Run: ``set_input_shape`` + ``set_tensor_address`` for every I/O tensor and ``execute_async_v3`` on
a CUDA stream. Device and pinned host buffers come from cuda-python (``cuda.bindings.runtime``)
and grow to the largest shape seen.

TensorRT and cuda-python are imported lazily: importing this module never needs them, and
everything that needs them raises :class:`~engines.exceptions.BackendUnavailableError` here. Shape
profiles and cache keys are plain Python and usable (and tested) without a GPU.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.backends.base import EngineBase
from engines.cache import EngineCache, EngineCacheKey, atomic_write_bytes, file_sha256
from engines.exceptions import BackendUnavailableError, EnginesError

__all__ = [
    "ShapeProfile",
    "TensorRTEngine",
    "build_serialized_engine",
    "cache_key",
    "import_cudart",
    "import_tensorrt",
    "load_or_build_engine",
    "profile_from_onnx",
    "tensorrt_available",
]

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`BackendUnavailableError` saying how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(
            "TensorRT is not installed: install facestream[tensorrt] on a CUDA machine or use "
            "docker/Dockerfile.gpu; other backends: torch, onnxruntime"
        ) from exc
    return tensorrt


def import_cudart() -> Any:
    """cuda-python's runtime bindings (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # type: ignore[no-redef]
        except ImportError as exc:
            raise BackendUnavailableError("cuda-python is not installed (pip install cuda-python)") from exc
    return runtime


def tensorrt_available() -> bool:
    """TensorRT and cuda-python import and a CUDA device is visible."""
    try:
        import_tensorrt()
        cudart = import_cudart()
    except BackendUnavailableError:
        return False
    err, count = cudart.cudaGetDeviceCount()
    return _ok(cudart, err) and count > 0


def _ok(cudart: Any, err: Any) -> bool:
    return err == cudart.cudaError_t.cudaSuccess


def _check(cudart: Any, result: Any, what: str) -> Any:
    """cuda-python returns ``(err, *values)``; raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if not _ok(cudart, err):
        raise EnginesError(f"CUDA {what} failed: {err}")
    return values[0] if len(values) == 1 else tuple(values) if values else None


@dataclass(frozen=True)
class ShapeProfile:
    """One TensorRT optimisation profile: ``(name, min, opt, max)`` shapes per input."""

    shapes: tuple[tuple[str, Shape, Shape, Shape], ...]

    def key(self) -> str:
        """Canonical text, part of the engine cache key."""

        def dims(shape: Shape) -> str:
            return "x".join(map(str, shape))

        return ";".join(f"{n}:{dims(lo)}/{dims(opt)}/{dims(hi)}" for n, lo, opt, hi in self.shapes)

    @property
    def max_batch(self) -> int:
        return max(hi[0] for _, _, _, hi in self.shapes)


def _onnx_inputs(path: Path) -> list[tuple[str, list[int | str]]]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    out = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_param or (d.dim_value if d.dim_value > 0 else "?") for d in value.type.tensor_type.shape.dim]
        out.append((value.name, dims))
    return out


def profile_from_onnx(
    path: str | os.PathLike[str], *, min_batch: int = 1, opt_batch: int = 1, max_batch: int = 8
) -> ShapeProfile:
    """An optimisation profile for an ONNX file whose only dynamic axis is the batch (axis 0).

    A graph exported with a fixed batch gets ``min = opt = max`` at that batch.

    Raises:
        ValueError: batch bounds out of order, or a dynamic axis other than the batch.
    """
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    shapes = []
    for name, dims in _onnx_inputs(Path(path)):
        rest = dims[1:]
        if any(not isinstance(d, int) for d in rest):
            raise ValueError(f"input {name!r} has dynamic axes beyond the batch: {dims}")
        tail = tuple(int(d) for d in rest)
        if isinstance(dims[0], int):
            fixed = (dims[0], *tail)
            shapes.append((name, fixed, fixed, fixed))
        else:
            shapes.append((name, (min_batch, *tail), (opt_batch, *tail), (max_batch, *tail)))
    return ShapeProfile(tuple(shapes))


def cache_key(
    onnx_path: str | os.PathLike[str],
    profile: ShapeProfile,
    *,
    precision: str,
    tensorrt_version: str | None = None,
    compute_capability: tuple[int, int] | None = None,
    device: int = 0,
) -> EngineCacheKey:
    """The cache key of an engine; the TensorRT version and compute capability are queried when omitted."""
    if tensorrt_version is None:
        tensorrt_version = str(import_tensorrt().__version__)
    if compute_capability is None:
        cudart = import_cudart()
        props = _check(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        compute_capability = (int(props.major), int(props.minor))
    return EngineCacheKey(
        onnx_sha256=file_sha256(onnx_path),
        tensorrt_version=tensorrt_version,
        compute_capability=compute_capability,
        precision=precision,
        profile=profile.key(),
    )


def build_serialized_engine(
    onnx_path: str | os.PathLike[str],
    profile: ShapeProfile,
    *,
    timing_cache: str | os.PathLike[str] | None = None,
    workspace_bytes: int = 4 << 30,
    optimization_level: int = 3,
) -> bytes:
    """Parse ``onnx_path`` into a strongly typed network and build a serialized engine (plan).

    Raises:
        BackendUnavailableError: TensorRT is not installed.
        EnginesError: the parser or the builder failed (parser errors are in the message).
    """
    trt = import_tensorrt()
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EnginesError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.builder_optimization_level = optimization_level
    # No FP16/BF16 builder flags: a strongly typed network takes every precision from the graph.
    trt_profile = builder.create_optimization_profile()
    for name, lo, opt, hi in profile.shapes:
        trt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(trt_profile)

    cache_path = Path(timing_cache) if timing_cache is not None else None
    cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    logger.info("building TensorRT engine from %s (profile %s)", onnx_path, profile.key())
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EnginesError(f"TensorRT failed to build an engine from {onnx_path}")
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


class _Buffer:
    """A device allocation and a pinned host staging area of the same size, grown on demand."""

    def __init__(self, cudart: Any) -> None:
        self._cudart = cudart
        self.nbytes = 0
        self.device = 0
        self.host = 0

    def ensure(self, nbytes: int) -> None:
        if nbytes <= self.nbytes:
            return
        self.free()
        self.device = int(_check(self._cudart, self._cudart.cudaMalloc(nbytes), "cudaMalloc"))
        self.host = int(_check(self._cudart, self._cudart.cudaMallocHost(nbytes), "cudaMallocHost"))
        self.nbytes = nbytes

    def host_array(self, shape: Shape, dtype: np.dtype) -> np.ndarray:
        count = int(np.prod(shape)) * dtype.itemsize
        raw = (ctypes.c_byte * count).from_address(self.host)
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def free(self) -> None:
        if self.device:
            self._cudart.cudaFree(self.device)
        if self.host:
            self._cudart.cudaFreeHost(self.host)
        self.device = self.host = self.nbytes = 0


class TensorRTEngine(EngineBase):
    """Run a serialized TensorRT engine.

    Args:
        plan: Serialized engine bytes (``build_serialized_engine`` or the cache).
        device: CUDA device index.
        name: Display name.
        precision: What the plan computes in (for reports; the plan itself decides).
    """

    backend = "tensorrt"

    def __init__(self, plan: bytes, *, device: int = 0, name: str = "engine", precision: str = "fp16") -> None:
        trt = import_tensorrt()
        cudart = import_cudart()
        self._trt, self._cudart = trt, cudart
        _check(cudart, cudart.cudaSetDevice(device), "cudaSetDevice")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EnginesError(f"{name}: TensorRT could not deserialize the plan (built by another version?)")
        self._context = self._engine.create_execution_context()
        self._stream = _check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.name = name
        self.precision = precision
        self.device = f"cuda:{device}"
        self.input_names = tuple(n for n in names if is_input[n])
        self.output_names = tuple(n for n in names if not is_input[n])
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._buffers = {n: _Buffer(cudart) for n in names}
        self._closed = False

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        self._check_inputs(inputs)
        cudart, stream = self._cudart, self._stream
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, x in zip(self.input_names, inputs, strict=True):
            x = np.ascontiguousarray(x, dtype=self._dtypes[name])
            buf = self._buffers[name]
            buf.ensure(x.nbytes)
            buf.host_array(x.shape, x.dtype)[...] = x  # pinned staging makes the copy truly async
            if not self._context.set_input_shape(name, x.shape):
                raise ValueError(f"{self.name}: input {name!r} shape {x.shape} is outside the engine's profile")
            _check(cudart, cudart.cudaMemcpyAsync(buf.device, buf.host, x.nbytes, h2d, stream), "cudaMemcpyAsync")
            self._context.set_tensor_address(name, buf.device)
        shapes = {}
        for name in self.output_names:
            shape = tuple(self._context.get_tensor_shape(name))
            shapes[name] = shape
            buf = self._buffers[name]
            buf.ensure(int(np.prod(shape)) * self._dtypes[name].itemsize)
            self._context.set_tensor_address(name, buf.device)
        if not self._context.execute_async_v3(int(stream)):
            raise EnginesError(f"{self.name}: execute_async_v3 failed")
        for name in self.output_names:
            buf = self._buffers[name]
            nbytes = int(np.prod(shapes[name])) * self._dtypes[name].itemsize
            _check(cudart, cudart.cudaMemcpyAsync(buf.host, buf.device, nbytes, d2h, stream), "cudaMemcpyAsync")
        _check(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return [
            self._buffers[n].host_array(shapes[n], self._dtypes[n]).astype(np.float32) for n in self.output_names
        ]

    def close(self) -> None:
        """Free buffers, the stream, the context and the engine; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for buf in self._buffers.values():
            buf.free()
        self._cudart.cudaStreamDestroy(self._stream)
        self._context = None
        self._engine = None


def load_or_build_engine(
    onnx_path: str | os.PathLike[str],
    *,
    cache: EngineCache | None = None,
    max_batch: int = 8,
    opt_batch: int = 1,
    precision: str = "fp16",
    device: int = 0,
    name: str | None = None,
) -> TensorRTEngine:
    """A :class:`TensorRTEngine` for ``onnx_path``, from the cache or freshly built (and cached).

    A cached plan that TensorRT refuses to deserialize is dropped and rebuilt once.
    """
    import_tensorrt()
    cache = cache or EngineCache()
    profile = profile_from_onnx(onnx_path, opt_batch=min(opt_batch, max_batch), max_batch=max_batch)
    key = cache_key(onnx_path, profile, precision=precision, device=device)
    timing = cache.root / f"timing-{key.tensorrt_version}-sm{key.compute_capability[0]}{key.compute_capability[1]}.cache"

    def build() -> bytes:
        return build_serialized_engine(onnx_path, profile, timing_cache=timing)

    label = name or Path(onnx_path).stem
    plan = cache.get_or_build(key, build)
    try:
        return TensorRTEngine(plan, device=device, name=label, precision=precision)
    except EnginesError:
        logger.warning("%s: cached plan rejected by TensorRT; rebuilding", label)
        cache.invalidate(key)
        plan = cache.get_or_build(key, build)
        return TensorRTEngine(plan, device=device, name=label, precision=precision)
