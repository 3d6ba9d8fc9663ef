"""Errors raised by the ``engines`` package.

Each class also inherits the builtin that fits, so callers may catch either. Messages are one line
naming the bad value and, where there is a fixed set, the valid options. ``engines`` never imports
``stream``: the CLI maps :class:`EnginesError` to an exit code itself.
"""

from __future__ import annotations


class EnginesError(Exception):
    """Base class of every error raised by ``engines``."""


class ArchitectureError(EnginesError, ValueError):
    """An architecture string is malformed, names an unknown class or contains anything but literals."""


class UnknownNetworkError(EnginesError, ValueError):
    """A network name is not in the registry."""


class CheckpointError(EnginesError, ValueError):
    """A checkpoint cannot be loaded: unsafe pickle, unknown layout, or keys/shapes that do not match."""


class ChecksumError(CheckpointError):
    """A file's sha256 differs from the expected one."""


class ExportError(EnginesError, RuntimeError):
    """An export failed or its parity check against torch did not pass."""


class BackendUnavailableError(EnginesError, RuntimeError):
    """A backend (TensorRT, CUDA, ONNX Runtime provider) is not installed or has no device here."""
