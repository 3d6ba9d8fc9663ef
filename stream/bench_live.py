"""``facestream bench --live``: added latency of the server over loopback WebRTC.

The server runs in this process with the default (weight-free) chain; a camera stand-in runs in a
child process (an aiortc peer sending 720p30 frames of a moving face in real time and receiving the
processed stream), as a browser would. Measured per processed frame: the added latency (frame
received and decoded by the server -> processed frame handed to the encoder), the step times, and the
frames dropped by the keep-latest queues. Drift is the slope of latency over the run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np

from stream.frames import Frame
from stream.serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)


class _RecordingMetrics(ServingMetrics):
    """Also keeps every sample: ``(time, latency, timings)``."""

    def __init__(self) -> None:
        super().__init__()
        self.samples: list[tuple[float, float, dict[str, float]]] = []

    def observe(self, frame: Frame, latency: float) -> None:
        super().observe(frame, latency)
        self.samples.append((time.monotonic(), latency, dict(frame.timings)))


def bench_frames(width: int, height: int, count: int = 90, input: Path | None = None) -> list[np.ndarray]:
    """The camera stand-in's frames: ``input``'s first ``count`` frames scaled to ``width`` x ``height``,
    or the demo's moving astronaut."""
    import cv2

    if input is None:
        from stream.demo import render_target_frames

        return list(render_target_frames(width, height, count, empty_head=0, empty_tail=0))
    from stream.sources import read_video_frames

    frames = []
    for frame in read_video_frames(input, max_frames=count):
        image = frame.image
        if image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        frames.append(np.ascontiguousarray(image))
    return frames


def _client(url: str, duration: float, width: int, height: int, fps: float, input: str | None,
            results: Any) -> None:
    """The child process: send frames for ``duration`` seconds, count what comes back."""

    async def main() -> dict[str, Any]:
        from stream.serving.client import PacedVideoTrack, PeerClient

        track = PacedVideoTrack(bench_frames(width, height, input=Path(input) if input else None), fps=fps)
        client = PeerClient(url)
        await client.connect(track, face="grace_hopper")
        received = 0
        first = None
        t_end = time.monotonic() + duration
        try:
            while time.monotonic() < t_end:
                await client.recv(timeout=30)
                received += 1
                first = first or time.monotonic()
        finally:
            stats = await client.stats()
            await client.close()
        elapsed = time.monotonic() - (first or time.monotonic())
        return {"sent": track.count, "received": received, "recv_fps": received / elapsed if elapsed else 0.0,
                "server": stats}

    try:
        results.put(asyncio.run(main()))
    except BaseException as exc:  # reported to the parent, which raises
        results.put({"error": f"{type(exc).__name__}: {exc}"})


def _percentiles(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2),
            "max": round(float(values.max()), 2)}


async def _bench(duration: float, input: Path | None, width: int, height: int, fps: float,
                 warmup: float) -> dict[str, Any]:
    from stream.live import swap_processor_factory
    from stream.serving.server import FacestreamServer, ServerConfig

    metrics = _RecordingMetrics()
    server = FacestreamServer(swap_processor_factory(faces="largest"), ServerConfig(port=0), metrics=metrics)
    url = await server.start()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=_client, args=(url, duration + warmup, width, height, fps,
                                              str(input) if input else None, results), daemon=True)
    t0 = time.monotonic()
    child.start()
    loop = asyncio.get_running_loop()
    try:
        client = await loop.run_in_executor(None, results.get, True, duration + warmup + 120)
        session_drops = sum(s.dropped for s in server.sessions.values())
    finally:
        await loop.run_in_executor(None, child.join, 10)
        if child.is_alive():
            child.kill()
        await server.close()
    if "error" in client:
        from stream.exceptions import FacestreamError

        raise FacestreamError(f"live bench client failed: {client['error']}")
    samples = metrics.samples
    start = samples[0][0] + warmup if samples else t0
    kept = [(t - start, lat * 1000, tm) for t, lat, tm in samples if t >= start]
    times = np.array([k[0] for k in kept])
    lat = np.array([k[1] for k in kept])
    steps: dict[str, list[float]] = {}
    for _, _, timings in kept:
        for name, seconds in timings.items():
            steps.setdefault(name, []).append(seconds * 1000)
    slope = float(np.polyfit(times, lat, 1)[0]) * 60 if lat.size > 2 else 0.0
    third = max(1, lat.size // 3)
    server_stats = client["server"]
    result: dict[str, Any] = {
        "kind": "live",
        "resolution": f"{width}x{height}",
        "fps_target": fps,
        "duration_s": round(float(times[-1]) if times.size else 0.0, 1),
        "warmup_s": warmup,
        "frames_sent": client["sent"],
        "frames_received": client["received"],
        "frames_processed": int(lat.size),
        "dropped_frames": int(server_stats.get("dropped", session_drops)),
        "processed_fps": round(lat.size / float(times[-1]), 2) if times.size and times[-1] > 0 else 0.0,
        "received_fps": round(client["recv_fps"], 2),
        "added_latency_ms": _percentiles(lat),
        "drift_ms_per_min": round(slope, 3),
        "latency_first_third_p50_ms": round(float(np.median(lat[:third])), 2) if lat.size else None,
        "latency_last_third_p50_ms": round(float(np.median(lat[-third:])), 2) if lat.size else None,
        "steps_ms": {k: _percentiles(np.array(v)) for k, v in sorted(steps.items())},
        "target": {"p95_ms": 50.0, "met": bool(lat.size and np.percentile(lat, 95) <= 50.0)},
    }
    result["table"] = format_live_table(result)
    return result


def format_live_table(result: dict[str, Any]) -> str:
    """A plain-text table of a :func:`run_live_bench` result."""
    lat = result["added_latency_ms"]
    lines = [
        f"facestream bench --live  {result['resolution']} @ {result['fps_target']:g} fps, "
        f"{result['duration_s']:.0f} s after {result['warmup_s']:g} s warm-up",
        "",
        f"{'step':<18}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}",
        f"{'added latency':<18}{lat['p50']!s:>10}{lat['p95']!s:>10}{lat['max']!s:>10}",
    ]
    for name, p in result["steps_ms"].items():
        lines.append(f"{'  ' + name:<18}{p['p50']!s:>10}{p['p95']!s:>10}{p['max']!s:>10}")
    lines += [
        "",
        f"frames sent {result['frames_sent']}, processed {result['frames_processed']} "
        f"({result['processed_fps']} fps), received {result['frames_received']} "
        f"({result['received_fps']} fps), dropped {result['dropped_frames']}",
        f"drift {result['drift_ms_per_min']:+.2f} ms/min (p50 first third "
        f"{result['latency_first_third_p50_ms']} ms, last third {result['latency_last_third_p50_ms']} ms)",
        f"target p95 <= {result['target']['p95_ms']:g} ms: {'met' if result['target']['met'] else 'NOT met'}",
    ]
    return "\n".join(lines)


def run_live_bench(duration: float = 60.0, input: Path | None = None, *, width: int = 1280, height: int = 720,
                   fps: float = 30.0, warmup: float = 5.0) -> dict[str, Any]:
    """Run the loopback live benchmark; returns the result dict, its ``"table"`` ready to print.

    ``input`` (optional) is a video whose frames the camera stand-in sends instead of the demo face.
    """
    return asyncio.run(_bench(duration, input, width, height, fps, warmup))


if __name__ == "__main__":  # pragma: no cover - manual runs
    import sys

    out = run_live_bench(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0)
    print(out.pop("table"))
    print(json.dumps(out, indent=2))
