"""Our own RTP send path for the room's encoded-once packets (``--fast-send``).

aiortc's ``RTCRtpSender`` spends, per RTP packet of every viewer: an ``RtpPacket`` object, header
extension serialization, SRTP, a chain of coroutines down to asyncio's ``sendto`` and one system
call. Here, per room, each ``av.Packet`` is packetized **once** (:class:`RoomPacketizer`: the
payloads, VP8 descriptor included, are the same for every viewer); per viewer, a
:class:`ViewerLink` writes the 12-byte RTP header and the header extensions (``mid``,
``abs-send-time``, computed once per frame), SRTP-protects each packet with the viewer's own
context, and hands all datagrams of the frame to the kernel at once (relay/udpbatch.py: UDP GSO,
``sendmmsg`` or ``sendto``). The viewer's :class:`FastTrack` sends from ``push()`` itself, on
the event loop, when the room delivers a packet: no task wake-up per viewer and frame.

aiortc keeps ICE, DTLS, the SRTP keys and RTCP: its sender still receives RR/NACK/PLI (PLI goes
to the room, relay/fanout.py), sends sender reports from the counters we update (so the
viewer's RTT/lip-sync work as before), and its NACK handling retransmits from our bounded
history (RTX when negotiated). Its RTP loop idles: :meth:`FastTrack.recv` never returns a packet
while the fast path is attached.

**Every access to aiortc/aioice private API is in this module** (aiortc 1.16.0 is pinned).
:func:`problems` checks the class-level names at start and :meth:`ViewerLink.attach` the instance
names per viewer; if any is missing, the viewer falls back to aiortc's own send loop (the
``FastTrack`` then behaves exactly as a ``PacketTrack``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiortc
import av
from aiortc import RTCRtpSender, clock
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtp import HeaderExtensions

from relay.fanout import PacketTrack
from relay.udpbatch import MODES, Datapath

logger = logging.getLogger(__name__)

HISTORY_SIZE = 512  # RTP packets kept per viewer for NACK (~3 s at 1.5 Mbps); aiortc keeps 128
PACKETIZED_CACHE = 64  # room packets whose payloads are kept (a new viewer's backlog is <= 30)
_RTP = struct.Struct("!BBHLL")
_EXT = struct.Struct("!HH")
_SENDER = "_RTCRtpSender__"
_SENDER_FIELDS = ("ntp_timestamp", "rtp_timestamp", "octet_count", "packet_count", "mid")
_DTLS_STATS = ("_RTCDtlsTransport__tx_bytes", "_RTCDtlsTransport__tx_packets")
_NTP, _RTP_TS, _OCTETS, _PACKETS = (_SENDER + n for n in _SENDER_FIELDS[:4])
NTP_REUSE_NS = 1_000_000  # viewers served within 1 ms of each other share one NTP reading (abs-send-time)


def problems() -> list[str]:
    """Class-level private names this module needs that aiortc/aioice do not have (empty: OK)."""
    from aioice import Connection

    missing = [
        f"RTCRtpSender.{n}"
        for n in ("_handle_rtcp_packet", "_retransmit", "send")
        if not hasattr(RTCRtpSender, n)
    ]
    missing += [f"RTCDtlsTransport.{n}" for n in ("_send_rtp",) if not hasattr(RTCDtlsTransport, n)]
    if not hasattr(Connection, "sendto"):
        missing.append("aioice.Connection.sendto")
    if not (hasattr(Vp8Encoder, "pack") and hasattr(OpusEncoder, "pack")):
        missing.append("aiortc codecs .pack")
    if not hasattr(State, "CONNECTED"):
        missing.append("aiortc.rtcdtlstransport.State.CONNECTED")
    return missing


class RoomPacketizer:
    """One per room and kind: payloads of each ``av.Packet`` computed once (aiortc's packetizer,
    so the VP8 picture id runs per room), cached for the last ``PACKETIZED_CACHE`` packets."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.mime = "video/vp8" if kind == "video" else "audio/opus"
        self._encoder: Any = Vp8Encoder() if kind == "video" else OpusEncoder()
        self._cache: dict[int, tuple[av.Packet[Any], list[bytes], int]] = {}
        self._order: list[int] = []
        self.packed = 0
        self._ntp = (-NTP_REUSE_NS, 0)  # (monotonic ns, NTP time) of the last reading

    def ntp_now(self) -> int:
        """NTP time now, read at most once per ``NTP_REUSE_NS`` (aiortc's reading costs ~2.5 µs,
        and a frame goes to every viewer within a few ms)."""
        now = time.monotonic_ns()
        if now - self._ntp[0] >= NTP_REUSE_NS:
            self._ntp = (now, clock.current_ntp_time())
        return self._ntp[1]

    def pack(self, packet: av.Packet[Any]) -> tuple[list[bytes], int]:
        hit = self._cache.get(id(packet))
        if hit is not None and hit[0] is packet:
            return hit[1], hit[2]
        payloads, timestamp = self._encoder.pack(packet)
        self.packed += 1
        self._cache[id(packet)] = (packet, payloads, timestamp)
        self._order.append(id(packet))
        if len(self._order) > PACKETIZED_CACHE:
            self._cache.pop(self._order.pop(0), None)
        return payloads, timestamp


