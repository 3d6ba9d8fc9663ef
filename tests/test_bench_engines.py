"""``facestream bench --engines``' pipelined-chain measurement, on CPU with the tiny networks (numbers
only: nothing here depends on how fast anything ran)."""

from __future__ import annotations

import json

import pytest

from stream.bench_engines import benchmark_overlap, format_overlap


def test_overlap_benchmark_measures_the_three_ways() -> None:
    result = benchmark_overlap(tiny=True, device="cpu", frames=1, sources=2, depth=2)
    assert result["executor"] == "CPUDevice" and result["precision"] == "fp32"
    rates = result["face_frames_per_s"]
    assert set(rates) == {"sync", "depth_1", "depth_2"} and all(r > 0 for r in rates.values())
    assert result["overlap_gain"] == pytest.approx(rates["depth_2"] / rates["depth_1"])
    json.dumps(result)
    lines = format_overlap(result)
    assert "stream-overlap gain (depth 2 vs 1)" in lines[-1] and "2 source(s)" in lines[0]
    assert format_overlap({"skipped": "no torch"}) == ["pipelined v2 chain: skipped: no torch"]
    with pytest.raises(ValueError, match="sources"):
        benchmark_overlap(tiny=True, device="cpu", sources=4)
