"""``facestream swap --source SOURCE INPUT -o OUTPUT``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stream.choices import BACKENDS, BLEND_MODES, FACE_SELECTIONS, PRECISIONS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("swap", help="swap a face into every selected face of a video",
                       description="Put the face of SOURCE (an image or a video) into INPUT (a video, or a "
                                   "photo). Timestamps, audio, subtitles and metadata are kept; the output is "
                                   "tagged as synthetic. A photo can also be written as a photo (.png, .jpg, .webp).")
    p.add_argument("input", type=Path, metavar="INPUT", help="video (or photo) whose faces are replaced")
    p.add_argument("--source", "-s", type=Path, required=True, metavar="SOURCE",
                   help="image or video of the face to put in")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTPUT",
                   help="output video; for a photo INPUT also .png, .jpg or .webp")
    p.add_argument("--faces", choices=FACE_SELECTIONS, default="all", help="which target faces (default: all)")
    p.add_argument("--models", metavar="fsgan:DIR", default=None,
                   help="use the learned FSGAN networks found in DIR instead of the weight-free default")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="inference backend for --models")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="precision of --models engines")
    p.add_argument("--fsgan-version", choices=("v2", "v1"), default="v2",
                   help="learned reenactment: v2 (appearance map) or v1 (stepwise iterative)")
    p.add_argument("--steps", type=int, default=2, help="reenactment steps of --fsgan-version v1")
    p.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=None,
                   help="run the learned v2 chain through the pipelined executor: frames overlap on separate "
                        "upload/compute/download streams (default: on for torch on CUDA)")
    p.add_argument("--blend", choices=BLEND_MODES, default=None, help="blending of the weight-free chain")
    p.add_argument("--codec", default=None,
                   help="output video codec (default: libvpx-vp9 for .webm, else libx264; libx265 for a video of "
                        "more than 8 bits that was not H.264, such as a phone's HDR video)")
    p.add_argument("--crf", type=int, default=None, help="encoder quality, lower is better (default 17)")
    p.add_argument("--preset", default=None, help="encoder speed preset (default: the encoder's)")
    p.add_argument("--report", type=Path, default=None, metavar="JSON", help="write a JSON report here")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stream.swap import SwapOptions, run_swap

    options = SwapOptions(
        source=args.source, input=args.input, output=args.output, faces=args.faces, models=args.models,
        backend=args.backend, precision=args.precision, fsgan_version=args.fsgan_version, steps=args.steps,
        overlap=args.overlap, blend=args.blend, codec=args.codec, crf=args.crf, preset=args.preset,
        progress=not args.no_progress, report=args.report,
    )
    report = run_swap(options)
    summary = (f"facestream: wrote {report['output']}: {report['frames']} frames, "
               f"{report['frames_with_faces']} with faces, {report['fps']:.1f} fps")
    if report.get("input_truncated"):
        summary += " (input was cut short; processed up to the cut)"
    print(summary, file=sys.stderr)
    if args.verbose:
        print(json.dumps(report, indent=2), file=sys.stderr)
    return 0
