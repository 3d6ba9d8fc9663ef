"""Serving metrics: Prometheus collectors plus small in-process windows for p50/p95 and fps.

Every server owns its own :class:`ServingMetrics` (and registry), so two servers in one process (tests,
benchmarks) never share counters.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from stream.frames import Frame

# Seconds; dense below 100 ms where live latency budgets sit.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class LatencyWindow:
    """The last ``size`` latency samples (seconds), for percentiles over recent frames."""

    def __init__(self, size: int = 300) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(seconds)

    def __len__(self) -> int:
        return len(self._values)

    def percentiles(self, *qs: float) -> list[float | None]:
        """Percentiles ``qs`` (0..100) of the window in seconds; None each while the window is empty."""
        with self._lock:
            values = np.fromiter(self._values, dtype=np.float64, count=len(self._values))
        if values.size == 0:
            return [None for _ in qs]
        return [float(v) for v in np.percentile(values, qs)]


class RateMeter:
    """Events per second over the last ``window`` seconds (``time.monotonic`` clock)."""

    def __init__(self, window: float = 2.0) -> None:
        self.window = window
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            n = len(self._times)
            if n < 2:
                return 0.0
            span = max(now - self._times[0], 1e-6)
            return n / max(span, min(self.window, 1.0))


class ServingMetrics:
    """The collectors one server (or one ``facestream live`` run) reports under ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.sessions = Gauge("facestream_sessions", "Open peer-connection sessions", registry=r)
        self.sessions_opened = Counter("facestream_sessions_opened", "Sessions opened since start",
                                       registry=r)
        self.frames = Counter("facestream_frames", "Processed frames sent on", registry=r)
        self.dropped = Counter("facestream_dropped_frames",
                               "Frames dropped by keep-latest queues (processing was behind)", registry=r)
        self.reconnects = Counter("facestream_source_reconnects", "Live input reconnects", registry=r)
        self.rejected = Counter("facestream_rejected_requests", "Requests answered with a 4xx/5xx",
                                ["reason"], registry=r)
        self.fps = Gauge("facestream_fps", "Processed frames per second, all sessions", registry=r)
        self.latency = Histogram("facestream_added_latency_seconds",
                                 "Capture (receipt) to processed frame handed to the encoder",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("facestream_stage_seconds", "Seconds per processing step",
                               ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.rate = RateMeter()
        self.window = LatencyWindow()
        self.fps.set_function(self.rate.rate)

    def observe(self, frame: Frame, latency: float) -> None:
        """Account one processed frame that left ``latency`` seconds after its capture."""
        self.frames.inc()
        self.rate.tick()
        self.window.add(latency)
        self.latency.observe(latency)
        for stage, seconds in frame.timings.items():
            self.stage.labels(stage).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
