"""The stage protocol shared by the weight-free default and the learned FSGAN networks.

A swap is a chain of stages of fixed kinds — ``reenact`` -> ``segment`` -> ``complete`` -> ``blend``
(-> ``restore``) — run over every selected face of a frame. A stage sees all faces of the frame at
once (a learned stage runs them as one batch) and fills its fields of :class:`~stream.frames.FaceWork`
in place. Stages are synchronous: the pipeline runs the chain in an executor, off the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import numpy as np

from stream.choices import FaceSelection, StageKind
from stream.exceptions import InputError, NoFaceError
from stream.frames import CropTransform, FaceWork, Frame, HeadPose, SourceFace, TrackedFace

if TYPE_CHECKING:  # carry builds on the complete stage, which builds on this module
    from stream.stages.carry import PatchCarry


@runtime_checkable
class Stage(Protocol):
    """One step of the swap chain."""

    kind: ClassVar[StageKind]
    name: str

    def set_source(self, bank: SourceBank) -> None:
        """Called once per source (before the first frame, and when a live session changes its face).

        Per-source work — mesh of the source, its triangulation, appearance maps — belongs here, not
        in :meth:`process`.
        """
        ...

    def process(self, faces: Sequence[FaceWork]) -> None:
        """Fill this stage's fields of every face (all faces of one frame)."""
        ...

    def close(self) -> None:
        """Release engines/buffers. Safe to call twice."""
        ...


class SourceBank:
    """The faces of the source person: one for an image, one per usable frame for a video."""

    def __init__(self, faces: Sequence[SourceFace]) -> None:
        if not faces:
            raise NoFaceError("no face found in SOURCE")
        self.faces: tuple[SourceFace, ...] = tuple(faces)
        self._poses = np.stack([f.pose.as_vector()[:2] for f in self.faces])  # yaw, pitch

    def __len__(self) -> int:
        return len(self.faces)

    def nearest(self, pose: HeadPose, k: int = 1) -> list[SourceFace]:
        """The ``k`` source faces whose (yaw, pitch) is nearest ``pose``; roll is handled by the warp."""
        if len(self.faces) == 1:  # nothing to choose from: the pose is not read (it may be estimated lazily)
            return list(self.faces[:k])
        d = np.linalg.norm(self._poses - np.array([pose.yaw, pose.pitch], np.float32), axis=1)
        return [self.faces[i] for i in np.argsort(d, kind="stable")[:k]]


@dataclass(frozen=True)
class CropSpec:
    """How target crops are cut.

    ``size=None``: an axis-aligned region at native resolution (weight-free stages); otherwise a square
    ``size`` x ``size`` crop, resampled (learned networks: 256).
    """

    size: int | None = None
    scale: float = 1.2
    """Crop side relative to the landmarks' bounding box (FSGAN uses 1.2)."""

    def transform(self, face: TrackedFace, frame_w: int, frame_h: int) -> CropTransform | None:
        """The crop for ``face``; None when the face lies entirely outside the frame."""
        x0, y0, x1, y1 = face.bbox
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if self.size is None:
            hw, hh = (x1 - x0) * self.scale / 2, (y1 - y0) * self.scale / 2
            # Even bounds (where the frame allows): 4:2:0 chroma is shared by 2x2 pixels, so a pasted box
            # of an even region goes back into the decoded planes without touching pixels around it.
            rx0, ry0 = max(0, int(np.floor(cx - hw)) & ~1), max(0, int(np.floor(cy - hh)) & ~1)
            rx1 = min(frame_w, _even_up(int(np.ceil(cx + hw))))
            ry1 = min(frame_h, _even_up(int(np.ceil(cy + hh))))
            if rx1 - rx0 < 8 or ry1 - ry0 < 8:
                return None
            return CropTransform.region(rx0, ry0, rx1, ry1)
        side = max(x1 - x0, y1 - y0) * self.scale
        if side < 8:
            return None
        s = self.size / side
        m = np.array([[s, 0.0, self.size / 2 - s * cx], [0.0, s, self.size / 2 - s * cy]], np.float64)
        return CropTransform(m, (self.size, self.size))


