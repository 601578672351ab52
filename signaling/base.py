"""What every signaling namespace shares: request dispatch, acks, errors, rate limit, state.

A request is a socket.io event with one JSON-object argument and an ack callback. Each
namespace method ``on_<event>`` decorated with :func:`request` handles one event; the base
class validates the payload into the declared request dataclass, enforces the per-connection
rate limit and a time limit, and turns the outcome into the ack:

* ``{"ok": true, ...result}``
* ``{"ok": false, "error": {"code": ..., "message": ...}}``

Exceptions that are not :class:`relay.errors.RelayError` are logged with their traceback and
answered as ``internal_error``; no traceback ever reaches a client. Events without a handler
are answered with ``unknown_event`` (and also reported with a ``request_error`` server event,
for clients that sent them without an ack).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import socketio

from relay.errors import RelayError
from relay.settings import Settings
from signaling.access import TokenBucket, ViewTokens
from signaling.limits import AddressLimits
from signaling.messages import Request
from signaling.stats import StatsFeed

if TYPE_CHECKING:
    from relay.room import Room, RoomRegistry, StreamInfo

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 20.0  # an SDP exchange includes ICE gathering; anything slower is a fault
MAX_EVENT_NAME_LEN = 64
PUBLISHER_NS = "/publisher"
VIEWER_NS = "/viewer"

Result = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Awaitable[Result]])


def room_name(stream_id: str) -> str:
    """The socket.io room (in each namespace) of everyone attached to one stream."""
    return f"stream:{stream_id}"


def request(request_type: type[Request]) -> Callable[[F], F]:
    """Mark ``on_<event>`` as the handler of a request validated by ``request_type``."""

    def mark(fn: F) -> F:
        fn.request_type = request_type  # type: ignore[attr-defined]
        return fn

    return mark


def error_ack(code: str, message: str) -> Result:
    return {"ok": False, "error": {"code": code, "message": message}}


def stream_to_api(info: StreamInfo) -> Result:
    """The JSON form of one stream in every response and event (see docs/PROTOCOL.md)."""
    d = dict(info.to_dict())
    started = d.get("started_at")
    d["started_at_epoch"] = started
    d["started_at"] = (
        datetime.fromtimestamp(started, UTC).isoformat().replace("+00:00", "Z") if started else None
    )
    return d


@dataclass
class SignalingState:
    """Shared by the namespaces of one app: settings, registry, who holds what, server events."""

    sio: socketio.AsyncServer
    settings: Settings
    registry: RoomRegistry
    view_tokens: ViewTokens
    # rate limit per engine.io connection (shared by its namespaces); value: (bucket, namespace sids)
    buckets: dict[str, tuple[TokenBucket, set[str]]] = field(default_factory=dict)
    # publisher namespace sid -> stream ids it will close on disconnect
    owned: dict[str, set[str]] = field(default_factory=dict)
    # viewer namespace sid -> {viewer_id: stream_id}
    viewers: dict[str, dict[str, str]] = field(default_factory=dict)
    # stream id -> viewer ids that are its publisher page's own "what viewers see" preview (same
    # socket.io connection as the publisher): not counted in the viewer_count the API reports
    previews: dict[str, set[str]] = field(default_factory=dict)
    # why a stream ended, when signaling closed it (reported in stream_ended)
    end_reasons: dict[str, str] = field(default_factory=dict)
    shutting_down: bool = False  # every stream that ends from now on ends with "server_shutdown"
    limits: AddressLimits | None = None  # per-client-address limits (signaling/limits.py)
    stats: StatsFeed = field(init=False)  # the publisher's stream_stats event (signaling/stats.py)

    def __post_init__(self) -> None:
        self.stats = StatsFeed(self)

    def is_unpublished(self, stream_id: str) -> bool:
        """The stream exists and has not gone live (yet)."""
        try:
            room = self.registry.get(stream_id)
        except LookupError:
            return False
        return not room.info.live

    def create_stream(self, address: str, title: str, category: str, private: bool) -> tuple[Room, str]:
        """Create a stream for a client at ``address``: every API that creates streams calls this,
        so the per-address limit of unpublished streams holds whichever API a client uses."""
        if self.limits is not None:
            self.limits.unpublished.admit(address)  # LimitExceeded
        room, publish_key = self.registry.create(title, category, private=private)
        if self.limits is not None:
            self.limits.unpublished.track(address, room.info.stream_id)
        return room, publish_key

    async def expire_unpublished(self) -> None:
        """End every stream that was not published within ``unpublished_ttl_s`` (``expired``)."""
        if self.limits is None:
            return
        for stream_id in self.limits.unpublished.expired():
            self.limits.unpublished.forget(stream_id)
            try:
                room = self.registry.get(stream_id)
            except LookupError:
                continue
            log.info(
                "stream %s was not published within %.0f s: expired", stream_id, self.limits.unpublished.ttl_s
            )
            await self.end_stream(room, "expired")

    def forget_stream(self, stream_id: str) -> None:
        self.stats.stop(stream_id)
        if self.limits is not None:
            self.limits.unpublished.forget(stream_id)
        for streams in self.owned.values():
            streams.discard(stream_id)
        for mine in self.viewers.values():
            for viewer_id in [v for v, s in mine.items() if s == stream_id]:
                del mine[viewer_id]
        self.end_reasons.pop(stream_id, None)
        self.previews.pop(stream_id, None)

    def stream_api(self, info: StreamInfo) -> Result:
        """``stream_to_api`` with ``viewer_count`` not counting the publisher's own preview."""
        d = stream_to_api(info)
        d["viewer_count"] = max(0, int(d["viewer_count"]) - len(self.previews.get(info.stream_id, ())))
        return d

    # --- server -> client events ---

    async def on_registry_event(self, event: str, room: Room) -> None:
        """``RoomRegistry.on_event``: the relay reports that a stream changed or ended."""
        try:
            if event == "stream_ended":
                await self.stream_ended(room)
            elif event == "stream_updated":
                await self.stream_updated(room)
            else:
                log.debug("ignoring registry event %s", event)
        except Exception:
            log.exception("failed to broadcast %s", event)

    async def stream_updated(self, room: Room) -> None:
        """Send ``stream_updated`` to the stream's viewers and publisher, and for public live
        streams to every viewer-namespace connection (the list pages)."""
        info = room.info
        if info.live and self.stats.owners(info.stream_id):  # e.g. made on socket.io, published over WHIP
            self.stats.start(info.stream_id)
        msg = {"stream": self.stream_api(info)}
        target = None if (info.live and not info.private) else room_name(info.stream_id)
        await self.sio.emit("stream_updated", msg, to=target, namespace=VIEWER_NS)
        await self.sio.emit("stream_updated", msg, to=room_name(info.stream_id), namespace=PUBLISHER_NS)

    async def end_stream(self, room: Room, reason: str) -> None:
        """Close ``room`` for ``reason``, bounded by ``shutdown_timeout_s``. If closing fails or
        hangs, the stream's clients are told it ended anyway (the room is unusable either way)."""
        self.end_reasons[room.info.stream_id] = reason
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout_s):
                await room.close(reason)
        except TimeoutError:  # a slow close (a loaded machine): no traceback, it says nothing more
            log.error(
                "closing stream %s (%s) took longer than %.1f s; announcing its end anyway",
                room.info.stream_id,
                reason,
                self.settings.shutdown_timeout_s,
            )
            await self.stream_ended(room)
        except Exception:
            log.exception(
                "closing stream %s (%s) failed; announcing its end anyway", room.info.stream_id, reason
            )
            await self.stream_ended(room)

    async def stream_ended(self, room: Room) -> None:
        info = room.info
        if self._republished(room):  # a channel's next stream is there already: its news, not this end
            self.end_reasons.pop(info.stream_id, None)
            await self.stream_updated(self.registry.current(info.stream_id) or room)
            return
        reason = (
            ("server_shutdown" if self.shutting_down else None)
            or self.end_reasons.get(info.stream_id)
            or "ended"
        )
        msg = {"stream_id": info.stream_id, "reason": reason}
        name = room_name(info.stream_id)
        # every list page heard of a public stream once it went live; any other stream's end is news
        # only to its own viewers and publisher (and its id is not broadcast)
        listed = info.started_at is not None and not info.private
        await self.sio.emit("stream_ended", msg, to=None if listed else name, namespace=VIEWER_NS)
        await self.sio.emit("stream_ended", msg, to=name, namespace=PUBLISHER_NS)
        if self._republished(room):  # ... published again meanwhile: keep the new stream's state
            self.end_reasons.pop(info.stream_id, None)
            return
        self.forget_stream(info.stream_id)
        await self.sio.close_room(name, namespace=VIEWER_NS)
        await self.sio.close_room(name, namespace=PUBLISHER_NS)

    def _republished(self, room: Room) -> bool:
        """Whether another room now holds ``room``'s stream id (a channel published again while
        its last stream's end was being announced)."""
        current = self.registry.current(room.info.stream_id)
        return current is not None and current is not room


