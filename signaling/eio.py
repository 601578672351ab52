"""The socket.io server with engine.io's edges hardened (python-socketio 5.18 / python-engineio
4.15, pinned: the hooks below are theirs).

- Every engine.io request runs with :data:`signaling.logquiet.PEER` set to its client address
  (``X-Forwarded-For`` only from a trusted proxy); ``environ["REMOTE_ADDR"]`` is that address.
- A new connection (handshake) from an address that holds ``max_connections_per_address``
  already is answered ``429``; the count is kept per engine.io session.
- A long-polling POST whose payload is not valid engine.io (undecodable, an OPEN, PING or NOOP
  packet, ...) is answered ``400`` and its session is dropped; the same input over a websocket
  closes that websocket. engine.io would otherwise log a traceback, or wait forever for the
  session's queue to drain and never answer.
- A socket.io packet that cannot be decoded or dispatched drops its connection (and only it).
- Every problem is one line of :class:`signaling.logquiet.QuietLog`; no traceback.
- :func:`drop_session` closes a session without waiting for a poll to fetch the CLOSE packet
  (engine.io's own ``disconnect`` waits for that: forever, for a client that stopped polling).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from typing import Any

import engineio
import socketio
from aiohttp import web
from engineio import packet as eio_packet
from engineio import payload as eio_payload
from engineio.async_drivers import aiohttp as eio_aiohttp

from signaling.limits import AddressLimits
from signaling.logquiet import PEER, QuietLog, describe

log = logging.getLogger(__name__)

# packet types a client may send (OPEN, PING and NOOP come from the server only; PING is allowed
# over websocket for the upgrade probe)
POLLING_TYPES = frozenset({eio_packet.CLOSE, eio_packet.PONG, eio_packet.MESSAGE, eio_packet.UPGRADE})
WEBSOCKET_TYPES = POLLING_TYPES | {eio_packet.PING}
CLIENT_KEY = "mosaic.client"  # environ key of the client address


def packet_problem(data: Any, allowed: frozenset[int]) -> str | None:
    """Why one engine.io packet from a client is unacceptable, or None."""
    try:
        pkt = eio_packet.Packet(encoded_packet=data)
    except Exception as exc:
        return f"undecodable engine.io packet ({describe(exc)})"
    if pkt.packet_type not in allowed:
        return f"engine.io packet of type {pkt.packet_type!r} from a client"
    return None


def payload_problem(body: bytes) -> str | None:
    """Why a long-polling POST body is unacceptable, or None."""
    try:
        text = body.decode("utf-8")
        packets = eio_payload.Payload(encoded_payload=text).packets
    except Exception as exc:
        return f"undecodable engine.io payload ({describe(exc)})"
    if not packets:
        return "empty engine.io payload"
    for pkt in packets:
        if pkt.packet_type not in POLLING_TYPES:
            return f"engine.io packet of type {pkt.packet_type!r} in a polling POST"
    return None


_DROPPING: set[asyncio.Task[None]] = set()  # drop_soon's tasks, referenced until done


def drop_soon(eio: engineio.AsyncServer, sid: str) -> None:
    """:func:`drop_session` in a task of its own (its disconnect handlers may end streams)."""
    task = asyncio.get_running_loop().create_task(drop_session(eio, sid), name=f"eio-drop-{sid[:8]}")
    _DROPPING.add(task)
    task.add_done_callback(_DROPPING.discard)


async def drop_session(eio: engineio.AsyncServer, sid: str) -> None:
    """Close engine.io session ``sid`` now: its disconnect handlers run, a pending poll or
    websocket writer gets the CLOSE packet and ends. Never waits for the client."""
    s = eio.sockets.get(sid)
    if s is None:
        return
    try:
        await s.close(wait=False, abort=False, reason=eio.reason.SERVER_DISCONNECT)
    finally:
        s.closed = True
        s.queue.put_nowait(None)  # ends a waiting poll (and the websocket writer)
        eio.sockets.pop(sid, None)


class _Body:
    """``wsgi.input`` of a request whose body the body middleware already read."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def read(self, length: int = -1) -> bytes:
        body, self._body = self._body, b""
        return body


