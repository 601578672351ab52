"""An independent WHIP client and WHEP player (npm ``whip-whep`` 1.2.0, by an author of the WHIP RFC)
in Debian's headless Chromium, against our WHIP/WHEP endpoints.

The library's ``whip.js``/``whep.js`` are served by a separate local static server, so the pages are
on another origin than the relay: the relay must answer the CORS preflights (``--allowed-origins``
lists the page's origin). The library POSTs its offer before ICE gathering and then trickles its
candidates with PATCH, which the relay answers 405: the connection still comes up through the
peer-reflexive candidates of Chromium's connectivity checks. The publisher prefers H.264 when
Chromium can send it; its fake camera shows a real shipping label, which the WHEP player must
receive pixelated (16 px cells of the label flat, the checkerboard beside it sharp).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp import web

from relay.settings import REPO_ROOT, Settings
from signaling.app import create_app
from tests.helpers.media import block_stds, box_region, label_scene, use_loopback_ice
from tests.test_browser import decoded_frames, launch, playwright_api, snapshot_gray

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

ServeApp = Callable[[web.Application], Awaitable[str]]
LIB = REPO_ROOT / "node_modules" / "whip-whep"
if not (LIB / "whip.js").is_file():
    pytest.skip("node_modules/whip-whep is missing: run `npm ci`", allow_module_level=True)

PUBLISH_PAGE = """<!doctype html><meta charset="utf-8"><video id="local" muted playsinline autoplay></video>
<script type="module">
import { WHIPClient } from "./whip.js";
window.publish = async (url, token) => {
  const media = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  const pc = new RTCPeerConnection({ iceServers: [] });
  const h264 = RTCRtpSender.getCapabilities("video").codecs.filter(
    (c) => c.mimeType === "video/H264" && /packetization-mode=1/.test(c.sdpFmtpLine || ""));
  for (const track of media.getTracks()) {
    const t = pc.addTransceiver(track, { direction: "sendonly" });
    if (track.kind === "video" && h264.length) t.setCodecPreferences(h264);
  }
  const client = new WHIPClient();
  await client.publish(pc, url, token);
  window.whip = client;
  window.pc = pc;
  return { h264: h264.length > 0 };
};
window.answer = () => window.pc.remoteDescription.sdp;
window.state = () => window.pc.connectionState;
window.stop = () => window.whip.stop();
</script>"""

VIEW_PAGE = """<!doctype html><meta charset="utf-8"><video id="v" muted playsinline autoplay></video>
<script type="module">
import { WHEPClient } from "./whep.js";
window.view = async (url, token, h264) => {
  const pc = new RTCPeerConnection({ iceServers: [] });
  const vt = pc.addTransceiver("video", { direction: "recvonly" });
  if (h264) {  // an H.264-only player (the relay's H.264 egress, issue #13)
    const codecs = RTCRtpReceiver.getCapabilities("video").codecs.filter(
      (c) => c.mimeType === "video/H264" && /packetization-mode=1/.test(c.sdpFmtpLine || ""));
    if (!codecs.length) return false;
    vt.setCodecPreferences(codecs);
  }
  pc.addTransceiver("audio", { direction: "recvonly" });
  const video = document.getElementById("v");
  pc.ontrack = (ev) => {
    if (ev.track.kind !== "video") return;
    video.srcObject = new MediaStream([ev.track]);
    video.play().catch(() => {});
  };
  const client = new WHEPClient();
  await client.view(pc, url, token);
  window.whep = client;
  window.pc = pc;
  return true;
};
window.answer = () => window.pc.remoteDescription.sdp;
window.stop = () => window.whep.stop();
</script>"""


class ScaledLabelDetector:
    """Returns the label scene's box scaled to the frame it is shown (Chromium may scale down)."""

    def __init__(self) -> None:
        scene, self.box = label_scene()
        self.size = scene.shape[1], scene.shape[0]

    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        h, w = img_bgr.shape[:2]
        out = self.box.copy()
        out[:, [0, 2]] *= w / self.size[0]
        out[:, [1, 3]] *= h / self.size[1]
        return out


def video_codecs(sdp: str) -> set[str]:
    video = sdp.split("m=video", 1)[1].split("\r\nm=", 1)[0]
    return set(re.findall(r"a=rtpmap:\d+ ([A-Za-z0-9]+)/90000", video)) - {"rtx"}


def write_y4m(path: Path, bgr: np.ndarray, frames: int = 2) -> None:
    h, w = bgr.shape[:2]
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).tobytes()
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F15:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + yuv)


@pytest.fixture
async def playwright() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        yield p


async def pages_server(serve_app: ServeApp) -> str:
    """The two test pages and the library's two ES modules, on an origin of their own."""
    files = {"/publish": PUBLISH_PAGE, "/view": VIEW_PAGE}
    files |= {f"/{n}": (LIB / n).read_text() for n in ("whip.js", "whep.js")}

    async def serve(request: web.Request) -> web.StreamResponse:
        kind = "text/javascript" if request.path.endswith(".js") else "text/html"
        return web.Response(text=files[request.path], content_type=kind)

    app = web.Application()
    for path in files:
        app.router.add_get(path, serve)
    return await serve_app(app)


