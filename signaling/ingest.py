"""The HTTP ingest/egress API (issue #13): the stream API, WHIP and WHEP, registered on one app."""

from __future__ import annotations

from aiohttp import web

from signaling.http_common import SESSIONS_KEY, HttpSessions
from signaling.streams_api import add_stream_api_routes
from signaling.whep import add_whep_routes
from signaling.whip import add_whip_routes


def add_ingest_routes(app: web.Application) -> None:
    """Register ``/api/streams`` (POST, DELETE), ``/whip/...`` and ``/whep/...`` on ``app``."""
    app[SESSIONS_KEY] = HttpSessions()
    add_stream_api_routes(app)
    add_whip_routes(app)
    add_whep_routes(app)
