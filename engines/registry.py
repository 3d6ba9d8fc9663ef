"""Registry of networks by name, each with a frozen :class:`NetworkConfig`.

Names follow timm's ``architecture.tag`` form: ``fsgan_reenactment_v2`` is the released network,
``fsgan_reenactment_v2.tiny`` the same class at a small width for tests and CI (random weights, no
file). Network modules register themselves with :func:`register_network`; the registry imports
``engines.networks`` on first use so that every name is known.

    >>> from engines import list_networks
    >>> list_networks("fsgan_*_v2")
    ['fsgan_blending_v2', 'fsgan_inpainting_v2', 'fsgan_reenactment_v2', 'fsgan_segmentation_v2']
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from engines.exceptions import UnknownNetworkError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "NetworkConfig",
    "create_network",
    "get_network_config",
    "list_networks",
    "network_for_weight_file",
    "register_network",
]

FSGAN_SOURCE = "https://github.com/YuvalNirkin/fsgan"
FSGAN_LICENSE = "CC0-1.0 (code and released weights, YuvalNirkin/fsgan)"


def _batch_axes(names: tuple[str, ...]) -> Mapping[str, Mapping[int, str]]:
    return {name: {0: "batch"} for name in names}


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to build, feed, export and fetch one network (timm's ``PretrainedCfg``)."""

    name: str
    """Registry name, ``architecture`` or ``architecture.tag``."""
    arch: str
    """FSGAN architecture string ``module.Class(kwargs)``, parsed (never evaluated) by ``archstring``."""
    task: str
    """Its job in the chain: ``reenactment``, ``segmentation``, ``inpainting`` or ``blending``."""
    description: str = ""
    """One line for ``facestream models``."""
    in_channels: int = 3
    """Channels of every input tensor (each pyramid level has the same channels)."""
    out_channels: tuple[int, ...] = (3,)
    """Channels of each output tensor, in ``output_names`` order."""
    input_size: int = 256
    """Side of the square face crop the network was trained at (finest pyramid level)."""
    crop_scale: float = 1.2
    """Crop side relative to the face bounding box (FSGAN's ``crop_scale``)."""
    value_range: tuple[float, float] = (-1.0, 1.0)
    """Input and image-output normalisation: pixels map linearly from [0, 255] to this range."""
    pyramid_levels: int = 2
    """Inputs are ``[x, avg_pool2d(x, 2), ...]`` with this many levels (1: a single tensor)."""
    input_names: tuple[str, ...] = ("level0", "level1")
    """ONNX/engine input names, finest pyramid level first."""
    output_names: tuple[str, ...] = ("output",)
    """ONNX/engine output names."""
    dynamic_axes: Mapping[str, Mapping[int, str]] = field(default_factory=dict, hash=False)
    """Dynamic axes for ONNX export; defaults to a ``batch`` axis 0 on every input and output."""
    weight_file: str | None = None
    """File name of the released checkpoint (``None`` for test variants, which have no weights)."""
    alt_weight_files: tuple[str, ...] = ()
    """Other released checkpoints of the same architecture, in order of preference after ``weight_file``."""
    sha256: str | None = None
    """sha256 of ``weight_file`` when known; ``None`` means not verified."""
    license: str = FSGAN_LICENSE
    """Licence of code and weights."""
    source: str = FSGAN_SOURCE
    """Where the architecture and weights come from."""
    test_only: bool = False
    """A small variant for tests and CI: random weights, never a released file."""

    def __post_init__(self) -> None:
        if not self.dynamic_axes:
            object.__setattr__(self, "dynamic_axes", _batch_axes(self.input_names + self.output_names))
        if len(self.input_names) != self.pyramid_levels:
            raise ValueError(
                f"{self.name}: {len(self.input_names)} input names for {self.pyramid_levels} levels"
            )
        if len(self.output_names) != len(self.out_channels):
            raise ValueError(f"{self.name}: output_names and out_channels differ in length")

    @property
    def weight_files(self) -> tuple[str, ...]:
        """Every released checkpoint name of this network, preferred first (empty for test variants)."""
        return (self.weight_file, *self.alt_weight_files) if self.weight_file else ()

    @property
    def architecture(self) -> str:
        """The name without its tag."""
        return self.name.split(".", 1)[0]

    @property
    def tag(self) -> str:
        """The tag after the dot (``""`` for the released network)."""
        return self.name.partition(".")[2]

    def input_shapes(self, batch: int = 1, size: int | None = None) -> tuple[tuple[int, int, int, int], ...]:
        """NCHW shape of each input, finest level first (``size`` defaults to ``input_size``)."""
        side = self.input_size if size is None else size
        return tuple(
            (batch, self.in_channels, side >> level, side >> level) for level in range(self.pyramid_levels)
        )

    def tiny(self, *, arch: str, input_size: int = 64) -> NetworkConfig:
        """The ``.tiny`` test variant of this network with a narrower architecture."""
        return dataclasses.replace(
            self,
            name=f"{self.architecture}.tiny",
            arch=arch,
            input_size=input_size,
            description=f"{self.description} Tiny test variant, random weights.",
            weight_file=None,
            sha256=None,
            test_only=True,
        )


Builder = Callable[[NetworkConfig], "nn.Module"]
B = TypeVar("B", bound=Callable[[NetworkConfig], "nn.Module"])

_CONFIGS: dict[str, NetworkConfig] = {}
_BUILDERS: dict[str, Builder] = {}
_LOADED = False


def register_network(*configs: NetworkConfig) -> Callable[[B], B]:
    """Decorator registering ``builder(config) -> nn.Module`` under each config's name.

    Raises:
        ValueError: a name is already registered.
    """

    def decorator(builder: B) -> B:
        for config in configs:
            if config.name in _CONFIGS:
                raise ValueError(f"network {config.name!r} is already registered")
            _CONFIGS[config.name] = config
            _BUILDERS[config.name] = builder
        return builder

    return decorator


def _ensure_loaded() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        importlib.import_module("engines.networks")


def list_networks(pattern: str = "*", *, include_test: bool = True) -> list[str]:
    """Sorted registered names matching the shell-style ``pattern`` (e.g. ``"fsgan*"``, ``"*.tiny"``)."""
    _ensure_loaded()
    return sorted(
        name
        for name, config in _CONFIGS.items()
        if fnmatch.fnmatchcase(name, pattern) and (include_test or not config.test_only)
    )


def get_network_config(name: str) -> NetworkConfig:
    """The frozen config of a registered network.

    Raises:
        UnknownNetworkError: ``name`` is not registered (the message lists the known names).
    """
    _ensure_loaded()
    try:
        return _CONFIGS[name]
    except KeyError:
        known = ", ".join(sorted(_CONFIGS))
        raise UnknownNetworkError(f"unknown network {name!r}; known networks: {known}") from None


def create_network(name: str) -> nn.Module:
    """Build a registered network with freshly initialised weights, in eval mode."""
    config = get_network_config(name)
    model = _BUILDERS[name](config)
    model.network_config = config  # type: ignore[assignment]  # read by export/backends for I/O names
    return model.eval()


def network_for_weight_file(file_name: str) -> NetworkConfig | None:
    """The released network with a checkpoint named ``file_name``, if any."""
    _ensure_loaded()
    for config in _CONFIGS.values():
        if file_name in config.weight_files:
            return config
    return None