@dataclass
class LinkStats:
    frames: int = 0
    packets: int = 0
    retransmits: int = 0
    retransmit_misses: int = 0
    cpu_ns: int = 0  # thread CPU time spent in send_packets (headers, SRTP, system calls)
    first_is_keyframe: bool | None = None  # of the first packet sent (the gate's job: True for video)
    retransmitted: deque[int] = field(default_factory=lambda: deque(maxlen=32))  # last sequence numbers


class ViewerLink:
    """One viewer's RTP stream of one kind, sent by us on aiortc's DTLS/ICE transport."""

    def __init__(self, sender: RTCRtpSender, packetizer: RoomPacketizer, mode: str) -> None:
        self._sender = sender
        self._packetizer = packetizer
        self._mode = mode
        self._params: Any = None  # RTCRtpSendParameters, captured from sender.send()
        self._pt = 0
        self._rtx_pt: int | None = None
        self._seq = random.randint(0, 32767)  # lower half, as aiortc (SRTP rollover)
        self._rtx_seq = random.randint(0, 32767)
        self._ts_origin = random.getrandbits(32)
        self._history: list[tuple[int, int, int, bytes, bytes] | None] = [None] * HISTORY_SIZE
        self._path: Datapath | None = None
        self._ext: tuple[int, bytes, int | None] | None = None  # ext_template, made on the first send
        self._closed = False
        self.failed = False  # negotiated something we do not handle: aiortc's loop sends
        self.stats = LinkStats()

    @classmethod
    def attach(cls, sender: RTCRtpSender, packetizer: RoomPacketizer, mode: str) -> ViewerLink | None:
        """Take over ``sender``'s RTP (not its RTCP); None if this aiortc lacks what we use."""
        missing = [
            n for n in _SENDER_FIELDS + ("rtp_header_extensions_map",) if not hasattr(sender, _SENDER + n)
        ]
        missing += [n for n in ("_ssrc", "_rtx_ssrc") if not hasattr(sender, n)]
        dtls = sender.transport
        missing += [n for n in ("_tx_srtp", "_state", *_DTLS_STATS) if not hasattr(dtls, n)]
        if not hasattr(dtls.transport, "_connection") or not hasattr(
            dtls.transport._connection, "_nominated"
        ):
            missing.append("RTCIceTransport._connection._nominated")
        if missing:
            logger.warning("fast send unavailable (aiortc private API changed: %s); using aiortc's", missing)
            return None
        link = cls(sender, packetizer, mode)
        original_send = sender.send

        async def send(parameters: Any) -> None:
            link._configure(parameters)
            await original_send(parameters)

        sender.send = send  # type: ignore[method-assign]
        sender._retransmit = link.retransmit  # type: ignore[method-assign]
        return link

    def _configure(self, parameters: Any) -> None:
        codec = parameters.codecs[0]
        if codec.mimeType.lower() != self._packetizer.mime:
            logger.warning(
                "fast send: negotiated %s, not %s; using aiortc's", codec.mimeType, self._packetizer.mime
            )
            self.failed = True
            return
        self._pt = codec.payloadType
        for c in parameters.codecs:
            if c.mimeType.lower().endswith("/rtx") and c.parameters.get("apt") == codec.payloadType:
                self._rtx_pt = c.payloadType
                break
        self._params = parameters

    def ready(self) -> bool:
        """Negotiated and DTLS connected (and the ICE pair chosen); opens the datapath once."""
        if self._closed or self._params is None or self.failed:
            return False
        dtls = self._sender.transport
        if dtls._state != State.CONNECTED:
            if self._path is not None and dtls._state in (State.CLOSED, State.FAILED):
                self.close()
            return False
        if self._path is None:
            pair = dtls.transport._connection._nominated.get(1)
            if pair is None:
                return False
            dgram = pair.protocol.transport
            tsock = dgram.get_extra_info("socket")
            self._path = Datapath(
                tsock.fileno(), tsock.family, pair.remote_addr, self._mode, _spill(dgram, pair.remote_addr)
            )
            logger.debug(
                "fast send: %s ssrc %d pt %d to %s (%s)",
                self._packetizer.kind,
                self._sender._ssrc,
                self._pt,
                pair.remote_addr,
                self._path.mode,
            )
        return True

    def _ext_block(self, abs_send_time: int) -> tuple[int, bytes]:
        """(first header byte, extension block) as aiortc's map writes them (``mid``, abs-send-time)."""
        ext_map = getattr(self._sender, _SENDER + "rtp_header_extensions_map")
        values = HeaderExtensions()
        values.abs_send_time = abs_send_time
        values.mid = getattr(self._sender, _SENDER + "mid")
        profile, value = ext_map.set(values)
        return (0x90, _EXT.pack(profile, len(value) >> 2) + value) if value else (0x80, b"")

    def _ext_for(self, ntp: int) -> tuple[int, bytes]:
        """The extension block for a send at ``ntp``: aiortc's map runs once per link (a template),
        then only the abs-send-time bytes change (:func:`ext_template`)."""
        abs_send_time = (ntp >> 14) & 0x00FFFFFF
        if self._ext is None:
            self._ext = ext_template(self._ext_block)
        b0, block, offset = self._ext
        if offset is None:
            return b0, block
        if offset < 0:  # the map's output did not fit the template: build it every time
            return self._ext_block(abs_send_time)
        return b0, block[:offset] + abs_send_time.to_bytes(3, "big") + block[offset + 3 :]

    def send_packets(self, packets: Sequence[av.Packet[Any]]) -> None:
        """Packetize (shared), build headers, protect and send all ``packets`` in one batch."""
        t0 = time.thread_time_ns()
        sender, dtls = self._sender, self._sender.transport
        if self.stats.first_is_keyframe is None and packets:
            self.stats.first_is_keyframe = bool(packets[0].is_keyframe)
        protect = dtls._tx_srtp.protect
        ntp = self._packetizer.ntp_now()
        b0, ext = self._ext_for(ntp)
        ssrc, pt, seq, history = sender._ssrc, self._pt, self._seq, self._history
        out: list[bytes] = []
        octets = 0
        timestamp = 0
        for packet in packets:
            payloads, ts = self._packetizer.pack(packet)
            timestamp = (self._ts_origin + ts) & 0xFFFFFFFF
            last = len(payloads) - 1
            for i, payload in enumerate(payloads):
                b1 = (0x80 | pt) if i == last else pt
                history[seq % HISTORY_SIZE] = (seq, b1, timestamp, ext, payload)
                out.append(protect(_RTP.pack(b0, b1, seq, timestamp, ssrc) + ext + payload))
                octets += len(payload)
                seq = (seq + 1) & 0xFFFF
            self.stats.frames += 1
        self._seq = seq
        if self._path is not None:
            self._path.send(out)
        # what aiortc's RTP loop would have recorded (its RTCP loop sends them as sender reports)
        n = len(out)
        self.stats.packets += n
        setattr(sender, _NTP, ntp)
        setattr(sender, _RTP_TS, timestamp)
        setattr(sender, _OCTETS, getattr(sender, _OCTETS) + octets)
        setattr(sender, _PACKETS, getattr(sender, _PACKETS) + n)
        setattr(dtls, _DTLS_STATS[0], getattr(dtls, _DTLS_STATS[0]) + sum(len(d) for d in out))
        setattr(dtls, _DTLS_STATS[1], getattr(dtls, _DTLS_STATS[1]) + n)
        self.stats.cpu_ns += time.thread_time_ns() - t0

    async def retransmit(self, sequence_number: int) -> None:
        """NACK: resend from our history (as RTX if negotiated), through aiortc's transport."""
        entry = self._history[sequence_number % HISTORY_SIZE]
        if entry is None or entry[0] != sequence_number or self._closed:
            self.stats.retransmit_misses += 1
            return
        seq, b1, timestamp, ext, payload = entry
        b0 = 0x90 if ext else 0x80
        if self._rtx_pt is not None:
            b1 = (b1 & 0x80) | self._rtx_pt
            data = _RTP.pack(b0, b1, self._rtx_seq, timestamp, self._sender._rtx_ssrc) + ext
            data += struct.pack("!H", seq) + payload
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        else:
            data = _RTP.pack(b0, b1, seq, timestamp, self._sender._ssrc) + ext + payload
        self.stats.retransmits += 1
        self.stats.retransmitted.append(seq)
        try:
            await self._sender.transport._send_rtp(data)
        except ConnectionError:
            pass

    def close(self) -> None:
        self._closed = True
        if self._path is not None:
            self._path.close()
            self._path = None

    @property
    def path(self) -> Datapath | None:
        return self._path


