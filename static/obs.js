// "Stream from OBS / ffmpeg" panel of the publisher page: creates a stream over the HTTP stream API
// (POST /api/streams) for a WHIP encoder, shows its WHIP URL and bearer token, ends it on request.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  let made = null; // {stream_id, publish_key, whip_url, view_token?}

  function status(text, bad) {
    $("obs-status").textContent = text;
    $("obs-status").classList.toggle("bad", Boolean(bad));
  }

  async function apiError(res) {
    try {
      const body = await res.json();
      return `${body.error.code}: ${body.error.message}`;
    } catch (err) {
      return `HTTP ${res.status}`;
    }
  }

  async function create() {
    const body = {
      title: $("title").value.trim(),
      category: $("category").value.trim(),
      private: $("private").checked,
    };
    if (!body.title || !body.category) return status("Fill in the title and category above first.", true);
    $("obs-create").disabled = true;
    try {
      const res = await fetch("/api/streams", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      if (res.status !== 201) throw new Error(await apiError(res));
      made = await res.json();
    } catch (err) {
      $("obs-create").disabled = false;
      return status(`Could not create the stream: ${err.message}`, true);
    }
    const view = new URL("/", location.href);
    view.searchParams.set("stream", made.stream_id);
    if (made.view_token) view.searchParams.set("token", made.view_token);
    $("obs-url").value = made.whip_url;
    $("obs-token").value = made.publish_key;
    $("obs-view").value = view.href;
    $("obs-ffmpeg").value =
      "ffmpeg -re -i INPUT -c:v libx264 -profile:v baseline -tune zerolatency -bf 0 -g 60 -b:v 2M " +
      `-c:a libopus -ar 48000 -ac 2 -f whip -authorization ${made.publish_key} ` +
      `-cert_file whip.crt -key_file whip.key "${made.whip_url}"`;
    $("obs-share").classList.remove("hidden");
    $("obs-end").classList.remove("hidden");
    status("Waiting for your encoder: paste the URL and token, then start streaming there.");
  }

  async function end() {
    if (!made) return;
    const res = await fetch(`/api/streams/${encodeURIComponent(made.stream_id)}`, {
      method: "DELETE",
      headers: { Authorization: `Bearer ${made.publish_key}` },
    }).catch(() => null);
    status(res && (res.ok || res.status === 404) ? "Stream ended." : "Could not end the stream.", !(res && (res.ok || res.status === 404)));
    made = null;
    $("obs-share").classList.add("hidden");
    $("obs-end").classList.add("hidden");
    $("obs-create").disabled = false;
  }

  async function copy(ev) {
    const button = ev.target.closest("button[data-copy]");
    if (!button) return;
    const input = $(button.dataset.copy);
    try {
      await navigator.clipboard.writeText(input.value);
    } catch (err) {
      input.select(); // no clipboard permission (plain http): select for Ctrl+C
      return;
    }
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = "Copy"), 1500);
  }

  $("obs-create").addEventListener("click", create);
  $("obs-end").addEventListener("click", end);
  $("obs-share").addEventListener("click", copy);
})();
