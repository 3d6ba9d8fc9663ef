"""``facestream live --source FACE INPUT [-o OUTPUT]``: swap a camera stream as it comes."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from stream.choices import FACE_SELECTIONS
from stream.commands.serve import add_server_arguments, install_stop_signals, server_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("live", help="swap faces in a live stream (RTSP, v4l2 or a real-time file)",
                       description="INPUT is an rtsp:// URL (TCP, reconnects with backoff), a v4l2 device "
                                   "(/dev/videoN) or a video file paced in real time. OUTPUT is a recording "
                                   "file, an rtsp:// push or a v4l2 loopback device (/dev/videoN, needs "
                                   "pyvirtualcam). With --serve the stream is also viewable on the page.")
    p.add_argument("input", metavar="INPUT", help="rtsp://..., /dev/videoN or a video file")
    p.add_argument("--source", "-s", type=Path, required=True, metavar="FACE", help="image of the face to put in")
    p.add_argument("-o", "--output", default=None, metavar="OUTPUT",
                   help="recording file, rtsp:// push URL or /dev/videoN loopback")
    p.add_argument("--faces", choices=FACE_SELECTIONS, default="largest", help="which faces (default: largest)")
    p.add_argument("--fps", type=float, default=30.0, help="nominal output frame rate (default 30)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--report", type=Path, default=None, metavar="JSON", help="write the run's report here")
    p.add_argument("--serve", action="store_true", help="also serve the page, with this stream as its live feed")
    add_server_arguments(p)
    p.set_defaults(func=run)


async def _live(args: argparse.Namespace) -> dict:
    from stream.live import LiveOptions, run_live, swap_processor_factory
    from stream.serving.feed import LiveFeed
    from stream.serving.server import FacestreamServer

    options = LiveOptions(source=args.source, input=args.input, output=args.output, faces=args.faces,
                          fps=args.fps, duration=args.duration)
    if not options.source.is_file():
        from stream.exceptions import InputNotFoundError

        raise InputNotFoundError(f"SOURCE not found: {options.source}")
    stop = asyncio.Event()
    install_stop_signals(stop)
    server = feed = None
    if args.serve:
        feed = LiveFeed()
        server = FacestreamServer(swap_processor_factory(faces=args.faces), server_config(args), feed=feed)
        url = await server.start()
        print(f"facestream: live feed viewable on {url}", file=sys.stderr, flush=True)

    def on_frame(frame, latency):  # type: ignore[no-untyped-def]
        if feed is not None:
            feed.publish(frame)
        if server is not None:
            server.metrics.observe(frame, latency)

    try:
        return await run_live(options, stop=stop, on_frame=on_frame)
    finally:
        if feed is not None:
            feed.close()
        if server is not None:
            await server.close()


def run(args: argparse.Namespace) -> int:
    from stream.live import input_kind, output_kind
    from stream.reports import check_output_path, write_json

    if args.report is not None:  # now, not after a long session
        check_output_path(args.report, "--report", {
            "INPUT": Path(args.input) if input_kind(args.input) == "file" else None, "SOURCE": args.source,
            "OUTPUT": Path(args.output) if args.output and output_kind(args.output) == "file" else None})
    report = asyncio.run(_live(args))
    text = json.dumps(report, indent=2)
    if args.report is not None:
        write_json(args.report, report)
    lat = report["latency_ms"]
    print(f"facestream: {report['frames_out']} frames out of {report['frames_in']} captured, "
          f"{report['dropped']} dropped, {report['reconnects']} reconnects, added latency p50 {lat['p50']} ms "
          f"p95 {lat['p95']} ms", file=sys.stderr)
    print(text)
    return 0