async def test_whip_whep_js_clients_in_chromium(serve_app: ServeApp, playwright: Any, tmp_path: Path) -> None:
    pages = await pages_server(serve_app)
    with use_loopback_ice():
        settings = Settings(allowed_origins=(pages,))
        relay = await serve_app(create_app(settings, ScaledLabelDetector()))  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{relay}/api/streams", json={"title": "label", "category": "test"}) as r:
                assert r.status == 201
                created = await r.json()
        clip = tmp_path / "label.y4m"
        write_y4m(clip, label_scene()[0])
        pub_browser = await launch(
            playwright,
            [
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-video-capture={clip}",
            ],
        )
        view_browser = await launch(playwright, ["--autoplay-policy=no-user-gesture-required"])
        try:
            publisher = await pub_browser.new_page()
            await publisher.goto(f"{pages}/publish")
            sent = await publisher.evaluate(
                "([u, t]) => window.publish(u, t)", [created["whip_url"], created["publish_key"]]
            )
            answer = await publisher.evaluate("() => window.answer()")
            video = answer.split("m=video", 1)[1].split("\r\nm=", 1)[0]
            codecs = set(re.findall(r"a=rtpmap:\d+ ([A-Za-z0-9]+)/90000", video)) - {"rtx"}
            assert codecs == ({"H264"} if sent["h264"] else {"VP8"}), answer
            print(f"browser WHIP publisher sends {codecs}")

            viewer = await view_browser.new_page()
            await viewer.goto(f"{pages}/view")
            await viewer.evaluate("([u]) => window.view(u)", [created["whep_url"]])
            assert video_codecs(await viewer.evaluate("() => window.answer()")) == {
                "VP8"
            }  # a browser's default
            # a second player that takes only H.264: the room's H.264 encode, decoded by Chromium
            h264_viewer = await view_browser.new_page()
            await h264_viewer.goto(f"{pages}/view")
            h264 = await h264_viewer.evaluate("([u]) => window.view(u, null, true)", [created["whep_url"]])
            players = [viewer, h264_viewer] if h264 else [viewer]
            if h264:
                answer = await h264_viewer.evaluate("() => window.answer()")
                assert video_codecs(answer) == {"H264"} and "profile-level-id=42e01f" in answer, answer
            print(
                f"Chromium WHEP players: VP8{' and H.264' if h264 else ' (this Chromium cannot receive H.264)'}"
            )
            for page in players:
                for _ in range(300):
                    if await decoded_frames(page, "#v") >= 60:
                        break
                    await asyncio.sleep(0.1)
                assert await decoded_frames(page, "#v") >= 60
            assert await publisher.evaluate("() => window.state()") == "connected"

            box = ScaledLabelDetector()
            for page in players:
                for _ in range(3):
                    gray = await snapshot_gray(page, "#v")
                    scaled = box.detect(np.zeros((*gray.shape, 3), np.uint8))
                    inside = block_stds(gray, box_region(scaled[0]), inset=3)
                    h, w = gray.shape
                    outside = block_stds(gray, (int(scaled[0, 2]) + w // 10, 0, w, h))
                    assert inside.size > 10 and outside.size > 10, gray.shape
                    assert np.median(inside) < 4.0, np.median(inside)
                    assert np.median(outside) > 3 * max(float(np.median(inside)), 1.0)
                    await asyncio.sleep(0.5)
            if h264:
                await h264_viewer.evaluate("() => window.stop()")

            # the WHEP player's stop() is a DELETE of its session; the WHIP client's ends the stream
            await viewer.evaluate("() => window.stop()")
            await publisher.evaluate("() => window.stop()")
            async with aiohttp.ClientSession() as http:
                for _ in range(50):
                    async with http.post(
                        created["whep_url"], data=b"v=0\r\n", headers={"Content-Type": "application/sdp"}
                    ) as r:
                        if r.status == 404:
                            break
                    await asyncio.sleep(0.1)
                assert r.status == 404
        finally:
            await pub_browser.close()
            await view_browser.close()


async def test_publisher_page_obs_panel(serve_app: ServeApp, playwright: Any) -> None:
    """The publisher page's "Stream from OBS / ffmpeg" panel makes a stream over the HTTP API and shows
    a WHIP URL and token that an encoder (here aiortc) publishes with; "End it" ends the stream."""
    from tests.helpers.media import ImageTrack, Publisher
    from tests.test_whip_whep import answerer

    with use_loopback_ice():
        relay = await serve_app(create_app(Settings(), ScaledLabelDetector()))  # type: ignore[arg-type]
        browser = await launch(
            playwright, ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
        )
        publisher = Publisher(ImageTrack(label_scene()[0], fps=15))
        try:
            page = await browser.new_page()
            await page.goto(f"{relay}/publish")
            await page.fill("#title", "OBS test")
            await page.fill("#category", "test")
            await page.click("#obs-create")
            # a function, not an expression string: the page's CSP has no 'unsafe-eval'
            await page.wait_for_function("() => document.getElementById('obs-url').value !== ''")
            url = await page.input_value("#obs-url")
            token = await page.input_value("#obs-token")
            assert re.fullmatch(rf"{re.escape(relay)}/whip/[A-Za-z0-9_-]+", url), url
            assert "-f whip" in await page.input_value("#obs-ffmpeg")
            stream_id = url.rsplit("/", 1)[1]
            assert (await page.input_value("#obs-view")).endswith(f"/?stream={stream_id}")
            async with aiohttp.ClientSession() as http:
                await publisher.connect(answerer(http, url, token, {}))
                async with http.get(f"{relay}/api/streams") as r:
                    assert [s["stream_id"] for s in (await r.json())["streams"]] == [stream_id]
                await page.click("#obs-end")
                await page.wait_for_function(
                    "() => document.getElementById('obs-status').textContent === 'Stream ended.'"
                )
                async with http.get(f"{relay}/api/streams") as r:
                    assert (await r.json())["streams"] == []
        finally:
            await publisher.close()
            await browser.close()
