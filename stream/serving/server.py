"""The aiohttp + aiortc server behind ``facestream serve``.

Signalling follows aiortc's examples: the page ``POST``s ``/offer`` with ``{"sdp", "type"}`` plus the
session's options (``face``: an id from ``GET /faces``, or ``face_image``: a base64/data-URL PNG or
JPEG; ``mode``: ``"process"`` the sender's camera or ``"view"`` the server's live feed) and gets the
SDP answer and a session id back. ``GET``/``DELETE /sessions/{id}`` report on and hang up a session;
``/metrics`` is Prometheus, ``/healthz`` a liveness probe.

Every error is a JSON ``{"error": ...}`` with a 4xx/5xx status and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiortc import RTCSessionDescription

from stream.exceptions import InputError, NoFaceError
from stream.serving.faces import FaceStore
from stream.serving.feed import LiveFeed
from stream.serving.metrics import ServingMetrics
from stream.serving.session import ProcessorFactory, Session
from stream.tracks import FrameProcessor

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).with_name("web")
PUBLIC_PATHS = ("/", "/healthz", "/favicon.ico")
"""Paths served without the token (the page itself asks for it); ``/static/*`` too."""


@dataclass(frozen=True)
class ServerConfig:
    """How ``facestream serve`` listens and what it allows."""

    host: str = "127.0.0.1"
    """Interface to bind; anything but loopback requires ``token``."""
    port: int = 8080
    """TCP port; 0 picks a free one (tests)."""
    token: str | None = None
    """Shared secret: ``Authorization: Bearer <token>`` or ``?token=`` on every API request."""
    max_sessions: int = 4
    """Concurrent peer connections; further offers get 503."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Largest request body (offers carrying a face image, uploads); larger ones get 413."""
    max_image_pixels: int = 4096 * 4096
    """Largest source face image accepted, in pixels."""
    queue_size: int = 1
    """Frames kept per keep-latest queue of a session."""
    connect_timeout: float = 30.0
    """Seconds a new session may take to connect before it is dropped."""

    def __post_init__(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise InputError(f"binding to {self.host!r} (beyond loopback) needs a token: pass --token or set "
                             "FACESTREAM_TOKEN")
        if self.max_sessions < 1:
            raise InputError(f"max_sessions must be >= 1, got {self.max_sessions}")
        if not 0 <= self.port <= 65535:
            raise InputError(f"port must be 0-65535, got {self.port}")
        if self.max_body_bytes < 1:
            raise InputError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


class FacestreamServer:
    """One HTTP server, its sessions and metrics.

    ``processor_factory`` builds each session's :class:`FrameProcessor` from the chosen source face;
    ``feed`` (optional) is a :class:`LiveFeed` that ``mode: "view"`` sessions watch.
    """

    def __init__(
        self,
        processor_factory: ProcessorFactory,
        config: ServerConfig | None = None,
        *,
        faces: FaceStore | None = None,
        metrics: ServingMetrics | None = None,
        feed: LiveFeed | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        self.processor_factory = processor_factory
        self.faces = faces if faces is not None else FaceStore(max_pixels=self.config.max_image_pixels)
        self.metrics = metrics or ServingMetrics()
        self.feed = feed
        self.sessions: dict[str, Session] = {}
        self._pending = 0
        self._closing = False
        self._started = time.monotonic()
        self._runner: web.AppRunner | None = None
        self.app = self._make_app()
        self.url: str | None = None

    # -- app ----------------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes,
                              middlewares=[self._errors, self._auth])
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", WEB_DIR, show_index=False)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/config", self._config)
        app.router.add_get("/faces", self._list_faces)
        app.router.add_post("/faces", self._upload_face)
        app.router.add_get("/faces/{face_id}.jpg", self._face_thumbnail)
        app.router.add_post("/offer", self._offer)
        app.router.add_get("/sessions/{session_id}", self._session_stats)
        app.router.add_delete("/sessions/{session_id}", self._hang_up)
        app.on_shutdown.append(self._on_shutdown)
        return app

    @web.middleware
    async def _errors(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            self.metrics.rejected.labels(str(exc.status)).inc()
            message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
            if exc.status == 413:
                message = f"request body too large; at most {self.config.max_body_bytes} bytes"
            return _error(exc.status, message)
        except Exception:
            logger.exception("unexpected error answering %s %s", request.method, request.path)
            self.metrics.rejected.labels("500").inc()
            return _error(500, "internal error")
        if response.status >= 400:
            self.metrics.rejected.labels(str(response.status)).inc()
        return response

    @web.middleware
    async def _auth(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        token = self.config.token
        if token and request.path not in PUBLIC_PATHS and not request.path.startswith("/static/"):
            given = request.query.get("token", "")
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                given = auth[len("Bearer "):]
            if not hmac.compare_digest(given.encode(), token.encode()):
                return _error(401, "missing or wrong token", **{"WWW-Authenticate": "Bearer"})
        return await handler(request)

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> str:
        """Bind and serve in the background; returns the base URL (with the real port when 0)."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        try:
            await site.start()
        except OSError as exc:  # the port is taken, the address is not this machine's...
            runner, self._runner = self._runner, None
            await runner.cleanup()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio repeats the address
            raise InputError(f"cannot listen on {self.config.host}:{self.config.port}: {reason}") from exc
        server = site._server
        port = self.config.port
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        self.url = f"http://{host}:{port}/"
        logger.info("serving on %s", self.url)
        return self.url

    async def close(self) -> None:
        """Stop accepting, close every session, then the HTTP server. Idempotent."""
        self._closing = True
        await self._close_sessions()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _on_shutdown(self, app: web.Application) -> None:
        self._closing = True
        await self._close_sessions()

    async def _close_sessions(self) -> None:
        sessions = list(self.sessions.values())
        if sessions:
            await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)

    def _session_closed(self, session: Session) -> None:
        if self.sessions.pop(session.id, None) is not None:
            self.metrics.sessions.set(len(self.sessions))

    # -- handlers -----------------------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def _healthz(self, request: web.Request) -> web.Response:
        status = "closing" if self._closing else "ok"
        return web.json_response({"status": status, "sessions": len(self.sessions),
                                  "uptime_s": round(time.monotonic() - self._started, 1)},
                                 status=503 if self._closing else 200)

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _config(self, request: web.Request) -> web.Response:
        p50, p95 = self.metrics.window.percentiles(50, 95)
        return web.json_response({
            "max_sessions": self.config.max_sessions,
            "sessions": len(self.sessions),
            "live_feed": self.feed is not None,
            "max_body_bytes": self.config.max_body_bytes,
            "latency_ms": {"p50": None if p50 is None else round(p50 * 1000, 2),
                           "p95": None if p95 is None else round(p95 * 1000, 2)},
        })

    async def _list_faces(self, request: web.Request) -> web.Response:
        return web.json_response({"faces": self.faces.describe()})

    async def _face_thumbnail(self, request: web.Request) -> web.Response:
        try:
            face = self.faces.get(request.match_info["face_id"])
        except InputError as exc:
            return _error(404, str(exc))
        return web.Response(body=face.thumbnail, content_type="image/jpeg")

    async def _upload_face(self, request: web.Request) -> web.Response:
        name = request.query.get("name", "upload")
        if request.content_type.startswith("multipart/"):
            data = b""
            reader = await request.multipart()
            async for part in reader:
                if getattr(part, "name", None) == "image":
                    data = await part.read()  # type: ignore[union-attr]
                    name = getattr(part, "filename", None) or name
                    break
        else:
            data = await request.read()
        if not data:
            return _error(400, "empty upload; send a PNG, JPEG or WebP image as the body or the 'image' field")
        loop = asyncio.get_running_loop()
        try:
            face = await loop.run_in_executor(None, self.faces.add_encoded, data, name)
        except InputError as exc:
            return _error(400, str(exc))
        return web.json_response(face.describe(), status=201)

    async def _offer(self, request: web.Request) -> web.Response:
        if self._closing:
            return _error(503, "server is shutting down")
        try:
            params = await request.json(loads=json.loads)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the offer must be a JSON object {\"sdp\": ..., \"type\": \"offer\"}")
        if not isinstance(params, dict):
            return _error(400, "the offer must be a JSON object {\"sdp\": ..., \"type\": \"offer\"}")
        sdp, kind = params.get("sdp"), params.get("type")
        if not isinstance(sdp, str) or not sdp.strip():
            return _error(400, "the offer needs 'sdp', a non-empty string")
        if kind != "offer":
            return _error(400, f"'type' must be 'offer', got {kind!r}")
        mode = params.get("mode", "process")
        if mode not in ("process", "view"):
            return _error(400, f"unknown mode {mode!r}; choose from: process, view")
        if mode == "view" and self.feed is None:
            return _error(400, "this server has no live feed to view; use mode 'process'")
        if len(self.sessions) + self._pending >= self.config.max_sessions:
            return _error(503, f"server is full ({self.config.max_sessions} sessions); try again later",
                          **{"Retry-After": "5"})
        self._pending += 1
        try:
            return await self._open_session(params, RTCSessionDescription(sdp=sdp, type=kind), mode)
        finally:
            self._pending -= 1

    async def _open_session(self, params: dict[str, Any], offer: RTCSessionDescription,
                            mode: str) -> web.Response:
        session_id = secrets.token_urlsafe(9)
        loop = asyncio.get_running_loop()
        executor: ThreadPoolExecutor | None = None
        processor: FrameProcessor | None = None
        if mode == "process":
            try:
                image = await self._source_image(params)
            except InputError as exc:
                return _error(400, str(exc))
            executor = ThreadPoolExecutor(1, thread_name_prefix=f"facestream-session-{session_id}")
            try:
                # Built on the thread that will run it: some trackers bind to their creating thread.
                processor = await loop.run_in_executor(executor, self.processor_factory, image)
            except NoFaceError as exc:
                executor.shutdown(wait=False)
                return _error(422, f"{exc}: pick or upload an image with one clearly visible face")
            except BaseException:
                executor.shutdown(wait=False)
                raise
        session = Session(session_id, self.metrics, processor=processor, executor=executor,
                          feed_track=self.feed.subscribe() if mode == "view" and self.feed else None,
                          queue_size=self.config.queue_size, connect_timeout=self.config.connect_timeout,
                          on_closed=self._session_closed)
        try:
            answer = await session.accept(offer)
        except InputError as exc:
            await session.close()
            return _error(400, str(exc))
        except BaseException:
            await session.close()
            raise
        if self._closing or session.closed:
            await session.close()
            return _error(503, "server is shutting down")
        self.sessions[session_id] = session
        self.metrics.sessions.set(len(self.sessions))
        self.metrics.sessions_opened.inc()
        logger.info("session %s opened (%s)", session_id, mode)
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "session": session_id})

    async def _source_image(self, params: dict[str, Any]) -> Any:
        encoded = params.get("face_image")
        if encoded is not None:
            if not isinstance(encoded, str):
                raise InputError("'face_image' must be a base64 string or a data: URL")
            if encoded.startswith("data:"):
                encoded = encoded.partition(",")[2]
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InputError(f"'face_image' is not valid base64: {exc}") from exc
            loop = asyncio.get_running_loop()
            face = await loop.run_in_executor(None, self.faces.add_encoded, data, "offer")
            return face.image
        face_id = params.get("face")
        if face_id is None:
            default = self.faces.default()
            if default is None:
                raise InputError("no source face: send 'face' (an id from /faces) or 'face_image'")
            return default.image
        if not isinstance(face_id, str):
            raise InputError(f"'face' must be a face id string, got {face_id!r}")
        return self.faces.get(face_id).image

    def _get_session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.match_info["session_id"])

    async def _session_stats(self, request: web.Request) -> web.Response:
        session = self._get_session(request)
        if session is None:
            return _error(404, f"unknown session {request.match_info['session_id']!r}")
        return web.json_response(session.stats())

    async def _hang_up(self, request: web.Request) -> web.Response:
        session = self._get_session(request)
        if session is None:
            return _error(404, f"unknown session {request.match_info['session_id']!r}")
        stats = session.stats()
        await session.close()
        return web.json_response({"closed": session.id, "frames_out": stats["frames_out"]})
