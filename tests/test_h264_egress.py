"""H.264 egress (issue #13): a viewer gets the sanitized video in the codec its offer prefers; the
room encodes once per codec that its viewers need (relay/media.py, relay/fanout.py,
relay/video_codecs.py, relay/egress_codecs.py).

Real aiortc peers on loopback decode what they get; every frame of the Room-API viewers goes
through the pixelation check of tests/test_relay_integration.py (a real shipping-label photo whose
16 px cells must be flat). The detector is a fake that returns the scene's label box, or the
fault-injecting canary detector (stalled: nothing detected yet, so every frame must be fully
pixelated).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import aiohttp
import av
import pytest
import socketio
from aiohttp import web
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc import sdp as aiortc_sdp
from aiortc.codecs.h264 import H264Encoder

from relay.egress_codecs import viewer_video_codec
from relay.errors import RelayError
from relay.fanout import RoomEncoder
from relay.room import Room, RoomRegistry, live_peer_connection_count
from relay.settings import Settings
from relay.video_codecs import h264_level
from signaling.app import create_app
from tests.helpers.media import NO_ICE_SERVERS, FakeDetector, ImageTrack, Publisher, Viewer, label_scene
from tests.test_canary import FPS, PUB, VIEW, CanaryDetector, go_live, metrics_of, room_of, until
from tests.test_relay_integration import FrameCheck
from tests.test_whip_whep import answerer, assert_pixelated, create, prefer, video_codecs

pytestmark = pytest.mark.timeout(150)

ServeApp = Callable[[web.Application], Awaitable[str]]  # types of the conftest fixtures
SioConnect = Callable[..., Awaitable[socketio.AsyncClient]]
SCENE, BOX = label_scene(640, 480)


def h264_only() -> list[Any]:
    return [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]


def vp8_then_h264() -> list[Any]:
    caps = RTCRtpSender.getCapabilities("video").codecs
    return [c for c in caps if c.mimeType == "video/VP8"] + [c for c in caps if c.mimeType == "video/H264"]


def h264_then_vp8() -> list[Any]:
    caps = RTCRtpSender.getCapabilities("video").codecs
    return [c for c in caps if c.mimeType == "video/H264"] + [c for c in caps if c.mimeType == "video/VP8"]


async def offer_of(codecs: list[Any], edit: Callable[[str], str] = str) -> aiortc_sdp.SessionDescription:
    pc = RTCPeerConnection(NO_ICE_SERVERS)
    try:
        pc.addTransceiver("video", direction="recvonly").setCodecPreferences(codecs)
        offer = await pc.createOffer()
        return aiortc_sdp.SessionDescription.parse(edit(offer.sdp))
    finally:
        await pc.close()


def encoder_threads(room: Room) -> list[str]:
    prefix = f"room-{room.stream_id}-encoder-"
    return sorted(t.name for t in threading.enumerate() if t.name.startswith(prefix))


# --- pure parts -----------------------------------------------------------------------------------


async def test_codec_choice_follows_the_offer_order() -> None:
    assert viewer_video_codec(await offer_of(vp8_then_h264())) == "vp8"  # browsers: VP8 first
    assert viewer_video_codec(await offer_of(h264_then_vp8())) == "h264"  # Safari: H.264 first
    assert viewer_video_codec(await offer_of(h264_only())) == "h264"
    not_cb = [c for c in h264_only() if c.parameters.get("profile-level-id") != "42e01f"]  # 42001f, 4d001f
    mode0 = partial(re.sub, "packetization-mode=1", "packetization-mode=0")
    vp9 = partial(re.sub, "VP8/90000", "VP9/90000")
    for codecs, edit in ((not_cb, str), (h264_only(), mode0), (vp8_then_h264()[:1], vp9)):
        with pytest.raises(RelayError) as info:
            viewer_video_codec(await offer_of(codecs, edit))
        assert info.value.code == "unsupported_codec"
    assert h264_level(640, 480, 30) == "3.1" and h264_level(1280, 720, 30) == "3.1"
    assert h264_level(1280, 720, 60) == "3.2" and h264_level(1920, 1080, 30) == "4.0"


def nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B packet, split as aiortc's sender splits them."""
    return list(H264Encoder._split_bitstream(data))


