"""A broadcast of processed frames (a ``facestream live`` run) that page sessions can watch."""

from __future__ import annotations

import asyncio

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from stream.frames import Frame
from stream.serving.session import VIDEO_TIME_BASE, frame_to_video_frame


class LiveFeed:
    """Fans the newest processed frame out to any number of viewer tracks (keep-latest per viewer).

    :meth:`publish` is called on the event loop by whatever produces the frames.
    """

    def __init__(self, name: str = "live") -> None:
        self.name = name
        self._viewers: set[FeedTrack] = set()
        self.published = 0

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def publish(self, frame: Frame) -> None:
        """Offer ``frame`` to every viewer; a viewer that is behind keeps only the newest."""
        self.published += 1
        for viewer in list(self._viewers):
            viewer.offer(frame)

    def subscribe(self) -> FeedTrack:
        """A new aiortc track showing this feed; it unsubscribes itself when stopped."""
        track = FeedTrack(self)
        self._viewers.add(track)
        return track

    def discard(self, track: FeedTrack) -> None:
        self._viewers.discard(track)

    def close(self) -> None:
        """End every viewer's track."""
        for viewer in list(self._viewers):
            viewer.end()


class FeedTrack(MediaStreamTrack):
    """One viewer of a :class:`LiveFeed`: a one-frame keep-latest slot."""

    kind = "video"

    def __init__(self, feed: LiveFeed) -> None:
        super().__init__()
        self._feed = feed
        self._latest: Frame | None = None
        self._ready = asyncio.Event()
        self._ended = False
        self._start: float | None = None
        self.dropped = 0

    def offer(self, frame: Frame) -> None:
        if self._latest is not None:
            self.dropped += 1
        self._latest = frame
        self._ready.set()

    def end(self) -> None:
        self._ended = True
        self._ready.set()

    async def recv(self) -> av.VideoFrame:  # type: ignore[override]
        while self._latest is None:
            if self._ended or self.readyState != "live":
                self.stop()
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        frame, self._latest = self._latest, None
        vf = frame_to_video_frame(frame)
        # Viewers join mid-stream: restamp from their first frame so each viewer's clock starts at 0.
        if self._start is None:
            self._start = frame.capture_time
        vf.pts = round((frame.capture_time - self._start) * 90000)
        vf.time_base = VIDEO_TIME_BASE
        return vf

    def stop(self) -> None:
        super().stop()
        self._feed.discard(self)
        self.end()
