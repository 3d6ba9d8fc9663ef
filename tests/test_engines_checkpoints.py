"""The safe checkpoint loader: layouts, prefixes, strictness, checksums, and refusing code."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest
import torch

import engines
from engines.exceptions import ArchitectureError, CheckpointError, ChecksumError

TINY_ARCH = "simple_unet_02.UNet(num_classes=3,feature_scale=16)"


@pytest.fixture()
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return engines.build(TINY_ARCH).state_dict()


def test_plain_and_prefixed_state_dicts(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    torch.save(tiny_state, tmp_path / "plain.pth")
    torch.save({f"module.{k}": v for k, v in tiny_state.items()}, tmp_path / "dp.pth")
    for name in ("plain.pth", "dp.pth"):
        model = engines.load_checkpoint(tmp_path / name, arch=TINY_ARCH)
        assert torch.equal(model.final.weight, tiny_state["final.weight"])
    by_name = engines.load_checkpoint(tmp_path / "plain.pth", network="fsgan_segmentation_v2.tiny")
    assert by_name.network_config.name == "fsgan_segmentation_v2.tiny"
    with pytest.raises(CheckpointError, match="needs arch= or network="):
        engines.load_checkpoint(tmp_path / "plain.pth")


def test_key_mismatch_is_reported(tmp_path: Path, tiny_state: dict[str, torch.Tensor], caplog) -> None:
    broken = dict(tiny_state)
    del broken["final.bias"]
    broken["extra.weight"] = torch.zeros(1)
    broken["final.weight"] = torch.zeros(5, 4, 1, 1)
    torch.save({"arch": TINY_ARCH, "state_dict": broken}, tmp_path / "broken.pth")
    with pytest.raises(
        CheckpointError, match=r"1 missing \(final.bias\); 1 unexpected \(extra.weight\); 1 shape"
    ):
        engines.load_checkpoint(tmp_path / "broken.pth")
    assert any("final.bias" in r.getMessage() for r in caplog.records)


def test_sha256_is_verified(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "ok.pth"
    torch.save({"arch": TINY_ARCH, "state_dict": tiny_state}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert engines.load_checkpoint(path, sha256=digest) is not None
    with pytest.raises(ChecksumError, match=digest):
        engines.load_checkpoint(path, sha256="0" * 64)


class _RunsCode:
    """Unpickling this calls os.system — what a malicious checkpoint does."""

    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_pickle_with_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"arch": TINY_ARCH, "state_dict": {}, "payload": _RunsCode()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="weights_only"):
        engines.load_checkpoint(path)
    assert not (tmp_path / "pwned-by-pickle").exists()


@pytest.mark.parametrize(
    "arch",
    [
        "__import__('os').system('touch pwned-by-arch')",
        "simple_unet_02.UNet(num_classes=__import__('os').system('touch pwned-by-arch'))",
        "os.system('touch pwned-by-arch')",
    ],
)
def test_checkpoint_arch_that_runs_code_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_state: dict[str, torch.Tensor], arch: str
) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"arch": arch, "state_dict": tiny_state}, tmp_path / "evil.pth")
    with pytest.raises(ArchitectureError):
        engines.load_checkpoint(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned-by-arch").exists()


def test_unknown_layout_and_missing_file(tmp_path: Path) -> None:
    torch.save({"weights": [1, 2]}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="unknown layout"):
        engines.load_checkpoint(tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        engines.load_checkpoint(tmp_path / "absent.pth")


def test_a_file_torch_did_not_write_is_named_as_such(tmp_path: Path) -> None:
    # An ONNX graph (a protobuf) saved under .pth: one short line, not unpickling's paragraph of advice.
    graph = tmp_path / "graph.pth"
    graph.write_bytes(b"\x08\x08\x12\x07pytorch" + bytes(64))
    with pytest.raises(CheckpointError, match=r"not a torch checkpoint \(torch.save writes a zip archive"):
        engines.load_checkpoint(graph)
