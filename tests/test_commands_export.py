"""``facestream export``: registered networks and checkpoints to checked ONNX files."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from stream.cli import main


def test_export_tiny_network_fp16(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s16.onnx"
    argv = [
        "export",
        "fsgan_segmentation_v2.tiny",
        "-o",
        str(out),
        "--fp16",
        "--exporter",
        "torchscript",
        "--json",
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["precision"] == "fp16" and report["batch"] == "dynamic"
    graph = onnx.load(str(out)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_export_checkpoint_fixture(
    fsgan_fixtures: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gb.onnx"
    argv = ["export", str(fsgan_fixtures / "blending_v2_small.pth"), "-o", str(out), "--batch", "1"]
    assert main([*argv, "--exporter", "torchscript"]) == 0
    assert out.is_file() and "parity max abs" in capsys.readouterr().out


def test_errors_are_one_line_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "fsgan_blending_v2", "--weights-dir", str(tmp_path)]) == 1
    assert "--random-weights" in capsys.readouterr().err
    assert main(["export", "fsgan_nope"]) == 1
    assert "known networks" in capsys.readouterr().err
    assert main(["export", "fsgan_segmentation_v2.tiny", "--batch", "many"]) == 1
    assert "--batch must be an integer" in capsys.readouterr().err


def test_output_may_not_replace_the_checkpoint(
    fsgan_fixtures: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "gb.pth"
    ckpt.write_bytes((fsgan_fixtures / "blending_v2_small.pth").read_bytes())
    before = ckpt.read_bytes()
    # `-o gb.pth` had written the ONNX graph over the weights.
    assert main(["export", str(ckpt), "-o", str(ckpt)]) == 1
    assert "ending in .onnx" in capsys.readouterr().err
    link = tmp_path / "gb.onnx"
    link.symlink_to(ckpt)
    assert main(["export", str(ckpt), "-o", str(link)]) == 1
    assert "is the checkpoint being exported" in capsys.readouterr().err
    assert main(["export", str(ckpt), "-o", str(tmp_path / "no" / "gb.onnx")]) == 1
    assert "directory does not exist" in capsys.readouterr().err
    assert ckpt.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["gb.onnx", "gb.pth"]
