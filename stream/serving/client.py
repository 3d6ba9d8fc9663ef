"""A Python peer for the server: sends frames, receives the processed stream (tests, benchmarks).

It speaks the same signalling as the page: ``POST /offer`` and ``DELETE /sessions/{id}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from stream.exceptions import InputError

VIDEO_TIME_BASE = Fraction(1, 90000)


class PacedVideoTrack(MediaStreamTrack):
    """Sends ``images`` ((H, W, 3) uint8 RGB, looped) at ``fps`` in real time, like a camera.

    ``sent[pts]`` is the ``time.monotonic()`` at which each frame was handed to the encoder.
    """

    kind = "video"

    def __init__(self, images: Sequence[np.ndarray], fps: float = 30.0, *, limit: int | None = None) -> None:
        super().__init__()
        if not images:
            raise ValueError("PacedVideoTrack needs at least one image")
        self._frames = [av.VideoFrame.from_ndarray(np.ascontiguousarray(im), format="rgb24").reformat(
            format="yuv420p") for im in images]
        self.fps = fps
        self.limit = limit
        self.count = 0
        self.sent: dict[int, float] = {}
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:  # type: ignore[override]
        if self.readyState != "live" or (self.limit is not None and self.count >= self.limit):
            self.stop()
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.count / self.fps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        template = self._frames[self.count % len(self._frames)]
        frame = av.VideoFrame.from_ndarray(template.to_ndarray(), format="yuv420p")
        frame.pts = round(self.count * 90000 / self.fps)
        frame.time_base = VIDEO_TIME_BASE
        self.sent[frame.pts] = time.monotonic()
        self.count += 1
        return frame


class PeerClient:
    """One session against a facestream server, from Python.

    ``await client.connect(track)`` negotiates; ``await client.recv()`` returns processed frames;
    ``await client.close()`` hangs up (``DELETE /sessions/{id}``, then closes the peer connection).
    """

    def __init__(self, base_url: str, *, token: str | None = None,
                 http: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.token = token
        self._own_http = http is None
        self._http = http
        self.pc = RTCPeerConnection()
        self.session_id: str | None = None
        self.remote: asyncio.Future[MediaStreamTrack] | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def connect(self, track: MediaStreamTrack | None = None, **options: Any) -> str:
        """Offer ``track`` (or a receive-only video m-line when None) with ``options`` (``face``,
        ``face_image``, ``mode``); returns the session id. Raises :class:`InputError` on a 4xx/5xx."""
        loop = asyncio.get_running_loop()
        self.remote = loop.create_future()
        remote = self.remote

        @self.pc.on("track")
        def on_track(t: MediaStreamTrack) -> None:
            if t.kind == "video" and not remote.done():
                remote.set_result(t)

        if track is not None:
            self.pc.addTrack(track)
        else:
            self.pc.addTransceiver("video", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        if self._http is None:
            self._http = aiohttp.ClientSession()
        body = {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type, **options}
        async with self._http.post(self.base_url + "offer", json=body, headers=self.headers) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise InputError(f"offer refused with {resp.status}: {answer.get('error')}")
        self.session_id = answer["session"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return self.session_id

    async def recv(self, timeout: float = 10.0) -> av.VideoFrame:
        """The next processed frame."""
        assert self.remote is not None, "connect() first"
        track = await asyncio.wait_for(asyncio.shield(self.remote), timeout)
        return await asyncio.wait_for(track.recv(), timeout)

    async def stats(self) -> dict[str, Any]:
        """The server's ``GET /sessions/{id}``."""
        assert self._http is not None and self.session_id is not None
        async with self._http.get(f"{self.base_url}sessions/{self.session_id}", headers=self.headers) as resp:
            return await resp.json()

    async def close(self, *, hang_up: bool = True) -> None:
        """Hang up (``DELETE``, unless ``hang_up`` is False) and close the peer connection."""
        if hang_up and self.session_id is not None and self._http is not None:
            with contextlib.suppress(aiohttp.ClientError):
                async with self._http.delete(f"{self.base_url}sessions/{self.session_id}",
                                             headers=self.headers):
                    pass
        await self.pc.close()
        if self._own_http and self._http is not None:
            await self._http.close()
