"""A room: one publisher, its media (pipeline, encoder, audio: relay/media.py), N viewers.

Rooms are made by :class:`relay.registry.RoomRegistry` (re-exported here, with :class:`StreamInfo`
and :func:`live_peer_connection_count`, for ``signaling/`` and the tests). SDP checks and peer
connections are relay/negotiation.py's.

Errors raised to the signaling layer: ``Forbidden`` (bad publish key), ``NotFound`` (unknown,
closed or not-yet-live stream), ``Conflict`` (second publish, duplicate viewer id),
``LimitExceeded`` (``max_viewers_per_stream``), ``BadRequest`` (malformed or oversized SDP, wrong
type, offer without video) and ``RelayError(code="unsupported_codec")`` (a viewer's offer without
VP8 or H.264 constrained baseline: relay/egress_codecs.py; a publisher's without VP8 or usable H.264).
A peer connection half-made by a failed request is always closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

from aiortc import RTCPeerConnection

from relay import negotiation
from relay.channels import keys_match
from relay.egress_codecs import viewer_video_codec
from relay.errors import BadRequest, Conflict, Forbidden, LimitExceeded, NotFound, RelayError
from relay.fanout import AudioEncoder, PacketTrack, RoomEncoder
from relay.fastsend import FastSend
from relay.janus_room import RoomJanus, hang_up
from relay.media import RoomMedia
from relay.negotiation import CLOSE_STEP_TIMEOUT_S, live_peer_connection_count
from relay.pipeline import Pipeline
from relay.restream import RestreamSet
from relay.tasks import TaskSet

if TYPE_CHECKING:
    from relay.metrics import StreamMetrics
    from relay.registry import RoomRegistry
    from relay.settings import Settings

logger = logging.getLogger(__name__)

PUBLISHER_MEDIA_TIMEOUT_S = 10.0  # no video from a live publisher for this long => the room closes

__all__ = ["Room", "RoomRegistry", "StreamInfo", "live_peer_connection_count"]


@dataclass
class StreamInfo:
    stream_id: str
    title: str
    category: str
    created_at: float
    started_at: float | None = None
    live: bool = False
    viewer_count: int = 0
    mosaic: bool = True
    private: bool = False
    text_net: bool = False  # the text/barcode safety net runs on this stream (relay/textnet.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Viewer:
    pc: RTCPeerConnection
    encoder: RoomEncoder  # the encoder of the viewer's codec, which feeds ``video``
    video: PacketTrack
    audio: PacketTrack | None


class _MediaViews:
    """Read-only views of a room's media for tools and tests (``None`` before publish)."""

    media: RoomMedia | None
    _tasks: TaskSet

    @property
    def pipeline(self) -> Pipeline | None:
        return self.media.pipeline if self.media else None

    sanitizer = pipeline  # the name tests and tools used for the pipeline before issue #10

    @property
    def encoder(self) -> RoomEncoder | None:
        """The VP8 encoder (``media.encoders`` has every running one)."""
        return self.media.encoder if self.media else None

    @property
    def audio(self) -> AudioEncoder | None:
        return self.media.audio if self.media else None

    @property
    def fast(self) -> FastSend | None:
        """The room's batched send path (relay/fastsend.py), if it runs."""
        return self.media.fast if self.media else None

    @property
    def task_count(self) -> int:
        return len(self._tasks) + (self.media.task_count if self.media else 0)


