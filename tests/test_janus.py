"""Egress into Janus (issue #15, relay/janus.py, relay/janus_sdp.py, relay/janus_room.py), through
the real path: the test starts its own Janus 1.1.2 (tests/helpers/janus.py: streaming plugin and
HTTP transport only, API secret, HTTP on loopback) and the real app; viewers join over socket.io.

- the canary through Janus: with ``--janus-viewer-threshold 1`` the first viewer is served
  directly, the next two socket.io viewers and a WHEP player by Janus; every frame each decodes
  is checked (``FrameCheck``): at start-up (detector stalled), with detection up, and while the
  detector raises;
- the counts (the stream's ``viewer_count``, the per-stream metrics) include Janus's viewers and
  not the forwarders; Janus's own ``info`` agrees; a viewer that leaves (``leave``, WHEP
  ``DELETE``) is hung up in Janus;
- the mountpoints are destroyed when the stream ends (Janus's API says "no such mountpoint");
- a Janus that cannot be reached: viewers are served directly; Janus restarted under a live
  stream: its viewers are dropped, the next viewer is served directly, then Janus again; Janus
  frozen (SIGSTOP): a new viewer is served directly within the brokering timeout and the stream
  still ends at once;
- a real Chromium viewer page receives the stream through Janus (threshold 0; video and audio),
  the label pixelated.

Janus 1.1.2 never gathers loopback ICE candidates, so its WebRTC side (and the aiortc viewers that
talk to it) use this host's own non-loopback address: the traffic stays on the host.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import aioice
import cv2
import numpy as np
import pytest
import socketio
from aiohttp import web

from relay import janus_room
from relay.janus import JanusError, JanusSession
from relay.janus_sdp import SdpError, bridge, payload_types
from relay.room import Room
from tests.helpers import janus as janus_helper
from tests.helpers.janus import JanusProcess
from tests.helpers.media import ImageTrack, Publisher, ToneTrack, Viewer
from tests.test_canary import (
    BOX,
    PUB,
    SCENE,
    VIEW,
    Audience,
    CanaryDetector,
    call,
    failed_since,
    go_live,
    metrics_of,
    room_of,
    start_relay,
    until,
)
from tests.test_relay_integration import FrameCheck
from tests.test_whip_whep import answerer

pytestmark = pytest.mark.timeout(180)

ServeApp = Callable[[web.Application], Awaitable[str]]
SioConnect = Callable[..., Awaitable[socketio.AsyncClient]]

JANUS_OFFER = """v=0
o=- 1 1 IN IP4 192.0.2.2
s=Mountpoint 1
t=0 0
a=group:BUNDLE v a
a=fingerprint:sha-256 9F:75
a=msid-semantic: WMS *
m=video 9 UDP/TLS/RTP/SAVPF 97 98
c=IN IP4 192.0.2.2
a=sendonly
a=mid:v
a=ice-ufrag:jU
a=ice-pwd:jP
a=setup:actpass
a=rtpmap:97 VP8/90000
a=rtcp-fb:97 nack
a=rtcp-fb:97 nack pli
a=rtcp-fb:97 transport-cc
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=rtpmap:98 rtx/90000
a=fmtp:98 apt=97
a=ssrc-group:FID 11 12
a=msid:janus janusv
a=ssrc:11 cname:janus
a=ssrc:12 cname:janus
a=candidate:1 1 udp 2015363327 192.0.2.2 31174 typ host
a=end-of-candidates
m=audio 9 UDP/TLS/RTP/SAVPF 96
a=sendonly
a=mid:a
a=rtpmap:96 opus/48000/2
a=ssrc:21 cname:janus
"""

VIEWER_OFFER = """v=0
o=- 2 1 IN IP4 0.0.0.0
s=-
t=0 0
a=group:BUNDLE 0 1 2
m=audio 9 UDP/TLS/RTP/SAVPF 96 0
a=mid:0
a=recvonly
a=ice-ufrag:vU
a=ice-pwd:vP
a=fingerprint:sha-256 AA:BB
a=setup:actpass
a=rtpmap:96 opus/48000/2
a=candidate:c 1 udp 2130706431 127.0.0.1 5000 typ host
m=video 9 UDP/TLS/RTP/SAVPF 97 99
a=mid:1
a=recvonly
a=rtpmap:97 VP8/90000
a=rtcp-fb:97 nack pli
a=rtcp-fb:97 goog-remb
a=rtpmap:99 H264/90000
m=application 9 UDP/DTLS/SCTP webrtc-datachannel
a=mid:2
"""


def test_bridge_answers_each_offer_with_the_other_sides_transport() -> None:
    assert payload_types(VIEWER_OFFER) == (97, 96)
    to_viewer, to_janus = bridge(VIEWER_OFFER, JANUS_OFFER)
    # the viewer's answer: its own m-lines, mids and payload types; Janus's ICE, DTLS, SSRC
    lines = to_viewer.splitlines()
    assert [x for x in lines if x.startswith("m=")] == [
        "m=audio 9 UDP/TLS/RTP/SAVPF 96",
        "m=video 9 UDP/TLS/RTP/SAVPF 97",
        "m=application 0 UDP/DTLS/SCTP webrtc-datachannel",  # rejected
    ]
    assert "a=group:BUNDLE 0 1" in lines and "a=ice-ufrag:jU" in lines and "a=setup:passive" in lines
    assert "a=fingerprint:sha-256 9F:75" in lines and "a=ssrc:11 cname:janus" in lines
    assert "a=ssrc:12 cname:janus" not in lines  # no RTX
    assert "a=rtcp-fb:97 nack pli" in lines and not any("goog-remb" in x or "extmap" in x for x in lines)
    assert "a=candidate:1 1 udp 2015363327 192.0.2.2 31174 typ host" in lines
    # Janus's answer: its m-lines and mids, the viewer's ICE, DTLS and candidates, DTLS client
    lines = to_janus.splitlines()
    assert [x for x in lines if x.startswith(("m=", "a=mid"))] == [
        "m=video 9 UDP/TLS/RTP/SAVPF 97",
        "a=mid:v",
        "m=audio 9 UDP/TLS/RTP/SAVPF 96",
        "a=mid:a",
    ]
    assert "a=ice-ufrag:vU" in lines and "a=setup:active" in lines and "a=recvonly" in lines
    assert "a=fingerprint:sha-256 AA:BB" in lines
    assert "a=candidate:c 1 udp 2130706431 127.0.0.1 5000 typ host" in lines
    assert "a=rtcp-fb:97 transport-cc" not in lines and "a=rtpmap:98 rtx/90000" not in lines
    # the payload types must match: the mountpoint carries the viewer's
    with pytest.raises(SdpError):
        bridge(VIEWER_OFFER.replace("97", "100"), JANUS_OFFER)
    assert payload_types(VIEWER_OFFER.replace("VP8", "VP9")) is None


# --- a private Janus ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def janus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JanusProcess]:
    reason = janus_helper.missing_reason()
    if reason is not None:
        pytest.skip(reason)
    j = janus_helper.start(tmp_path_factory.mktemp("janus"))
    yield j
    j.stop()


async def janus_info(j: JanusProcess, mountpoint: int) -> dict[str, Any] | None:
    """The mountpoint's info from a fresh Janus session (None: Janus has no such mountpoint)."""
    async with aiohttp.ClientSession() as http:
        session = await JanusSession.open(j.url, j.api_secret, http)
        try:
            handle = await session.attach()
            return await handle.info(mountpoint)
        except JanusError as exc:
            assert "No such mountpoint" in str(exc), exc
            return None
        finally:
            await session.close()


