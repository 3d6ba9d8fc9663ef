"""ONNX export with a parity check on every export (ONNX Runtime vs torch).

Export concerns live here, not in the networks: a thin wrapper turns the pyramid input into
positional ONNX inputs, FP16 is applied to a copy of the model, and the written graph is run with
ONNX Runtime (CPU) against the fp32 torch model before the file is moved into place.

FP16 graphs (``fp16=True``) are FP16 end to end, as TensorRT's *strongly typed* networks need
(they take the ONNX types literally instead of choosing precisions themselves): weights, activations
and, by default, the inputs and outputs (``io_dtype="float16"``, no Cast node anywhere). With
``io_dtype="float32"`` the graph keeps fp32 inputs/outputs and has exactly one explicit ``Cast`` per
input and output at the boundary. The only fp32 tensors left inside are the ``scales`` of ``Resize``
nodes, which ONNX requires to be float32.

Exporters: ``"dynamo"`` (``torch.onnx.export(dynamo=True)``, the default in torch >= 2.9, needs
``onnxscript``) and ``"torchscript"`` (``dynamo=False``, still present in torch 2.13 but deprecated).
``"auto"`` picks dynamo when onnxscript is installed.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from engines.cache import file_sha256, temp_beside
from engines.exceptions import ExportError
from engines.networks.res_unet import MultiScaleResUNet
from engines.networks.simple_unet_02 import UNet
from engines.registry import NetworkConfig

__all__ = [
    "FP16_ATOL",
    "FP16_RTOL",
    "FP32_ATOL",
    "ExportReport",
    "IOSpec",
    "ParityResult",
    "export_onnx",
    "graph_summary",
    "io_spec",
]

logger = logging.getLogger(__name__)

FP32_ATOL = 1e-4
"""Max abs difference allowed between ONNX Runtime (fp32 graph) and torch fp32."""
FP16_ATOL = 2e-2
FP16_RTOL = 2e-2
"""FP16 graph vs torch fp32: ``max_abs <= FP16_ATOL + FP16_RTOL * max(|reference|)`` per output."""

DEFAULT_OPSET = 18
Exporter = Literal["auto", "dynamo", "torchscript"]


@dataclass(frozen=True)
class IOSpec:
    """Names and example shapes of a network's inputs and outputs."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    """Example NCHW shapes at batch 1."""
    value_range: tuple[float, float] = (-1.0, 1.0)


def io_spec(model: nn.Module, *, config: NetworkConfig | None = None, size: int | None = None) -> IOSpec:
    """I/O of ``model``: from ``config`` (or ``model.network_config``), else inferred from its class."""
    config = config or getattr(model, "network_config", None)
    if config is not None:
        return IOSpec(
            config.input_names, config.output_names, config.input_shapes(1, size), config.value_range
        )
    side = size or 256
    if isinstance(model, MultiScaleResUNet):
        levels = model.pyramid_levels
        heads = len(model.out_nc) if model.split_heads and not isinstance(model.out_nc, int) else 1
        return IOSpec(
            tuple(f"level{i}" for i in range(levels)),
            ("output",) if heads == 1 else tuple(f"output{i}" for i in range(heads)),
            tuple((1, model.in_nc, side >> i, side >> i) for i in range(levels)),
        )
    if isinstance(model, UNet):
        return IOSpec(("input",), ("logits",), ((1, model.in_channels, side, side),))
    raise ExportError(f"cannot infer the inputs of {type(model).__name__}; pass config= or input_shapes=")


class _PositionalInputs(nn.Module):
    """ONNX wants positional tensors; the networks take a pyramid list. Optionally casts at the edges."""

    def __init__(self, model: nn.Module, n_inputs: int, cast_io: torch.dtype | None) -> None:
        super().__init__()
        self.model = model
        self.n_inputs = n_inputs
        self.cast_io = cast_io

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.cast_io is not None:
            inputs = tuple(x.to(self.cast_io) for x in inputs)
        out = self.model(list(inputs)) if self.n_inputs > 1 else self.model(inputs[0])
        outputs = out if isinstance(out, tuple) else (out,)
        if self.cast_io is not None:
            outputs = tuple(y.float() for y in outputs)
        return outputs