def ext_template(build: Callable[[int], tuple[int, bytes]]) -> tuple[int, bytes, int | None]:
    """``(b0, block, offset)`` from ``build(abs_send_time) -> (b0, block)``: where the 3 abs-send-time
    bytes sit in the block (None: there are none, the block is constant; -1: they could not be found,
    build every time). Pure given ``build``."""
    b0, low = build(0)
    b0_high, high = build(0xFFFFFF)
    if low == high and b0 == b0_high:
        return b0, low, None
    diff = [i for i in range(min(len(low), len(high))) if low[i] != high[i]]
    if len(low) != len(high) or b0 != b0_high or len(diff) != 3 or diff[2] - diff[0] != 2:
        return b0, low, -1
    return b0, low, diff[0]


SPILL_MAX_BYTES = (
    1 << 20
)  # asyncio's datagram buffer is unbounded: past this, a datagram is dropped (NACK may recover)


def _spill(dgram: Any, addr: tuple[str, int]) -> Callable[[bytes], None]:
    """Where datagrams the kernel did not take (EAGAIN) go: asyncio's transport, bounded."""

    def spill(data: bytes) -> None:
        if dgram.get_write_buffer_size() < SPILL_MAX_BYTES:
            dgram.sendto(data, addr)

    return spill


class FastTrack(PacketTrack):
    """A viewer's :class:`PacketTrack` that, once its :class:`ViewerLink` is ready, sends what the
    room pushes right away (keyframe gate and bounded queue unchanged: packets wait in the queue
    until DTLS is up). While a link is attached, ``recv()`` (aiortc's RTP loop) gets nothing."""

    def __init__(
        self,
        kind: str,
        maxlen: int,
        *,
        gated: bool,
        on_overflow: Callable[[], None] | None = None,
        packetizer: RoomPacketizer,
    ) -> None:
        super().__init__(kind, maxlen, gated=gated, on_overflow=on_overflow)
        self.packetizer = packetizer
        self.link: ViewerLink | None = None
        self._idle = asyncio.Event()

    def push(self, packet: av.Packet[Any]) -> None:
        super().push(packet)
        link = self.link
        if link is None or not self._queue:
            return
        if link.failed:
            self.detach()
        elif link.ready():
            packets = list(self._queue)
            self._queue.clear()
            self.packets_out += len(packets)
            link.send_packets(packets)

    def detach(self) -> None:
        """Back to aiortc's RTP loop (the link could not be used)."""
        if self.link is not None:
            self.link.close()
            self.link = None
        self._idle.set()

    async def recv(self) -> av.Packet[Any]:
        while self.link is not None and self.readyState == "live":
            self._idle.clear()
            await self._idle.wait()
        return await super().recv()

    def stop(self) -> None:
        super().stop()
        if self.link is not None:
            self.link.close()
        self._idle.set()


