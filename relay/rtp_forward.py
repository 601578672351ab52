"""Plain RTP over UDP of a room's encoded-once packets, to a media server or another node.

A :class:`RtpForward` attaches to one of the room's encoders **like a viewer** (a
:class:`relay.packets.PacketTrack`: bounded queue, keyframe gate for video, joining requests a
keyframe) and sends each shared ``av.Packet`` as RTP to one ``(host, port)``: packetized once here
(aiortc's VP8 / Opus packetizers, as relay/fastsend.py's ``RoomPacketizer``), with the SSRC and
payload type the caller gives in an :class:`RtpTarget`. There is no SRTP and no ICE: the
destination is a trusted media server on loopback or a private network (Janus's streaming plugin:
relay/janus.py; a peer node). It only ever sees what the viewers see: the sanitized encode.

API (small and stable; relay/janus.py and the multi-node relay use it)::

    target = RtpTarget("127.0.0.1", port=5004, payload_type=96, ssrc=0x1234, rtcp_port=5005)
    fwd = await RtpForward.open(room.media.encoder, target, name="janus-v")  # or media.audio
    fwd.request_keyframe()   # e.g. when a new receiver starts (a PLI/FIR received does it too)
    fwd.stats                # ForwardStats: frames, packets, octets, dropped, keyframe requests
    fwd.close()              # detaches from the encoder, closes the socket (idempotent)

The kind (video VP8 / audio Opus) follows the encoder: a :class:`relay.fanout.RoomEncoder` of
codec ``"vp8"`` or a :class:`relay.audio.AudioEncoder`.

Sending never blocks the event loop: packets go out from ``push()`` (on the loop, when the
encoder delivers a frame) through asyncio's non-blocking datagram transport; if its buffer holds
more than ``MAX_BUFFERED_BYTES`` (the kernel is not taking them), datagrams are dropped and
counted. With ``rtcp_port``, a sender report goes there every ``SR_INTERVAL_S`` (Janus learns
where to send its keyframe requests from it), and PLI/FIR that come back to our socket request a
keyframe from the encoder (coalesced and throttled by the encoder); RTCP from any other address
is ignored.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import av
from aiortc import clock
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
)

from relay.packets import PacketTrack
from relay.tasks import TaskSet

logger = logging.getLogger(__name__)

MAX_BUFFERED_BYTES = 1 << 20  # asyncio's datagram buffer is unbounded: past this, drop
SR_INTERVAL_S = 1.0
_RTP = struct.Struct("!BBHLL")


@dataclass(frozen=True)
class RtpTarget:
    """Where one kind of media goes: ``host`` is an IP address (no name resolution on the loop)."""

    host: str
    port: int
    payload_type: int
    ssrc: int
    rtcp_port: int | None = None  # the receiver's RTCP port: sender reports go there, PLI/FIR come back


@dataclass
class ForwardStats:
    frames: int = 0  # av.Packets sent (video frames / 20 ms Opus packets)
    packets: int = 0  # RTP datagrams handed to the transport
    octets: int = 0  # payload bytes
    dropped: int = 0  # datagrams dropped because the transport's buffer was full
    keyframe_requests: int = 0  # PLI/FIR received from the destination
    first_is_keyframe: bool | None = None


class Encoder(Protocol):
    """What we attach to: relay.fanout.RoomEncoder (video) or relay.audio.AudioEncoder (audio)."""

    def add_viewer(self, make: Callable[..., PacketTrack] = ...) -> PacketTrack: ...

    def remove_viewer(self, track: PacketTrack) -> None: ...


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_rtcp: Callable[[bytes], None], peer: str) -> None:
        self._on_rtcp = on_rtcp
        self._peer = peer

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if addr[0] == self._peer:  # RTCP from the destination only (no keyframe requests from others)
            self._on_rtcp(data)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable while nobody listens
        logger.debug("rtp forward: %s", exc)


class _ForwardTrack(PacketTrack):
    """The encoder's view of us: sends what the encoder pushes, right away (after the gate)."""

    def __init__(self, forward: RtpForward, kind: str, maxlen: int, **kwargs: Any) -> None:
        super().__init__(kind, maxlen, **kwargs)
        self._forward = forward

    def push(self, packet: av.Packet[Any]) -> None:
        super().push(packet)
        while self._queue:
            self.packets_out += 1
            self._forward._send(self._queue.popleft())