class _ViewerCounts:
    """A room's viewer bookkeeping: direct viewers, Janus's (relay/janus_room.py), previews."""

    info: StreamInfo
    media: RoomMedia | None
    metrics: StreamMetrics
    janus: RoomJanus | None
    _viewers: dict[str, _Viewer]
    _previews: set[str]
    _settings: Settings
    _registry: RoomRegistry
    _tasks: TaskSet
    _closing: bool

    async def remove_viewer(self, viewer_id: str) -> None:
        raise NotImplementedError

    def _check_direct_limit(self) -> None:
        if len(self._viewers) >= self._settings.max_viewers_per_stream:
            raise LimitExceeded(f"at most {self._settings.max_viewers_per_stream} viewers per stream")

    def set_preview(self, viewer_id: str, preview: bool) -> None:
        """Mark ``viewer_id`` (now or when it joins) as the publisher's own preview: not counted
        in ``mosaic_relay_viewers`` nor in the stats snapshot (the signaling layer knows who it is)."""
        (self._previews.add if preview else self._previews.discard)(viewer_id)
        self._count_previews()

    def _count_previews(self) -> None:
        self.metrics.set_previews(len(self._previews & self._viewers.keys()))

    def _viewers_changed(self) -> None:
        """Recount (direct viewers and Janus's) and tell the signaling layer."""
        janus = self.janus
        self.info.viewer_count = len(self._viewers) + (janus.viewer_count if janus else 0)
        if janus is not None and self.media is not None:
            self.media.set_external(janus.forward_count, janus.viewer_count)
        self._count_previews()
        if not self._closing:
            self._registry.emit_soon("stream_updated", cast("Room", self))

    def _start_janus(self, media: RoomMedia) -> None:
        """With --janus-url: the room's mountpoint, made in the background (viewers go direct until)."""
        egress = self._registry.janus
        if egress is None:
            return
        name = f"room-{self.info.stream_id}"
        gone = self._janus_viewer_gone
        self.janus = RoomJanus(egress, name, media.encoder, media.audio, gone, self._viewers_changed)
        self._tasks.create(self.janus.open_quietly(), "janus-open")

    def _janus_viewer_gone(self, viewer_id: str) -> None:
        if not self._closing:
            self._tasks.create(self.remove_viewer(viewer_id), f"drop-viewer-{viewer_id[:16]}")

    @property
    def viewer_ids(self) -> list[str]:
        return list(self._viewers) + (self.janus.viewer_ids if self.janus is not None else [])


