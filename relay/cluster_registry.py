"""The registry of one node among several (``--redis-url``; issue #15): its own rooms plus every
other node's streams, read from Redis (relay/cluster.py).

- ``get(stream_id)`` of a stream published on another node gives a :class:`relay.remote.RemoteRoom`
  (made on demand, closed quietly with its last viewer here); ``list()`` lists every node's live
  public streams, each with its viewer count summed over the nodes.
- This node's own streams are written to Redis (info, owner, SHA-256 of the publish key, whether
  it has audio), with this node's viewer count of every stream, its forward requests and its
  per-address counts (``address_counts``, from signaling/limits.py).
- Owner side: the forwards other nodes ask for are kept open (relay/forwards.py); their keyframe
  requests reach the room's encoder; an ``end`` request (a stop with the publish key on another
  node) ends the stream through ``end_stream`` (signaling's, so the reason is announced).
- A node found lost (no heartbeat for ``node_ttl_s``): its streams end on every node; exactly one
  node (a Redis ``SET NX`` claim) announces ``stream_ended`` through ``on_lost``.

Without ``--redis-url`` none of this runs: relay/registry.py's :class:`RoomRegistry` is used.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import secrets
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from redis.exceptions import RedisError

from relay.cluster import PREFIX, Cluster, NodeState
from relay.forwards import Forwards, Key
from relay.media import RoomMedia
from relay.registry import RoomRegistry
from relay.remote import ForwardTarget, RemoteRoom
from relay.room import Room, StreamInfo

logger = logging.getLogger(__name__)

CLAIM_TTL_S = 60
_INFO_FIELDS = {f.name for f in dataclasses.fields(StreamInfo)}

AddressCounts = Callable[[], tuple[dict[str, int], dict[str, int]]]  # (unpublished, connections)


def node_address(host: str, given: str) -> str:
    """The address other nodes reach this one at: ``given``, else ``host`` unless it is a wildcard."""
    if given:
        return given
    return host if host not in ("", "0.0.0.0", "::") else "127.0.0.1"


def info_of(record: dict[str, Any]) -> StreamInfo | None:
    """A stream record's ``StreamInfo`` (``None`` if malformed)."""
    raw = record.get("info")
    if not isinstance(raw, dict):
        return None
    try:
        return StreamInfo(**{k: v for k, v in raw.items() if k in _INFO_FIELDS})
    except TypeError:
        return None


def node_snapshot(
    node_id: str,
    address: str,
    rooms: Iterable[Room],
    remote_rooms: Iterable[RemoteRoom],
    counts: tuple[dict[str, int], dict[str, int]],
) -> NodeState:
    """What this node writes to Redis: its streams, its viewers of every stream, its forward
    requests, its per-address counts."""
    state = NodeState(node_id, address)
    for room in rooms:
        media = room.media
        state.streams[room.stream_id] = {
            "info": room.info.to_dict(),
            "key": room.key_digest.hex(),
            "audio": media is not None and media.audio is not None,
        }
        state.viewers[room.stream_id] = len(room.viewer_ids)
    for remote in remote_rooms:
        target = remote.remote.target if remote.remote is not None else None
        if target is not None and not remote.closed.is_set():
            state.forwards[remote.stream_id] = target.to_dict()
            state.viewers[remote.stream_id] = len(remote.viewer_ids)
    state.unpublished, state.connections = counts
    return state


def wanted_forwards(
    nodes: Iterable[NodeState], rooms: Mapping[str, Room]
) -> dict[Key, tuple[RoomMedia, ForwardTarget]]:
    """The forwards other nodes ask of this one's live streams (only ever to the asking node's address)."""
    wanted: dict[Key, tuple[RoomMedia, ForwardTarget]] = {}
    for node in nodes:
        for stream_id, t in node.forwards.items():
            room = rooms.get(stream_id)
            if room is None or room.media is None or not room.info.live:
                continue
            try:
                target = ForwardTarget(str(t["host"]), int(t["video_port"]), int(t["audio_port"]))
            except (KeyError, TypeError, ValueError):
                continue
            if target.host == node.address:
                wanted[(stream_id, node.node_id)] = (room.media, target)
    return wanted


