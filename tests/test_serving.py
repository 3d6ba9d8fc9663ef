"""The server with real aiortc peers over loopback: processed frames, timestamps, cleanup, bad requests."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from liveutil import face_frames, free_port

from stream.exceptions import InputError
from stream.frames import Frame
from stream.serving.client import PacedVideoTrack, PeerClient
from stream.serving.feed import LiveFeed
from stream.serving.server import FacestreamServer, ServerConfig, is_loopback
from stream.serving.session import FrameProcessor

REPO = Path(__file__).resolve().parents[1]
W, H = 320, 240


class CountingFactory:
    """Wraps the real processor factory and keeps every processor it built, to check they get closed."""

    def __init__(self) -> None:
        from stream.live import swap_processor_factory

        self._factory = swap_processor_factory(faces="largest")
        self.built: list[FrameProcessor] = []
        self.closed = 0

    def __call__(self, image: np.ndarray) -> FrameProcessor:
        processor = self._factory(image)
        original_close = processor.close

        def close() -> None:
            self.closed += 1
            original_close()

        processor.close = close  # type: ignore[method-assign]
        self.built.append(processor)
        return processor


@pytest.fixture(scope="module")
def still() -> np.ndarray:
    """One 320x240 frame with the astronaut's face."""
    return face_frames(W, H, 1)[0]


@pytest.fixture(scope="module")
def face_box(still: np.ndarray) -> tuple[int, int, int, int]:
    from stream.tracking import detect_faces

    faces = detect_faces(still, max_faces=1)
    assert faces, "the test frame must have a detectable face"
    x0, y0, x1, y1 = (int(v) for v in faces[0].bbox)
    return x0, y0, x1, y1


@pytest.fixture
def factory() -> CountingFactory:
    return CountingFactory()


@pytest.fixture
async def server(factory: CountingFactory) -> AsyncIterator[FacestreamServer]:
    srv = FacestreamServer(factory, ServerConfig(port=0, max_sessions=2, max_body_bytes=512 * 1024))
    await srv.start()
    yield srv
    await srv.close()


