"""Errors raised by the ``stream`` package.

Each class also inherits the builtin that fits, so callers may catch either. Messages name the bad
value and, where there is a fixed set, the valid options. Only the CLI turns these into exit codes.
"""

from __future__ import annotations


class FacestreamError(Exception):
    """Base class of every error that facestream reports to a user as one line."""


class InputError(FacestreamError, ValueError):
    """An input (video, image, URL, option) cannot be used."""


class InputNotFoundError(InputError, FileNotFoundError):
    """An input path does not exist."""


class UnsupportedMediaError(InputError):
    """The file is not a video/image facestream can decode (unknown container or codec)."""


class TruncatedMediaError(InputError):
    """The file ends before its index says it should (e.g. an MP4 with no ``moov`` atom)."""


class NoFaceError(InputError):
    """No face was found where one is required (the SOURCE of a swap)."""


class OutputError(FacestreamError, OSError):
    """The output cannot be written (same as the input, unwritable directory, encoder failure)."""


class StageError(FacestreamError, RuntimeError):
    """A processing stage failed; the pipeline was shut down."""

    def __init__(self, stage: str, frame_index: int | None, cause: BaseException) -> None:
        where = f" at frame {frame_index}" if frame_index is not None else ""
        super().__init__(f"stage {stage!r} failed{where}: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.frame_index = frame_index
        self.__cause__ = cause


class EndOfStream(FacestreamError, EOFError):
    """Raised by ``recv()`` of a track once its last frame has been delivered."""
