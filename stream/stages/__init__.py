"""Swap stages: the weight-free default and the learned FSGAN chain, behind one protocol."""

from stream.stages.base import CropSpec, SourceBank, Stage, StageChain, select_faces

__all__ = ["CropSpec", "SourceBank", "Stage", "StageChain", "select_faces"]
