"""Engine benchmarks: latency, throughput, FLOPs and achieved TFLOP/s per network/backend/precision.

Numbers only — nothing here asserts on speed. ``facestream bench --engines`` prints
:func:`format_table` of :func:`benchmark_engines` and :func:`benchmark_chain` and can dump JSON.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device (shapes
only, no compute), as 2 x multiply-accumulates of convolutions and matmuls; normalisation,
activations, pooling and resizing are not counted (they are memory-bound and < 1 % here).
"""

from __future__ import annotations

import copy
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engines.exceptions import EnginesError
from engines.registry import NetworkConfig, create_network, get_network_config

__all__ = ["benchmark_chain", "benchmark_engines", "count_flops", "format_table", "network_flops"]

logger = logging.getLogger(__name__)

CHAIN_V2 = ("fsgan_reenactment_v2", "fsgan_segmentation_v2", "fsgan_inpainting_v2", "fsgan_blending_v2")
"""The v2 face-swap chain in execution order: Gr -> S -> Gc -> Gb."""


def count_flops(model: nn.Module, input_shapes: Sequence[tuple[int, ...]]) -> float:
    """FLOPs of one forward pass at ``input_shapes`` (counted on the meta device; nothing runs)."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta") if any(p.device.type != "meta" for p in model.parameters()) else model
    inputs = [torch.empty(shape, device="meta") for shape in input_shapes]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(inputs) if len(inputs) > 1 else meta(inputs[0])
    return float(counter.get_total_flops())


def network_flops(name: str, batch: int = 1, size: int | None = None) -> float:
    """FLOPs of a registered network at its input size (built on the meta device)."""
    config = get_network_config(name)
    with torch.device("meta"):
        model = create_network(name)
    return count_flops(model, config.input_shapes(batch, size))


def _load_model(name: str, weights_dir: str | os.PathLike[str] | None) -> nn.Module:
    config = get_network_config(name)
    if weights_dir is not None and config.weight_file:
        path = Path(weights_dir) / config.weight_file
        if path.is_file():
            from engines.checkpoints import load_checkpoint

            return load_checkpoint(path, network=config)
    return create_network(name)


def _random_inputs(config: NetworkConfig, batch: int, size: int | None, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lo, hi = config.value_range
    return [rng.uniform(lo, hi, shape).astype(np.float32) for shape in config.input_shapes(batch, size)]


def _time_calls(fn: Callable[[], Any], iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _stats(times: Sequence[float], batch: int, flops: float) -> dict[str, float]:
    ordered = sorted(times)
    mean = statistics.fmean(times)
    return {
        "latency_ms_mean": 1e3 * mean,
        "latency_ms_p50": 1e3 * ordered[len(ordered) // 2],
        "latency_ms_p90": 1e3 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "latency_ms_min": 1e3 * ordered[0],
        "throughput_per_s": batch / mean,
        "gflop_per_call": flops / 1e9,
        "tflops_achieved": flops / mean / 1e12,
    }


def benchmark_engines(
    networks: Sequence[str],
    backends: Sequence[str] = ("auto",),
    precisions: Sequence[str] = ("fp32",),
    batch: int = 1,
    iters: int = 20,
    *,
    warmup: int = 3,
    size: int | None = None,
    device: str | None = None,
    weights_dir: str | os.PathLike[str] | None = None,
    engine_options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Time every ``network x backend x precision`` combination.

    Args:
        networks: Registered names (``.tiny`` variants run anywhere quickly).
        backends, precisions: Combinations to try; one that cannot run here becomes a row with
            ``"skipped"`` set to the reason instead of timings.
        batch: Faces per call.
        iters, warmup: Timed and untimed calls.
        size: Input side (default: the network's ``input_size``).
        device: ``cpu``/``cuda[:N]`` or ``None`` (the backend decides).
        weights_dir: Directory with released weights; networks without a file there use random
            weights (same speed).
        engine_options: Extra keyword arguments for :func:`engines.create_engine`.

    Returns:
        One dict per combination: ``network, backend, precision, device, batch, size`` and the
        timing fields ``latency_ms_mean/p50/p90/min, throughput_per_s, gflop_per_call,
        tflops_achieved`` (or ``skipped``).
    """
    from engines.backends import create_engine

    rows: list[dict[str, Any]] = []
    for name in networks:
        config = get_network_config(name)
        side = size or config.input_size
        model = _load_model(name, weights_dir)
        flops = count_flops(model, config.input_shapes(batch, side))
        inputs = _random_inputs(config, batch, side)
        for backend in backends:
            for precision in precisions:
                row: dict[str, Any] = {
                    "network": name, "backend": backend, "precision": precision, "batch": batch, "size": side,
                }
                try:
                    engine = create_engine(
                        model, backend, precision, device, max_batch=max(batch, 2), **(engine_options or {})
                    )
                except (EnginesError, ValueError) as exc:
                    row["skipped"] = str(exc)
                    rows.append(row)
                    logger.info("skip %s %s %s: %s", name, backend, precision, exc)
                    continue
                try:
                    row.update(backend=engine.backend, device=engine.device)
                    row.update(_stats(_time_calls(lambda e=engine: e(*inputs), iters, warmup), batch, flops))
                finally:
                    engine.close()
                rows.append(row)
    return rows


