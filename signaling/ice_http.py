"""``GET /api/ice-servers``: the STUN/TURN servers the pages pass to ``RTCPeerConnection``.

``{"iceServers": [{"urls": [...], "username"?: ..., "credential"?: ...}], "expires_at": epoch|null}``;
with ``--turn-secret`` every request gets its own credentials (relay/ice.py), valid ``--turn-ttl-s``.
Never cached; the credentials are not logged (the access log is off, see run_server.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import web

from relay.ice import ice_servers, use_host_addresses
from signaling.keys import SETTINGS_KEY


async def api_ice_servers(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    now = time.time()
    servers = ice_servers(settings, now)
    rest = settings.turn_secret is not None and any("turn" in u for s in servers for u in s["urls"])
    return web.json_response(
        {"iceServers": servers, "expires_at": int(now + settings.turn_ttl_s) if rest else None},
        headers={"Cache-Control": "no-store"},
    )


def add_ice(app: web.Application) -> None:
    """The route, and (while the app runs) the --ice-address/--ice-interface choice of aioice."""
    app.router.add_get("/api/ice-servers", api_ice_servers)

    async def choose_host_addresses(app: web.Application) -> AsyncIterator[None]:
        undo = use_host_addresses(app[SETTINGS_KEY])
        yield
        if undo is not None:
            undo()

    app.cleanup_ctx.append(choose_host_addresses)
