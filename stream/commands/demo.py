"""``facestream demo``: build the sample clip, swap a face into it, say where the result is."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="swap Grace Hopper's face onto a sample clip of the astronaut",
                       description="Builds a short 720p clip from public-domain images shipped with "
                                   "scikit-image and matplotlib and swaps a face into it with the weight-free "
                                   "default. No download needed.")
    p.add_argument("--output-dir", type=Path, default=Path("demo-output"), help="where to put the files")
    p.add_argument("--frames", type=int, default=90, help="length of the sample clip in frames")
    p.add_argument("--sensor-noise", type=float, default=0.0, metavar="SIGMA",
                   help="add camera-like noise of SIGMA grey levels to every frame (default 0: a still "
                        "background, far cheaper to encode than real footage)")
    p.add_argument("--no-swap", action="store_true", help="only build the sample clip")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import av

    from stream.demo import check_sensor_noise, sample_faces, side_by_side, write_target_clip
    from stream.exceptions import InputError, OutputError
    from stream.swap import SwapOptions, run_swap

    check_sensor_noise(args.sensor_noise)
    if args.frames < 1:
        raise InputError(f"--frames must be at least 1, got {args.frames}")
    out_dir: Path = args.output_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--output-dir {out_dir} is a file, not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create --output-dir {out_dir}: {exc.strerror or exc}") from exc
    target = write_target_clip(out_dir / "target.mp4", frames=args.frames, sensor_noise=args.sensor_noise)
    _, hopper = sample_faces()
    source = out_dir / "source.jpg"
    shutil.copyfile(hopper, source)
    if args.no_swap:
        print(f"facestream: sample clip: {target}", file=sys.stderr)
        return 0
    output = out_dir / "swapped.mp4"
    report = run_swap(SwapOptions(source=source, input=target, output=output, report=out_dir / "report.json"))
    # A before/after still from the middle of the clip.
    mid = report["frames"] // 2
    stills = []
    for path in (target, output):
        with av.open(str(path)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i == mid:
                    stills.append(frame.to_ndarray(format="rgb24"))
                    break
    preview = side_by_side(stills[0], stills[1], out_dir / "before_after.png")
    print(json.dumps({k: report[k] for k in ("frames", "frames_with_faces", "frames_without_face", "fps")}),
          file=sys.stderr)
    print(f"facestream: demo done.\n  input:   {target}\n  source:  {source}\n  result:  {output}\n"
          f"  preview: {preview}\n  report:  {out_dir / 'report.json'}")
    return 0
