"""relay/room.py: registry, keys, limits, errors, leaks, close."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from functools import partial

import pytest
from aiortc import RTCPeerConnection, RTCRtpSender

from relay.errors import BadRequest, Conflict, Forbidden, LimitExceeded, NotFound, RelayError
from relay.room import Room, RoomRegistry, live_peer_connection_count
from relay.settings import Settings
from relay.tasks import live_task_count
from tests.helpers.media import (
    NO_ICE_SERVERS,
    FakeDetector,
    ImageTrack,
    Publisher,
    Viewer,
    text_scene,
)

pytestmark = pytest.mark.timeout(60)

BOX = (100, 100, 300, 200)


@pytest.fixture
async def registry(loopback_ice: None) -> AsyncIterator[RoomRegistry]:
    reg = RoomRegistry(
        dataclasses.replace(Settings(), max_streams=3, max_viewers_per_stream=2), FakeDetector()
    )
    events: list[tuple[str, str]] = []

    async def on_event(name: str, room: Room) -> None:
        events.append((name, room.stream_id))

    reg.on_event = on_event
    reg.events = events  # type: ignore[attr-defined]
    yield reg
    await reg.close_all()
    assert reg.peer_connection_count == 0


async def offer_sdp(video: bool = True, codecs: str = "vp8") -> str:
    pc = RTCPeerConnection(NO_ICE_SERVERS)
    try:
        if video:
            t = pc.addTransceiver("video", direction="sendonly")
            if codecs == "h264":
                t.setCodecPreferences(
                    [
                        c
                        for c in RTCRtpSender.getCapabilities("video").codecs
                        if c.mimeType in ("video/H264", "video/rtx")
                    ]
                )
        else:
            pc.addTransceiver("audio", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


def test_create_ids_keys_list(registry: RoomRegistry) -> None:
    r1, k1 = registry.create("a", "cat")
    r2, k2 = registry.create("b", "cat", private=True)
    assert r1.stream_id != r2.stream_id and len(r1.stream_id) >= 16 and len(k1) >= 40 and k1 != k2
    assert registry.get(r1.stream_id) is r1
    with pytest.raises(NotFound):
        registry.get("nope")
    assert registry.list() == []  # not live yet
    r1.check_key(k1)
    for bad in (k2, "", k1[:-1], None):
        with pytest.raises(Forbidden):
            r1.check_key(bad)  # type: ignore[arg-type]
    registry.create("c", "cat")
    with pytest.raises(LimitExceeded):
        registry.create("d", "cat")
    assert r1.info.to_dict()["stream_id"] == r1.stream_id


async def test_bad_offers_are_refused_without_leaks(registry: RoomRegistry) -> None:
    room, key = registry.create("t", "c")
    base_pcs = registry.peer_connection_count
    for sdp, type_, exc in [
        ("garbage", "offer", BadRequest),
        ("", "offer", BadRequest),
        (await offer_sdp(), "answer", BadRequest),
        ("v=0\r\n" + "a=x\r\n" * 10000, "offer", BadRequest),  # over max_sdp_bytes
        (await offer_sdp(video=False), "offer", BadRequest),
    ]:
        with pytest.raises(exc):
            await room.publish(key, sdp, type_)
    # publishers may send VP8 or H.264 in packetization-mode 1 (relay/ingest_codecs.py); not mode 0
    with pytest.raises(RelayError) as info:
        h264_mode0 = (await offer_sdp(codecs="h264")).replace("packetization-mode=1", "packetization-mode=0")
        await room.publish(key, h264_mode0, "offer")
    assert info.value.code == "unsupported_codec"
    with pytest.raises(Forbidden):
        await room.publish("wrong", await offer_sdp(), "offer")
    assert registry.peer_connection_count == base_pcs
    assert not room.info.live
    # the room still works after bad attempts
    answer = await room.publish(key, await offer_sdp(), "offer")
    assert answer["type"] == "answer" and "VP8" in answer["sdp"] and "H264" not in answer["sdp"]
    with pytest.raises(Conflict):
        await room.publish(key, await offer_sdp(), "offer")


async def test_viewer_rules_and_close(registry: RoomRegistry) -> None:
    room, key = registry.create("t", "c")
    with pytest.raises(NotFound):
        await room.add_viewer("v0", await offer_sdp(), "offer")  # not live
    publisher = Publisher(ImageTrack(text_scene(320, 240, BOX)))
    try:
        await publisher.connect(partial(room.publish, key))
        assert room.info.live and registry.list() == [room.info]
        viewers = [Viewer(), Viewer()]
        for i, v in enumerate(viewers):
            await v.connect(partial(room.add_viewer, f"v{i}"))
        assert room.info.viewer_count == 2
        with pytest.raises(Conflict):
            await room.add_viewer("v0", await offer_sdp(), "offer")
        with pytest.raises(LimitExceeded):
            await room.add_viewer("v9", await offer_sdp(), "offer")
        with pytest.raises(RelayError) as info:  # viewers get VP8 or H.264 constrained baseline (mode 1)
            h264 = Viewer(
                codecs=[c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
            )
            await room.remove_viewer("v1")
            try:
                await h264.connect(
                    lambda sdp, t: room.add_viewer(
                        "h", sdp.replace("packetization-mode=1", "packetization-mode=0"), t
                    )
                )
            finally:
                await h264.close()
        assert info.value.code == "unsupported_codec"
        await viewers[0].wait_frames(5, timeout=15)
        room.set_switches(key, mosaic=False)
        assert room.info.mosaic is False and room.sanitizer is not None and not room.sanitizer.mosaic_enabled
        with pytest.raises(Forbidden):
            room.set_switches("x", mosaic=True)
        pcs = registry.peer_connection_count
        await room.remove_viewer("v0")
        await room.remove_viewer("v0")  # idempotent
        assert registry.peer_connection_count == pcs - 1
        await room.close("test")
        await room.close("again")  # idempotent
        assert [e for e in registry.events if e[0] == "stream_ended"] == [("stream_ended", room.stream_id)]  # type: ignore[attr-defined]
        with pytest.raises(NotFound):
            registry.get(room.stream_id)
        assert room.task_count == 0
        for v in viewers:
            await v.close()
    finally:
        await publisher.close()
    await asyncio.sleep(0.1)
    assert registry.peer_connection_count == 0


async def test_close_all_is_bounded_and_frees_everything(loopback_ice: None) -> None:
    settings = dataclasses.replace(Settings(), shutdown_timeout_s=3.0)
    reg = RoomRegistry(settings, FakeDetector())
    tasks_before = live_task_count()
    pcs_before = live_peer_connection_count()  # process-wide (other tests may have leaked some)
    publishers = []
    viewers = []
    for _ in range(2):
        room, key = reg.create("t", "c")
        p = Publisher(ImageTrack(text_scene(320, 240, BOX)))
        await p.connect(partial(room.publish, key))
        publishers.append(p)
        v = Viewer()
        await v.connect(partial(room.add_viewer, "v"))
        viewers.append(v)
    await viewers[0].wait_frames(3, timeout=15)
    t0 = asyncio.get_running_loop().time()
    await reg.close_all()
    assert asyncio.get_running_loop().time() - t0 < settings.shutdown_timeout_s + 0.5
    assert reg.rooms == [] and reg.task_count == 0
    assert reg.peer_connection_count == 0
    assert live_peer_connection_count() == pcs_before
    assert live_task_count() <= tasks_before
    with pytest.raises(RelayError):
        reg.create("late", "c")
    for c in viewers + publishers:
        await c.close()


class FreezingTrack(ImageTrack):
    """Sends ``frames`` frames, then never another one (a publisher that vanished without a goodbye)."""

    def __init__(self, frames: int) -> None:
        super().__init__(text_scene(320, 240, BOX))
        self.limit = frames

    async def recv(self):  # type: ignore[no-untyped-def]
        if self.sent >= self.limit:
            await asyncio.Event().wait()
        return await super().recv()


async def test_publisher_that_stops_sending_is_timed_out(
    registry: RoomRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import relay.room

    monkeypatch.setattr(relay.room, "PUBLISHER_MEDIA_TIMEOUT_S", 1.0)
    room, key = registry.create("t", "c")
    publisher = Publisher(FreezingTrack(15))
    try:
        await publisher.connect(partial(room.publish, key))
        await asyncio.wait_for(room.closed.wait(), 10)
        assert ("stream_ended", room.stream_id) in registry.events  # type: ignore[attr-defined]
        assert room.sanitizer is not None and room.sanitizer.metrics.frames_in >= 1
    finally:
        await publisher.close()


async def test_publisher_connection_failure_closes_the_room_within_2s(registry: RoomRegistry) -> None:
    room, key = registry.create("t", "c")
    publisher = Publisher(ImageTrack(text_scene(320, 240, BOX)))
    try:
        await publisher.connect(partial(room.publish, key))
        viewer = Viewer()
        await viewer.connect(partial(room.add_viewer, "v"))
        await viewer.wait_frames(3, timeout=15)
        # what aiortc does when ICE consent or DTLS fails: the state becomes "failed" and it says so
        pc = room._publisher_pc
        assert pc is not None
        t0 = asyncio.get_running_loop().time()
        pc._RTCPeerConnection__connectionState = "failed"  # type: ignore[attr-defined]
        pc.emit("connectionstatechange")
        await asyncio.wait_for(room.closed.wait(), 2.0)
        assert asyncio.get_running_loop().time() - t0 < 2.0
        assert ("stream_ended", room.stream_id) in registry.events  # type: ignore[attr-defined]
        await asyncio.wait_for(viewer.ended.wait(), 5)
        await viewer.close()
    finally:
        await publisher.close()
