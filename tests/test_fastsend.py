"""relay/fastsend.py + relay/udpbatch.py: our RTP send path (issue #15), through real aiortc peers."""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import errno
import socket
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import pytest

from relay import fastsend, udpbatch
from relay.fanout import PacketTrack
from relay.fastsend import FastSend, FastTrack
from relay.room import Room, RoomRegistry
from relay.settings import Settings
from tests.helpers.media import FakeDetector, ImageTrack, Publisher, ToneTrack, Viewer, text_scene

pytestmark = pytest.mark.timeout(90)

BOX = (100, 100, 300, 200)

# --- udpbatch ----------------------------------------------------------------------------------


@pytest.fixture
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2.0)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    tx.setblocking(False)
    yield tx, rx
    tx.close()
    rx.close()


def frame_datagrams(n: int, size: int = 1310, last: int = 333) -> list[bytes]:
    return [bytes([i]) * size for i in range(n - 1)] + [b"\xee" * last]


class CountingSendmmsg:
    """Wraps libc's sendmmsg: counts calls; optionally accepts only ``limit`` messages, then EAGAIN."""

    def __init__(self, real: Any, limit: int | None = None) -> None:
        self.real, self.limit, self.calls = real, limit, 0

    def __call__(self, fd: int, msgs: int, n: int, flags: int) -> int:
        self.calls += 1
        if self.limit is not None:
            if self.limit == 0:
                ctypes.set_errno(errno.EAGAIN)
                return -1
            n = min(n, self.limit)
            self.limit -= n
        return int(self.real(fd, msgs, n, flags))


def test_gso_groups() -> None:
    assert udpbatch.gso_groups([]) == []
    assert udpbatch.gso_groups([1300] * 5 + [200]) == [(0, 6)]
    # a bigger datagram starts a new run, a shorter one ends the run
    assert udpbatch.gso_groups([100, 1300, 1300, 50, 1300]) == [(0, 1), (1, 3), (4, 1)]
    # at most 64 segments and ~64 KB per run
    assert udpbatch.gso_groups([10] * 130) == [(0, 64), (64, 64), (128, 2)]
    assert [c for _, c in udpbatch.gso_groups([1300] * 60)] == [50, 10]


@pytest.mark.parametrize("gso", [False, True])
def test_sendmmsg_sends_a_frame_in_one_call(
    udp_pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch, gso: bool
) -> None:
    tx, rx = udp_pair
    assert udpbatch.available()
    counter = CountingSendmmsg(udpbatch._sendmmsg)
    monkeypatch.setattr(udpbatch, "_sendmmsg", counter)
    sender = udpbatch.BatchSender(tx.fileno(), udpbatch.sockaddr(*rx.getsockname()), capacity=4)
    for n in (1, 7, 40):  # 40 > capacity: the arrays grow
        dgs = frame_datagrams(n)
        counter.calls = 0
        assert sender.send(dgs, gso=gso) == n
        assert counter.calls == 1
        assert [rx.recv(2048) for _ in range(n)] == dgs  # separate datagrams, in order


