"""Plain RTP in from another node (issue #15, several nodes): VP8 and Opus back into ``av.Packet``s.

The publisher's node sends a room's encoded-once packets as plain RTP over UDP (relay/rtp_forward.py)
to the viewer's node, which hands them to its own viewers' tracks (relay/remote.py). Nothing here
decodes: a VP8 frame is reassembled from its RTP packets (:class:`Vp8Assembler`, pure), an Opus
packet is one RTP payload. Both keep the sender's RTP timestamps as ``pts`` (90 kHz / 48 kHz), so
the viewer's senders (aiortc's, or relay/fastsend.py) pace and stamp them as on the owner's node.

Loss (a sequence gap, a frame cut short): the frame is dropped, the stream is **gated** until the
next keyframe (no broken picture reaches a viewer) and a keyframe is asked for (``on_loss``).
Only datagrams from the owner's address are taken; a new SSRC (the forward was restarted) starts
afresh at a keyframe.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.rtp import RtpPacket

logger = logging.getLogger(__name__)

VIDEO_CLOCK = 90000
AUDIO_CLOCK = 48000
MAX_FRAME_BYTES = 2 * 1024 * 1024  # a VP8 frame larger than this is garbage: dropped
MAX_FRAME_PACKETS = 2048
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024  # SO_RCVBUF asked for (a keyframe burst must fit)


def seq_delta(a: int, b: int) -> int:
    """``b - a`` for 16-bit RTP sequence numbers, in [-32768, 32767]."""
    return ((b - a + 32768) & 0xFFFF) - 32768


def vp8_is_keyframe(frame: bytes) -> bool:
    """The VP8 frame tag's P bit (RFC 6386 9.1): 0 = key frame."""
    return bool(frame) and not frame[0] & 0x01


@dataclass
class Vp8Frame:
    data: bytes
    timestamp: int
    keyframe: bool


@dataclass
class Vp8Assembler:
    """RTP packets of one VP8 stream (in order) -> whole frames; pure, no I/O.

    ``push`` returns the frame a packet completed (``None`` if none) and counts what it dropped;
    ``wants_keyframe`` turns True on loss and False at the next keyframe."""

    gated: bool = True  # nothing goes out before a keyframe
    frames: int = 0
    dropped_frames: int = 0
    losses: int = 0
    _next_seq: int | None = None
    _timestamp: int | None = None
    _parts: list[bytes] = field(default_factory=list)
    _size: int = 0

    @property
    def wants_keyframe(self) -> bool:
        return self.gated

    def reset(self) -> None:
        self._next_seq, self._timestamp, self._parts, self._size = None, None, [], 0
        self.gated = True

    def _lose(self) -> None:
        if self._parts:
            self.dropped_frames += 1
        self.losses += 1
        self._timestamp, self._parts, self._size = None, [], 0
        self.gated = True

    def push(self, seq: int, timestamp: int, marker: bool, payload: bytes) -> Vp8Frame | None:
        if self._next_seq is not None:
            delta = seq_delta(self._next_seq, seq)
            if delta < 0:  # late or duplicate: its frame was dealt with already
                return None
            if delta > 0:
                self._lose()
        self._next_seq = (seq + 1) & 0xFFFF
        try:
            descriptor, data = VpxPayloadDescriptor.parse(payload)
        except ValueError:
            self._lose()
            return None
        if descriptor.partition_start and descriptor.partition_id == 0:
            if self._parts:  # the previous frame never got its marker
                self._lose()
            self._timestamp, self._parts, self._size = timestamp, [], 0
        elif self._timestamp is None or timestamp != self._timestamp:
            return None  # the middle of a frame whose start we did not see (already counted)
        self._parts.append(data)
        self._size += len(data)
        if self._size > MAX_FRAME_BYTES or len(self._parts) > MAX_FRAME_PACKETS:
            self._lose()
            return None
        if not marker:
            return None
        frame = Vp8Frame(b"".join(self._parts), timestamp, False)
        frame.keyframe = vp8_is_keyframe(frame.data)
        self._timestamp, self._parts, self._size = None, [], 0
        if self.gated and not frame.keyframe:
            self.dropped_frames += 1
            return None
        self.gated = False
        self.frames += 1
        return frame


