"""Headless Chromium opens the page, sends a fake camera (a y4m file with a face) and gets the swap back.

The page is driven and read through the Chrome DevTools protocol; its ``window.facestream`` hook says
how many frames were decoded and hands over the current processed frame as a PNG.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from liveutil import chromium, chromium_binary, face_frames, write_y4m

from stream.live import swap_processor_factory
from stream.serving.server import FacestreamServer, ServerConfig

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(chromium_binary() is None,
                                 reason="chromium not installed (run scripts/ci-system-deps.sh)")]
W, H = 320, 240


class DevTools:
    """A minimal Chrome DevTools protocol client for one page."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 30)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                                 returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


@pytest.fixture
async def server() -> AsyncIterator[FacestreamServer]:
    srv = FacestreamServer(swap_processor_factory(faces="largest"), ServerConfig(port=0))
    await srv.start()
    yield srv
    await srv.close()


async def _page(http: aiohttp.ClientSession, port: int) -> aiohttp.ClientWebSocketResponse:
    deadline = time.monotonic() + 20
    while True:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            pages = [t for t in await resp.json() if t["type"] == "page"]
        if pages or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert pages, "Chromium opened no page"
    return await http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)


async def test_page_sends_camera_and_shows_the_swapped_stream(server: FacestreamServer, tmp_path: Path) -> None:
    from stream.tracking import detect_faces

    still = face_frames(W, H, 1)[0]
    camera = write_y4m(tmp_path / "camera.y4m", [still] * 10, fps=15)
    x0, y0, x1, y1 = (int(v) for v in detect_faces(still, max_faces=1)[0].bbox)
    flags = ("--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={camera}",
             "--use-fake-ui-for-media-stream", "--autoplay-policy=no-user-gesture-required")
    with chromium(f"{server.url}?face=grace_hopper", tmp_path / "profile", *flags) as (_proc, port):
        async with aiohttp.ClientSession() as http:
            ws = await _page(http, port)
            page = DevTools(ws)
            await page.call("Runtime.enable")
            state = None
            for _ in range(100):
                state = await page.evaluate("window.facestream && window.facestream.state")
                if state == "ready":
                    break
                await asyncio.sleep(0.1)
            assert state == "ready", state
            assert await page.evaluate("window.facestream.face") == "grace_hopper"
            await page.evaluate("document.getElementById('start').click()")
            stats: dict[str, Any] = {}
            for _ in range(200):
                stats = await page.evaluate("window.facestream.stats") or {}
                if (stats.get("framesDecoded") or 0) >= 20 and stats.get("server", {}).get("frames_out", 0) >= 20:
                    break
                await asyncio.sleep(0.1)
            error = await page.evaluate("window.facestream.error")
            assert error is None, error
            assert stats.get("framesDecoded", 0) >= 20, stats
            assert await page.evaluate("window.facestream.state") == "connected"
            png = await page.evaluate("window.facestream.snapshot()")
            shot = await page.call("Page.captureScreenshot", format="png")
            (tmp_path / "page.png").write_bytes(base64.b64decode(shot["data"]))
            session_id = await page.evaluate("window.facestream.session")
            assert session_id in server.sessions
            server_stats = stats["server"]
            assert server_stats["latency_ms"]["p50"] is not None and server_stats["fps"] > 0

            await page.evaluate("window.facestream.hangUp()")
            for _ in range(100):
                if not server.sessions:
                    break
                await asyncio.sleep(0.1)
            assert not server.sessions
            await ws.close()

    frame = cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(png.split(",", 1)[1]), np.uint8),
                                      cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert frame.shape == still.shape
    diff = np.abs(frame.astype(np.float32) - still.astype(np.float32))
    mask = np.ones(still.shape[:2], bool)
    mask[max(0, y0 - 24):y1 + 24, max(0, x0 - 24):x1 + 24] = False
    face_change, background_change = diff[y0:y1, x0:x1].mean(), diff[mask].mean()
    print(json.dumps({"face_change": float(face_change), "background_change": float(background_change),
                      "frames_decoded": stats["framesDecoded"], "server": server_stats}))
    # What the page shows is the camera's picture with the face replaced.
    assert face_change > 2 * background_change + 4, (face_change, background_change)
