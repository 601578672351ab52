"""A viewer's track of the room's shared packets (bounded queue, keyframe gate), and PLI/FIR routing.

This relies on aiortc 1.16.0 internals (``RTCRtpSender._handle_rtcp_packet`` and the ``av.Packet``
path of ``_next_encoded_frame``); requirements.txt pins it and tests/test_fanout.py checks both.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import av
from aiortc import RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket

VIDEO_QUEUE_PACKETS = 30  # ~1 s at 30 fps; overflow => skip to the next keyframe
AUDIO_QUEUE_PACKETS = 25  # 0.5 s of 20 ms packets; overflow => drop the oldest


class PacketTrack(MediaStreamTrack):
    """A viewer's track: the room's shared packets from a bounded queue."""

    def __init__(
        self,
        kind: str,
        maxlen: int,
        *,
        gated: bool,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self._queue: deque[av.Packet[Any]] = deque()
        self._maxlen = maxlen
        self._event = asyncio.Event()
        self.gated = gated  # waiting for a keyframe
        self._on_overflow = on_overflow
        self.packets_in = 0
        self.packets_out = 0
        self.packets_dropped = 0
        self.overflows = 0

    def push(self, packet: av.Packet[Any]) -> None:
        if self.readyState != "live":
            return
        self.packets_in += 1
        if self.gated:
            if not packet.is_keyframe:
                self.packets_dropped += 1
                return
            self.gated = False
        if len(self._queue) >= self._maxlen:
            self.overflows += 1
            if self.kind == "video":
                # newest wins: skip to the next keyframe rather than play a stale backlog
                self.packets_dropped += len(self._queue) + (0 if packet.is_keyframe else 1)
                self._queue.clear()
                if not packet.is_keyframe:
                    self.gated = True
                    if self._on_overflow is not None:
                        self._on_overflow()
                    return
            else:
                self._queue.popleft()
                self.packets_dropped += 1
        self._queue.append(packet)
        self._event.set()

    async def recv(self) -> av.Packet[Any]:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._event.clear()
            await self._event.wait()
        if self.readyState != "live":
            raise MediaStreamError
        self.packets_out += 1
        return self._queue.popleft()

    def stop(self) -> None:
        super().stop()
        self._queue.clear()
        self._event.set()


def hook_keyframe_requests(sender: RTCRtpSender, on_request: Callable[[], None]) -> None:
    """Route PLI/FIR that reach ``sender`` to ``on_request`` (aiortc ignores them for packets).

    aiortc 1.16.0 delivers RTCP to ``sender._handle_rtcp_packet(packet)`` via attribute lookup
    on the instance (``RTCDtlsTransport._handle_rtcp_data``), so wrapping it per instance is enough.
    """
    original = sender._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            on_request()
        await original(packet)

    sender._handle_rtcp_packet = handle  # type: ignore[method-assign]
