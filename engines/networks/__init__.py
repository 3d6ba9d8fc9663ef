"""Network definitions compatible with FSGAN's released checkpoints; importing registers them."""

from engines.networks import res_unet, res_unet_split, simple_unet_02

__all__ = ["res_unet", "res_unet_split", "simple_unet_02"]
