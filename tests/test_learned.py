"""The learned chain from a directory of official-format checkpoints, end to end on a real face."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _learned_faces import meshes, source, tracked

from stream.exceptions import InputError, InputNotFoundError
from stream.frames import Frame
from stream.stages.base import SourceBank
from stream.stages.fsgan import FsganReenactorV1, FsganReenactorV2
from stream.stages.learned import ROLES, find_models, geometry, learned_chain, write_tiny_models

V2_FILES = {"nfv_msrunet_256_1_2_reenactment_v2.1.pth", "celeba_unet_256_1_2_segmentation_v2.pth",
            "ijbc_msrunet_256_1_2_inpainting_v2.pth", "ijbc_msrunet_256_1_2_blending_v2.pth"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fsgan-models")
    write_tiny_models(root, "all")
    return root


def test_tiny_models_are_official_checkpoints(models: Path) -> None:
    names = {p.name for p in models.iterdir()}
    assert names == V2_FILES | {"ijbc_msrunet_256_1_2_reenactment_stepwise_v1.pth"}
    ckpt = torch.load(models / "ijbc_msrunet_256_1_2_blending_v2.pth", weights_only=True)
    assert set(ckpt) == {"arch", "state_dict", "resolution", "epoch"}
    assert ckpt["arch"].startswith("res_unet.MultiScaleResUNet(in_nc=7")


def test_find_models_by_released_or_registry_names(models: Path, tmp_path: Path) -> None:
    found = find_models(models, "v2")
    assert {p.name for p in found.values()} == V2_FILES
    assert found["reenact_v2"].name == "nfv_msrunet_256_1_2_reenactment_v2.1.pth"
    # Registry names work too.
    for role in ("reenact_v2", "segment", "complete", "blend"):
        shutil.copy(found[role], tmp_path / f"{ROLES[role].network}.pth")
    assert find_models(tmp_path, "v2")["segment"].name == "fsgan_segmentation_v2.pth"
    (tmp_path / "fsgan_blending_v2.pth").unlink()
    with pytest.raises(InputNotFoundError, match=r"ijbc_msrunet_256_1_2_blending_v2\.pth"):
        find_models(tmp_path, "v2")
    with pytest.raises(InputNotFoundError, match="does not exist"):
        find_models(tmp_path / "nowhere")
    with pytest.raises(InputError, match="v1, v2"):
        find_models(models, "v3")


def test_geometry_from_the_released_name() -> None:
    assert geometry(Path("ijbc_msrunet_256_2_0_reenactment_v1.pth"), "fsgan_reenactment_v1") == (256, 2.0)
    assert geometry(Path("nfv_msrunet_256_1_2_reenactment_v2.1.pth"), "fsgan_reenactment_v2") == (256, 1.2)
    assert geometry(Path("fsgan_blending_v2.pth"), "fsgan_blending_v2") == (256, 1.2)


def _swap(chain) -> tuple[np.ndarray, Frame]:
    image, _ = meshes()["astronaut"]
    chain.set_source(SourceBank([source("hopper", 0, 0), source("hopper", 15, 0), source("hopper", 0, 15)]))
    frame = Frame(0, image.copy(), faces=[tracked("astronaut", 4, 4, 2)])
    chain(frame)
    chain.close()
    return image, frame


@pytest.mark.parametrize("backend", ["torch", pytest.param("onnxruntime", marks=pytest.mark.slow)])
def test_v2_chain_swaps_a_real_face(models: Path, backend: str) -> None:
    """onnxruntime exports all four networks to ONNX with a parity check first (~40 s on 2 cores)."""
    chain = learned_chain(models, backend=backend)
    assert isinstance(chain.stages[0], FsganReenactorV2)
    assert [s.kind for s in chain.stages] == ["reenact", "segment", "complete", "blend"]
    assert {s.engine.backend for s in chain.stages} == {backend}
    image, frame = _swap(chain)
    assert frame.modified and frame.image.shape == image.shape and frame.image.dtype == np.uint8
    changed = np.any(frame.image != image, axis=2)
    x0, y0, x1, y1 = frame.faces[0].bbox
    assert changed.sum() > 0.5 * (x1 - x0) * (y1 - y0)  # the face region was replaced
    assert not changed[: int(y0) - 40].any()  # far from the face nothing moved


def test_v1_chain_swaps_a_real_face(models: Path) -> None:
    chain = learned_chain(models, backend="torch", version="v1", steps=2)
    assert isinstance(chain.stages[0], FsganReenactorV1) and chain.stages[0].steps == 2
    assert chain.stages[1].segment_reenacted is False  # v1's Gr segments its own output
    image, frame = _swap(chain)
    assert frame.modified and np.any(frame.image != image)


def test_official_fixture_checkpoints_run_in_the_chain(fsgan_fixtures: Path, tmp_path: Path) -> None:
    """Checkpoints written by the official FSGAN code (small widths) load and run under released names."""
    fixtures = {"reenact_v2": "reenactment_v2_small.pth", "segment": "segmentation_v2_small.pth",
                "complete": "inpainting_v2_small.pth", "blend": "blending_v2_small.pth"}
    for role, fixture in fixtures.items():
        shutil.copy(fsgan_fixtures / fixture, tmp_path / ROLES[role].files[0])
    _, frame = _swap(learned_chain(tmp_path, backend="torch"))
    assert frame.modified and np.isfinite(frame.image).all()


def test_chain_options_are_checked(models: Path) -> None:
    with pytest.raises(InputError, match="max_faces"):
        learned_chain(models, max_faces=0)
