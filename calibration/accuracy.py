"""FP16 (or any candidate) vs FP32 accuracy of an engine over a calibration set."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from calibration.dataset import load_calibration_set
from engines.backends import Engine, create_engine
from engines.registry import create_network

__all__ = ["AccuracyReport", "OutputAccuracy", "compare_engines", "fp16_accuracy_report"]


@dataclass(frozen=True)
class OutputAccuracy:
    """Candidate vs reference for one output over the whole set."""

    output: str
    max_abs: float
    mean_abs: float
    psnr_db: float
    """PSNR with the reference's dynamic range (max - min over the set) as the peak; inf if identical."""


@dataclass(frozen=True)
class AccuracyReport:
    """Per-output accuracy of ``candidate`` against ``reference``."""

    network: str
    reference: str
    candidate: str
    samples: int
    outputs: tuple[OutputAccuracy, ...]

    @property
    def max_abs(self) -> float:
        return max(o.max_abs for o in self.outputs)

    @property
    def min_psnr_db(self) -> float:
        return min(o.psnr_db for o in self.outputs)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "max_abs": self.max_abs, "min_psnr_db": self.min_psnr_db}


def _describe(engine: Engine) -> str:
    return f"{engine.backend}/{engine.precision}/{engine.device}"


def compare_engines(
    reference: Engine,
    candidate: Engine,
    calibration: str | os.PathLike[str] | Mapping[str, np.ndarray],
    *,
    batch: int = 4,
    network: str = "",
) -> AccuracyReport:
    """Run both engines over a calibration set (file or ``{input name: array}``) in batches of ``batch``."""
    if isinstance(calibration, Mapping):
        arrays = dict(calibration)
    else:
        network, arrays = load_calibration_set(calibration)
    inputs = [arrays[name] for name in reference.input_names]
    count = inputs[0].shape[0]
    refs: list[list[np.ndarray]] = []
    cands: list[list[np.ndarray]] = []
    for start in range(0, count, batch):
        chunk = [x[start : start + batch] for x in inputs]
        refs.append(reference(*chunk))
        cands.append(candidate(*chunk))
    results = []
    for k, name in enumerate(reference.output_names):
        ref = np.concatenate([r[k] for r in refs]).astype(np.float64)
        cand = np.concatenate([c[k] for c in cands]).astype(np.float64)
        diff = np.abs(cand - ref)
        mse = float(np.mean(diff**2))
        peak = float(ref.max() - ref.min()) or 1.0
        psnr = math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)
        results.append(OutputAccuracy(name, float(diff.max()), float(diff.mean()), psnr))
    return AccuracyReport(network, _describe(reference), _describe(candidate), count, tuple(results))


def fp16_accuracy_report(
    calibration: str | os.PathLike[str],
    *,
    model: Any = None,
    backend: str = "onnxruntime",
    device: str | None = None,
    batch: int = 4,
    **engine_options: Any,
) -> AccuracyReport:
    """FP16 vs FP32 of the calibration set's network on ``backend``.

    ``model`` is the module to compare (e.g. from :func:`engines.load_checkpoint`); by default the
    registered network with fresh weights, which measures the graph's numerics, not the weights'.
    """
    network, arrays = load_calibration_set(calibration)
    model = model if model is not None else create_network(network)
    max_batch = max(batch, 2)
    fp32 = create_engine(model, backend, "fp32", device, max_batch=max_batch, **engine_options)
    fp16 = create_engine(model, backend, "fp16", device, max_batch=max_batch, **engine_options)
    try:
        return compare_engines(fp32, fp16, arrays, batch=batch, network=network)
    finally:
        fp32.close()
        fp16.close()
