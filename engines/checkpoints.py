"""One safe loader for FSGAN checkpoints and plain state dicts.

* Files are read with ``torch.load(weights_only=True)``: a pickle that would construct arbitrary
  objects (and so run code) is refused, never executed.
* The architecture string in official checkpoints is parsed by :mod:`engines.archstring`, never
  evaluated.
* Loading is strict; a mismatch raises :class:`~engines.exceptions.CheckpointError` after logging
  the full key diff (missing, unexpected, shape mismatches).
* A sha256 is verified before the file is unpickled when one is given or the file name is that of
  a registered network with a known hash.

Layouts understood: the official dict ``{'arch', 'state_dict', 'resolution', 'epoch'}``; a plain
state dict (architecture then comes from ``arch=`` or ``network=``); either with DataParallel's
``module.`` prefixes; and, for multi-scale generators, a state dict of the global generator alone
(FSGAN's own loader accepts it too; see :func:`engines.networks.res_unet.checkpoint_filter_fn`).
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engines.archstring import build_from_arch, parse_arch
from engines.cache import file_sha256
from engines.exceptions import CheckpointError, ChecksumError
from engines.networks.res_unet import MultiScaleResUNet, checkpoint_filter_fn
from engines.registry import NetworkConfig, get_network_config, list_networks, network_for_weight_file

__all__ = ["build", "file_sha256", "load_checkpoint", "load_state_dict_strict"]

logger = logging.getLogger(__name__)

_DIFF_PREVIEW = 5


def build(arch: str) -> nn.Module:
    """Build the network an architecture string describes (fresh weights, eval mode).

    Raises:
        ArchitectureError: the string is not a call of a known class with literal keyword arguments.
    """
    model = build_from_arch(arch)
    model.arch = parse_arch(arch).canonical()  # type: ignore[assignment]
    return model.eval()


def _strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return dict(state_dict)


def _preview(keys: list[str]) -> str:
    shown = ", ".join(keys[:_DIFF_PREVIEW])
    return shown + (f", ... (+{len(keys) - _DIFF_PREVIEW})" if len(keys) > _DIFF_PREVIEW else "")


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = ""
) -> None:
    """Load ``state_dict`` into ``model`` requiring identical keys and shapes.

    Raises:
        CheckpointError: keys missing, unexpected or of another shape; the full diff is logged.
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key} {tuple(state_dict[key].shape)} != {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or mismatched:
        where = f" from {source}" if source else ""
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            for key in keys:
                logger.error("state_dict%s: %s: %s", where, title, key)
        parts = [
            f"{len(keys)} {title} ({_preview(keys)})"
            for title, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", mismatched),
            )
            if keys
        ]
        raise CheckpointError(f"state_dict{where} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def _verify(path: Path, sha256: str) -> None:
    actual = file_sha256(path)
    if actual.lower() != sha256.lower():
        raise ChecksumError(f"{path}: sha256 {actual} does not match the expected {sha256}")
    logger.info("%s: sha256 verified", path)


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    # torch.save writes a zip archive (or, before 1.6, a pickle): anything else, e.g. an ONNX graph,
    # would only get unpickling's long complaint.
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise CheckpointError(f"{path}: not a torch checkpoint (torch.save writes a zip archive or a pickle)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses globals outside torch's allow-list; report it without the long hint text.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.split(". ")[0]  # torch's first line goes on with advice on weights_only=False
        raise CheckpointError(
            f"{path}: refused: the file needs code to unpickle (weights_only=True): {first}"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint: {exc}") from exc


def _config_for_arch(canonical: str) -> NetworkConfig | None:
    """The registered network with this architecture (e.g. a ``.tiny`` variant), for I/O names/sizes."""
    for name in list_networks():
        config = get_network_config(name)
        if parse_arch(config.arch).canonical() == canonical:
            return config
    return None


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    map_location: str | torch.device = "cpu",
    sha256: str | None = None,
    arch: str | None = None,
    network: str | NetworkConfig | None = None,
) -> nn.Module:
    """Load a checkpoint into a freshly built network and return it in eval mode.

    Args:
        path: ``.pth``/``.pt`` file.
        map_location: Where tensors are loaded (``torch.load``'s argument).
        sha256: Expected hex sha256 of the file; when ``None`` the registry's hash for this file name
            is used if known, otherwise the file is not verified.
        arch: Architecture string for plain state dicts, or to override the file's own.
        network: Registered network name (or config) giving the architecture and the I/O config.

    Returns:
        The network (eval mode). ``model.arch`` is the canonical architecture string and
        ``model.network_config`` the registry config when the network is known (by name, by weight
        file name, or by an identical architecture).

    Raises:
        CheckpointError: unreadable or unsafe file, unknown layout, or a key/shape mismatch.
        ChecksumError: the sha256 does not match.
        ArchitectureError: the architecture string is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    config = get_network_config(network) if isinstance(network, str) else network
    if config is None:
        config = network_for_weight_file(path.name)
    expected_sha = sha256 or (config.sha256 if config is not None else None)
    if expected_sha:
        _verify(path, expected_sha)
    else:
        logger.debug("%s: no sha256 known, not verified", path)

    obj = _torch_load(path, map_location)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        state_dict = obj["state_dict"]
        file_arch = obj.get("arch")
        if file_arch is not None and not isinstance(file_arch, str):
            raise CheckpointError(f"{path}: 'arch' must be a string, found {type(file_arch).__name__}")
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state_dict, file_arch = obj, None
    else:
        raise CheckpointError(
            f"{path}: unknown layout with keys {_preview(sorted(map(str, obj)))}; expected "
            "{'arch', 'state_dict', ...} or a plain state_dict"
        )

    chosen_arch = arch or file_arch or (config.arch if config is not None else None)
    if chosen_arch is None:
        raise CheckpointError(f"{path}: a plain state_dict needs arch= or network= to know what to build")
    if arch and file_arch and parse_arch(arch).canonical() != parse_arch(file_arch).canonical():
        logger.warning("%s: using arch %r instead of the file's %r", path, arch, file_arch)

    model = build(chosen_arch)
    if config is None:
        config = _config_for_arch(model.arch)
    state_dict = _strip_prefix(state_dict)
    if isinstance(model, MultiScaleResUNet):
        state_dict = checkpoint_filter_fn(state_dict, model)
    load_state_dict_strict(model, state_dict, source=str(path))
    if config is not None:
        model.network_config = config  # type: ignore[assignment]
    if torch.device(map_location).type != "cpu":
        model.to(map_location)
    logger.info(
        "loaded %s (%s, epoch %s, resolution %s)",
        path.name,
        model.arch,
        obj.get("epoch", "?"),
        obj.get("resolution", "?"),
    )
    return model.eval()
