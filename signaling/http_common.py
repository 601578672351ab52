"""What the HTTP stream API, WHIP and WHEP share: errors, statuses, bearer tokens, bodies, CORS, sessions.

Every error is answered as JSON ``{"error": {"code", "message"}}`` with the HTTP status of its code
(:data:`HTTP_STATUS`); ``unauthorized`` also carries ``WWW-Authenticate: Bearer``. Handlers wrapped
by :func:`api` raise :class:`relay.errors.RelayError` (or a subclass below); anything else is logged
with its traceback and answered ``500 internal_error``, with no details.

Sessions (:class:`HttpSessions`) are the WHIP/WHEP resources: an unguessable id per publisher or
viewer peer, bound to its room. A session whose room closed (or whose viewer left) is forgotten the
next time the table is touched, so the table never holds more than the live peers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from aiohttp import web

from relay.errors import NotFound, RelayError
from signaling.keys import SETTINGS_KEY, STATE_KEY
from signaling.messages import STREAM_ID_RE

if TYPE_CHECKING:
    from relay.room import Room
    from signaling.base import SignalingState

log = logging.getLogger(__name__)

HTTP_REQUEST_TIMEOUT_S = 20.0  # as the socket.io requests: an SDP exchange includes ICE gathering
SDP_TYPE = "application/sdp"
JSON_TYPE = "application/json"
HTTP_STATUS = {
    "bad_request": 400,
    "unsupported_codec": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "limit_exceeded": 503,
    "shutting_down": 503,
    "timeout": 503,
    "internal_error": 500,
}
CORS_ALLOW_HEADERS = "Authorization, Content-Type, If-Match"
CORS_EXPOSE_HEADERS = "Location, Accept-Post, Link, ETag"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SessionKind = Literal["whip", "whep"]


class Unauthorized(RelayError, PermissionError):
    """A missing or wrong bearer token (HTTP 401 with ``WWW-Authenticate: Bearer``)."""

    code = "unauthorized"


class PayloadTooLarge(RelayError, ValueError):
    code = "payload_too_large"


class UnsupportedMediaType(RelayError, ValueError):
    code = "unsupported_media_type"


def error_response(exc: RelayError) -> web.Response:
    headers = {}
    if exc.code == "unauthorized":
        headers["WWW-Authenticate"] = 'Bearer realm="mosaic-relay"'
    return web.json_response({"error": exc.to_dict()}, status=HTTP_STATUS.get(exc.code, 500), headers=headers)


def cors_headers(request: web.Request, methods: str) -> dict[str, str]:
    """CORS headers for a request from another origin that ``--allowed-origins`` lists (or ``*``);
    none otherwise (same-origin pages and non-browser clients need none). A preflight also gets
    the allowed methods and request headers."""
    origin = request.headers.get("Origin")
    allowed = request.app[SETTINGS_KEY].allowed_origins
    if not origin or not ("*" in allowed or origin in allowed):
        return {}
    headers = {
        "Access-Control-Allow-Origin": "*" if "*" in allowed else origin,
        "Access-Control-Expose-Headers": CORS_EXPOSE_HEADERS,
        "Vary": "Origin",
    }
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        headers["Access-Control-Allow-Methods"] = methods
        headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
        headers["Access-Control-Max-Age"] = "600"
    return headers


def api(methods: str) -> Callable[[Handler], Handler]:
    """Wrap a handler: RelayError → JSON error with its status; CORS headers on every answer;
    a time limit; unexpected exceptions → 500 without details."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def run(request: web.Request) -> web.StreamResponse:
            try:
                async with asyncio.timeout(HTTP_REQUEST_TIMEOUT_S):
                    response = await handler(request)
            except RelayError as exc:
                log.info("%s %s: %s %s", request.method, request.path, exc.code, exc.message)
                response = error_response(exc)
            except TimeoutError:
                log.warning(
                    "%s %s timed out after %.0f s", request.method, request.path, HTTP_REQUEST_TIMEOUT_S
                )
                response = error_response(RelayError("the server did not answer in time", code="timeout"))
            except Exception:
                log.exception("%s %s failed", request.method, request.path)
                response = error_response(RelayError("internal server error"))
            response.headers.update(cors_headers(request, methods))
            return response

        return run

    return wrap


def options_handler(methods: str, accept_post: bool = False) -> Handler:
    """``OPTIONS``: 204 with ``Allow`` (and ``Accept-Post: application/sdp`` on WHIP/WHEP endpoints);
    a CORS preflight from an allowed origin also gets the CORS headers (:func:`api`)."""

    @api(methods)
    async def options(request: web.Request) -> web.StreamResponse:
        headers = {"Allow": methods}
        if accept_post:
            headers["Accept-Post"] = SDP_TYPE
        return web.Response(status=204, headers=headers)

    return options


def bearer_token(request: web.Request) -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def read_body(request: web.Request, content_type: str, limit: int) -> str:
    """The request body as text: 415 unless it is ``content_type``, 413 over ``limit`` bytes,
    400 unless it is UTF-8. The app's body guard (signaling/bodylimit.py) has already read it,
    bounded by ``--max-message-bytes`` and ``--body-timeout-s``; aiohttp keeps it for ``read()``."""
    if request.content_type != content_type:
        raise UnsupportedMediaType(f"send Content-Type: {content_type}")
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    data = await request.read()
    if len(data) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RelayError("the body is not UTF-8 text", code="bad_request") from exc


def stream_id_of(request: web.Request) -> str:
    """The path's stream id; a malformed one is an unknown stream (404)."""
    stream_id = request.match_info["stream_id"]
    if not STREAM_ID_RE.match(stream_id):
        raise NotFound("no such stream")
    return stream_id


def state_of(request: web.Request) -> SignalingState:
    return request.app[STATE_KEY]


@dataclass(frozen=True)
class Session:
    kind: SessionKind
    session_id: str  # for WHEP also the room's viewer id
    room: Room


class HttpSessions:
    """WHIP and WHEP sessions by id; dead ones (room closed, viewer gone) are pruned on each use."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        self._prune()
        return len(self._sessions)

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(24)

    def add(self, kind: SessionKind, session_id: str, room: Room) -> Session:
        self._prune()
        session = Session(kind, session_id, room)
        self._sessions[session_id] = session
        return session

    def get(self, kind: SessionKind, stream_id: str, session_id: str) -> Session:
        self._prune()
        session = self._sessions.get(session_id)
        if session is None or session.kind != kind or session.room.stream_id != stream_id:
            raise NotFound(f"no such {kind.upper()} session")
        return session

    def discard(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def _prune(self) -> None:
        dead = [sid for sid, s in self._sessions.items() if not _alive(s)]
        for sid in dead:
            del self._sessions[sid]


def _alive(session: Session) -> bool:
    room = session.room
    if room.closed.is_set():
        return False
    return session.kind == "whip" or session.session_id in room.viewer_ids


SESSIONS_KEY = web.AppKey("http_sessions", HttpSessions)