async def wait_until(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    """Wait (event-loop friendly) until ``predicate()`` holds; False if it never did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


def region_diff(a: np.ndarray, b: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = box
    return float(np.abs(a[y0:y1, x0:x1].astype(np.float32) - b[y0:y1, x0:x1].astype(np.float32)).mean())


def outside_diff(a: np.ndarray, b: np.ndarray, box: tuple[int, int, int, int], margin: int = 24) -> float:
    x0, y0, x1, y1 = box
    mask = np.ones(a.shape[:2], bool)
    mask[max(0, y0 - margin):y1 + margin, max(0, x0 - margin):x1 + margin] = False
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32))[mask].mean())


async def test_round_trip_processes_frames_and_cleans_up(server: FacestreamServer, factory: CountingFactory,
                                                         still: np.ndarray, face_box) -> None:
    client = PeerClient(server.url)
    session_id = await client.connect(PacedVideoTrack([still], fps=15), face="grace_hopper")
    assert session_id in server.sessions
    frames = [await client.recv() for _ in range(12)]
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in itertools.pairwise(pts)), pts
    last = frames[-1].to_ndarray(format="rgb24")
    assert last.shape == still.shape
    # The face was replaced; the background came back as it was sent (up to VP8's loss).
    face_change, background_change = region_diff(last, still, face_box), outside_diff(last, still, face_box)
    print(f"face region changed by {face_change:.1f}, background by {background_change:.1f} (mean abs)")
    assert face_change > 2 * background_change + 4
    stats = await client.stats()
    assert stats["frames_out"] >= 12 and stats["latency_ms"]["p95"] is not None
    assert stats["state"] == "connected"
    async with aiohttp.ClientSession() as http, http.get(server.url + "metrics") as resp:
        text = await resp.text()
    assert "facestream_frames_total" in text and 'facestream_stage_seconds_count{stage="track"}' in text
    assert "facestream_sessions 1.0" in text

    await client.close()  # DELETE /sessions/{id}, then closes its peer connection
    assert await wait_until(lambda: not server.sessions)
    assert factory.closed == len(factory.built) == 1
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}sessions/{session_id}") as resp:
        assert resp.status == 404


async def test_peer_that_just_leaves_is_cleaned_up(server: FacestreamServer, factory: CountingFactory,
                                                   still: np.ndarray) -> None:
    client = PeerClient(server.url)
    await client.connect(PacedVideoTrack([still], fps=15))
    await client.recv()
    await client.close(hang_up=False)  # no DELETE: the server learns it from the connection
    assert await wait_until(lambda: not server.sessions)
    assert factory.closed == 1


async def test_face_image_in_offer_and_upload(server: FacestreamServer, still: np.ndarray) -> None:
    from matplotlib import cbook

    hopper = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "faces?name=hopper.jpg", data=hopper,
                             headers={"Content-Type": "image/jpeg"}) as resp:
            assert resp.status == 201
            uploaded = await resp.json()
        # A face saved from the web is often WebP.
        webp = cv2.imencode(".webp", cv2.imdecode(np.frombuffer(hopper, np.uint8), cv2.IMREAD_COLOR))[1].tobytes()
        async with http.post(server.url + "faces?name=hopper.webp", data=webp,
                             headers={"Content-Type": "image/webp"}) as resp:
            assert resp.status == 201, await resp.text()
            uploaded_webp = await resp.json()
        async with http.get(server.url + "faces") as resp:
            ids = [f["id"] for f in (await resp.json())["faces"]]
        assert uploaded["id"] in ids and "astronaut" in ids
        assert uploaded_webp["id"] in ids
        async with http.get(server.url + uploaded["thumbnail"]) as resp:
            thumb = cv2.imdecode(np.frombuffer(await resp.read(), np.uint8), cv2.IMREAD_COLOR)
        assert thumb is not None and thumb.shape[0] == 96

        client = PeerClient(server.url, http=http)
        await client.connect(PacedVideoTrack([still], fps=15),
                             face_image="data:image/jpeg;base64," + base64.b64encode(hopper).decode())
        assert (await client.recv()).width == W
        await client.close()


async def _offer_sdp(kind: str = "video") -> str:
    pc = RTCPeerConnection()
    pc.addTransceiver(kind, direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_bad_requests_get_clean_4xx_and_the_server_keeps_serving(server: FacestreamServer,
                                                                       factory: CountingFactory,
                                                                       still: np.ndarray) -> None:
    video_sdp = await _offer_sdp("video")
    audio_sdp = await _offer_sdp("audio")
    no_face = cv2.imencode(".png", np.full((64, 64, 3), 128, np.uint8))[1].tobytes()
    cases = [
        ("POST", "offer", b"{not json", 400),
        ("POST", "offer", json.dumps([1, 2]).encode(), 400),
        ("POST", "offer", json.dumps({"type": "offer"}).encode(), 400),
        ("POST", "offer", json.dumps({"sdp": video_sdp, "type": "answer"}).encode(), 400),
        ("POST", "offer", json.dumps({"sdp": "v=0\r\nthis is not sdp\r\n", "type": "offer"}).encode(), 400),
        ("POST", "offer", json.dumps({"sdp": audio_sdp, "type": "offer"}).encode(), 400),
        ("POST", "offer", json.dumps({"sdp": video_sdp, "type": "offer", "face": "nobody"}).encode(), 400),
        ("POST", "offer", json.dumps({"sdp": video_sdp, "type": "offer", "face_image": "***"}).encode(), 400),
        ("POST", "offer", json.dumps({"sdp": video_sdp, "type": "offer", "mode": "spy"}).encode(), 400),
        ("POST", "offer", json.dumps({"sdp": video_sdp, "type": "offer", "mode": "view"}).encode(), 400),
        ("POST", "offer", json.dumps({"sdp": video_sdp, "type": "offer",
                                      "face_image": base64.b64encode(no_face).decode()}).encode(), 422),
        ("POST", "offer", b"x" * (600 * 1024), 413),
        ("POST", "faces", b"x" * (600 * 1024), 413),
        ("POST", "faces", b"GIF89a not an image I take", 400),
        ("POST", "faces", b"", 400),
        ("GET", "sessions/does-not-exist", None, 404),
        ("DELETE", "sessions/does-not-exist", None, 404),
        ("GET", "faces/nobody.jpg", None, 404),
        ("GET", "no/such/route", None, 404),
    ]
    async with aiohttp.ClientSession() as http:
        for method, path, body, status in cases:
            async with http.request(method, server.url + path, data=body) as resp:
                assert resp.status == status, (path, body[:60] if body else None, await resp.text())
                answer = await resp.json()
                assert isinstance(answer.get("error"), str) and answer["error"], answer
        async with http.get(server.url + "healthz") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
        async with http.get(server.url + "metrics") as resp:
            assert 'facestream_rejected_requests_total{reason="413"} 2.0' in await resp.text()
    assert not server.sessions
    assert factory.closed == len(factory.built)  # the 422 built nothing; a failed accept closed its own
    client = PeerClient(server.url)
    await client.connect(PacedVideoTrack([still], fps=15))
    assert (await client.recv()).height == H
    await client.close()


async def test_session_limit(server: FacestreamServer, still: np.ndarray) -> None:
    clients = [PeerClient(server.url) for _ in range(3)]
    for c in clients[:2]:
        await c.connect(PacedVideoTrack([still], fps=10))
    with pytest.raises(InputError, match="503"):
        await clients[2].connect(PacedVideoTrack([still], fps=10))
    await clients[0].close()
    assert await wait_until(lambda: len(server.sessions) == 1)
    third = PeerClient(server.url)
    await third.connect(PacedVideoTrack([still], fps=10))
    await third.recv()
    for c in (clients[1], third, clients[2]):
        await c.close()
    assert await wait_until(lambda: not server.sessions)


async def test_token_is_required_when_configured(factory: CountingFactory) -> None:
    with pytest.raises(InputError, match="token"):
        ServerConfig(host="0.0.0.0")
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
    srv = FacestreamServer(factory, ServerConfig(port=0, token="s3cret"))
    await srv.start()
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("healthz", ""):
                async with http.get(srv.url + path) as resp:
                    assert resp.status == 200
            async with http.get(srv.url + "faces") as resp:
                assert resp.status == 401
            async with http.get(srv.url + "faces", headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 401
            async with http.get(srv.url + "faces", headers={"Authorization": "Bearer s3cret"}) as resp:
                assert resp.status == 200
            async with http.get(srv.url + "metrics?token=s3cret") as resp:
                assert resp.status == 200
            async with http.post(srv.url + "offer", json={"sdp": "x", "type": "offer"}) as resp:
                assert resp.status == 401
    finally:
        await srv.close()


async def test_a_port_in_use_or_out_of_range_is_one_clear_error(factory: CountingFactory) -> None:
    with pytest.raises(InputError, match="port must be 0-65535, got 99999"):
        ServerConfig(port=99999)
    with pytest.raises(InputError, match="max_body_bytes"):
        ServerConfig(max_body_bytes=0)
    first = FacestreamServer(factory, ServerConfig(port=0))
    url = await first.start()
    try:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        second = FacestreamServer(factory, ServerConfig(port=port))
        with pytest.raises(InputError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            await second.start()
        await second.close()  # nothing left to close, and no complaint
        async with aiohttp.ClientSession() as http, http.get(url + "healthz") as resp:
            assert resp.status == 200  # the first one is untouched
    finally:
        await first.close()


async def test_view_mode_watches_the_live_feed(factory: CountingFactory, still: np.ndarray) -> None:
    feed = LiveFeed()
    srv = FacestreamServer(factory, ServerConfig(port=0), feed=feed)
    await srv.start()
    stop = asyncio.Event()

    async def publish() -> None:
        i = 0
        while not stop.is_set():
            image = still.copy()
            image[:16, :16] = (255, 0, 255)
            feed.publish(Frame(index=i, image=image, capture_time=time.monotonic()))
            i += 1
            await asyncio.sleep(1 / 15)

    publisher = asyncio.create_task(publish())
    try:
        client = PeerClient(srv.url)
        await client.connect(None, mode="view")
        frames = [await client.recv() for _ in range(5)]
        assert all(b.pts > a.pts for a, b in itertools.pairwise(frames))
        corner = frames[-1].to_ndarray(format="rgb24")[2:14, 2:14].mean(axis=(0, 1))
        assert corner[0] > 180 and corner[1] < 90 and corner[2] > 180, corner
        assert feed.viewers == 1
        await client.close()
        assert await wait_until(lambda: not srv.sessions and feed.viewers == 0)
        assert not factory.built  # viewers run no processor
    finally:
        stop.set()
        await publisher
        await srv.close()


async def test_close_ends_open_sessions(factory: CountingFactory, still: np.ndarray) -> None:
    srv = FacestreamServer(factory, ServerConfig(port=0))
    await srv.start()
    client = PeerClient(srv.url)
    await client.connect(PacedVideoTrack([still], fps=15))
    await client.recv()
    await srv.close()
    assert not srv.sessions and factory.closed == 1
    await client.close(hang_up=False)


def test_serve_command_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "stream", "serve", "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        healthy = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                import urllib.request

                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                    healthy = json.load(resp)["status"] == "ok"
                    break
            except OSError:
                time.sleep(0.2)
        assert healthy, proc.stderr.read() if proc.poll() is not None else "no answer"
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "shutting down" in err


def test_an_uploads_size_is_read_from_its_header_before_it_is_decoded() -> None:
    import io

    from PIL import Image

    from stream.serving.faces import image_size

    rgb = np.zeros((37, 53, 3), np.uint8)
    for fmt, extra in (("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}), ("WEBP", {}),
                       ("WEBP", {"lossless": True})):  # with EXIF, WebP's extended format; without, VP8 or VP8L
        exif = Image.Exif()
        exif[0x010F] = "x" * 3000  # a segment before the frame header
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, fmt, exif=exif.tobytes(), **extra)
        assert image_size(buf.getvalue()) == (53, 37), (fmt, extra)
    jpeg = cv2.imencode(".jpg", rgb)[1].tobytes()
    header_end = jpeg.index(b"\xff\xc0")
    with pytest.raises(InputError, match="JPEG without a frame header"):
        image_size(jpeg[:header_end])
    with pytest.raises(InputError, match="JPEG without a frame header"):
        image_size(jpeg[:header_end + 6])  # the frame header cut short
    with pytest.raises(InputError, match="unsupported image format"):
        image_size(b"GIF89a" + bytes(20))
    for lossless in (False, True):  # the simple format: the size from the bitstream's own header
        webp = cv2.imencode(".webp", rgb, [cv2.IMWRITE_WEBP_QUALITY, 101 if lossless else 90])[1].tobytes()
        assert webp[12:16] == (b"VP8L" if lossless else b"VP8 ")
        assert image_size(webp) == (53, 37)
        with pytest.raises(InputError, match="unreadable WebP header"):
            image_size(webp[:22])
