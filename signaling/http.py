"""HTTP routes: the two pages, static files, the vendored socket.io client, the JSON API."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from relay.settings import Settings, data_dir
from signaling.keys import DETECTOR_NAME_KEY, SETTINGS_KEY, STATE_KEY
from signaling.viewer import public_streams

log = logging.getLogger(__name__)

STATIC_DIR = data_dir("static")
# The socket.io browser client is committed in static/vendor/ (a copy of npm's socket.io-client, the
# version pinned in package.json; tests/test_packaging.py checks the two agree), so that a plain
# `pip install .` or the Docker image serve it without npm.
SOCKET_IO_CLIENT = STATIC_DIR / "vendor" / "socket.io.min.js"

# Pages load nothing from anywhere else (no CDN); media come in over WebRTC as blob/MediaStream;
# socket.io connects to this origin only ('self' covers ws:/wss: to the same host and port).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob: mediastream:; connect-src {connect}; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)


def content_security_policy(settings: Settings) -> str:
    """``CSP`` with connect-src 'self' plus the --allowed-origins (not '*': that would allow any)."""
    extra = [o for o in settings.allowed_origins if o != "*"]
    return CSP.replace("{connect}", " ".join(["'self'", *extra]))


def _page(name: str) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / name, headers={"Cache-Control": "no-cache"})


async def viewer_page(request: web.Request) -> web.StreamResponse:
    return _page("viewer.html")


async def publisher_page(request: web.Request) -> web.StreamResponse:
    return _page("publisher.html")


async def favicon(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(
        STATIC_DIR / "favicon.svg",
        headers={"Content-Type": "image/svg+xml", "Cache-Control": "public, max-age=86400"},
    )


async def socket_io_client(request: web.Request) -> web.StreamResponse:
    if not SOCKET_IO_CLIENT.is_file():
        log.error("%s is missing (it is committed in the repository: a broken checkout?)", SOCKET_IO_CLIENT)
        raise web.HTTPNotFound(text="socket.io client missing on this server")
    return web.FileResponse(SOCKET_IO_CLIENT, headers={"Cache-Control": "public, max-age=3600"})


async def api_streams(request: web.Request) -> web.StreamResponse:
    return web.json_response({"streams": public_streams(request.app[STATE_KEY])})


async def healthz(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    body = {"status": "ok", "streams": len(state.registry.list()), "detector": request.app[DETECTOR_NAME_KEY]}
    cluster = getattr(state.registry, "health", None)  # --redis-url (relay/cluster_registry.py)
    if cluster is not None:
        body["cluster"] = cluster()
    return web.json_response(body)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/socket.io/"):
        return
    response.headers.setdefault("Content-Security-Policy", content_security_policy(request.app[SETTINGS_KEY]))
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")


def add_routes(app: web.Application, static_dir: Path = STATIC_DIR) -> None:
    app.router.add_get("/", viewer_page)
    app.router.add_get("/publish", publisher_page)
    app.router.add_get("/vendor/socket.io.min.js", socket_io_client)
    app.router.add_get("/favicon.ico", favicon)  # browsers ask for it whatever the pages say
    app.router.add_get("/api/streams", api_streams)
    app.router.add_get("/healthz", healthz)
    app.router.add_static("/static/", static_dir, follow_symlinks=False)
    app.on_response_prepare.append(_security_headers)
