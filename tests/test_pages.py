"""The pages in real headless Chromium: phone layout (device emulation, screenshot checked),
fullscreen / picture-in-picture buttons, favicon, CSP connect-src, the same viewer count on both
pages (the publisher's own preview is not a viewer), the live stats panel, and the message when the
camera is refused.
Set ``MOSAIC_SCREENSHOTS=DIR`` to keep the screenshots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import pytest

from relay.settings import Settings
from signaling.app import create_app
from signaling.keys import STATE_KEY
from tests import test_browser
from tests.helpers.media import use_loopback_ice
from tests.test_browser import Clip, GroundTruthDetector, NoDetections, ServeApp, launch

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

clip, playwright = test_browser.clip, test_browser.playwright  # fixtures
PHONE = "Pixel 5"
OTHER_ORIGIN = "https://embed.example"


class PageLog:
    """Every response status, console message and websocket of a page."""

    def __init__(self, page: Any, name: str) -> None:
        self.bad: list[str] = []
        self.console: list[str] = []
        self.websockets: list[str] = []
        page.on("response", lambda r: r.status >= 400 and self.bad.append(f"{name}: {r.status} {r.url}"))
        page.on("console", lambda m: self.console.append(f"{name}: {m.text}"))
        page.on("websocket", lambda ws: self.websockets.append(ws.url))
        page.on("pageerror", lambda e: self.bad.append(f"{name}: uncaught {e}"))


async def visible_video_check(page: Any, selector: str, shot: Path) -> dict[str, float]:
    """The video's box lies within the viewport (no horizontal scrolling), and the screenshot shows
    a picture there (not a flat overlay)."""
    box = await page.eval_on_selector(
        selector,
        "(v) => { const r = v.getBoundingClientRect(); return {x: r.x, y: r.y, w: r.width, h: r.height,"
        " vw: innerWidth, vh: innerHeight, sw: document.documentElement.scrollWidth,"
        " dpr: devicePixelRatio}; }",
    )
    assert box["sw"] <= box["vw"], f"horizontal scrolling on a phone: {box}"
    assert box["x"] >= 0 and box["x"] + box["w"] <= box["vw"] + 0.5, box
    assert box["w"] >= 0.8 * box["vw"] and box["h"] >= 150, box
    assert 0 <= box["y"] and box["y"] + box["h"] <= box["vh"], f"video not on the first screen: {box}"
    await page.screenshot(path=str(shot))
    img = cv2.imread(str(shot), cv2.IMREAD_GRAYSCALE)
    d = box["dpr"]
    crop = img[
        int(box["y"] * d) : int((box["y"] + box["h"]) * d), int(box["x"] * d) : int((box["x"] + box["w"]) * d)
    ]
    assert crop.size and float(crop.std()) > 15, (
        f"the video area of the screenshot is flat ({crop.std():.1f})"
    )
    return box


async def watching(page: Any, selector: str) -> str:
    return (await page.text_content(selector) or "").strip()


async def test_phone_viewer_controls_favicon_csp_and_viewer_counts(
    clip: Clip, serve_app: ServeApp, playwright: Any, tmp_path: Path
) -> None:
    shots = Path(os.environ.get("MOSAIC_SCREENSHOTS") or tmp_path)
    settings = Settings()
    with use_loopback_ice():
        url = await serve_app(create_app(settings, GroundTruthDetector(clip)))
        pub_browser = await launch(
            playwright,
            ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
             f"--use-file-for-fake-video-capture={clip.y4m}"],
        )  # fmt: skip
        view_browser = await launch(playwright, ["--autoplay-policy=no-user-gesture-required"])
        try:
            pub = await (await pub_browser.new_context(viewport={"width": 1280, "height": 860})).new_page()
            pub_log = PageLog(pub, "publisher")
            response = await pub.goto(url + "/publish")
            csp = response.headers["content-security-policy"]
            assert "connect-src 'self';" in csp and "ws:" not in csp, csp
            await pub.wait_for_selector("#start:not([disabled])", timeout=30_000)
            await pub.fill("#title", "Phone test")
            await pub.fill("#category", "street")
            await pub.click("#start")
            await pub.wait_for_selector("#share:not(.hidden)", timeout=30_000)
            share = await pub.input_value("#share-link")
            await pub.wait_for_function(
                "() => document.querySelector('#sanitized').getVideoPlaybackQuality().totalVideoFrames >= 5",
                timeout=30_000,
            )
            # the publisher page watches its own output, and that is not a viewer
            await pub.wait_for_selector("#viewers:not(.hidden)")
            assert await watching(pub, "#viewers") == "0 watching"

            phone = await (await view_browser.new_context(**playwright.devices[PHONE])).new_page()
            phone_log = PageLog(phone, "phone")
            await phone.goto(share)  # what someone opening the shared link on a phone does
            await phone.wait_for_function(
                "() => document.querySelector('#remote').getVideoPlaybackQuality().totalVideoFrames >= 15",
                timeout=60_000,
            )
            await phone.wait_for_selector("#overlay.hidden", state="attached", timeout=10_000)
            box = await visible_video_check(phone, "#remote", shots / "phone-viewer.png")
            print("phone viewer video box:", box)

            # one viewer, shown the same on both pages
            await phone.wait_for_function(
                "() => document.querySelector('#player-viewers').textContent === '1 watching'"
            )
            await pub.wait_for_function(
                "() => document.querySelector('#viewers').textContent === '1 watching'"
            )

            # the live stats panel (stream_stats, ~1/s): same viewer count, frames going out, labels hidden
            await pub.wait_for_selector("#stats:not(.hidden)", timeout=10_000)
            await pub.wait_for_function(
                "() => document.querySelector('#stat-viewers').textContent === '1'"
                " && parseFloat(document.querySelector('#stat-fps-out').textContent) > 2"
                " && /labels/.test(document.querySelector('#stat-objects').textContent)",
                timeout=15_000,
            )
            first = await pub.text_content("#stats")
            await pub.wait_for_function(
                "(before) => document.querySelector('#stats').textContent !== before",
                arg=first,
                timeout=10_000,
            )  # it updates
            print("stats panel:", " ".join((await pub.text_content("#stats") or "").split()))

            # fullscreen (the player) and picture-in-picture buttons
            await phone.click('#player [data-video-action="fullscreen"]')
            await phone.wait_for_function(
                "() => document.fullscreenElement && document.fullscreenElement.id === 'player'"
            )
            await phone.screenshot(path=str(shots / "phone-fullscreen.png"))
            await phone.click('#player [data-video-action="fullscreen"]')
            await phone.wait_for_function("() => !document.fullscreenElement")
            pip_button = pub.locator('#sanitized ~ .video-controls [data-video-action="pip"]')
            if await pub.evaluate("document.pictureInPictureEnabled"):
                await pip_button.click()
                await pub.wait_for_function(
                    "() => document.pictureInPictureElement === document.querySelector('#sanitized')"
                )
                await pip_button.click()
                await pub.wait_for_function("() => !document.pictureInPictureElement")
            else:  # a browser without it gets no button
                assert await pip_button.is_hidden()

            # the publisher page on a phone: the camera preview is on the first screen too
            phone_pub = await (await pub_browser.new_context(**playwright.devices[PHONE])).new_page()
            phone_pub_log = PageLog(phone_pub, "phone publisher")
            await phone_pub.goto(url + "/publish")
            await phone_pub.wait_for_selector("#start:not([disabled])", timeout=30_000)
            await phone_pub.wait_for_function("() => document.querySelector('#local').readyState >= 2")
            await visible_video_check(phone_pub, "#local", shots / "phone-publisher.png")

            for log in (pub_log, phone_log, phone_pub_log):
                assert not log.bad, log.bad  # no 404 (favicon), no uncaught error
                assert not [m for m in log.console if "Content Security Policy" in m], log.console
                assert any(u.startswith(url.replace("http", "ws")) for u in log.websockets), log.websockets
        finally:
            await pub_browser.close()
            await view_browser.close()


async def test_favicon_and_csp_with_configured_origins(serve_app: ServeApp) -> None:
    import aiohttp

    settings = Settings(allowed_origins=(OTHER_ORIGIN, "*"))
    url = await serve_app(create_app(settings, NoDetections()))
    async with aiohttp.ClientSession() as http:
        for path in ("/favicon.ico", "/static/favicon.svg"):
            async with http.get(url + path) as r:
                assert r.status == 200 and r.content_type == "image/svg+xml" and b"<svg" in await r.read()
        async with http.get(url + "/") as r:
            csp = r.headers["Content-Security-Policy"]
    assert f"connect-src 'self' {OTHER_ORIGIN};" in csp, csp  # '*' is not copied into the CSP


async def test_refused_camera_gets_a_clear_message(serve_app: ServeApp, playwright: Any) -> None:
    url = await serve_app(create_app(Settings(), NoDetections()))
    browser = await launch(playwright, ["--use-fake-device-for-media-stream", "--deny-permission-prompts"])
    try:
        page = await (await browser.new_context()).new_page()
        await page.goto(url + "/publish")
        await page.wait_for_selector("#status.bad", timeout=15_000)
        text = await page.text_content("#cam-text") or ""
        assert "Camera access was refused" in text and "reload" in text, text
        assert await page.is_disabled("#start")
    finally:
        await browser.close()


async def test_audio_from_the_publisher_page_to_the_viewer_page(
    clip: Clip, serve_app: ServeApp, playwright: Any
) -> None:
    """The publisher page sends the (fake) microphone; the viewer page receives an audio track,
    starts muted with a notice, and its unmute button unmutes. The publisher's mic switch mutes."""
    with use_loopback_ice():
        app = create_app(Settings(), GroundTruthDetector(clip))
        url = await serve_app(app)
        fake = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
        pub_browser = await launch(playwright, [*fake, f"--use-file-for-fake-video-capture={clip.y4m}"])
        view_browser = await launch(playwright, ["--autoplay-policy=no-user-gesture-required"])
        try:
            pub = await (await pub_browser.new_context()).new_page()
            pub_log = PageLog(pub, "publisher")
            sent: list[str] = []
            pub.on("websocket", lambda ws: ws.on("framesent", lambda p: sent.append(str(p))))
            await pub.goto(url + "/publish")
            await pub.wait_for_selector("#start:not([disabled])", timeout=30_000)
            assert await pub.text_content("#mic-state") == "on" and await pub.is_checked("#mic")
            await pub.fill("#title", "Sound test")
            await pub.fill("#category", "talk")
            await pub.click("#start")
            await pub.wait_for_selector("#share:not(.hidden)", timeout=30_000)
            (publish,) = [p for p in sent if '"publish"' in p]
            assert "m=audio" in publish and "opus" in publish.lower(), publish[:300]
            stream_id = (await pub.text_content("#stream-id") or "").strip()
            room = app[STATE_KEY].registry.get(stream_id)
            assert room.audio is not None  # the relay takes the publisher's audio

            viewer = await (await view_browser.new_context()).new_page()
            viewer_log = PageLog(viewer, "viewer")
            await viewer.goto(await pub.input_value("#share-link"))
            await viewer.wait_for_selector("#unmute:not(.hidden)", timeout=30_000)
            assert await viewer.evaluate("document.querySelector('#remote').muted")
            assert "tap to unmute" in (await viewer.text_content("#unmute") or "")
            # the audio track is there and media flows on it (a track is muted until RTP arrives)
            await viewer.wait_for_function(
                "() => { const s = document.querySelector('#remote').srcObject;"
                " const a = s && s.getAudioTracks()[0]; return a && a.readyState === 'live' && !a.muted; }",
                timeout=20_000,
            )
            await viewer.click("#unmute")
            await viewer.wait_for_function("() => !document.querySelector('#remote').muted")
            assert not await viewer.evaluate("document.querySelector('#remote').paused")
            assert "Sound on" in (await viewer.text_content("#unmute") or "")
            await viewer.click("#unmute")
            await viewer.wait_for_function("() => document.querySelector('#remote').muted")

            # the publisher's mute switch
            await pub.click("label:has(#mic) .slider")
            assert await pub.text_content("#mic-state") == "muted"
            assert not await pub.evaluate(
                "document.querySelector('#local').srcObject.getAudioTracks()[0].enabled"
            )
            for log in (pub_log, viewer_log):
                assert not log.bad, log.bad
        finally:
            await pub_browser.close()
            await view_browser.close()


async def test_refused_microphone_still_streams_video(
    serve_app: ServeApp, playwright: Any, clip: Clip
) -> None:
    url = await serve_app(create_app(Settings(), NoDetections()))
    browser = await launch(
        playwright,
        [
            "--use-fake-device-for-media-stream",
            "--deny-permission-prompts",
            f"--use-file-for-fake-video-capture={clip.y4m}",
        ],
    )
    try:
        context = await browser.new_context(permissions=["camera"])  # the microphone is refused
        page = await context.new_page()
        await page.goto(url + "/publish")
        await page.wait_for_selector("#start:not([disabled])", timeout=15_000)
        text = await page.text_content("#status") or ""
        assert "Camera ready" in text and "Microphone access was refused" in text and "video only" in text, (
            text
        )
        assert await page.text_content("#mic-state") == "refused" and await page.is_disabled("#mic")
        await page.wait_for_function("() => document.querySelector('#local').readyState >= 2")
    finally:
        await browser.close()
