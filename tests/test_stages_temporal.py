"""Per-track reuse across frames: the TrackMemo and AffineMemo stores, and the stages that reuse through them
(colour statistics, warp maps, Poisson corrections)."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from stagefaces import astronaut, grace_hopper, source, tracked, work_for

from stream.exceptions import InputError
from stream.frames import FaceWork, Frame
from stream.stages import SourceBank, default_chain
from stream.stages.blend import MeshBlender
from stream.stages.reenact import MeshWarpReenactor, WarpMap
from stream.stages.temporal import AffineMemo, TrackMemo, fit_affine


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


# --- affine reuse: the warp's dense map and the Poisson correction ---------------------------------

def _moved(image: np.ndarray, landmarks: np.ndarray, motion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and its landmarks moved by the (2, 3) affine ``motion`` (z scaled with it)."""
    out = cv2.warpAffine(image, motion, (image.shape[1], image.shape[0]), flags=cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_REFLECT101)
    lm = np.array(landmarks, np.float32)
    lm[:, :2] = landmarks[:, :2] @ motion[:, :2].T + motion[:, 2]
    lm[:, 2] *= float(np.sqrt(abs(np.linalg.det(motion[:, :2]))))
    return out, lm


def _motion(landmarks: np.ndarray, degrees: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    centre = landmarks[:, :2].mean(0)
    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), degrees, scale)
    m[:, 2] += shift
    return m


def test_fit_affine_recovers_the_map_and_measures_what_it_leaves() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 300, (478, 2))
    m = np.array([[1.03, 0.05, 12.5], [-0.04, 0.98, -7.25]])
    dst = pts @ m[:, :2].T + m[:, 2]
    fit, residual = fit_affine(pts, dst)
    assert np.allclose(fit, m, atol=1e-9) and residual.max() < 1e-9
    dst[:10] += (2.0, 0.0)  # ten points move on their own
    _, residual = fit_affine(pts, dst)
    assert (residual[:10] > 1.5).all() and np.median(residual[10:]) < 0.1


def test_affine_memo_serves_only_affine_images_of_the_landmarks() -> None:
    _, lm = astronaut()
    memo: AffineMemo[str] = AffineMemo(6, tolerance=0.3)
    memo.put(1, 0, lm, "map")
    m = _motion(lm, 4.0, 1.03, (9.5, -3.25))
    moved = _moved(np.zeros((8, 8, 3), np.uint8), lm, m)[1]
    hit = memo.get(1, 1, moved)
    assert hit is not None and hit[0] == "map" and np.allclose(hit[1], m, atol=1e-3)
    talking = moved.copy()
    talking[[13, 14, 17, 0, 78, 308], 1] += 3.0  # lips apart: not an affine motion
    assert memo.get(1, 2, talking) is None
    assert memo.get(1, 3, _moved(np.zeros((8, 8, 3), np.uint8), lm, _motion(lm, 0, 1.2, (0, 0)))[1]) is None
    assert memo.get(1, 6, moved) is None  # too old
    assert memo.get(2, 1, moved) is None  # another track
    assert memo.counters == {"computed": 4, "reused": 1}
    assert AffineMemo(1).get(1, 0, lm) is None  # reuse 1: never


def _full(wm: WarpMap | None, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A WarpMap's arrays placed into crop-sized arrays (uncovered: NaN map, 0 coverage)."""
    assert wm is not None
    mx, my, cov = np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32), np.zeros(shape, np.float32)
    h, w = wm.coverage.shape
    mx[wm.y0:wm.y0 + h, wm.x0:wm.x0 + w], my[wm.y0:wm.y0 + h, wm.x0:wm.x0 + w] = wm.map_x, wm.map_y
    cov[wm.y0:wm.y0 + h, wm.x0:wm.x0 + w] = wm.coverage
    return mx, my, cov