@contextmanager
def host_ice(janus_address: str) -> Iterator[None]:
    """aiortc peers gather 127.0.0.1 and the host address Janus's ICE uses (Janus 1.1.2 gathers no
    loopback candidate, and a 127.0.0.1 peer does not reach it): both stay on this host."""
    original = aioice.ice.get_host_addresses
    addresses = ["127.0.0.1", janus_address]

    def host_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return addresses if use_ipv4 else []

    aioice.ice.get_host_addresses = host_only
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


@pytest.fixture
def janus_ice(janus: JanusProcess) -> Iterator[None]:
    with host_ice(janus.ice_address):
        yield


def janus_of(room: Room) -> Any:
    assert room.janus is not None
    return room.janus


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_canary_through_janus_counts_and_mountpoint_life(
    janus: JanusProcess,
    detector: CanaryDetector,
    janus_ice: None,
    serve_app: ServeApp,
    sio_connect: SioConnect,
    peers: list[Any],
    http: aiohttp.ClientSession,
) -> None:
    url, app = await start_relay(
        serve_app,
        detector,
        janus_url=janus.url,
        janus_api_secret=janus.api_secret,
        janus_viewer_threshold=1,
    )
    detector.set_mode("stall")  # start-up: no detection yet, every frame pixelated all over
    pub = await sio_connect(url, PUB)
    live = await go_live(pub, peers)
    room = room_of(app, live.stream_id)
    sock = await sio_connect(url, VIEW)
    audience = Audience(sock, live.stream_id, peers)
    await audience.join()  # direct (threshold 1)
    await audience.join()  # Janus
    await audience.join()  # Janus
    check = FrameCheck(BOX, 640, 480, SCENE)  # and a WHEP player: Janus too
    out: dict[str, Any] = {}
    player = Viewer(check=check)
    peers.append(player)
    await player.connect(answerer(http, f"{url}/whep/{live.stream_id}", None, out))
    audience.viewers.append(player)  # checked with the others
    audience.checks.append(check)
    whep_location = out["location"]
    rj = janus_of(room)
    assert (len(room._viewers), rj.viewer_count) == (1, 3)
    # the publish-time mountpoint (Chromium's VP8 96) and one for aiortc's VP8 97
    assert list(rj.mountpoints) == [(96, None), (97, None)]  # (the publisher sends no audio)
    mountpoints = list(rj.mountpoints.values())
    mountpoint = rj.mountpoints[(97, None)]
    await audience.more_frames(10, within=60)
    audience.assert_clean()
    assert audience.detailed() == [0, 0, 0, 0], "frames before the first detection were not fully pixelated"
    m = metrics_of(app, live.stream_id)
    assert m.detections == 0 and m.full_pixelations >= 10, m.as_dict()

    # detection up: only the object is pixelated, for the direct viewer and Janus's
    detector.set_mode("ok")
    await until(lambda: m.detections > 0, 20, "a first detection")
    await audience.more_frames(20, within=60)
    audience.assert_clean()
    assert all(d > 0 for d in audience.detailed()), audience.detailed()

    # the detector raises: every viewer's frames are pixelated all over (fail closed through Janus)
    failures = m.detector_failures
    detector.set_mode("raise")
    await until(lambda: failed_since(m, failures), 10, "an injected detector exception")
    await asyncio.sleep(1.0)
    await audience.assert_fully_pixelated(12)
    audience.assert_clean()
    detector.set_mode("ok")
    assert m.raw_frames == 0, m.as_dict()

    # counts: 4 viewers everywhere (the forwarders are not viewers); Janus agrees it has 3
    assert room.info.viewer_count == 4 and room.metrics.viewers == 4
    info = await janus_info(janus, mountpoint)
    assert info is not None and info["viewers"] == 3, info
    # Janus asked for keyframes itself (a PLI to the mountpoint's RTCP port when a viewer starts,
    # at most one a second), and the forwarders sent the encoder's packets from a keyframe on
    video = [f for f in rj.forwards if f.kind == "video"]
    assert [f.stats.first_is_keyframe for f in video] == [True, True]
    assert rj.forwards_of(mountpoint)[0].stats.keyframe_requests >= 1, [f.stats for f in video]
    listed = await call(sock, "list_streams", {}, VIEW)
    assert [s["viewer_count"] for s in listed["streams"]] == [4]
    # a Janus viewer leaves over socket.io, the WHEP one with DELETE: hung up in Janus, counted down
    janus_viewer = rj.viewer_ids[0]
    await call(sock, "leave", {"stream_id": live.stream_id, "viewer_id": janus_viewer}, VIEW)
    async with http.delete(url + whep_location) as r:
        assert r.status == 200
    assert room.info.viewer_count == 2 and room.metrics.viewers == 2 and rj.viewer_count == 1
    for _ in range(50):
        info = await janus_info(janus, mountpoint)
        if info is not None and info["viewers"] == 1:
            break
        await asyncio.sleep(0.1)
    assert info is not None and info["viewers"] == 1, info

    # the stream ends: Janus's mountpoints are destroyed, its viewers hung up
    await call(pub, "stop_stream", {"stream_id": live.stream_id, "publish_key": live.publish_key}, PUB)
    await asyncio.wait_for(room.closed.wait(), 20)
    assert [await janus_info(janus, m) for m in mountpoints] == [None, None]
    assert rj.viewer_count == 0 and rj.forward_count == 0


