"""Calibration sets from real photographs and the FP16-vs-FP32 accuracy report."""

from __future__ import annotations

from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
import skimage.data
import torch

import engines
from calibration import build_calibration_set, compare_engines, fp16_accuracy_report, load_calibration_set
from engines.backends import create_engine

EXPORT = {"export_options": {"exporter": "torchscript"}}


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    import cv2

    hopper = cv2.cvtColor(
        cv2.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)), cv2.COLOR_BGR2RGB
    )
    return [skimage.data.astronaut(), hopper]


@pytest.mark.parametrize(
    "network", ["fsgan_blending_v2.tiny", "fsgan_reenactment_v2.tiny", "fsgan_segmentation_v2.tiny"]
)
def test_calibration_set_layout(tmp_path: Path, photos: list[np.ndarray], network: str) -> None:
    path = build_calibration_set(network, photos, tmp_path / "cal.npz")
    name, arrays = load_calibration_set(path)
    config = engines.get_network_config(network)
    assert name == network and list(arrays) == list(config.input_names)
    for array, shape in zip(arrays.values(), config.input_shapes(len(photos)), strict=True):
        assert array.shape == shape and array.dtype == np.float32
        assert array.min() >= -1.0 and array.max() <= 1.0
    finest = arrays[config.input_names[0]]
    assert finest[:, :3].std() > 0.1  # real image content, not constants
    if config.pyramid_levels == 2:
        pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(finest), 2).numpy()
        assert np.allclose(arrays[config.input_names[1]], pooled, atol=1e-6)


def test_fp16_report_on_real_crops(tmp_path: Path, photos: list[np.ndarray]) -> None:
    path = build_calibration_set("fsgan_blending_v2.tiny", photos, tmp_path / "gb.npz")
    torch.manual_seed(0)
    model = engines.create_network("fsgan_blending_v2.tiny")
    report = fp16_accuracy_report(path, model=model, backend="onnxruntime", device="cpu", **EXPORT)
    assert report.samples == 2 and report.candidate == "onnxruntime/fp16/cpu"
    (out,) = report.outputs
    assert 0 < out.mean_abs <= out.max_abs <= 2e-2
    assert out.psnr_db > 40

    # The metric separates a different network from a precision change.
    torch.manual_seed(1)
    other = engines.create_network("fsgan_blending_v2.tiny")
    _, arrays = load_calibration_set(path)
    with create_engine(model, "torch", device="cpu") as a, create_engine(other, "torch", device="cpu") as b:
        different = compare_engines(a, b, arrays)
        same = compare_engines(a, a, arrays)
    assert different.min_psnr_db < out.psnr_db - 20
    assert same.max_abs == 0 and same.min_psnr_db == float("inf")
