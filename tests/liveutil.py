"""Helpers for the live and serving tests: face frames, y4m/jpeg files, a real RTSP server, Chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from stream.demo import render_target_frames

HERE = Path(__file__).resolve().parent
SYSTEM_PYTHON = "/usr/bin/python3"


def face_frames(width: int = 320, height: int = 240, frames: int = 12) -> list[np.ndarray]:
    """RGB frames of the astronaut's head moving over a textured background (every frame has the face)."""
    return list(render_target_frames(width, height, frames, empty_head=0, empty_tail=0))


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 15) -> Path:
    """A raw YUV4MPEG2 (4:2:0) file, what Chromium's fake camera plays in a loop."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
            f.write(b"FRAME\n")
            f.write(yuv.tobytes())
    return path


def write_jpeg(path: Path, rgb: np.ndarray, quality: int = 92) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rtsp_server_missing() -> str | None:
    """Why the GStreamer RTSP server cannot run here, or None when it can."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
         "gi.require_version('Gst', '1.0'); from gi.repository import Gst, GstRtspServer; Gst.init(None); "
         "assert Gst.ElementFactory.find('x264enc') and Gst.ElementFactory.find('jpegdec')"],
        capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return ("GStreamer RTSP server not installed (run scripts/ci-system-deps.sh): "
                + (probe.stderr.strip().splitlines() or ["?"])[-1])
    return None


class RtspServer:
    """``tests/rtsp_server.py`` (GStreamer's gst-rtsp-server) in a subprocess, restartable."""

    def __init__(self, image: Path, port: int, fps: int = 15, gop: int = 15) -> None:
        self.gop = gop
        self.image = image
        self.port = port
        self.fps = fps
        self.proc: subprocess.Popen[str] | None = None
        self.url = f"rtsp://127.0.0.1:{port}/face"
        self.record_dir: Path | None = None
        self.audio = False
        """Send a tone as G.711 A-law beside the video (set before :meth:`start`)."""

    def start(self, timeout: float = 10.0) -> None:
        args = [SYSTEM_PYTHON, str(HERE / "rtsp_server.py"), "--port", str(self.port), "--image", str(self.image),
                "--fps", str(self.fps), "--gop", str(self.gop)]
        if self.record_dir is not None:
            args += ["--record-dir", str(self.record_dir)]
        if self.audio:
            args.append("--audio")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()
        if not line.startswith("READY") or time.monotonic() > deadline:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"RTSP server did not start: {line!r} {err}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@contextlib.contextmanager
def chromium(url: str, user_dir: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Headless Chromium on ``url`` with remote debugging; yields (process, devtools port)."""
    binary = chromium_binary()
    assert binary is not None
    args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--mute-audio", f"--user-data-dir={user_dir}",
            "--remote-debugging-port=0", "--remote-allow-origins=*", "--window-size=1280,1100", *extra, url]
    env = dict(os.environ)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        port_file = user_dir / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        yield proc, int(port_file.read_text().split()[0])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
