"""Shared fixtures: run an aiohttp app on a free local port; connect socket.io clients.

    async def test_x(serve_app, sio_connect):
        base_url = await serve_app(create_app(settings, detector))
        client = await sio_connect(base_url, "/viewer")
        ack = await client.call("list_streams", {}, namespace="/viewer", timeout=5)

Everything started through these fixtures is stopped at teardown (clients first, then servers,
which runs the app's on_shutdown).

Every async test runs with a guard (``no_blocking_in_event_loop``, autouse): every callback and
task step of the event loop is timed (as asyncio's debug mode does with ``slow_callback_duration``,
without its cost), and a test in which one held the loop for more than 50 ms (during the test or
its fixtures' set-up and teardown) fails at teardown, naming the callback or task. Opt out, with a reason, only where the
blocking is the point of the test or cannot be moved off the loop:

    @pytest.mark.allow_blocking(reason="...")
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import sys
import threading
import time
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

SLOW_CALLBACK_S = 0.05  # a callback computing this long (loop thread CPU time) fails the test
# ... and one blocked off the CPU this long (sleep, blocking I/O) beyond its wait for a CPU: shorter
# off-CPU stretches cannot be told from waiting for the GIL while other threads run (2 loaded cores)
BLOCKED_CALLBACK_S = 1.0
_SAMPLE_S = 0.02  # how often the guard notes how long the loop thread has waited for a CPU


def _cpu_wait_s() -> float | None:
    """Seconds the calling thread has spent runnable but waiting for a CPU (Linux), else None."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def _describe(handle: asyncio.Handle) -> str:
    """The task a handle steps (its coroutine and where it now waits), else the handle."""
    owner = getattr(getattr(handle, "_callback", None), "__self__", None)
    return repr(owner) if isinstance(owner, asyncio.Task) else repr(handle)


class _SlowCallbacks:
    """Callbacks (task steps included) of one event loop thread that ran >= SLOW_CALLBACK_S.

    On a loaded machine a quick callback can take > 50 ms of wall time only because its thread
    waited for a CPU or for the GIL. A callback counts as blocking when the loop thread spent
    ``SLOW_CALLBACK_S`` of CPU in it (work that belongs in a thread), or when its time minus that
    CPU and minus the CPU wait since the last sample (taken every ``_SAMPLE_S`` between
    callbacks) is still over ``BLOCKED_CALLBACK_S`` (a sleep or blocking I/O).
    """

    def __init__(self, thread_id: int) -> None:
        self.thread_id = thread_id
        self.messages: list[str] = []
        self.starved: list[str] = []
        self.cpu_wait_mark = _cpu_wait_s()

    def sample(self) -> None:
        self.cpu_wait_mark = _cpu_wait_s()

    def record(self, handle: asyncio.Handle, took: float, cpu: float) -> None:
        if threading.get_ident() != self.thread_id:
            return
        message = f"Executing {_describe(handle)} took {took:.3f} seconds ({cpu:.3f} s of CPU"
        now, mark = _cpu_wait_s(), self.cpu_wait_mark
        waited = now - mark if now is not None and mark is not None else 0.0
        message += f", {waited:.3f} s waiting for a CPU)"
        if cpu < SLOW_CALLBACK_S and took - waited - cpu < BLOCKED_CALLBACK_S:
            self.starved.append(message)
            return
        self.messages.append(message)


_watching: _SlowCallbacks | None = None
_handle_run = asyncio.Handle._run


def _timed_run(self: asyncio.Handle) -> None:
    """``asyncio.Handle._run`` timed (every callback and task step of every loop runs through it)."""
    start, cpu = time.monotonic(), time.thread_time()
    _handle_run(self)
    took = time.monotonic() - start
    if took >= SLOW_CALLBACK_S and _watching is not None:
        _watching.record(self, took, time.thread_time() - cpu)


@pytest.fixture
async def _event_loop_guard() -> AsyncIterator[_SlowCallbacks]:
    """Times every callback of the test's event loop; reports those slower than SLOW_CALLBACK_S.
    (Cheaper than asyncio's debug mode, which does the same but records a traceback for every
    callback it schedules: that made the relay tests 2.5x slower.)"""
    global _watching
    loop = asyncio.get_running_loop()
    watch = _SlowCallbacks(threading.get_ident())
    sampler: asyncio.TimerHandle | None = None

    def sample() -> None:
        nonlocal sampler
        watch.sample()
        sampler = loop.call_later(_SAMPLE_S, sample)

    sample()
    _watching = watch
    asyncio.Handle._run = _timed_run  # type: ignore[method-assign]
    try:
        yield watch
    finally:
        asyncio.Handle._run = _handle_run  # type: ignore[method-assign]
        _watching = None
        if sampler is not None:
            sampler.cancel()


@pytest.fixture(autouse=True)
def no_blocking_in_event_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails an async test (at teardown) in which a callback computed > 50 ms on the event loop, or
    blocked it > 1 s off the CPU."""
    is_async = inspect.iscoroutinefunction(getattr(request.node, "obj", None))
    if not is_async or request.node.get_closest_marker("allow_blocking") is not None:
        yield
        return
    watch: _SlowCallbacks = request.getfixturevalue("_event_loop_guard")
    yield
    if watch.messages:
        shown = "\n".join(m if len(m) < 1500 else m[:1500] + " [...]" for m in watch.messages[:5])
        pytest.fail(
            f"{len(watch.messages)} callback(s) blocked the event loop (more than "
            f"{SLOW_CALLBACK_S * 1000:.0f} ms of CPU or {BLOCKED_CALLBACK_S * 1000:.0f} ms off it: move the "
            "work to a thread, or mark the test "
            f"@pytest.mark.allow_blocking(reason=...)):\n{shown}",
            pytrace=False,
        )


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
