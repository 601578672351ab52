// Shared helpers of the publisher and viewer pages (plain ES2020, no build step).
// The socket.io client is served by this server at /vendor/socket.io.min.js (no CDN).
"use strict";

const Relay = (() => {
  const REQUEST_TIMEOUT_MS = 20000;
  const ICE_GATHER_TIMEOUT_MS = 4000;

  /** A socket.io connection to one namespace ("/publisher" or "/viewer"); all share one transport. */
  function connect(namespace) {
    return io(namespace, { reconnectionDelayMax: 4000 });
  }

  class RequestError extends Error {
    constructor(code, message) {
      super(message);
      this.code = code;
    }
  }

  /** Send one request; resolve with the ack's result or reject with a RequestError. */
  async function request(socket, event, payload) {
    let ack;
    try {
      ack = await socket.timeout(REQUEST_TIMEOUT_MS).emitWithAck(event, payload || {});
    } catch (err) {
      throw new RequestError("timeout", `no answer to ${event} (connection problem?)`);
    }
    if (!ack || ack.ok !== true) {
      const e = (ack && ack.error) || { code: "internal_error", message: "malformed answer" };
      throw new RequestError(e.code, e.message);
    }
    return ack;
  }

  /** The server does not take trickled candidates: wait until the offer holds them all. */
  function iceGatheringDone(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, ICE_GATHER_TIMEOUT_MS);
      function done() {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
      function check() {
        if (pc.iceGatheringState === "complete") done();
      }
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  /** Make a complete offer (all candidates) on pc. */
  async function completeOffer(pc) {
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc);
    return { sdp: pc.localDescription.sdp, type: pc.localDescription.type };
  }

  /**
   * Ask the browser's encoder to start at a useful bitrate: without this Chromium ramps up from
   * 640x360 for ~30 s. Adds x-google-{start,min}-bitrate (kbit/s) to the VP8 fmtp lines of an answer.
   */
  function withStartBitrate(sdp, startKbps = 2000, minKbps = 1000) {
    const extra = `x-google-start-bitrate=${startKbps};x-google-min-bitrate=${minKbps}`;
    const lines = sdp.split("\r\n");
    const vp8 = lines.map((l) => /^a=rtpmap:(\d+) VP8\//i.exec(l)).filter(Boolean).map((m) => m[1]);
    const hasFmtp = (pt) => lines.some((l) => l.startsWith(`a=fmtp:${pt} `));
    const out = [];
    for (const l of lines) {
      const fmtp = /^a=fmtp:(\d+) /.exec(l);
      out.push(fmtp && vp8.includes(fmtp[1]) && !l.includes("x-google-start-bitrate") ? `${l};${extra}` : l);
      const rtpmap = /^a=rtpmap:(\d+) VP8\//i.exec(l);
      if (rtpmap && !hasFmtp(rtpmap[1])) out.push(`a=fmtp:${rtpmap[1]} ${extra}`);
    }
    return out.join("\r\n");
  }

  /**
   * The RTCPeerConnection configuration: the server's STUN/TURN servers (GET /api/ice-servers; with
   * --turn-secret each call gets fresh short-lived TURN credentials), or none if that fails.
   */
  async function rtcConfig() {
    try {
      const r = await fetch("/api/ice-servers", { cache: "no-store" });
      if (r.ok) return { iceServers: (await r.json()).iceServers || [] };
    } catch (err) {
      console.warn("no ICE server list:", err);
    }
    return { iceServers: [] };
  }

  /**
   * Watch a stream: a recvonly peer connection shown in videoEl (with the publisher's audio unless
   * opts.audio is false; onAudio(track) is called when an audio track arrives). Returns {pc, viewerId, stream}.
   */
  async function watch(socket, streamId, videoEl, token, opts = {}) {
    const pc = new RTCPeerConnection(await rtcConfig());
    const media = new MediaStream();
    pc.addTransceiver("video", { direction: "recvonly" });
    if (opts.audio !== false) pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addEventListener("track", (ev) => {
      media.addTrack(ev.track);
      if (videoEl.srcObject !== media) videoEl.srcObject = media;
      videoEl.play().catch(() => {});
      if (ev.track.kind === "audio" && opts.onAudio) opts.onAudio(ev.track);
    });
    try {
      const offer = await completeOffer(pc);
      const payload = { stream_id: streamId, sdp: offer.sdp, type: offer.type };
      if (token) payload.token = token;
      const ack = await request(socket, "view", payload);
      await pc.setRemoteDescription({ sdp: ack.sdp, type: ack.type });
      return { pc, viewerId: ack.viewer_id, stream: ack.stream };
    } catch (err) {
      pc.close();
      throw err;
    }
  }

  function timeOf(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function ago(iso) {
    if (!iso) return "";
    const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    if (s < 60) return "just now";
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min ago`;
  }

  /** Create an element with text content only (never innerHTML: titles come from strangers). */
  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  const REASONS = {
    stopped: "The streamer ended the stream.",
    publisher_disconnected: "The streamer's connection dropped.",
    publisher_failed: "The streamer's connection failed.",
    publisher_ended: "The streamer's camera stopped.",
    server_shutdown: "The server is restarting.",
  };

  function reasonText(reason) {
    return REASONS[reason] || "The stream has ended.";
  }

  /** Fullscreen and picture-in-picture buttons of every .player (each shown only where the browser
   * supports it); a double click on a video toggles fullscreen too. */
  function initVideoControls() {
    for (const player of document.querySelectorAll(".player")) {
      const video = player.querySelector("video");
      const pip = player.querySelector('[data-video-action="pip"]');
      const full = player.querySelector('[data-video-action="fullscreen"]');
      if (!video || !pip || !full) continue;
      pip.classList.toggle("hidden", !document.pictureInPictureEnabled);
      full.classList.toggle("hidden", !(document.fullscreenEnabled || video.webkitEnterFullscreen));
      pip.addEventListener("click", () => togglePictureInPicture(video));
      full.addEventListener("click", () => toggleFullscreen(player, video));
      video.addEventListener("dblclick", () => toggleFullscreen(player, video));
    }
  }

  function togglePictureInPicture(video) {
    const done = document.pictureInPictureElement === video
      ? document.exitPictureInPicture()
      : video.readyState >= 1 ? video.requestPictureInPicture() : Promise.resolve();
    return done.catch((err) => console.warn("picture-in-picture:", err));
  }

  function toggleFullscreen(player, video) {
    if (document.fullscreenElement) return document.exitFullscreen().catch(() => {});
    if (player.requestFullscreen) return player.requestFullscreen().catch((err) => console.warn("fullscreen:", err));
    if (video.webkitEnterFullscreen) video.webkitEnterFullscreen(); // iPhone Safari: the video element only
  }

  initVideoControls(); // deferred scripts run once the document is parsed

  return { connect, request, RequestError, rtcConfig, completeOffer, withStartBitrate, watch, timeOf, ago, el, reasonText };
})();
