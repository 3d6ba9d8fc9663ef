"""On-disk cache of built TensorRT engines (serialized plans).

A plan is only valid for the exact ONNX graph, TensorRT version and GPU architecture it was built
for, at the precision and shape profile it was built with, so the key is all five. Each entry is
two files: ``<digest>.plan`` and ``<digest>.json`` (the key's fields plus the plan's sha256). Both
are written atomically (temporary file in the same directory, then ``os.replace``), the JSON last,
so a reader never sees a half-written entry as valid. An entry whose JSON is unreadable, whose
fields differ from the key, or whose plan hash does not match is removed and reported as a miss:
the caller rebuilds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["EngineCache", "EngineCacheKey", "atomic_write_bytes", "default_cache_dir", "file_sha256"]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$FACESTREAM_CACHE`` or ``$XDG_CACHE_HOME/facestream`` (``~/.cache/facestream``), ``/engines``."""
    root = os.environ.get("FACESTREAM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "facestream"
    )
    return Path(root) / "engines"


def file_sha256(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def temp_beside(path: Path, suffix: str = ".tmp") -> Path:
    """Create an empty hidden file next to ``path`` (ending in ``suffix``) to write in full and then
    ``os.replace`` onto ``path``.

    The file gets the permissions any new file of the user gets (``0666`` less the umask), which
    :func:`tempfile.mkstemp`'s private ``0600`` would hand on to the output: a video, report or engine
    nobody else on the machine, nor a web server, could read. (Media outputs and reports use it too.)"""
    for _ in range(100):
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name next to {path}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class EngineCacheKey:
    """What a built engine depends on."""

    onnx_sha256: str
    """sha256 of the ONNX file the engine was built from."""
    tensorrt_version: str
    """``tensorrt.__version__`` of the builder."""
    compute_capability: tuple[int, int]
    """GPU architecture, e.g. ``(9, 0)`` for H100."""
    precision: str
    """``fp16``/``fp32`` (a strongly typed build takes it from the graph, but it names the entry)."""
    profile: str
    """Canonical text of the optimisation profile (:meth:`ShapeProfile.key`)."""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["compute_capability"] = list(self.compute_capability)
        return data

    def digest(self) -> str:
        """Stable hex digest of every field (the entry's file name)."""
        text = json.dumps({"format": CACHE_FORMAT, **self.as_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:40]


class EngineCache:
    """A directory of serialized engines keyed by :class:`EngineCacheKey`."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def plan_path(self, key: EngineCacheKey) -> Path:
        return self.root / f"{key.digest()}.plan"

    def meta_path(self, key: EngineCacheKey) -> Path:
        return self.root / f"{key.digest()}.json"

    def invalidate(self, key: EngineCacheKey) -> None:
        """Remove an entry (missing files are fine)."""
        for path in (self.meta_path(key), self.plan_path(key)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def load(self, key: EngineCacheKey) -> bytes | None:
        """The cached plan, or ``None`` on a miss; a corrupt or mismatched entry is removed."""
        meta_path, plan_path = self.meta_path(key), self.plan_path(key)
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            plan = plan_path.read_bytes()
        except (OSError, ValueError) as exc:
            logger.warning("engine cache entry %s unreadable (%s); rebuilding", meta_path.name, exc)
            self.invalidate(key)
            return None
        problem = None
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            problem = "unknown format"
        elif meta.get("key") != key.as_dict():
            problem = "key fields differ"
        elif meta.get("plan_sha256") != hashlib.sha256(plan).hexdigest():
            problem = "plan checksum differs"
        if problem:
            logger.warning("engine cache entry %s invalid (%s); rebuilding", meta_path.name, problem)
            self.invalidate(key)
            return None
        return plan

    def store(self, key: EngineCacheKey, plan: bytes) -> Path:
        """Write an entry atomically; returns the plan's path."""
        plan_path = self.plan_path(key)
        atomic_write_bytes(plan_path, plan)
        meta = {"format": CACHE_FORMAT, "key": key.as_dict(), "plan_sha256": hashlib.sha256(plan).hexdigest()}
        atomic_write_bytes(self.meta_path(key), json.dumps(meta, indent=1, sort_keys=True).encode())
        logger.info("engine cache: stored %s (%d bytes)", plan_path.name, len(plan))
        return plan_path

    def get_or_build(self, key: EngineCacheKey, build: Callable[[], bytes]) -> bytes:
        """The cached plan, building and storing it on a miss."""
        plan = self.load(key)
        if plan is not None:
            logger.info("engine cache: hit %s", self.plan_path(key).name)
            return plan
        plan = build()
        self.store(key, plan)
        return plan