def new_viewer_id() -> str:
    return secrets.token_urlsafe(12)


class RequestNamespace(socketio.AsyncNamespace):  # type: ignore[misc]  # python-socketio ships no types
    """Base of the signaling namespaces: dispatch, validation, rate limit and acks."""

    def __init__(self, namespace: str, state: SignalingState) -> None:
        super().__init__(namespace)
        self.state = state

    # --- connection bookkeeping (rate-limit buckets are per engine.io connection) ---

    def connected(self, sid: str) -> bool:
        """False once the connection is going away (its ``on_disconnect`` may already have run:
        a handler that finishes after that must undo what it made, nobody else will)."""
        return bool(self.server.manager.is_connected(sid, self.namespace))

    def client_address(self, sid: str) -> str:
        """The client address of connection ``sid`` (``X-Forwarded-For`` only from a trusted proxy)."""
        environ = self.server.get_environ(sid, self.namespace) or {}
        return str(environ.get("mosaic.client") or "unknown")

    def _eio_sid(self, sid: str) -> str:
        return str(self.server.manager.eio_sid_from_sid(sid, self.namespace) or sid)

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        eio_sid = self._eio_sid(sid)
        s = self.state.settings
        _, sids = self.state.buckets.setdefault(
            eio_sid, (TokenBucket(s.requests_per_second, 2 * s.requests_per_second), set())
        )
        sids.add(sid)
        log.debug("connect %s sid=%s", self.namespace, sid)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        eio_sid = self._eio_sid(sid)
        entry = self.state.buckets.get(eio_sid)
        if entry is not None:
            entry[1].discard(sid)
            if not entry[1]:
                del self.state.buckets[eio_sid]
        log.debug("disconnect %s sid=%s reason=%s", self.namespace, sid, reason)

    # --- dispatch ---

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event in ("connect", "disconnect"):
            return await super().trigger_event(event, *args)
        sid, payload = args[0], args[1:]
        if not self._bucket_take(sid):
            return error_ack("rate_limited", "too many requests on this connection; slow down")
        handler = self._handler(event)
        if handler is None:
            shown = str(event)[:MAX_EVENT_NAME_LEN]
            ack = error_ack("unknown_event", f"unknown event {shown!r} in namespace {self.namespace}")
            await self.emit("request_error", {"event": shown, "error": ack["error"]}, to=sid)
            return ack
        return await self._handle(event, sid, handler, payload)

    def _handler(self, event: str) -> Callable[..., Awaitable[Result]] | None:
        if not isinstance(event, str) or not event.isidentifier() or event.startswith("_"):
            return None
        fn = getattr(self, "on_" + event, None)
        return fn if fn is not None and hasattr(fn, "request_type") else None

    def _bucket_take(self, sid: str) -> bool:
        entry = self.state.buckets.get(self._eio_sid(sid))
        return entry is None or entry[0].take()

    async def _handle(
        self, event: str, sid: str, handler: Callable[..., Awaitable[Result]], payload: tuple[Any, ...]
    ) -> Result:
        try:
            if len(payload) > 1:
                return error_ack("bad_request", "send exactly one JSON object as the payload")
            data = payload[0] if payload else {}
            req = handler.request_type.from_dict(data, self.state.settings)  # type: ignore[attr-defined]
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                result = await handler(sid, req)
            return {"ok": True, **result}
        except RelayError as exc:
            log.info("%s %s from %s: %s %s", self.namespace, event, sid, exc.code, exc.message)
            return {"ok": False, "error": exc.to_dict()}
        except TimeoutError:
            log.warning("%s %s from %s timed out after %.0f s", self.namespace, event, sid, REQUEST_TIMEOUT_S)
            return error_ack("timeout", f"the server did not complete {event} in time")
        except Exception:
            log.exception("%s %s from %s failed", self.namespace, event, sid)
            return error_ack("internal_error", "internal server error")
