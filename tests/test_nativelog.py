"""Native log noise (written straight to fd 2 by C++ libraries) is kept off the CLI's terminal; other
lines, errors among them, pass unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import os, sys
from stream.nativelog import filtered_native_stderr
with filtered_native_stderr():
    for line in (b"I0000 00:00:1795290183.046255    5820 gl_context.cc:369] GL version: 3.2\n",
                 b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n",
                 b"Svt[info]: SVT [version]:\tSVT-AV1 Encoder Lib v2.3.0\n",
                 b"Svt[warn]: Failed to set thread priority: Invalid argument\n",
                 b"Svt[error]: Instance 1: Source Width must be even for YUV_420 colorspace\n",
                 b"x264 [error]: malloc of size 123 failed\n"):
        os.write(2, line)  # as native code does, below Python's sys.stderr
    print("facestream: error: the one line", file=sys.stderr)
"""


def test_noise_is_dropped_and_everything_else_passes() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stderr.splitlines()) == sorted([
        "Svt[error]: Instance 1: Source Width must be even for YUV_420 colorspace",
        "x264 [error]: malloc of size 123 failed",
        "facestream: error: the one line",
    ])


def test_until_exit_keeps_filtering_what_threads_print_after_the_block() -> None:
    # A run stopped early returns while native threads are still starting; their lines come later.
    script = r"""
import os, sys
from stream.nativelog import filtered_native_stderr
with filtered_native_stderr(until_exit=True):
    print("facestream: interrupted", file=sys.stderr)
os.write(2, b"W0000 00:00:1795290183.046255    5820 inference_feedback_manager.cc:114] Feedback manager\n")
os.write(2, b"a real problem\n")
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["facestream: interrupted", "a real problem"]
