"""Face tracking: MediaPipe full-range detection, per-face mesh on a rotated crop, One-Euro smoothing.

How a frame is processed (:meth:`FaceTracker.track`):

1. **Follow each live track.** Every ``mesh_every`` frames (a *keyframe*) the face is meshed: the
   region of interest (ROI) is a square around its previous raw landmarks, rotated so the eyes are
   level (so tilted and display-rotated faces reach the network upright), 1.5x the landmarks' extent.
   Only the axis-aligned box around that ROI is copied out of the frame; MediaPipe's landmark network
   (``face_landmark_with_attention.tflite``, 478 points with irises) runs on it through a small graph
   of MediaPipe calculators that also returns the network's face-presence score. Between keyframes
   the keyframe mesh is carried by sparse optical flow on a small grey crop of the face
   (:mod:`stream.landmark_flow`, about a quarter of a mesh run); whenever the flow cannot be trusted
   (the head turns, the mouth or eyes change, fast motion, occlusion) the face is meshed at once.
2. **Re-find lost faces.** A track whose presence score drops is looked for at once by the detector in
   a region around its last position; found, it keeps its id (its smoothing restarts), otherwise the
   track ends.
3. **Detect new faces**, with MediaPipe's *full-range* detector
   (``FaceDetection(model_selection=1)``). A scan covers the whole frame, shrunk, and then overlapping
   square tiles of it, because the detector sees a 192x192 letterbox: a 60-pixel face in a 1280x720
   frame is 9 pixels there, too small even for the full-range model, and is missed entirely by the
   short-range model that MediaPipe's ``FaceMesh`` uses. One region is detected per frame, so no frame
   pays for more than one detector run to scan. A scan starts every ``detect_every`` frames while there is
   room for more faces, and back to back while none is tracked. A region whose pixels have not changed since
   it was last detected (sampled on a sparse grid, tracked heads and shoulders left out) is skipped: the
   detector would only find again what it found then. Any track ending, or :data:`_MAX_UNSEEN` frames
   going by, makes every region count as changed. While no face is tracked, a second scan looks at the
   frame turned a quarter turn either way and half a turn, for faces lying on their side or upside down
   that the detector, made for upright faces, misses as they are. It takes a frame's detector run when the
   upright scan has nothing changed to look at, and at least every fourth frame; what it finds must be
   found again by the *short-range* model in an upright close-up, because three more looks at a frame are
   three more chances to take something for a face. Detections over a tracked face are ignored; the rest
   start new tracks (up to ``max_faces``), whose first ROI comes from the detection's box and eyes and
   is refined twice from the mesh. A face found (new, or a lost one re-found) is first detected again
   close up, in a square around itself, as it is and with the frame turned a quarter turn either way and
   half a turn, and taken from the turn where it scores clearly highest: the detector labels the eyes of a
   face lying on its side or upside down as if it stood upright, which would turn the ROI, and the mesh,
   the wrong way.
4. **Smooth** each track's landmarks with a One-Euro filter driven by the frame timestamps
   (:mod:`stream.filters`), and estimate **head pose** from the smoothed mesh (:mod:`stream.pose`).

Track ids count up from 0 and are never reused within a tracker's life (:meth:`FaceTracker.reset`
does not rewind them). Landmarks are in *stored* pixels; ``rotation`` is the display rotation (degrees
counter-clockwise, as PyAV's ``VideoFrame.rotation``), which only decides what "upright" means for the
detector and for the head-pose angles.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from stream.exceptions import InputError
from stream.filters import OneEuroConfig, OneEuroFilter
from stream.frames import Frame, TrackedFace
from stream.landmark_flow import LandmarkFlow
from stream.pixels import Pixels, as_pixels
from stream.pose import LazyHeadPose, stored_to_upright_matrix, upright_size

logger = logging.getLogger(__name__)

__all__ = ["FaceTracker", "TrackerConfig", "benchmark_tracker", "detect_faces", "image_tracker"]

NUM_LANDMARKS = 478
_RIGHT_EYE_OUTER, _LEFT_EYE_OUTER = 33, 263  # subject's right eye is on the image's left
_ROI_SCALE = 1.5  # ROI side relative to the face's extent, as MediaPipe's own face-mesh graph uses
_DETECT_SIDE = 320  # regions are shrunk to about this side (at least) before the 192x192 detector
_ROTATIONS = (0, 90, 180, 270)
TURN_MARGIN = 0.05
"""How much higher (detector score, 0-1) a face must score turned a quarter or half turn than as it is to be
taken as lying that way: the detector is made for upright faces and scores them 0.87-0.91 (the sample
portraits), turned ones 0.6-0.76."""
TURNS = (90, 270, 180)
"""The turns (degrees counter-clockwise, on top of the display rotation) a face lying on its side or upside down
is looked for under, sideways first: the likelier."""
_CLOSE_RANGE_SIDE = 128  # input side of MediaPipe's short-range face detector
_CV_ROTATE = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}


@dataclass(frozen=True)
class TrackerConfig:
    """How faces are found, followed and smoothed."""

    max_faces: int = 4
    """Most faces tracked at once; further detections are ignored (largest faces are kept)."""
    detect_every: int = 10
    """Start a detection scan for new faces every this many frames (one region per frame; back to back
    while no face is tracked); between scans faces are followed by their mesh alone."""
    min_detection_confidence: float = 0.5
    """Detector score in [0, 1] below which a detection is ignored."""
    min_presence: float = 0.5
    """Face-presence score of the landmark network in [0, 1] below which a track counts as lost."""
    min_face_px: float = 24.0
    """Smallest face (height of the landmarks' box, stored pixels) that is detected or kept tracked."""
    smoothing: OneEuroConfig | None = field(default_factory=OneEuroConfig)
    """One-Euro parameters for the landmarks (speed measured in face heights per second); None turns
    smoothing off."""
    refine_landmarks: bool = True
    """Use the attention mesh model (478 points, accurate lips, eyes and irises). False runs the
    faster 468-point model and places the 10 iris points from the eye contours."""
    tile_detection: bool = True
    """Also run the detector on overlapping square tiles of the frame, which finds faces down to
    ~50 px tall in 720p (~80 px without) at the cost of two more detector runs per scan (one per frame)."""
    turned_faces: bool = True
    """While no face is tracked, also scan the frame turned a quarter turn either way and half a turn (one region
    a frame, in the frames the upright scan leaves free, and at least every fourth), which finds faces lying on
    their side or upside down (a person lying down, a phone video without its rotation tag) that the
    detector, made for upright faces, misses as they are."""
    match_iou: float = 0.3
    """Intersection-over-union above which a detection is taken to be an already tracked face."""
    mesh_every: int = 10
    """Run the mesh network on a tracked face at least every this many frames; in between its mesh is
    carried by optical flow (:mod:`stream.landmark_flow`), and the network runs early whenever the flow
    cannot be trusted (the head turns, the mouth or eyes move, fast motion, occlusion). 1 meshes every
    frame. Measured against meshing every frame on the demo clip, camera-like and panned footage: 95 % of
    the carried points within 0.33 %, 0.43 % and 0.61 % of the face height (0.28 %, 0.36 %, 0.58 % at
    6), for 40 % fewer network runs (0.4 ms of CPU a frame on the demo clip)."""

    def __post_init__(self) -> None:
        if self.max_faces < 1:
            raise InputError(f"max_faces must be >= 1; got {self.max_faces!r}")
        if self.mesh_every < 1:
            raise InputError(f"mesh_every must be >= 1 (frames); got {self.mesh_every!r}")
        if self.detect_every < 1:
            raise InputError(f"detect_every must be >= 1 (frames); got {self.detect_every!r}")
        for name in ("min_detection_confidence", "min_presence", "match_iou"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must be in [0, 1]; got {value!r}")
        if self.min_face_px < 0:
            raise InputError(f"min_face_px must be >= 0; got {self.min_face_px!r}")


# --------------------------------------------------------------------------- geometry helpers


@dataclass(frozen=True)
class _Roi:
    """A rotated square in stored pixels: centre, side and rotation (radians, clockwise in the image)."""

    cx: float
    cy: float
    size: float
    angle: float

    def bounds(self, width: int, height: int) -> tuple[int, int, int, int] | None:
        """Axis-aligned pixel box holding the rotated square, clipped to the image; None if outside."""
        half = self.size / 2 * (abs(math.cos(self.angle)) + abs(math.sin(self.angle)))
        x0, y0 = max(0, math.floor(self.cx - half)), max(0, math.floor(self.cy - half))
        x1, y1 = min(width, math.ceil(self.cx + half)), min(height, math.ceil(self.cy + half))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return None
        return x0, y0, x1, y1


def _roi_from_landmarks(points: np.ndarray) -> _Roi:
    """ROI around a mesh (stored pixels): eyes level, square, ``_ROI_SCALE`` x its extent."""
    d = points[_LEFT_EYE_OUTER, :2] - points[_RIGHT_EYE_OUTER, :2]
    angle = math.atan2(float(d[1]), float(d[0]))
    c, s = math.cos(angle), math.sin(angle)
    # Extent in the face's own (eyes-level) axes, then back to the image.
    xy = points[:, :2].astype(np.float64)
    u = xy @ np.array([c, s])
    v = xy @ np.array([-s, c])
    u0, u1, v0, v1 = u.min(), u.max(), v.min(), v.max()
    uc, vc = (u0 + u1) / 2, (v0 + v1) / 2
    return _Roi(uc * c - vc * s, uc * s + vc * c, max(u1 - u0, v1 - v0) * _ROI_SCALE, angle)


def _bbox(points: np.ndarray) -> tuple[float, float, float, float]:
    x0, y0 = points[:, :2].min(axis=0)
    x1, y1 = points[:, :2].max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _check_rotation(rotation: int) -> int:
    r = int(rotation) % 360
    if r not in _ROTATIONS:
        raise InputError(f"rotation must be one of 0, 90, 180, 270 degrees; got {rotation!r}")
    return r


def _pixels(image: np.ndarray | Pixels) -> Pixels:
    """``image`` checked and as :class:`Pixels`: an (H, W, 3) uint8 RGB array, or pixels (a frame)."""
    # A frame first: a runtime-checkable Protocol's isinstance inspects every member (10 us a frame).
    if isinstance(image, Frame) or (not isinstance(image, np.ndarray) and isinstance(image, Pixels)):
        return image
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
            and image.dtype == np.uint8):
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", None)
        raise InputError(f"image must be an (H, W, 3) uint8 RGB array; got shape {shape} dtype {dtype}")
    return as_pixels(image)


def _affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


# --------------------------------------------------------------------------- MediaPipe graphs

# Landmark network on an image + ROI; also returns the face-presence score, which MediaPipe's own
# FaceLandmarkCpu subgraph only uses to gate its output. Built from MediaPipe's calculators.
# One executor thread: the graph is a straight line of calculators, and handing each packet to another
# thread of a pool cost more CPU than it overlapped (-12 % tracking CPU per frame measured).
_MESH_GRAPH = """
num_threads: 1
input_stream: "image"
input_stream: "roi"
input_side_packet: "with_attention"
output_stream: "landmarks"
output_stream: "presence"
node {{
  calculator: "ImageToTensorCalculator"
  input_stream: "IMAGE:image"
  input_stream: "NORM_RECT:roi"
  output_stream: "TENSORS:input_tensors"
  options {{ [mediapipe.ImageToTensorCalculatorOptions.ext] {{
    output_tensor_width: 192 output_tensor_height: 192
    output_tensor_float_range {{ min: 0.0 max: 1.0 }}
    border_mode: BORDER_REPLICATE
  }} }}
}}
node {{
  calculator: "FaceLandmarksModelLoader"
  input_side_packet: "WITH_ATTENTION:with_attention"
  output_side_packet: "MODEL:model"
}}
node {{ calculator: "TfLiteCustomOpResolverCalculator" output_side_packet: "OP_RESOLVER:op_resolver" }}
node {{
  calculator: "InferenceCalculator"
  input_stream: "TENSORS:input_tensors"
  input_side_packet: "MODEL:model"
  input_side_packet: "OP_RESOLVER:op_resolver"
  output_stream: "TENSORS:output_tensors"
  options {{ [mediapipe.InferenceCalculatorOptions.ext] {{ delegate {{ xnnpack {{}} }} }} }}
}}
node {{
  calculator: "SplitTensorVectorCalculator"
  input_stream: "output_tensors"
  output_stream: "landmark_tensors"
  output_stream: "presence_tensor"
  options {{ [mediapipe.SplitVectorCalculatorOptions.ext] {{
    ranges: {{ begin: 0 end: {n_landmark_tensors} }}
    ranges: {{ begin: {n_landmark_tensors} end: {n_tensors} }}
  }} }}
}}
node {{
  calculator: "TensorsToFloatsCalculator"
  input_stream: "TENSORS:presence_tensor"
  output_stream: "FLOAT:presence"
  options {{ [mediapipe.TensorsToFloatsCalculatorOptions.ext] {{ activation: SIGMOID }} }}
}}
node {{
  calculator: "{decoder}"
  input_stream: "TENSORS:landmark_tensors"
  output_stream: "LANDMARKS:roi_landmarks"
}}
node {{
  calculator: "LandmarkProjectionCalculator"
  input_stream: "NORM_LANDMARKS:roi_landmarks"
  input_stream: "NORM_RECT:roi"
  output_stream: "NORM_LANDMARKS:landmarks"
}}
"""

_mp_lock = threading.Lock()


def _mediapipe() -> Any:
    """Import MediaPipe once and point its resource loader at the installed package (the models)."""
    with _mp_lock:
        import mediapipe as mp
        from mediapipe.python._framework_bindings import resource_util

        resource_util.set_resource_dir(os.path.dirname(os.path.dirname(os.path.abspath(mp.__file__))))
        return mp


class _MeshRunner:
    """One MediaPipe graph running the landmark network on (image, ROI) pairs."""

    def __init__(self, refine: bool) -> None:
        mp = _mediapipe()
        from google.protobuf import text_format
        from mediapipe.framework import calculator_pb2
        from mediapipe.framework.formats import rect_pb2

        self._mp = mp
        self._rect = rect_pb2.NormalizedRect
        self.refine = refine
        text = _MESH_GRAPH.format(
            n_landmark_tensors=6 if refine else 1, n_tensors=7 if refine else 2,
            decoder="TensorsToFaceLandmarksWithAttention" if refine else "TensorsToFaceLandmarks")
        config = text_format.Parse(text, calculator_pb2.CalculatorGraphConfig())
        self._graph = mp.CalculatorGraph(graph_config=config)
        self._out: dict[str, dict[int, Any]] = {"landmarks": {}, "presence": {}}
        self._ts = 0
        self._closed = False
        try:
            self._graph.observe_output_stream("landmarks", self._observe)
            self._graph.observe_output_stream("presence", self._observe)
            self._graph.start_run({"with_attention": mp.packet_creator.create_bool(refine)})
        except BaseException:
            # Ctrl-C or SIGTERM during set-up: a started graph left open goes on starting its calculators
            # on threads of its own, and logs after the run has said its last line.
            self.close()
            raise

    def _observe(self, stream: str, packet: Any) -> None:
        getter = self._mp.packet_getter
        value = getter.get_proto(packet) if stream == "landmarks" else getter.get_float(packet)
        self._out[stream][packet.timestamp.value] = value

    def run(self, image: Pixels, rois: list[_Roi]) -> list[tuple[np.ndarray | None, float]]:
        """Landmarks ``(478, 3)`` in ``image`` pixels (None when nothing came back) and presence per ROI."""
        mp = self._mp
        h, w = image.shape[:2]
        stamps: list[int | None] = []
        boxes: dict[int, tuple[int, int, int, int]] = {}
        for roi in rois:
            box = roi.bounds(w, h)
            if box is None:
                stamps.append(None)
                continue
            x0, y0, x1, y1 = box
            # Only the ROI's box is copied (the packet needs contiguous memory), never the frame.
            crop = np.ascontiguousarray(image.rgb(x0, y0, x1, y1))
            cw, ch = x1 - x0, y1 - y0
            rect = self._rect(x_center=(roi.cx - x0) / cw, y_center=(roi.cy - y0) / ch,
                              width=roi.size / cw, height=roi.size / ch, rotation=roi.angle)
            self._ts += 1
            ts = self._ts
            packet = mp.packet_creator.create_image_frame(image_format=mp.ImageFormat.SRGB, data=crop)
            self._graph.add_packet_to_input_stream("image", packet.at(ts), ts)
            self._graph.add_packet_to_input_stream("roi", mp.packet_creator.create_proto(rect).at(ts), ts)
            stamps.append(ts)
            boxes[ts] = (x0, y0, cw, ch)  # maps crop-normalised landmarks back to frame pixels
        if any(s is not None for s in stamps):
            self._graph.wait_until_idle()
        results: list[tuple[np.ndarray | None, float]] = []
        for ts in stamps:
            if ts is None:
                results.append((None, 0.0))
                continue
            x0, y0, cw, ch = boxes[ts]
            lm = self._out["landmarks"].pop(ts, None)
            presence = float(self._out["presence"].pop(ts, 0.0))
            if lm is None:
                results.append((None, presence))
                continue
            pts = np.array([(p.x, p.y, p.z) for p in lm.landmark], dtype=np.float32)
            pts[:, 0] = pts[:, 0] * cw + x0
            pts[:, 1] = pts[:, 1] * ch + y0
            pts[:, 2] *= cw  # MediaPipe's z is normalised by the image width, like x
            if not self.refine:
                pts = _add_irises(pts)
            results.append((pts, presence))
        return results

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._graph.close()
        except Exception:  # a failed graph has nothing more to release
            logger.debug("closing the mesh graph failed", exc_info=True)


# Eye contours of the 468-point mesh (subject's right / left eye); see _add_irises.
_RIGHT_EYE_RING = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
_LEFT_EYE_RING = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)


