"""``facestream bench``: where the time goes in a swap, against the transcode floor of the same run.

The *transcode floor* is decode + encode alone through the same source and sink classes with the same
encoder settings: no pipeline can beat it, so the swap's throughput is reported as a ratio to it.
"""

from __future__ import annotations

import asyncio
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from stream import __version__
from stream.frames import Frame, TrackedFace
from stream.memory import start_afresh
from stream.swap import SwapOptions, encode_settings, swap_video, usable_cores


async def transcode_floor(input: Path, output: Path, options: SwapOptions) -> dict[str, Any]:
    """Decode + encode alone with the swap's encoder settings; returns frames, seconds and fps."""
    from stream.sinks import transcode_stats

    stats = await transcode_stats(input, output, encode_settings(options))
    d = stats.as_dict()
    return {"frames": stats.frames, "seconds": round(stats.wall_seconds, 4), "fps": round(stats.fps, 3),
            "cpu_ms_per_frame": d["cpu_ms_per_frame"], "cores_busy": d["cores_busy"],
            "ms_per_frame": d["ms_per_frame"], "memory": d["memory"]}


async def _best_runs(input: Path, source: Path, repeat: int, variants: dict[str, dict[str, Any]],
                     swap_kwargs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The transcode floor and each swap variant (``swap_video`` keyword hooks by name), ``repeat`` times
    each, interleaved; the best (fastest, least disturbed by other load on the machine) run of each.

    Before each run the memory earlier runs freed is handed back to the system and the process's peak
    mark is lowered, so that every run's peak is its own (the bench owns its process; see
    :mod:`stream.memory`)."""
    runs: dict[str, list[dict[str, Any]]] = {"transcode floor": [], **{name: [] for name in variants}}
    with tempfile.TemporaryDirectory(prefix="facestream-bench-") as tmp:
        for i in range(repeat):
            opts = SwapOptions(source=source, input=input, output=Path(tmp) / f"swap{i}.mp4", progress=False,
                               **swap_kwargs)
            start_afresh()
            runs["transcode floor"].append(await transcode_floor(input, Path(tmp) / f"floor{i}.mp4", opts))
            for name, hooks in variants.items():
                start_afresh()
                runs[name].append(await swap_video(opts, **hooks))
    return {name: max(rs, key=lambda r: r["fps"]) for name, rs in runs.items()}


def _header(input: Path, source: Path, repeat: int) -> dict[str, Any]:
    return {"facestream": __version__, "input": str(input), "source": str(source),
            "machine": {"python": platform.python_version(), "cpus": usable_cores(), "processor": platform.machine()},
            "repeat": repeat}


async def bench_swap(input: Path, source: Path, *, repeat: int = 1, **swap_kwargs: Any) -> dict[str, Any]:
    """Measure the transcode floor and the full swap on ``input``, ``repeat`` times each, interleaved.

    The best run of each is kept (least disturbed by other load on the machine).
    """
    best = await _best_runs(input, source, repeat, {"swap": {}}, swap_kwargs)
    floor, swap = best["transcode floor"], best["swap"]
    return {
        **_header(input, source, repeat),
        "transcode_floor": floor,
        "swap": {k: swap[k] for k in ("frames", "frames_with_faces", "wall_seconds", "fps", "cpu_ms_per_frame",
                                       "cores_busy", "ms_per_frame", "setup_seconds", "memory", "split_steps",
                                       "priority_lowered_at", "steps_busy")},
        **against_floor(swap["fps"], floor["fps"]),
    }


def against_floor(fps: float, floor_fps: float) -> dict[str, float | None]:
    """A run's ``ratio_to_floor`` and ``added_ms_per_frame`` (wall time per frame over the floor's).

    The added time is nearly the same on every clip of a given face size, while the floor (and so the
    ratio) depends on how costly the clip is to decode and encode. None where an fps is 0.
    """
    if not (fps and floor_fps):
        return {"ratio_to_floor": None, "added_ms_per_frame": None}
    return {"ratio_to_floor": round(fps / floor_fps, 3), "added_ms_per_frame": round(1000 / fps - 1000 / floor_fps, 3)}


class ReplayFaces:
    """A stand-in tracker that hands every frame the faces a real tracker found in an earlier pass, so that
    a run measures the stage chain without the cost of tracking."""

    def __init__(self, faces: dict[int, list[TrackedFace]]) -> None:
        self.faces = faces

    def __call__(self, frame: Frame) -> Frame:
        frame.faces = list(self.faces.get(frame.index, []))
        return frame

    def close(self) -> None:
        """Nothing to release."""


def tracked_faces(input: Path) -> dict[int, list[TrackedFace]]:
    """The faces a :class:`~stream.tracking.FaceTracker` finds in every frame of ``input``, by frame index."""
    from stream.sources import read_video_frames
    from stream.tracking import FaceTracker

    with FaceTracker() as tracker:
        return {f.index: tracker(f).faces for f in read_video_frames(input)}


async def bench_breakdown(input: Path, source: Path, *, repeat: int = 1, **swap_kwargs: Any) -> dict[str, Any]:
    """What tracking and the stage chain each add to the transcode floor: the floor, the full swap,
    tracking alone (no stages) and the stages alone (faces replayed from an earlier tracking pass),
    ``repeat`` times each, interleaved; the best run of each is kept."""
    faces = await asyncio.get_running_loop().run_in_executor(None, tracked_faces, input)
    variants: dict[str, dict[str, Any]] = {"full": {}, "tracking only": {"stages": False},
                                           "stages only": {"tracker": ReplayFaces(faces)}}
    best = await _best_runs(input, source, repeat, variants, swap_kwargs)
    floor_fps = best["transcode floor"]["fps"]
    rows = {name: {"frames": r["frames"], "fps": r["fps"], "ms_per_frame": round(1000 / r["fps"], 3),
                   **against_floor(r["fps"], floor_fps), "cpu_ms_per_frame": r["cpu_ms_per_frame"],
                   "cores_busy": r["cores_busy"], "memory": r["memory"]}
            for name, r in best.items()}
    return {**_header(input, source, repeat), "breakdown": rows}


def format_breakdown_table(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`bench_breakdown`."""
    lines = [f"{'run':<18}{'fps':>9}{'ms/frame':>10}{'added ms':>10}{'ratio':>8}{'cpu ms/frame':>14}{'cores':>7}"
             f"{'peak MiB':>10}{'run MiB':>9}"]
    for name, r in result["breakdown"].items():
        lines.append(f"{name:<18}{r['fps']:>9.1f}{r['ms_per_frame']:>10.2f}{r['added_ms_per_frame']:>10.2f}"
                     f"{r['ratio_to_floor']:>8.3f}{r['cpu_ms_per_frame']:>14.2f}{r['cores_busy']:>7.2f}"
                     f"{_num(r['memory'].get('rss_peak_mib'), 0):>10}{_num(r['memory'].get('rss_added_mib'), 0):>9}")
    lines.append("added ms: wall time per frame over the transcode floor's; 'stages only' replays faces tracked in "
                 "an earlier pass. peak MiB: the process's resident memory at its highest during the run; "
                 "run MiB: how far the run raised it.")
    return "\n".join(lines)