class CheckedWebSocket(eio_aiohttp.WebSocket):  # type: ignore[misc]
    """engine.io's aiohttp websocket: a frame that is not a valid client packet closes it."""

    async def wait(self) -> Any:
        data = await super().wait()
        problem = packet_problem(data, WEBSOCKET_TYPES)
        if problem is not None:
            self.server.quiet.report(problem)
            await self.close()
            raise OSError(problem)  # engine.io ends this connection's receive loop on OSError
        return data


class RelayEngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """engine.io server (see the module docstring)."""

    def __init__(self, *, limits: AddressLimits, quiet: QuietLog, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limits = limits
        self.quiet = quiet
        # per instance (engine.io's table is shared by the module)
        drivers: dict[str, Any] = dict(vars(self)["_async"])
        drivers.update(translate_request=self._translate, websocket=CheckedWebSocket)
        self._async = drivers

    async def _translate(self, request: web.Request) -> dict[str, Any]:
        environ: dict[str, Any] = eio_aiohttp.translate_request(request)
        environ[CLIENT_KEY] = environ["REMOTE_ADDR"] = PEER.get()
        # the body middleware (signaling/bodylimit.py) read and bounded it; aiohttp kept it
        body = await request.read() if request.body_exists else b""
        environ["wsgi.input"] = _Body(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return environ

    async def handle_request(self, request: web.Request) -> web.StreamResponse:
        token = PEER.set(self.limits.resolver.of_request(request))
        try:
            refused = await self._precheck(request)
            if refused is not None:
                return refused
            response: web.StreamResponse = await super().handle_request(request)
            return response
        except Exception as exc:
            self.quiet.report(f"engine.io request failed ({describe(exc)})")
            return web.Response(status=400, text="bad request", headers={"Connection": "close"})
        finally:
            PEER.reset(token)

    async def _precheck(self, request: web.Request) -> web.StreamResponse | None:
        query = urllib.parse.parse_qs(request.query_string)
        sid = query.get("sid", [None])[0]
        if request.method == "GET" and sid is None and query.get("EIO") == ["4"]:
            if self.limits.connections.full(PEER.get()):
                self.quiet.report("too many connections from this address")
                return web.json_response({"message": "too many connections from your address"}, status=429)
        if request.method == "POST" and sid is not None and sid in self.sockets:
            problem = payload_problem(await request.read() if request.body_exists else b"")
            if problem is not None:
                self.quiet.report(problem)
                drop_soon(self, sid)
                return web.Response(status=400, text="bad payload", headers={"Connection": "close"})
        return None


class RelaySocketServer(socketio.AsyncServer):  # type: ignore[misc]
    """socket.io server: counts connections per address; a packet that fails drops its connection."""

    def __init__(self, *, limits: AddressLimits, quiet: QuietLog, **kwargs: Any) -> None:
        self._hardening = {"limits": limits, "quiet": quiet}
        super().__init__(**kwargs)
        self.limits = limits
        self.quiet = quiet

    def _engineio_server_class(self) -> Any:
        hardening = self._hardening

        def make(**kwargs: Any) -> RelayEngineServer:
            return RelayEngineServer(**hardening, **kwargs)  # type: ignore[arg-type]

        return make

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        address = environ.get(CLIENT_KEY) or PEER.get()
        if not self.limits.connections.add(address, eio_sid):
            self.quiet.report("too many connections from this address", address)
            return False
        return await super()._handle_eio_connect(eio_sid, environ)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        try:
            await super()._handle_eio_disconnect(eio_sid, reason)
        finally:
            self.limits.connections.remove(eio_sid)
            s = self.eio.sockets.get(eio_sid)
            if s is not None and reason == self.reason.CLIENT_DISCONNECT:
                # the client said goodbye (engine.io sends it nothing more): end a GET poll it left
                # pending now, rather than after the ping timeout (20 s)
                s.queue.put_nowait(None)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.quiet.report(f"bad socket.io packet ({describe(exc)}); connection dropped")
            self._binary_packet.pop(eio_sid, None)
            await drop_session(self.eio, eio_sid)
