"""`facestream swap --models fsgan:DIR` end to end on tiny random FSGAN networks (official checkpoint
format, released file names), through the real CLI, on the torch and onnxruntime backends."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stream.demo import sample_faces
from tests.mediautil import psnr, read_frames, write_face_clip
from tests.test_swap_cli import facestream


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from stream.stages.learned import write_tiny_models

    d = tmp_path_factory.mktemp("learned")
    write_tiny_models(d / "models", "all")
    clip = write_face_clip(d / "clip.mp4", width=320, height=180, frames=8, empty_head=2, empty_tail=1)
    return {"models": d / "models", "clip": clip, "source": sample_faces()[1]}


@pytest.mark.parametrize(("backend", "extra"), [
    ("torch", []),
    ("torch", ["--fsgan-version", "v1", "--steps", "3"]),
    ("torch", ["--overlap"]),  # the pipelined executor, on CPU with simulated streams
    pytest.param("onnxruntime", [], marks=pytest.mark.slow),
])
def test_learned_chain_through_the_cli(setup, tmp_path, backend, extra):
    out, report = tmp_path / "out.mp4", tmp_path / "report.json"
    r = facestream("swap", "--source", setup["source"], setup["clip"], "-o", out, "--models",
                   f"fsgan:{setup['models']}", "--backend", backend, "--report", report, "--no-progress", *extra)
    assert r.returncode == 0, r.stderr
    rep = json.loads(report.read_text())
    assert rep["mode"] == "fsgan" and rep["frames_modified"] >= 4
    assert rep["overlap"] == ("--overlap" in extra)  # on CPU the default is stage by stage
    frames_in, pts_in = read_frames(setup["clip"])
    frames_out, pts_out = read_frames(out)
    assert pts_out == pts_in
    # Frames without a face are untouched beyond encoding; frames with one were changed by the networks.
    assert psnr(frames_in[0], frames_out[0]) >= 38
    changed = [float(np.abs(a.astype(int) - b.astype(int)).mean()) for a, b in zip(frames_in, frames_out, strict=True)]
    assert max(changed[2:7]) > 3 * max(changed[0], 0.5)


@pytest.mark.parametrize("extra", [[], ["--models", "fsgan:{models}", "--fsgan-version", "v1"]])
def test_overlap_needs_the_learned_v2_chain(setup, tmp_path, extra):
    out = tmp_path / "out.mp4"
    args = [a.format(models=setup["models"]) for a in extra]
    r = facestream("swap", "--source", setup["source"], setup["clip"], "-o", out, "--overlap", "--no-progress", *args)
    assert r.returncode != 0 and len(r.stderr.splitlines()) == 1 and "--overlap" in r.stderr
    assert "v2" in r.stderr and not out.exists()


def test_missing_models_directory_is_one_line(setup, tmp_path):
    out = tmp_path / "out.mp4"
    r = facestream("swap", "--source", setup["source"], setup["clip"], "-o", out, "--models",
                   f"fsgan:{tmp_path / 'nowhere'}", "--no-progress")
    assert r.returncode != 0 and len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists()
