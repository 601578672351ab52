// "Restream (RTMP)" panel of the publisher page: push this page's SANITIZED stream to YouTube, Twitch
// or any RTMP(S) server through the restream HTTP API (docs/PROTOCOL.md), with the publish key as the
// Bearer token. The stream key is typed into a password field, sent once, and never shown back: the
// list shows the server's masked URL (rtmp://host:port/app/****) and state.
// publisher.js announces the stream with the "relay:live" / "relay:ended" document events.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 2000;
  let stream = null; // {streamId, publishKey}
  let timer = null;

  function status(text, bad) {
    $("rs-status").textContent = text;
    $("rs-status").classList.toggle("bad", Boolean(bad));
  }

  function api(path, init = {}) {
    const headers = { Authorization: `Bearer ${stream.publishKey}`, ...(init.headers || {}) };
    return fetch(`/api/streams/${encodeURIComponent(stream.streamId)}/restreams${path}`, { ...init, headers, cache: "no-store" });
  }

  async function apiError(res) {
    try {
      const body = await res.json();
      return body.error.message;
    } catch (err) {
      return `HTTP ${res.status}`;
    }
  }

  /** The target: the server URL plus the stream key as its last path segment (as OBS does). */
  function targetUrl(server, key) {
    const base = server.trim().replace(/\/+$/, "");
    return key ? `${base}/${key.trim()}` : base;
  }

  const STATES = { live: "● live", connecting: "connecting…", stopped: "stopped" };

  function render(restreams) {
    const ul = $("rs-list");
    ul.replaceChildren();
    for (const r of restreams) {
      const li = Relay.el("li", "rs-item");
      li.dataset.restreamId = r.restream_id;
      li.dataset.state = r.state;
      const badge = Relay.el("span", `badge ${r.state === "live" ? "ok" : "neutral"} rs-state`, STATES[r.state] || r.state);
      const remove = Relay.el("button", "button danger rs-remove", "Remove");
      remove.type = "button";
      remove.addEventListener("click", () => removeOne(r.restream_id, remove));
      li.append(Relay.el("code", "rs-url", r.url), badge);
      if (r.error) li.append(Relay.el("span", "meta rs-error", r.error));
      li.append(remove);
      ul.append(li);
    }
    $("rs-empty").classList.toggle("hidden", restreams.length > 0);
  }

  async function refresh() {
    if (!stream) return;
    const current = stream;
    try {
      const res = await api("");
      if (stream !== current) return;
      if (!res.ok) return status(`Cannot list restreams: ${await apiError(res)}`, true);
      render((await res.json()).restreams);
    } catch (err) {
      console.warn("restream list:", err);
    }
  }

  async function add(ev) {
    ev.preventDefault();
    if (!stream) return;
    const url = targetUrl($("rs-url").value, $("rs-key").value);
    $("rs-add").disabled = true;
    try {
      const res = await api("", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ url }),
      });
      if (res.status !== 201) return status(`Could not add the restream: ${await apiError(res)}`, true);
      const made = await res.json();
      $("rs-key").value = ""; // sent once; the page never shows it again
      status(`Restreaming to ${made.url}.`);
      await refresh();
    } catch (err) {
      status(`Could not add the restream: ${err.message}`, true);
    } finally {
      $("rs-add").disabled = !stream;
    }
  }

  async function removeOne(restreamId, button) {
    if (!stream) return;
    button.disabled = true;
    try {
      const res = await api(`/${encodeURIComponent(restreamId)}`, { method: "DELETE" });
      if (!res.ok && res.status !== 404) status(`Could not remove it: ${await apiError(res)}`, true);
      else status("Restream removed.");
    } catch (err) {
      status(`Could not remove it: ${err.message}`, true);
    }
    await refresh();
  }

  document.addEventListener("relay:live", (ev) => {
    stream = { streamId: ev.detail.streamId, publishKey: ev.detail.publishKey };
    $("restream").classList.remove("hidden");
    $("rs-add").disabled = false;
    status("");
    render([]);
    clearInterval(timer);
    timer = setInterval(refresh, POLL_MS);
    refresh();
  });
  document.addEventListener("relay:ended", () => {
    stream = null;
    clearInterval(timer);
    timer = null;
    $("rs-key").value = "";
    $("rs-add").disabled = true;
    $("rs-list").replaceChildren();
    $("restream").classList.add("hidden"); // the server stopped every restream with the stream
  });
  $("rs-form").addEventListener("submit", add);
})();