def cluster_health(registry: ClusterRegistry, forwards_out: int, remote_streams: int) -> dict[str, Any]:
    return {
        "node_id": registry.node_id,
        "nodes": len(registry.cluster.nodes) + 1,
        "forwards_out": forwards_out,  # (stream, node) pairs this node sends RTP to
        "remote_streams": remote_streams,  # other nodes' streams watched here
        "redis_ok": registry.cluster.healthy,
        "peer_connections": registry.peer_connection_count,  # publishers' and viewers' of this node
    }


class ClusterRegistry(RoomRegistry):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        s = self.settings
        assert s.redis_url, "ClusterRegistry needs --redis-url"
        self.node_id = s.node_id or secrets.token_hex(6)
        self.node_address = node_address(s.host, s.node_address)
        self._remote_rooms: dict[str, RemoteRoom] = {}
        self._forwards = Forwards(self.node_address)
        self.cluster = Cluster(
            s.redis_url,
            self.node_id,
            ttl_s=s.node_ttl_s,
            snapshot=self._snapshot,
            on_sync=self._on_sync,
            on_message=self._on_message,
        )
        self.address_counts: AddressCounts | None = None  # set by signaling (signaling/cluster.py)
        self.end_stream: Callable[[Room, str], Coroutine[Any, Any, None]] | None = None  # ditto
        self.on_copy_closed: Callable[[str], None] | None = None  # ditto: forget what it held of it

    async def start(self) -> None:
        await self.cluster.start()

    # --- lookups -------------------------------------------------------------------------------

    def _remote_record(self, stream_id: str) -> tuple[NodeState, dict[str, Any]] | None:
        for node in self.cluster.nodes.values():
            record = node.streams.get(stream_id)
            if record is not None:
                return node, record
        return None

    def address_of(self, node_id: str) -> str:
        node = self.cluster.nodes.get(node_id)
        return node.address if node is not None else ""

    def remote_viewers(self, stream_id: str) -> int:
        return sum(n.viewers.get(stream_id, 0) for n in self.cluster.nodes.values())

    def total_viewers(self, room: Room) -> int:
        return len(room.viewer_ids) + self.remote_viewers(room.stream_id)

    def remote_count(self, kind: str, address: str) -> int:
        """``unpublished`` or ``connections`` of ``address`` on the other nodes."""
        return sum(getattr(n, kind).get(address, 0) for n in self.cluster.nodes.values())

    def get(self, stream_id: str) -> Room:
        if not isinstance(stream_id, str):
            return super().get(stream_id)
        local = self._rooms.get(stream_id)
        if local is not None:
            return local
        room = self._remote_rooms.get(stream_id)
        if room is not None and not room.closing:
            return room
        found = self._remote_record(stream_id)
        info = info_of(found[1]) if found is not None else None
        if found is None or info is None or not info.live or self._closed:
            return super().get(stream_id)
        node, record = found
        digest = bytes.fromhex(str(record.get("key", "")))
        room = RemoteRoom(self, info, digest, owner=node.node_id, audio=bool(record.get("audio")))
        self._remote_rooms[stream_id] = room
        return room

    def current(self, stream_id: str) -> Room | None:
        return self._rooms.get(stream_id) or self._remote_rooms.get(stream_id)

    def list(self) -> builtins.list[StreamInfo]:
        infos = super().list()
        for room in self._rooms.values():
            room.info.viewer_count = self.total_viewers(room)
        for node in self.cluster.nodes.values():
            for stream_id, record in node.streams.items():
                info = info_of(record)
                if info is None or not info.live or info.private or stream_id in self._rooms:
                    continue
                remote = self._remote_rooms.get(stream_id)
                info.viewer_count = self.remote_viewers(stream_id) + (len(remote.viewer_ids) if remote else 0)
                infos.append(info)
        return infos

    def health(self) -> dict[str, Any]:
        """What /healthz says about the cluster."""
        return cluster_health(self, len(self._forwards), len(self._remote_rooms))

    @property
    def rooms(self) -> builtins.list[Room]:
        return [*self._rooms.values(), *self._remote_rooms.values()]

    @property
    def task_count(self) -> int:
        return (
            super().task_count
            + self._forwards.task_count
            + sum(r.task_count for r in self._remote_rooms.values())
        )

    # --- rooms' calls ----------------------------------------------------------------------------

    def forget(self, room: Room, was_live: bool) -> None:
        if isinstance(room, RemoteRoom):
            if self._remote_rooms.get(room.stream_id) is room:
                del self._remote_rooms[room.stream_id]
                if self.on_copy_closed is not None and room.stream_id not in self._rooms:
                    self.on_copy_closed(room.stream_id)
            return
        super().forget(room, was_live)

    async def emit(self, event: str, room: Room) -> None:
        if event == "stream_updated":
            room.info.viewer_count = self.total_viewers(room)
        self.cluster.changed()
        await super().emit(event, room)

    def close_remote_soon(self, room: RemoteRoom, reason: str) -> None:
        self.close_soon(room, reason)

    def forwards_changed(self) -> None:
        self.cluster.changed()

    def ask_keyframe(self, owner: str, stream_id: str) -> None:
        self.cluster.send(owner, "keyframe", stream=stream_id)

    def ask_end(self, owner: str, stream_id: str, reason: str) -> None:
        self.cluster.send(owner, "end", stream=stream_id, reason=reason)

    # --- Redis ---------------------------------------------------------------------------------

    def _snapshot(self) -> NodeState:
        counts = self.address_counts() if self.address_counts is not None else ({}, {})
        return node_snapshot(
            self.node_id, self.node_address, self._rooms.values(), self._remote_rooms.values(), counts
        )

    def _on_sync(self, lost: builtins.list[NodeState]) -> None:
        lost_streams = {s: n for n in lost for s in n.streams}
        for stream_id, room in list(self._remote_rooms.items()):
            if stream_id in lost_streams:
                continue
            found = self._remote_record(stream_id)
            info = info_of(found[1]) if found is not None else None
            if info is None or not info.live:
                self.close_soon(room, "stream_gone")
            else:
                live = room.info
                for name in ("title", "category", "mosaic", "text_net"):
                    setattr(live, name, getattr(info, name))
        for stream_id, node in lost_streams.items():
            info = info_of(node.streams[stream_id])
            if info is not None and (info.live or stream_id in self._remote_rooms):
                self._tasks.create(self._end_lost(stream_id, info, node), f"lost-{stream_id}")
        self._forwards.reconcile(self._wanted_forwards())
        for local in self._rooms.values():
            total = self.total_viewers(local)
            if local.info.live and total != local.info.viewer_count:
                local.info.viewer_count = total
                self.emit_soon("stream_updated", local)

    def _wanted_forwards(self) -> dict[Key, tuple[RoomMedia, ForwardTarget]]:
        return wanted_forwards(self.cluster.nodes.values(), self._rooms)

    async def _end_lost(self, stream_id: str, info: StreamInfo, node: NodeState) -> None:
        """A stream of a lost node: close this node's copy; announce its end if we win the claim."""
        room = self._remote_rooms.get(stream_id)
        if room is None:
            room = RemoteRoom(self, info, b"", owner=node.node_id, audio=False)
            self._remote_rooms[stream_id] = room
        try:
            claimed = await self.cluster.claim(f"{PREFIX}ended:{node.node_id}:{stream_id}", CLAIM_TTL_S)
        except (RedisError, OSError):
            claimed = True  # Redis went away again: better twice than never
        await room.close("node_lost" if claimed else "stream_gone")

    def _on_message(self, msg: dict[str, Any]) -> None:
        op, stream_id, sender = msg.get("op"), msg.get("stream"), str(msg.get("from"))
        room = self._rooms.get(stream_id) if isinstance(stream_id, str) else None
        if room is None:
            return
        if op == "keyframe":
            self._forwards.request_keyframe((room.stream_id, sender))
        elif op == "end":
            reason = str(msg.get("reason") or "stopped")[:40]
            logger.info("stream %s: node %s asks to end it (%s)", room.stream_id, sender, reason)
            if self.end_stream is not None:
                self._tasks.create(self.end_stream(room, reason), f"end-{room.stream_id}")
            else:
                self.close_soon(room, reason)

    async def close_all(self) -> None:
        for room in list(self._remote_rooms.values()):
            await room.close("no_viewers")
        await super().close_all()
        await self._forwards.close()
        await self.cluster.stop()
