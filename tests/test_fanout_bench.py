"""bench/fanout.py's measuring parts (issue #15): the light viewers' frame counter (SRTP decrypted and
authenticated, complete VP8 frames from the RTP/VP8 headers, gaps are losses), the camera-paced
publisher and the client-side counters."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import struct
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import numpy as np
import pylibsrtp
import pytest
from aiortc.codecs.vpx import Vp8Encoder
from av import VideoFrame

from bench.fanout import BenchViewer, FrameCounter, client_delta, make_stamped_track, proc_cpu_s, rtp_fields
from relay.fastsend import FastTrack
from relay.room import RoomRegistry
from relay.settings import Settings
from relay.video_codecs import VIDEO_TIME_BASE, new_vp8
from tests.helpers.media import FakeDetector, ImageTrack, Publisher, Viewer, text_scene

PT = 96
SSRC = 0x1234ABCD
BOX = (100, 80, 220, 160)


def srtp_pair() -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    key = os.urandom(30)
    tx = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    rx = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    return tx, rx


def vp8_frames(n: int, size: tuple[int, int] = (640, 480)) -> list[list[bytes]]:
    """RTP payloads (VP8 descriptor included) of ``n`` real libvpx frames, cut by aiortc's packetizer."""
    codec = new_vp8(size[0], size[1], 1_500_000)
    packer = Vp8Encoder()
    rng = np.random.default_rng(1)
    frames: list[list[bytes]] = []
    for i in range(n):
        img = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)  # noise: several packets each
        frame = VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
        frame.pts, frame.time_base = i * 3000, VIDEO_TIME_BASE
        for packet in codec.encode(frame):
            payloads, _ = packer.pack(packet)
            frames.append(payloads)
    return frames


def rtp_stream(frames: list[list[bytes]]) -> list[bytes]:
    """Clear RTP packets as our send path writes them (header + a one-byte extension block)."""
    out: list[bytes] = []
    seq = 65530  # wraps inside the stream
    ext = struct.pack("!HH", 0xBEDE, 1) + bytes([0x10, 0x61, 0, 0])  # mid "a", padded
    for f, payloads in enumerate(frames):
        for i, payload in enumerate(payloads):
            b1 = PT | (0x80 if i == len(payloads) - 1 else 0)
            out.append(struct.pack("!BBHLL", 0x90, b1, seq, f * 3000, SSRC) + ext + payload)
            seq = (seq + 1) & 0xFFFF
    return out


@pytest.fixture(scope="module")
def stream() -> tuple[list[list[bytes]], list[bytes]]:
    frames = vp8_frames(12)
    assert sum(len(f) for f in frames) > 3 * len(frames)  # several packets per frame
    return frames, rtp_stream(frames)


def count(packets: list[bytes]) -> FrameCounter:
    tx, rx = srtp_pair()
    counter = FrameCounter(rx)
    for p in packets:
        counter.on_srtp(tx.protect(p))
    return counter


def test_rtp_fields_finds_the_payload_after_the_extension(stream: Any) -> None:
    frames, packets = stream
    fields = rtp_fields(packets[len(frames[0]) - 1])
    assert fields is not None
    pt, seq, ts, marker, offset = fields
    assert (pt, ts, marker) == (PT, 0, True) and offset == 12 + 8
    assert packets[0][offset:] == frames[0][0]
    assert rtp_fields(b"\x00" * 20) is None and rtp_fields(b"\x80\x60") is None


def test_every_frame_counts_when_nothing_is_lost(stream: Any) -> None:
    frames, packets = stream
    c = count(packets)
    assert (c.frames, c.packets, c.lost, c.auth_failures) == (len(frames), len(packets), 0, 0)


def test_a_lost_packet_loses_its_frame_only(stream: Any) -> None:
    frames, packets = stream
    first_of_3 = sum(len(f) for f in frames[:3])
    for lost in (first_of_3, first_of_3 + 1, first_of_3 + len(frames[3]) - 1):  # first, middle, marker
        c = count(packets[:lost] + packets[lost + 1 :])
        assert (c.frames, c.lost) == (len(frames) - 1, 1), lost


def test_a_whole_lost_frame_does_not_hide_the_next_one(stream: Any) -> None:
    frames, packets = stream
    a = sum(len(f) for f in frames[:5])
    c = count(packets[:a] + packets[a + len(frames[5]) :])
    assert (c.frames, c.lost) == (len(frames) - 1, len(frames[5]))


def test_a_forged_packet_fails_authentication_and_is_not_counted(stream: Any) -> None:
    frames, packets = stream
    tx, rx = srtp_pair()
    counter = FrameCounter(rx)
    protected = [tx.protect(p) for p in packets]
    bad = bytearray(protected[1])
    bad[-12] ^= 0x01  # a payload byte: the auth tag no longer matches
    protected[1] = bytes(bad)
    for p in protected:
        counter.on_srtp(p)
    assert counter.auth_failures == 1
    assert (counter.frames, counter.lost) == (len(frames) - 1, 1)  # the forged one counts as lost


def test_duplicates_are_rejected_and_late_packets_ignored(stream: Any) -> None:
    frames, packets = stream
    tx, rx = srtp_pair()
    protected = [tx.protect(p) for p in packets]
    counter = FrameCounter(rx)
    for p in protected[:4] + protected[2:4] + protected[4:]:  # a replay: SRTP refuses it
        counter.on_srtp(p)
    assert (counter.frames, counter.auth_failures, counter.lost) == (len(frames), 2, 0)
    late = count(packets[:3] + packets[4:6] + packets[3:4] + packets[6:])  # packet 3 arrives late
    assert (late.reordered, late.lost) == (1, 1) and late.frames <= len(frames) - 1


