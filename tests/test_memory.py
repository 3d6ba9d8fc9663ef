"""The pipeline's memory figures: a step that keeps what it allocates shows as growth and as a peak; one
that does not shows neither."""

import sys

import numpy as np
import pytest

from stream.frames import Frame
from stream.memory import MemoryWatch, peak_rss_bytes, reset_peak_rss, rss_bytes
from stream.pipeline import run_pipeline
from stream.tracks import ProcessorTrack
from tests.trackutil import ListSource, numbered_frames

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")

KIB = 1024
MIB = 1024 * KIB


class CountingSink:
    """Counts frames and keeps none of them."""

    def __init__(self) -> None:
        self.frames = 0

    async def write(self, frame: Frame) -> None:
        self.frames += 1

    async def close(self) -> int:
        return self.frames

    async def abort(self) -> None:
        self.frames = 0


def allocating_step(kept: list[np.ndarray] | None, size: int):
    """A step that fills ``size`` bytes per frame (so the pages are resident) and keeps them in ``kept``
    (a leak) or drops them before the next frame."""

    def step(frame: Frame) -> Frame:
        block = np.ones(size, np.uint8)
        if kept is not None:
            kept.append(block)
        return frame

    return step


async def run(frames: int, kept: list[np.ndarray] | None, size: int = 256 * KIB) -> dict:
    reset_peak_rss()
    track = ProcessorTrack(ListSource(numbered_frames(frames)), allocating_step(kept, size), name="alloc")
    stats = await run_pipeline(track, CountingSink())
    assert stats.frames == frames
    return stats.as_dict()["memory"]


async def test_a_leaking_step_shows_as_growth_and_peak():
    kept: list[np.ndarray] = []
    memory = await run(1200, kept)
    leaked_mib = 1200 * 256 * KIB / MIB  # 300 MiB
    # 256 KiB per frame kept = 250 MiB per 1000 frames.
    assert memory["growth_mib_per_1000_frames"] == pytest.approx(250, rel=0.15)
    assert memory["rss_peak_mib"] - memory["rss_start_mib"] >= 0.9 * leaked_mib
    assert memory["rss_end_mib"] - memory["rss_start_mib"] >= 0.9 * leaked_mib
    assert memory["peak_exact"] is True
    kept.clear()


async def test_a_step_that_frees_what_it_allocates_shows_no_growth():
    memory = await run(1200, None)
    assert abs(memory["growth_mib_per_1000_frames"]) < 10
    assert memory["rss_peak_mib"] - memory["rss_start_mib"] < 50
    assert memory["rss_end_mib"] is not None and memory["rss_start_mib"] is not None


async def test_a_short_run_reports_no_growth_rather_than_its_warm_up():
    memory = await run(300, [])
    assert memory["growth_mib_per_1000_frames"] is None
    assert memory["rss_peak_mib"] >= memory["rss_start_mib"]


def test_peak_is_the_kernels_mark_for_an_allocation_between_samples():
    """A 200 MiB block allocated and freed between two samples: the samples miss it, the mark does not."""
    reset_peak_rss()
    watch = MemoryWatch(every=1000)
    start = rss_bytes()
    block = np.ones(200 * MIB, np.uint8)
    del block
    watch.frame()
    memory = watch.result()
    assert memory["peak_exact"] is True
    assert memory["rss_peak_mib"] - start / MIB >= 190
    assert peak_rss_bytes() >= start + 190 * MIB


def test_without_a_raised_mark_the_peak_is_the_largest_sample_and_says_so():
    """After a larger earlier phase the mark tells nothing about this run: the peak is a sampled bound."""
    block = np.ones(200 * MIB, np.uint8)
    del block  # the process's mark is now at least 200 MiB above where it is
    watch = MemoryWatch(every=1)
    for _ in range(5):
        watch.frame()
    memory = watch.result()
    assert memory["peak_exact"] is False
    assert memory["rss_peak_mib"] < peak_rss_bytes() / MIB - 150


def test_every_must_be_positive():
    with pytest.raises(ValueError, match="every must be >= 1"):
        MemoryWatch(every=0)