@dataclass(frozen=True)
class ParityResult:
    """ONNX Runtime vs torch fp32 for one output at one batch size."""

    batch: int
    output: str
    max_abs: float
    mean_abs: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(self.max_abs <= self.tolerance)


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how it compares with torch."""

    path: Path
    exporter: str
    opset: int
    precision: Literal["fp32", "fp16"]
    io_dtype: str
    batch: int | Literal["dynamic"]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    sha256: str
    seconds: float
    parity: list[ParityResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.parity)

    @property
    def max_abs(self) -> float:
        return max((p.max_abs for p in self.parity), default=float("nan"))

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        data = asdict(self)
        data["path"] = str(self.path)
        data["passed"] = self.passed
        data["max_abs"] = self.max_abs
        return data


def _have_onnxscript() -> bool:
    return importlib.util.find_spec("onnxscript") is not None


def _random_inputs(spec: IOSpec, batch: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lo, hi = spec.value_range
    return [rng.uniform(lo, hi, size=(batch, *shape[1:])).astype(np.float32) for shape in spec.input_shapes]


def _torch_reference(model: nn.Module, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    tensors = [torch.from_numpy(x) for x in inputs]
    with torch.inference_mode():
        out = model(tensors) if len(tensors) > 1 else model(tensors[0])
    outputs = out if isinstance(out, tuple) else (out,)
    return [y.float().cpu().numpy() for y in outputs]


def _run_export(
    wrapper: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    *,
    exporter: str,
    opset: int,
    spec: IOSpec,
    dynamic: bool,
    max_batch: int,
) -> None:
    # The dynamo exporter logs a warning per torchvision operator it cannot register; FSGAN uses none.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        _export_quietly(wrapper, example, path, spec, exporter, dynamic, opset, max_batch)
    finally:
        registration.setLevel(level)


def _export_quietly(wrapper: nn.Module, example: tuple[torch.Tensor, ...], path: Path, spec: IOSpec, exporter: str,
                    dynamic: bool, opset: int, max_batch: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants
        warnings.simplefilter("ignore", FutureWarning)
        if exporter == "dynamo":
            dynamic_shapes = None
            if dynamic:
                batch_dim = torch.export.Dim("batch", min=1, max=max_batch)
                dynamic_shapes = (tuple({0: batch_dim} for _ in example),)
            torch.onnx.export(
                wrapper,
                example,
                str(path),
                dynamo=True,
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
        else:
            axes = {name: {0: "batch"} for name in spec.input_names + spec.output_names} if dynamic else None
            torch.onnx.export(
                wrapper,
                example,
                str(path),
                dynamo=False,
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
            )


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    fp16: bool = False,
    batch: int | Literal["dynamic"] = 1,
    opset: int = DEFAULT_OPSET,
    config: NetworkConfig | None = None,
    size: int | None = None,
    io_dtype: Literal["float16", "float32"] = "float16",
    exporter: Exporter = "auto",
    max_batch: int = 64,
    seed: int = 0,
) -> ExportReport:
    """Export ``model`` to ONNX at ``path`` and check it against torch with ONNX Runtime.

    Args:
        model: A network from this package (or any module given ``config``); not modified.
        path: Output ``.onnx`` file; written atomically, only after the parity check passes.
        fp16: Export an FP16 graph (see the module docstring).
        batch: A fixed batch size, or ``"dynamic"`` for a ``batch`` axis (checked at batch 1 and 3).
        opset: ONNX opset, 17 or newer (dynamo needs 18+; lower values are raised to 18 there).
        config: I/O names and shapes; defaults to ``model.network_config`` or the class's defaults.
        size: Side of the finest input (defaults to the config's ``input_size`` or 256).
        io_dtype: For FP16 graphs, the dtype of inputs and outputs (``float32`` adds boundary Casts).
        exporter: ``"dynamo"``, ``"torchscript"`` or ``"auto"``.
        max_batch: Upper bound of the dynamic batch axis (dynamo exporter).
        seed: Seed of the random parity inputs (uniform in the config's value range).

    Raises:
        ExportError: the exporter failed or an output differs beyond the tolerance.
        ValueError: invalid arguments.
    """
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    if batch != "dynamic" and (not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive int or 'dynamic', got {batch!r}")
    if io_dtype not in ("float16", "float32"):
        raise ValueError(f"io_dtype must be 'float16' or 'float32', got {io_dtype!r}")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"unknown exporter {exporter!r}; known: auto, dynamo, torchscript")
    if exporter == "auto":
        exporter = "dynamo" if _have_onnxscript() else "torchscript"
    if exporter == "dynamo" and not _have_onnxscript():
        raise ExportError("the dynamo exporter needs onnxscript (pip install onnxscript)")
    if exporter == "dynamo":
        opset = max(opset, 18)

    path = Path(path)
    spec = io_spec(model, config=config, size=size)
    dynamic = batch == "dynamic"
    example_batch = 2 if dynamic else int(batch)  # torch.export specialises a size-1 dimension
    reference = copy.deepcopy(model).float().cpu().eval()

    dtype = torch.float16 if fp16 else torch.float32
    net = copy.deepcopy(reference).to(dtype)
    cast_io = dtype if fp16 and io_dtype == "float32" else None
    wrapper = _PositionalInputs(net, len(spec.input_names), cast_io).eval()
    graph_io_dtype = torch.float32 if (not fp16 or cast_io is not None) else torch.float16
    example = tuple(torch.from_numpy(x).to(graph_io_dtype) for x in _random_inputs(spec, example_batch, seed))

    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path, ".onnx")
    try:
        try:
            _run_export(
                wrapper,
                example,
                tmp,
                exporter=exporter,
                opset=opset,
                spec=spec,
                dynamic=dynamic,
                max_batch=max_batch,
            )
        except Exception as exc:
            raise ExportError(f"{exporter} export of {type(model).__name__} failed: {exc}") from exc
        import onnx

        onnx.checker.check_model(str(tmp))
        parity = _check_parity(
            tmp, reference, spec, fp16=fp16, batches=(1, 3) if dynamic else (int(batch),), seed=seed
        )
        failed = [p for p in parity if not p.passed]
        if failed:
            worst = max(failed, key=lambda p: p.max_abs / p.tolerance)
            raise ExportError(
                f"ONNX Runtime differs from torch: output {worst.output!r} at batch {worst.batch}: "
                f"max abs {worst.max_abs:.3g} > tolerance {worst.tolerance:.3g}"
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

    report = ExportReport(
        path=path,
        exporter=exporter,
        opset=opset,
        precision="fp16" if fp16 else "fp32",
        io_dtype="float16" if graph_io_dtype == torch.float16 else "float32",
        batch=batch,
        input_names=spec.input_names,
        output_names=spec.output_names,
        input_shapes=tuple((example_batch if dynamic else int(batch), *s[1:]) for s in spec.input_shapes),
        sha256=file_sha256(path),
        seconds=time.perf_counter() - started,
        parity=parity,
    )
    logger.info(
        "exported %s (%s, %s, batch %s) max abs %.3g in %.1f s",
        path,
        exporter,
        report.precision,
        batch,
        report.max_abs,
        report.seconds,
    )
    return report


def _check_parity(
    path: Path, reference: nn.Module, spec: IOSpec, *, fp16: bool, batches: Sequence[int], seed: int
) -> list[ParityResult]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_types = {i.name: i.type for i in session.get_inputs()}
    results: list[ParityResult] = []
    for b in batches:
        inputs = _random_inputs(spec, b, seed + b)
        expected = _torch_reference(reference, inputs)
        feed = {
            name: x.astype(np.float16 if input_types[name] == "tensor(float16)" else np.float32)
            for name, x in zip(spec.input_names, inputs, strict=True)
        }
        got = session.run(list(spec.output_names), feed)
        for name, ref, out in zip(spec.output_names, expected, got, strict=True):
            if out.shape != ref.shape:
                raise ExportError(f"output {name!r} has shape {out.shape}, torch gives {ref.shape}")
            diff = np.abs(out.astype(np.float32) - ref)
            tol = FP16_ATOL + FP16_RTOL * float(np.abs(ref).max()) if fp16 else FP32_ATOL
            results.append(ParityResult(b, name, float(diff.max()), float(diff.mean()), tol))
    return results


_ELEM = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16", 7: "int64", 6: "int32", 9: "bool"}


def graph_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Op counts, I/O names/dtypes/shapes and the dtypes of float initializers/constants of an ONNX file."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph

    def describe(values: Sequence[Any]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
            out[v.name] = {"dtype": _ELEM.get(t.elem_type, str(t.elem_type)), "shape": dims}
        return out

    # Which float32 constants are a Resize's ``scales`` (the one place ONNX demands fp32).
    resize_scales = {node.input[2] for node in graph.node if node.op_type == "Resize" and len(node.input) > 2}
    float_consts: Counter[str] = Counter()
    fp32_not_scales: list[str] = []
    tensors = [(init.name, init) for init in graph.initializer]
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    tensors.append((node.output[0], attr.t))
    for name, tensor in tensors:
        dtype = _ELEM.get(tensor.data_type, str(tensor.data_type))
        if dtype in ("float32", "float16", "float64", "bfloat16"):
            float_consts[dtype] += 1
            if dtype == "float32" and name not in resize_scales and numpy_helper.to_array(tensor).size > 0:
                fp32_not_scales.append(name)
    return {
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
        "ops": dict(Counter(node.op_type for node in graph.node)),
        "inputs": describe(graph.input),
        "outputs": describe(graph.output),
        "float_constants": dict(float_consts),
        "fp32_constants_outside_resize_scales": fp32_not_scales,
    }