class TimestampUnwrapper:
    """32-bit RTP timestamps -> a monotonic-ish 64-bit count (for ``pts``)."""

    def __init__(self) -> None:
        self._last: int | None = None
        self._base = 0

    def __call__(self, ts: int) -> int:
        if self._last is not None:
            delta = ((ts - self._last + 2**31) & 0xFFFFFFFF) - 2**31
            self._base += delta
        else:
            self._base = ts
        self._last = ts
        return self._base


def make_packet(data: bytes, pts: int, clock: int, keyframe: bool) -> av.Packet[Any]:
    packet: av.Packet[Any] = av.Packet(data)
    packet.pts = packet.dts = pts
    packet.time_base = fractions.Fraction(1, clock)
    packet.is_keyframe = keyframe
    return packet


class RtpDepacketizer:
    """One media kind of one forward: RTP datagrams -> ``av.Packet``s for ``on_packet``."""

    def __init__(
        self,
        kind: str,
        on_packet: Callable[[av.Packet[Any]], None],
        on_loss: Callable[[], None] | None = None,
    ) -> None:
        self.kind = kind
        self._on_packet = on_packet
        self._on_loss = on_loss
        self._vp8 = Vp8Assembler() if kind == "video" else None
        self._ssrc: int | None = None
        self._unwrap = TimestampUnwrapper()
        self.datagrams = 0
        self.bad = 0

    @property
    def assembler(self) -> Vp8Assembler | None:
        return self._vp8

    def datagram(self, data: bytes) -> None:
        try:
            rtp = RtpPacket.parse(data)
        except ValueError:
            self.bad += 1
            return
        self.datagrams += 1
        if rtp.ssrc != self._ssrc:  # the first, or the forward restarted: start afresh
            self._ssrc = rtp.ssrc
            self._unwrap = TimestampUnwrapper()
            if self._vp8 is not None:
                self._vp8.reset()
        pts = self._unwrap(rtp.timestamp)
        if self._vp8 is None:
            if rtp.payload:
                self._on_packet(make_packet(rtp.payload, pts, AUDIO_CLOCK, True))
            return
        losses = self._vp8.losses
        frame = self._vp8.push(rtp.sequence_number, rtp.timestamp, bool(rtp.marker), rtp.payload)
        if self._vp8.losses != losses and self._on_loss is not None:
            self._on_loss()
        if frame is not None:
            self._on_packet(make_packet(frame.data, pts, VIDEO_CLOCK, frame.keyframe))


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, receiver: RtpReceiver) -> None:
        self._receiver = receiver

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._receiver.received(data, str(addr[0]))


class RtpReceiver:
    """A UDP socket on ``host`` (port chosen by the kernel) taking one kind's RTP from ``source``."""

    def __init__(self, depacketizer: RtpDepacketizer, host: str, source: str) -> None:
        self.depacketizer = depacketizer
        self._host = host
        self._source = source
        self._transport: asyncio.DatagramTransport | None = None
        self.refused = 0
        self.port = 0

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self._host, 0)
        )
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            except OSError:
                pass
        self.port = int(transport.get_extra_info("sockname")[1])
        return self.port

    def received(self, data: bytes, host: str) -> None:
        if host != self._source:
            self.refused += 1
            if self.refused == 1:
                logger.warning("RTP from %s refused: this forward comes from %s", host, self._source)
            return
        try:
            self.depacketizer.datagram(data)
        except Exception:  # one bad datagram must not end the stream
            logger.exception("RTP %s datagram failed", self.depacketizer.kind)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