def test_a_carried_warp_map_is_the_map_of_the_moved_face() -> None:
    img, lm = astronaut()
    src = source(*grace_hopper())
    m = _motion(lm, 3.0, 1.02, (12.3, -7.6))
    img1, lm1 = _moved(img, lm, m)
    # step 1: exact maps, so what differs is the carrying alone (bilinear across the triangles' kinks).
    carried = MeshWarpReenactor(step=1)
    carried.set_source(SourceBank([src]))
    first, second = work_for(img, lm, src), work_for(img1, lm1, src)
    second.frame_index = 1
    carried.process([first])
    carried.process([second])
    assert carried.maps.counters == {"computed": 1, "reused": 1}
    built = MeshWarpReenactor(step=1, reuse=1)
    built.set_source(SourceBank([src]))
    fresh = work_for(img1, lm1, src)
    built.process([fresh])
    shape = fresh.image.shape[:2]
    ax, ay, ac = _full(carried.dense_map(second), shape)  # carried again (frame 1 is stored as frame 0's)
    bx, by, bc = _full(built.build_map(fresh), shape)
    both = (ac >= 0.999) & (bc >= 0.999)
    assert both.sum() > 0.3 * both.size
    err = np.hypot(ax - bx, ay - by)[both]
    # Bilinear across the kinks between triangles of very different stretch errs by a pixel or two at
    # a few pixels (as the grid-upsampled map itself does); everywhere else it is exact.
    assert np.median(err) < 0.05 and np.percentile(err, 99) < 0.5 and (err > 1).mean() < 0.005
    # The source is sampled afresh, so the carried result is as sharp as a rebuilt one.
    covered = (second.coverage >= 0.999) & (fresh.coverage >= 0.999)
    diff = (second.reenacted - fresh.reenacted)[covered]
    assert 10 * np.log10(255**2 / (diff**2).mean()) > 38

    def sharpness(x: np.ndarray) -> float:
        return float((cv2.Laplacian(cv2.cvtColor(x.astype(np.uint8), cv2.COLOR_RGB2GRAY), cv2.CV_32F)[
            cv2.erode(covered.view(np.uint8), np.ones((5, 5), np.uint8)) > 0] ** 2).mean())

    assert sharpness(second.reenacted) > 0.95 * sharpness(fresh.reenacted)


def test_carried_maps_keep_a_tracked_clip_close_to_maps_built_every_frame() -> None:
    from stream.demo import render_target_frames
    from stream.tracking import FaceTracker

    # A small face moving fast (the demo's motion in 40 frames): the hardest case for carrying.
    frames = []
    with FaceTracker() as tracker:
        for i, image in enumerate(render_target_frames(640, 360, frames=40, empty_head=0, empty_tail=0)):
            frame = Frame(index=i, image=image, faces=[])
            tracker(frame)
            frames.append(frame)
    bank = SourceBank([source(*grace_hopper())])
    outputs = {}
    for reuse in (1, 6):
        chain = default_chain()
        # Corrections solved every frame: what differs is the carried map alone.
        chain.stages = (MeshWarpReenactor(reuse=reuse), *chain.stages[1:-1], MeshBlender(correction_reuse=1))
        chain.set_source(bank)
        copies = [Frame(index=f.index, image=f.image.copy(), faces=list(f.faces)) for f in frames]
        for f in copies:
            chain(f)
        outputs[reuse] = [f.image.astype(np.float64) for f in copies]
        counters = chain.stages[0].maps.counters  # type: ignore[attr-defined]
        if reuse > 1:
            assert counters["reused"] > counters["computed"]  # the clip moves affinely between meshes
    psnr = []
    for i, f in enumerate(frames):
        assert f.faces
        x0, y0, x1, y1 = (int(v) for v in f.faces[0].bbox)
        d = ((outputs[1][i] - outputs[6][i])[y0:y1, x0:x1] ** 2).mean()
        psnr.append(10 * np.log10(255**2 / max(d, 1e-9)))
    assert np.median(psnr) > 38 and min(psnr) > 33


def _blended(blender: MeshBlender, frames: list[tuple[np.ndarray, np.ndarray]]) -> list[FaceWork]:
    """``frames`` ((image, landmarks) of one track) through warp, masks, completion and ``blender``."""
    chain = default_chain()
    stages = (*chain.stages[:-1], blender)
    bank = SourceBank([source(*grace_hopper())])
    for stage in stages:
        stage.set_source(bank)
    works = []
    for i, (image, lm) in enumerate(frames):
        work = work_for(image, lm, bank.faces[0])
        work.frame_index = i
        for stage in stages:
            stage.process([work])
        works.append(work)
    return works


