"""The offline swap job: SOURCE face(s) into every selected face of an INPUT video.

``swap_video`` wires the pieces: probe and validate (so bad input fails before any output exists),
build the source bank, then source -> tracking -> stage chain -> encoder, with a report at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stream import __version__
from stream.choices import BlendMode, FaceSelection
from stream.exceptions import InputError, InputNotFoundError, NoFaceError, OutputError
from stream.frames import Frame, SourceFace, TrackedFace
from stream.pipeline import PipelineStats, YieldToEncoder, run_pipeline
from stream.stages.base import SourceBank, StageChain
from stream.tracks import FrameProcessor, FrameTrack, ProcessorTrack, SequentialSteps

if TYPE_CHECKING:
    from stream.stages.fsgan_device import FsganV2DeviceChain
    from stream.tracking import FaceTracker

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# Shortest side (pixels) of a source photo below which a missing face is blamed on its size: a portrait that
# small holds a face under about 24 pixels tall, which the tracker does not keep (TrackerConfig.min_face_px).
_SMALL_SOURCE = 64


@dataclass(frozen=True)
class SwapOptions:
    """Everything a swap run needs; built by the CLI or by library users."""

    source: Path
    """Image or video of the person whose face is put in."""
    input: Path
    """Video (or image) whose faces are replaced."""
    output: Path
    """Where the result goes (written to a temporary file, renamed at the end): a video, or for an image
    INPUT also an image (:data:`stream.stills.IMAGE_OUTPUT_EXTENSIONS`)."""
    faces: FaceSelection = "all"
    """Which target faces to replace."""
    models: str | None = None
    """``None`` for the weight-free default, or ``fsgan:DIR`` for the learned FSGAN chain."""
    backend: str = "auto"
    """Inference backend for learned models."""
    precision: str = "fp32"
    """Precision of learned engines (fp16 needs a GPU backend)."""
    fsgan_version: str = "v2"
    """Learned reenactment: ``v2`` (appearance map over source poses) or ``v1`` (stepwise, iterative)."""
    steps: int = 2
    """Reenactment steps of the v1 network (pose interpolated from source to target)."""
    overlap: bool | None = None
    """Run the learned v2 chain through the pipelined executor (host pre-step, one device op per frame,
    host paste; upload, compute and download of consecutive frames overlapped). None: when its engines
    are torch on CUDA. True also works on CPU (simulated streams); False: stage by stage."""
    blend: BlendMode | None = None
    """Blend mode of the weight-free chain (None: its default)."""
    crf: int | None = None
    """Encoder quality (lower is better); None: the encoder's default."""
    preset: str | None = None
    """Encoder speed preset; None: the encoder's default."""
    codec: str | None = None
    """Video codec of the output; None: the encoder's default."""
    workers: int | None = None
    """Frames the stage chain works on at once (None: one per two cores, at most 2, for the weight-free
    chain, whose stages are stateless per frame; 1 for learned engines, which batch faces themselves). On
    2 cores a second worker only adds contention with tracking and the encoder (-7 % fps measured)."""
    split_steps: bool | None = None
    """Track and run the stage chain on threads of their own, so that tracking of one frame overlaps the
    stages of the one before, rather than one after the other on one thread. None: only with more than 2
    cores. Always apart with ``workers`` > 1 and for the learned chain's pipelined executor. On 2 cores the
    decoder and the encoder keep a core busy already, and two Python steps on two threads only hand the GIL
    to and fro: one thread for both measured 3 % more fps for 5 % less CPU on the demo clip (5 alternate
    pairs), 0.75-0.80 -> 0.82-0.92 of the transcode floor on a camera-like one."""
    yield_to_encoder: bool = True
    """Lower the tracking and stage threads' priority (niceness 10) once the encoder proves the bottleneck
    and they need under half a core (:class:`stream.pipeline.YieldToEncoder`), so that they run in the
    encoder's idle moments rather than taking cores from it; the report's ``priority_lowered_at`` says after
    which frame, if at all, and ``steps_busy`` the busiest step thread's share of the time when it last
    looked."""
    source_frames: int = 64
    """At most this many frames are sampled from a SOURCE video to match poses against."""
    progress: bool = True
    """Print a progress line on stderr."""
    report: Path | None = None
    """Write the JSON report here."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Extra container metadata for the output."""


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a container or ``taskset`` narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_paths(options: SwapOptions) -> None:
    """Fail early, before anything is opened for writing."""
    for label, path in (("SOURCE", options.source), ("INPUT", options.input)):
        if not path.exists():
            raise InputNotFoundError(f"{label} not found: {path}")
        if path.is_dir():
            raise InputError(f"{label} is a directory, not a file: {path}")
    from stream.reports import check_output_path

    out = options.output
    # The source too: it is read while the output is written.
    check_output_path(out, "OUTPUT", {"INPUT": options.input, "SOURCE": options.source})
    from stream.sinks import OUTPUT_EXTENSIONS
    from stream.stills import IMAGE_OUTPUT_EXTENSIONS, is_image_output

    if out.suffix.lower() not in OUTPUT_EXTENSIONS + IMAGE_OUTPUT_EXTENSIONS:
        raise OutputError(f"unknown output extension {out.suffix or '(none)'!r} in {out}; use a video "
                          f"({', '.join(OUTPUT_EXTENSIONS)}) or, for a photo INPUT, an image "
                          f"({', '.join(IMAGE_OUTPUT_EXTENSIONS)})")
    if is_image_output(out):
        if options.input.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"an image OUTPUT ({out.name}) needs an image INPUT; {options.input.name} is "
                             "not one (write a video OUTPUT for it)")
        given = [name for name, v in (("--codec", options.codec), ("--crf", options.crf),
                                      ("--preset", options.preset)) if v is not None]
        if given:
            raise InputError(f"{', '.join(given)} set the video encoder; an image OUTPUT ({out.name}) has none")
    else:
        encode_settings(options).for_output(out).codec_options()  # a bad --crf or --preset, before any set-up
    if options.report is not None:
        check_output_path(options.report, "--report", {"INPUT": options.input, "SOURCE": options.source,
                                                       "OUTPUT": options.output})
    if options.overlap and (options.models is None or options.fsgan_version != "v2"):
        got = "no --models" if options.models is None else f"--fsgan-version {options.fsgan_version}"
        raise InputError(f"--overlap runs the learned FSGAN v2 chain (--models fsgan:DIR, --fsgan-version v2); "
                         f"got {got}")


