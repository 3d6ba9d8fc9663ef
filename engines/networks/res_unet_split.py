"""FSGAN v1's multi-scale residual UNet with split heads (``res_unet_split``).

Same trunk as :mod:`engines.networks.res_unet`; the output heads are ``out_conv1..n`` and the
network returns a tuple, one tensor per head. The released v1 reenactment generator has two heads:
the reenacted face (3 channels) and its segmentation (3 classes), both ``tanh``-squashed.
"""

from __future__ import annotations

from collections.abc import Sequence

from engines.networks import res_unet
from engines.registry import NetworkConfig, register_network

__all__ = ["MultiScaleResUNet", "ResUNet"]


class ResUNet(res_unet.ResUNet):
    """Single-scale residual UNet with one ``out_conv{i}`` head per entry of ``out_nc``."""

    def __init__(
        self,
        in_nc: int = 3,
        out_nc: int | Sequence[int] = (3,),
        max_nc: int | None = None,
        ngf: int = 64,
        flat_layers: Sequence[int] = (0, 0, 0, 3),
        use_dropout: bool = False,
    ) -> None:
        super().__init__(in_nc, out_nc, max_nc, ngf, flat_layers, use_dropout, split_heads=True)


class MultiScaleResUNet(res_unet.MultiScaleResUNet):
    """Multi-scale residual UNet returning a tuple with one tensor per head (see the base class)."""

    split_heads = True

    def __init__(
        self,
        in_nc: int = 3,
        out_nc: int | Sequence[int] = (3,),
        max_nc: int | None = 1024,
        ngf: int = 64,
        flat_layers: Sequence[int] = (0, 0, 0, 3),
        use_dropout: bool = False,
        n_local_enhancers: int = 1,
    ) -> None:
        super().__init__(in_nc, out_nc, max_nc, ngf, flat_layers, use_dropout, n_local_enhancers)


_V1 = NetworkConfig(
    name="fsgan_reenactment_v1",
    arch="res_unet_split.MultiScaleResUNet(in_nc=71,out_nc=(3,3),flat_layers=(2,0,2,3),ngf=128)",
    task="reenactment",
    description="FSGAN v1 reenactment generator: face (3) + landmark heatmaps (68) -> face and segmentation.",
    in_channels=71,
    out_channels=(3, 3),
    input_names=("level0", "level1"),
    output_names=("image", "segmentation"),
    # The stepwise network (crop scale 1.2, as configured here) is the one made for iterated passes;
    # the plain v1 release was trained at crop scale 2.0.
    weight_file="ijbc_msrunet_256_1_2_reenactment_stepwise_v1.pth",
    alt_weight_files=("ijbc_msrunet_256_2_0_reenactment_v1.pth",),
)


@register_network(
    _V1,
    _V1.tiny(
        arch="res_unet_split.MultiScaleResUNet(in_nc=71,out_nc=(3,3),flat_layers=(2,0,2,3),ngf=8,max_nc=64)"
    ),
)
def fsgan_res_unet_split(config: NetworkConfig) -> MultiScaleResUNet:
    """Build a ``res_unet_split.MultiScaleResUNet`` from its registered configuration."""
    from engines.archstring import build_from_arch

    model = build_from_arch(config.arch)
    assert isinstance(model, MultiScaleResUNet)
    return model
