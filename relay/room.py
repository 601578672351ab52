"""Rooms: one publisher peer connection, its sanitizer and encoder, N viewer peer connections.

``RoomRegistry`` is what ``signaling/`` talks to (see docs/ARCHITECTURE.md). Every
WebRTC object made here is tracked until it is closed (:func:`live_peer_connection_count`,
:func:`relay.tasks.live_task_count`) so tests can check for leaks.

Errors raised to the signaling layer: ``Forbidden`` (bad publish key), ``NotFound`` (unknown,
closed or not-yet-live stream), ``Conflict`` (second publish, duplicate viewer id),
``LimitExceeded`` (``max_streams``, ``max_viewers_per_stream``), ``BadRequest`` (malformed or
oversized SDP, wrong type, offer without video) and ``RelayError(code="unsupported_codec")``
(an offer without VP8). A peer connection half-made by a failed request is always closed.
"""

from __future__ import annotations

import asyncio
import builtins
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from relay.errors import BadRequest, Conflict, Forbidden, LimitExceeded, NotFound, RelayError
from relay.fanout import AudioEncoder, PacketTrack, RoomEncoder, hook_keyframe_requests
from relay.fastsend import FastSend
from relay.sanitizer import Detector, Sanitizer
from relay.settings import Settings
from relay.tasks import TaskSet

logger = logging.getLogger(__name__)

EventHandler = Callable[[str, "Room"], Awaitable[None]]
CLOSE_STEP_TIMEOUT_S = 2.0
PUBLISHER_MEDIA_TIMEOUT_S = 10.0  # no video from a live publisher for this long => the room closes

_LIVE_PCS: set[RTCPeerConnection] = set()


def live_peer_connection_count() -> int:
    """Peer connections made by any room that are not closed yet (leak tests)."""
    return len(_LIVE_PCS)


def _vp8_preferences() -> list[RTCRtpCodecCapability]:
    caps = RTCRtpSender.getCapabilities("video").codecs
    return [c for c in caps if c.mimeType.lower() in ("video/vp8", "video/rtx")]


def _opus_preferences() -> list[RTCRtpCodecCapability]:
    return [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]


def _parse_offer(sdp: Any, type_: Any, max_bytes: int) -> aiortc_sdp.SessionDescription:
    if type_ != "offer":
        raise BadRequest(f"expected an SDP offer, got type {type_!r}")
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadRequest("sdp must be a non-empty string")
    if len(sdp.encode("utf-8", "replace")) > max_bytes:
        raise BadRequest(f"sdp is larger than {max_bytes} bytes")
    try:
        parsed = aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as exc:
        raise BadRequest(f"malformed sdp: {exc}") from exc
    if not any(m.kind == "video" for m in parsed.media):
        raise BadRequest("the offer has no video section")
    if not any(
        c.mimeType.lower() == "video/vp8" for m in parsed.media if m.kind == "video" for c in m.rtp.codecs
    ):
        raise RelayError("the relay serves VP8 only and the offer has no VP8", code="unsupported_codec")
    return parsed


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Viewer:
    pc: RTCPeerConnection
    video: PacketTrack
    audio: PacketTrack | None