def largest_source_face(image: np.ndarray, *, rotation: int = 0, frame_index: int = 0, crop: bool = False,
                        tracker: FaceTracker | None = None, fine: bool = False) -> SourceFace | None:
    """The largest face of ``image`` as a :class:`SourceFace` (None: no face). ``crop`` keeps only a box
    around it, so that a bank of many video frames does not hold whole frames. ``tracker``
    (:func:`stream.tracking.image_tracker`) detects instead of a new one per call: for many images. ``fine``
    searches down to small faces when the image as a whole shows none (a photo of a group, or of a person
    far off): see :meth:`~stream.tracking.FaceTracker.detect`."""
    from stream.tracking import image_tracker

    if tracker is None:
        with image_tracker() as own:
            return largest_source_face(image, rotation=rotation, frame_index=frame_index, crop=crop, tracker=own,
                                       fine=fine)
    found = tracker.detect(image, rotation=rotation, max_faces=4, small_faces=False, fine=fine)
    if not found:
        return None
    best = max(found, key=lambda f: f.area)
    if crop:
        return _crop_source(image, best, frame_index)
    return SourceFace(image=image, landmarks=best.landmarks, pose=best.pose, frame_index=frame_index)


_TURN_NAMES = {90: "a quarter turn counter-clockwise", 180: "half a turn", 270: "a quarter turn clockwise"}