async def test_h264_encoder_output_is_annexb_constrained_baseline_without_b_frames() -> None:
    """What the room's H.264 encoder hands its viewers: Annex-B (what aiortc's ``pack`` splits),
    SPS/PPS before every keyframe, constrained baseline, keyframes on request, no B-frames (decode
    order = display order), at the fixed bitrate, decodable."""
    settings = Settings()
    enc = RoomEncoder(settings, codec="h264", name="t")
    enc.start()
    track = enc.add_viewer()  # gated to a keyframe; joining asks for one
    source = ImageTrack(SCENE, fps=30)
    packets: list[av.Packet] = []
    try:
        for n in range(75):
            enc.submit(await source.recv())  # paced at 30 fps
            if n == 40:
                enc.request_keyframe()
            while track._queue:
                packets.append(await track.recv())
        m = enc.metrics
        await until(lambda: m.frames + m.dropped_frames + m.encode_errors >= 75, 20, "75 frames")
        await asyncio.sleep(0.1)
        while track._queue:
            packets.append(await track.recv())
    finally:
        await enc.stop()
    assert m.frames > 60 and m.encode_errors == 0 and len(packets) == m.packets, m
    assert packets[0].is_keyframe and m.forced_keyframes == 2, m
    keyframes = [i for i, p in enumerate(packets) if p.is_keyframe]
    assert len(keyframes) == 2 and keyframes[1] > 30, keyframes  # the join's, then the request's
    for i in keyframes:
        data = bytes(packets[i])
        assert data.startswith(b"\x00\x00\x00\x01"), data[:8].hex()  # Annex-B start code
        nals = nal_units(data)
        types = [n[0] & 0x1F for n in nals]
        assert types[:2] == [7, 8] and types[-1] == 5, types  # SPS, PPS, (SEI,) IDR slice
        sps = nals[0]
        assert sps[1] == 66 and sps[2] & 0x40, sps[:4].hex()  # baseline, constraint_set1: constrained
        assert sps[3] == 31  # level 3.1 for 640x480 at 30 fps
    pts = [p.pts for p in packets]
    assert None not in pts
    assert pts == sorted(p or 0 for p in pts) and len(set(pts)) == len(pts)
    assert all(p.dts is None or p.dts == p.pts for p in packets)  # no reordering: no B-frames
    decoder = av.CodecContext.create("h264", "r")
    frames = await asyncio.to_thread(lambda: [f for p in packets for f in decoder.decode(p)])  # off the loop
    assert len(frames) == len(packets)
    PictureType = av.video.frame.PictureType
    assert {PictureType(f.pict_type) for f in frames} <= {PictureType.I, PictureType.P}
    assert decoder.profile == "Constrained Baseline"
    assert (frames[-1].width, frames[-1].height) == (640, 480)
    kbps = sum(p.size for p in packets[5:]) * 8 / ((len(packets) - 5) / 30) / 1000
    assert kbps < settings.video_bitrate / 1000 * 1.3, kbps  # a fixed bitrate, not unbounded quality
    payloads, _ = H264Encoder().pack(packets[0])  # what aiortc's sender does with the shared packets
    assert len(payloads) > 1 and all(len(p) <= 1300 for p in payloads)


# --- the room: one encode per codec ------------------------------------------------------------


@pytest.fixture
async def registry(loopback_ice: None) -> AsyncIterator[RoomRegistry]:
    reg = RoomRegistry(dataclasses.replace(Settings(), max_viewers_per_stream=10), FakeDetector(BOX))
    yield reg
    await reg.close_all()
    assert live_peer_connection_count() == 0


class FirstKeyCheck(FrameCheck):
    """The pixelation check, and whether the first decoded frame was a keyframe (H.264: an IDR)."""

    first_key: bool | None = None

    def __call__(self, frame: av.VideoFrame, lossy: bool = False) -> None:
        if self.first_key is None:
            self.first_key = bool(frame.key_frame)
        super().__call__(frame, lossy)


async def join(room: Room, viewer_id: str, codecs: list[Any] | None = None) -> tuple[Viewer, FirstKeyCheck]:
    check = FirstKeyCheck(BOX, 640, 480, SCENE)
    viewer = Viewer(check=check, codecs=codecs)
    answers: list[str] = []

    async def answer(sdp: str, type_: str) -> dict[str, str]:
        reply = await room.add_viewer(viewer_id, sdp, type_)
        answers.append(reply["sdp"])
        return reply

    await viewer.connect(answer)
    assert video_codecs(answers[0]) == ({"H264"} if codecs == h264_only() else {"VP8"}), answers[0]
    return viewer, check


