"""Networks, checkpoints, export and inference backends. Never imports ``stream``.

The entry points::

    import engines
    model = engines.load_checkpoint("weights/ijbc_msrunet_256_1_2_blending_v2.pth")
    model = engines.build("res_unet.MultiScaleResUNet(in_nc=7,out_nc=3,flat_layers=(2,2,2,2),ngf=128)")
    engines.list_networks("fsgan*")
    engine = engines.create_engine(model, backend="auto")
"""

from engines.backends import create_engine
from engines.checkpoints import build, load_checkpoint
from engines.registry import NetworkConfig, create_network, get_network_config, list_networks

__all__ = [
    "NetworkConfig",
    "build",
    "create_engine",
    "create_network",
    "get_network_config",
    "list_networks",
    "load_checkpoint",
]
