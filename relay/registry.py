"""All rooms of one server: what ``signaling/`` talks to (see docs/ARCHITECTURE.md).

Owns what the rooms share: the settings, the detectors and the one detector thread (rooms take
turns; each waits for at most one run), the peer connections (:class:`relay.negotiation.PeerConnections`)
and the server's metrics (:class:`relay.metrics.RelayMetrics`; ``registry.metrics.registry`` is the
Prometheus ``CollectorRegistry`` to serve). Every WebRTC object made here is tracked until it is
closed so tests can check for leaks.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from aiortc import RTCConfiguration
from aiortc.mediastreams import MediaStreamTrack

from relay.channels import Channel, key_digest, load_channels
from relay.detection import DetectorSet
from relay.detector import TEXT_NET
from relay.errors import LimitExceeded, NotFound, RelayError
from relay.janus_room import JanusEgress
from relay.media import RoomMedia
from relay.metrics import RelayMetrics
from relay.negotiation import PeerConnections
from relay.pipeline import Detectors, SceneCutHook
from relay.room import Room, StreamInfo
from relay.scenecut import scene_cut_hook
from relay.settings import Settings
from relay.tasks import TaskSet

logger = logging.getLogger(__name__)

EventHandler = Callable[[str, Room], Awaitable[None]]


class RoomRegistry:
    """All rooms of the server. ``on_event(name, room)`` gets ``stream_updated``/``stream_ended``.

    ``detector`` is one detector, a sequence of them (or :class:`relay.detection.DetectorSpec`), or a
    :class:`relay.detection.DetectorSet`; ``scene_cut`` makes each room's scene-cut hook (default: relay/scenecut.py at
    ``settings.scene_cut_threshold``)."""

    def __init__(
        self,
        settings: Settings,
        detector: Detectors,
        *,
        rtc_configuration: RTCConfiguration | None = None,
        scene_cut: Callable[[], SceneCutHook] | None = None,
    ) -> None:
        self.settings = settings
        self.detectors = DetectorSet.of(detector)
        # No STUN/TURN by default: the server's host candidates are what a browser needs to reach
        # it, and aiortc's default public STUN server would stall every answer without internet.
        self.rtc_configuration = rtc_configuration or RTCConfiguration(iceServers=[])
        self.peers = PeerConnections(self.rtc_configuration)
        self.metrics = RelayMetrics()
        self.metrics.watch_restreams(self._restream_states)
        self._scene_cut = scene_cut
        self.detector_executor = ThreadPoolExecutor(1, thread_name_prefix="detector")
        self.on_event: EventHandler | None = None
        self._rooms: dict[str, Room] = {}
        # persistent channels (--channels, relay/channels.py): their rooms are made on demand by get()
        self.channels: dict[str, Channel] = load_channels(settings.channels) if settings.channels else {}
        self._tasks = TaskSet("registry")
        self._closed = False
        self.janus = JanusEgress.from_settings(settings)  # --janus-url (relay/janus_room.py)

    def create(self, title: str, category: str, private: bool = False) -> tuple[Room, str]:
        if self._closed:
            raise RelayError("server is shutting down", code="shutting_down")
        if sum(not r.channel for r in self._rooms.values()) >= self.settings.max_streams:
            raise LimitExceeded(f"at most {self.settings.max_streams} streams")
        stream_id = secrets.token_urlsafe(12)
        while stream_id in self._rooms or stream_id in self.channels:
            stream_id = secrets.token_urlsafe(12)
        key = secrets.token_urlsafe(32)
        info = StreamInfo(
            stream_id=stream_id,
            title=title,
            category=category,
            created_at=time.time(),
            private=private,
            text_net=self.has_text_net,
        )
        room = Room(self, info, key_digest(key))
        self._rooms[stream_id] = room
        return room, key

    @property
    def has_text_net(self) -> bool:
        """The server runs the text/barcode safety net (streams may still switch it off)."""
        return TEXT_NET in self.detectors.names

    def _restream_states(self) -> builtins.list[tuple[str, str, int]]:
        """(stream id, restream id, state code) of every restream (a scrape, on the event loop)."""
        return [
            (r.stream_id, x.restream_id, x.state_code)
            for r in list(self._rooms.values())
            for x in r.restreams.list()
        ]

    def room_media(self, room: Room, video: MediaStreamTrack, audio: MediaStreamTrack | None) -> RoomMedia:
        """The media of a room whose publisher sends ``video`` (and ``audio``)."""
        return RoomMedia(
            video,
            audio,
            self.detectors,
            self.settings,
            detector_executor=self.detector_executor,
            stream=room.metrics,
            name=f"room-{room.stream_id}",
            mosaic=room.info.mosaic,
            scene_cut=self._scene_cut()
            if self._scene_cut is not None
            else scene_cut_hook(self.settings.scene_cut_threshold),
            restreams=room.restreams,
        )

    def get(self, stream_id: str) -> Room:
        room = self._rooms.get(stream_id) if isinstance(stream_id, str) else None
        if room is None:
            return self._channel_room(stream_id)
        return room

    def current(self, stream_id: str) -> Room | None:
        """The room holding ``stream_id`` now, if any (unlike :meth:`get`, makes no channel room)."""
        return self._rooms.get(stream_id)

    def _channel_room(self, stream_id: str) -> Room:
        """A fresh room for a persistent channel (none yet, or its last stream ended)."""
        channel = self.channels.get(stream_id) if isinstance(stream_id, str) else None
        if channel is None or self._closed:
            raise NotFound("no such stream")
        info = StreamInfo(
            stream_id=stream_id,
            title=channel.title,
            category=channel.category,
            created_at=time.time(),
            private=channel.private,
            text_net=self.has_text_net,
        )
        room = self._rooms[stream_id] = Room(self, info, channel.key_digest, channel=True)
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
        return len(self.peers)

    # --- called by rooms ---------------------------------------------------------------------

    def stream_went_live(self, room: Room) -> None:
        self.metrics.streams_live.inc()
        self.emit_soon("stream_updated", room)

    def forget(self, room: Room, was_live: bool) -> None:
        if was_live:
            self.metrics.streams_live.dec()
        if self._rooms.get(room.stream_id) is room:
            del self._rooms[room.stream_id]

    def close_soon(self, room: Room, reason: str) -> None:
        if not self._closed:
            self._tasks.create(room.close(reason), f"close-{room.stream_id}")

    def emit_soon(self, event: str, room: Room) -> None:
        if self.on_event is not None and not self._closed:
            self._tasks.create(self.emit(event, room), f"{event}-{room.stream_id}")

    async def emit(self, event: str, room: Room) -> None:
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
        if self.janus is not None:  # after the rooms destroyed their mountpoints
            await self.janus.close()
        self.detector_executor.shutdown(wait=False, cancel_futures=True)
