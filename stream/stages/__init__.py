"""Swap stages: the weight-free default and the learned FSGAN chain, behind one protocol."""

from __future__ import annotations

from stream.choices import BlendMode, ColorTransfer, FaceSelection
from stream.stages.base import CropSpec, SourceBank, Stage, StageChain, select_faces
from stream.stages.blend import MeshBlender
from stream.stages.carry import PatchCarry
from stream.stages.complete import ClassicalCompleter
from stream.stages.reenact import MeshWarpReenactor
from stream.stages.segment import MeshSegmenter

__all__ = [
    "ClassicalCompleter",
    "CropSpec",
    "MeshBlender",
    "MeshSegmenter",
    "MeshWarpReenactor",
    "PatchCarry",
    "SourceBank",
    "Stage",
    "StageChain",
    "default_chain",
    "select_faces",
]

DEFAULT_CROP_SCALE = 1.4
"""Region crops of the weight-free chain: 1.4x the landmarks' box leaves room for the mesh's outer
band (10 % past the oval) and for the blend's reach."""


def default_chain(*, faces: FaceSelection = "all", blend: BlendMode = "poisson", color: ColorTransfer = "lab",
                  crop_scale: float = DEFAULT_CROP_SCALE, carry: bool = True) -> StageChain:
    """The weight-free swap: mesh warp -> mesh masks -> Telea completion -> colour transfer + blend.

    Works on native-resolution regions of the frame (``CropSpec(size=None)``), so pasting back is a
    slice and every pixel outside a face's paste mask is left untouched. ``carry``: a face that only
    moved by an affine map since a recent frame gets that frame's result moved along
    (:class:`~stream.stages.carry.PatchCarry`) instead of going through the stages again.
    """
    completer, blender = ClassicalCompleter(), MeshBlender(mode=blend, color=color)
    stages: list[Stage] = [MeshWarpReenactor(eight_bit=True), MeshSegmenter(), completer, blender]
    patches = PatchCarry(blender.recolour_function, hole_below=completer.hole_below) if carry else None
    return StageChain(stages, CropSpec(size=None, scale=crop_scale), faces=faces, carry=patches)