async def test_unreachable_janus_viewers_are_served_directly(
    detector: CanaryDetector,
    loopback_ice: None,
    serve_app: ServeApp,
    sio_connect: SioConnect,
    peers: list[Any],
) -> None:
    closed_port = janus_helper.free_port()  # nothing listens there
    url, app = await start_relay(
        serve_app, detector, janus_url=f"http://127.0.0.1:{closed_port}/janus", janus_viewer_threshold=0
    )
    live = await go_live(await sio_connect(url, PUB), peers)
    room = room_of(app, live.stream_id)
    audience = Audience(await sio_connect(url, VIEW), live.stream_id, peers)
    viewer = await audience.join()
    await viewer.wait_frames(10, timeout=40)
    audience.assert_clean()
    rj = janus_of(room)
    assert (len(room._viewers), rj.viewer_count, rj.mountpoints) == (1, 0, {})
    assert room.info.viewer_count == 1 and room.metrics.viewers == 1


# --- a real Chromium viewer through Janus -------------------------------------------------------

CHROMIUM = shutil.which("chromium")


@pytest.mark.browser
async def test_chromium_viewer_page_through_janus(
    janus: JanusProcess,
    detector: CanaryDetector,
    janus_ice: None,
    serve_app: ServeApp,
    sio_connect: SioConnect,
    peers: list[Any],
) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")

    url, app = await start_relay(
        serve_app, detector, janus_url=janus.url, janus_api_secret=janus.api_secret, janus_viewer_threshold=0
    )
    stream_id = await publish_with_audio(await sio_connect(url, PUB), peers)
    room = room_of(app, stream_id)
    await until(lambda: bool(janus_of(room).mountpoints), 20, "the stream's mountpoint")
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            await page.add_init_script(KEEP_PCS_JS)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(url + "/")
            card = page.locator(f'li.stream-card[data-stream-id="{stream_id}"]')
            await card.wait_for(timeout=15_000)
            await card.click()
            await page.wait_for_function(
                "() => document.querySelector('#remote').getVideoPlaybackQuality().totalVideoFrames >= 45",
                timeout=60_000,
            )
            rj = janus_of(room)
            assert (len(room._viewers), rj.viewer_count) == (0, 1), "the page was not served by Janus"
            assert list(rj.mountpoints) == [
                (96, 111)
            ]  # Chromium's payload types: the publish-time mountpoint
            stds = [label_cell_std(await snapshot_gray(page, "#remote")) for _ in range(5)]
            assert max(stds) < 4.0, f"the label is not pixelated in the Janus viewer's picture: {stds}"
            audio = await page.evaluate(AUDIO_PACKETS_JS)
            assert audio > 50, f"the Janus viewer received {audio} audio packets"
            assert not errors, errors
        finally:
            await browser.close()


