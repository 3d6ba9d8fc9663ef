"""``facestream models``: registry listing, weight discovery and sha256 status."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import engines
from stream.cli import main


def test_lists_released_networks_and_finds_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    blob = weights / engines.get_network_config("fsgan_blending_v2").weight_file
    blob.write_bytes(b"not really a checkpoint")
    assert main(["models", "--weights-dir", str(weights), "--json", "--verify"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(engines.list_networks(include_test=False))
    assert rows["fsgan_blending_v2"]["found"] == str(blob)
    assert rows["fsgan_blending_v2"]["sha256_status"] == "no reference hash"
    assert rows["fsgan_blending_v2"]["sha256"] == hashlib.sha256(blob.read_bytes()).hexdigest()
    assert rows["fsgan_reenactment_v2"]["sha256_status"] == "missing"
    assert rows["fsgan_reenactment_v2"]["params_m"] == 76.0


def test_table_with_tiny_variants(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "*.tiny", "--all"]) == 0
    out = capsys.readouterr().out
    assert "fsgan_segmentation_v2.tiny" in out and "fsgan_blending_v2 " not in out
