"""Networks, checkpoints, export and inference backends. Never imports ``stream``.

The entry points::

    import engines
    model = engines.load_checkpoint("weights/ijbc_msrunet_256_1_2_blending_v2.pth")
    model = engines.build("res_unet.MultiScaleResUNet(in_nc=7,out_nc=3,flat_layers=(2,2,2,2),ngf=128)")
    engines.list_networks("fsgan*")
    engine = engines.create_engine(model, backend="auto")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engines.backends import create_engine
    from engines.checkpoints import build, load_checkpoint
    from engines.export import export_onnx
    from engines.registry import NetworkConfig, create_network, get_network_config, list_networks

# The entry points load on first use (PEP 562): they import torch, which the torch-free modules
# (``engines.cache``, ``engines.executor``) and their importers, the weight-free pipeline among them,
# should not pay for or need installed.
_ENTRY_POINTS = {
    "create_engine": "engines.backends",
    "build": "engines.checkpoints",
    "load_checkpoint": "engines.checkpoints",
    "export_onnx": "engines.export",
    "NetworkConfig": "engines.registry",
    "create_network": "engines.registry",
    "get_network_config": "engines.registry",
    "list_networks": "engines.registry",
}

__all__ = [
    "NetworkConfig",
    "build",
    "create_engine",
    "create_network",
    "export_onnx",
    "get_network_config",
    "list_networks",
    "load_checkpoint",
]


def __getattr__(name: str) -> Any:
    module = _ENTRY_POINTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engines' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ENTRY_POINTS))
