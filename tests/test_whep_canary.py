"""The canary through WHEP (issue #13): no raw frame ever reaches a WHEP viewer, at start-up, after
late joins in either codec, while the detector raises and while it hangs.

The real app (``signaling.app.create_app``) on loopback; the publisher goes live over socket.io
(``go_live`` of tests/test_canary.py) with a real shipping-label photo on every frame; the detector
is the fault-injecting ``CanaryDetector``. Viewers are aiortc WHEP clients (a recvonly offer POSTed
to ``/whep/{stream_id}``), one of them offering only H.264, and every frame each decodes goes
through ``FrameCheck`` (the object's 16 px cells must be flat; the raw object's own detail must not
show). Each phase asserts that it happened: frames arrived during it and the pipeline's metrics
show the path the phase is about (full pixelations, detections, detector failures).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import aiohttp
import pytest
import socketio
from aiohttp import web
from aiortc import RTCRtpSender

from relay.settings import Settings
from tests.helpers.media import Viewer, label_scene
from tests.test_canary import (
    PUB,
    CanaryDetector,
    CheckedViewers,
    failed_since,
    go_live,
    metrics_of,
    room_of,
    start_relay,
    until,
)
from tests.test_relay_integration import FrameCheck
from tests.test_whip_whep import answerer, video_codecs

pytestmark = pytest.mark.timeout(150)

ServeApp = Callable[[web.Application], Awaitable[str]]  # types of the conftest fixtures
SioConnect = Callable[..., Awaitable[socketio.AsyncClient]]
SCENE, BOX = label_scene(640, 480)
SETTLE_S = 1.0  # frames sanitized before a fault may still be in the encoder and the network


def h264_only() -> list[Any]:  # as tests/test_h264_egress.py (whose import mypy does not pass)
    return [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]


def vp8_then_h264() -> list[Any]:  # a browser's offer
    caps = RTCRtpSender.getCapabilities("video").codecs
    return [c for c in caps if c.mimeType == "video/VP8"] + [c for c in caps if c.mimeType == "video/H264"]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class WhepAudience(CheckedViewers):
    """WHEP viewers of one stream, each checking every frame it decodes."""

    def __init__(self, http: aiohttp.ClientSession, url: str, stream_id: str, peers: list[Any]) -> None:
        self.http, self.whep_url, self.peers = http, f"{url}/whep/{stream_id}", peers
        self.viewers: list[Viewer] = []
        self.checks: list[FrameCheck] = []

    async def join(self, codecs: list[Any] | None = None) -> str:
        """A WHEP viewer offering ``codecs`` (aiortc's default: VP8 first) joins; returns the answer's
        video codecs."""
        check = FrameCheck(BOX, 640, 480, SCENE)
        viewer = Viewer(check=check, codecs=codecs)
        self.peers.append(viewer)
        out: dict[str, Any] = {}
        await viewer.connect(answerer(self.http, self.whep_url, None, out))
        self.viewers.append(viewer)
        self.checks.append(check)
        (codec,) = video_codecs(out["answer"])
        return codec


async def test_whep_canary_no_raw_frame_at_startup_late_join_fault_or_stall(
    detector: CanaryDetector,
    loopback_ice: None,
    serve_app: ServeApp,
    sio_connect: SioConnect,
    http: aiohttp.ClientSession,
    peers: list[Any],
) -> None:
    url, app = await start_relay(serve_app, detector)

    # 1. start-up: the detector hangs before its first answer; a WHEP viewer joins at once; every
    #    frame is pixelated all over
    detector.set_mode("stall")
    live = await go_live(await sio_connect(url, PUB), peers)
    audience = WhepAudience(http, url, live.stream_id, peers)
    m = metrics_of(app, live.stream_id)
    assert await audience.join() == "VP8"
    await audience.viewers[0].wait_frames(10, timeout=40)
    assert m.detections == 0 and m.full_pixelations >= 10, m.as_dict()
    audience.assert_clean()
    assert audience.detailed() == [0], "frames before the first detection were not fully pixelated"

    # 2. detection is up; a VP8 and an H.264-only WHEP viewer join late; only the object is
    #    pixelated now (the rest of the scene keeps its detail), never raw
    detector.set_mode("ok")
    await until(lambda: m.detections > 0, 20, "a first detection")
    assert await audience.join(vp8_then_h264()) == "VP8"
    assert await audience.join(h264_only()) == "H264"
    media = room_of(app, live.stream_id).media
    assert media is not None and set(media.encoders) == {"vp8", "h264"}
    await audience.more_frames(20)
    assert m.exact_frames + m.carried_frames > 0, m.as_dict()
    audience.assert_clean()
    assert all(d > 0 for d in audience.detailed()), (
        f"detection never narrowed the mosaic: {audience.detailed()}"
    )

    # 3. the detector raises: after the frames in flight are out, every frame is pixelated all over
    failures, full = m.detector_failures, m.full_pixelations
    detector.set_mode("raise")
    await until(partial(failed_since, m, failures), 10, "an injected detector exception")
    await asyncio.sleep(SETTLE_S)
    await audience.assert_fully_pixelated(12)
    assert m.detector_failures >= failures + 2 and m.full_pixelations >= full + 10, m.as_dict()
    audience.assert_clean()

    # 4. the detector recovers, then hangs longer than detector_timeout_s: once its last result
    #    is too old, every frame is pixelated all over
    detector.set_mode("ok")
    recovered = m.detections
    await until(lambda: m.detections > recovered + 2, 10, "the detector recovered")
    detector.set_mode("stall")
    await until(lambda: detector.stalled > 0, 10, "a stalled detection")
    full, detections = m.full_pixelations, m.detections
    await asyncio.sleep(Settings().detector_timeout_s + SETTLE_S)
    await audience.assert_fully_pixelated(12)
    assert m.detections <= detections + 1 and m.full_pixelations >= full + 10, m.as_dict()
    audience.assert_clean()

    # 5. no WHEP viewer ever saw the object raw; each decoded enough frames to mean it
    assert m.raw_frames == 0, m.as_dict()
    assert [v.count >= 10 for v in audience.viewers] == [True] * 3, [v.count for v in audience.viewers]
    assert [c.frames >= 10 for c in audience.checks] == [True] * 3, [c.frames for c in audience.checks]
