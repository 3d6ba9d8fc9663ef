"""Parse FSGAN architecture strings without executing them.

FSGAN checkpoints store their architecture as Python source, ``module.Class(kwarg=literal, ...)``
(e.g. ``res_unet.MultiScaleResUNet(in_nc=4,out_nc=3,flat_layers=(2,2,2,2),ngf=128)``), and the
original loader ``eval``s it. A checkpoint is untrusted input, so this module parses the string
with :func:`ast.parse`, accepts only a call of a whitelisted class (short alias or the full
``fsgan.models.<module>.<Class>`` path) with keyword arguments whose values are literals (numbers,
booleans, ``None``, strings and tuples/lists of those), and rejects everything else with an
:class:`~engines.exceptions.ArchitectureError` naming the problem.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from typing import Any

from torch import nn

from engines.exceptions import ArchitectureError
from engines.networks import res_unet, res_unet_split, simple_unet_02

__all__ = ["KNOWN_CLASSES", "ArchSpec", "build_from_arch", "parse_arch"]

MAX_LENGTH = 2000
"""Longer strings are refused before parsing (real ones are ~100 characters)."""

_FULL_PREFIX = "fsgan.models."

KNOWN_CLASSES: dict[str, type[nn.Module]] = {
    "res_unet.MultiScaleResUNet": res_unet.MultiScaleResUNet,
    "res_unet.ResUNet": res_unet.ResUNet,
    "res_unet_split.MultiScaleResUNet": res_unet_split.MultiScaleResUNet,
    "res_unet_split.ResUNet": res_unet_split.ResUNet,
    "simple_unet_02.UNet": simple_unet_02.UNet,
}
"""Short alias -> class. ``fsgan.models.<alias>`` is accepted as well."""

Literal = int | float | bool | str | None | tuple["Literal", ...]


@dataclass(frozen=True)
class ArchSpec:
    """A parsed architecture string."""

    name: str
    """Short alias of the class, e.g. ``res_unet.MultiScaleResUNet``."""
    cls: type[nn.Module]
    """The class of ours it maps to."""
    kwargs: dict[str, Any]
    """Keyword arguments, literals only (lists become tuples)."""

    def canonical(self) -> str:
        """The string in canonical form: short alias, no spaces, keywords in the given order."""
        args = ",".join(f"{k}={_format(v)}" for k, v in self.kwargs.items())
        return f"{self.name}({args})"

    def build(self) -> nn.Module:
        """Instantiate the class with the keyword arguments."""
        return self.cls(**self.kwargs)


def _format(value: Any) -> str:
    if isinstance(value, tuple):
        inner = ",".join(_format(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _dotted(node: ast.expr) -> str:
    """``a.b.C`` from nested Attribute/Name nodes; anything else is refused."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise ArchitectureError(f"callee must be a dotted class name, got {type(node).__name__}")
    parts.append(node.id)
    return ".".join(reversed(parts))


_NODE_WORDS = {
    ast.Call: "a call",
    ast.Attribute: "attribute access",
    ast.Name: "a name",
    ast.Lambda: "a lambda",
    ast.Subscript: "subscripting",
    ast.BinOp: "an operator",
    ast.Dict: "a dict",
    ast.Set: "a set",
    ast.Starred: "unpacking",
    ast.JoinedStr: "an f-string",
    ast.ListComp: "a comprehension",
    ast.GeneratorExp: "a generator",
    ast.NamedExpr: "an assignment expression",
}


def _literal(node: ast.expr, where: str) -> Literal:
    """Value of a literal node: int/float/bool/None/str, +/- numbers, tuples/lists of literals."""
    if isinstance(node, ast.Constant):
        value = node.value
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise ArchitectureError(f"{where}: literal of type {type(value).__name__} is not allowed")
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub | ast.UAdd)
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, int | float)
        and not isinstance(node.operand.value, bool)
    ):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, ast.Tuple | ast.List):
        return tuple(_literal(element, where) for element in node.elts)
    what = _NODE_WORDS.get(type(node), type(node).__name__)
    raise ArchitectureError(f"{where}: only literals are allowed, found {what}")


def parse_arch(arch: str) -> ArchSpec:
    """Parse ``module.Class(kwarg=literal, ...)`` into an :class:`ArchSpec`; never evaluates code.

    Raises:
        ArchitectureError: not a single call of a known class with literal keyword arguments, or a
            keyword the class does not take.
    """
    if not isinstance(arch, str):
        raise ArchitectureError(f"architecture must be a string, got {type(arch).__name__}")
    if len(arch) > MAX_LENGTH:
        raise ArchitectureError(f"architecture string is {len(arch)} characters long (max {MAX_LENGTH})")
    try:
        tree = ast.parse(arch.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        shown = arch if len(arch) <= 80 else arch[:77] + "..."
        raise ArchitectureError(f"architecture string {shown!r} does not parse: {exc}") from None
    call = tree.body
    if not isinstance(call, ast.Call):
        what = _NODE_WORDS.get(type(call), type(call).__name__)
        raise ArchitectureError(f"architecture must be a call like module.Class(...), found {what}")
    dotted = _dotted(call.func)
    name = dotted.removeprefix(_FULL_PREFIX)
    cls = KNOWN_CLASSES.get(name)
    if cls is None:
        known = ", ".join(sorted(KNOWN_CLASSES))
        raise ArchitectureError(f"unknown architecture class {dotted!r}; known: {known}")
    if call.args:
        raise ArchitectureError(f"{name}: positional arguments are not supported, use keywords")
    accepted = {
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD
    }
    kwargs: dict[str, Any] = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            raise ArchitectureError(f"{name}: '**' unpacking is not allowed")
        if keyword.arg not in accepted:
            raise ArchitectureError(
                f"{name}: unknown keyword {keyword.arg!r}; accepted: {', '.join(sorted(accepted))}"
            )
        kwargs[keyword.arg] = _literal(keyword.value, f"{name}({keyword.arg}=...)")
    return ArchSpec(name=name, cls=cls, kwargs=kwargs)


def build_from_arch(arch: str) -> nn.Module:
    """Parse ``arch`` and instantiate it (fresh weights, train mode as ``nn.Module`` does)."""
    spec = parse_arch(arch)
    try:
        return spec.build()
    except (TypeError, ValueError) as exc:
        raise ArchitectureError(f"{spec.canonical()}: {exc}") from None
