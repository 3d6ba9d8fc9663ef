"""Benchmark helpers: FLOP counting checked against an independent count, rows well formed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import engines
from engines.bench import (
    CHAIN_V2,
    benchmark_chain,
    benchmark_engines,
    count_flops,
    format_table,
    network_flops,
)


def _conv_flops_by_hooks(model: nn.Module, inputs: list[torch.Tensor]) -> float:
    """2 x MACs of every Conv2d, from output shapes seen by forward hooks (a second method)."""
    total = 0.0

    def hook(module: nn.Conv2d, args: tuple, output: torch.Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += 2.0 * output.numel() * (module.in_channels // module.groups) * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(inputs) if len(inputs) > 1 else model(inputs[0])
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("name", ["fsgan_reenactment_v1.tiny", "fsgan_segmentation_v2.tiny"])
def test_flop_count_matches_conv_arithmetic(name: str) -> None:
    config = engines.get_network_config(name)
    model = engines.create_network(name)
    shapes = config.input_shapes(2)
    counted = count_flops(model, shapes)
    by_hooks = _conv_flops_by_hooks(model, [torch.zeros(s) for s in shapes])
    # These networks compute with convolutions only, so both counts must agree exactly.
    assert counted == pytest.approx(by_hooks, rel=1e-9)
    assert network_flops(name, batch=2) == pytest.approx(counted, rel=1e-9)


def test_benchmark_rows() -> None:
    rows = benchmark_engines(
        ["fsgan_segmentation_v2.tiny"],
        ["torch", "tensorrt"],
        ["fp32"],
        batch=2,
        iters=2,
        warmup=1,
        device="cpu",
    )
    assert len(rows) == 2
    ran, skipped = rows
    assert ran["backend"] == "torch" and ran["batch"] == 2 and ran["size"] == 64
    assert ran["latency_ms_min"] <= ran["latency_ms_mean"] and ran["throughput_per_s"] > 0
    assert ran["gflop_per_call"] == pytest.approx(network_flops("fsgan_segmentation_v2.tiny", 2) / 1e9)
    assert "skipped" in skipped
    table = format_table(rows)
    assert "fsgan_segmentation_v2.tiny" in table and "skipped" in table


def test_chain_benchmark_tiny() -> None:
    result = benchmark_chain("torch", "fp32", batch=1, iters=1, warmup=0, tiny=True, device="cpu")
    assert list(result["stages"]) == [f"{n}.tiny" for n in CHAIN_V2]
    assert result["chain"]["gflop_per_call"] == pytest.approx(
        sum(network_flops(f"{n}.tiny") for n in CHAIN_V2) / 1e9
    )
