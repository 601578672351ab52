"""Signaling's part of several nodes (``--redis-url``; issue #15): socket.io events through Redis
(python-socketio's ``AsyncRedisManager``: an ``emit`` on any node reaches the clients of every
node), and the hooks of :class:`relay.cluster_registry.ClusterRegistry` into this app's state: the
per-address limits count the other nodes' connections and unpublished streams, an ``end`` request
from another node ends a stream the way a local stop does, a lost node's streams end with the
reason ``node_lost``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import socketio
from aiohttp import web

from relay.cluster import PREFIX
from relay.room import Room

if TYPE_CHECKING:
    from relay.cluster_registry import ClusterRegistry
    from relay.settings import Settings
    from signaling.base import SignalingState
    from signaling.limits import AddressLimits


def client_manager(settings: Settings) -> socketio.AsyncRedisManager | None:
    """socket.io's manager: through Redis with ``--redis-url``, else ``None`` (the default, in-process)."""
    if not settings.redis_url:
        return None
    # its own logger: its "cannot reach redis" lines are about Redis, not client input (signaling/logquiet.py)
    return socketio.AsyncRedisManager(
        settings.redis_url,
        channel=PREFIX + "socketio",
        logger=logging.getLogger("signaling.cluster.socketio"),
    )


def attach_cluster(
    app: web.Application, state: SignalingState, registry: ClusterRegistry, limits: AddressLimits
) -> None:
    registry.address_counts = lambda: (limits.unpublished.counts(), limits.connections.counts())
    limits.unpublished.others = lambda address: registry.remote_count("unpublished", address)
    limits.connections.others = lambda address: registry.remote_count("connections", address)
    registry.end_stream = state.end_stream
    registry.on_copy_closed = state.forget_stream  # this node's copy of another node's stream closed
    on_event = registry.on_event

    async def on_registry_event(event: str, room: Room) -> None:
        if event == "stream_ended" and getattr(room, "lost", False):
            state.end_reasons[room.stream_id] = "node_lost"
        if on_event is not None:
            await on_event(event, room)

    registry.on_event = on_registry_event

    async def start(app: web.Application) -> None:
        await registry.start()

    app.on_startup.append(start)