def _pyramid(x: np.ndarray, levels: int) -> list[np.ndarray]:
    out = [x]
    for _ in range(levels - 1):
        y = out[-1]
        n, c, h, w = y.shape
        out.append(y.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5), dtype=np.float32))
    return out


def benchmark_chain(
    backend: str = "auto",
    precision: str = "fp32",
    batch: int = 1,
    iters: int = 10,
    *,
    warmup: int = 2,
    tiny: bool = False,
    size: int | None = None,
    device: str | None = None,
    weights_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Time the full v2 chain per face batch: Gr -> S -> Gc -> Gb at 256 (64 with ``tiny``).

    Data flows as in FSGAN's swap: Gr's face is segmented by S, masked and completed by Gc, and
    Gb blends the completed face into the target; pyramids are built between stages (2x2 average).
    The host-side glue (concatenation, pyramids) is inside the timing, as it is in a pipeline.

    Returns:
        ``{"backend", "precision", "batch", "size", "stages": {name: per-stage stats},
        "chain": stats of the whole chain}``; stats have the same fields as
        :func:`benchmark_engines` rows.
    """
    from engines.backends import create_engine

    names = tuple(f"{n}.tiny" if tiny else n for n in CHAIN_V2)
    configs = [get_network_config(n) for n in names]
    side = size or configs[0].input_size
    engines_ = []
    flops = []
    try:
        for name, config in zip(names, configs, strict=True):
            model = _load_model(name, weights_dir)
            flops.append(count_flops(model, config.input_shapes(batch, side)))
            engines_.append(create_engine(model, backend, precision, device, max_batch=max(batch, 2)))
        gr, seg, gc, gb = engines_
        rng = np.random.default_rng(0)
        source = rng.uniform(-1, 1, (batch, configs[0].in_channels, side, side)).astype(np.float32)
        target = rng.uniform(-1, 1, (batch, 3, side, side)).astype(np.float32)
        mask = (rng.uniform(0, 1, (batch, 1, side, side)) > 0.5).astype(np.float32)
        stage_times: dict[str, list[float]] = {n: [] for n in names}

        def timed(name: str, engine: Any, *xs: np.ndarray) -> list[np.ndarray]:
            start = time.perf_counter()
            out = engine(*xs)
            stage_times[name].append(time.perf_counter() - start)
            return out

        def chain() -> None:
            (face,) = timed(names[0], gr, *_pyramid(source, 2))
            (logits,) = timed(names[1], seg, face)
            face = np.where(logits.argmax(1)[:, None] == 1, face, -1.0).astype(np.float32)
            (completed,) = timed(names[2], gc, *_pyramid(np.concatenate([face, mask], 1), 2))
            timed(names[3], gb, *_pyramid(np.concatenate([completed, target, mask], 1), 2))

        total = _time_calls(chain, iters, warmup)
        stages = {
            name: _stats(times[warmup:], batch, f) for (name, times), f in zip(stage_times.items(), flops, strict=True)
        }
        return {
            "backend": engines_[0].backend,
            "precision": precision,
            "device": engines_[0].device,
            "batch": batch,
            "size": side,
            "stages": stages,
            "chain": _stats(total, batch, sum(flops)),
        }
    finally:
        for engine in engines_:
            engine.close()


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of :func:`benchmark_engines` rows."""
    header = f"{'network':28} {'backend':12} {'prec':5} {'dev':7} {'bs':>3} {'ms':>9} {'items/s':>9} {'GFLOP':>8} {'TFLOP/s':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['network']:28} {r['backend']:12} {r['precision']:5} skipped: {r['skipped']}")
            continue
        lines.append(
            f"{r['network']:28} {r['backend']:12} {r['precision']:5} {r['device']:7} {r['batch']:>3} "
            f"{r['latency_ms_mean']:9.2f} {r['throughput_per_s']:9.1f} {r['gflop_per_call']:8.2f} "
            f"{r['tflops_achieved']:8.3f}"
        )
    return "\n".join(lines)
