"""Per-track reuse across frames: the TrackMemo store, and the blender's colour statistics through it."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from stagefaces import astronaut, grace_hopper, source, tracked

from stream.exceptions import InputError
from stream.frames import Frame
from stream.stages import SourceBank, default_chain
from stream.stages.blend import MeshBlender
from stream.stages.temporal import TrackMemo


def test_an_entry_serves_only_frames_near_the_one_that_computed_it() -> None:
    memo: TrackMemo[str] = TrackMemo(4)
    memo.put(7, 10, "a")
    assert [memo.get(7, i) for i in (6, 7, 10, 13, 14)] == [None, "a", "a", "a", None]
    assert memo.get(8, 10) is None  # another track
    assert TrackMemo(1).get(7, 10) is None


def test_an_older_frame_does_not_replace_a_newer_fresh_entry() -> None:
    memo: TrackMemo[str] = TrackMemo(4)
    memo.put(1, 11, "newer")
    memo.put(1, 10, "older")  # finished later by the other worker
    assert memo.get(1, 12) == "newer"
    memo.put(1, 5, "late")  # older, but no longer reusable by the newer entry's neighbours either
    assert memo.get(1, 12) == "newer" and memo.get(1, 5) is None
    memo.put(1, 300, "later")
    memo.put(1, 0, "restart")  # a jump back beyond `expire`: a restarted stream, replaced
    assert memo.get(1, 1) == "restart" and memo.get(1, 299) is None


def test_tracks_not_seen_recently_are_dropped_and_the_store_is_bounded() -> None:
    memo: TrackMemo[int] = TrackMemo(2, expire=10, max_entries=3)
    memo.put("gone", 0, 0)
    memo.put("kept", 5, 5)
    memo.put("new", 12, 12)
    assert memo.get("gone", 0) is None and len(memo) == 2
    for track in range(5):
        memo.put(track, 13 + track, track)
    assert len(memo) == 3
    assert [memo.get(t, 13 + t) for t in range(5)] == [None, None, 2, 3, 4]
    memo.clear()
    assert len(memo) == 0


def test_a_straggling_frame_does_not_evict_fresh_entries() -> None:
    memo: TrackMemo[int] = TrackMemo(3, expire=10)
    memo.put("old", 88, 88)
    memo.put("fresh", 100, 100)
    memo.put("straggler", 92, 92)  # a worker behind the others (but within `expire`)
    assert memo.get("fresh", 100) == 100 and memo.get("straggler", 92) == 92
    assert memo.get("old", 88) is None  # more than `expire` older than the newest frame: dropped


def test_concurrent_out_of_order_frames_keep_the_newest_entry() -> None:
    memo: TrackMemo[int] = TrackMemo(3)
    # Frames of four tracks in order, shuffled within blocks of eight as parallel workers finish them.
    rng = random.Random(0)
    ordered = [(track, i) for i in range(300) for track in range(4)]
    jobs = []
    for start in range(0, len(ordered), 8):
        block = ordered[start:start + 8]
        rng.shuffle(block)
        jobs += block
    served: list[tuple[int, int]] = []
    stored: list[tuple[int, int]] = []

    def work(job: tuple[int, int]) -> None:
        track, i = job
        hit = memo.get(track, i)
        if hit is None:
            memo.put(track, i, i)  # the value is the frame that computed it
            stored.append((track, i))
        else:
            served.append((i, hit))

    with ThreadPoolExecutor(4) as pool:
        # Like ProcessorTrack, a bounded number of frames in flight (here two frames of each track).
        for start in range(0, len(jobs), 8):
            list(pool.map(work, jobs[start:start + 8]))
    assert served and all(abs(i - hit) < 3 for i, hit in served)
    # Whatever the order, the entry left is the newest frame that stored one.
    for track in range(4):
        newest = max(i for t, i in stored if t == track)
        assert memo.get(track, newest) == newest
        memo.put(track, newest - 1, -1)  # an older frame finishing late never replaces it
        assert memo.get(track, newest) == newest


def test_memo_validates_its_options() -> None:
    with pytest.raises(InputError, match="reuse"):
        TrackMemo(0)
    with pytest.raises(InputError, match="expire"):
        TrackMemo(5, expire=2)
    with pytest.raises(InputError, match="max_entries"):
        TrackMemo(2, max_entries=0)
    with pytest.raises(InputError, match="color_reuse"):
        MeshBlender(color_reuse=0)


def _frames(brightness: list[float]) -> list[Frame]:
    img, lm = astronaut()
    out = []
    for i, b in enumerate(brightness):
        shaded = np.clip(img.astype(np.float32) + b, 0, 255).astype(np.uint8)
        out.append(Frame(index=i, image=shaded, faces=[tracked(lm, track_id=3)]))
    return out


def _swapped(frames: list[Frame], color_reuse: int, workers: int = 1,
             order_seed: int | None = None) -> list[np.ndarray]:
    chain = default_chain()
    stages = list(chain.stages)
    stages[-1] = MeshBlender(color_reuse=color_reuse)
    chain.stages = tuple(stages)
    chain.set_source(SourceBank([source(*grace_hopper())]))
    todo = list(range(len(frames)))
    if order_seed is not None:
        random.Random(order_seed).shuffle(todo)
    copies = [Frame(index=f.index, image=f.image.copy(), faces=list(f.faces)) for f in frames]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda i: chain(copies[i]), todo))
    return [f.image.astype(np.int16) for f in copies]


def test_reused_colour_statistics_lag_a_slow_change_only_a_little() -> None:
    # A slow brightening (0.8 grey levels a frame): statistics reused for a few frames lag a little.
    frames = _frames([0.8 * i for i in range(8)])
    fresh = _swapped(frames, color_reuse=1)
    reused = _swapped(frames, color_reuse=4)
    assert np.array_equal(reused[0], fresh[0])  # the frame that computed them
    assert any(not np.array_equal(a, b) for a, b in zip(fresh, reused, strict=True))  # later ones reused
    for a, b in zip(fresh, reused, strict=True):
        diff = np.abs(a - b)
        assert diff.max() <= 4 and diff.mean() < 0.1


def test_out_of_order_frames_on_two_workers_stay_close_to_fresh_statistics() -> None:
    frames = _frames([0.8 * i for i in range(10)])
    fresh = _swapped(frames, color_reuse=1)
    for seed in (1, 2):
        reused = _swapped(frames, color_reuse=4, workers=2, order_seed=seed)
        for a, b in zip(fresh, reused, strict=True):
            diff = np.abs(a - b)
            assert diff.max() <= 5 and diff.mean() < 0.15


def test_a_cut_within_the_reuse_window_recomputes_the_statistics() -> None:
    # The next frame is much darker (a cut, a light switched off): reused statistics would keep the
    # old skin tone, so the blender must recompute and match a fresh run exactly.
    frames = _frames([0.0, -60.0])
    fresh = _swapped(frames, color_reuse=1)
    reused = _swapped(frames, color_reuse=4)
    assert np.array_equal(fresh[1], reused[1])


def test_set_source_forgets_the_statistics() -> None:
    blender = MeshBlender()
    frames = _frames([0.0])
    chain = default_chain()
    chain.stages = (*chain.stages[:-1], blender)
    chain.set_source(SourceBank([source(*grace_hopper())]))
    chain(frames[0])
    assert len(blender._colour) == 1
    chain.set_source(SourceBank([source(*astronaut())]))
    assert len(blender._colour) == 0
    blender.close()
    blender.close()
