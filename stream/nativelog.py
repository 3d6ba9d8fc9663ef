"""Keeps MediaPipe/TFLite's (and SVT-AV1's) native log noise off the terminal of the CLI.

MediaPipe's C++ code writes informational lines straight to file descriptor 2 ("INFO: Created TensorFlow
Lite XNNPACK delegate", absl ``W0000 ...`` warnings), whatever the environment says. The CLI promises a
one-line error, so it routes fd 2 through a pipe: known noise goes to the debug log, anything else is passed
on unchanged. Python's own ``sys.stderr`` keeps writing to the real terminal directly.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator

logger = logging.getLogger(__name__)

NOISE = re.compile(
    rb"^(?:[IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\]"  # absl/glog INFO and WARNING lines
    rb"|INFO: Created TensorFlow Lite .*delegate"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|Svt\[(?:info|warn)\]: )"  # SVT-AV1's banner and notes (its errors pass)
)


@contextlib.contextmanager
def filtered_native_stderr(*, until_exit: bool = False) -> Iterator[None]:
    """Route fd 2 through a filter for the duration of the block (no-op where fd 2 cannot be replaced).

    ``until_exit``: keep filtering after the block, until the process ends. For the CLI as a program: a
    run stopped early (an error, Ctrl-C) returns while MediaPipe's graph threads may still be starting up,
    and what they print then would otherwise land after the one-line message. Native lines printed while
    the interpreter shuts down are dropped.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    real = io.TextIOWrapper(io.FileIO(os.dup(saved), "w"), line_buffering=True, errors="backslashreplace")
    old_stderr = sys.stderr
    sys.stderr = real

    def pump() -> None:
        with io.FileIO(read_fd, "r") as pipe:
            for line in pipe:
                if NOISE.match(line):
                    logger.debug("native: %s", line.rstrip().decode(errors="replace"))
                else:
                    os.write(saved, line)

    thread = threading.Thread(target=pump, name="facestream-native-stderr", daemon=True)
    thread.start()

    def drain_into(fd: int) -> None:
        """Point fd 2 at ``fd``; that closes the pipe's last write end, and the pump passes on what is
        left in it before it sees EOF."""
        with contextlib.suppress(Exception):
            real.flush()
        os.dup2(fd, 2)
        thread.join(timeout=2)

    def restore() -> None:
        drain_into(saved)
        sys.stderr = old_stderr
        real.close()
        os.close(saved)

    def silence() -> None:
        # At exit: what native threads still print while the interpreter shuts down goes nowhere.
        # Python's own messages keep the real stderr (sys.stderr stays ``real``).
        null = os.open(os.devnull, os.O_WRONLY)
        drain_into(null)
        os.close(null)

    try:
        yield
    finally:
        if until_exit:
            atexit.register(silence)
        else:
            restore()
