"""The ``facestream`` command line.

Each subcommand lives in ``stream/commands/<name>.py`` and exposes ``register(subparsers)`` (adds its
parser, with ``func`` set to a callable taking the parsed args and returning an exit code). This
module only dispatches and turns errors into one line and an exit code; library code never exits.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from stream import __version__
from stream.exceptions import FacestreamError
from stream.nativelog import filtered_native_stderr

# Subcommand modules, in the order `facestream --help` lists them.
COMMANDS = ("swap", "bench", "demo", "models", "export", "live", "serve")

# Commands that run the frame pipeline. It works on several frames and stages at once already, so
# OpenCV's own thread pool only adds hand-offs on face-sized crops: a keyframe and one step of optical
# flow took 1.8 ms of CPU with it against 1.1 ms without, in the same wall time.
PIPELINE_COMMANDS = frozenset({"swap", "bench", "demo", "live", "serve"})

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process the signal killed


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``docker stop``, systemd), handled as Ctrl-C is: the same clean-up runs (the
    partial output is removed) instead of the process dying with its temporary file."""


class _SigtermAsInterrupt:
    """For the duration, SIGTERM takes Ctrl-C's path (main thread only; the servers install their own
    graceful handlers on the event loop, which take over while it runs).

    It raises SIGINT rather than an exception of its own: inside ``asyncio.run`` Python's SIGINT handler
    cancels the main task, which every ``await`` honours, whereas an exception raised by a signal handler
    lands on whatever bytecode runs at that moment, where a ``__del__`` or a catch-all may swallow it (a
    SIGTERM test run once finished its 600 frames and exited 0).
    """

    def __init__(self) -> None:
        self.terminated = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.terminated = True
        if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
            raise Terminated  # SIGINT is not Python's to handle (a background job): no other way
        signal.raise_signal(signal.SIGINT)

    def __enter__(self) -> _SigtermAsInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facestream",
        description="Real-time face swap, reenactment and restoration. Outputs are marked as synthetic.",
    )
    parser.add_argument("--version", action="version", version=f"facestream {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"stream.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"stream.commands.{name}":
                raise
            continue  # command not built yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``facestream`` and ``python -m stream``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="facestream: %(levelname)s: %(message)s")
    if args.command in PIPELINE_COMMANDS:
        import cv2

        cv2.setNumThreads(1)
    sigterm = _SigtermAsInterrupt()
    try:
        # argv None: running as the program (tests pass theirs), which exits right after this returns.
        with sigterm, filtered_native_stderr(until_exit=argv is None):
            return int(args.func(args) or 0)
    except FacestreamError as exc:
        print(f"facestream: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        if sigterm.terminated:
            print("facestream: terminated", file=sys.stderr)
            return EXIT_TERMINATED
        print("facestream: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
