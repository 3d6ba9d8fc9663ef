"""The learned v2 chain as host pre-step, one device op and host post-step (:class:`FsganV2DeviceChain`).

:class:`~stream.stages.base.StageChain` runs the FSGAN stages one after the other, each calling its
engine on NumPy arrays with NumPy/OpenCV glue in between: on a GPU every network is a host round trip.
Here the same stages are cut for :class:`~stream.pipelined.FramePipeline`:

- **prepare** (host): the chain's crops (:meth:`StageChain.build_work`), the reenactor's
  appearance-map mix and rotated source crops (:meth:`FsganReenactorV2.inputs`), the target crops, the
  faces' landmark points and, with ``remove_mouth``, their inner-mouth masks: uint8 images and a few
  hundred floats per face, all faces of the frame as one batch;
- **compute** (device, torch): heatmaps from the points, Gr over the (face, source) pairs and their
  barycentric mix, S over targets and reenactments, soft erosion, Gc on the masked reenactment, Gb on
  the transfer; the glue is the torch port of the stages' NumPy glue (tested against it), on whatever
  device the tensors are on;
- **finish** (host): the blended crops pasted into the frame with the soft face mask
  (:meth:`StageChain.paste`).

On CPU in fp32 the result matches the synchronous chain to float round-off (the heatmaps are computed
in float32 instead of float64, the soft erosion as a direct convolution instead of OpenCV's DFT, the
pyramid pooling in another summation order); rounding the blended crop to uint8 turns that into a
difference of at most 1 on a few pixels. v1 (stepwise reenactment) stays on the synchronous path.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from engines.executor import CPUDevice, CudaDevice, Device, Stream
from stream.exceptions import InputError
from stream.frames import FaceWork, Frame
from stream.heatmaps import heatmaps_v2_torch
from stream.pipelined import Prepared
from stream.stages.base import StageChain
from stream.stages.fsgan import (
    FACE_CLASS,
    FsganBlender,
    FsganCompleter,
    FsganReenactorV2,
    FsganSegmenter,
    erosion_kernel,
    mouth_mask,
    output_pixels,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_STAGES = (FsganReenactorV2, FsganSegmenter, FsganCompleter, FsganBlender)


# --- the stages' NumPy glue, in torch (NCHW, float32) --------------------------------------------------

def to_network_torch(pixels: torch.Tensor) -> torch.Tensor:
    """:func:`~stream.stages.fsgan.to_network` for ``(B, C, H, W)`` pixels 0..255 (any dtype) -> [-1, 1]."""
    return pixels.float() * (2.0 / 255.0) - 1.0


def from_network_torch(x: torch.Tensor) -> torch.Tensor:
    """:func:`~stream.stages.fsgan.from_network`, staying NCHW: [-1, 1] -> float pixels in 0..255."""
    return ((x.float() + 1.0) * 127.5).clamp_(0.0, 255.0)


def pyramid_torch(x: torch.Tensor, levels: int = 2) -> list[torch.Tensor]:
    """:func:`~stream.stages.fsgan.pyramid`: ``[x, pool(x), ...]``, 3x3 stride-2 pool ignoring padding."""
    import torch.nn.functional as F

    out = [x]
    for _ in range(levels - 1):
        out.append(F.avg_pool2d(out[-1], 3, stride=2, padding=1, count_include_pad=False))
    return out


def soft_erosion_torch(mask: torch.Tensor, kernel: torch.Tensor,
                       threshold: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~stream.stages.fsgan.soft_erosion` of ``(B, H, W)`` binary masks: ``(soft, hard)``.

    ``kernel``: :func:`~stream.stages.fsgan.erosion_kernel` as a ``(k, k)`` tensor on the masks' device
    (made once by the caller: a host-to-device copy inside a device op would wait for the stream).
    """
    import torch.nn.functional as F

    k = kernel.shape[-1]
    x = F.conv2d(mask.float()[:, None], kernel[None, None].to(mask.device), padding=k // 2)[:, 0]
    x = x.masked_fill(x < 1e-6, 0.0)  # as the NumPy version, which needs it after OpenCV's DFT
    hard = x >= threshold
    soft = (x / threshold).clamp_(max=1.0 - 1e-6).masked_fill_(hard, 1.0)
    return soft, hard


# --- the chain ------------------------------------------------------------------------------------------

def overlap_unsupported(chain: StageChain) -> str | None:
    """Why ``chain`` cannot run as one device op (None: it can)."""
    from engines.backends.torch_backend import TorchEngine

    kinds = tuple(type(s) for s in chain.stages)
    if kinds != _STAGES:
        names = " -> ".join(t.__name__ for t in kinds)
        return f"the pipelined path runs the FSGAN v2 chain (reenact v2 -> segment -> complete -> blend), not {names}"
    reenactor, segmenter = chain.stages[0], chain.stages[1]
    backends = sorted({type(s.engine).__name__ for s in chain.stages if not isinstance(s.engine, TorchEngine)})
    if backends:
        return f"the pipelined path needs torch engines (--backend torch), got {', '.join(backends)}"
    devices = sorted({s.engine.device for s in chain.stages})
    if len(devices) != 1:
        return f"the pipelined path needs every network on one device, got {', '.join(devices)}"
    size = chain.crop.size
    if any(s.resolution != size for s in chain.stages) or reenactor.crop_scale != chain.crop.scale:
        return (f"the pipelined path needs every network at the chain's crop ({size} px at crop scale "
                f"{chain.crop.scale}); the reenactor works at {reenactor.resolution} px, {reenactor.crop_scale}")
    if not segmenter.segment_reenacted:
        return "the pipelined path segments the reenacted face (segment_reenacted=True)"
    return None


@dataclass
class _FrameState:
    work: list[FaceWork]


class FsganV2DeviceChain:
    """The learned v2 :class:`StageChain` cut into prepare / compute / finish (see the module docstring).

    It shares the chain's stages: their engines (torch), options, source bank and appearance map;
    :meth:`set_source` and :meth:`close` are the chain's.

    Args:
        chain: What :func:`~stream.stages.learned.learned_chain` builds for ``version="v2"`` on torch.
        max_faces: Faces per device batch; a frame with more is submitted as several batches.
            Default: the blender's batch limit (``learned_chain``'s ``max_faces``), else 4.

    Raises:
        InputError: the chain cannot run this way (:func:`overlap_unsupported` says why).
    """

    def __init__(self, chain: StageChain, *, max_faces: int | None = None) -> None:
        reason = overlap_unsupported(chain)
        if reason is not None:
            raise InputError(reason)
        self.chain = chain
        self.reenactor: FsganReenactorV2 = chain.stages[0]  # type: ignore[assignment]
        self.segmenter: FsganSegmenter = chain.stages[1]  # type: ignore[assignment]
        self.completer: FsganCompleter = chain.stages[2]  # type: ignore[assignment]
        self.blender: FsganBlender = chain.stages[3]  # type: ignore[assignment]
        self.max_faces = max_faces if max_faces is not None else (self.blender.max_batch or 4)
        if self.max_faces < 1:
            raise InputError(f"max_faces must be at least 1, got {self.max_faces}")
        self.max_batch = 3 * self.max_faces  # up to three sources per face
        self.device: str = self.reenactor.engine.device  # type: ignore[attr-defined]
        self._kernel: Any = None

    def set_source(self, bank: Any) -> None:
        """The chain's :meth:`~StageChain.set_source`."""
        self.chain.set_source(bank)

    def make_device(self) -> Device:
        """The executor device for the engines: :class:`CudaDevice` on CUDA, else :class:`CPUDevice`."""
        import torch

        dev = torch.device(self.device)
        if dev.type == "cuda":
            return CudaDevice(dev.index or 0)
        return CPUDevice()

    # -- host ---------------------------------------------------------------------------------------------

    def prepare(self, frame: Frame) -> Prepared:
        """Crops, mixes and rotated sources of every selected face of ``frame``, batched for the device."""
        t0 = time.perf_counter()
        work = self.chain.build_work(frame)
        batches = []
        for i in range(0, len(work), self.max_faces):
            faces = work[i:i + self.max_faces]
            reenact = self.reenactor.inputs(faces)
            if not reenact.same_crop:  # excluded by overlap_unsupported
                raise RuntimeError("the reenactor's crop differs from the chain's")
            arrays = [np.stack([w.image for w in faces]), reenact.points01, reenact.sources0, reenact.sources1,
                      reenact.face_index, reenact.weights]
            if self.segmenter.remove_mouth:
                arrays.append(np.stack([mouth_mask(w) for w in faces]))
            batches.append(arrays)
        if work:
            frame.timings["fsgan_prepare"] = time.perf_counter() - t0
        return Prepared(batches, _FrameState(work))

    def finish(self, frame: Frame, prepared: Prepared, outputs: list[list[np.ndarray]]) -> Frame:
        """Paste the blended crops into ``frame`` with their soft masks; frames without faces pass."""
        work = prepared.state.work
        if not work:
            return frame
        blended = [face for out in outputs for face in out[0]]
        alphas = [alpha for out in outputs for alpha in out[1]]
        for w, image, alpha in zip(work, blended, alphas, strict=True):
            w.output = output_pixels(image)
            w.alpha = alpha
        return StageChain.paste(frame, work)

    # -- device -------------------------------------------------------------------------------------------

    def compute(self, inputs: list[Any], stream: Stream | None = None) -> list[Any]:
        """One batch on the engines' device: ``[blended (F, R, R, 3) float32 0..255, soft mask (F, R, R)]``.

        ``inputs`` are :meth:`prepare`'s arrays as NumPy (CPU) or device tensors; everything is
        enqueued on the current stream (the executor's compute stream), with no host synchronisation.
        """
        import torch

        dev = torch.device(self.device)
        xs = [torch.as_tensor(x).to(dev, non_blocking=True) for x in inputs]
        with torch.inference_mode():
            blended, alpha = self._forward(*xs)
        if dev.type == "cpu":
            return [blended.numpy(), alpha.numpy()]
        return [blended, alpha]

    def _erosion_kernel(self, device: torch.device) -> torch.Tensor:
        import torch

        if self._kernel is None or self._kernel.device != device:
            self._kernel = torch.from_numpy(erosion_kernel(self.segmenter.erosion_kernel)).to(device)
        return self._kernel

    def _forward(self, targets: torch.Tensor, points01: torch.Tensor, sources0: torch.Tensor,
                 sources1: torch.Tensor, face_index: torch.Tensor, weights: torch.Tensor,
                 mouth: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        r = self.reenactor.resolution
        n = targets.shape[0]
        # Gr over the (face, source) pairs, each source next to its face's heatmaps; mixed per face.
        x0 = torch.cat([to_network_torch(sources0.permute(0, 3, 1, 2)),
                        heatmaps_v2_torch(points01, r).index_select(0, face_index)], 1)
        x1 = torch.cat([to_network_torch(sources1.permute(0, 3, 1, 2)),
                        heatmaps_v2_torch(points01, r // 2).index_select(0, face_index)], 1)
        out = self.reenactor.engine.run_tensors(x0, x1)[0].float()  # type: ignore[attr-defined]
        mixed = torch.zeros((n, *out.shape[1:]), dtype=torch.float32, device=out.device)
        mixed.index_add_(0, face_index, out * weights[:, None, None, None])
        reenacted = from_network_torch(mixed)

        # S over targets and reenactments: the target's face (softly eroded), the reenactment's face.
        target = targets.permute(0, 3, 1, 2).float()
        logits = self.segmenter.engine.run_tensors(  # type: ignore[attr-defined]
            to_network_torch(torch.cat([target, reenacted])))[0].float()
        labels = logits.argmax(1)
        face = labels[:n] == FACE_CLASS
        if mouth is not None:
            face &= mouth == 0
        soft, hard = soft_erosion_torch(face, self._erosion_kernel(face.device), self.segmenter.erosion_threshold)
        hard = hard.float()[:, None]
        covered = (labels[n:] == FACE_CLASS)[:, None]

        # Gc fills the target face region from the reenactment without its background.
        xc = torch.cat([to_network_torch(reenacted).masked_fill_(~covered, -1.0), hard], 1)
        completed = from_network_torch(self.completer.engine.run_tensors(*pyramid_torch(xc))[0])  # type: ignore[attr-defined]

        # Gb blends the transfer (completed face inside the hard mask, target outside) into the target.
        transfer = completed * hard + target * (1 - hard)
        xb = torch.cat([to_network_torch(transfer), to_network_torch(target), hard], 1)
        blended = from_network_torch(self.blender.engine.run_tensors(*pyramid_torch(xb))[0])  # type: ignore[attr-defined]
        return blended.permute(0, 2, 3, 1).contiguous(), soft

    def close(self) -> None:
        """The chain's :meth:`~StageChain.close` (engines, source crops)."""
        self.chain.close()
