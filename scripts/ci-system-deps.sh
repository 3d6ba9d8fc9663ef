#!/usr/bin/env bash
# System packages the browser and RTSP tests need (Debian): headless Chromium, and GStreamer's RTSP
# server with the system Python's gi bindings (tests/rtsp_server.py runs under /usr/bin/python3).
# Idempotent and quick: installs only what is missing; needs root (CI) or passwordless sudo.
set -euo pipefail
packages=(chromium python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
          gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly fonts-dejavu-core)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "ci-system-deps: all present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "ci-system-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
