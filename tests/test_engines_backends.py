"""Backends and the engine factory; TensorRT pieces that need no GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import engines
from engines.backends import AUTO_ORDER, Engine, available_backends, create_engine, resolve_backend
from engines.backends.tensorrt_backend import ShapeProfile, TensorRTEngine, cache_key, profile_from_onnx
from engines.exceptions import BackendUnavailableError
from engines.export import export_onnx

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def blending() -> torch.nn.Module:
    torch.manual_seed(0)
    return engines.create_network("fsgan_blending_v2.tiny")


@pytest.fixture(scope="module")
def pyramid() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, (2, 7, s, s)).astype(np.float32) for s in (64, 32)]


def _reference(model: torch.nn.Module, inputs: list[np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model([torch.from_numpy(x) for x in inputs]).numpy()


def test_unknown_backend_and_precision_are_named() -> None:
    with pytest.raises(
        ValueError, match=r"unknown backend 'trt'; known backends: auto, torch, onnxruntime, tensorrt"
    ):
        create_engine("fsgan_blending_v2.tiny", backend="trt")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        create_engine("fsgan_blending_v2.tiny", precision="fp8")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_backend("torch", "tpu")


def test_auto_takes_the_first_available() -> None:
    available = available_backends()
    assert ("torch", "cpu") in available and ("onnxruntime", "cpu") in available
    assert available == [pair for pair in AUTO_ORDER if pair in available]  # priority order kept
    backend, device = resolve_backend("auto")
    assert (backend, device.partition(":")[0]) == available[0]
    assert resolve_backend("auto", "cpu") == ("onnxruntime", "cpu")
    assert resolve_backend("torch") == (
        ("torch", "cuda:0") if torch.cuda.is_available() else ("torch", "cpu")
    )


def test_torch_engine(blending: torch.nn.Module, pyramid: list[np.ndarray]) -> None:
    engine = create_engine(blending, backend="torch", device="cpu")
    assert isinstance(engine, Engine)
    assert (engine.backend, engine.precision, engine.device) == ("torch", "fp32", "cpu")
    assert engine.input_names == ("level0", "level1") and engine.output_names == ("output",)
    (out,) = engine(*pyramid)
    assert out.dtype == np.float32
    assert np.abs(out - _reference(blending, pyramid)).max() <= 1e-6
    with pytest.raises(ValueError, match="expected 2 inputs"):
        engine(pyramid[0])
    with pytest.raises(ValueError, match=r"'fp16' is not supported by the torch backend; supported: fp32"):
        create_engine(blending, backend="torch", precision="fp16", device="cpu")
    engine.close()
    engine.close()


def test_onnxruntime_engine_from_module_and_file(
    tmp_path: Path, blending: torch.nn.Module, pyramid: list[np.ndarray]
) -> None:
    engine = create_engine(
        blending,
        backend="onnxruntime",
        device="cpu",
        work_dir=tmp_path,
        export_options={"exporter": "torchscript"},
    )
    assert (engine.backend, engine.precision, engine.name) == (
        "onnxruntime",
        "fp32",
        "fsgan_blending_v2.tiny",
    )
    (out,) = engine(*pyramid)
    assert np.abs(out - _reference(blending, pyramid)).max() <= 1e-4
    report = export_onnx(blending, tmp_path / "gb16.onnx", fp16=True, batch=2, exporter="torchscript")
    with create_engine(report.path, backend="onnxruntime") as fp16:
        assert fp16.precision == "fp16"
        (half,) = fp16(*pyramid)  # float32 in: cast to the graph's float16 inputs
        assert half.dtype == np.float32
        assert np.abs(half - out).max() <= 2e-2
    with pytest.raises(BackendUnavailableError if not _ort_cuda() else ValueError):
        create_engine(report.path, backend="onnxruntime", device="cuda" if not _ort_cuda() else "gpu")


def _ort_cuda() -> bool:
    from engines.backends.onnxruntime_backend import cuda_provider_available

    return cuda_provider_available()


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_tensorrt_absent_raises_clearly(blending: torch.nn.Module) -> None:
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed") as info:
        create_engine(blending, backend="tensorrt")
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(BackendUnavailableError):
        TensorRTEngine(b"plan")
    assert ("tensorrt", "cuda") not in available_backends()


def test_profile_shapes_from_onnx(tmp_path: Path) -> None:
    model = engines.create_network("fsgan_segmentation_v2.tiny")
    dynamic = export_onnx(model, tmp_path / "dyn.onnx", batch="dynamic", exporter="torchscript")
    profile = profile_from_onnx(dynamic.path, min_batch=1, opt_batch=2, max_batch=6)
    assert profile.shapes == (("input", (1, 3, 64, 64), (2, 3, 64, 64), (6, 3, 64, 64)),)
    assert profile.max_batch == 6
    assert profile.key() == "input:1x3x64x64/2x3x64x64/6x3x64x64"
    fixed = export_onnx(model, tmp_path / "fixed.onnx", batch=3, exporter="torchscript")
    fixed_shape = (3, 3, 64, 64)
    assert profile_from_onnx(fixed.path, max_batch=8).shapes == (
        ("input", fixed_shape, fixed_shape, fixed_shape),
    )
    with pytest.raises(ValueError, match="min_batch <= opt_batch"):
        profile_from_onnx(dynamic.path, opt_batch=9, max_batch=8)

    key = cache_key(
        dynamic.path, profile, precision="fp16", tensorrt_version="10.13.0", compute_capability=(9, 0)
    )
    other = cache_key(
        dynamic.path,
        profile_from_onnx(dynamic.path, max_batch=4),
        precision="fp16",
        tensorrt_version="10.13.0",
        compute_capability=(9, 0),
    )
    assert key.onnx_sha256 == dynamic.sha256 and key.digest() != other.digest()


def test_shape_profile_key_is_canonical() -> None:
    a = ShapeProfile((("x", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)),))
    b = ShapeProfile((("x", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)),))
    assert a.key() == b.key() and a == b


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_torch_cuda_fp16_channels_last_and_graphs(
    blending: torch.nn.Module, pyramid: list[np.ndarray]
) -> None:
    reference = _reference(blending, pyramid)
    for graphs in (False, True):
        with create_engine(blending, "torch", "fp16", "cuda", cuda_graphs=graphs) as engine:
            for _ in range(2):  # the second call replays the captured graph
                (out,) = engine(*pyramid)
                assert np.abs(out - reference).max() <= 2e-2


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TENSORRT or not torch.cuda.is_available(), reason="needs TensorRT and a CUDA GPU")
def test_tensorrt_matches_onnxruntime(
    tmp_path: Path, blending: torch.nn.Module, pyramid: list[np.ndarray]
) -> None:
    from engines.cache import EngineCache

    report = export_onnx(blending, tmp_path / "gb16.onnx", fp16=True, batch="dynamic", max_batch=8)
    cache = EngineCache(tmp_path / "cache")
    with create_engine(report.path, "onnxruntime") as ort_engine:
        (expected,) = ort_engine(*pyramid)
    with create_engine(report.path, "tensorrt", "fp16", "cuda", max_batch=4, cache=cache) as trt_engine:
        (out,) = trt_engine(*pyramid)
        (single,) = trt_engine(*(x[:1] for x in pyramid))
    assert np.abs(out - expected).max() <= 2e-2
    assert np.abs(single - out[:1]).max() <= 2e-2
    assert len(list(cache.root.glob("*.plan"))) == 1
