"""``facestream serve [--host 127.0.0.1] [--port 8080]``: the live page over WebRTC."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from stream.choices import BLEND_MODES, FACE_SELECTIONS


def add_server_arguments(p: argparse.ArgumentParser, *, default_port: int | None = 8080) -> None:
    """The listening options shared by ``serve`` and ``live --serve``."""
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1); beyond loopback a --token is required")
    p.add_argument("--port", type=int, default=default_port, help=f"TCP port (default {default_port})")
    p.add_argument("--token", default=os.environ.get("FACESTREAM_TOKEN"),
                   help="shared secret the page and API calls must present (default: $FACESTREAM_TOKEN)")
    p.add_argument("--max-sessions", type=int, default=4, help="concurrent peer connections (default 4)")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body in MiB (default 8)")


def server_config(args: argparse.Namespace) -> object:
    from stream.exceptions import InputError
    from stream.serving.server import ServerConfig

    if not args.max_body_mb > 0:
        raise InputError(f"--max-body-mb must be positive, got {args.max_body_mb:g}")
    return ServerConfig(host=args.host, port=args.port, token=args.token, max_sessions=args.max_sessions,
                        max_body_bytes=int(args.max_body_mb * 1024 * 1024))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the live page: camera in, swapped stream back (WebRTC)",
                       description="Serve a page where a person allows the camera, picks or uploads a source "
                                   "face and sees the processed stream with its fps and latency. /metrics is "
                                   "Prometheus, /healthz a liveness probe. Stops cleanly on SIGTERM/SIGINT.")
    add_server_arguments(p)
    p.add_argument("--faces", choices=FACE_SELECTIONS, default="largest",
                   help="which faces of the camera to swap (default: largest)")
    p.add_argument("--blend", choices=BLEND_MODES, default=None, help="blending of the weight-free chain")
    p.set_defaults(func=run)


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (graceful shutdown) instead of killing the process."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def _serve(args: argparse.Namespace) -> None:
    from stream.live import swap_processor_factory
    from stream.serving.server import FacestreamServer

    server = FacestreamServer(swap_processor_factory(faces=args.faces, blend=args.blend), server_config(args))
    stop = asyncio.Event()
    install_stop_signals(stop)
    url = await server.start()
    print(f"facestream: serving on {url} (Ctrl+C or SIGTERM to stop)", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        print("facestream: shutting down", file=sys.stderr, flush=True)
        await server.close()


def run(args: argparse.Namespace) -> int:
    asyncio.run(_serve(args))
    return 0