def upright_rotation(tracker: FaceTracker, image: np.ndarray | Frame, rotation: int = 0) -> int:
    """The display rotation (degrees counter-clockwise) under which ``image`` shows its face upright.

    The detector finds upright faces: a face turned away from upright (a scan, a photo whose EXIF orientation
    was lost) is often missed when the whole image is searched. So the detector scores the image under
    ``rotation`` (its own display rotation) and a quarter turn either way and half a turn from it;
    ``rotation`` is kept unless another scores clearly higher (:data:`~stream.tracking.TURN_MARGIN`).
    """
    from stream.tracking import TURN_MARGIN, TURNS

    best, best_score = rotation, tracker.detection_score(image, rotation=rotation) + TURN_MARGIN
    for turn in TURNS:
        score = tracker.detection_score(image, rotation=(rotation + turn) % 360)
        if score > best_score:
            best, best_score = (rotation + turn) % 360, score
    return best


def upright_source_face(image: np.ndarray) -> SourceFace | None:
    """The largest face of a photo (RGB uint8), in the photo turned the way up its face stands upright
    (:func:`upright_rotation`). The face's ``image`` is the photo as turned; None: no face whichever way up."""
    from stream.tracking import image_tracker

    with image_tracker() as tracker:
        rotation = upright_rotation(tracker, image)
        if rotation:
            face = largest_source_face(np.ascontiguousarray(np.rot90(image, rotation // 90)), tracker=tracker,
                                       fine=True)
            if face is not None:
                logger.info("the source face stands upright with the image turned %s", _TURN_NAMES[rotation])
                return face
            # A face too small for the way-up check's look, which the detector then happened to find only
            # turned (near its smallest size it is erratic): the fine look finds it as it stands.
        return largest_source_face(image, tracker=tracker, fine=True)


PHOTO_MAX_FACES = 32
"""Most faces swapped in a photo INPUT (a video tracks :attr:`~stream.tracking.TrackerConfig.max_faces`)."""


class UprightPhotoTracker:
    """A :class:`~stream.tracking.FaceTracker` for a photo INPUT: its faces are found under the display rotation
    that shows them upright (:func:`upright_rotation`), so that a photo lying on its side or upside down has its
    faces swapped too. The photo itself is written as it came. The way up is decided on the first frame and kept
    (an animated WebP or a multi-page TIFF has more: four detector runs each would be per-frame set-up).

    Each frame is searched whole, at once and down to small faces (:meth:`FaceTracker.detect` with ``fine``): a
    video's tracker looks at one region a frame, and a photo has one frame, in which a group's faces are small.
    """

    def __init__(self, tracker: FaceTracker) -> None:
        self.tracker = tracker
        self.rotation: int | None = None
        """The display rotation the frames are tracked under; None before the first frame."""

    def __call__(self, frame: Frame) -> Frame:
        if self.rotation is None:
            self.rotation = upright_rotation(self.tracker, frame, frame.rotation)
            if self.rotation != frame.rotation:
                logger.info("the faces of the photo stand upright with it turned %s",
                            _TURN_NAMES[(self.rotation - frame.rotation) % 360])
        faces = self.tracker.detect(frame, rotation=self.rotation, max_faces=PHOTO_MAX_FACES, fine=True)
        if self.rotation != frame.rotation:
            # The way-up check looks at the photo shrunk: a group's small faces it may see only turned, by chance
            # (near its smallest size the detector is erratic). Turned the other way, the fine look finds more.
            as_is = self.tracker.detect(frame, rotation=frame.rotation, max_faces=PHOTO_MAX_FACES, fine=True)
            if len(as_is) > len(faces):
                logger.info("the faces of the photo stand upright as it is after all")
                self.rotation, faces = frame.rotation, as_is
        frame.faces = faces
        return frame

    def close(self) -> None:
        """Release the tracker."""
        self.tracker.close()


def load_source_bank(path: Path, *, max_frames: int = 64) -> SourceBank:
    """Faces of the source person: the largest face of an image, or of about ``max_frames`` frames spread
    over a video (:func:`stream.sources.sample_video_frames`), all found by one tracker."""
    from stream.sources import load_image, sample_video_frames
    from stream.tracking import image_tracker

    faces: list[SourceFace | None] = []
    why = ""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = load_image(path)
        faces.append(upright_source_face(image))
        h, w = image.shape[:2]
        if min(h, w) < _SMALL_SOURCE:
            why = f" (a {w}x{h} image: too small for a face to be found; give a larger photo)"
    else:
        with image_tracker() as tracker:
            way: int | None = None  # the display rotation the video's faces stand upright under, once known
            for frame in sample_video_frames(path, max_frames):
                rotation = frame.rotation if way is None else way
                face = largest_source_face(frame.image, rotation=rotation, frame_index=frame.index, crop=True,
                                           tracker=tracker)
                if face is None and way is None:
                    # A video turned with no rotation tag to say so: its faces lie on their side or upside
                    # down, which the detector, made for upright faces, mostly misses as they are. Until a
                    # first face shows the way up, a frame without one is looked at turned too.
                    turned = upright_rotation(tracker, frame.image, rotation)
                    if turned != rotation:
                        face = largest_source_face(frame.image, rotation=turned, frame_index=frame.index,
                                                   crop=True, tracker=tracker)
                        if face is not None:
                            logger.info("the source video's faces stand upright with it turned %s",
                                        _TURN_NAMES[(turned - frame.rotation) % 360])
                            rotation = turned
                if face is not None:
                    way = rotation
                faces.append(face)
    found = [f for f in faces if f is not None]
    if not found:
        raise NoFaceError(f"no face found in SOURCE: {path}{why}")
    return SourceBank(found)


def _crop_source(image: np.ndarray, face: TrackedFace, index: int) -> SourceFace:
    """Keep only a generous box around the face so a long source video does not hold full frames."""
    x0, y0, x1, y1 = face.bbox
    w, h = x1 - x0, y1 - y0
    cx0, cy0 = max(0, int(x0 - w)), max(0, int(y0 - h))
    cx1, cy1 = min(image.shape[1], int(x1 + w)), min(image.shape[0], int(y1 + h))
    lm = face.landmarks.copy()
    lm[:, 0] -= cx0
    lm[:, 1] -= cy0
    return SourceFace(image=np.ascontiguousarray(image[cy0:cy1, cx0:cx1]), landmarks=lm, pose=face.pose,
                      frame_index=index)


def build_chain(options: SwapOptions) -> StageChain:
    """The stage chain the options ask for: the weight-free default or the learned FSGAN networks."""
    if options.models is None:
        from stream.stages import default_chain

        kwargs: dict[str, Any] = {"faces": options.faces}
        if options.blend is not None:
            kwargs["blend"] = options.blend
        return default_chain(**kwargs)
    kind, _, location = options.models.partition(":")
    if kind != "fsgan" or not location:
        raise InputError(f"unknown --models {options.models!r}; expected fsgan:DIR")
    from stream.stages.learned import learned_chain

    return learned_chain(Path(location).expanduser(), backend=options.backend, precision=options.precision,
                         faces=options.faces, version=options.fsgan_version, steps=options.steps)


def overlap_chain(options: SwapOptions, chain: StageChain) -> FsganV2DeviceChain | None:
    """``chain`` cut for the pipelined executor when ``options.overlap`` asks for it (None: auto, i.e.
    a learned v2 chain of torch engines on CUDA); None when it runs stage by stage.

    Raises:
        InputError: ``overlap=True`` but the chain cannot run that way (the message says why).
    """
    if options.overlap is False or options.models is None or options.fsgan_version != "v2":
        return None  # check_paths has refused overlap=True for these
    from stream.stages.fsgan_device import FsganV2DeviceChain, overlap_unsupported

    reason = overlap_unsupported(chain)
    if reason is not None:
        if options.overlap:
            raise InputError(f"--overlap: {reason}")
        logger.info("learned chain runs stage by stage: %s", reason)
        return None
    split = FsganV2DeviceChain(chain)
    if options.overlap is None and not split.device.startswith("cuda"):
        return None
    return split


def output_metadata(options: SwapOptions) -> dict[str, str]:
    """Container tags that mark the output as synthetic (never removed, whatever the options)."""
    mode = "fsgan" if options.models else "weight-free"
    tags = dict(options.metadata)
    tags.update({
        "synthetic": "true",
        "facestream": __version__,
        "facestream_mode": f"swap/{mode}",
        "comment": f"Synthetic media: face swapped by facestream {__version__} ({mode})",
    })
    return tags


class Progress:
    """A single self-overwriting stderr line, at most a few updates per second."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled and sys.stderr.isatty()
        self._t0 = time.monotonic()
        self._last = 0.0
        self._width = 0  # of the line on screen
        self.count = 0

    def __call__(self, frame: Frame) -> None:
        self.count += 1
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.25:
            return
        self._last = now
        fps = self.count / max(now - self._t0, 1e-6)
        total = f"/{self.total}" if self.total else ""
        line = f"facestream: frame {self.count}{total}  {fps:5.1f} fps"
        sys.stderr.write("\r" + line.ljust(self._width))
        self._width = len(line)
        sys.stderr.flush()

    def done(self) -> None:
        """Wipe the line: the summary or the error that follows takes its place (a stale 'frame 271/300'
        would sit above a run that wrote all 300)."""
        if self.enabled and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()
            self._width = 0


def encode_settings(options: SwapOptions) -> Any:
    from stream.sinks import EncodeSettings

    overrides = {k: v for k, v in (("crf", options.crf), ("preset", options.preset), ("codec", options.codec))
                 if v is not None}
    return EncodeSettings(**overrides)


async def swap_video(options: SwapOptions, *, on_frame: Callable[[Frame], None] | None = None,
                     tracker: FrameProcessor | None = None, stages: bool = True) -> dict[str, Any]:
    """Run one swap; returns the report (also written to ``options.report`` when set).

    For benchmarks (``facestream bench --breakdown``): ``tracker`` replaces the face tracker (a callable
    filling ``frame.faces``, with ``close()``), and ``stages=False`` runs tracking alone (no stage chain:
    frames go out as they came in).
    """
    from stream.sinks import VideoFileSink
    from stream.sources import VideoFileSource, probe_video
    from stream.stills import ImageFileSink, is_image_output
    from stream.tracking import FaceTracker

    check_paths(options)
    t_start = time.perf_counter()

    def setup() -> tuple[Any, SourceBank, StageChain]:
        info = probe_video(options.input)
        bank = load_source_bank(options.source, max_frames=options.source_frames)
        chain = build_chain(options)
        chain.set_source(bank)
        return info, bank, chain

    # Seconds of probing, face detection and model loading: off the event loop.
    info, bank, chain = await asyncio.get_running_loop().run_in_executor(None, setup)
    setup_seconds = time.perf_counter() - t_start

    split = overlap_chain(options, chain) if stages else None
    source = VideoFileSource(options.input)
    # Further video streams are copied as they are (nothing is lost), faces and all: say so, since the output
    # is no longer swapped throughout (multi-track recordings carry the same picture at other bitrates).
    unswapped = [s.index for s in source.copy_streams if s.type == "video"]
    for index in unswapped:
        logger.warning("%s: video stream #%d is copied unchanged: only stream #%d has its faces swapped",
                       options.input, index, source.info.video_index)
    sink: VideoFileSink | ImageFileSink | None = None
    try:
        # The output before the tracker: a container that cannot hold a stream fails before MediaPipe starts.
        if is_image_output(options.output):
            sink = ImageFileSink(options.output, options.input, metadata=output_metadata(options),
                                 learned=options.models is not None)
        else:
            sink = VideoFileSink(options.output, source, settings=encode_settings(options),
                                 metadata=output_metadata(options), learned=options.models is not None)
        # FaceTracker closes what it started if its own set-up is interrupted.
        step: FrameProcessor
        if tracker is not None:
            step = tracker
        elif options.input.suffix.lower() in IMAGE_SUFFIXES:
            step = UprightPhotoTracker(FaceTracker())
        else:
            step = FaceTracker()
    except BaseException:
        if sink is not None:
            await sink.abort()
        source.stop()
        if split is not None:
            split.close()
        else:
            chain.close()
        raise

    def close_all() -> None:
        step.close()
        if split is None:  # the pipelined track closes the chain itself, once its device work is done
            chain.close()

    swapped: FrameTrack
    tracked: FrameTrack | None = None
    piped = None
    cores = usable_cores()
    workers = options.workers or (1 if options.models else min(2, max(1, cores // 2)))
    apart = options.split_steps if options.split_steps is not None else cores > 2
    apart = apart or not stages or split is not None or workers > 1
    if not apart:  # one thread: each frame tracked, then through the chain; each step timed under its name
        swapped = ProcessorTrack(source, SequentialSteps([("track", step), ("swap", chain)]), name="swap", ahead=1)
    else:
        tracked = ProcessorTrack(source, step, name="track", ahead=1)  # timed under its name
        if split is not None:
            from stream.pipelined import PipelinedTrack

            logger.info("learned chain through the pipelined executor on %s", split.device)
            swapped = piped = PipelinedTrack(tracked, split, split.make_device, name="swap", on_close=split.close)
        elif not stages:
            swapped = tracked
        else:
            swapped = ProcessorTrack(tracked, chain, name="swap", workers=workers, ahead=1)
    progress = Progress(info.frames, options.progress)
    steps = [t for t in dict.fromkeys((tracked, swapped)) if isinstance(t, ProcessorTrack)]
    watch = None
    if options.yield_to_encoder and isinstance(sink, VideoFileSink) and steps:
        encoder = sink
        watch = YieldToEncoder(lambda: encoder.queue_fill, steps)

    def per_frame(frame: Frame) -> None:
        progress(frame)
        if watch is not None:
            watch(frame)
        if on_frame is not None:
            on_frame(frame)

    try:
        stats: PipelineStats = await run_pipeline(swapped, sink, on_frame=per_frame, stop=close_all)
    finally:
        progress.done()
        if piped is not None:
            await piped.aclose()  # nothing left running on the device when the job returns
    report = build_report(options, stats, bank, setup_seconds, truncated=bool(getattr(source, "truncated", False)))
    report["unswapped_video_streams"] = unswapped
    report["overlap"] = split is not None
    report["split_steps"] = apart
    report["priority_lowered_at"] = watch.lowered_at if watch is not None else None
    report["steps_busy"] = None if watch is None or watch.busy is None else round(watch.busy, 3)
    # Faces whose swap was carried from a recent frame (stream.stages.carry) rather than made by every stage.
    report["faces_carried"] = chain.carry.counters["reused"] if stages and chain.carry is not None else None
    if options.report is not None:
        from stream.reports import write_json

        write_json(options.report, report)
    return report


def build_report(options: SwapOptions, stats: PipelineStats, bank: SourceBank, setup_seconds: float,
                 *, truncated: bool) -> dict[str, Any]:
    report: dict[str, Any] = {
        "facestream": __version__,
        "input": str(options.input),
        "source": str(options.source),
        "output": str(options.output),
        "mode": "fsgan" if options.models else "weight-free",
        "faces_option": options.faces,
        "source_faces": len(bank),
        "input_truncated": truncated,
        "setup_seconds": round(setup_seconds, 4),
    }
    report.update(stats.as_dict())
    if dataclasses.is_dataclass(stats.sink):
        report["sink"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(stats.sink).items()}
    return report


def run_swap(options: SwapOptions) -> dict[str, Any]:
    """Synchronous wrapper around :func:`swap_video`."""
    return asyncio.run(swap_video(options))
