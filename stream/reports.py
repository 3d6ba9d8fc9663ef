"""Where a command writes: output paths checked before a run starts, JSON side outputs written whole.

A path is a user's typo away from an input: ``--report in.mp4`` must not replace the video the run reads,
and a missing directory must fail before minutes of work, not after them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stream.exceptions import OutputError
from stream.sinks import same_file, write_whole


def check_output_path(path: Path, option: str, protected: Mapping[str, Path | None]) -> None:
    """Raise :class:`OutputError` unless a file can be written at ``path`` without replacing any of
    ``protected`` (label -> path, e.g. ``{"INPUT": ..., "SOURCE": ...}``; None entries are skipped).

    ``option`` names the path in the messages (``OUTPUT``, ``--report``).
    """
    for label, other in protected.items():
        if other is not None and same_file(path, other):
            raise OutputError(f"{option} {path} is the same file as {label}; choose another name")
    if path.is_dir():
        raise OutputError(f"{option} {path} is a directory; give a file name inside it")
    check_parent_dir(path, option)


def check_parent_dir(path: Path, option: str) -> None:
    """Raise :class:`OutputError` unless ``path``'s directory exists and is writable."""
    parent = path.parent.resolve()
    if not parent.is_dir():
        raise OutputError(f"{option} directory does not exist: {path.parent}")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{option} directory is not writable: {path.parent}")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path``, whole (:func:`stream.sinks.write_whole`): a reader never
    sees half a report and a failed write leaves the previous file as it was."""
    write_whole(path, (json.dumps(data, indent=2) + "\n").encode())


__all__ = ["check_output_path", "check_parent_dir", "write_json"]
