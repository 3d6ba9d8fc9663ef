"""FSGAN's multi-scale residual UNet (``res_unet``): the v2 reenactment, inpainting and blending generators.

A global residual UNet runs on the coarsest level of an image pyramid; one local enhancer per finer
level (pix2pixHD's idea) adds that level's own features to the upsampled global features and owns
the output head. The layout of every submodule (names and ``nn.Sequential`` indices, including the
parameter-free padding/activation slots) follows the released checkpoints, so their ``state_dict``
loads strictly; see ``fsgan_manifest.json`` in the fixtures.

Conventions of the released networks kept here: reflection padding everywhere, BatchNorm after
every convolution except the output heads, convolutions without bias, ``tanh`` outputs in [-1, 1],
and channel widths ``ngf * 2**level`` capped at ``max_nc``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engines.registry import NetworkConfig, register_network

__all__ = [
    "DownBlock",
    "FlatBlock",
    "LocalEnhancer",
    "MultiScaleResUNet",
    "ResUNet",
    "ResidualBlock",
    "SkipConnectionBlock",
    "UpBlock",
    "as_pyramid",
    "checkpoint_filter_fn",
    "make_pyramid",
]

Pyramid = Sequence[torch.Tensor]


def conv_layers(
    in_nc: int,
    out_nc: int,
    kernel_size: int = 3,
    stride: int = 1,
    *,
    norm: bool = True,
    act: bool = True,
    dropout: bool = False,
) -> list[nn.Module]:
    """Reflection pad, bias-free convolution, then optional BatchNorm, ReLU and dropout.

    The padding layer occupies index 0 so that the convolution is ``.1`` and the norm ``.2``, which is
    where the released checkpoints keep them.
    """
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(kernel_size // 2),
        nn.Conv2d(in_nc, out_nc, kernel_size, stride=stride, bias=False),
    ]
    if norm:
        layers.append(nn.BatchNorm2d(out_nc))
    if act:
        layers.append(nn.ReLU(inplace=True))
    if dropout:
        layers.append(nn.Dropout(0.5))
    return layers


def output_head(in_nc: int, out_nc: int) -> nn.Sequential:
    """7x7 convolution to ``out_nc`` channels squashed by ``tanh`` (no norm)."""
    return nn.Sequential(*conv_layers(in_nc, out_nc, 7, norm=False, act=False), nn.Tanh())


class DownBlock(nn.Module):
    """Halve the resolution (strided 3x3 conv) then refine (3x3 conv), both with BN + ReLU."""

    def __init__(self, in_nc: int, out_nc: int) -> None:
        super().__init__()
        self.model = nn.Sequential(*conv_layers(in_nc, out_nc, 3, 2), *conv_layers(out_nc, out_nc, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class UpBlock(nn.Module):
    """Double the resolution (bilinear, ``align_corners=False``) then a 3x3 conv with BN + ReLU."""

    def __init__(self, in_nc: int, out_nc: int) -> None:
        super().__init__()
        self.model = nn.Sequential(*conv_layers(in_nc, out_nc, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.model(x)


class ResidualBlock(nn.Module):
    """``relu(x + bn(conv(relu(bn(conv(x))))))`` at constant width."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.model = nn.Sequential(*conv_layers(planes, planes), *conv_layers(planes, planes, act=False))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.model(x))


class FlatBlock(nn.Module):
    """``layers`` residual blocks; with ``layers == 0`` it is the identity and holds no parameters."""

    def __init__(self, planes: int, layers: int) -> None:
        super().__init__()
        self.model = nn.Sequential(*(ResidualBlock(planes) for _ in range(layers))) if layers > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.model is None else self.model(x)