def _even_up(x: int) -> int:
    return x + (x & 1)


def select_faces(faces: Sequence[TrackedFace], selection: FaceSelection) -> list[TrackedFace]:
    """Which target faces to swap."""
    if selection == "all":
        return list(faces)
    if selection == "largest":
        return [max(faces, key=lambda f: f.area)] if faces else []
    raise InputError(f"unknown face selection {selection!r}; choose from: all, largest")


class StageChain:
    """Runs a sequence of stages over the selected faces of a frame and pastes the result back."""

    def __init__(self, stages: Sequence[Stage], crop: CropSpec, faces: FaceSelection = "all", *,
                 carry: PatchCarry | None = None) -> None:
        kinds = [s.kind for s in stages]
        if "blend" not in kinds:
            raise InputError(f"a stage chain needs a 'blend' stage; got {kinds}")
        self.stages = tuple(stages)
        self.crop = crop
        self.faces = faces
        self.carry = carry
        """Carries what the stages after ``reenact`` made of a face while it moves affinely (region crops
        only); None: every face goes through every stage."""
        if carry is not None and kinds[0] != "reenact":
            raise InputError(f"a chain that carries patches starts with its 'reenact' stage; got {kinds}")
        self.bank: SourceBank | None = None

    def set_source(self, bank: SourceBank) -> None:
        self.bank = bank
        if self.carry is not None:
            self.carry.clear()
        for stage in self.stages:
            stage.set_source(bank)

    def build_work(self, frame: Frame) -> list[FaceWork]:
        """Cut a :class:`FaceWork` for every selected face of ``frame``."""
        assert self.bank is not None, "set_source() must be called before the first frame"
        work: list[FaceWork] = []
        for face in select_faces(frame.faces, self.faces):
            tf = self.crop.transform(face, frame.width, frame.height)
            if tf is None:
                continue
            if tf.is_region:  # a lazy frame converts just this box
                (x0, y0), (w, h) = tf.origin, tf.size
                image = frame.rgb(x0, y0, x0 + w, y0 + h).copy()
            else:
                image = tf.extract(frame.image)
            image.setflags(write=False)  # stages read the target crop; paste composites onto it
            work.append(FaceWork(
                target=face, crop=tf, image=image,
                landmarks=tf.points_to_crop(face.landmarks),
                source=self.bank.nearest(face.pose)[0], frame_index=frame.index,
            ))
        return work

    def __call__(self, frame: Frame) -> Frame:
        """Swap every selected face of ``frame`` in place; frames without faces pass through."""
        work = self.build_work(frame)
        if not work:
            return frame
        todo = work
        for i, stage in enumerate(self.stages):
            if self.carry is not None and i == 1:
                # After the reenact stage, faces that moved affinely since a recent frame take that frame's
                # result from here on.
                t0 = time.perf_counter()
                todo = [w for w in todo if not self.carry.carry(w)]
                frame.timings["carry"] = time.perf_counter() - t0
            if not todo:
                break
            t0 = time.perf_counter()
            stage.process(todo)
            frame.timings[stage.name] = frame.timings.get(stage.name, 0.0) + time.perf_counter() - t0
        if self.carry is not None:
            for w in todo:
                self.carry.put(w)
        return self.paste(frame, work)

    @staticmethod
    def paste(frame: Frame, work: Sequence[FaceWork]) -> Frame:
        """Paste every face's ``output`` into ``frame`` with its ``alpha``; marks what changed."""
        t0 = time.perf_counter()
        for w in work:
            if w.output is None or w.alpha is None:
                raise RuntimeError("the blend stage left no output/alpha")
            if w.crop.is_region:
                region = w.crop.paste_region(frame, w.image, w.output, w.alpha)
            else:
                region = w.crop.paste(frame.image, w.output, w.alpha)
            if region is not None:
                frame.dirty.append(region)
        frame.timings["paste"] = time.perf_counter() - t0
        frame.modified = frame.modified or bool(frame.dirty)
        return frame

    def close(self) -> None:
        if self.carry is not None:
            self.carry.clear()
        for stage in self.stages:
            stage.close()
