"""A stream published on another node, watched from this one (issue #15, several nodes).

:class:`RemoteRoom` is what :class:`relay.cluster_registry.ClusterRegistry` returns for a stream
whose owner is another node: the same viewer API as :class:`relay.room.Room` (``add_viewer``,
``remove_viewer``, ``close``), but no pipeline: the owner's node runs the detector, the mosaic and
the fail-closed rules and sends its encoded-once, already sanitized VP8 + Opus as plain RTP to
this node (relay/rtp_forward.py), where :class:`RemoteMedia` receives it (relay/rtp_receive.py)
and fans it out to this node's viewers with their own senders (relay/packets.py or
relay/fastsend.py), exactly as a local room's encoders do. One forward per stream and node,
however many viewers here: it is asked for with the first viewer and dropped with the last (the
room then closes quietly: the stream goes on elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import av

from relay import negotiation
from relay.egress_codecs import viewer_video_codec
from relay.errors import Conflict, LimitExceeded, NotFound, RelayError
from relay.fastsend import FastSend
from relay.negotiation import CLOSE_STEP_TIMEOUT_S
from relay.packets import AUDIO_QUEUE_PACKETS, VIDEO_QUEUE_PACKETS, PacketTrack
from relay.room import Room, StreamInfo
from relay.rtp_receive import RtpDepacketizer, RtpReceiver

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection

    from relay.cluster_registry import ClusterRegistry

logger = logging.getLogger(__name__)

QUIET_REASONS = ("no_viewers", "stream_gone")  # closes of the local copy only: nobody is told


@dataclass(frozen=True)
class ForwardTarget:
    """Where the owner's node sends a stream's RTP for this node."""

    host: str
    video_port: int
    audio_port: int  # 0: the stream has no audio

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "video_port": self.video_port, "audio_port": self.audio_port}


class RemoteSource:
    """One kind of a remote stream: received packets -> this node's viewer tracks (as a room's
    encoder does for local viewers). Video viewers are gated to a keyframe; keyframe requests
    (joins, PLI/FIR, overflow, loss) go to the owner's node, at most one per ``min_interval_s``
    (a request inside the interval is sent at its end, not lost)."""

    codec = "vp8"

    def __init__(self, kind: str, ask_keyframe: Callable[[], None], min_interval_s: float) -> None:
        self.kind = kind
        self._ask = ask_keyframe
        self._min_interval_s = min_interval_s
        self._viewers: set[PacketTrack] = set()
        self._last_ask = float("-inf")
        self._deferred: asyncio.TimerHandle | None = None
        self.packets = 0
        self.keyframe_requests = 0

    def add_viewer(self, make: Callable[..., PacketTrack] = PacketTrack) -> PacketTrack:
        if self.kind == "video":
            track = make("video", VIDEO_QUEUE_PACKETS, gated=True, on_overflow=self.request_keyframe)
            self.request_keyframe()
        else:
            track = make("audio", AUDIO_QUEUE_PACKETS, gated=False)
        self._viewers.add(track)
        return track

    def remove_viewer(self, track: PacketTrack) -> None:
        self._viewers.discard(track)
        track.stop()

    @property
    def viewer_count(self) -> int:
        return len(self._viewers)

    def request_keyframe(self) -> None:
        if self._deferred is not None:
            return
        wait = self._last_ask + self._min_interval_s - time.monotonic()
        if wait <= 0:
            self._send_request()
        else:
            self._deferred = asyncio.get_running_loop().call_later(wait, self._send_request)

    def _send_request(self) -> None:
        self._deferred = None
        self._last_ask = time.monotonic()
        self.keyframe_requests += 1
        self._ask()

    def deliver(self, packet: av.Packet[Any]) -> None:
        self.packets += 1
        for track in self._viewers:
            track.push(packet)

    def stop(self) -> None:
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        for track in list(self._viewers):
            track.stop()
        self._viewers.clear()


class RemoteMedia:
    """The receiving end of one forward: a UDP socket per kind on ``host``, packets from ``source``
    (the owner's node address) only."""

    def __init__(
        self, *, host: str, source: str, audio: bool, ask_keyframe: Callable[[], None], fast: FastSend | None
    ) -> None:
        self._host = host
        self.video = RemoteSource("video", ask_keyframe, 0.5)
        self.audio = RemoteSource("audio", ask_keyframe, 0.5) if audio else None
        self.fast = fast
        self._receivers = [
            RtpReceiver(
                RtpDepacketizer("video", self.video.deliver, self.video.request_keyframe), host, source
            )
        ]
        if self.audio is not None:
            self._receivers.append(RtpReceiver(RtpDepacketizer("audio", self.audio.deliver), host, source))
        self.target: ForwardTarget | None = None

    async def start(self) -> ForwardTarget:
        try:
            ports = [await r.start() for r in self._receivers]
        except BaseException:
            self.stop()
            raise
        self.target = ForwardTarget(self._host, ports[0], ports[1] if len(ports) > 1 else 0)
        return self.target

    @property
    def receivers(self) -> list[RtpReceiver]:
        return list(self._receivers)

    def stop(self) -> None:
        for r in self._receivers:
            r.close()
        self.video.stop()
        if self.audio is not None:
            self.audio.stop()


@dataclass
class _RemoteViewer:
    pc: RTCPeerConnection
    video: PacketTrack
    audio: PacketTrack | None


class RemoteRoom(Room):
    """A stream owned by node ``owner``: viewers here, media from there."""

    def __init__(
        self, registry: ClusterRegistry, info: StreamInfo, key_digest: bytes, *, owner: str, audio: bool
    ) -> None:
        super().__init__(registry, info, key_digest)
        self._cluster = registry
        self.owner = owner
        self.has_audio = audio
        self.remote: RemoteMedia | None = None
        self._remote_viewers: dict[str, _RemoteViewer] = {}
        self._joining = 0  # add_viewer calls under way
        self.lost = False  # its node was lost (the stream_ended this node announces says node_lost)

    async def publish(self, key: str, sdp: str, type: str) -> dict[str, str]:
        self.check_key(key)
        raise Conflict("this stream is published on another node")

    def set_switches(self, key: str, *, mosaic: bool | None = None, text_net: bool | None = None) -> None:
        self.check_key(key)
        raise Conflict("switch this stream on the node it is published from")

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def viewer_ids(self) -> list[str]:
        return list(self._remote_viewers)

    async def _media(self) -> RemoteMedia:
        if self.remote is None:
            self.remote = RemoteMedia(
                host=self._cluster.node_address,
                source=self._cluster.address_of(self.owner),
                audio=self.has_audio,
                ask_keyframe=lambda: self._cluster.ask_keyframe(self.owner, self.stream_id),
                fast=FastSend.create(self._settings.fast_send == "on", self._settings.fast_send_syscall),
            )
            await self.remote.start()
            self._cluster.forwards_changed()
        return self.remote

    async def add_viewer(self, viewer_id: str, sdp: str, type: str) -> dict[str, str]:
        self._joining += 1
        try:
            answer = await self._add_viewer(viewer_id, sdp, type)
        except BaseException:
            self._joining -= 1
            self._close_if_unwatched()  # a copy nobody watches does not linger (made by get() for this)
            raise
        self._joining -= 1
        return answer

    async def _add_viewer(self, viewer_id: str, sdp: str, type: str) -> dict[str, str]:
        if self._closing or not self.info.live:
            raise NotFound("stream is closed")
        if viewer_id in self._remote_viewers:
            raise Conflict("viewer id is already watching this stream")
        if len(self._remote_viewers) >= self._settings.max_viewers_per_stream:
            raise LimitExceeded(
                f"at most {self._settings.max_viewers_per_stream} viewers per stream and node"
            )
        parsed = negotiation.parse_offer(sdp, type, self._settings.max_sdp_bytes)
        if viewer_video_codec(parsed) != "vp8":
            raise RelayError("a stream of another node is relayed in VP8 only", code="unsupported_codec")
        media = await self._media()
        pc = self._registry.peers.new()
        video = media.video.add_viewer(media.fast.track if media.fast is not None else PacketTrack)
        audio = None
        if media.audio is not None and negotiation.offer_takes_opus(parsed):
            audio = media.audio.add_viewer(media.fast.track if media.fast is not None else PacketTrack)
        viewer = _RemoteViewer(pc, video, audio)
        self._remote_viewers[viewer_id] = viewer
        try:
            negotiation.add_viewer_tracks(pc, video, audio, media.video.request_keyframe, "vp8", media.fast)
            answer = await negotiation.answer_offer(pc, sdp)
            if self._closing:
                raise NotFound("stream is closed")
        except BaseException:
            if self._remote_viewers.get(viewer_id) is viewer:
                del self._remote_viewers[viewer_id]
            await self._drop(viewer)
            raise
        pc.on("connectionstatechange", lambda: self._on_remote_viewer_state(viewer_id, pc))
        self.metrics.set_viewers(len(self._remote_viewers))
        self._registry.emit_soon("stream_updated", self)
        return answer

    def _on_remote_viewer_state(self, viewer_id: str, pc: RTCPeerConnection) -> None:
        v = self._remote_viewers.get(viewer_id)
        if not self._closing and v is not None and v.pc is pc and pc.connectionState in ("failed", "closed"):
            self._tasks.create(self.remove_viewer(viewer_id), f"drop-viewer-{viewer_id[:16]}")

    async def _drop(self, v: _RemoteViewer) -> None:
        media = self.remote
        if media is not None:
            media.video.remove_viewer(v.video)
            if v.audio is not None and media.audio is not None:
                media.audio.remove_viewer(v.audio)
        v.video.stop()
        if v.audio is not None:
            v.audio.stop()
        await self._registry.peers.close(v.pc)

    async def remove_viewer(self, viewer_id: str) -> None:
        v = self._remote_viewers.pop(viewer_id, None)
        if v is None:
            return
        self._previews.discard(viewer_id)
        self.metrics.set_viewers(len(self._remote_viewers))
        await self._drop(v)
        if not self._closing:
            self._registry.emit_soon("stream_updated", self)
            self._close_if_unwatched()

    def _close_if_unwatched(self) -> None:
        if not self._remote_viewers and not self._joining and not self._closing:
            self._cluster.close_remote_soon(self, "no_viewers")

    async def close(self, reason: str = "stopped") -> None:
        """Close this node's copy. ``no_viewers``/``stream_gone``: quietly (the owner's node told
        everyone, or the stream goes on); ``node_lost``: this node announces ``stream_ended`` (it won
        the claim); anything else (a stop with the publish key here) asks the owner to end it."""
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        if reason != "no_viewers":  # (else the stream goes on elsewhere)
            self.info.live = False
        if reason not in QUIET_REASONS and reason != "node_lost":
            self._cluster.ask_end(self.owner, self.stream_id, reason)
        try:
            viewers = list(self._remote_viewers.values())
            self._remote_viewers.clear()
            await asyncio.gather(*(self._drop(v) for v in viewers), return_exceptions=True)
            if self.remote is not None:
                self.remote.stop()
                self.remote = None
                self._cluster.forwards_changed()
            await self._tasks.close(CLOSE_STEP_TIMEOUT_S)
        finally:
            self.metrics.close()
            self._registry.forget(self, False)
            self.closed.set()
        if reason == "node_lost":
            self.lost = True
            await self._registry.emit("stream_ended", self)
        logger.info("stream %s: this node's copy closed (%s)", self.stream_id, reason)
