// Publisher page: camera preview, create + publish a stream, mosaic switch, stop, and a view of
// the SANITIZED output exactly as viewers receive it (this page also joins as a viewer).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const pubSocket = Relay.connect("/publisher");
  const viewSocket = Relay.connect("/viewer"); // same connection (socket.io multiplexes namespaces)
  let camera = null; // MediaStream
  let live = null; // {streamId, publishKey, viewToken, pc, self}

  function status(text, bad) {
    $("status").textContent = text;
    $("status").classList.toggle("bad", !!bad);
  }

  function overlay(which, text) {
    $(`${which}-text`).textContent = text || "";
    $(`${which}-overlay`).classList.toggle("hidden", !text);
  }

  // --- camera -------------------------------------------------------------------------------

  /** What to tell the streamer when getUserMedia fails (by the DOMException's name). */
  function cameraProblem(err) {
    switch (err && err.name) {
      case "NotAllowedError":
      case "SecurityError":
        return "Camera access was refused. Allow the camera for this site (the camera icon in the address bar, or the browser's site settings), then reload this page.";
      case "NotFoundError":
      case "OverconstrainedError":
        return "No camera was found. Connect a camera, then reload this page.";
      case "NotReadableError":
      case "AbortError":
        return "The camera could not be started: another application may be using it. Close it, then reload this page.";
      default:
        return `The camera is unavailable: ${(err && err.message) || err}`;
    }
  }

  function micProblem(err) {
    switch (err && err.name) {
      case "NotAllowedError":
      case "SecurityError":
        return "Microphone access was refused: you stream video only (allow the microphone for this site and reload to add sound).";
      case "NotFoundError":
        return "No microphone was found: you stream video only.";
      default:
        return `The microphone is unavailable (${(err && err.message) || err}): you stream video only.`;
    }
  }

  /** The microphone switch: mutes by disabling the track (the stream then carries silence). */
  function showMic(track, err) {
    $("mic").disabled = !track;
    $("mic").checked = !!track && track.enabled;
    $("mic-state").textContent = !track ? (err ? "refused" : "none") : track.enabled ? "on" : "muted";
  }

  function toggleMic() {
    const track = camera && camera.getAudioTracks()[0];
    if (!track) return;
    track.enabled = $("mic").checked;
    showMic(track, null);
  }

  async function startCamera() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      const why = "The camera needs a secure page: open this page over HTTPS (or on localhost).";
      overlay("cam", why);
      status(why, true);
      return;
    }
    const video = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };
    let micError = null;
    try {
      try {
        camera = await navigator.mediaDevices.getUserMedia({ video, audio: true });
      } catch (err) {
        // the microphone (or the pair) was refused or is missing: video alone still works
        camera = await navigator.mediaDevices.getUserMedia({ video, audio: false });
        micError = err;
      }
      $("local").srcObject = camera;
      const s = camera.getVideoTracks()[0].getSettings();
      overlay("cam", "");
      const mic = camera.getAudioTracks()[0];
      showMic(mic, micError);
      status(`Camera ready (${s.width}x${s.height})${mic ? ", microphone on" : ""}.${micError ? " " + micProblem(micError) : ""}`, !!micError);
      $("start").disabled = false;
    } catch (err) {
      const why = cameraProblem(err);
      overlay("cam", why);
      status(why, true);
      $("cam-overlay").classList.add("refused");
    }
  }

  // --- going live ---------------------------------------------------------------------------

  async function start(ev) {
    ev.preventDefault();
    if (live || !camera) return;
    $("start").disabled = true;
    const title = $("title").value.trim();
    const category = $("category").value.trim();
    const isPrivate = $("private").checked;
    let pc = null;
    try {
      status("Creating the stream…");
      const created = await Relay.request(pubSocket, "create_stream", { title, category, private: isPrivate });
      live = { streamId: created.stream_id, publishKey: created.publish_key, viewToken: created.view_token };
      pc = new RTCPeerConnection(await Relay.rtcConfig());
      live.pc = pc;
      for (const track of camera.getVideoTracks()) pc.addTransceiver(track, { direction: "sendonly" });
      for (const track of camera.getAudioTracks()) pc.addTransceiver(track, { direction: "sendonly" });
      status("Connecting to the server…");
      const offer = await Relay.completeOffer(pc);
      const answer = await Relay.request(pubSocket, "publish", {
        stream_id: live.streamId,
        publish_key: live.publishKey,
        sdp: offer.sdp,
        type: offer.type,
      });
      await pc.setRemoteDescription({ type: answer.type, sdp: Relay.withStartBitrate(answer.sdp) });
      pc.addEventListener("connectionstatechange", () => {
        if (pc.connectionState === "failed") status("The media connection to the server failed.", true);
      });
      onLive(created.stream);
      await watchSelf();
    } catch (err) {
      status(`Could not go live: ${err.message}`, true);
      if (live) {
        const { streamId, publishKey } = live;
        Relay.request(pubSocket, "stop_stream", { stream_id: streamId, publish_key: publishKey }).catch(() => {});
      }
      if (pc) pc.close();
      reset();
    }
  }

  function onLive(stream) {
    for (const id of ["title", "category", "private"]) $(id).disabled = true;
    $("start").classList.add("hidden");
    $("stop").classList.remove("hidden");
    $("live-badge").classList.remove("hidden");
    $("mosaic").disabled = false;
    $("text-net").disabled = !stream.text_net;  // a server without the net: nothing to switch
    $("stream-id").textContent = live.streamId;
    const q = new URLSearchParams({ stream: live.streamId });
    if (live.viewToken) q.set("token", live.viewToken);
    $("share-link").value = `${location.origin}/?${q}`;
    $("share").classList.remove("hidden");
    status(live.viewToken ? "You are live (private: share the link)." : "You are live.");
    showState(stream);
    const detail = { streamId: live.streamId, publishKey: live.publishKey };
    document.dispatchEvent(new CustomEvent("relay:live", { detail })); // static/restream.js
  }

  /** Join our own stream as a viewer: what is shown is what the server sends out. */
  async function watchSelf() {
    overlay("out", "Connecting to the sanitized stream…");
    const streamId = live.streamId;
    try {
      // no audio: the streamer would hear themselves
      const w = await Relay.watch(viewSocket, streamId, $("sanitized"), live.viewToken, { audio: false });
      if (!live || live.streamId !== streamId) return w.pc.close();
      live.self = w;
      showState(w.stream);
    } catch (err) {
      // the broadcast itself goes on; only this preview of it failed
      overlay("out", `Cannot show what viewers see: ${err.message}`);
    }
  }

  function showState(stream) {
    if (!stream) return;
    $("mosaic").checked = stream.mosaic;
    $("mosaic-state").textContent = stream.mosaic ? "on" : "OFF";
    $("mosaic-warning").classList.toggle("hidden", stream.mosaic);
    $("text-net").checked = Boolean(stream.text_net);
    $("text-net-state").textContent = stream.text_net ? "on" : "off";
    $("sanitized").parentElement.classList.toggle("raw", !stream.mosaic);
    if (stream.live) {
      // the server does not count this page's own preview (docs/PROTOCOL.md): same number as the viewer page
      $("viewers").textContent = `${stream.viewer_count} watching`;
      $("viewers").classList.remove("hidden");
    }
  }

  // --- live stats (the server's stream_stats event, ~1/s, to this connection only) ------------

  const CLASS_LABELS = { license_plate: "plates", id_card: "ID cards", shipping_label: "labels", text: "text", barcode: "barcodes" };

  function showStats({ stream_id: streamId, stats }) {
    if (!live || streamId !== live.streamId || !stats) return;
    $("stats").classList.remove("hidden");
    $("stats-window").textContent = `(last ${stats.window_s} s)`;
    $("stat-fps-in").textContent = stats.fps_in.toFixed(1);
    $("stat-fps-out").textContent = stats.fps_out.toFixed(1);
    const detect = Object.entries(stats.detect_ms || {});
    $("stat-detect").textContent = detect.length ? detect.map(([name, ms]) => `${name} ${ms.toFixed(1)} ms`).join(" · ") : "no run yet";
    const objects = Object.entries(stats.objects_hidden || {}).filter(([, n]) => n > 0);
    $("stat-objects").textContent = objects.length ? objects.map(([c, n]) => `${n} ${CLASS_LABELS[c] || c}`).join(" · ") : "none";
    $("stat-fallbacks").textContent = `${stats.whole_frame_fallbacks} frames`;
    $("stat-viewers").textContent = `${stats.viewers}`;
  }

  async function setMosaic() {
    if (!live) return;
    const enabled = $("mosaic").checked;
    if (!enabled && !confirmOff()) {
      $("mosaic").checked = true;
      return;
    }
    $("mosaic").disabled = true;
    try {
      const ack = await Relay.request(pubSocket, "set_mosaic", {
        stream_id: live.streamId,
        publish_key: live.publishKey,
        enabled,
      });
      showState(ack.stream);
    } catch (err) {
      $("mosaic").checked = !enabled;
      status(`Could not switch the mosaic: ${err.message}`, true);
    } finally {
      $("mosaic").disabled = !live;
    }
  }

  async function setTextNet() {
    if (!live) return;
    const enabled = $("text-net").checked;
    $("text-net").disabled = true;
    try {
      const ack = await Relay.request(pubSocket, "set_text_net", {
        stream_id: live.streamId,
        publish_key: live.publishKey,
        enabled,
      });
      showState(ack.stream);
    } catch (err) {
      $("text-net").checked = !enabled;
      status(`Could not switch the text safety net: ${err.message}`, true);
    } finally {
      $("text-net").disabled = !live;
    }
  }

  function confirmOff() {
    return window.confirm("Switch the mosaic OFF? Viewers will see your raw camera, including plates, ID cards and labels.");
  }

  async function stop() {
    if (!live) return;
    const { streamId, publishKey } = live;
    $("stop").disabled = true;
    try {
      await Relay.request(pubSocket, "stop_stream", { stream_id: streamId, publish_key: publishKey });
      status("Stream stopped.");
    } catch (err) {
      status(`Stop failed: ${err.message}`, true);
    }
    ended();
  }

  function ended() {
    if (!live) return;
    if (live.self) live.self.pc.close();
    if (live.pc) live.pc.close();
    $("sanitized").srcObject = null;
    reset();
  }

  function reset() {
    if (live) document.dispatchEvent(new CustomEvent("relay:ended"));
    live = null;
    for (const id of ["title", "category", "private"]) $(id).disabled = false;
    $("start").disabled = !camera;
    $("start").classList.remove("hidden");
    $("stop").classList.add("hidden");
    $("stop").disabled = false;
    $("live-badge").classList.add("hidden");
    $("mosaic").disabled = true;
    $("text-net").disabled = true;
    $("mosaic").checked = true;
    $("mosaic-state").textContent = "on";
    $("mosaic-warning").classList.add("hidden");
    $("viewers").classList.add("hidden");
    $("stats").classList.add("hidden");
    $("share").classList.add("hidden");
    $("sanitized").parentElement.classList.remove("raw");
    overlay("out", "The sanitized stream appears here once you are live.");
  }

  // --- wiring -------------------------------------------------------------------------------

  $("setup").addEventListener("submit", start);
  $("stop").addEventListener("click", stop);
  $("mosaic").addEventListener("change", setMosaic);
  $("text-net").addEventListener("change", setTextNet);
  $("mic").addEventListener("change", toggleMic);
  $("copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText($("share-link").value);
      $("copy").textContent = "Copied";
    } catch {
      $("share-link").select();
    }
  });
  $("sanitized").addEventListener("playing", () => overlay("out", ""));

  pubSocket.on("connect", () => {
    $("conn").textContent = "connected";
    $("conn").className = "conn ok";
  });
  pubSocket.on("disconnect", () => {
    $("conn").textContent = "disconnected";
    $("conn").className = "conn bad";
    if (live) {
      status("Lost the connection to the server: the stream has ended.", true);
      ended();
    }
  });
  pubSocket.on("stream_updated", ({ stream }) => {
    if (live && stream.stream_id === live.streamId) showState(stream);
  });
  pubSocket.on("stream_stats", showStats);
  pubSocket.on("stream_ended", ({ stream_id: streamId, reason }) => {
    if (live && streamId === live.streamId) {
      status(`Stream ended: ${Relay.reasonText(reason)}`, reason !== "stopped");
      ended();
    }
  });

  startCamera();
})();
