"""relay/rtp_forward.py: a room encoder's packets as plain RTP over loopback UDP, received and
decoded here (VP8 depacketized into frames that libvpx decodes; Opus packets that libopus decodes)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import av
import numpy as np
import pytest
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPacket, RtcpPsfbPacket, RtcpSrPacket, RtpPacket

from relay.audio import AudioEncoder
from relay.fanout import RoomEncoder
from relay.rtp_forward import RtpForward, RtpTarget
from relay.settings import Settings
from tests.helpers.media import ImageTrack, ToneTrack, checkerboard, feed

pytestmark = pytest.mark.timeout(60)


class Receiver(asyncio.DatagramProtocol):
    """A loopback UDP socket that keeps every datagram with its sender."""

    def __init__(self) -> None:
        self.datagrams: list[tuple[bytes, Any]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams.append((data, addr))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Receiver, local_addr=("127.0.0.1", 0))
    try:
        yield proto
    finally:
        transport.close()


async def wait_for(predicate: Any, limit_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def vp8_frames(packets: list[RtpPacket]) -> list[bytes]:
    """Reassemble VP8 frames (by RTP timestamp, marker bit ends a frame)."""
    frames: list[bytes] = []
    current = b""
    for p in sorted(packets, key=lambda p: p.sequence_number):
        desc, data = VpxPayloadDescriptor.parse(p.payload)
        if desc.partition_start and desc.partition_id == 0:
            current = b""
        current += data
        if p.marker:
            frames.append(current)
            current = b""
    return frames


async def test_vp8_and_opus_over_loopback_rtp() -> None:
    settings = Settings()
    encoder = RoomEncoder(settings, name="fwd-test")
    encoder.start()
    audio = AudioEncoder(ToneTrack(), name="fwd-audio")
    audio.start()
    # the encoder's first keyframe goes out before the forwarders attach: they must wait for the next
    source = ImageTrack(checkerboard(320, 240, 16), fps=30)
    feeding = asyncio.create_task(feed(source, encoder.submit), name="feed")
    try:
        await wait_for(lambda: encoder.metrics.frames > 5)
        async with receiver() as video_rx, receiver() as audio_rx:
            requests = encoder.metrics.keyframe_requests
            video = await RtpForward.open(
                encoder,
                RtpTarget(
                    "127.0.0.1", video_rx.port, payload_type=100, ssrc=0xABCDEF, rtcp_port=video_rx.port
                ),
                name="v",
            )
            assert encoder.metrics.keyframe_requests == requests + 1  # joining asks for a keyframe
            sound = await RtpForward.open(audio, RtpTarget("127.0.0.1", audio_rx.port, 109, 0x1234), name="a")
            assert (video.kind, sound.kind) == ("video", "audio")
            await wait_for(lambda: video.stats.frames >= 30 and sound.stats.frames >= 25)
            # a PLI to the forwarder's port (where the sender reports come from) requests a keyframe
            reports = [d for d, _ in video_rx.datagrams if 200 <= d[1] <= 204]
            assert reports and isinstance(RtcpPacket.parse(reports[0])[0], RtcpSrPacket)
            before = encoder.metrics.keyframe_requests
            pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=0xABCDEF)
            assert video_rx.transport is not None
            stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # not the destination: ignored
            stranger.bind(("127.0.0.2", 0))
            stranger.sendto(bytes(pli), ("127.0.0.1", video.local_port))
            stranger.close()
            video_rx.transport.sendto(bytes(pli), ("127.0.0.1", video.local_port))
            await wait_for(lambda: video.stats.keyframe_requests == 1)
            await asyncio.sleep(0.2)
            assert video.stats.keyframe_requests == 1
            assert encoder.metrics.keyframe_requests == before + 1
            video.close()
            sound.close()
            video.close()  # idempotent
            assert encoder.viewer_count == 0
            rtp = [RtpPacket.parse(d) for d, _ in video_rx.datagrams if not 200 <= d[1] <= 204]
            opus = [RtpPacket.parse(d) for d, _ in audio_rx.datagrams]
    finally:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
        await encoder.stop()
        await audio.stop()

    assert video.stats.first_is_keyframe is True
    assert {(p.ssrc, p.payload_type) for p in rtp} == {(0xABCDEF, 100)}
    seqs = [p.sequence_number for p in rtp]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))  # loopback: none lost
    frames = vp8_frames(rtp)
    assert len(frames) >= 30
    decoder: Any = av.CodecContext.create("libvpx", "r")
    decoded = [f for data in frames for f in decoder.decode(av.Packet(data))]
    assert len(decoded) == len(frames)
    img = decoded[-1].to_ndarray(format="gray")
    assert img.shape == (240, 320)
    assert float(np.std(img)) > 50  # the checkerboard, not a flat frame
    # Opus: 20 ms packets, 960 ticks apart, decodable
    assert {(p.ssrc, p.payload_type) for p in opus} == {(0x1234, 109)}
    stamps = [p.timestamp for p in opus]  # loopback: in order
    assert {(b - a) & 0xFFFFFFFF for a, b in zip(stamps, stamps[1:], strict=False)} == {960}
    opus_dec: Any = av.CodecContext.create("libopus", "r")
    samples = sum(f.samples for p in opus for f in opus_dec.decode(av.Packet(p.payload)))
    assert samples == 960 * len(opus)
