"""ONNX export: parity with torch, FP16 graphs for strongly typed TensorRT, dynamic batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import engines
from engines.exceptions import ExportError
from engines.export import FP16_ATOL, FP16_RTOL, export_onnx, graph_summary
from engines.registry import NetworkConfig


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch(model: nn.Module, inputs: list[np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = model([torch.from_numpy(x) for x in inputs]) if len(inputs) > 1 else model(torch.from_numpy(inputs[0]))
    return [y.numpy() for y in (out if isinstance(out, tuple) else (out,))]


def test_fp32_two_heads_matches_torch(tmp_path: Path) -> None:
    model = engines.create_network("fsgan_reenactment_v1.tiny")
    report = export_onnx(model, tmp_path / "v1.onnx", exporter="torchscript", opset=17)
    assert report.passed and report.precision == "fp32" and report.opset == 17
    assert report.input_names == ("level0", "level1") and report.output_names == ("image", "segmentation")
    rng = np.random.default_rng(5)
    inputs = [rng.uniform(-1, 1, s).astype(np.float32) for s in ((1, 71, 64, 64), (1, 71, 32, 32))]
    got = _session(report.path).run(None, dict(zip(report.input_names, inputs, strict=True)))
    for ours, ref in zip(got, _torch(model, inputs), strict=True):
        assert np.abs(ours - ref).max() <= 1e-4


def test_fp16_dynamic_batch_graph_is_fp16_end_to_end(tmp_path: Path) -> None:
    model = engines.create_network("fsgan_blending_v2.tiny")
    report = export_onnx(model, tmp_path / "gb16.onnx", fp16=True, batch="dynamic", exporter="dynamo")
    assert report.passed and report.io_dtype == "float16" and report.exporter == "dynamo"
    assert {p.batch for p in report.parity} == {1, 3}
    summary = graph_summary(report.path)
    assert all(v["dtype"] == "float16" and v["shape"][0] == "batch" for v in summary["inputs"].values())
    assert summary["outputs"]["output"]["dtype"] == "float16"
    assert "Cast" not in summary["ops"]  # nothing converts precision inside the graph
    assert summary["fp32_constants_outside_resize_scales"] == []
    session = _session(report.path)
    for batch in (1, 4):
        rng = np.random.default_rng(batch)
        inputs = [rng.uniform(-1, 1, (batch, 7, s, s)).astype(np.float32) for s in (64, 32)]
        (out,) = session.run(None, {n: x.astype(np.float16) for n, x in zip(report.input_names, inputs, strict=True)})
        (ref,) = _torch(model, inputs)
        assert out.dtype == np.float16 and out.shape == (batch, 3, 64, 64)
        assert np.abs(out.astype(np.float32) - ref).max() <= FP16_ATOL + FP16_RTOL * np.abs(ref).max()


def test_fp16_with_fp32_io_casts_only_at_the_boundary(tmp_path: Path) -> None:
    model = engines.create_network("fsgan_segmentation_v2.tiny")
    report = export_onnx(model, tmp_path / "s16.onnx", fp16=True, io_dtype="float32", exporter="torchscript")
    assert report.passed and report.io_dtype == "float32"
    summary = graph_summary(report.path)
    assert summary["inputs"]["input"]["dtype"] == "float32" and summary["outputs"]["logits"]["dtype"] == "float32"
    assert summary["ops"]["Cast"] == 2  # one after the input, one before the output
    assert summary["float_constants"].get("float16", 0) > 0


class _BranchOnBatch(nn.Module):
    """Traces one branch only: the exported graph cannot follow torch at another batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * (2.0 if x.shape[0] == 2 else 3.0)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_parity_failure_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    config = NetworkConfig(
        name="branchy", arch="", task="test", pyramid_levels=1, input_names=("x",), output_names=("y",), input_size=8
    )
    target = tmp_path / "branchy.onnx"
    with pytest.raises(ExportError, match="differs from torch"):
        export_onnx(_BranchOnBatch().eval(), target, batch="dynamic", exporter="torchscript", config=config)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_invalid_arguments(tmp_path: Path) -> None:
    model = engines.create_network("fsgan_segmentation_v2.tiny")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "x.onnx", opset=16)
    with pytest.raises(ValueError, match="batch"):
        export_onnx(model, tmp_path / "x.onnx", batch=0)
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(model, tmp_path / "x.onnx", exporter="magic")  # type: ignore[arg-type]