class FastSend:
    """Per room: the shared packetizers, the track factories for ``add_viewer`` and ``attach``."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._packetizers = {k: RoomPacketizer(k) for k in ("video", "audio")}

    @classmethod
    def create(cls, enabled: bool, mode: str) -> FastSend | None:
        """A FastSend if ``enabled`` and this aiortc has what we use (else None: aiortc's path)."""
        if mode not in MODES:
            raise ValueError(f"fast_send_syscall must be one of {MODES}, not {mode!r}")
        if not enabled:
            return None
        missing = problems()
        if missing:
            logger.warning("fast send disabled: aiortc %s lacks %s", aiortc.__version__, missing)
            return None
        return cls(mode)

    def track(
        self, kind: str, maxlen: int, *, gated: bool, on_overflow: Callable[[], None] | None = None
    ) -> FastTrack:
        """A track factory with :class:`PacketTrack`'s signature (``encoder.add_viewer(fast.track)``)."""
        return FastTrack(
            kind, maxlen, gated=gated, on_overflow=on_overflow, packetizer=self._packetizers[kind]
        )

    def attach(self, sender: RTCRtpSender, track: PacketTrack) -> bool:
        """Send ``track`` through our path on ``sender``; False (aiortc's path) if not possible."""
        if not isinstance(track, FastTrack):
            return False
        track.link = ViewerLink.attach(sender, track.packetizer, self.mode)
        return track.link is not None
