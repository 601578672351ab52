"""WHEP egress: a player watches a stream with one HTTP POST of its receive-only SDP offer.

``POST /whep/{stream_id}`` (``Authorization: Bearer <view token>`` for private streams, none for
public ones) with ``Content-Type: application/sdp`` → ``201``, the answer and the session URL in
``Location``; ``DELETE <Location>`` → ``200`` removes the viewer (the unguessable session URL is the
capability). The player gets the room's sanitized video in the first codec of its offer that the
relay sends, VP8 or H.264 constrained baseline (relay/egress_codecs.py), and its Opus audio when the
offer receives Opus: the same encoded packets as every other viewer of that codec (one encode per
codec per room: relay/media.py), counted in ``viewer_count``. An offer with neither codec gets
``400 unsupported_codec``.
"""

from __future__ import annotations

import logging

from aiohttp import web

from signaling.http_common import (
    SDP_TYPE,
    SESSIONS_KEY,
    Unauthorized,
    api,
    bearer_token,
    options_handler,
    read_body,
    state_of,
    stream_id_of,
)
from signaling.messages import ViewRequest

log = logging.getLogger(__name__)

ENDPOINT_METHODS = "POST, OPTIONS"
SESSION_METHODS = "DELETE, PATCH, OPTIONS"


@api(ENDPOINT_METHODS)
async def whep_post(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    room = state.registry.get(stream_id_of(request))
    token = bearer_token(request)
    if room.info.private:
        try:
            state.view_tokens.check(room.stream_id, token)
        except PermissionError as exc:
            raise Unauthorized(f"{exc}: send Authorization: Bearer <view_token>") from exc
    sdp = await read_body(request, SDP_TYPE, state.settings.max_sdp_bytes)
    req = ViewRequest.from_dict({"stream_id": room.stream_id, "sdp": sdp, "type": "offer"}, state.settings)
    sessions = request.app[SESSIONS_KEY]
    viewer_id = sessions.new_id()
    answer = await room.add_viewer(viewer_id, req.sdp, req.type)
    sessions.add("whep", viewer_id, room)
    log.info("stream %s: WHEP viewer joined", room.stream_id)
    return web.Response(
        status=201,
        body=answer["sdp"].encode(),
        content_type=SDP_TYPE,
        headers={"Location": f"/whep/{room.stream_id}/{viewer_id}", "Cache-Control": "no-store"},
    )


@api(SESSION_METHODS)
async def whep_delete(request: web.Request) -> web.StreamResponse:
    sessions = request.app[SESSIONS_KEY]
    session = sessions.get("whep", stream_id_of(request), request.match_info["session_id"])
    sessions.discard(session.session_id)
    await session.room.remove_viewer(session.session_id)
    log.info("stream %s: WHEP viewer left", session.room.stream_id)
    return web.Response(status=200)


@api(SESSION_METHODS)
async def whep_patch(request: web.Request) -> web.StreamResponse:
    """Trickle ICE and ICE restarts are not supported: 405."""
    request.app[SESSIONS_KEY].get("whep", stream_id_of(request), request.match_info["session_id"])
    return web.Response(status=405, headers={"Allow": "DELETE, OPTIONS"})


def add_whep_routes(app: web.Application) -> None:
    app.router.add_post("/whep/{stream_id}", whep_post)
    app.router.add_route("OPTIONS", "/whep/{stream_id}", options_handler(ENDPOINT_METHODS, accept_post=True))
    app.router.add_delete("/whep/{stream_id}/{session_id}", whep_delete)
    app.router.add_patch("/whep/{stream_id}/{session_id}", whep_patch)
    app.router.add_route("OPTIONS", "/whep/{stream_id}/{session_id}", options_handler(SESSION_METHODS))
