"""A real RTSP server for the tests: GStreamer's gst-rtsp-server (Debian's gir1.2-gst-rtsp-server-1.0).

Run with the system Python (it needs python3-gi): serves ``rtsp://127.0.0.1:PORT/face``, a still image
with a face encoded live as H.264 at ``--fps``; with ``--record-dir`` also accepts RTSP pushes (RECORD)
on ``/record`` (H.264), written to ``record.mkv`` there, and on ``/record-av`` (H.264 + AAC, as FFmpeg sends
them), written to ``record-av.mkv``; with ``--audio`` the stream also carries a 440 Hz tone as G.711 A-law at
8 kHz, as IP cameras send their microphone. Prints ``READY`` once listening.
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--gop", type=int, default=15, help="frames between keyframes")
    parser.add_argument("--record-dir", default=None)
    parser.add_argument("--audio", action="store_true", help="add a tone as G.711 A-law")
    args = parser.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mounts = server.get_mount_points()

    play = GstRtspServer.RTSPMediaFactory()
    play.set_launch(
        f'( multifilesrc location="{args.image}" loop=true caps="image/jpeg,framerate={args.fps}/1" '
        "! jpegdec ! videoconvert ! video/x-raw,format=I420 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.gop} bitrate=1500 "
        "! rtph264pay name=pay0 pt=96 config-interval=1 "
        + ("audiotestsrc is-live=true wave=sine freq=440 volume=0.3 ! audioconvert ! audioresample "
           "! audio/x-raw,rate=8000,channels=1 ! alawenc ! rtppcmapay name=pay1 pt=8 " if args.audio else "")
        + ")")
    play.set_shared(False)
    mounts.add_factory("/face", play)

    if args.record_dir:
        record = GstRtspServer.RTSPMediaFactory()
        record.set_transport_mode(GstRtspServer.RTSPTransportMode.RECORD)
        record.set_launch(
            "( rtph264depay name=depay0 ! h264parse ! matroskamux streamable=true "
            f'! filesink location="{args.record_dir}/record.mkv" )')
        mounts.add_factory("/record", record)
        record_av = GstRtspServer.RTSPMediaFactory()
        record_av.set_transport_mode(GstRtspServer.RTSPTransportMode.RECORD)
        record_av.set_launch(
            "( rtph264depay name=depay0 ! h264parse ! matroskamux name=mux streamable=true "
            f'! filesink location="{args.record_dir}/record-av.mkv" '
            "rtpmp4gdepay name=depay1 ! aacparse ! mux. )")
        mounts.add_factory("/record-av", record_av)

    if server.attach(None) == 0:
        print("FAILED to bind", flush=True)
        sys.exit(1)
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print("READY", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
