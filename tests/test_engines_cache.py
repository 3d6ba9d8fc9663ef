"""Engine cache: keys, atomic entries, corrupt and mismatched entries rebuilt."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from engines.cache import EngineCache, EngineCacheKey, atomic_write_bytes

KEY = EngineCacheKey(
    onnx_sha256="a" * 64,
    tensorrt_version="10.13.0",
    compute_capability=(9, 0),
    precision="fp16",
    profile="level0:1x7x256x256/1x7x256x256/8x7x256x256",
)


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_sha256": "b" * 64},
        {"tensorrt_version": "10.13.1"},
        {"compute_capability": (8, 9)},
        {"precision": "fp32"},
        {"profile": "level0:1x7x256x256/2x7x256x256/8x7x256x256"},
    ],
)
def test_every_component_changes_the_key(change: dict) -> None:
    other = dataclasses.replace(KEY, **change)
    assert other.digest() != KEY.digest()
    assert dataclasses.replace(KEY).digest() == KEY.digest()


def test_get_or_build_builds_once(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    builds: list[int] = []

    def build() -> bytes:
        builds.append(1)
        return b"plan-bytes"

    assert cache.get_or_build(KEY, build) == b"plan-bytes"
    assert cache.get_or_build(KEY, build) == b"plan-bytes"
    assert len(builds) == 1
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".plan"]  # no temporary leftovers


def test_corrupt_plan_is_rebuilt(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    cache.store(KEY, b"good plan")
    cache.plan_path(KEY).write_bytes(b"good plaN")  # flipped byte
    assert cache.load(KEY) is None
    assert not cache.plan_path(KEY).exists() and not cache.meta_path(KEY).exists()
    assert cache.get_or_build(KEY, lambda: b"rebuilt") == b"rebuilt"
    assert cache.load(KEY) == b"rebuilt"


def test_mismatched_or_unreadable_metadata_is_a_miss(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    cache.store(KEY, b"plan")
    meta = json.loads(cache.meta_path(KEY).read_text())
    meta["key"]["tensorrt_version"] = "9.0"
    cache.meta_path(KEY).write_text(json.dumps(meta))
    assert cache.load(KEY) is None
    cache.store(KEY, b"plan")
    cache.meta_path(KEY).write_text("{not json")
    assert cache.load(KEY) is None
    assert cache.load(dataclasses.replace(KEY, precision="fp32")) is None  # never stored


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]
