"""ONNX Runtime engine: CPU execution provider, or CUDA when ``onnxruntime-gpu`` provides it.

The precision is the graph's own (an FP16 graph from :func:`engines.export.export_onnx` runs in
FP16); inputs are cast to the graph's input dtype and outputs returned as float32.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from engines.backends.base import EngineBase
from engines.exceptions import BackendUnavailableError

__all__ = ["OnnxRuntimeEngine", "cuda_provider_available", "graph_precision"]

logger = logging.getLogger(__name__)

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def cuda_provider_available() -> bool:
    """Whether this ONNX Runtime build has the CUDA execution provider."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def graph_precision(path: str | os.PathLike[str]) -> str:
    """``fp16`` when most float initializers of the graph are float16, else ``fp32``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    kinds = [init.data_type for init in model.graph.initializer]
    fp16 = sum(1 for k in kinds if k == onnx.TensorProto.FLOAT16)
    fp32 = sum(1 for k in kinds if k == onnx.TensorProto.FLOAT)
    return "fp16" if fp16 > fp32 else "fp32"


class OnnxRuntimeEngine(EngineBase):
    """Run an ONNX file with ONNX Runtime.

    Args:
        path: The ``.onnx`` file.
        device: ``cpu`` or ``cuda[:N]`` (needs the CUDA execution provider).
        threads: Intra-op threads on CPU (``None``: ONNX Runtime's default).
        name: Display name (default: the file stem).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: str = "cpu",
        threads: int | None = None,
        name: str | None = None,
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        kind, _, index = device.partition(":")
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        if kind == "cuda":
            if not cuda_provider_available():
                raise BackendUnavailableError(
                    "ONNX Runtime has no CUDAExecutionProvider here (install onnxruntime-gpu); "
                    f"providers: {', '.join(ort.get_available_providers())}"
                )
            providers: list = [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self._session = ort.InferenceSession(str(path), options, providers=providers)
        self.name = name or path.stem
        self.device = "cpu" if kind == "cpu" else f"cuda:{int(index or 0)}"
        self.precision = graph_precision(path)
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())
        self._input_types = tuple(_NP_TYPES.get(i.type, np.float32) for i in self._session.get_inputs())
        self.path = path

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        self._check_inputs(inputs)
        feed = {
            name: np.ascontiguousarray(x, dtype=dtype)
            for name, x, dtype in zip(self.input_names, inputs, self._input_types, strict=True)
        }
        outputs = self._session.run(list(self.output_names), feed)
        return [np.asarray(y, dtype=np.float32) for y in outputs]

    def close(self) -> None:
        """Drop the session."""
        self._session = None  # type: ignore[assignment]
