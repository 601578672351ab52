"""The HTTP stream API: ``POST /api/streams`` creates a stream, ``DELETE /api/streams/{id}`` ends it.

For encoders (OBS, ffmpeg, hardware) that publish over WHIP and have no socket.io connection: the
stream is owned by whoever holds its publish key, not by a connection, so it does not end when the
HTTP client goes away. Validation, limits and error codes are those of socket.io ``create_stream``
(``CreateStreamRequest``), with HTTP statuses (signaling/http_common.py); see docs/PROTOCOL.md.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from relay.errors import BadRequest
from signaling.access import DEFAULT_VIEW_TOKEN_TTL_S
from signaling.base import Result, stream_to_api
from signaling.http_common import (
    JSON_TYPE,
    Unauthorized,
    api,
    bearer_token,
    options_handler,
    read_body,
    state_of,
    stream_id_of,
)
from signaling.messages import CreateStreamRequest

if TYPE_CHECKING:
    from relay.room import Room

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 4096  # a title and a category; far below --max-message-bytes


@api("POST, OPTIONS")
async def create_stream(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    body = await read_body(request, JSON_TYPE, MAX_JSON_BYTES)
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from exc
    req = CreateStreamRequest.from_dict(data, state.settings)
    # the per-address limit of unpublished streams and their TTL hold whichever API created them
    address = (
        state.limits.resolver.of_request(request) if state.limits is not None else (request.remote or "")
    )
    room, publish_key = state.create_stream(address, req.title, req.category, req.private)
    stream_id = room.info.stream_id
    log.info("stream %s created over HTTP (private=%s)", stream_id, req.private)
    origin = request.url.origin()
    result: Result = {
        "stream_id": stream_id,
        "publish_key": publish_key,
        "whip_url": str(origin.with_path(f"/whip/{stream_id}")),
        "whep_url": str(origin.with_path(f"/whep/{stream_id}")),
        "stream": stream_to_api(room.info),
    }
    if req.private:
        token, expiry = state.view_tokens.issue(stream_id, DEFAULT_VIEW_TOKEN_TTL_S)
        result.update(view_token=token, view_token_expires_at=expiry)
    return web.json_response(result, status=201, headers={"Cache-Control": "no-store"})


@api("DELETE, OPTIONS")
async def delete_stream(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    room = state.registry.get(stream_id_of(request))
    check_publish_key(request, room)
    await state.end_stream(room, "stopped")
    return web.json_response({"stream_id": room.info.stream_id})


def check_publish_key(request: web.Request, room: Room) -> str:
    """The key of ``Authorization: Bearer <publish key>``; 401 unless it is the room's (constant time)."""
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("send Authorization: Bearer <publish_key>")
    try:
        room.check_key(token)
    except PermissionError as exc:
        raise Unauthorized("wrong publish key") from exc
    return token


def add_stream_api_routes(app: web.Application) -> None:
    app.router.add_post("/api/streams", create_stream)
    app.router.add_route("OPTIONS", "/api/streams", options_handler("POST, OPTIONS"))
    app.router.add_delete("/api/streams/{stream_id}", delete_stream)
    app.router.add_route("OPTIONS", "/api/streams/{stream_id}", options_handler("DELETE, OPTIONS"))