class Room:
    """One stream. Made by :meth:`RoomRegistry.create`; closed by :meth:`close` (idempotent)."""

    def __init__(self, registry: RoomRegistry, info: StreamInfo, key: str) -> None:
        self._registry = registry
        self._settings = registry.settings
        self.info = info
        self._key = key
        self._tasks = TaskSet(f"room-{info.stream_id}")
        self._publisher_pc: RTCPeerConnection | None = None
        self.sanitizer: Sanitizer | None = None
        self.encoder: RoomEncoder | None = None
        self.audio: AudioEncoder | None = None
        self._viewers: dict[str, _Viewer] = {}
        self._closing = False
        self.closed = asyncio.Event()
        self._lock = asyncio.Lock()  # serializes publish/add_viewer/close bookkeeping
        self.fast = FastSend.create(self._settings.fast_send == "on", self._settings.fast_send_syscall)

    @property
    def stream_id(self) -> str:
        return self.info.stream_id

    @property
    def task_count(self) -> int:
        n = len(self._tasks)
        for part in (self.sanitizer, self.encoder, self.audio):
            if part is not None:
                n += len(part._tasks)
        return n

    def check_key(self, key: str) -> None:
        if not isinstance(key, str) or not hmac.compare_digest(key.encode(), self._key.encode()):
            raise Forbidden("wrong publish key")

    def _new_pc(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(self._registry.rtc_configuration)
        _LIVE_PCS.add(pc)
        self._registry._pcs.add(pc)
        return pc

    async def _close_pc(self, pc: RTCPeerConnection) -> None:
        try:
            await asyncio.wait_for(pc.close(), CLOSE_STEP_TIMEOUT_S)
        except Exception:
            logger.warning("peer connection did not close cleanly", exc_info=True)
        finally:
            _LIVE_PCS.discard(pc)
            self._registry._pcs.discard(pc)

    # --- publisher ---------------------------------------------------------------------------

    async def publish(self, key: str, sdp: str, type: str) -> dict[str, str]:
        self.check_key(key)
        if self._closing:
            raise NotFound("stream is closed")
        if self._publisher_pc is not None:
            raise Conflict("stream is already being published")
        _parse_offer(sdp, type, self._settings.max_sdp_bytes)
        pc = self._new_pc()
        self._publisher_pc = pc
        try:
            video = pc.addTransceiver("video", direction="recvonly")
            video.setCodecPreferences(_vp8_preferences())  # before setRemoteDescription (answerer)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as exc:
                raise BadRequest(f"cannot use this offer: {exc}") from exc
            for t in pc.getTransceivers():
                track = t.receiver.track
                if track is None:
                    continue
                if t.kind == "video" and self.sanitizer is None:
                    name = f"room-{self.stream_id}"
                    # the sanitizer hands each frame to the encoder from its own thread (push)
                    self.encoder = RoomEncoder(None, self._settings, name=f"{name}-encoder")
                    self.sanitizer = Sanitizer(
                        track,
                        self._registry.detector,
                        self._settings,
                        detector_executor=self._registry.detector_executor,
                        name=f"{name}-sanitizer",
                        mosaic=self.info.mosaic,
                        sink=self.encoder.submit,
                    )
                elif t.kind == "audio" and self.audio is None:
                    self.audio = AudioEncoder(track, name=f"room-{self.stream_id}-audio")
            if self.sanitizer is None or self.encoder is None:
                raise BadRequest("the offer does not send video")
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except BaseException as exc:
            await self._abort_publish(pc)
            if self._closing and not isinstance(exc, RelayError):
                raise NotFound("stream is closed") from exc
            raise
        if self._closing:  # closed while negotiating
            await self._abort_publish(pc)
            raise NotFound("stream is closed")
        pc.on("connectionstatechange", lambda: self._on_publisher_state(pc))
        self.encoder.start()  # first: the sanitizer hands it frames as soon as it runs
        self.sanitizer.start()
        if self.audio is not None:
            self.audio.start()
        self._tasks.create(self._watch_media(), "watch-media")
        self.info.live = True
        self.info.started_at = time.time()
        logger.info("stream %s is live", self.stream_id)
        self._registry._emit_soon("stream_updated", self)
        local = pc.localDescription
        return {"sdp": local.sdp, "type": local.type}

    async def _abort_publish(self, pc: RTCPeerConnection) -> None:
        for part in (self.sanitizer, self.encoder, self.audio):
            if part is not None:
                await part.stop()
        self.sanitizer = self.encoder = self.audio = None  # type: ignore[assignment]
        self._publisher_pc = None
        await self._close_pc(pc)

    def _on_publisher_state(self, pc: RTCPeerConnection) -> None:
        if pc.connectionState in ("failed", "closed") and not self._closing:
            logger.info("stream %s: publisher connection %s", self.stream_id, pc.connectionState)
            self._registry._close_soon(self, f"publisher_{pc.connectionState}")

    async def _watch_media(self) -> None:
        """Close the room when the publisher's video ends (track ended, sanitizer or encoder done)
        or stops arriving for ``PUBLISHER_MEDIA_TIMEOUT_S`` (a publisher that vanished without
        closing: aiortc's ICE consent checks would take ~30 s to notice)."""
        sanitizer, encoder = self.sanitizer, self.encoder
        assert sanitizer is not None and encoder is not None
        reason = "publisher_ended"
        last_count, last_change = -1, time.monotonic()
        while not (sanitizer.ended.is_set() or encoder.ended.is_set()):
            await asyncio.sleep(0.2)
            count = sanitizer.metrics.frames_in
            now = time.monotonic()
            if count != last_count:
                last_count, last_change = count, now
            elif now - last_change > PUBLISHER_MEDIA_TIMEOUT_S:
                reason = "publisher_timeout"
                break
        if not self._closing:
            self._registry._close_soon(self, reason)

    def set_mosaic(self, key: str, enabled: bool) -> None:
        self.check_key(key)
        self.info.mosaic = bool(enabled)
        if self.sanitizer is not None:
            self.sanitizer.mosaic_enabled = self.info.mosaic
        logger.info("stream %s: mosaic %s", self.stream_id, "on" if enabled else "OFF")
        self._registry._emit_soon("stream_updated", self)

    # --- viewers -----------------------------------------------------------------------------

    async def add_viewer(self, viewer_id: str, sdp: str, type: str) -> dict[str, str]:
        if self._closing:
            raise NotFound("stream is closed")
        if not self.info.live or self.encoder is None:
            raise NotFound("stream is not live")
        if viewer_id in self._viewers:
            raise Conflict("viewer id is already watching this stream")
        if len(self._viewers) >= self._settings.max_viewers_per_stream:
            raise LimitExceeded(f"at most {self._settings.max_viewers_per_stream} viewers per stream")
        parsed = _parse_offer(sdp, type, self._settings.max_sdp_bytes)
        # audio is forwarded as the room's Opus packets: only to an offer that takes Opus
        wants_audio = any(
            c.mimeType.lower() == "audio/opus"
            for m in parsed.media
            if m.kind == "audio"
            for c in m.rtp.codecs
        )
        pc = self._new_pc()
        encoder = self.encoder
        make = self.fast.track if self.fast is not None else PacketTrack
        video = encoder.add_viewer(make)
        audio = self.audio.add_viewer(make) if (self.audio is not None and wants_audio) else None
        viewer = _Viewer(pc, video, audio)
        self._viewers[viewer_id] = viewer  # reserve the id and the slot while negotiating
        try:
            vt = pc.addTransceiver(video, direction="sendonly")
            vt.setCodecPreferences(_vp8_preferences())
            hook_keyframe_requests(vt.sender, encoder.request_keyframe)
            if self.fast is not None:
                self.fast.attach(vt.sender, video)
            if audio is not None:
                at = pc.addTransceiver(audio, direction="sendonly")
                at.setCodecPreferences(_opus_preferences())
                if self.fast is not None:
                    self.fast.attach(at.sender, audio)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as exc:
                raise BadRequest(f"cannot use this offer: {exc}") from exc
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
            if self._closing:
                raise NotFound("stream is closed")
        except BaseException:
            if self._viewers.get(viewer_id) is viewer:
                del self._viewers[viewer_id]
            await self._drop_viewer(viewer)
            raise
        pc.on("connectionstatechange", lambda: self._on_viewer_state(viewer_id, pc))
        self.info.viewer_count = len(self._viewers)
        self._registry._emit_soon("stream_updated", self)
        local = pc.localDescription
        return {"sdp": local.sdp, "type": local.type}

    def _on_viewer_state(self, viewer_id: str, pc: RTCPeerConnection) -> None:
        v = self._viewers.get(viewer_id)
        if self._closing:
            return
        if v is not None and v.pc is pc and pc.connectionState in ("failed", "closed"):
            self._tasks.create(self.remove_viewer(viewer_id), f"drop-viewer-{viewer_id[:16]}")

    async def _drop_viewer(self, v: _Viewer) -> None:
        if self.encoder is not None:
            self.encoder.remove_viewer(v.video)
        else:
            v.video.stop()
        if v.audio is not None:
            if self.audio is not None:
                self.audio.remove_viewer(v.audio)
            else:
                v.audio.stop()
        await self._close_pc(v.pc)

    async def remove_viewer(self, viewer_id: str) -> None:
        v = self._viewers.pop(viewer_id, None)
        if v is None:
            return
        self.info.viewer_count = len(self._viewers)
        await self._drop_viewer(v)
        if not self._closing:
            self._registry._emit_soon("stream_updated", self)

    @property
    def viewer_ids(self) -> builtins.list[str]:
        return list(self._viewers)

    # --- close -------------------------------------------------------------------------------

    async def close(self, reason: str = "stopped") -> None:
        """Tear down (viewers, encoder, sanitizer, publisher) and emit ``stream_ended``. Idempotent."""
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        self.info.live = False
        logger.info("stream %s closing (%s)", self.stream_id, reason)
        try:
            # 1. stop producing, so viewer senders end on their own
            if self.encoder is not None:
                await self.encoder.stop(CLOSE_STEP_TIMEOUT_S)
            if self.audio is not None:
                await self.audio.stop(CLOSE_STEP_TIMEOUT_S)
            # 2. viewers
            viewers = list(self._viewers.values())
            self._viewers.clear()
            self.info.viewer_count = 0
            await asyncio.gather(*(self._drop_viewer(v) for v in viewers), return_exceptions=True)
            # 3. sanitizer (detector/mosaic threads), 4. publisher
            if self.sanitizer is not None:
                await self.sanitizer.stop(CLOSE_STEP_TIMEOUT_S)
            if self._publisher_pc is not None:
                await self._close_pc(self._publisher_pc)
            await self._tasks.close(CLOSE_STEP_TIMEOUT_S)
        finally:
            self._registry._forget(self)
            self.closed.set()
        await self._registry._emit("stream_ended", self)


class RoomRegistry:
    """All rooms of the server. ``on_event(name, room)`` gets ``stream_updated``/``stream_ended``."""

    def __init__(
        self,
        settings: Settings,
        detector: Detector,
        *,
        rtc_configuration: RTCConfiguration | None = None,
    ) -> None:
        self.settings = settings
        self.detector = detector
        # No STUN/TURN by default: the server's host candidates are what a browser needs to reach
        # it, and aiortc's default public STUN server would stall every answer without internet.
        self.rtc_configuration = rtc_configuration or RTCConfiguration(iceServers=[])
        # one detector thread shared by all rooms (rooms take turns; each waits for at most one run)
        self.detector_executor = ThreadPoolExecutor(1, thread_name_prefix="detector")
        self.on_event: EventHandler | None = None
        self._rooms: dict[str, Room] = {}
        self._pcs: set[RTCPeerConnection] = set()  # made by this registry's rooms, not closed yet
        self._tasks = TaskSet("registry")
        self._closed = False

    def create(self, title: str, category: str, private: bool = False) -> tuple[Room, str]:
        if self._closed:
            raise RelayError("server is shutting down", code="shutting_down")
        if len(self._rooms) >= self.settings.max_streams:
            raise LimitExceeded(f"at most {self.settings.max_streams} streams")
        stream_id = secrets.token_urlsafe(12)
        while stream_id in self._rooms:
            stream_id = secrets.token_urlsafe(12)
        key = secrets.token_urlsafe(32)
        info = StreamInfo(
            stream_id=stream_id, title=title, category=category, created_at=time.time(), private=private
        )
        room = Room(self, info, key)
        self._rooms[stream_id] = room
        return room, key

    def get(self, stream_id: str) -> Room:
        room = self._rooms.get(stream_id) if isinstance(stream_id, str) else None
        if room is None:
            raise NotFound("no such stream")
        return room

    def list(self) -> builtins.list[StreamInfo]:
        """Live, public streams."""
        return [r.info for r in self._rooms.values() if r.info.live and not r.info.private]

    @property
    def rooms(self) -> builtins.list[Room]:
        return list(self._rooms.values())

    @property
    def task_count(self) -> int:
        return len(self._tasks) + sum(r.task_count for r in self._rooms.values())

    @property
    def peer_connection_count(self) -> int:
        """Peer connections made by this registry's rooms that are not closed yet (leak tests)."""
        return len(self._pcs)

    def _forget(self, room: Room) -> None:
        if self._rooms.get(room.stream_id) is room:
            del self._rooms[room.stream_id]

    def _close_soon(self, room: Room, reason: str) -> None:
        if not self._closed:
            self._tasks.create(room.close(reason), f"close-{room.stream_id}")

    def _emit_soon(self, event: str, room: Room) -> None:
        if self.on_event is not None and not self._closed:
            self._tasks.create(self._emit(event, room), f"{event}-{room.stream_id}")

    async def _emit(self, event: str, room: Room) -> None:
        if self.on_event is None:
            return
        try:
            await self.on_event(event, room)
        except Exception:
            logger.exception("on_event(%s) failed", event)

    async def close_all(self) -> None:
        """Close every room; bounded by ``settings.shutdown_timeout_s``."""
        self._closed = True
        rooms = list(self._rooms.values())
        if rooms:
            done, pending = await asyncio.wait(
                [
                    asyncio.create_task(r.close("server_shutdown"), name=f"shutdown-{r.stream_id}")
                    for r in rooms
                ],
                timeout=self.settings.shutdown_timeout_s,
            )
            if pending:
                logger.warning(
                    "%d rooms did not close within %.1f s", len(pending), self.settings.shutdown_timeout_s
                )
                for p in pending:
                    p.cancel()
        await self._tasks.close(1.0)
        self.detector_executor.shutdown(wait=False, cancel_futures=True)