def run_bench_breakdown(input: Path, source: Path, *, repeat: int = 1, **kwargs: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = asyncio.run(bench_breakdown(input, source, repeat=repeat, **kwargs))
    result["bench_seconds"] = round(time.perf_counter() - t0, 2)
    return result


def format_swap_table(result: dict[str, Any]) -> str:
    """A plain-text table of per-step milliseconds per frame and the end-to-end figures."""
    floor, swap = result["transcode_floor"], result["swap"]
    steps = sorted(set(floor["ms_per_frame"]) | set(swap["ms_per_frame"]))
    lines = [f"{'step':<16}{'floor ms/frame':>16}{'swap ms/frame':>16}"]
    for step in steps:
        f, s = (_ms(r["ms_per_frame"].get(step)) for r in (floor, swap))
        lines.append(f"{step:<16}{f:>16}{s:>16}")
    lines.append(f"{'end-to-end fps':<16}{floor['fps']:>16.2f}{swap['fps']:>16.2f}")
    lines.append(f"{'cpu ms/frame':<16}{floor['cpu_ms_per_frame']:>16.2f}{swap['cpu_ms_per_frame']:>16.2f}")
    lines.append(f"{'cores busy':<16}{floor['cores_busy']:>16.2f}{swap['cores_busy']:>16.2f}")
    fm, sm = floor["memory"], swap["memory"]
    lines.append(f"{'peak RSS MiB':<16}{_num(fm.get('rss_peak_mib'), 0):>16}{_num(sm.get('rss_peak_mib'), 0):>16}")
    lines.append(f"{'RSS added MiB':<16}{_num(fm.get('rss_added_mib'), 0):>16}{_num(sm.get('rss_added_mib'), 0):>16}")
    lines.append(f"{'RSS growth':<16}{_num(fm.get('growth_mib_per_1000_frames'), 1):>16}"
                 f"{_num(sm.get('growth_mib_per_1000_frames'), 1):>16}")
    lines.append(f"swap / transcode floor: {result['ratio_to_floor']:.3f}  "
                 f"({swap['frames']} frames, {swap['frames_with_faces']} with faces); the swap adds "
                 f"{_ms(result['added_ms_per_frame'])} ms of wall time per frame")
    lines.append("cpu: the whole process, every thread (encoder, decoder and MediaPipe threads included); "
                 f"{result['machine']['cpus']} cores available. peak RSS: the process at its highest during the run; "
                 "added: how far the run raised it; growth: MiB per 1000 frames over the second half of a run "
                 "of 1000 frames or more (a leak keeps it above 0 however long the clip).")
    together = "" if swap.get("split_steps", True) else " (track and swap one after the other on one of them)"
    lines.append(f"step times overlap (decode, track, swap, encode run concurrently on threads of their own"
                 f"{together}), so they do not add up to 1000/fps.")
    if swap.get("priority_lowered_at") is not None:
        lines.append(f"the encoder set the pace: from frame {swap['priority_lowered_at']} on, tracking and stages ran "
                     "at a lower priority, in the moments the encoder left a core idle.")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return _num(value, 2)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def run_bench_swap(input: Path, source: Path, *, repeat: int = 1, **kwargs: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = asyncio.run(bench_swap(input, source, repeat=repeat, **kwargs))
    result["bench_seconds"] = round(time.perf_counter() - t0, 2)
    return result
