"""Our FSGAN networks against the official model code's outputs and the released networks' layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import engines
from engines.networks.res_unet import MultiScaleResUNet, make_pyramid

NETWORKS = ("reenactment_v2", "inpainting_v2", "blending_v2", "reenactment_v1", "segmentation_v2")


@pytest.mark.parametrize("net", NETWORKS)
def test_fixture_checkpoint_reproduces_official_outputs(fsgan_fixtures: Path, net: str) -> None:
    model = engines.load_checkpoint(fsgan_fixtures / f"{net}_small.pth")
    assert not model.training
    io = torch.load(fsgan_fixtures / f"{net}_small_io.pt", weights_only=True)
    inputs = io["inputs"]
    with torch.no_grad():
        out = model(inputs) if len(inputs) > 1 else model(inputs[0])
    outputs = out if isinstance(out, tuple) else (out,)
    assert len(outputs) == len(io["outputs"])
    for got, expected in zip(outputs, io["outputs"], strict=True):
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("net", NETWORKS)
def test_manifest_architecture_has_exact_keys_and_shapes(fsgan_fixtures: Path, net: str) -> None:
    manifest = json.loads((fsgan_fixtures / "fsgan_manifest.json").read_text())[net]
    with torch.device("meta"):  # the full-size networks have 29-92M parameters: shapes only
        model = engines.build(manifest["arch"])
    state = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert list(state) == list(manifest["state_dict"])  # same keys, same order
    assert state == manifest["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest["params"]


@pytest.mark.parametrize("net", NETWORKS)
def test_registry_config_arch_matches_manifest(fsgan_fixtures: Path, net: str) -> None:
    manifest = json.loads((fsgan_fixtures / "fsgan_manifest.json").read_text())[net]
    config = engines.get_network_config(f"fsgan_{net}")
    assert config.arch == manifest["arch"]
    tiny = engines.get_network_config(f"fsgan_{net}.tiny")
    fixture_arch = torch.load(fsgan_fixtures / f"{net}_small.pth", weights_only=True)["arch"]
    assert tiny.arch == fixture_arch


def test_one_level_pyramid_runs_global_generator_at_that_size() -> None:
    model = engines.create_network("fsgan_blending_v2.tiny")
    x = torch.rand(1, 7, 32, 32) * 2 - 1
    with torch.no_grad():
        coarse = model(x)
        full = model(make_pyramid(torch.rand(1, 7, 64, 64)))
    assert coarse.shape == (1, 3, 32, 32)
    assert full.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="pyramid"):
        model([x, x, x])


def test_base_only_state_dict_loads_into_global_generator(tmp_path: Path) -> None:
    model = engines.create_network("fsgan_inpainting_v2.tiny")
    assert isinstance(model, MultiScaleResUNet)
    base_state = {k: v + 0.5 if v.is_floating_point() else v for k, v in model.base.state_dict().items()}
    torch.save({"arch": model.network_config.arch, "state_dict": base_state}, tmp_path / "base.pth")
    loaded = engines.load_checkpoint(tmp_path / "base.pth")
    key = "in_conv.1.weight"
    assert torch.equal(loaded.base.state_dict()[key], base_state[key])
