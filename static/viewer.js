// Viewer page: live list (refreshed by server events), watch one stream, "ended" state.
// /?stream=<id>[&token=<view token>] joins that stream directly (the publisher's share link).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const socket = Relay.connect("/viewer");
  const streams = new Map(); // stream_id -> stream (public live streams)
  let current = null; // {streamId, pc, viewerId, token, stream}
  let joining = false;

  // --- list ---------------------------------------------------------------------------------

  function renderList() {
    const ul = $("streams");
    ul.replaceChildren();
    const items = [...streams.values()].sort((a, b) => (b.started_at_epoch || 0) - (a.started_at_epoch || 0));
    for (const s of items) {
      const li = Relay.el("li", "stream-card" + (current && current.streamId === s.stream_id ? " active" : ""));
      li.dataset.streamId = s.stream_id;
      li.tabIndex = 0;
      li.setAttribute("role", "button");
      li.setAttribute("aria-label", `Watch ${s.title}`);
      const top = Relay.el("div", "card-top");
      top.append(Relay.el("span", "title", s.title), Relay.el("span", "chip", s.category));
      const bottom = Relay.el("div", "card-bottom");
      bottom.append(
        Relay.el("span", "meta", `started ${Relay.timeOf(s.started_at)} · ${Relay.ago(s.started_at)}`),
        Relay.el("span", "badge neutral", `${s.viewer_count} watching`),
        mosaicBadge(s.mosaic),
      );
      li.append(top, bottom);
      li.addEventListener("click", () => join(s.stream_id));
      li.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") join(s.stream_id);
      });
      ul.append(li);
    }
    $("empty").classList.toggle("hidden", items.length > 0);
  }

  function mosaicBadge(on) {
    return on ? Relay.el("span", "badge ok", "mosaic on") : Relay.el("span", "badge danger", "⚠ mosaic OFF");
  }

  async function refreshList() {
    try {
      const ack = await Relay.request(socket, "list_streams", {});
      streams.clear();
      for (const s of ack.streams) streams.set(s.stream_id, s);
      renderList();
    } catch (err) {
      console.warn("list_streams failed", err);
    }
  }

  // --- player -------------------------------------------------------------------------------

  function showOverlay(text, ended) {
    $("overlay-text").textContent = text;
    $("overlay").classList.toggle("hidden", !text);
    $("overlay").classList.toggle("ended", !!ended);
  }

  function showStream(s) {
    $("player-title").textContent = s.title;
    $("player-meta").textContent = `${s.category} · started ${Relay.timeOf(s.started_at)} (${Relay.ago(s.started_at)})`;
    const badge = $("player-mosaic");
    badge.className = s.mosaic ? "badge ok" : "badge danger";
    badge.textContent = s.mosaic ? "mosaic on" : "⚠ mosaic OFF";
    $("player-viewers").textContent = `${s.viewer_count} watching`;
    $("player-viewers").classList.remove("hidden");
    $("mosaic-warning").classList.toggle("hidden", s.mosaic);
    $("player").classList.toggle("raw", !s.mosaic);
  }

  function stopPlayback() {
    if (current && current.pc) current.pc.close();
    $("remote").srcObject = null;
    $("unmute").classList.add("hidden");
  }

  // --- sound: browsers only autoplay muted video, so the page starts muted and offers to unmute ---

  function showSound() {
    const muted = $("remote").muted;
    $("unmute").classList.remove("hidden");
    $("unmute").classList.toggle("on", !muted);
    $("unmute").setAttribute("aria-pressed", String(!muted));
    $("unmute-text").textContent = muted
      ? "Sound off (videos autoplay muted) · tap to unmute"
      : "Sound on · tap to mute";
  }

  function toggleSound() {
    const video = $("remote");
    video.muted = !video.muted;
    if (!video.muted) video.play().catch(() => {}); // a click is the user gesture that allows sound
    showSound();
  }

  async function leave() {
    if (!current) return;
    const { streamId, viewerId } = current;
    stopPlayback();
    current = null;
    $("leave").classList.add("hidden");
    $("player-mosaic").classList.add("hidden");
    $("player-viewers").classList.add("hidden");
    $("mosaic-warning").classList.add("hidden");
    $("player-title").textContent = "Nothing playing";
    $("player-meta").textContent = "";
    showOverlay("Pick a stream from the list.");
    history.replaceState(null, "", "/");
    renderList();
    if (viewerId) Relay.request(socket, "leave", { stream_id: streamId, viewer_id: viewerId }).catch(() => {});
  }

  async function join(streamId, token) {
    if (joining || (current && current.streamId === streamId)) return;
    joining = true;
    try {
      if (current) await leave();
      current = { streamId, token, pc: null, viewerId: null };
      const known = streams.get(streamId);
      if (known) showStream(known);
      $("player-title").textContent = known ? known.title : "Joining…";
      showOverlay("Connecting…");
      renderList();
      const w = await Relay.watch(socket, streamId, $("remote"), token, { onAudio: showSound });
      if (!current || current.streamId !== streamId) {
        w.pc.close();
        return;
      }
      Object.assign(current, w);
      showStream(w.stream);
      $("player-mosaic").classList.remove("hidden");
      $("leave").classList.remove("hidden");
      const q = new URLSearchParams({ stream: streamId });
      if (token) q.set("token", token);
      history.replaceState(null, "", `/?${q}`);
      w.pc.addEventListener("connectionstatechange", () => {
        if (w.pc.connectionState === "failed" && current && current.pc === w.pc) {
          showOverlay("The connection to the server failed. Pick the stream again to retry.", true);
        }
      });
    } catch (err) {
      stopPlayback();
      const why = err.code === "not_found" ? "This stream is not live (any more)." : err.message;
      showOverlay(`Cannot watch: ${why}`, true);
      $("player-title").textContent = "Nothing playing";
      history.replaceState(null, "", "/");
      current = null;
    } finally {
      joining = false;
    }
  }

  $("remote").addEventListener("playing", () => {
    if (current) showOverlay("");
  });
  $("leave").addEventListener("click", leave);
  $("unmute").addEventListener("click", toggleSound);

  // --- server events ------------------------------------------------------------------------

  socket.on("connect", async () => {
    $("conn").textContent = "connected";
    $("conn").className = "conn ok";
    await refreshList();
    const wanted = new URLSearchParams(location.search); // the stream being watched, if any
    if (wanted.get("stream") && !current) join(wanted.get("stream"), wanted.get("token") || undefined);
  });
  socket.on("disconnect", () => {
    $("conn").textContent = "reconnecting…";
    $("conn").className = "conn bad";
    if (current) {
      // the server drops this connection's viewers; rejoin (from the URL) once reconnected
      stopPlayback();
      current = null;
      showOverlay("Connection to the server lost, reconnecting…", true);
    }
  });

  socket.on("stream_updated", ({ stream }) => {
    if (stream.live && !stream.private) streams.set(stream.stream_id, stream);
    renderList();
    if (current && current.streamId === stream.stream_id) showStream(stream);
  });

  socket.on("stream_ended", ({ stream_id: streamId, reason }) => {
    streams.delete(streamId);
    renderList();
    if (current && current.streamId === streamId) {
      stopPlayback();
      current = null;
      for (const id of ["leave", "player-mosaic", "player-viewers", "mosaic-warning"]) $(id).classList.add("hidden");
      $("player").classList.remove("raw");
      $("player-meta").textContent = "ended";
      showOverlay(`Stream ended. ${Relay.reasonText(reason)}`, true);
    }
  });

  setInterval(renderList, 30000); // keep "n min ago" fresh
})();
