"""Choices offered to users: ``Literal`` types that also feed the CLI's ``choices=``."""

from __future__ import annotations

from typing import Literal, get_args

FaceSelection = Literal["all", "largest"]
DropPolicy = Literal["block", "keep_latest"]
StageKind = Literal["reenact", "segment", "complete", "blend", "restore"]
BlendMode = Literal["poisson", "pyramid", "alpha"]
ColorTransfer = Literal["lab", "none"]
VideoCodec = Literal["libx264", "libx265", "libvpx-vp9", "ffv1", "copy-unmodified"]
Backend = Literal["auto", "torch", "onnxruntime", "tensorrt"]
Precision = Literal["fp32", "fp16", "int8"]

FACE_SELECTIONS: tuple[str, ...] = get_args(FaceSelection)
DROP_POLICIES: tuple[str, ...] = get_args(DropPolicy)
BLEND_MODES: tuple[str, ...] = get_args(BlendMode)
COLOR_TRANSFERS: tuple[str, ...] = get_args(ColorTransfer)
BACKENDS: tuple[str, ...] = get_args(Backend)
PRECISIONS: tuple[str, ...] = get_args(Precision)