class Room(_MediaViews, _ViewerCounts):
    """One stream. Made by :meth:`RoomRegistry.create`; closed by :meth:`close` (idempotent)."""

    def __init__(
        self, registry: RoomRegistry, info: StreamInfo, key_digest: bytes, *, channel: bool = False
    ) -> None:
        self._registry = registry
        self._settings = registry.settings
        self.info = info
        self._key_digest = key_digest  # SHA-256 of the publish key (relay/channels.py key_digest)
        self.channel = channel  # a persistent channel's room (--channels): never expires
        self._tasks = TaskSet(f"room-{info.stream_id}")
        self._publisher_pc: RTCPeerConnection | None = None
        self.media: RoomMedia | None = None
        self.metrics = registry.metrics.stream(info.stream_id)
        self._viewers: dict[str, _Viewer] = {}
        self._previews: set[str] = set()  # viewer ids that are the publisher page's own preview
        self.restreams = RestreamSet.from_settings(self._settings, name=f"room-{info.stream_id}")
        self.janus: RoomJanus | None = None  # the Janus egress (--janus-url), from publish on
        self._closing = False
        self.closed = asyncio.Event()

    @property
    def stream_id(self) -> str:
        return self.info.stream_id

    @property
    def key_digest(self) -> bytes:
        """SHA-256 of the publish key (what several nodes share over Redis: relay/cluster_registry.py)."""
        return self._key_digest

    def check_key(self, key: str) -> None:
        """Constant time (SHA-256 digests compared with hmac.compare_digest); raises Forbidden."""
        if not keys_match(key, self._key_digest):
            raise Forbidden("wrong publish key")

    # --- publisher ---------------------------------------------------------------------------

    async def publish(self, key: str, sdp: str, type: str) -> dict[str, str]:
        self.check_key(key)
        if self._closing:
            raise NotFound("stream is closed")
        if self._publisher_pc is not None:
            raise Conflict("stream is already being published")
        parsed = negotiation.parse_offer(sdp, type, self._settings.max_sdp_bytes)
        pc = self._publisher_pc = self._registry.peers.new()
        try:
            video, audio = await negotiation.accept_publisher(pc, sdp, parsed)
            if video is None:
                raise BadRequest("the offer does not send video")
            self.media = self._registry.room_media(self, video, audio)
            self.media.apply_switches(self.info.mosaic, self.info.text_net)
            answer = await negotiation.answer_offer(pc)
        except BaseException as exc:
            await self._abort_publish(pc)
            if self._closing and not isinstance(exc, RelayError):
                raise NotFound("stream is closed") from exc
            raise
        if self._closing:  # closed while negotiating
            await self._abort_publish(pc)
            raise NotFound("stream is closed")
        pc.on("connectionstatechange", lambda: self._on_publisher_state(pc))
        self.media.start()
        self._tasks.create(self._watch_media(self.media), "watch-media")
        self._start_janus(self.media)
        self.info.live = True
        self.info.started_at = time.time()
        logger.info("stream %s is live", self.stream_id)
        self._registry.stream_went_live(self)
        return answer

    async def _abort_publish(self, pc: RTCPeerConnection) -> None:
        if self.media is not None:
            await self.media.stop(CLOSE_STEP_TIMEOUT_S)
        self.media = None
        self._publisher_pc = None
        await self._registry.peers.close(pc)

    def _on_publisher_state(self, pc: RTCPeerConnection) -> None:
        if pc.connectionState in ("failed", "closed") and not self._closing:
            logger.info("stream %s: publisher connection %s", self.stream_id, pc.connectionState)
            self._registry.close_soon(self, f"publisher_{pc.connectionState}")

    async def _watch_media(self, media: RoomMedia) -> None:
        reason = await media.watch(PUBLISHER_MEDIA_TIMEOUT_S)
        if not self._closing:
            self._registry.close_soon(self, reason)

    def set_switches(self, key: str, *, mosaic: bool | None = None, text_net: bool | None = None) -> None:
        """The streamer's switches, for this stream only: the mosaic, the text/barcode safety net."""
        self.check_key(key)
        if text_net and not self._registry.has_text_net:
            raise Conflict("this server runs no text/barcode safety net (--no-text-net)")
        self.info.mosaic = self.info.mosaic if mosaic is None else bool(mosaic)
        self.info.text_net = self.info.text_net if text_net is None else bool(text_net)
        if self.media is not None:
            self.media.apply_switches(self.info.mosaic, self.info.text_net)
        logger.info("stream %s: mosaic %s, text net %s", self.stream_id, self.info.mosaic, self.info.text_net)
        self._registry.emit_soon("stream_updated", self)

    # --- viewers -----------------------------------------------------------------------------

    async def add_viewer(self, viewer_id: str, sdp: str, type: str) -> dict[str, str]:
        if self._closing:
            raise NotFound("stream is closed")
        if not self.info.live or self.media is None:
            raise NotFound("stream is not live")
        if viewer_id in self._viewers or (self.janus is not None and self.janus.has(viewer_id)):
            raise Conflict("viewer id is already watching this stream")
        janus = self.janus  # Janus serves VP8 viewers (the publisher's own preview stays direct)
        if janus is not None and (viewer_id in self._previews or not janus.wants(len(self._viewers))):
            janus = None
        if janus is None:
            self._check_direct_limit()
        parsed = negotiation.parse_offer(sdp, type, self._settings.max_sdp_bytes)
        codec = viewer_video_codec(parsed)
        if janus is not None and codec == "vp8":
            janus_sdp = await janus.add_viewer(viewer_id, sdp)  # None: Janus cannot take it, serve directly
            if janus_sdp is not None:
                if self._closing:
                    raise NotFound("stream is closed")
                self._viewers_changed()
                return {"sdp": janus_sdp, "type": "answer"}
        self._check_direct_limit()
        media, pc = self.media, self._registry.peers.new()
        encoder, video = media.add_viewer(codec)
        audio = media.add_audio_viewer() if negotiation.offer_takes_opus(parsed) else None
        viewer = _Viewer(pc, encoder, video, audio)
        self._viewers[viewer_id] = viewer  # reserve the id and the slot while negotiating
        try:
            negotiation.add_viewer_tracks(pc, video, audio, encoder.request_keyframe, codec, media.fast)
            answer = await negotiation.answer_offer(pc, sdp)
            if self._closing:
                raise NotFound("stream is closed")
        except BaseException:
            if self._viewers.get(viewer_id) is viewer:
                del self._viewers[viewer_id]
            await self._drop_viewer(viewer)
            raise
        pc.on("connectionstatechange", lambda: self._on_viewer_state(viewer_id, pc))
        self._viewers_changed()
        return answer

    def _on_viewer_state(self, viewer_id: str, pc: RTCPeerConnection) -> None:
        v = self._viewers.get(viewer_id)
        if self._closing:
            return
        if v is not None and v.pc is pc and pc.connectionState in ("failed", "closed"):
            self._tasks.create(self.remove_viewer(viewer_id), f"drop-viewer-{viewer_id[:16]}")

    async def _drop_viewer(self, v: _Viewer) -> None:
        await _release_tracks(self.media, v)
        await self._registry.peers.close(v.pc)

    async def remove_viewer(self, viewer_id: str) -> None:
        handle = self.janus.pop(viewer_id) if self.janus is not None else None
        if handle is not None:  # a viewer served by Janus
            self._viewers_changed()
            await hang_up(handle)
            return
        v = self._viewers.pop(viewer_id, None)
        if v is None:
            return
        self.info.viewer_count = len(self._viewers) + (self.janus.viewer_count if self.janus else 0)
        self._previews.discard(viewer_id)
        self._count_previews()  # no await between this and the encoder's own count going down
        await self._drop_viewer(v)
        if not self._closing:
            self._registry.emit_soon("stream_updated", self)

    # --- close -------------------------------------------------------------------------------

    async def close(self, reason: str = "stopped") -> None:
        """Tear down (viewers, encoder, pipeline, publisher) and emit ``stream_ended``. Idempotent."""
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        was_live, self.info.live = self.info.live, False
        logger.info("stream %s closing (%s)", self.stream_id, reason)
        try:
            if self.media is not None:  # 1. stop producing, so viewer senders end on their own
                await self.media.stop_output(CLOSE_STEP_TIMEOUT_S)
            await self.restreams.close()
            viewers = list(self._viewers.values())  # 2. viewers (and Janus's, its mountpoints)
            self._viewers.clear()
            self.info.viewer_count = 0
            if self.janus is not None:
                await self.janus.close(CLOSE_STEP_TIMEOUT_S)
            await asyncio.gather(*(self._drop_viewer(v) for v in viewers), return_exceptions=True)
            if self.media is not None:  # 3. pipeline (detector/mosaic threads), 4. publisher
                await self.media.pipeline.stop(CLOSE_STEP_TIMEOUT_S)
            if self._publisher_pc is not None:
                await self._registry.peers.close(self._publisher_pc)
            await self._tasks.close(CLOSE_STEP_TIMEOUT_S)
        finally:
            self.metrics.close()
            self._registry.forget(self, was_live)
            self.closed.set()
        await self._registry.emit("stream_ended", self)


async def _release_tracks(media: RoomMedia | None, v: _Viewer) -> None:
    """A leaving viewer's tracks go back to the room's encoders (or just stop, media gone)."""
    if media is not None:
        await media.remove_viewer(v.encoder, v.video)
    else:
        v.video.stop()
    if v.audio is not None:
        if media is not None and media.audio is not None:
            media.audio.remove_viewer(v.audio)
        else:
            v.audio.stop()


def __getattr__(name: str) -> Any:  # RoomRegistry lives in relay/registry.py (it imports this module)
    if name == "RoomRegistry":
        from relay.registry import RoomRegistry

        return RoomRegistry
    raise AttributeError(name)