KEEP_PCS_JS = """(() => {
  const Original = window.RTCPeerConnection;
  window.__pcs = [];
  window.RTCPeerConnection = function (...args) {
    const pc = new Original(...args);
    window.__pcs.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Original.prototype;
})();"""

AUDIO_PACKETS_JS = """async () => {
  let n = 0;
  for (const pc of window.__pcs) {
    (await pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio") n += r.packetsReceived;
    });
  }
  return n;
}"""


async def publish_with_audio(sock: socketio.AsyncClient, peers: list[Any]) -> str:
    """A stream published from an aiortc peer with the label scene and a tone; its id."""
    created = await call(sock, "create_stream", {"title": "through janus", "category": "test"}, PUB)
    stream_id, key = created["stream_id"], created["publish_key"]
    publisher = Publisher(ImageTrack(SCENE, fps=15), ToneTrack())
    peers.append(publisher)

    async def answer(sdp: str, type_: str) -> dict[str, str]:
        msg = {"stream_id": stream_id, "publish_key": key, "sdp": sdp, "type": type_}
        ack = await call(sock, "publish", msg, PUB)
        assert ack["ok"], ack
        return ack

    await publisher.connect(answer)
    return str(stream_id)


CHROMIUM_FLAGS = [  # as tests/test_browser.py (../shared/notes/browser-e2e.md)
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
]

SNAPSHOT_JS = """(video) => {
  const c = document.createElement("canvas");
  c.width = video.videoWidth; c.height = video.videoHeight;
  c.getContext("2d").drawImage(video, 0, 0);
  return c.toDataURL("image/png");
}"""


async def snapshot_gray(page: Any, selector: str) -> np.ndarray:
    url = await page.eval_on_selector(selector, SNAPSHOT_JS)
    png = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
    gray = cv2.imdecode(png, cv2.IMREAD_GRAYSCALE)
    assert gray is not None and gray.size > 0, "the viewer's video could not be captured"
    return np.asarray(gray)