class RtpForward:
    """One kind of a room's media, sent as RTP to one :class:`RtpTarget`. Made by :meth:`open`."""

    def __init__(self, encoder: Encoder, target: RtpTarget, name: str) -> None:
        self.target = target
        self.name = name
        self.stats = ForwardStats()
        self._encoder = encoder
        self._transport: asyncio.DatagramTransport | None = None
        self._track: PacketTrack | None = None
        self._packer: Any = None
        self._seq = random.randint(0, 0x7FFF)
        self._ts_origin = random.getrandbits(32)
        self._last_ts = 0
        self._tasks = TaskSet(f"rtp-forward-{name}")
        self._reports: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(
        cls, encoder: Encoder, target: RtpTarget, *, name: str = "rtp", local_host: str | None = None
    ) -> RtpForward:
        """Bind a UDP socket (on ``local_host``; default 127.0.0.1 for a loopback destination, else
        any), attach to ``encoder`` (a video encoder requests a keyframe)."""
        self = cls(encoder, target, name)
        loop = asyncio.get_running_loop()
        default = "127.0.0.1" if target.host.startswith("127.") else "::" if ":" in target.host else "0.0.0.0"
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self._on_rtcp, target.host), local_addr=(local_host or default, 0)
        )
        self._transport = transport
        self._track = encoder.add_viewer(self._make_track)
        self._packer = Vp8Encoder() if self._track.kind == "video" else OpusEncoder()
        if target.rtcp_port is not None:
            self._reports = self._tasks.create(self._report(), "sender-reports")
        return self

    def _make_track(self, kind: str, maxlen: int, **kwargs: Any) -> PacketTrack:
        return _ForwardTrack(self, kind, maxlen, **kwargs)

    @property
    def kind(self) -> str:
        return self._track.kind if self._track is not None else "?"

    @property
    def local_port(self) -> int:
        """Our UDP port (RTP and RTCP leave from it; PLI/FIR arrive on it)."""
        return int(self._transport.get_extra_info("sockname")[1]) if self._transport else 0

    def request_keyframe(self) -> None:
        """Ask the encoder for a keyframe (a no-op for audio)."""
        request = getattr(self._encoder, "request_keyframe", None)
        if request is not None and not self._closed:
            request()

    def _send(self, packet: av.Packet[Any]) -> None:
        transport, target = self._transport, self.target
        if transport is None or self._closed:
            return
        if self.stats.first_is_keyframe is None:
            self.stats.first_is_keyframe = bool(packet.is_keyframe)
        payloads, ts = self._packer.pack(packet)
        timestamp = self._last_ts = (self._ts_origin + ts) & 0xFFFFFFFF
        last = len(payloads) - 1
        video = self.kind == "video"
        self.stats.frames += 1
        for i, payload in enumerate(payloads):
            marker = 0x80 if (video and i == last) else 0
            header = _RTP.pack(0x80, marker | target.payload_type, self._seq, timestamp, target.ssrc)
            self._seq = (self._seq + 1) & 0xFFFF
            if cast(Any, transport).get_write_buffer_size() > MAX_BUFFERED_BYTES:
                self.stats.dropped += 1
                continue
            transport.sendto(header + payload, (target.host, target.port))
            self.stats.packets += 1
            self.stats.octets += len(payload)

    def _on_rtcp(self, data: bytes) -> None:
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            return
        for p in packets:
            if isinstance(p, RtcpPsfbPacket) and p.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                self.stats.keyframe_requests += 1
                self.request_keyframe()

    def sender_report(self) -> bytes:
        """An RTCP sender report for what we sent so far."""
        info = RtcpSenderInfo(
            ntp_timestamp=clock.current_ntp_time(),
            rtp_timestamp=self._last_ts,
            packet_count=self.stats.packets & 0xFFFFFFFF,
            octet_count=self.stats.octets & 0xFFFFFFFF,
        )
        return bytes(RtcpSrPacket(ssrc=self.target.ssrc, sender_info=info))

    async def _report(self) -> None:
        port = self.target.rtcp_port
        while not self._closed and self._transport is not None and port is not None:
            self._transport.sendto(self.sender_report(), (self.target.host, port))
            await asyncio.sleep(SR_INTERVAL_S)

    def close(self) -> None:
        """Detach from the encoder and close the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._track is not None:
            self._encoder.remove_viewer(self._track)
        if self._transport is not None:
            self._transport.close()
        if self._reports is not None:
            self._reports.cancel()
