"""WHIP ingest (RFC 9725): an encoder publishes to a stream with one HTTP POST of its SDP offer.

``POST /whip/{stream_id}`` with ``Authorization: Bearer <publish_key>`` and ``Content-Type:
application/sdp`` → ``201`` with the answer (aiortc gathers its candidates before answering) and the
session URL in ``Location``; ``DELETE <Location>`` ends the stream (reason ``stopped``). The offer
may send VP8 or H.264 (relay/ingest_codecs.py) and optionally Opus. Trickle ICE and ICE restarts are
not supported (``PATCH`` → 405): offers without candidates still connect, through the peer-reflexive
candidates of the client's connectivity checks.

A publisher that vanishes without DELETE is noticed by the room's media watchdog (no video for
``PUBLISHER_MEDIA_TIMEOUT_S``), which ends the stream.
"""

from __future__ import annotations

import logging

from aiohttp import web

from signaling.http_common import (
    SDP_TYPE,
    SESSIONS_KEY,
    api,
    options_handler,
    read_body,
    state_of,
    stream_id_of,
)
from signaling.messages import PublishRequest
from signaling.streams_api import check_publish_key

log = logging.getLogger(__name__)

ENDPOINT_METHODS = "POST, OPTIONS"
SESSION_METHODS = "DELETE, PATCH, OPTIONS"


@api(ENDPOINT_METHODS)
async def whip_post(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    room = state.registry.get(stream_id_of(request))  # 404 first, with or without a key
    key = check_publish_key(request, room)
    sdp = await read_body(request, SDP_TYPE, state.settings.max_sdp_bytes)
    req = PublishRequest.from_dict(
        {"stream_id": room.stream_id, "publish_key": key, "sdp": sdp, "type": "offer"}, state.settings
    )
    answer = await room.publish(req.publish_key, req.sdp, req.type)
    sessions = request.app[SESSIONS_KEY]
    session = sessions.add("whip", sessions.new_id(), room)
    log.info("stream %s published over WHIP", room.stream_id)
    return web.Response(
        status=201,
        body=answer["sdp"].encode(),
        content_type=SDP_TYPE,
        headers={"Location": f"/whip/{room.stream_id}/{session.session_id}", "Cache-Control": "no-store"},
    )


@api(SESSION_METHODS)
async def whip_delete(request: web.Request) -> web.StreamResponse:
    """The session URL is the capability (unguessable); a bearer token, if sent, is not needed."""
    state = state_of(request)
    session = request.app[SESSIONS_KEY].get("whip", stream_id_of(request), request.match_info["session_id"])
    request.app[SESSIONS_KEY].discard(session.session_id)
    log.info("stream %s: WHIP session deleted", session.room.stream_id)
    await state.end_stream(session.room, "stopped")
    return web.Response(status=200)


@api(SESSION_METHODS)
async def whip_patch(request: web.Request) -> web.StreamResponse:
    """Trickle ICE and ICE restarts are not supported (RFC 9725 §4.3.1: 405)."""
    request.app[SESSIONS_KEY].get("whip", stream_id_of(request), request.match_info["session_id"])
    return web.Response(status=405, headers={"Allow": "DELETE, OPTIONS"})


def add_whip_routes(app: web.Application) -> None:
    app.router.add_post("/whip/{stream_id}", whip_post)
    app.router.add_route("OPTIONS", "/whip/{stream_id}", options_handler(ENDPOINT_METHODS, accept_post=True))
    app.router.add_delete("/whip/{stream_id}/{session_id}", whip_delete)
    app.router.add_patch("/whip/{stream_id}/{session_id}", whip_patch)
    app.router.add_route("OPTIONS", "/whip/{stream_id}/{session_id}", options_handler(SESSION_METHODS))
