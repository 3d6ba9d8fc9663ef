"""``facestream bench``: swap vs transcode floor (default), ``--engines``, or ``--live``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure throughput and latency; prints a table and writes JSON",
                       description="Default: per-step time of a swap of INPUT and its ratio to the transcode "
                                   "floor (decode + encode alone) measured in the same run.")
    p.add_argument("input", type=Path, nargs="?", metavar="INPUT", help="video to benchmark the swap on")
    p.add_argument("--source", type=Path, default=None,
                   help="face to put in (default: the demo's public-domain face)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each measurement; the best is kept")
    p.add_argument("--crf", type=int, default=None)
    p.add_argument("--preset", default=None)
    p.add_argument("--json", type=Path, default=Path("bench.json"), metavar="PATH", help="write results here")
    p.add_argument("--breakdown", action="store_true",
                   help="also run tracking alone and the stages alone: what each adds to the transcode floor")
    p.add_argument("--engines", action="store_true",
                   help="benchmark the FSGAN networks per backend and precision instead")
    p.add_argument("--live", action="store_true", help="benchmark live latency over loopback WebRTC instead")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of the --live run")
    p.add_argument("--batch", type=int, default=1, help="faces per call for --engines")
    p.add_argument("--device", default=None, help="torch device for --engines (default: cuda if available)")
    p.add_argument("--tiny", action="store_true", help="--engines on the tiny test variants (quick smoke run)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stream.exceptions import InputError
    from stream.reports import check_output_path, write_json

    check_output_path(args.json, "--json", {"INPUT": args.input, "--source": args.source})
    for flag, value in (("--repeat", args.repeat), ("--batch", args.batch)):
        if value < 1:
            raise InputError(f"{flag} must be at least 1, got {value}")
    if not args.duration > 0:
        raise InputError(f"--duration must be a positive number of seconds, got {args.duration:g}")
    if args.engines:
        from stream.bench_engines import run_engine_bench

        result = run_engine_bench(batch=args.batch, device=args.device, tiny=args.tiny)
        print(result.pop("table"))
    elif args.live:
        from stream.bench_live import run_live_bench

        result = run_live_bench(duration=args.duration, input=args.input)
        print(result.pop("table"))
    else:
        from stream.bench import format_swap_table, run_bench_swap

        if args.input is None:
            raise InputError("bench needs INPUT (a video), or --engines / --live")
        source = args.source
        if source is None:
            from stream.demo import sample_faces

            source = sample_faces()[1]
        if args.breakdown:
            from stream.bench import format_breakdown_table, run_bench_breakdown

            result = run_bench_breakdown(args.input, source, repeat=args.repeat, crf=args.crf, preset=args.preset)
            print(format_breakdown_table(result))
        else:
            result = run_bench_swap(args.input, source, repeat=args.repeat, crf=args.crf, preset=args.preset)
            print(format_swap_table(result))
    write_json(args.json, result)
    print(f"facestream: wrote {args.json}", file=sys.stderr)
    return 0