async def test_publisher_skips_the_frames_it_is_late_for_instead_of_bursting() -> None:
    counters = [0, 0]
    track = make_stamped_track((320, 240), fps=30.0, counters=counters)
    pts = [(await track.recv()).pts]
    await asyncio.sleep(0.2)  # a stall of ~6 frame intervals
    t0 = asyncio.get_running_loop().time()
    for _ in range(3):
        pts.append((await track.recv()).pts)
    # after the stall: the camera's current frame, then paced again (not three frames at once)
    assert pts[1] >= 5 * 3000 and pts[2] - pts[1] == pts[3] - pts[2] == 3000
    assert asyncio.get_running_loop().time() - t0 >= 0.04
    assert counters[0] == 4 and counters[1] >= 5
    track.stop()


def test_client_delta_and_process_cpu() -> None:
    a = {
        "t": 0.0,
        "publisher": [0, 0],
        "publisher_cpu": 1.0,
        "viewer_cpu": 2.0,
        "rx": {"packets": 0, "lost": 0, "reordered": 0, "auth_failures": 0},
        "udp": {"RcvbufErrors": 5},
    }
    b = {
        "t": 10.0,
        "publisher": [300, 2],
        "publisher_cpu": 4.0,
        "viewer_cpu": 7.0,
        "rx": {"packets": 900, "lost": 3, "reordered": 0, "auth_failures": 0},
        "udp": {"RcvbufErrors": 9},
    }
    d = client_delta(a, b)
    assert (d["publisher_fps"], d["publisher_skipped"], d["publisher_cores"]) == (30.0, 2, 0.3)
    assert d["viewer_processes_cores"] == 0.5 and d["viewer_rx"]["lost"] == 3
    assert d["udp_machine"] == {"RcvbufErrors": 4, "SndbufErrors": 0, "InErrors": 0}
    busy = proc_cpu_s([os.getpid()])
    sum(i * i for i in range(300_000))
    assert proc_cpu_s([os.getpid()]) > busy and proc_cpu_s([2**22 + 7]) == 0.0


# --- through a room: the light viewer counts what a decoding viewer decodes --------------------


@pytest.fixture
async def registry(loopback_ice: None) -> AsyncIterator[RoomRegistry]:
    settings = dataclasses.replace(Settings(), fast_send="on", keyframe_interval_s=60.0)
    reg = RoomRegistry(settings, FakeDetector())
    yield reg
    await reg.close_all()


async def test_light_viewer_counts_the_frames_a_decoding_viewer_decodes(
    registry: RoomRegistry, peers: list[Any]
) -> None:
    room, key = registry.create("t", "c")
    pub = Publisher(ImageTrack(text_scene(320, 240, BOX)))
    peers.append(pub)
    await pub.connect(partial(room.publish, key))
    decoding = Viewer()
    peers.append(decoding)
    await decoding.connect(partial(room.add_viewer, "decoding"))
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    light = BenchViewer(probe=False, light=True)
    try:
        await light.negotiate(partial(room.add_viewer, "light"))
        await decoding.wait_frames(45, timeout=30)
        for _ in range(300):
            if light.frames >= 30:
                break
            await asyncio.sleep(0.05)
        assert light.light is not None and light.frames >= 30
        track = room._viewers["light"].video
        assert isinstance(track, FastTrack) and track.link is not None
        sent = track.link.stats.frames
        c = light.light
        assert c.auth_failures == 0 and c.packets > 0
        # every frame sent was counted, except packets lost (none expected on an idle loopback) and
        # the last frames still in flight
        assert sent - 3 - c.lost <= c.frames <= sent, (sent, c.frames, c.lost)
        # and it agrees with a viewer that decodes: its count is one of the same stream
        assert abs(c.frames - decoding.count) <= max(6, 0.15 * decoding.count)
        assert not errors, errors[:1]  # the socket drain raised nothing in asyncio's callbacks
    finally:
        await light.close()
        asyncio.get_running_loop().set_exception_handler(None)


def test_relay_threads_by_role_and_cores_needed_for_30_fps() -> None:
    import threading

    from bench.fanout import cores_needed_30fps, thread_group, threads_cpu

    assert thread_group("MainThread") == "loop"
    assert thread_group("video-decoder") == "decoder"
    assert thread_group("room-abc-encoder-vp8_0") == "encoder"
    assert thread_group("room-abc-pipeline-mosaic_0") == "mosaic"
    assert thread_group("detector_0") == "detector"
    assert thread_group("asyncio_3") == "other"
    # decoder per frame received (20 fps), the rest per frame encoded (10 fps)
    need = cores_needed_30fps({"decoder": 0.1, "encoder": 0.1, "loop": 0.05}, 20.0, 10.0)
    assert need == round(30 * (0.1 / 20 + 0.1 / 10 + 0.05 / 10), 3)
    assert cores_needed_30fps({"loop": 0.1}, 0.0, 10.0) is None

    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    t = threading.Thread(target=spin, name="x-encoder-vp8_0")
    before = threads_cpu()
    t.start()
    time.sleep(0.3)
    after = threads_cpu()
    stop.set()
    t.join()
    assert after.get("encoder", 0.0) > before.get("encoder", 0.0) and "loop" in after