def test_a_carried_poisson_correction_is_the_solve_of_the_moved_face() -> None:
    img, lm = astronaut()
    # A whole-pixel move: every mask, edge value and solver grid moves with the face, so the moved
    # correction is exactly the one a solve finds.
    shifted = _moved(img, lm, _motion(lm, 0.0, 1.0, (12.0, -7.0)))
    carried, solved = MeshBlender(), MeshBlender(correction_reuse=1)
    a, b = _blended(carried, [(img, lm), shifted]), _blended(solved, [(img, lm), shifted])
    assert carried.corrections.counters == {"computed": 1, "reused": 1}
    assert solved.corrections.counters == {"computed": 2, "reused": 0}
    assert np.array_equal(a[1].output, b[1].output) and np.array_equal(a[1].alpha, b[1].alpha)
    # Turned, scaled and moved by a fraction of a pixel: the region's edge is rasterised anew and
    # meets other hair and skin pixels, which a solve follows (a few grey levels, smoothly).
    moved = _moved(img, lm, _motion(lm, 3.0, 1.02, (12.3, -7.6)))
    carried, solved = MeshBlender(), MeshBlender(correction_reuse=1)
    a, b = _blended(carried, [(img, lm), moved]), _blended(solved, [(img, lm), moved])
    assert carried.corrections.counters == {"computed": 1, "reused": 1}
    assert np.array_equal(a[0].output, b[0].output)  # the frame that solved it
    assert not np.array_equal(a[1].output, b[1].output)  # carried, not solved again
    inside = b[1].alpha > 0
    diff = a[1].output[inside].astype(np.float64) - b[1].output[inside]
    assert np.abs(diff).mean() < 4 and 10 * np.log10(255**2 / (diff**2).mean()) > 32


def test_a_correction_that_no_longer_meets_the_edge_is_solved_afresh() -> None:
    img, lm = astronaut()
    moved, lm1 = _moved(img, lm, _motion(lm, 3.0, 1.02, (12.3, -7.6)))
    # The target around the face darkens by 40 grey levels: the edge values change, the moved correction
    # would leave a seam. (The colour fingerprint would catch this too; it is switched off here.)
    darker = np.clip(moved.astype(np.int16) - 40, 0, 255).astype(np.uint8)
    frames = [(img, lm), (darker, lm1)]
    carried = MeshBlender(color_tolerance=255.0)
    solved = MeshBlender(color_tolerance=255.0, correction_reuse=1)
    a, b = _blended(carried, frames), _blended(solved, frames)
    assert carried.corrections.counters == {"computed": 2, "reused": 0}
    assert np.array_equal(a[1].output, b[1].output)
    # With the edge values left as they were, the same motion is carried.
    same = MeshBlender(color_tolerance=255.0)
    _blended(same, [(img, lm), (moved, lm1)])
    assert same.corrections.counters == {"computed": 1, "reused": 1}


def test_carried_corrections_keep_a_tracked_clip_close_to_solving_every_frame() -> None:
    from stream.demo import render_target_frames
    from stream.tracking import FaceTracker

    # The demo's motion in 40 frames, from the frame the face appears: the hardest case for carrying.
    frames = []
    with FaceTracker() as tracker:
        for i, image in enumerate(render_target_frames(640, 360, frames=40, empty_head=0, empty_tail=0)):
            frames.append(tracker(Frame(index=i, image=image, faces=[])))
    bank = SourceBank([source(*grace_hopper())])
    outputs, blenders = {}, {}
    for reuse in (1, 6):
        chain = default_chain()
        blenders[reuse] = MeshBlender(correction_reuse=reuse)
        chain.stages = (*chain.stages[:-1], blenders[reuse])
        chain.set_source(bank)
        copies = [Frame(index=f.index, image=f.image.copy(), faces=list(f.faces)) for f in frames]
        for f in copies:
            chain(f)
        outputs[reuse] = [f.image.astype(np.float64) for f in copies]
    counters = blenders[6].corrections.counters
    assert counters["reused"] > counters["computed"], counters
    # A small face moving fast: its edge meets new hair and background pixels every frame, so the
    # corrections differ by a few grey levels, smoothly, and the frames where they would differ more
    # are solved afresh.
    psnr = []
    for i, f in enumerate(frames):
        x0, y0, x1, y1 = (int(v) for v in f.faces[0].bbox)
        d = ((outputs[1][i] - outputs[6][i])[y0:y1, x0:x1] ** 2).mean()
        psnr.append(10 * np.log10(255**2 / max(d, 1e-9)))
    assert np.median(psnr) > 37 and min(psnr) > 30, sorted(psnr)[:5]


def test_blender_validates_its_reuse_options() -> None:
    with pytest.raises(InputError, match="correction_reuse"):
        MeshBlender(correction_reuse=0)
    with pytest.raises(InputError, match="seam_tolerance"):
        MeshBlender(seam_tolerance=-1.0)


def test_affine_memo_carry_counts_only_what_it_moves() -> None:
    _, lm = astronaut()
    memo: AffineMemo[str] = AffineMemo(6)
    memo.put(1, 0, lm, "value")
    assert memo.carry(1, 1, lm, lambda value, m: None) is None  # declined: computed afresh
    assert memo.carry(1, 2, lm, lambda value, m: value + "!") == "value!"
    assert memo.carry(2, 2, lm, lambda value, m: value) is None  # nothing stored
    assert memo.counters == {"computed": 2, "reused": 1}