class SkipConnectionBlock(nn.Module):
    """One UNet level: ``flat(x + up(submodule(down(x))))``; the innermost level is just ``flat(x)``."""

    def __init__(self, ngf: int, sub_ngf: int, submodule: SkipConnectionBlock | None, flat_layers: int) -> None:
        super().__init__()
        # Registration order (submodule first) mirrors the released checkpoints' key order.
        self.submodule = submodule
        if submodule is not None:
            self.down_block = DownBlock(ngf, sub_ngf)
            self.up_block = UpBlock(sub_ngf, ngf)
        self.flat_block = FlatBlock(ngf, flat_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.submodule is not None:
            x = x + self.up_block(self.submodule(self.down_block(x)))
        return self.flat_block(x)


def _add_heads(module: nn.Module, in_nc: int, out_nc: int | Sequence[int], split: bool) -> tuple[str, ...]:
    """Attach the output head(s): ``out_conv`` for one head, ``out_conv1..n`` when ``split``."""
    if not split:
        if not isinstance(out_nc, int):
            raise TypeError(f"out_nc must be an int for a single-head network, got {out_nc!r}")
        module.out_conv = output_head(in_nc, out_nc)
        return ("out_conv",)
    channels = (out_nc,) if isinstance(out_nc, int) else tuple(out_nc)
    names = tuple(f"out_conv{i}" for i in range(1, len(channels) + 1))
    for name, nc in zip(names, channels, strict=True):
        module.add_module(name, output_head(in_nc, nc))
    return names


class ResUNet(nn.Module):
    """Single-scale residual UNet: ``in_conv`` (7x7) -> nested skip blocks -> output head(s).

    Args:
        in_nc: Input channels.
        out_nc: Output channels (a tuple of per-head channels when ``split_heads``).
        max_nc: Cap on intermediate widths (``None``: no cap).
        ngf: Width after ``in_conv``; level ``i`` from the outside is ``ngf * 2**i``.
        flat_layers: Residual blocks per level, outermost first; its length is the number of levels.
        use_dropout: Dropout after ``in_conv`` (a no-op in eval mode; kept for layout compatibility).
        split_heads: Name heads ``out_conv1..n`` and return a tuple (``res_unet_split``).
    """

    def __init__(
        self,
        in_nc: int = 3,
        out_nc: int | Sequence[int] = 3,
        max_nc: int | None = None,
        ngf: int = 64,
        flat_layers: Sequence[int] = (0, 0, 0, 3),
        use_dropout: bool = False,
        *,
        split_heads: bool = False,
    ) -> None:
        super().__init__()
        cap = max_nc if max_nc is not None else 1 << 30
        self.in_nc = in_nc
        self.out_nc = out_nc
        self.split_heads = split_heads
        self.in_conv = nn.Sequential(*conv_layers(in_nc, ngf, 7, dropout=use_dropout))
        self._heads = _add_heads(self, ngf, out_nc, split_heads)
        # Build from the innermost level outwards; flat_layers is listed outermost first.
        levels = len(flat_layers)
        block: SkipConnectionBlock | None = None
        for depth in reversed(range(levels)):
            width = min(ngf * 2**depth, cap)
            sub_width = min(ngf * 2 ** (depth + 1), cap)
            block = SkipConnectionBlock(width, sub_width, block, flat_layers[depth])
        if block is None:
            raise ValueError("flat_layers must name at least one level")
        self.inner = block

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Features before the output head(s), at the input resolution."""
        return self.inner(self.in_conv(x))

    def heads(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Apply the output head(s) to features."""
        outputs = tuple(getattr(self, name)(x) for name in self._heads)
        return outputs if self.split_heads else outputs[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.heads(self.features(x))


class LocalEnhancer(nn.Module):
    """Refines one finer pyramid level: ``flat(in_conv(x) + up(coarse_features))`` then the head(s)."""

    def __init__(
        self,
        ngf: int,
        sub_ngf: int,
        in_nc: int,
        out_nc: int | Sequence[int],
        flat_layers: int,
        use_dropout: bool = False,
        *,
        split_heads: bool = False,
    ) -> None:
        super().__init__()
        self.split_heads = split_heads
        self.in_conv = nn.Sequential(*conv_layers(in_nc, ngf, 7, dropout=use_dropout))
        self.up_block = UpBlock(sub_ngf, ngf)
        self.flat_block = FlatBlock(ngf, flat_layers)
        self._heads = _add_heads(self, ngf, out_nc, split_heads)

    def features(self, x: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Features of level ``x`` given the features of the next coarser level."""
        return self.flat_block(self.in_conv(x) + self.up_block(coarse))

    def heads(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Apply the output head(s) to features."""
        outputs = tuple(getattr(self, name)(x) for name in self._heads)
        return outputs if self.split_heads else outputs[0]

    def forward(self, x: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.heads(self.features(x, coarse))


def as_pyramid(pyramid: Pyramid | torch.Tensor) -> list[torch.Tensor]:
    """A pyramid as a list, finest level first; a bare tensor is a one-level pyramid."""
    if isinstance(pyramid, torch.Tensor):
        return [pyramid]
    return list(pyramid)


def make_pyramid(x: torch.Tensor, levels: int = 2, *, kernel_size: int = 2) -> list[torch.Tensor]:
    """``[x, down(x), down(down(x)), ...]`` with ``levels`` entries.

    ``kernel_size=2`` is ``avg_pool2d(x, 2)`` (the fixtures' convention); ``kernel_size=3`` is FSGAN's
    own ``create_pyramid`` (3x3 window, stride 2, padding 1, padding excluded from the average).
    """
    if kernel_size not in (2, 3):
        raise ValueError(f"kernel_size must be 2 or 3, got {kernel_size}")
    out = [x]
    for _ in range(levels - 1):
        if kernel_size == 2:
            out.append(F.avg_pool2d(out[-1], 2))
        else:
            out.append(F.avg_pool2d(out[-1], 3, stride=2, padding=1, count_include_pad=False))
    return out


class MultiScaleResUNet(nn.Module):
    """Global ``ResUNet`` (``base``) on the coarsest level plus ``n_local_enhancers`` local enhancers.

    ``forward`` takes the pyramid finest level first (``[x, avg_pool2d(x, 2)]`` for the released
    networks, 256 and 128 pixels). A one-level pyramid (or a bare tensor) runs the global generator
    alone, at that resolution, as FSGAN does.

    Args:
        in_nc: Input channels of every pyramid level.
        out_nc: Output channels.
        max_nc: Cap on intermediate widths.
        ngf: Width of the finest enhancer; the global generator starts at ``ngf * 2**n_local_enhancers``.
        flat_layers: Residual blocks per level, finest first: the first ``n_local_enhancers`` entries
            belong to the enhancers, the rest to the global generator's levels.
        use_dropout: Dropout after each ``in_conv`` (eval no-op; layout compatibility).
        n_local_enhancers: Number of finer pyramid levels handled by enhancers.
    """

    split_heads = False

    def __init__(
        self,
        in_nc: int = 3,
        out_nc: int | Sequence[int] = 3,
        max_nc: int | None = 1024,
        ngf: int = 64,
        flat_layers: Sequence[int] = (0, 0, 0, 3),
        use_dropout: bool = False,
        n_local_enhancers: int = 1,
    ) -> None:
        super().__init__()
        if n_local_enhancers < 0 or n_local_enhancers >= len(flat_layers):
            raise ValueError(
                f"n_local_enhancers must be in [0, {len(flat_layers) - 1}], got {n_local_enhancers}"
            )
        cap = max_nc if max_nc is not None else 1 << 30
        self.in_nc = in_nc
        self.out_nc = out_nc
        self.n_local_enhancers = n_local_enhancers
        self.base = ResUNet(
            in_nc,
            out_nc,
            max_nc,
            ngf * 2**n_local_enhancers,
            tuple(flat_layers[n_local_enhancers:]),
            use_dropout,
            split_heads=self.split_heads,
        )
        # enhancer1 handles the level just above the global one, enhancerN the finest.
        for n in range(1, n_local_enhancers + 1):
            width = min(ngf * 2 ** (n_local_enhancers - n), cap)
            enhancer = LocalEnhancer(
                width,
                min(width * 2, cap),
                in_nc,
                out_nc,
                flat_layers[n - 1],
                use_dropout,
                split_heads=self.split_heads,
            )
            self.add_module(f"enhancer{n}", enhancer)

    @property
    def pyramid_levels(self) -> int:
        """Number of pyramid levels the full network consumes."""
        return self.n_local_enhancers + 1

    def forward(self, pyramid: Pyramid | torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        levels = as_pyramid(pyramid)
        if len(levels) == 1:
            return self.base(levels[0])
        if len(levels) != self.pyramid_levels:
            raise ValueError(f"expected a pyramid of 1 or {self.pyramid_levels} levels, got {len(levels)}")
        x = self.base.features(levels[-1])
        for n in range(1, self.n_local_enhancers + 1):
            x = getattr(self, f"enhancer{n}").features(levels[-1 - n], x)
        return getattr(self, f"enhancer{self.n_local_enhancers}").heads(x)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: MultiScaleResUNet) -> dict[str, torch.Tensor]:
    """Remap foreign layouts onto ``model``: a state dict of the global generator alone (no ``base.``
    key) is loaded into ``base``, as FSGAN's loader allows; anything else is returned unchanged."""
    if any(key.startswith("base.") for key in state_dict):
        return state_dict
    own = model.state_dict()
    remapped = {f"base.{key}": value for key, value in state_dict.items()}
    # The enhancers keep their fresh weights; strict loading still checks every base key.
    for key, value in own.items():
        if not key.startswith("base."):
            remapped[key] = value
    return remapped


def _generator_configs(
    task: str, in_nc: int, weight_file: str, description: str
) -> tuple[NetworkConfig, NetworkConfig]:
    name = f"fsgan_{task}_v2"
    full = NetworkConfig(
        name=name,
        arch=f"res_unet.MultiScaleResUNet(in_nc={in_nc},out_nc=3,flat_layers=(2,2,2,2),ngf=128)",
        task=task,
        description=description,
        in_channels=in_nc,
        out_channels=(3,),
        input_names=("level0", "level1"),
        output_names=("output",),
        weight_file=weight_file,
    )
    tiny = full.tiny(
        arch=f"res_unet.MultiScaleResUNet(in_nc={in_nc},out_nc=3,flat_layers=(2,2,2,2),ngf=8,max_nc=64)"
    )
    return full, tiny


@register_network(
    *_generator_configs(
        "reenactment",
        101,
        "nfv_msrunet_256_1_2_reenactment_v2.1.pth",
        "FSGAN v2 reenactment generator Gr: source face (3) + target landmark heatmaps (98) -> face.",
    )
)
@register_network(
    *_generator_configs(
        "inpainting",
        4,
        "ijbc_msrunet_256_1_2_inpainting_v2.pth",
        "FSGAN v2 face completion generator Gc: reenacted face (3) + target face mask (1) -> face.",
    )
)
@register_network(
    *_generator_configs(
        "blending",
        7,
        "ijbc_msrunet_256_1_2_blending_v2.pth",
        "FSGAN v2 blending generator Gb: transferred face (3) + target (3) + mask (1) -> blended face.",
    )
)
def fsgan_res_unet(config: NetworkConfig) -> MultiScaleResUNet:
    """Build a ``res_unet.MultiScaleResUNet`` from its registered configuration."""
    from engines.archstring import build_from_arch

    model = build_from_arch(config.arch)
    assert isinstance(model, MultiScaleResUNet)
    return model
