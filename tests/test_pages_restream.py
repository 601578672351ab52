"""The publisher page's restream form in real headless Chromium, into a real RTMP receiver
(``ffmpeg -listen 1`` on loopback, the server started with ``restream_allow_private``): the stream
key is typed into a password field, sent once with the publish key as Bearer, and never shown back
(the list shows the masked URL and the state); the remove button stops the push."""

from __future__ import annotations

import asyncio
import logging
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest

from relay.settings import Settings
from signaling.app import create_app
from tests import test_browser
from tests.helpers.media import use_loopback_ice
from tests.test_browser import Clip, GroundTruthDetector, ServeApp, launch, screenshot
from tests.test_pages import PageLog
from tests.test_restream import FfmpegListener, needs_ffmpeg, receivers, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180), needs_ffmpeg]

clip, playwright = test_browser.clip, test_browser.playwright  # fixtures
_ = receivers  # fixture


async def test_restream_form_pushes_to_rtmp_and_removes(
    clip: Clip,
    serve_app: ServeApp,
    playwright: Any,
    free_port: int,
    tmp_path: Path,
    receivers: list[FfmpegListener],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    rkey = "sk_" + secrets.token_hex(10)
    rx = FfmpegListener(free_port, rkey, tmp_path / "page.flv")
    receivers.append(rx)
    await rx.ready()
    with use_loopback_ice():
        url = await serve_app(create_app(Settings(restream_allow_private=True), GroundTruthDetector(clip)))
        browser = await launch(
            playwright,
            ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
             f"--use-file-for-fake-video-capture={clip.y4m}"],
        )  # fmt: skip
        try:
            page = await (await browser.new_context()).new_page()
            log = PageLog(page, "publisher")
            requests: list[tuple[str, str, str | None]] = []
            page.on(
                "request",
                lambda r: (
                    "/restreams" in r.url
                    and requests.append((r.method, r.url, r.headers.get("authorization")))
                ),
            )
            await page.goto(url + "/publish")
            assert await page.is_hidden("#restream")  # nothing to restream before going live
            await page.wait_for_selector("#start:not([disabled])", timeout=30_000)
            await page.fill("#title", "Restream test")
            await page.fill("#category", "test")
            await page.click("#start")
            await page.wait_for_selector("#restream:not(.hidden)", timeout=30_000)
            assert await page.get_attribute("#rs-key", "type") == "password"

            await page.fill("#rs-url", f"rtmp://127.0.0.1:{free_port}/app/")
            await page.fill("#rs-key", rkey)
            await page.click("#rs-add")
            item = page.locator("#rs-list li.rs-item")
            await item.wait_for(timeout=10_000)
            assert await page.input_value("#rs-key") == ""  # sent once, not kept in the form
            masked = f"rtmp://127.0.0.1:{free_port}/app/****"
            assert (await item.locator(".rs-url").text_content()) == masked
            await page.wait_for_selector('#rs-list li.rs-item[data-state="live"]', timeout=20_000)
            assert "live" in (await item.locator(".rs-state").text_content() or "")
            await screenshot(page, "publisher-restream.png")
            # the key is nowhere on the page, in no restream response, in no log line
            html = await page.content()
            assert rkey not in html and rkey not in (await page.text_content("body") or "")
            posts = [r for r in requests if r[0] == "POST"]
            assert len(posts) == 1 and (posts[0][2] or "").startswith("Bearer "), requests
            assert all((a or "").startswith("Bearer ") for _, _, a in requests), requests

            # something arrives at the receiver, then the remove button stops the push
            await asyncio.sleep(2.0)
            await item.locator(".rs-remove").click()
            await page.wait_for_selector("#rs-list li.rs-item", state="detached", timeout=10_000)
            assert await page.is_visible("#rs-empty")
            await rx.finish(15.0)
            assert rx.proc.returncode is not None
            probe = await asyncio.to_thread(
                subprocess.run,
                ["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0",
                 "-show_entries", "stream=codec_name,width,height,nb_read_packets", "-of", "csv=p=0",
                 str(rx.out)],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            codec, width, height, packets = probe.stdout.strip().split(",")[:4]
            assert (codec, int(width), int(height)) == ("h264", clip.width, clip.height), probe.stdout
            assert int(packets) >= 10, probe.stdout
            assert not [r for r in caplog.records if rkey in r.getMessage()]
            assert not log.bad, log.bad
        finally:
            await browser.close()
    assert await wait_for(lambda: rx.proc.poll() is not None, 5)