def test_sendmmsg_partial_send_spills_the_rest_in_order(
    udp_pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    tx, rx = udp_pair
    real = udpbatch._sendmmsg
    # the kernel takes 3 messages, then the socket "would block"
    monkeypatch.setattr(udpbatch, "_sendmmsg", CountingSendmmsg(real, limit=3))
    dgs = frame_datagrams(8)
    assert udpbatch.send_batch(tx.fileno(), udpbatch.sockaddr(*rx.getsockname()), dgs) == 3
    assert [rx.recv(2048) for _ in range(3)] == dgs[:3]

    monkeypatch.setattr(udpbatch, "_sendmmsg", CountingSendmmsg(real, limit=5))
    spilled: list[bytes] = []

    def spill(d: bytes) -> None:
        spilled.append(d)
        tx.sendto(d, rx.getsockname())

    path = udpbatch.Datapath(tx.fileno(), socket.AF_INET, rx.getsockname(), "mmsg", spill)
    try:
        path.send(dgs)
    finally:
        path.close()
    assert spilled == dgs[5:] and path.spilled == 3
    assert [rx.recv(2048) for _ in range(8)] == dgs


def test_sendmmsg_hard_error_raises() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # unbound, to a port-0 address
        with pytest.raises(udpbatch.SendError):
            udpbatch.send_batch(s.fileno(), udpbatch.sockaddr("127.0.0.1", 0), [b"x"])


@pytest.mark.parametrize("mode", udpbatch.MODES)
def test_datapath_modes_deliver_every_datagram(
    udp_pair: tuple[socket.socket, socket.socket], mode: str
) -> None:
    tx, rx = udp_pair
    path = udpbatch.Datapath(tx.fileno(), socket.AF_INET, rx.getsockname(), mode, lambda d: None)
    dgs = frame_datagrams(12) + frame_datagrams(3, size=900, last=900)
    try:
        path.send(dgs)
    finally:
        path.close()
    assert [rx.recv(2048) for _ in range(len(dgs))] == dgs
    assert path.fallbacks == 0 and path.spilled == 0
    assert path.syscalls == {"gso": 2, "mmsg": 1, "sendto": 15}[mode]


# --- through a room with real aiortc peers ---------------------------------------------------


@pytest.fixture
async def registry(loopback_ice: None) -> AsyncIterator[RoomRegistry]:
    settings = dataclasses.replace(Settings(), fast_send="on", keyframe_interval_s=60.0)
    reg = RoomRegistry(settings, FakeDetector())
    yield reg
    await reg.close_all()
    assert reg.peer_connection_count == 0


async def publish(registry: RoomRegistry, peers: list[Any], audio: bool = False) -> Room:
    room, key = registry.create("t", "c")
    pub = Publisher(ImageTrack(text_scene(320, 240, BOX)), ToneTrack() if audio else None)
    peers.append(pub)
    await pub.connect(partial(room.publish, key))
    return room


async def view(room: Room, peers: list[Any], name: str, audio: bool = False) -> Viewer:
    v = Viewer(audio=audio, keep=400)
    peers.append(v)
    await v.connect(partial(room.add_viewer, name))
    return v


def links(room: Room, name: str) -> tuple[fastsend.ViewerLink, fastsend.ViewerLink | None]:
    v = room._viewers[name]
    assert isinstance(v.video, FastTrack) and v.video.link is not None
    audio = v.audio.link if isinstance(v.audio, FastTrack) else None
    return v.video.link, audio


async def test_viewers_decode_every_frame_sent_and_late_joiner_starts_on_a_keyframe(
    registry: RoomRegistry, peers: list[Any]
) -> None:
    room = await publish(registry, peers, audio=True)
    assert room.fast is not None
    first = await view(room, peers, "a", audio=True)
    await first.wait_frames(30, timeout=30)
    late = await view(room, peers, "b")
    await late.wait_frames(30, timeout=30)
    for v, name in ((first, "a"), (late, "b")):
        video, _ = links(room, name)
        assert video.path is not None and video.path.mode == "gso"
        assert video.stats.first_is_keyframe  # gated: the first thing a (late) joiner gets is a keyframe
        sent = video.stats.frames
        # every frame sent was decoded (a few may still be in flight or in the jitter buffer)
        assert sent - 5 <= v.count <= sent, (name, sent, v.count)
        # aiortc's RTP loop sent nothing: the sender's counters are ours (its sender reports use them)
        sender = room._viewers[name].pc.getTransceivers()[0].sender
        assert sender._RTCRtpSender__packet_count == video.stats.packets
    _, audio = links(room, "a")
    assert audio is not None and audio.stats.packets > 20 and first.audio_frames > 20
    # packetized once per room, not once per viewer
    assert room.fast._packetizers["video"].packed <= max(links(room, n)[0].stats.frames for n in "ab") + 1


async def test_nack_retransmits_a_dropped_packet_without_a_keyframe(
    registry: RoomRegistry, peers: list[Any]
) -> None:
    room = await publish(registry, peers)
    v = await view(room, peers, "a")
    await v.wait_frames(20, timeout=30)
    video, _ = links(room, "a")
    assert video.path is not None
    path_send = video.path.send
    dropped: list[int] = []

    def drop_one(datagrams: Any) -> None:  # drop the 2nd datagram of the next multi-packet frame
        if not dropped and len(datagrams) >= 2:
            dropped.append((video._seq - len(datagrams) + 1) & 0xFFFF)
            datagrams = [datagrams[0], *datagrams[2:]]
        path_send(datagrams)

    video.path.send = drop_one  # type: ignore[method-assign]
    requests0 = room.encoder.metrics.keyframe_requests if room.encoder else 0
    count0 = v.count
    for _ in range(100):
        if dropped and dropped[0] in video.stats.retransmitted:
            break
        await asyncio.sleep(0.05)
    assert dropped and dropped[0] in video.stats.retransmitted and v.loss_reports >= 1
    await v.wait_frames(count0 + 30, timeout=30)
    assert room.encoder is not None and room.encoder.metrics.keyframe_requests == requests0  # no PLI needed


async def test_fallback_when_private_api_is_missing(
    registry: RoomRegistry, peers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fastsend, "problems", lambda: ["RTCRtpSender._retransmit"])
    assert FastSend.create(True, "gso") is None
    room = await publish(registry, peers)
    assert room.fast is None
    v = await view(room, peers, "a")
    await v.wait_frames(10, timeout=30)
    assert type(room._viewers["a"].video) is PacketTrack


async def test_fallback_per_viewer_when_a_sender_lacks_an_attribute(
    registry: RoomRegistry, peers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fastsend, "_SENDER_FIELDS", (*fastsend._SENDER_FIELDS, "no_such_field"))
    room = await publish(registry, peers)
    assert room.fast is not None
    v = await view(room, peers, "a")
    await v.wait_frames(10, timeout=30)  # aiortc's own loop sends
    track = room._viewers["a"].video
    assert isinstance(track, FastTrack) and track.link is None


def test_off_setting_uses_aiortc() -> None:
    assert FastSend.create(False, "gso") is None
    with pytest.raises(ValueError):
        FastSend.create(True, "sendfile")
    assert Settings().fast_send in ("on", "off")


async def test_links_close_their_socket_when_viewers_leave(registry: RoomRegistry, peers: list[Any]) -> None:
    import os

    room = await publish(registry, peers)
    first = await view(room, peers, "keep")
    await first.wait_frames(5, timeout=30)
    fds = len(os.listdir("/proc/self/fd"))
    for i in range(4):
        v = await view(room, peers, f"x{i}")
        await v.wait_frames(3, timeout=30)
        video, _ = links(room, f"x{i}")
        path = video.path
        assert path is not None
        await room.remove_viewer(f"x{i}")
        assert video.path is None and path._sock is None  # the duplicated ICE socket is closed
        await v.close()
    await asyncio.sleep(0.5)
    assert len(os.listdir("/proc/self/fd")) <= fds + 2
    await first.wait_frames(first.count + 5, timeout=30)  # the others still get frames


async def test_sender_reports_carry_our_counters_and_rtt_is_measured(
    registry: RoomRegistry, peers: list[Any]
) -> None:
    """aiortc's RTCP loop still sends SR (from the counters the fast path keeps); the viewer sees
    them, and its receiver reports come back and give the sender a round-trip time."""
    room = await publish(registry, peers)
    v = await view(room, peers, "a")
    await v.wait_frames(5, timeout=30)
    video, _ = links(room, "a")
    sender = room._viewers["a"].pc.getTransceivers()[0].sender
    remote_out: list[Any] = []
    rtt: list[Any] = []
    for _ in range(100):  # SR every 0.5-1.5 s; RTT needs an RR that answers an SR
        viewer_stats = await v.pc.getTransceivers()[0].receiver.getStats()
        remote_out = [s for s in viewer_stats.values() if s.type == "remote-outbound-rtp"]
        sender_stats = await sender.getStats()
        rtt = [s.roundTripTime for s in sender_stats.values() if s.type == "remote-inbound-rtp"]
        if remote_out and remote_out[0].packetsSent > 0 and rtt and rtt[0] is not None:
            break
        await asyncio.sleep(0.1)
    assert remote_out and remote_out[0].ssrc == sender._ssrc
    assert 0 < remote_out[0].packetsSent <= video.stats.packets
    assert rtt and rtt[0] is not None and 0 <= rtt[0] < 1.0
