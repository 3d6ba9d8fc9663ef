"""The ``facestream`` command line.

Each subcommand lives in ``stream/commands/<name>.py`` and exposes ``register(subparsers)`` (adds its
parser, with ``func`` set to a callable taking the parsed args and returning an exit code). This
module only dispatches and turns errors into one line and an exit code; library code never exits.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

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
    """SIGTERM (``kill``, ``docker stop``, systemd), raised where Ctrl-C would be: the same clean-up
    runs (the partial output is removed) instead of the process dying with its temporary file."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` for the duration (main thread only; the servers install
    their own graceful handlers on the event loop, which take over while it runs)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    try:
        # argv None: running as the program (tests pass theirs), which exits right after this returns.
        with _sigterm_as_interrupt(), filtered_native_stderr(until_exit=argv is None):
            return int(args.func(args) or 0)
    except FacestreamError as exc:
        print(f"facestream: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Terminated:
        print("facestream: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("facestream: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