def label_cell_std(gray: np.ndarray) -> float:
    """Median std of the 16 px cells inside the label box (flat: pixelated), 3 px borders left out."""
    assert gray.shape == (480, 640), gray.shape
    x1, y1, x2, y2 = (int(v) for v in np.asarray(BOX).ravel()[:4])
    stds = [
        float(gray[y + 3 : y + 13, x + 3 : x + 13].std())
        for y in range(-(-y1 // 16) * 16, (y2 // 16) * 16, 16)
        for x in range(-(-x1 // 16) * 16, (x2 // 16) * 16, 16)
    ]
    return float(np.median(stds))


async def test_janus_restart_viewers_go_direct_then_back_to_a_new_mountpoint(
    tmp_path: Path,
    detector: CanaryDetector,
    serve_app: ServeApp,
    sio_connect: SioConnect,
    peers: list[Any],
) -> None:
    reason = janus_helper.missing_reason()
    if reason is not None:
        pytest.skip(reason)
    port = janus_helper.free_port()
    j = janus_helper.start(tmp_path / "a", http_port=port)
    try:
        with host_ice(j.ice_address):
            url, app = await start_relay(
                serve_app, detector, janus_url=j.url, janus_api_secret=j.api_secret, janus_viewer_threshold=0
            )
            live = await go_live(await sio_connect(url, PUB), peers)
            room = room_of(app, live.stream_id)
            rj = janus_of(room)
            audience = Audience(await sio_connect(url, VIEW), live.stream_id, peers)
            await (await audience.join()).wait_frames(5, timeout=40)
            first = rj.mountpoints[(97, None)]
            assert rj.viewer_count == 1
            j.stop()  # Janus goes away with its mountpoints and its viewer: Janus's viewer is lost
            j = janus_helper.start(tmp_path / "b", http_port=port)
            await until(lambda: rj.viewer_count == 0, 20, "the lost Janus viewer dropped")
            # the next viewer finds the mountpoint gone: served directly, the profile forgotten
            await (await audience.join()).wait_frames(5, timeout=40)
            assert len(room._viewers) == 1 and (97, None) not in rj.mountpoints
            await asyncio.sleep(janus_room.RETRY_AFTER_S + 0.5)
            # then Janus again, on a new mountpoint
            await (await audience.join()).wait_frames(5, timeout=40)
            assert rj.viewer_count == 1 and rj.mountpoints[(97, None)] != first
            audience.assert_clean()
            assert room.info.viewer_count == 2
    finally:
        j.stop()


async def test_frozen_janus_holds_up_neither_new_viewers_nor_the_stream_end(
    tmp_path: Path,
    detector: CanaryDetector,
    serve_app: ServeApp,
    sio_connect: SioConnect,
    peers: list[Any],
) -> None:
    reason = janus_helper.missing_reason()
    if reason is not None:
        pytest.skip(reason)
    j = janus_helper.start(tmp_path)
    try:
        with host_ice(j.ice_address):
            url, app = await start_relay(
                serve_app, detector, janus_url=j.url, janus_api_secret=j.api_secret, janus_viewer_threshold=0
            )
            pub = await sio_connect(url, PUB)
            live = await go_live(pub, peers)
            room = room_of(app, live.stream_id)
            rj = janus_of(room)
            audience = Audience(await sio_connect(url, VIEW), live.stream_id, peers)
            await (await audience.join()).wait_frames(5, timeout=40)
            assert rj.viewer_count == 1
            os.kill(j.pid, signal.SIGSTOP)  # Janus hangs: its HTTP API accepts and never answers
            try:
                t0 = time.monotonic()
                await (await audience.join()).wait_frames(5, timeout=40)
                joined_s = time.monotonic() - t0
                assert len(room._viewers) == 1 and rj.viewer_count == 1  # served directly
                assert joined_s < janus_room.START_TIMEOUT_S + 6, joined_s
                t0 = time.monotonic()
                await call(
                    pub, "stop_stream", {"stream_id": live.stream_id, "publish_key": live.publish_key}, PUB
                )
                await asyncio.wait_for(room.closed.wait(), 20)
                assert time.monotonic() - t0 < 6, "the stream's end waited for Janus"
                assert rj.forward_count == 0 and rj.viewer_count == 0
                audience.assert_clean()
            finally:
                os.kill(j.pid, signal.SIGCONT)
    finally:
        j.stop()
