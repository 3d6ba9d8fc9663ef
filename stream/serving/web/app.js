// facestream live page: pick a face, send the camera over WebRTC, show the processed stream.
// Plain browser JavaScript, no build step. `window.facestream` exposes state for tests and debugging.
"use strict";

(() => {
  const query = new URLSearchParams(location.search);
  const hash = new URLSearchParams(location.hash.slice(1));
  const token = hash.get("token") || query.get("token");
  const authHeaders = token ? { Authorization: `Bearer ${token}` } : {};
  const $ = (id) => document.getElementById(id);

  let pc = null;
  let camera = null;
  let sessionId = null;
  let selectedFace = null;
  let statsTimer = null;
  let lastDecoded = null;

  const hook = {
    state: "idle", error: null, session: null, face: null, stats: {},
    start: () => connect("process"), watch: () => connect("view"), hangUp: () => hangUp(),
    sampleRegion,
  };
  window.facestream = hook;

  function setStatus(text, isError = false) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", isError);
    if (isError) hook.error = text;
  }

  async function api(path, options = {}) {
    const response = await fetch(path, { ...options, headers: { ...authHeaders, ...(options.headers || {}) } });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    return body;
  }

  function selectFace(id) {
    selectedFace = id;
    hook.face = id;
    for (const el of document.querySelectorAll(".face")) {
      el.setAttribute("aria-selected", String(el.dataset.id === id));
    }
  }

  async function loadFaces(select) {
    const { faces } = await api("faces");
    const box = $("faces");
    box.replaceChildren();
    for (const face of faces) {
      const button = document.createElement("button");
      button.className = "face";
      button.dataset.id = face.id;
      button.title = face.name;
      button.setAttribute("role", "option");
      const img = document.createElement("img");
      img.alt = face.name;
      img.src = face.thumbnail + (token ? `?token=${encodeURIComponent(token)}` : "");
      button.append(img);
      button.addEventListener("click", () => selectFace(face.id));
      box.append(button);
    }
    const wanted = select || query.get("face") || selectedFace || (faces[0] && faces[0].id);
    if (wanted) selectFace(wanted);
    if (!faces.length) setStatus("No built-in faces: upload one.");
  }

  async function upload(file) {
    setStatus(`Uploading ${file.name}…`);
    try {
      const face = await api(`faces?name=${encodeURIComponent(file.name)}`, {
        method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
      });
      await loadFaces(face.id);
      setStatus(`Using ${file.name}. Start the camera.`);
    } catch (err) {
      setStatus(`Upload failed: ${err.message}`, true);
    }
  }

  function iceGatheringDone(peer, timeoutMs = 3000) {
    if (peer.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { peer.removeEventListener("icegatheringstatechange", check); resolve(); };
      const check = () => { if (peer.iceGatheringState === "complete") done(); };
      peer.addEventListener("icegatheringstatechange", check);
      setTimeout(done, timeoutMs);
    });
  }

  async function connect(mode) {
    if (pc) return;
    hook.error = null;
    hook.state = "connecting";
    $("start").disabled = true;
    $("watch").disabled = true;
    try {
      pc = new RTCPeerConnection();
      pc.addEventListener("track", (event) => {
        if (event.track.kind === "video") $("remote").srcObject = new MediaStream([event.track]);
      });
      pc.addEventListener("connectionstatechange", () => {
        if (!pc) return;
        hook.state = pc.connectionState;
        setStatus(`Connection ${pc.connectionState}.`, pc.connectionState === "failed");
        if (pc.connectionState === "failed") hangUp();
      });
      if (mode === "process") {
        setStatus("Asking for the camera…");
        camera = await navigator.mediaDevices.getUserMedia({
          video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } }, audio: false,
        });
        $("local").srcObject = camera;
        for (const track of camera.getVideoTracks()) pc.addTrack(track, camera);
      } else {
        pc.addTransceiver("video", { direction: "recvonly" });
      }
      await pc.setLocalDescription(await pc.createOffer());
      await iceGatheringDone(pc);
      setStatus("Negotiating…");
      const body = { sdp: pc.localDescription.sdp, type: pc.localDescription.type, mode };
      if (mode === "process" && selectedFace) body.face = selectedFace;
      const answer = await api("offer", {
        method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" },
      });
      sessionId = answer.session;
      hook.session = sessionId;
      await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
      $("hangup").disabled = false;
      statsTimer = setInterval(updateStats, 1000);
    } catch (err) {
      setStatus(`Could not connect: ${err.message}`, true);
      await hangUp(false);
      hook.state = "error";
    }
  }

  async function hangUp(clearStatus = true) {
    clearInterval(statsTimer);
    statsTimer = null;
    const id = sessionId;
    sessionId = null;
    if (id) {
      fetch(`sessions/${id}`, { method: "DELETE", headers: authHeaders, keepalive: true }).catch(() => {});
    }
    if (pc) { pc.close(); pc = null; }
    if (camera) { for (const t of camera.getTracks()) t.stop(); camera = null; }
    $("local").srcObject = null;
    $("remote").srcObject = null;
    $("start").disabled = false;
    $("watch").disabled = false;
    $("hangup").disabled = true;
    lastDecoded = null;
    hook.state = "closed";
    if (clearStatus) setStatus("Hung up.");
  }

  function show(id, value, unit = "") {
    $(id).textContent = value === null || value === undefined ? "–" : `${value}${unit}`;
  }

  async function updateStats() {
    if (!pc) return;
    const report = await pc.getStats();
    const now = performance.now();
    let decoded = null;
    let rtt = null;
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") decoded = s.framesDecoded;
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) {
        rtt = s.currentRoundTripTime;
      }
    });
    let fps = null;
    if (decoded !== null && lastDecoded) fps = (decoded - lastDecoded.n) / ((now - lastDecoded.t) / 1000);
    if (decoded !== null) lastDecoded = { n: decoded, t: now };
    hook.stats = { ...hook.stats, framesDecoded: decoded, fps, rtt };
    show("stat-decoded", decoded);
    show("stat-fps", fps === null ? null : fps.toFixed(1));
    show("stat-rtt", rtt === null ? null : (rtt * 1000).toFixed(0), " ms");
    if (!sessionId) return;
    try {
      const server = await api(`sessions/${sessionId}`);
      hook.stats = { ...hook.stats, server };
      show("stat-server-fps", server.fps.toFixed(1));
      show("stat-p50", server.latency_ms.p50, " ms");
      show("stat-p95", server.latency_ms.p95, " ms");
      show("stat-dropped", server.dropped);
      if (server.error) setStatus(`Processing stopped: ${server.error}`, true);
    } catch (err) {
      hook.stats = { ...hook.stats, serverError: err.message };
    }
  }

  // Mean RGB of a region of the processed video, in fractions of its size (tests, debugging).
  function sampleRegion(x = 0, y = 0, w = 1, h = 1) {
    const video = $("remote");
    const vw = video.videoWidth;
    const vh = video.videoHeight;
    if (!vw || !vh) return null;
    const canvas = document.createElement("canvas");
    canvas.width = vw;
    canvas.height = vh;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(video, 0, 0, vw, vh);
    const rx = Math.round(x * vw), ry = Math.round(y * vh);
    const rw = Math.max(1, Math.round(w * vw)), rh = Math.max(1, Math.round(h * vh));
    const data = ctx.getImageData(rx, ry, rw, rh).data;
    const sum = [0, 0, 0];
    for (let i = 0; i < data.length; i += 4) { sum[0] += data[i]; sum[1] += data[i + 1]; sum[2] += data[i + 2]; }
    const n = data.length / 4;
    return { width: vw, height: vh, mean: sum.map((v) => v / n) };
  }

  // The current processed frame as a PNG data URL (tests compare it with what the camera sent).
  function snapshot() {
    const video = $("remote");
    if (!video.videoWidth) return null;
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    return canvas.toDataURL("image/png");
  }
  hook.snapshot = snapshot;

  $("start").addEventListener("click", () => connect("process"));
  $("watch").addEventListener("click", () => connect("view"));
  $("hangup").addEventListener("click", () => hangUp());
  $("upload").addEventListener("change", (e) => { if (e.target.files[0]) upload(e.target.files[0]); });
  window.addEventListener("pagehide", () => { if (sessionId) hangUp(false); });

  (async () => {
    try {
      const config = await api("config");
      $("watch").hidden = !config.live_feed;
      await loadFaces();
      hook.state = "ready";
    } catch (err) {
      setStatus(`Server unavailable: ${err.message}`, true);
    }
  })();
})();