def assert_clean(viewer: Viewer, check: FrameCheck) -> None:
    assert not viewer.errors, viewer.errors[0]
    assert check.frames >= viewer.count - 1 and viewer.count > 0


async def pli(viewer: Viewer) -> None:
    """A PLI from the viewer's video receiver, as its decoder sends when it lost a keyframe."""
    receiver = next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video")
    ssrc = receiver.getSynchronizationSources()[0].source
    await receiver._send_rtcp_pli(ssrc)


async def test_one_encoder_per_codec_whatever_the_number_of_viewers(registry: RoomRegistry) -> None:
    room, key = registry.create("parcels", "test")
    publisher = Publisher(ImageTrack(SCENE, fps=FPS))
    viewers: dict[str, tuple[Viewer, FirstKeyCheck]] = {}
    try:
        await publisher.connect(lambda sdp, t: room.publish(key, sdp, t))
        assert room.media is not None and set(room.media.encoders) == {"vp8"}
        for i in range(3):
            viewers[f"v{i}"] = await join(room, f"v{i}")
        assert set(room.media.encoders) == {"vp8"}  # VP8 viewers only: no H.264 encode
        for i in range(3):
            viewers[f"h{i}"] = await join(room, f"h{i}", h264_only())
        encoders = room.media.encoders
        assert set(encoders) == {"vp8", "h264"} and encoders["h264"].viewer_count == 3
        assert encoders["vp8"].viewer_count == 3 and room.info.viewer_count == 6
        await asyncio.gather(*(v.wait_frames(15, timeout=60) for v, _ in viewers.values()))
        threads = encoder_threads(room)
        assert [t.rsplit("-", 1)[1].split("_")[0] for t in threads] == ["h264", "vp8"], threads
        for name, (v, c) in viewers.items():
            assert_clean(v, c)
            # an H.264 viewer decodes from a keyframe on (ffmpeg's VP8 decoder does not flag keyframes)
            assert c.first_key or name.startswith("v"), name
        await assert_pixelated(viewers["h0"][0])

        # PLI/FIR go to the encoder of the viewer's codec
        h264, vp8 = encoders["h264"], encoders["vp8"]
        before = (h264.metrics.keyframe_requests, vp8.metrics.keyframe_requests)
        await pli(viewers["h1"][0])
        await until(lambda: h264.metrics.keyframe_requests > before[0], 10, "a PLI at the H.264 encoder")
        await pli(viewers["v1"][0])
        await until(lambda: vp8.metrics.keyframe_requests > before[1], 10, "a PLI at the VP8 encoder")

        # the H.264 encode stops with its last viewer; VP8 viewers go on
        for name in ("h0", "h1"):
            await room.remove_viewer(name)
        assert set(room.media.encoders) == {"vp8", "h264"} and not h264.ended.is_set()
        await room.remove_viewer("h2")
        assert set(room.media.encoders) == {"vp8"} and h264.ended.is_set()
        await until(
            lambda: [t for t in encoder_threads(room) if "h264" in t] == [], 10, "the H.264 thread ends"
        )
        frames_then = h264.metrics.frames
        await asyncio.gather(
            *(viewers[n][0].wait_frames(viewers[n][0].count + 10, timeout=30) for n in ("v0", "v2"))
        )
        assert h264.metrics.frames == frames_then  # stopped: encodes nothing more

        # a late H.264 joiner starts a new H.264 encode and decodes from its first (key)frame; a
        # second one joins the running encode, gated to its next keyframe
        for name in ("late1", "late2"):
            viewers[name] = await join(room, name, h264_only())
            await viewers[name][0].wait_frames(10, timeout=30)
            assert viewers[name][1].first_key
            assert_clean(*viewers[name])
        assert set(room.media.encoders) == {"vp8", "h264"} and room.media.encoders["h264"] is not h264
        assert room.media.encoders["h264"].viewer_count == 2
        await assert_pixelated(viewers["late2"][0])
        for v, c in viewers.values():
            assert_clean(v, c)
        assert room.sanitizer is not None and room.sanitizer.metrics.raw_frames == 0
    finally:
        for v, _ in viewers.values():
            await v.close()
        await publisher.close()