def _add_irises(points: np.ndarray) -> np.ndarray:
    """Extend a 468-point mesh to 478 points with irises estimated from the eye contours.

    Iris centre = mean of the eye's contour; the four boundary points lie 0.22 eye widths away (the
    478-point model's iris radius) in that model's order: along the eye line toward the subject's left,
    up, toward the subject's right, down.
    """
    out = np.empty((NUM_LANDMARKS, 3), dtype=np.float32)
    out[:468] = points
    line = points[_LEFT_EYE_OUTER] - points[_RIGHT_EYE_OUTER]
    along = np.array([line[0], line[1], 0.0]) / (float(np.hypot(line[0], line[1])) or 1.0)
    down = np.array([-along[1], along[0], 0.0])  # the eye line turned a quarter clockwise (y is down)
    for base, ring, outer, inner in ((468, _RIGHT_EYE_RING, 33, 133), (473, _LEFT_EYE_RING, 263, 362)):
        centre = points[list(ring)].mean(axis=0)
        r = 0.22 * float(np.hypot(*(points[inner, :2] - points[outer, :2])))
        out[base] = centre
        for k, d in enumerate((along, -down, -along, down)):
            out[base + 1 + k] = centre + r * d
    return out


@dataclass
class _Detection:
    box: tuple[float, float, float, float]  # stored pixels
    right_eye: np.ndarray  # (2,) stored pixels
    left_eye: np.ndarray
    score: float

    @property
    def roi(self) -> _Roi:
        x0, y0, x1, y1 = self.box
        d = self.left_eye - self.right_eye
        return _Roi((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * _ROI_SCALE,
                    math.atan2(float(d[1]), float(d[0])))


_FINE_SIDE = 2 * _DETECT_SIDE
"""Side of a photo's finest detection tiles. A tile shrunk to about :data:`_DETECT_SIDE` has its faces found from
about 1/18 of its side (measured: 20 px in 320, 36 px in 640, 64 px in 1280), so faces from about 36 px."""


def _fine_sides(side: int) -> list[int]:
    """Sides of the finer tiles a photo is also searched with, below tiles of ``side``: halving while at least
    :data:`_FINE_SIDE`, then that itself unless the last is already close. Each level holds whole the faces up to
    its tiles' overlap (a fifth of the side), which the next coarser level finds (from about 1/9 of the side)."""
    sides: list[int] = []
    s = side / 2
    while s >= _FINE_SIDE:
        sides.append(round(s))
        s /= 2
    if (sides[-1] if sides else side) > 1.5 * _FINE_SIDE:
        sides.append(_FINE_SIDE)
    return sides


def _tile_starts(length: int, tile: int) -> list[int]:
    if tile >= length:
        return [0]
    n = math.ceil((length - tile) / (0.8 * tile)) + 1  # at least 20% overlap
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


_Box = tuple[int, int, int, int]


class _Detector:
    """MediaPipe's full-range face detector over regions of a frame (whole, tiles, around a face).

    A region is cut from the stored frame, shrunk by an integer factor with an area filter (the
    detector's own resize does not anti-alias; integer factors are the fast path), turned upright and
    detected; results come back in stored pixels.
    """

    def __init__(self, min_confidence: float, tiles: bool) -> None:
        mp = _mediapipe()
        self._fd = mp.solutions.face_detection.FaceDetection(
            min_detection_confidence=min_confidence, model_selection=1)
        self._min_confidence = min_confidence
        self._close_range: Any = None  # the short-range model, started on first use (see confirm)
        self.tiles = tiles

    def regions(self, width: int, height: int, *, fine: bool = False) -> list[_Box]:
        """The whole frame, then (with tiling) overlapping squares covering it; ``fine`` adds smaller squares
        (:func:`_fine_sides`), which find faces down to about 36 px in a photo of any size."""
        boxes: list[_Box] = [(0, 0, width, height)]
        if self.tiles or fine:
            # Squares of the short side, smaller on near-square frames so that there are several.
            side = min(width, height, round(0.6 * max(width, height)))
            for s in [side, *(_fine_sides(side) if fine else [])]:
                boxes += [(x, y, x + s, y + s) for y in _tile_starts(height, s)
                          for x in _tile_starts(width, s) if (s, s) != (width, height)]
        return boxes

    def detect_region(self, image: Pixels, box: _Box, rotation: int) -> list[_Detection]:
        h, w = image.shape[:2]
        # Even bounds: a decoded 4:2:0 frame then converts and shrinks the box in one pass.
        x0, y0, x1, y1 = box[0] & ~1, box[1] & ~1, min(w, box[2] + (box[2] & 1)), min(h, box[3] + (box[3] & 1))
        rw, rh = x1 - x0, y1 - y0
        factor = max(1, max(rw, rh) // _DETECT_SIDE)
        if factor > 1:
            region = image.shrunk(x0, y0, x1, y1, (max(1, rw // factor), max(1, rh // factor)))
        else:
            region = image.rgb(x0, y0, x1, y1)
        if rotation:
            region = cv2.rotate(region, _CV_ROTATE[rotation])
        region = np.ascontiguousarray(region)
        uh, uw = region.shape[:2]
        sw, sh = upright_size(uw, uh, rotation)  # stored size of the shrunk region
        # upright shrunk-region pixels -> stored frame pixels
        to_stored = cv2.invertAffineTransform(stored_to_upright_matrix(sw, sh, rotation))
        to_stored[0] *= rw / sw
        to_stored[1] *= rh / sh
        to_stored[:, 2] += (x0, y0)
        found: list[_Detection] = []
        for det in self._fd.process(region).detections or []:
            rel = det.location_data.relative_bounding_box
            kp = det.location_data.relative_keypoints
            pts = np.array([[rel.xmin, rel.ymin], [rel.xmin + rel.width, rel.ymin + rel.height],
                            [kp[0].x, kp[0].y], [kp[1].x, kp[1].y]]) * (uw, uh)
            pts = _affine(to_stored, pts)
            bx0, by0 = pts[:2].min(axis=0)
            bx1, by1 = pts[:2].max(axis=0)
            found.append(_Detection((float(bx0), float(by0), float(bx1), float(by1)),
                                    pts[2], pts[3], float(det.score[0])))
        return found

    def upright(self, image: Pixels, detection: _Detection, rotation: int) -> _Detection:
        """``detection`` (found under display ``rotation``) seen again close up: the same face found in a
        square around it as it is, or with the frame turned a quarter or half turn when it scores clearly
        higher that way (:data:`TURN_MARGIN`).

        The detector is made for upright faces: a face lying on its side or upside down that it still finds
        gets its eyes labelled as if it stood upright, and the mesh network, which takes the ROI's angle from
        them, then lays a confident upright mesh across it (measured: about half the face's height off).
        Turned upright, the face scores higher and its eyes are labelled right. The scores compared all come
        from the same square: a scan sees a face smaller (a whole 1080p frame is shrunk 6 times) and scores
        it lower than a turn seen close up, and its eyes less exactly (a small tilted face's ROI 15 degrees
        off, too far for the mesh). Four detector runs (about 25 ms), once per face found, not per frame.
        """
        close: dict[int, _Detection] = {}
        for turn in (0, *TURNS):
            for d in self.detect_near(image, detection.box, (rotation + turn) % 360):
                if _iou(d.box, detection.box) >= 0.3 and d.score > getattr(close.get(turn), "score", -1.0):
                    close[turn] = d
        best = close.pop(0, detection)
        turned = max(close.values(), key=lambda d: d.score, default=None)
        return turned if turned is not None and turned.score > best.score + TURN_MARGIN else best

    def confirm(self, image: Pixels, detection: _Detection) -> bool:
        """Whether MediaPipe's *short-range* detector, a second model, also finds ``detection`` in a close-up
        of it turned upright by its eyes (a square twice its size, at the model's 128x128 input).

        Looking at a frame turned three more ways also gives the full-range model three more chances to take
        something for a face; measured: text turned a quarter turn at 0.68, as high as real faces lying down
        score (0.6-0.9). The short-range model, shown the close-up it is made for, finds no face there even at
        0.1, and finds every face of the turned-scan tests at 0.76-0.94."""
        if self._close_range is None:
            self._close_range = _mediapipe().solutions.face_detection.FaceDetection(
                min_detection_confidence=self._min_confidence, model_selection=0)
        h, w = image.shape[:2]
        x0, y0, x1, y1 = detection.box
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        side = 2.0 * max(x1 - x0, y1 - y0, 8.0)
        reach = side * math.sqrt(0.5) + 1  # the turned square's axis-aligned box, clipped to the frame
        bx0, by0 = max(0, int(cx - reach)), max(0, int(cy - reach))
        bx1, by1 = min(w, int(cx + reach) + 1), min(h, int(cy + reach) + 1)
        if bx1 - bx0 < 4 or by1 - by0 < 4:
            return False
        d = detection.left_eye - detection.right_eye
        m = cv2.getRotationMatrix2D((cx - bx0, cy - by0), math.degrees(math.atan2(float(d[1]), float(d[0]))),
                                    _CLOSE_RANGE_SIDE / side)
        m[:, 2] += _CLOSE_RANGE_SIDE / 2 - np.array([cx - bx0, cy - by0])
        close = cv2.warpAffine(image.rgb(bx0, by0, bx1, by1), m, (_CLOSE_RANGE_SIDE, _CLOSE_RANGE_SIDE),
                               flags=cv2.INTER_AREA if side > _CLOSE_RANGE_SIDE else cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
        for det in self._close_range.process(np.ascontiguousarray(close)).detections or []:
            rel = det.location_data.relative_bounding_box
            if abs(rel.xmin + rel.width / 2 - 0.5) < 0.25 and abs(rel.ymin + rel.height / 2 - 0.5) < 0.25:
                return True
        return False

    def detect_near(self, image: Pixels, box: tuple[float, float, float, float],
                    rotation: int) -> list[_Detection]:
        """Detections in a square 2.5x the size of ``box`` around it (to re-find a lost face)."""
        h, w = image.shape[:2]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        half = 1.25 * max(box[2] - box[0], box[3] - box[1], 16.0)
        region = (max(0, int(cx - half)), max(0, int(cy - half)),
                  min(w, int(cx + half) + 1), min(h, int(cy + half) + 1))
        if region[2] - region[0] < 8 or region[3] - region[1] < 8:
            return []
        return self.detect_region(image, region, rotation)

    def detect(self, image: Pixels, rotation: int, *, small_faces: bool = True,
               fine: bool = False) -> list[_Detection]:
        """Detections over all regions (``fine``: see :meth:`regions`), overlapping ones merged (best score
        kept). Without ``small_faces`` the tiles are only scanned when the whole frame shows no face."""
        h, w = image.shape[:2]
        whole, *tiles = self.regions(w, h, fine=fine)
        found = self.detect_region(image, whole, rotation)
        if small_faces or not found:
            found += [d for box in tiles for d in self.detect_region(image, box, rotation)]
        found.sort(key=lambda d: d.score, reverse=True)
        kept: list[_Detection] = []
        for d in found:
            if all(_iou(d.box, k.box) < 0.3 for k in kept):
                kept.append(d)
        return kept

    def close(self) -> None:
        self._fd.close()
        if self._close_range is not None:
            self._close_range.close()


# --------------------------------------------------------------------------- the tracker


_CHANGE_GRID = 48  # change-detection samples along the frame's short side
_CHANGE_LEVEL = 24  # grey levels a sample must change by (well above compression noise)
_CHANGE_SAMPLES = 3  # changed samples (outside tracked heads) that make a region worth detecting again
_MAX_UNSEEN = 60  # frames after which a region is detected again anyway
_TURNED_EVERY = 4  # while no face is tracked, at least every this many frames a detector run is a turned one
# Around a tracked face, what moves with it (in face widths to each side, face heights above and below).
_BODY_SIDE, _BODY_ABOVE, _BODY_BELOW = 1.25, 0.75, 2.0


@dataclass
class _Seen:
    samples: np.ndarray  # _samples() of the region when it was last detected
    faces: list[tuple[float, float, float, float]]  # boxes of the faces tracked then
    frame: int  # frame count then


@dataclass
class _Track:
    track_id: int
    raw: np.ndarray  # last unsmoothed landmarks (stored pixels): the next ROI comes from these
    presence: float
    filter: OneEuroFilter | None
    flow: LandmarkFlow = field(default_factory=LandmarkFlow)
    flow_fails: int = 0  # optical flow failures in a row
    flow_wait: int = 0  # keyframes to mesh before trying the flow again
    lost: bool = False


class FaceTracker:
    """Detects and tracks faces frame by frame; see the module docstring.

    Detection is spread over frames: a scan is a list of regions (the whole frame, then tiles) and one
    region is detected per frame, so no frame pays for more than one detector run (about 6 ms) to scan, on
    top of its meshes (and four more to check which way up a face stands on the frame it is found). A
    scan starts every ``detect_every`` frames while there is room for more faces, and back to back while
    no face is tracked (then with the frame turned too, one region a frame all the same); regions that have
    not changed since their last detection are skipped. Faces are meshed every ``mesh_every`` frames and
    carried by optical flow in between. A face whose mesh is lost is looked for at once in a region around
    its last position; found, it keeps its id, otherwise its track ends.

    Holds MediaPipe graphs: call :meth:`close` (or use it as a context manager) when done. Not
    thread-safe: call it from one thread (``ProcessorTrack`` runs it on a single worker thread).
    """

    def __init__(self, config: TrackerConfig = TrackerConfig()) -> None:
        self.config = config
        self._mesh = _MeshRunner(config.refine_landmarks)
        try:
            self._detector = _Detector(config.min_detection_confidence, config.tile_detection)
        except BaseException:  # an interrupted set-up closes what it started (see _MeshRunner)
            self._mesh.close()
            raise
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._frame_count = 0
        self._since_scan = 0
        self._scan: list[tuple[_Box, int]] = []  # regions of the current scan still to detect (box, turn 0)
        self._turned: list[tuple[_Box, int]] = []  # the turned scan's (box, turn), while no face is tracked
        self._upright_in_row = 0  # frames in a row the upright scan ran the detector while no face is tracked
        self._scan_key: tuple[int, int, int] | None = None  # (width, height, rotation) it was made for
        self._seen: dict[tuple[_Box, int], _Seen] = {}  # what each (region, turn) looked like when last detected
        self._closed = False
        self.last_timings: dict[str, float] = {}
        """Seconds spent in ``mesh``, ``flow``, ``detect`` and ``smooth`` during the last :meth:`track`
        call."""
        self.counters: dict[str, int] = {}
        """Running counts since construction: ``mesh`` (network runs on a tracked face), ``flow`` (faces
        carried by optical flow), ``detect`` (detector runs), ``detect_turned`` (detector runs of the turned
        scan, each with a short-range check of what it found), ``detect_skipped`` (scan regions left out as
        unchanged), ``detect_upright`` (detector runs checking which way up a face found stands, four a face)
        and ``remesh:<reason>`` (why the flow handed a face back to the network early)."""

    # -- public API ------------------------------------------------------------------------------

    def track(self, image: np.ndarray | Pixels, *, rotation: int = 0,
              timestamp: float | None = None) -> list[TrackedFace]:
        """Faces of the next frame of a stream, with stable ids and smoothed landmarks.

        ``image``: (H, W, 3) uint8 RGB in stored orientation, or :class:`~stream.pixels.Pixels` (a
        :class:`~stream.frames.Frame`, which converts only the boxes read). ``rotation``: display rotation in degrees
        counter-clockwise (0, 90, 180, 270). ``timestamp``: seconds (e.g. ``pts * time_base``), which
        drives the smoothing; None counts frames at 30 per second. Landmarks come back in stored pixels,
        poses are relative to the upright (displayed) image.
        """
        self._check_open()
        image = _pixels(image)
        rotation = _check_rotation(rotation)
        cfg = self.config
        t = float(timestamp) if timestamp is not None else self._frame_count / 30.0
        self._frame_count += 1
        self._since_scan += 1
        h, w = image.shape[:2]
        timings = {"mesh": 0.0, "flow": 0.0, "detect": 0.0, "smooth": 0.0}

        # 1. Follow tracks: by optical flow between keyframes, else by their mesh.
        t0 = time.perf_counter()
        to_mesh = []
        for tr in self._tracks:
            if tr.flow.ready and tr.flow.since_keyframe < cfg.mesh_every - 1:
                pts = tr.flow.propagate(image)
                if pts is not None:
                    tr.raw = pts
                    tr.flow_fails = 0
                    self._count("flow")
                    continue
                self._count(f"remesh:{tr.flow.last_reason}")
                if not tr.flow.trackable:
                    # The flow itself keeps failing (flicker, blur, no texture): stop paying for it
                    # for 1, 3, 7... frames, up to mesh_every.
                    tr.flow_fails += 1
                    tr.flow_wait = min(2 ** tr.flow_fails - 1, cfg.mesh_every)
            to_mesh.append(tr)
        timings["flow"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        if to_mesh:
            results = self._mesh.run(image, [_roi_from_landmarks(tr.raw) for tr in to_mesh])
            for tr, (pts, presence) in zip(to_mesh, results, strict=True):
                self._count("mesh")
                tr.presence = presence
                tr.lost = pts is None or presence < cfg.min_presence or not self._big_enough(pts)
                if not tr.lost:
                    tr.raw = pts
                    self._keyframe(image, tr)
        timings["mesh"] += time.perf_counter() - t0

        # 2. Look for lost faces near where they were; end the tracks of those not found.
        for tr in [tr for tr in self._tracks if tr.lost]:
            t0 = time.perf_counter()
            detections = self._detector.detect_near(image, _bbox(tr.raw), rotation)
            self._count("detect")
            timings["detect"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            self._revive(image, tr, detections, rotation)
            timings["mesh"] += time.perf_counter() - t0
        ended = [tr.track_id for tr in self._tracks if tr.lost]
        kept = self._dedupe([tr for tr in self._tracks if not tr.lost])
        if len(kept) < len(self._tracks):
            if ended:
                logger.debug("tracks %s ended", ended)
            # Where a face was, or what was turned away for lack of room, must be looked at again.
            self._seen.clear()
        self._tracks = kept

        # 3. One region of a detection scan, for new faces.
        key = (w, h, rotation)
        if self._scan_key != key:
            self._scan, self._turned, self._scan_key = [], [], key
            self._seen.clear()
        room = cfg.max_faces - len(self._tracks)
        if not self._scan and room > 0 and (not self._tracks or self._since_scan >= cfg.detect_every):
            self._scan = [(box, 0) for box in self._detector.regions(w, h)]
        if self._tracks:
            self._turned = []  # only looked for while no face is tracked
        elif cfg.turned_faces and not self._turned:
            self._turned = [(box, turn) for box in self._detector.regions(w, h) for turn in TURNS]
        # A frame's one detector run goes to the upright scan, unless its regions have not changed (the run
        # is free), or it has had _TURNED_EVERY - 1 frames in a row while no face is tracked.
        scanning = bool(self._scan)
        turned_first = bool(self._turned) and self._upright_in_row >= _TURNED_EVERY - 1
        upright = not turned_first and self._scan_one(image, self._scan, rotation, timings)
        if not upright:
            self._scan_one(image, self._turned, rotation, timings)
        self._upright_in_row = self._upright_in_row + 1 if upright and not self._tracks else 0
        if scanning and not self._scan:
            self._since_scan = 0

        # 4. Smooth and estimate pose.
        t0 = time.perf_counter()
        faces = []
        for tr in self._tracks:
            if tr.filter is not None:
                _, y0, _, y1 = _bbox(tr.raw)
                pts = tr.filter(tr.raw, t, scale=max(y1 - y0, 1.0))
            else:
                pts = tr.raw.copy()  # callers may write into it; the next ROI comes from tr.raw
            faces.append(self._face(tr.track_id, pts, tr.presence, w, h, rotation))
        timings["smooth"] += time.perf_counter() - t0
        self.last_timings = timings
        return faces

    def detect(self, image: np.ndarray | Pixels, *, rotation: int = 0, max_faces: int | None = None,
               small_faces: bool = True, fine: bool = False) -> list[TrackedFace]:
        """One-shot detection over all regions at once, without tracking state or smoothing.

        For photos and source frames: faces come largest first with ids 0, 1, ..., each mesh refined twice
        from its own ROI. ``max_faces`` defaults to the config's. ``small_faces=False`` skips the tile
        scan (:attr:`TrackerConfig.tile_detection`) when the whole image shows a face, which is enough
        where only the largest face counts: a face only tiles find is small. ``fine`` also searches smaller
        tiles, down to faces about 36 px tall whatever the image's size (a group photo of 12 megapixels: about
        60 more detector runs, 0.4 s): for a photo, not for every frame of a video.
        """
        self._check_open()
        image = _pixels(image)
        rotation = _check_rotation(rotation)
        limit = self.config.max_faces if max_faces is None else max_faces
        h, w = image.shape[:2]
        detections = self._detector.detect(image, rotation, small_faces=small_faces, fine=fine)
        meshes = self._meshes_from_detections(image, detections, limit, rotation)
        meshes.sort(key=lambda m: _area(_bbox(m[0])), reverse=True)
        return [self._face(i, pts, presence, w, h, rotation) for i, (pts, presence) in enumerate(meshes)]

    def detection_score(self, image: np.ndarray | Pixels, *, rotation: int = 0) -> float:
        """The face detector's highest score in ``image`` (0.0: no face), the mesh not run: which way up an
        image shows its face. Turned away from upright, a face scores well below its upright score (0.6-0.76
        against 0.87-0.91 for the sample portraits), when it is found at all."""
        self._check_open()
        detections = self._detector.detect(_pixels(image), _check_rotation(rotation), small_faces=False)
        return max((d.score for d in detections), default=0.0)

    def __call__(self, frame: Frame, rotation: int | None = None) -> Frame:
        """Fill ``frame.faces`` (adapter for :class:`stream.tracks.ProcessorTrack`), the faces tracked under
        ``rotation`` (None: the frame's own display rotation)."""
        ts = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else None
        frame.faces = self.track(frame, rotation=frame.rotation if rotation is None else rotation, timestamp=ts)
        return frame

    def reset(self) -> None:
        """Drop all tracks (e.g. after a seek). Ids keep counting up and are never reused."""
        self._tracks = []
        self._frame_count = 0
        self._since_scan = 0
        self._scan = []
        self._turned = []
        self._upright_in_row = 0
        self._seen.clear()

    def close(self) -> None:
        """Release the MediaPipe graphs. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._tracks = []
        self._mesh.close()
        self._detector.close()

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------

    def _samples(self, image: Pixels, box: _Box) -> np.ndarray:
        """A sparse grid of brightness over ``box``: enough to notice a face arriving."""
        return image.samples(*box, self._sample_step(image))

    @staticmethod
    def _sample_step(image: Pixels) -> int:
        return max(2, min(image.shape[:2]) // _CHANGE_GRID)

    def _changed(self, image: Pixels, box: _Box, turn: int, rotation: int) -> bool:
        """Whether ``box`` may hold a face the detector has not seen there yet, turned ``turn`` degrees.

        The detector is deterministic: on the pixels it already saw (tracked faces, which may move,
        left out) it would find the same faces again, all of them tracked or turned away. Any track
        ending clears this memory (see :meth:`track`).
        """
        seen = self._seen.get((box, turn))
        if seen is None or self._frame_count - seen.frame >= _MAX_UNSEEN:
            return True
        changed = np.abs(self._samples(image, box) - seen.samples) > _CHANGE_LEVEL
        step = self._sample_step(image)
        for bx0, by0, bx1, by1 in seen.faces + [_bbox(tr.raw) for tr in self._tracks]:
            # Head and shoulders move with the face: leave them out too.
            fw, fh = bx1 - bx0, by1 - by0
            if rotation:  # "below" is not down in stored pixels: reach as far every way
                reach = max(_BODY_SIDE, _BODY_BELOW) * max(fw, fh)
                left = right = up = down = reach
            else:
                left = right = _BODY_SIDE * fw
                up, down = _BODY_ABOVE * fh, _BODY_BELOW * fh
            i0 = max(0, math.floor((by0 - up - box[1] - step // 2) / step) + 1)
            i1 = max(0, math.floor((by1 + down - box[1] - step // 2) / step) + 1)
            j0 = max(0, math.floor((bx0 - left - box[0] - step // 2) / step) + 1)
            j1 = max(0, math.floor((bx1 + right - box[0] - step // 2) / step) + 1)
            changed[i0:i1, j0:j1] = False
        return int(changed.sum()) >= _CHANGE_SAMPLES

    def _scan_one(self, image: Pixels, scan: list[tuple[_Box, int]], rotation: int,
                  timings: dict[str, float]) -> bool:
        """Detect the first region of ``scan`` (``(box, turn)`` pairs, taken from its front) that changed
        since it was last detected, turned ``turn`` degrees on top of the display ``rotation``, and start
        tracks for new faces found there; False when none had changed (no detector run)."""
        while scan:
            box, turn = scan.pop(0)
            if not self._changed(image, box, turn, rotation):
                self._count("detect_skipped")  # the detector would see what it saw: try the next one
                continue
            t0 = time.perf_counter()
            detections = self._detector.detect_region(image, box, (rotation + turn) % 360)
            if turn and detections:  # three more looks are three more chances of a false face: a second opinion
                detections = [d for d in detections if self._detector.confirm(image, d)]
            timings["detect"] += time.perf_counter() - t0
            self._count("detect" if turn == 0 else "detect_turned")
            t0 = time.perf_counter()
            self._add_new(image, detections, rotation)
            timings["mesh"] += time.perf_counter() - t0
            self._seen[box, turn] = _Seen(self._samples(image, box), [_bbox(tr.raw) for tr in self._tracks],
                                          self._frame_count)
            return True
        return False

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _keyframe(self, image: Pixels, track: _Track) -> None:
        """The network just meshed ``track``: optical flow carries it from here (unless backing off)."""
        if track.flow_wait > 0:
            track.flow_wait -= 1
            track.flow.reset()
        elif self.config.mesh_every > 1:
            track.flow.keyframe(image, track.raw)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("FaceTracker is closed")

    def _big_enough(self, pts: np.ndarray) -> bool:
        x0, y0, x1, y1 = _bbox(pts)
        return max(x1 - x0, y1 - y0) >= self.config.min_face_px

    def _face(self, track_id: int, pts: np.ndarray, score: float, w: int, h: int,
              rotation: int) -> TrackedFace:
        return TrackedFace(track_id=track_id, landmarks=pts, bbox=_bbox(pts),
                           pose=LazyHeadPose(pts, image_size=(w, h), rotation=rotation),
                           score=float(min(max(score, 0.0), 1.0)))

    def _meshes_from_detections(self, image: Pixels, detections: list[_Detection], limit: int,
                                rotation: int) -> list[tuple[np.ndarray, float]]:
        """Meshes of the largest detections (at most ``limit``), each ROI refined twice from its mesh (near
        where a tracked face's ROI settles: a track's first keyframe then hardly jumps), each face
        first checked for lying on its side or upside down (:meth:`_Detector.upright`)."""
        cfg = self.config
        dets = [d for d in detections
                if max(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= cfg.min_face_px]
        dets.sort(key=lambda d: _area(d.box), reverse=True)
        if not dets or limit <= 0:
            return []
        # The way-up check costs four detector runs a face: only for the faces that can be kept (a crowd's
        # dozen detections would make one frame pay for fifty), each face once (a scan region and a tile may
        # both have found it).
        distinct: list[_Detection] = []
        for d in dets:
            if all(_iou(d.box, k.box) <= cfg.match_iou for k in distinct):
                distinct.append(d)
        dets = [self._detector.upright(image, d, rotation) for d in distinct[:limit]]
        self.counters["detect_upright"] = self.counters.get("detect_upright", 0) + 4 * len(dets)
        results = self._mesh.run(image, [d.roi for d in dets])
        for _ in range(2):
            ok = [pts for pts, presence in results if pts is not None and presence >= cfg.min_presence]
            if not ok:
                return []
            results = self._mesh.run(image, [_roi_from_landmarks(pts) for pts in ok])
        out: list[tuple[np.ndarray, float]] = []
        for pts, presence in results:
            if pts is None or presence < cfg.min_presence or not self._big_enough(pts):
                continue
            box = _bbox(pts)
            if any(_iou(box, _bbox(o)) > cfg.match_iou for o, _ in out):
                continue  # two detections of one face
            out.append((pts, presence))
            if len(out) >= limit:
                break
        return out

    def _revive(self, image: Pixels, track: _Track, detections: list[_Detection], rotation: int) -> None:
        """Give ``track`` the detected face nearest its last position, unless another track has it."""
        last = _bbox(track.raw)
        others = [_bbox(tr.raw) for tr in self._tracks if not tr.lost]
        free = [d for d in detections if all(_iou(d.box, o) < self.config.match_iou for o in others)]
        cx, cy = (last[0] + last[2]) / 2, (last[1] + last[3]) / 2
        free.sort(key=lambda d: math.hypot((d.box[0] + d.box[2]) / 2 - cx, (d.box[1] + d.box[3]) / 2 - cy))
        meshes = self._meshes_from_detections(image, free[:1], 1, rotation)
        if meshes and all(_iou(_bbox(meshes[0][0]), o) < self.config.match_iou for o in others):
            track.raw, track.presence = meshes[0]
            track.lost = False
            track.flow.reset()  # it jumped: the old keyframe says nothing about this frame
            self._keyframe(image, track)
            if track.filter is not None:
                track.filter.reset()  # it jumped: do not drag the old position along
            logger.debug("track %d re-found", track.track_id)

    def _add_new(self, image: Pixels, detections: list[_Detection], rotation: int) -> None:
        """Start tracks for detections that no track covers, while there is room."""
        cfg = self.config
        fresh = [d for d in detections
                 if all(_iou(d.box, _bbox(tr.raw)) < cfg.match_iou and not _inside(d.box, _bbox(tr.raw))
                        for tr in self._tracks)]
        for pts, presence in self._meshes_from_detections(image, fresh, cfg.max_faces - len(self._tracks), rotation):
            if any(_iou(_bbox(pts), _bbox(tr.raw)) >= cfg.match_iou for tr in self._tracks):
                continue
            smoothing = cfg.smoothing
            tr = _Track(self._next_id, pts, presence,
                        OneEuroFilter(smoothing, norm_axis=-1) if smoothing is not None else None)
            self._next_id += 1
            self._keyframe(image, tr)
            self._tracks.append(tr)
            logger.debug("track %d started", tr.track_id)

    @staticmethod
    def _dedupe(tracks: list[_Track]) -> list[_Track]:
        """Two ROIs may converge on one face: keep the older track."""
        kept: list[_Track] = []
        for tr in sorted(tracks, key=lambda t: t.track_id):
            if all(_iou(_bbox(tr.raw), _bbox(k.raw)) < 0.5 for k in kept):
                kept.append(tr)
        return kept


def _inside(inner: tuple[float, float, float, float], outer: tuple[float, float, float, float]) -> bool:
    """Whether the centre of ``inner`` lies in ``outer``."""
    cx, cy = (inner[0] + inner[2]) / 2, (inner[1] + inner[3]) / 2
    return outer[0] <= cx <= outer[2] and outer[1] <= cy <= outer[3]


def _area(box: tuple[float, float, float, float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def image_tracker(max_faces: int = 4) -> FaceTracker:
    """A tracker for unrelated images (its :meth:`FaceTracker.detect`): no smoothing between them."""
    return FaceTracker(TrackerConfig(max_faces=max_faces, smoothing=None))


def detect_faces(image: np.ndarray, *, max_faces: int = 4, rotation: int = 0) -> list[TrackedFace]:
    """Faces of a single image (a SOURCE image or frame), largest first, without smoothing.

    Builds and closes a tracker per call (tens of milliseconds); for many images keep one
    (:func:`image_tracker`) and call its :meth:`FaceTracker.detect`.
    """
    with image_tracker(max_faces) as tracker:
        return tracker.detect(image, rotation=rotation)


def benchmark_tracker(width: int = 1280, height: int = 720, frames: int = 60, *,
                      face_height: int = 200, config: TrackerConfig | None = None) -> dict[str, float]:
    """Per-frame tracking time on a synthetic ``width`` x ``height`` video of one moving face.

    The face is scikit-image's astronaut (needs the ``demo`` extra). Returns milliseconds: median and
    95th percentile of detection frames and of the others (track: mesh or optical flow), and the
    overall mean; and how often the tracker ran its detector (``detect_runs``), meshed a tracked face
    (``mesh_runs``) or carried it by optical flow (``flow_frames``).
    """
    from skimage import data

    # The astronaut's face spans about (179, 71)-(271, 177) of the 512 px image: cut 2x that around it.
    s = face_height / 106.0
    crop = data.astronaut()[18:230, 119:331]
    face = cv2.resize(crop, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    fh, fw = face.shape[:2]
    canvas = np.full((height, width, 3), 96, np.uint8)
    detect_ms: list[float] = []
    track_ms: list[float] = []
    with FaceTracker(config or TrackerConfig()) as tracker:
        for i in range(frames):
            img = canvas.copy()
            # The face swings left and right by a quarter of the free width.
            x = max(0, int((width - fw) / 2 + (width - fw) / 4 * math.sin(i / 15)))
            y = max(0, (height - fh) // 2)
            patch = face[:height - y, :width - x]
            img[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
            t0 = time.perf_counter()
            tracker.track(img, timestamp=i / 30)
            dt = (time.perf_counter() - t0) * 1000
            (detect_ms if tracker.last_timings["detect"] > 0 else track_ms).append(dt)
        counters = dict(tracker.counters)
    all_ms = detect_ms + track_ms
    result = {"frames": float(frames), "detect_frames": float(len(detect_ms)),
              "mean_ms": float(np.mean(all_ms)), "detect_runs": float(counters.get("detect", 0)),
              "mesh_runs": float(counters.get("mesh", 0)), "flow_frames": float(counters.get("flow", 0))}
    for name, values in (("detect", detect_ms), ("track", track_ms)):
        if values:
            result[f"{name}_median_ms"] = float(np.median(values))
            result[f"{name}_p95_ms"] = float(np.percentile(values, 95))
    return result


if __name__ == "__main__":  # pragma: no cover - manual benchmark
    import json

    print(json.dumps(benchmark_tracker(), indent=2))
