"""HTTP API of RTMP restreams (issue #13), all with ``Authorization: Bearer <publish_key>``:

- ``POST /api/streams/{id}/restreams`` JSON ``{"url": "rtmp[s]://host[:port]/app/key"}`` →
  ``201`` ``{"restream_id", "url" (key masked), "state"}``;
- ``GET /api/streams/{id}/restreams`` → ``200`` ``{"restreams": [{"restream_id", "url", "state", "error"}]}``;
- ``DELETE /api/streams/{id}/restreams/{restream_id}`` → ``200`` ``{"restream_id", "state": "stopped"}``.

Errors are JSON ``{"error": {"code", "message"}}``: ``400`` malformed body or URL, unresolvable host;
``401`` missing or wrong key (``WWW-Authenticate: Bearer``); ``403`` a target on a loopback/private
network without ``--restream-allow-private``; ``404`` unknown stream or restream; ``409`` already
restreaming to that URL; ``415`` not JSON; ``429`` more than ``--max-restreams-per-stream``.
A restream may be added as soon as the stream exists; it pushes while the stream is live and stops
when the stream ends. The URL's key never appears in a response or a log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from relay.errors import BadRequest, Conflict, Forbidden, LimitExceeded, NotFound, RelayError
from relay.restream import TargetRefused, validate_restream_url
from signaling.keys import STATE_KEY

if TYPE_CHECKING:
    from relay.room import Room

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_S = 5.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Unauthorized(RelayError):
    code = "unauthorized"


class UnsupportedMediaType(RelayError):
    code = "unsupported_media_type"


STATUS: tuple[tuple[type[RelayError], int], ...] = (
    (Unauthorized, 401),
    (TargetRefused, 403),
    (NotFound, 404),
    (BadRequest, 400),
    (Conflict, 409),
    (LimitExceeded, 429),
    (UnsupportedMediaType, 415),
)


def error_response(exc: RelayError) -> web.Response:
    status = next(
        (s for cls, s in STATUS if isinstance(exc, cls)), 503 if exc.code == "shutting_down" else 400
    )
    headers = {"WWW-Authenticate": 'Bearer realm="mosaic-relay"'} if status == 401 else None
    return web.json_response({"error": exc.to_dict()}, status=status, headers=headers)


def _api(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RelayError as exc:
            return error_response(exc)

    return wrapped


def _room(request: web.Request) -> Room:
    """The stream of the path (404 first, with or without a key), then the publish key (401)."""
    room: Room = request.app[STATE_KEY].registry.get(request.match_info["stream_id"])
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing publish key: send Authorization: Bearer <publish_key>")
    try:
        room.check_key(token.strip())
    except Forbidden:
        raise Unauthorized("wrong publish key") from None
    return room


async def _url_from_body(request: web.Request) -> str:
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    try:
        body: Any = await request.json()
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("url"), str):
        raise BadRequest('the body must be a JSON object {"url": "rtmp://host/app/key"}')
    return str(body["url"])


@_api
async def create_restream(request: web.Request) -> web.StreamResponse:
    room = _room(request)
    url = await _url_from_body(request)
    allow_private = room.restreams.options.allow_private
    try:  # resolving the host blocks: a worker thread, bounded
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            await asyncio.to_thread(validate_restream_url, url, allow_private)
    except TimeoutError:
        raise BadRequest("resolving the host of the url took too long") from None
    restream = room.restreams.add(url)
    log.info("stream %s: restream %s to %s added", room.stream_id, restream.restream_id, restream.masked_url)
    body = {"restream_id": restream.restream_id, "url": restream.masked_url, "state": restream.state}
    location = f"/api/streams/{room.stream_id}/restreams/{restream.restream_id}"
    return web.json_response(body, status=201, headers={"Location": location})


@_api
async def list_restreams(request: web.Request) -> web.StreamResponse:
    room = _room(request)
    return web.json_response({"restreams": [r.to_dict() for r in room.restreams.list()]})


@_api
async def delete_restream(request: web.Request) -> web.StreamResponse:
    room = _room(request)
    restream_id = request.match_info["restream_id"]
    await room.restreams.remove(restream_id)
    log.info("stream %s: restream %s removed", room.stream_id, restream_id)
    return web.json_response({"restream_id": restream_id, "state": "stopped"})


def add_restream_routes(app: web.Application) -> None:
    app.router.add_post("/api/streams/{stream_id}/restreams", create_restream)
    app.router.add_get("/api/streams/{stream_id}/restreams", list_restreams)
    app.router.add_delete("/api/streams/{stream_id}/restreams/{restream_id}", delete_restream)
