"""The network registry: names, patterns, frozen configs."""

from __future__ import annotations

import dataclasses

import pytest

import engines
from engines.exceptions import UnknownNetworkError
from engines.registry import network_for_weight_file


def test_list_networks_patterns() -> None:
    released = engines.list_networks("fsgan*", include_test=False)
    assert released == [
        "fsgan_blending_v2",
        "fsgan_inpainting_v2",
        "fsgan_reenactment_v1",
        "fsgan_reenactment_v2",
        "fsgan_segmentation_v2",
    ]
    assert engines.list_networks("*.tiny") == [f"{n}.tiny" for n in released]
    assert engines.list_networks("nothing*") == []


def test_configs_are_frozen_and_complete() -> None:
    config = engines.get_network_config("fsgan_reenactment_v2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.input_size = 128  # type: ignore[misc]
    assert (config.input_size, config.crop_scale, config.value_range, config.pyramid_levels) == (256, 1.2, (-1.0, 1.0), 2)
    assert config.input_shapes(4) == ((4, 101, 256, 256), (4, 101, 128, 128))
    assert set(config.dynamic_axes) == {"level0", "level1", "output"}
    assert config.weight_file == "nfv_msrunet_256_1_2_reenactment_v2.1.pth"
    assert config.sha256 is None and "CC0" in config.license and config.source.startswith("https://")
    seg = engines.get_network_config("fsgan_segmentation_v2")
    assert seg.pyramid_levels == 1 and seg.input_names == ("input",)
    v1 = engines.get_network_config("fsgan_reenactment_v1")
    assert v1.output_names == ("image", "segmentation")
    tiny = engines.get_network_config("fsgan_reenactment_v1.tiny")
    assert tiny.test_only and tiny.weight_file is None and tiny.input_size == 64 and tiny.tag == "tiny"


def test_unknown_network_names_the_known_ones() -> None:
    with pytest.raises(UnknownNetworkError, match="fsgan_blending_v2") as info:
        engines.get_network_config("fsgan_blend")
    assert isinstance(info.value, ValueError)


def test_weight_file_lookup() -> None:
    config = network_for_weight_file("ijbc_msrunet_256_1_2_blending_v2.pth")
    assert config is not None and config.name == "fsgan_blending_v2"
    assert network_for_weight_file("other.pth") is None


def test_create_network_attaches_config_and_is_eval() -> None:
    model = engines.create_network("fsgan_segmentation_v2.tiny")
    assert not model.training
    assert model.network_config.name == "fsgan_segmentation_v2.tiny"