async def test_an_h264_encoder_that_keeps_failing_ends_the_stream(registry: RoomRegistry) -> None:
    """The error rule is the VP8 one: 3 failed encodes in a row end the stream (viewers are told by
    their tracks ending), never a stream that silently stops for H.264 viewers."""
    room, key = registry.create("parcels", "test")
    publisher = Publisher(ImageTrack(SCENE, fps=FPS))
    viewer: Viewer | None = None
    try:
        await publisher.connect(lambda sdp, t: room.publish(key, sdp, t))
        viewer, check = await join(room, "h", h264_only())
        await viewer.wait_frames(5, timeout=30)
        assert room.media is not None
        h264 = room.media.encoders["h264"]

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("injected encoder failure")

        h264._encode = broken  # type: ignore[method-assign]
        await asyncio.wait_for(room.closed.wait(), 15)
        assert h264.failed and h264.metrics.encode_errors == 3
        await asyncio.wait_for(viewer.ended.wait(), 10)
        assert_clean(viewer, check)
    finally:
        if viewer is not None:
            await viewer.close()
        await publisher.close()


# --- WHEP: a player that decodes only H.264 -----------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_whep_viewer_offering_only_h264_gets_pixelated_h264(
    loopback_ice: None, serve_app: ServeApp, http: aiohttp.ClientSession, peers: list[Any]
) -> None:
    url = await serve_app(create_app(Settings(), FakeDetector(BOX)))
    created = await create(http, url)
    publisher = Publisher(ImageTrack(SCENE, fps=FPS))
    peers.append(publisher)
    prefer(publisher.pc, "video", "video/VP8")
    await publisher.connect(answerer(http, created["whip_url"], created["publish_key"], {}))

    viewer = Viewer(codecs=h264_only())
    peers.append(viewer)
    whep: dict[str, Any] = {}
    await viewer.connect(answerer(http, created["whep_url"], None, whep))
    assert video_codecs(whep["answer"]) == {"H264"}
    assert "profile-level-id=42e01f" in whep["answer"] and "packetization-mode=1" in whep["answer"]
    await viewer.wait_frames(40, timeout=60)
    await assert_pixelated(viewer)

    browser = Viewer(codecs=vp8_then_h264())  # a browser's offer: VP8 first, gets VP8
    peers.append(browser)
    out: dict[str, Any] = {}
    await browser.connect(answerer(http, created["whep_url"], None, out))
    assert video_codecs(out["answer"]) == {"VP8"}
    await browser.wait_frames(20, timeout=60)
    await assert_pixelated(browser)

    async with http.delete(url + whep["location"]) as r:  # the last H.264 viewer leaves
        assert r.status == 200
    await asyncio.wait_for(viewer.ended.wait(), 10)
    async with http.delete(url + out["location"]) as r:
        assert r.status == 200


# --- canary: no raw frame at start-up for an H.264 viewer ---------------------------------------


async def test_canary_h264_viewer_at_startup_gets_no_raw_frame(
    detector: CanaryDetector,
    loopback_ice: None,
    serve_app: ServeApp,
    sio_connect: SioConnect,
    peers: list[Any],
) -> None:
    """The detector has not answered yet when an H.264 viewer joins over socket.io: every frame it
    decodes is pixelated all over; once detection is up, only the label is, and never a raw frame."""
    app = create_app(Settings(), detector)
    url = await serve_app(app)
    detector.set_mode("stall")
    live = await go_live(await sio_connect(url, PUB), peers)
    sock = await sio_connect(url, VIEW)
    check = FrameCheck(BOX, 640, 480, SCENE)
    viewer = Viewer(check=check, codecs=h264_only())
    peers.append(viewer)

    async def answer(sdp: str, type_: str) -> dict[str, str]:
        ack = await sock.call(
            "view", {"stream_id": live.stream_id, "sdp": sdp, "type": type_}, namespace=VIEW, timeout=20
        )
        assert isinstance(ack, dict) and ack["ok"], ack
        return ack

    await viewer.connect(answer)
    m = metrics_of(app, live.stream_id)
    await viewer.wait_frames(10, timeout=60)
    media = room_of(app, live.stream_id).media
    assert media is not None and set(media.encoders) == {"vp8", "h264"}
    assert m.detections == 0 and m.full_pixelations >= 10, m.as_dict()
    assert not viewer.errors, viewer.errors[0]
    assert check.detailed == 0, "frames before the first detection were not fully pixelated"

    detector.set_mode("ok")
    await until(lambda: m.detections > 0, 20, "a first detection")
    await viewer.wait_frames(viewer.count + 20, timeout=60)
    assert not viewer.errors, viewer.errors[0]
    assert check.frames >= viewer.count - 1 and check.detailed > 0  # the rest of the scene came back
    assert m.raw_frames == 0
