"""Benchmark of the media layer: decode speed and the encoder settings' speed/quality trade-off.

Not a test (no assertions): ``python tests/bench_sinks.py [--size 1280x720] [--frames 60]`` writes a
textured clip, then measures

- decode: :class:`~stream.sources.VideoFileSource` alone (demux + decode + RGB), frames per second;
- transcode: :func:`~stream.sinks.transcode` per preset/CRF (the benchmark's *transcode floor*), wall
  frames per second, output size and PSNR of the output against the decoded input (min and mean
  over frames), both for unmodified frames and for frames sent back through RGB.

Prints a table, then the same numbers as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clips import decoded_frames, make_clip, psnr

from stream.exceptions import EndOfStream
from stream.sinks import EncodeSettings, transcode
from stream.sources import VideoFileSource


async def decode_fps(path: Path) -> float:
    source = VideoFileSource(path)
    n, t0 = 0, time.perf_counter()
    try:
        while True:
            await source.recv()
            n += 1
    except EndOfStream:
        pass
    finally:
        source.stop()
    return n / (time.perf_counter() - t0)


def quality(reference: list[np.ndarray], path: Path) -> tuple[float, float]:
    out = [f.to_ndarray(format="rgb24") for f in decoded_frames(path)]
    values = [psnr(a, b) for a, b in zip(reference, out, strict=True)]
    return min(values), float(np.mean(values))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--presets", default="veryfast,medium")
    parser.add_argument("--crfs", default="18")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "in.mp4", frames=args.frames, size=(width, height))
        reference = [f.to_ndarray(format="rgb24") for f in decoded_frames(clip.path)]
        rows.append({"step": "decode", "fps": round(await decode_fps(clip.path), 1)})
        for preset in args.presets.split(","):
            for crf in (int(c) for c in args.crfs.split(",")):
                for rgb in (False, True):
                    out = Path(tmp) / f"out-{preset}-{crf}-{int(rgb)}.mp4"
                    stats = await transcode(clip.path, out, EncodeSettings(crf=crf, preset=preset),
                                            rgb_roundtrip=rgb)
                    worst, mean = quality(reference, out)
                    rows.append({"step": "transcode", "preset": preset, "crf": crf, "rgb_roundtrip": rgb,
                                 "fps": round(stats.fps, 1), "encode_s": round(stats.encode_seconds, 3),
                                 "kbytes": stats.bytes // 1024, "psnr_min": round(worst, 2),
                                 "psnr_mean": round(mean, 2)})
    print(f"{width}x{height}, {args.frames} frames")
    print(f"{'step':10} {'preset':9} {'crf':>3} {'rgb':>3} {'fps':>7} {'kB':>6} {'psnr min':>8} {'mean':>6}")
    for r in rows:
        print(f"{r['step']:10} {r.get('preset', ''):9} {r.get('crf', ''):>3} "
              f"{'yes' if r.get('rgb_roundtrip') else '':>3} {r['fps']:>7} {r.get('kbytes', ''):>6} "
              f"{r.get('psnr_min', ''):>8} {r.get('psnr_mean', ''):>6}")
    print(json.dumps({"size": args.size, "frames": args.frames, "rows": rows}))


if __name__ == "__main__":
    asyncio.run(main())
