"""Shared fixtures: run an aiohttp app on a free local port; connect socket.io clients.

    async def test_x(serve_app, sio_connect):
        base_url = await serve_app(create_app(settings, detector))
        client = await sio_connect(base_url, "/viewer")
        ack = await client.call("list_streams", {}, namespace="/viewer", timeout=5)

Everything started through these fixtures is stopped at teardown (clients first, then servers,
which runs the app's on_shutdown).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio
from aiohttp import web

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run_server/relay/signaling importable without installing
    sys.path.insert(0, str(REPO_ROOT))

# the fixtures' types, for annotations in tests (copy them; test modules do not import conftest)
ServeApp = Callable[[web.Application], Awaitable[str]]
SioConnect = Callable[..., Awaitable[socketio.AsyncClient]]


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers run as subprocesses)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def serve_app() -> AsyncIterator[ServeApp]:
    """``await serve_app(app)`` serves ``app`` on 127.0.0.1 on a free port; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        runner = web.AppRunner(app, shutdown_timeout=5.0, handle_signals=False)
        await runner.setup()
        runners.append(runner)
        await web.SockSite(runner, sock).start()
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def sio_connect() -> AsyncIterator[SioConnect]:
    """``await sio_connect(base_url, "/viewer", "/publisher", headers=...)``: a connected
    python-socketio AsyncClient (websocket transport) on the given namespaces."""
    clients: list[socketio.AsyncClient] = []

    async def connect(base_url: str, *namespaces: str, **kwargs: object) -> socketio.AsyncClient:
        client = socketio.AsyncClient(reconnection=False)
        clients.append(client)
        await client.connect(
            base_url,
            namespaces=list(namespaces) or ["/viewer"],
            transports=["websocket"],
            wait_timeout=10,
            **kwargs,  # type: ignore[arg-type]
        )
        return client

    yield connect
    for client in clients:
        if client.connected:
            await client.disconnect()


@pytest.fixture
def loopback_ice() -> Iterator[None]:
    """aiortc peers gather only 127.0.0.1 candidates for the test (see tests/helpers/media.py)."""
    from tests.helpers.media import use_loopback_ice

    with use_loopback_ice():
        yield


@pytest.fixture
async def peers() -> AsyncIterator[list[Any]]:
    """Client peers (tests.helpers.media Publisher/Viewer) to close at teardown, before the servers stop."""
    made: list[Any] = []
    yield made
    for p in made:
        await p.close()


@pytest.fixture
def detector() -> Iterator[Any]:
    """The scene-aware fake detector of the issue #3 tests (tests/test_canary.py), released after."""
    from tests.test_canary import CanaryDetector

    d = CanaryDetector()
    yield d
    d.release()
