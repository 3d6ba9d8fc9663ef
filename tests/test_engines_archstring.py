"""Architecture strings are parsed, never evaluated."""

from __future__ import annotations

import re

import pytest

from engines.archstring import parse_arch
from engines.exceptions import ArchitectureError
from engines.networks import res_unet, res_unet_split, simple_unet_02


@pytest.mark.parametrize(
    "text",
    [
        "res_unet.MultiScaleResUNet(in_nc=4,out_nc=3,flat_layers=(2,2,2,2),ngf=128)",
        "fsgan.models.res_unet.MultiScaleResUNet(in_nc=4, out_nc=3, flat_layers=(2, 2, 2, 2), ngf=128)",
        "  res_unet.MultiScaleResUNet( in_nc = 4 ,out_nc=3,\n flat_layers=[2,2,2,2], ngf=128 )  ",
    ],
)
def test_spellings_of_the_same_architecture(text: str) -> None:
    spec = parse_arch(text)
    assert spec.cls is res_unet.MultiScaleResUNet
    assert spec.kwargs == {"in_nc": 4, "out_nc": 3, "flat_layers": (2, 2, 2, 2), "ngf": 128}
    assert spec.canonical() == "res_unet.MultiScaleResUNet(in_nc=4,out_nc=3,flat_layers=(2,2,2,2),ngf=128)"


def test_literal_kinds() -> None:
    spec = parse_arch("simple_unet_02.UNet(num_classes=3, feature_scale=16, is_deconv=False, is_batchnorm=True)")
    assert spec.cls is simple_unet_02.UNet
    assert spec.kwargs["is_deconv"] is False
    spec = parse_arch("res_unet_split.MultiScaleResUNet(in_nc=71,out_nc=(3,3),max_nc=None,ngf=8)")
    assert spec.cls is res_unet_split.MultiScaleResUNet and spec.kwargs["max_nc"] is None
    assert spec.kwargs["out_nc"] == (3, 3)


ATTACKS = {
    "__import__('os').system('touch /tmp/pwned')": "callee must be a dotted class name",
    "[c for c in ().__class__.__bases__]": "must be a call like module.Class",
    "res_unet.MultiScaleResUNet(in_nc=__import__('os').system('id'))": "found a call",
    "res_unet.MultiScaleResUNet(in_nc=os.environ)": "found attribute access",
    "res_unet.MultiScaleResUNet(in_nc=x)": "found a name",
    "res_unet.MultiScaleResUNet(in_nc=(lambda: 4)())": "found a call",
    "res_unet.MultiScaleResUNet(in_nc=lambda: 4)": "found a lambda",
    "res_unet.MultiScaleResUNet(**{'in_nc': 4})": "unpacking",
    "res_unet.MultiScaleResUNet(in_nc=[].__class__)": "found attribute access",
    "res_unet.MultiScaleResUNet(in_nc=2**10)": "found an operator",
    "res_unet.MultiScaleResUNet(in_nc=f'{4}')": "f-string",
    "res_unet.MultiScaleResUNet(4)": "positional arguments",
    "os.system('id')": "unknown architecture class 'os.system'",
    "fsgan.models.res_unet.__builtins__('x')": "unknown architecture class",
    "res_unet.MultiScaleResUNet(norm_layer=nn.BatchNorm2d)": "unknown keyword 'norm_layer'",
    "res_unet.MultiScaleResUNet(in_nc=4); import os": "does not parse",
    "getattr(res_unet, 'MultiScaleResUNet')()": "callee must be a dotted class name",
    "res_unet.MultiScaleResUNet(in_nc={'a': 1})": "found a dict",
    "res_unet.MultiScaleResUNet(in_nc=b'4')": "bytes is not allowed",
    "(" * 500 + "1" + ")" * 500: "does not parse",
    "(((1)))": "must be a call",
}


@pytest.mark.parametrize("text", list(ATTACKS))
def test_code_in_architecture_strings_is_refused(text: str) -> None:
    with pytest.raises(ArchitectureError, match=re.escape(ATTACKS[text])) as info:
        parse_arch(text)
    assert isinstance(info.value, ValueError)


def test_overlong_string_is_refused() -> None:
    with pytest.raises(ArchitectureError, match="characters long"):
        parse_arch("res_unet.MultiScaleResUNet(" + "ngf=1," * 1000 + ")")
