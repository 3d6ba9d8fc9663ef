"""The learned FSGAN chain from a directory of checkpoints: ``facestream swap --models fsgan:DIR``.

Checkpoints are found by their released file names (``download_fsgan_models.py`` of YuvalNirkin/fsgan)
or by our registry names (``fsgan_reenactment_v2.pth``...), loaded with ``engines.load_checkpoint``
(safe: parsed architecture, ``weights_only``) and wrapped in engines (torch, onnxruntime, TensorRT).
Resolution and crop scale come from the released name (``..._256_1_2_...`` = 256 px at crop scale
1.2), else from the registry config.

:func:`write_tiny_models` writes tiny random networks in the official checkpoint format under the
released names, so the whole chain can run in tests and CI without the real weights.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from stream.choices import Backend, FaceSelection, Precision
from stream.exceptions import InputError, InputNotFoundError
from stream.stages.base import CropSpec, Stage, StageChain
from stream.stages.fsgan import (
    FACE_CLASS,
    Engine,
    FsganBlender,
    FsganCompleter,
    FsganReenactorV1,
    FsganReenactorV2,
    FsganSegmenter,
)

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

FsganVersion = Literal["v1", "v2"]
FSGAN_VERSIONS: tuple[str, ...] = ("v1", "v2")

CHAIN_CROP = CropSpec(size=256, scale=1.2)
"""How the learned chain cuts target faces (FSGAN v2's resolution and crop scale)."""


@dataclass(frozen=True)
class ModelRole:
    """One network of the chain and the file names it may have, preferred first."""

    role: str
    network: str
    """Registry name (``engines.list_networks``)."""
    files: tuple[str, ...]


def _role(role: str, network: str) -> ModelRole:
    """The released file names come from the registry (preferred first), then our registry name."""
    from engines import get_network_config

    return ModelRole(role, network, (*get_network_config(network).weight_files, f"{network}.pth"))


ROLES: dict[str, ModelRole] = {
    "reenact_v2": _role("reenact_v2", "fsgan_reenactment_v2"),
    "reenact_v1": _role("reenact_v1", "fsgan_reenactment_v1"),
    "segment": _role("segment", "fsgan_segmentation_v2"),
    "complete": _role("complete", "fsgan_inpainting_v2"),
    "blend": _role("blend", "fsgan_blending_v2"),
}

_NAME_GEOMETRY = re.compile(r"_(\d+)_(\d+)_(\d+)_")

EngineFactory = Callable[..., Engine]
"""``factory(model, backend=, precision=, max_batch=) -> Engine``; ``engines.create_engine`` by default."""


def _roles(version: str) -> tuple[str, ...]:
    if version not in FSGAN_VERSIONS:
        raise InputError(f"unknown FSGAN version {version!r}; choose from: {', '.join(FSGAN_VERSIONS)}")
    return (f"reenact_{version}", "segment", "complete", "blend")


def find_models(models_dir: str | Path, version: str = "v2") -> dict[str, Path]:
    """The checkpoint of each role of the ``version`` chain in ``models_dir``.

    Raises:
        InputNotFoundError: the directory, or a network of the chain, is missing (the message lists
            the file names looked for).
    """
    root = Path(models_dir)
    if not root.is_dir():
        raise InputNotFoundError(f"models directory {str(root)!r} does not exist")
    found: dict[str, Path] = {}
    for role in _roles(version):
        spec = ROLES[role]
        path = next((root / f for f in spec.files if (root / f).is_file()), None)
        if path is None:
            raise InputNotFoundError(f"no {spec.network} checkpoint in {str(root)!r}; expected one of: "
                                     f"{', '.join(spec.files)}")
        found[role] = path
    return found


def geometry(path: Path, network: str) -> tuple[int, float]:
    """``(resolution, crop_scale)`` of a checkpoint: from a released name, else the registry."""
    m = _NAME_GEOMETRY.search(path.name)
    if m:
        return int(m.group(1)), float(f"{m.group(2)}.{m.group(3)}")
    import engines

    config = engines.get_network_config(network)
    return int(config.input_size), float(config.crop_scale)


def _default_factory(model: nn.Module, *, backend: Backend, precision: Precision, max_batch: int) -> Engine:
    import engines

    return engines.create_engine(model, backend=backend, precision=precision, max_batch=max_batch)


def learned_chain(
    models_dir: str | Path,
    *,
    backend: Backend = "auto",
    precision: Precision = "fp32",
    faces: FaceSelection = "all",
    version: FsganVersion = "v2",
    steps: int = 2,
    min_radius: float = 2.0,
    remove_mouth: bool = False,
    max_faces: int = 4,
    engine_factory: EngineFactory | None = None,
) -> StageChain:
    """The FSGAN chain reenact -> segment -> complete -> blend from the checkpoints in ``models_dir``.

    Args:
        models_dir: Directory holding the checkpoints (released or registry file names).
        backend: Engine backend for every network (``auto`` picks the best available).
        precision: Engine precision.
        faces: Which target faces to swap.
        version: ``v2`` (appearance-map reenactment) or ``v1`` (stepwise reenactment); both use the
            v2 segmentation, inpainting and blending networks.
        steps: Reenactment passes of v1 (ignored by v2).
        min_radius: Degrees within which v2 fuses near-identical source poses.
        remove_mouth: Keep the target's inner mouth (FSGAN's ``seg_remove_mouth``).
        max_faces: Faces per engine batch; a frame with more runs in several batches. v2's reenactor
            batches up to three source frames per face, the segmenter two images per face.
        engine_factory: ``factory(model, backend=, precision=, max_batch=) -> Engine``; defaults to
            ``engines.create_engine``.

    Raises:
        InputNotFoundError: a checkpoint is missing.
        InputError: an option is invalid.
    """
    import engines

    if max_faces < 1:
        raise InputError(f"max_faces must be at least 1, got {max_faces}")
    paths = find_models(models_dir, version)
    factory = engine_factory or _default_factory
    batch = {"reenact_v2": 3 * max_faces, "reenact_v1": max_faces, "segment": 2 * max_faces,
             "complete": max_faces, "blend": max_faces}
    built: dict[str, tuple[Engine, int, float]] = {}
    for role, path in paths.items():
        network = ROLES[role].network
        resolution, crop_scale = geometry(path, network)
        logger.info("loading %s from %s (%d px, crop scale %.1f)", network, path.name, resolution, crop_scale)
        model = engines.load_checkpoint(path, network=network)
        engine = factory(model, backend=backend, precision=precision, max_batch=batch[role])
        built[role] = (engine, resolution, crop_scale)
    stages: list[Stage] = []
    engine, res, scale = built[f"reenact_{version}"]
    if version == "v2":
        stages.append(FsganReenactorV2(engine, resolution=res, crop_scale=scale, min_radius=min_radius,
                                       max_batch=batch["reenact_v2"]))
    else:
        stages.append(FsganReenactorV1(engine, steps=steps, resolution=res, crop_scale=scale,
                                       max_batch=batch["reenact_v1"]))
    for role in ("segment", "complete", "blend"):
        res = built[role][1]
        if res != CHAIN_CROP.size:
            raise InputError(f"{paths[role].name} works at {res} px; the chain needs {CHAIN_CROP.size}")
    # v1's Gr segments its own output, so S only needs to segment the target.
    stages.append(FsganSegmenter(built["segment"][0], remove_mouth=remove_mouth,
                                 segment_reenacted=version == "v2", max_batch=batch["segment"]))
    stages.append(FsganCompleter(built["complete"][0], max_batch=batch["complete"]))
    stages.append(FsganBlender(built["blend"][0], max_batch=batch["blend"]))
    return StageChain(stages, CHAIN_CROP, faces)


def write_tiny_models(directory: str | Path, version: str = "all", *, seed: int = 0) -> dict[str, Path]:
    """Write tiny random networks as official-format checkpoints under the released file names.

    The ``.tiny`` registry variants (random weights) are saved as ``{'arch', 'state_dict',
    'resolution', 'epoch'}``, as FSGAN saves them. Random segmentation logits are nearly constant, so
    the segmentation network's last bias is tilted towards the face class: the masks then cover the
    crop and the chain's blend and paste are exercised. For tests and CI only.
    """
    import torch

    import engines

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    roles = (*_roles("v1"), "reenact_v2") if version == "all" else _roles(version)
    torch.manual_seed(seed)
    written: dict[str, Path] = {}
    for role in dict.fromkeys(roles):
        spec = ROLES[role]
        config = engines.get_network_config(f"{spec.network}.tiny")
        model = engines.create_network(config.name)
        state: dict[str, Any] = model.state_dict()
        if role == "segment":
            bias = next(k for k in reversed(list(state)) if k.endswith("bias"))
            state[bias] = state[bias].clone()
            state[bias][FACE_CLASS] += 4.0
        path = out / spec.files[0]
        torch.save({"arch": config.arch, "state_dict": state, "resolution": 256, "epoch": 0}, path)
        written[role] = path
    return written
