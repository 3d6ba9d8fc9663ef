"""FSGAN's face segmentation network S (``simple_unet_02.UNet``): a classic four-level UNet.

Encoder: double 3x3 conv blocks (conv + BN + ReLU) with 2x2 max pooling; decoder: bilinear
upsampling (``align_corners=True``) or a transposed convolution, a 1x1 projection, concatenation with
the skip and a double 3x3 conv block without BN. Output: per-pixel class logits (the released
network: background, face, hair). Widths are ``(64, 128, 256, 512, 1024) / feature_scale``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engines.registry import NetworkConfig, register_network

__all__ = ["UNet", "UNetConvBlock", "UNetUpBlock"]

BASE_WIDTHS = (64, 128, 256, 512, 1024)


class UNetConvBlock(nn.Module):
    """Two 3x3 convolutions (padding 1, with bias), each followed by optional BN and ReLU."""

    def __init__(self, in_nc: int, out_nc: int, batchnorm: bool) -> None:
        super().__init__()

        def stage(cin: int) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(cin, out_nc, 3, 1, 1)]
            if batchnorm:
                layers.append(nn.BatchNorm2d(out_nc))
            layers.append(nn.ReLU())
            return nn.Sequential(*layers)

        self.conv1 = stage(in_nc)
        self.conv2 = stage(out_nc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class UNetUpBlock(nn.Module):
    """Upsample the coarse features x2, project to ``out_nc`` (1x1), concatenate the skip, conv block."""

    def __init__(self, in_nc: int, out_nc: int, deconv: bool) -> None:
        super().__init__()
        self.conv = UNetConvBlock(in_nc, out_nc, batchnorm=False)
        self.up: nn.Module = (
            nn.ConvTranspose2d(in_nc, out_nc, kernel_size=2, stride=2)
            if deconv
            else nn.UpsamplingBilinear2d(scale_factor=2)
        )
        self.conv1d = nn.Conv2d(in_nc, out_nc, kernel_size=1)

    def forward(self, skip: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        up = self.conv1d(self.up(coarse))
        # Inputs whose side is not a multiple of 16 leave the upsampled map smaller than the skip:
        # crop (negative pad) the skip symmetrically, by the height difference, as the original does.
        offset = up.shape[2] - skip.shape[2]
        if offset != 0:
            half = offset // 2
            skip = F.pad(skip, (half, half, half, half))
        return self.conv(torch.cat((skip, up), dim=1))


class UNet(nn.Module):
    """Four-level UNet returning ``num_classes`` logits at the input resolution.

    Args:
        feature_scale: Divides every width (16 for the tiny test variant).
        num_classes: Output channels.
        is_deconv: Transposed convolutions instead of bilinear upsampling in the decoder.
        in_channels: Input channels.
        is_batchnorm: BatchNorm in the encoder's conv blocks.
    """

    pyramid_levels = 1

    def __init__(
        self,
        feature_scale: int = 1,
        num_classes: int = 21,
        is_deconv: bool = False,
        in_channels: int = 3,
        is_batchnorm: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        w = [int(c / feature_scale) for c in BASE_WIDTHS]
        self.conv1 = UNetConvBlock(in_channels, w[0], is_batchnorm)
        self.maxpool1 = nn.MaxPool2d(2)
        self.conv2 = UNetConvBlock(w[0], w[1], is_batchnorm)
        self.maxpool2 = nn.MaxPool2d(2)
        self.conv3 = UNetConvBlock(w[1], w[2], is_batchnorm)
        self.maxpool3 = nn.MaxPool2d(2)
        self.conv4 = UNetConvBlock(w[2], w[3], is_batchnorm)
        self.maxpool4 = nn.MaxPool2d(2)
        self.center = UNetConvBlock(w[3], w[4], is_batchnorm)
        self.up_concat4 = UNetUpBlock(w[4], w[3], is_deconv)
        self.up_concat3 = UNetUpBlock(w[3], w[2], is_deconv)
        self.up_concat2 = UNetUpBlock(w[2], w[1], is_deconv)
        self.up_concat1 = UNetUpBlock(w[1], w[0], is_deconv)
        self.final = nn.Conv2d(w[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, list | tuple):  # accept a one-level pyramid like the generators
            (x,) = x
        s1 = self.conv1(x)
        s2 = self.conv2(self.maxpool1(s1))
        s3 = self.conv3(self.maxpool2(s2))
        s4 = self.conv4(self.maxpool3(s3))
        y = self.center(self.maxpool4(s4))
        y = self.up_concat4(s4, y)
        y = self.up_concat3(s3, y)
        y = self.up_concat2(s2, y)
        y = self.up_concat1(s1, y)
        return self.final(y)


_S = NetworkConfig(
    name="fsgan_segmentation_v2",
    arch="simple_unet_02.UNet(num_classes=3)",
    task="segmentation",
    description="FSGAN v2 face segmentation S: face crop (3) -> logits for background, face, hair.",
    in_channels=3,
    out_channels=(3,),
    pyramid_levels=1,
    input_names=("input",),
    output_names=("logits",),
    weight_file="celeba_unet_256_1_2_segmentation_v2.pth",
)


@register_network(_S, _S.tiny(arch="simple_unet_02.UNet(num_classes=3,feature_scale=16)"))
def fsgan_simple_unet(config: NetworkConfig) -> UNet:
    """Build a ``simple_unet_02.UNet`` from its registered configuration."""
    from engines.archstring import build_from_arch

    model = build_from_arch(config.arch)
    assert isinstance(model, UNet)
    return model
