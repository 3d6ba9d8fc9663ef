"""Eager PyTorch engine.

On CPU it runs fp32 as is. On CUDA it runs the network in FP16 (or fp32) with ``channels_last``
memory format (what cuDNN's tensor-core convolutions want), optionally ``torch.compile``-d, and can
replay CUDA graphs: one graph per distinct input shape, captured on first use, which removes the
per-layer launch overhead that dominates at batch 1. :meth:`TorchEngine.run_tensors` keeps data on
the device for callers that manage their own streams (:mod:`engines.executor`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from engines.backends.base import EngineBase, check_precision

__all__ = ["TorchEngine"]

logger = logging.getLogger(__name__)

_GRAPH_WARMUP = 3


class _CapturedGraph:
    """A CUDA graph of one forward pass with its static input/output tensors."""

    def __init__(self, forward: nn.Module, example: Sequence[torch.Tensor], call: object) -> None:
        self.static_inputs = [x.clone() for x in example]
        side = torch.cuda.Stream(device=example[0].device)
        side.wait_stream(torch.cuda.current_stream())
        # Warm up on a side stream so that lazy initialisation (cuDNN autotuning, allocator) is not captured.
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(_GRAPH_WARMUP):
                call(self.static_inputs)  # type: ignore[operator]
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.static_outputs: tuple[torch.Tensor, ...] = call(self.static_inputs)  # type: ignore[operator]

    def __call__(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        for static, x in zip(self.static_inputs, inputs, strict=True):
            static.copy_(x, non_blocking=True)
        self.graph.replay()
        return self.static_outputs


class TorchEngine(EngineBase):
    """Run an ``nn.Module`` eagerly.

    Args:
        model: The network (not modified: a copy is moved/cast when needed).
        precision: ``fp32``; ``fp16`` on CUDA only.
        device: ``cpu`` or ``cuda[:N]``.
        channels_last: NHWC memory format (default: on CUDA).
        compile: Wrap the forward in ``torch.compile`` (CUDA; first calls are slow while it compiles).
        cuda_graphs: Capture and replay a CUDA graph per input shape (CUDA only).
        input_names: Names of the inputs (default: ``model.network_config`` or ``input0..``).
        output_names: Names of the outputs.
        name: Display name.
    """

    backend = "torch"

    def __init__(
        self,
        model: nn.Module,
        *,
        precision: str = "fp32",
        device: str | torch.device = "cpu",
        channels_last: bool | None = None,
        compile: bool = False,
        cuda_graphs: bool = False,
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        dev = torch.device(device)
        on_cuda = dev.type == "cuda"
        check_precision("torch", precision, ("fp32", "fp16") if on_cuda else ("fp32",))
        if on_cuda and not torch.cuda.is_available():
            from engines.exceptions import BackendUnavailableError

            raise BackendUnavailableError(f"device {str(dev)!r} requested but torch has no CUDA here")
        if (compile or cuda_graphs) and not on_cuda:
            raise ValueError("compile and cuda_graphs need a CUDA device")
        config = getattr(model, "network_config", None)
        self.name = name or (config.name if config else type(model).__name__)
        self.precision = precision
        self.device = str(dev) if dev.index is not None or not on_cuda else "cuda:0"
        self.input_names = tuple(input_names or (config.input_names if config else ("input0",)))
        self.output_names = tuple(output_names or (config.output_names if config else ("output0",)))
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        self._channels_last = on_cuda if channels_last is None else channels_last
        self._device = torch.device(self.device)

        # CPU fp32 runs the caller's module as is; anything that moves or casts works on a copy.
        net = _copy_module(model) if on_cuda else model
        net = net.to(device=self._device, dtype=self._dtype).eval()
        if self._channels_last:
            net = net.to(memory_format=torch.channels_last)
        self._model: nn.Module = net
        self._forward: nn.Module = torch.compile(net, mode="max-autotune-no-cudagraphs") if compile else net  # type: ignore[assignment]
        self._graphs: dict[tuple[tuple[int, ...], ...], _CapturedGraph] | None = {} if cuda_graphs else None

    def _call_model(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        out = self._forward(list(inputs)) if len(inputs) > 1 else self._forward(inputs[0])
        return out if isinstance(out, tuple) else (out,)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=self._device, dtype=self._dtype, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self._channels_last and x.dim() == 4 else x

    def run_tensors(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run on tensors already on (or movable to) the engine's device; outputs stay on the device.

        With CUDA graphs the returned tensors are the graph's static outputs: copy them before the
        next call.
        """
        self._check_inputs(inputs)
        prepared = [self._prepare(x) for x in inputs]
        with torch.inference_mode():
            if self._graphs is None:
                return self._call_model(prepared)
            key = tuple(tuple(x.shape) for x in prepared)
            graph = self._graphs.get(key)
            if graph is None:
                logger.info("%s: capturing a CUDA graph for input shapes %s", self.name, key)
                graph = self._graphs[key] = _CapturedGraph(self._forward, prepared, self._call_model)
            return graph(prepared)

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        self._check_inputs(inputs)
        tensors = [torch.from_numpy(np.ascontiguousarray(x)) for x in inputs]
        outputs = self.run_tensors(*tensors)
        return [y.float().cpu().numpy() for y in outputs]

    def close(self) -> None:
        """Drop the graphs and the model; frees CUDA memory held by them."""
        self._graphs = {} if self._graphs is not None else None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()


def _copy_module(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)
