"""The socket.io API and HTTP routes against the real app on a free port, with a fake registry.

The fake stands in for ``relay.room`` so that these tests exercise the signaling layer alone:
validation, acks, access control, events, disconnect handling. The same API through the real
rooms and real aiortc peers is in ``tests/test_signaling_media.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import pytest
import socketio
from aiohttp import web

from relay.errors import Conflict, Forbidden, LimitExceeded, NotFound
from relay.metrics import StreamMetrics
from relay.room import StreamInfo
from relay.settings import Settings
from signaling.app import create_app
from signaling.keys import STATE_KEY

pytestmark = pytest.mark.timeout(60)

ServeApp = Callable[[web.Application], Awaitable[str]]  # types of the conftest fixtures
SioConnect = Callable[..., Awaitable[socketio.AsyncClient]]

PUB, VIEW = "/publisher", "/viewer"
SDP_OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
FAKE_ANSWER = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=fake-answer\r\nt=0 0\r\n"


# --- a fake of relay.room's RoomRegistry/Room (the ARCHITECTURE.md contract), real StreamInfo ---


@dataclass
class FakeRoom:
    registry: FakeRegistry
    info: StreamInfo
    key: str
    viewers: set[str] = field(default_factory=set)
    previews: set[str] = field(default_factory=set)
    closed: bool = False
    metrics: StreamMetrics = field(default_factory=lambda: StreamMetrics(None, "fake"))

    def set_preview(self, viewer_id: str, preview: bool) -> None:
        (self.previews.add if preview else self.previews.discard)(viewer_id)

    def check_key(self, key: str) -> None:
        if not hmac.compare_digest(key.encode(), self.key.encode()):
            raise Forbidden("wrong publish key")

    async def publish(self, key: str, sdp: str, type: str) -> dict[str, str]:
        self.check_key(key)
        if self.info.title == "explode":
            raise RuntimeError("secret internal detail /etc/passwd")
        if self.info.live:
            raise Conflict("stream already has a publisher")
        if self.info.title == "slow":
            await asyncio.sleep(0.3)  # a negotiation that takes a while
        self.info.live, self.info.started_at = True, time.time()
        await self.registry.emit("stream_updated", self)
        return {"sdp": FAKE_ANSWER, "type": "answer"}

    async def add_viewer(self, viewer_id: str, sdp: str, type: str) -> dict[str, str]:
        if len(self.viewers) >= self.registry.settings.max_viewers_per_stream:
            raise LimitExceeded("too many viewers")
        self.viewers.add(viewer_id)
        self.info.viewer_count = len(self.viewers)
        await self.registry.emit("stream_updated", self)
        return {"sdp": FAKE_ANSWER, "type": "answer"}

    async def remove_viewer(self, viewer_id: str) -> None:
        if viewer_id in self.viewers:
            self.viewers.discard(viewer_id)
            self.info.viewer_count = len(self.viewers)
            await self.registry.emit("stream_updated", self)

    def set_switches(self, key: str, *, mosaic: bool | None = None, text_net: bool | None = None) -> None:
        self.check_key(key)
        if mosaic is not None:
            self.info.mosaic = mosaic
        task = asyncio.create_task(self.registry.emit("stream_updated", self))  # sync method, like Room's
        self.registry.tasks.add(task)
        task.add_done_callback(self.registry.tasks.discard)

    async def close(self, reason: str = "stopped") -> None:
        if self.closed:
            return
        if self.info.title == "stuck":
            await asyncio.sleep(3600)  # a teardown that hangs
        self.closed = True
        self.registry.rooms.pop(self.info.stream_id, None)
        await self.registry.emit("stream_ended", self)


class FakeRegistry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rooms: dict[str, FakeRoom] = {}
        self.on_event: Callable[[str, Any], Awaitable[None]] | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def emit(self, event: str, room: FakeRoom) -> None:
        if self.on_event is not None:
            await self.on_event(event, room)

    def create(self, title: str, category: str, private: bool = False) -> tuple[FakeRoom, str]:
        if len(self.rooms) >= self.settings.max_streams:
            raise LimitExceeded("too many streams")
        sid, key = secrets.token_urlsafe(8), secrets.token_urlsafe(24)
        room = FakeRoom(self, StreamInfo(sid, title, category, time.time(), private=private), key)
        self.rooms[sid] = room
        return room, key

    def get(self, stream_id: str) -> FakeRoom:
        try:
            return self.rooms[stream_id]
        except KeyError:
            raise NotFound(f"no stream {stream_id}") from None

    def list(self) -> list[StreamInfo]:
        return [r.info for r in self.rooms.values() if r.info.live and not r.info.private]

    def current(self, stream_id: str) -> FakeRoom | None:
        return self.rooms.get(stream_id)

    async def close_all(self) -> None:
        for room in list(self.rooms.values()):
            await room.close("server_shutdown")


class NoDetector:
    name = "none"

    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        return np.zeros((0, 6), np.float32)


# --- fixtures ---


@dataclass
class Server:
    url: str
    app: web.Application
    registry: FakeRegistry
    connect: SioConnect

    async def publisher(self) -> socketio.AsyncClient:
        return await self.connect(self.url, PUB)

    async def viewer(self) -> socketio.AsyncClient:
        return await self.connect(self.url, VIEW)


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
def start_server(serve_app: ServeApp, sio_connect: SioConnect) -> StartServer:
    async def start(**overrides: Any) -> Server:
        settings = dataclasses.replace(Settings(), **overrides)
        registry = FakeRegistry(settings)
        app = create_app(settings, NoDetector(), registry=registry)  # type: ignore[arg-type]
        return Server(await serve_app(app), app, registry, sio_connect)

    return start


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    return await start_server()


async def call(client: socketio.AsyncClient, event: str, data: Any = None, ns: str = PUB) -> dict[str, Any]:
    ack = await client.call(event, data, namespace=ns, timeout=10)
    assert isinstance(ack, dict), ack
    return ack


def error_code(ack: dict[str, Any]) -> str:
    assert ack["ok"] is False, ack
    assert set(ack["error"]) == {"code", "message"}
    return str(ack["error"]["code"])


async def live_stream(
    pub: socketio.AsyncClient, title: str = "Parcel unboxing", **extra: Any
) -> tuple[str, str, dict[str, Any]]:
    created = await call(pub, "create_stream", {"title": title, "category": "unboxing", **extra})
    assert created["ok"], created
    sid, key = created["stream_id"], created["publish_key"]
    answer = await call(
        pub, "publish", {"stream_id": sid, "publish_key": key, "sdp": SDP_OFFER, "type": "offer"}
    )
    assert answer == {"ok": True, "sdp": FAKE_ANSWER, "type": "answer"}
    return sid, key, created


class Events:
    """Collects a client's server events of one name."""

    def __init__(self, client: socketio.AsyncClient, name: str, ns: str = VIEW) -> None:
        self.items: list[Any] = []
        self._new = asyncio.Event()
        client.on(name, self._on, namespace=ns)

    async def _on(self, data: Any) -> None:
        self.items.append(data)
        self._new.set()

    async def wait_for(self, pred: Callable[[Any], bool], within: float = 5.0) -> Any:
        async with asyncio.timeout(within):
            while True:
                for item in self.items:
                    if pred(item):
                        return item
                self._new.clear()
                await self._new.wait()


async def until(pred: Callable[[], bool], within: float) -> None:
    for _ in range(int(within / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {within} s")


# --- tests ---


async def test_create_publish_list_and_http(server: Server) -> None:
    pub, viewer = await server.publisher(), await server.viewer()
    assert await call(viewer, "list_streams", {}, VIEW) == {"ok": True, "streams": []}
    sid, key, created = await live_stream(pub)
    assert len(key) >= 20 and created["stream"]["live"] is False and "view_token" not in created
    listed = await call(viewer, "list_streams", {}, VIEW)
    (stream,) = listed["streams"]
    assert (
        stream["stream_id"] == sid
        and stream["title"] == "Parcel unboxing"
        and stream["category"] == "unboxing"
    )
    assert stream["mosaic"] is True and stream["viewer_count"] == 0
    assert stream["started_at"].endswith("Z") and abs(stream["started_at_epoch"] - time.time()) < 30
    assert "publish_key" not in str(listed)
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/api/streams") as r:
            assert r.status == 200 and (await r.json())["streams"] == listed["streams"]
        async with http.get(server.url + "/healthz") as r:
            assert await r.json() == {"status": "ok", "streams": 1, "detector": "none"}


async def test_http_pages_and_vendor(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        for path, needle in [
            ("/", "viewer.js"),
            ("/publish", "publisher.js"),
            ("/vendor/socket.io.min.js", "io"),
        ]:
            async with http.get(server.url + path) as r:
                assert r.status == 200, path
                assert needle in await r.text()
                assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        async with http.get(server.url + "/static/common.js") as r:
            assert r.status == 200
        async with http.get(server.url + "/static/../relay/settings.py") as r:
            assert r.status in (403, 404)


async def test_second_publish_conflicts_and_key_enforced(server: Server) -> None:
    pub, intruder = await server.publisher(), await server.publisher()
    sid, key, _ = await live_stream(pub)
    offer = {"stream_id": sid, "sdp": SDP_OFFER, "type": "offer"}
    assert error_code(await call(intruder, "publish", offer | {"publish_key": "guess"})) == "forbidden"
    assert error_code(await call(intruder, "publish", offer | {"publish_key": key})) == "conflict"
    assert error_code(
        await call(intruder, "set_mosaic", {"stream_id": sid, "publish_key": "x", "enabled": False})
    ) == ("forbidden")
    assert (
        error_code(await call(intruder, "stop_stream", {"stream_id": sid, "publish_key": key[:-1]}))
        == "forbidden"
    )
    assert server.registry.get(sid).info.mosaic is True and not server.registry.get(sid).closed


async def test_view_leave_and_viewer_count_updates(server: Server) -> None:
    pub, viewer, watcher = await server.publisher(), await server.viewer(), await server.viewer()
    updates = Events(watcher, "stream_updated")
    sid, key, _ = await live_stream(pub)
    await updates.wait_for(lambda m: m["stream"]["stream_id"] == sid and m["stream"]["live"])
    ack = await call(viewer, "view", {"stream_id": sid, "sdp": SDP_OFFER, "type": "offer"}, VIEW)
    assert ack["ok"] and ack["sdp"] == FAKE_ANSWER and ack["type"] == "answer" and ack["viewer_id"]
    await updates.wait_for(lambda m: m["stream"]["viewer_count"] == 1)
    leave = {"stream_id": sid, "viewer_id": ack["viewer_id"]}
    assert error_code(await call(watcher, "leave", leave, VIEW)) == "not_found"  # not its viewer
    assert (await call(viewer, "leave", leave, VIEW))["ok"]
    await updates.wait_for(lambda m: m["stream"]["viewer_count"] == 0)
    assert error_code(await call(viewer, "leave", leave, VIEW)) == "not_found"


async def test_set_mosaic_and_stop(server: Server) -> None:
    pub, viewer = await server.publisher(), await server.viewer()
    sid, key, _ = await live_stream(pub)
    updates, ended = Events(viewer, "stream_updated"), Events(viewer, "stream_ended")
    pub_ended = Events(pub, "stream_ended", PUB)
    await call(viewer, "view", {"stream_id": sid, "sdp": SDP_OFFER, "type": "offer"}, VIEW)
    ack = await call(pub, "set_mosaic", {"stream_id": sid, "publish_key": key, "enabled": False})
    assert ack["ok"] and ack["stream"]["mosaic"] is False
    await updates.wait_for(lambda m: m["stream"]["mosaic"] is False)
    assert (await call(pub, "stop_stream", {"stream_id": sid, "publish_key": key})) == {
        "ok": True,
        "stream_id": sid,
    }
    assert await ended.wait_for(lambda m: True) == {"stream_id": sid, "reason": "stopped"}
    assert await pub_ended.wait_for(lambda m: True) == {"stream_id": sid, "reason": "stopped"}
    assert (await call(viewer, "list_streams", {}, VIEW))["streams"] == []
    assert error_code(await call(pub, "stop_stream", {"stream_id": sid, "publish_key": key})) == "not_found"


async def test_publisher_disconnect_ends_stream_within_2s(server: Server) -> None:
    pub, viewer = await server.publisher(), await server.viewer()
    sid, _, _ = await live_stream(pub)
    ended = Events(viewer, "stream_ended")
    ack = await call(viewer, "view", {"stream_id": sid, "sdp": SDP_OFFER, "type": "offer"}, VIEW)
    assert ack["ok"]
    t0 = time.monotonic()
    await pub.disconnect()
    msg = await ended.wait_for(lambda m: m["stream_id"] == sid, within=2.0)
    assert msg["reason"] == "publisher_disconnected" and time.monotonic() - t0 < 2.0
    assert sid not in server.registry.rooms


async def test_viewers_told_even_if_closing_hangs(start_server: StartServer) -> None:
    server = await start_server(shutdown_timeout_s=0.5)
    pub, viewer = await server.publisher(), await server.viewer()
    sid, _, _ = await live_stream(pub, title="stuck")
    ended = Events(viewer, "stream_ended")
    await pub.disconnect()
    msg = await ended.wait_for(lambda m: m["stream_id"] == sid, within=2.0)
    assert msg["reason"] == "publisher_disconnected"


async def test_unpublished_stream_closed_when_creator_leaves(server: Server) -> None:
    pub = await server.publisher()
    created = await call(pub, "create_stream", {"title": "t", "category": "c"})
    await pub.disconnect()
    await until(lambda: created["stream_id"] not in server.registry.rooms, within=2)


async def test_list_pages_hear_only_of_public_streams_that_went_live(server: Server) -> None:
    pub, lister = await server.publisher(), await server.viewer()
    ended = Events(lister, "stream_ended")
    never_live = await call(pub, "create_stream", {"title": "t", "category": "c"})
    await call(
        pub, "stop_stream", {"stream_id": never_live["stream_id"], "publish_key": never_live["publish_key"]}
    )
    private_sid, private_key, _ = await live_stream(pub, private=True)
    await call(pub, "stop_stream", {"stream_id": private_sid, "publish_key": private_key})
    public_sid, public_key, _ = await live_stream(pub)
    await call(pub, "stop_stream", {"stream_id": public_sid, "publish_key": public_key})
    # events arrive in order: once the public stream's end is here, the others' would have been
    await ended.wait_for(lambda m: m["stream_id"] == public_sid)
    assert [m["stream_id"] for m in ended.items] == [public_sid]


async def test_viewer_disconnect_removes_its_viewers(server: Server) -> None:
    pub, viewer = await server.publisher(), await server.viewer()
    sid, _, _ = await live_stream(pub)
    for _ in range(2):
        assert (await call(viewer, "view", {"stream_id": sid, "sdp": SDP_OFFER, "type": "offer"}, VIEW))["ok"]
    room = server.registry.get(sid)
    assert len(room.viewers) == 2
    await viewer.disconnect()
    await until(lambda: not room.viewers, within=2)


async def test_bad_requests_always_answered(server: Server) -> None:
    pub, viewer = await server.publisher(), await server.viewer()
    cases: list[tuple[socketio.AsyncClient, str, Any, str]] = [
        (pub, "create_stream", None, "missing field: title"),
        (pub, "create_stream", "hello", "must be a JSON object"),
        (pub, "create_stream", [1, 2], "must be a JSON object"),
        (pub, "create_stream", {"title": "t"}, "missing field: category"),
        (pub, "create_stream", {"title": "t" * 1000, "category": "c"}, "too long"),
        (
            pub,
            "publish",
            {"stream_id": "nope", "publish_key": "k", "sdp": SDP_OFFER, "type": "offer"},
            "no stream",
        ),
        (
            pub,
            "publish",
            {"stream_id": "nope", "publish_key": "k", "sdp": "x" * 40_000, "type": "offer"},
            "too large",
        ),
        (viewer, "view", {"stream_id": "nope", "sdp": SDP_OFFER, "type": "offer"}, "no stream"),
        (viewer, "view", {"stream_id": 7, "sdp": SDP_OFFER, "type": "offer"}, "must be a string"),
        (viewer, "list_streams", {"x": 1}, "unknown field"),
    ]
    t0 = time.monotonic()
    for client, event, data, needle in cases:
        ns = VIEW if client is viewer else PUB
        ack = await call(client, event, data, ns)
        assert ack["ok"] is False and needle in ack["error"]["message"], (event, data, ack)
        assert ack["error"]["code"] in ("bad_request", "not_found")
    assert time.monotonic() - t0 < 5
    # no payload at all, and two payloads
    assert error_code(await pub.call("create_stream", namespace=PUB, timeout=5)) == "bad_request"
    assert (
        error_code(await pub.call("create_stream", ({"a": 1}, 2), namespace=PUB, timeout=5)) == "bad_request"
    )


async def test_unknown_events_get_an_error(server: Server) -> None:
    viewer = await server.viewer()
    errors = Events(viewer, "request_error")
    for event in [
        "frobnicate",
        "__class__",
        "_handle",
        "trigger_event",
        "connect_x",
        "disconnect_me",
        "x" * 500,
    ]:
        ack = await call(viewer, event, {}, VIEW)
        assert error_code(ack) == "unknown_event", event
    viewer_events_elsewhere = await call(viewer, "create_stream", {"title": "t", "category": "c"}, VIEW)
    assert error_code(viewer_events_elsewhere) == "unknown_event"
    await viewer.emit("no_ack_event", {}, namespace=VIEW)  # no ack requested: still told
    msg = await errors.wait_for(lambda m: m["event"] == "no_ack_event")
    assert msg["error"]["code"] == "unknown_event"


async def test_internal_errors_hide_details(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    pub = await server.publisher()
    created = await call(pub, "create_stream", {"title": "explode", "category": "c"})
    ack = await call(
        pub,
        "publish",
        {
            "stream_id": created["stream_id"],
            "publish_key": created["publish_key"],
            "sdp": SDP_OFFER,
            "type": "offer",
        },
    )
    assert ack == {"ok": False, "error": {"code": "internal_error", "message": "internal server error"}}
    assert "secret internal detail" in caplog.text  # logged on the server, not sent


async def test_rate_limit(start_server: StartServer) -> None:
    server = await start_server(requests_per_second=2.0)
    viewer = await server.viewer()
    acks = [await call(viewer, "list_streams", {}, VIEW) for _ in range(8)]
    codes = [a["ok"] or error_code(a) for a in acks]
    assert codes[:3] == [True, True, True] and "rate_limited" in codes
    await asyncio.sleep(1.1)
    assert (await call(viewer, "list_streams", {}, VIEW))["ok"]


async def test_private_streams_need_a_token(server: Server) -> None:
    pub, viewer = await server.publisher(), await server.viewer()
    sid, key, created = await live_stream(pub, private=True)
    token = created["view_token"]
    assert created["view_token_expires_at"] > time.time() + 3600
    assert (await call(viewer, "list_streams", {}, VIEW))["streams"] == []
    offer = {"stream_id": sid, "sdp": SDP_OFFER, "type": "offer"}
    assert error_code(await call(viewer, "view", offer, VIEW)) == "forbidden"
    assert error_code(await call(viewer, "view", offer | {"token": token[:-2] + "00"}, VIEW)) == "forbidden"
    assert (await call(viewer, "view", offer | {"token": token}, VIEW))["ok"]
    fresh = await call(pub, "view_token", {"stream_id": sid, "publish_key": key, "ttl_s": 120})
    assert fresh["ok"] and fresh["view_token_expires_at"] <= time.time() + 121
    assert (await call(viewer, "view", offer | {"token": fresh["view_token"]}, VIEW))["ok"]
    assert error_code(await call(pub, "view_token", {"stream_id": sid, "publish_key": "bad"})) == "forbidden"


async def test_limits(start_server: StartServer) -> None:
    server = await start_server(max_streams=1, max_viewers_per_stream=1)
    pub, viewer = await server.publisher(), await server.viewer()
    sid, _, _ = await live_stream(pub)
    assert error_code(await call(pub, "create_stream", {"title": "t", "category": "c"})) == "limit_exceeded"
    offer = {"stream_id": sid, "sdp": SDP_OFFER, "type": "offer"}
    assert (await call(viewer, "view", offer, VIEW))["ok"]
    assert error_code(await call(viewer, "view", offer, VIEW)) == "limit_exceeded"


async def test_oversized_message_drops_connection(start_server: StartServer) -> None:
    server = await start_server(max_message_bytes=8 * 1024)
    viewer = await server.viewer()
    await viewer.emit("list_streams", {"pad": "x" * 20_000}, namespace=VIEW)
    await until(lambda: not viewer.connected, within=5)


async def test_origin_check(server: Server, sio_connect: SioConnect) -> None:
    same = await sio_connect(server.url, VIEW, headers={"Origin": server.url})
    assert same.connected
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio_connect(server.url, VIEW, headers={"Origin": "http://evil.example"})


async def test_allowed_origins_setting(start_server: StartServer, sio_connect: SioConnect) -> None:
    server = await start_server(allowed_origins=("https://stream.example",))
    assert (await sio_connect(server.url, VIEW, headers={"Origin": "https://stream.example"})).connected
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio_connect(server.url, VIEW, headers={"Origin": server.url})


async def test_shutdown_ends_streams(server: Server) -> None:
    pub, viewer = await server.publisher(), await server.viewer()
    sid, _, _ = await live_stream(pub)
    ended = Events(viewer, "stream_ended")
    await server.app.shutdown()  # what the runner does on SIGINT/SIGTERM
    assert await ended.wait_for(lambda m: True) == {"stream_id": sid, "reason": "server_shutdown"}
    assert not server.registry.rooms


async def test_default_namespace_not_served(server: Server) -> None:
    with pytest.raises(socketio.exceptions.ConnectionError):
        await server.connect(server.url, "/")


async def test_connection_state_is_forgotten_on_disconnect(server: Server) -> None:
    state = server.app[STATE_KEY]
    both = await server.connect(server.url, PUB, VIEW)
    sid, _, _ = await live_stream(both)
    assert (await call(both, "view", {"stream_id": sid, "sdp": SDP_OFFER, "type": "offer"}, VIEW))["ok"]
    assert len(state.buckets) == 1  # one engine.io connection, two namespaces, one rate limit
    assert state.owned and state.viewers
    await both.disconnect()
    await until(lambda: not state.buckets and not state.owned and not state.viewers, within=2)


async def test_publish_abandoned_mid_request_ends_the_stream(server: Server) -> None:
    creator, publisher = await server.publisher(), await server.publisher()
    created = await call(creator, "create_stream", {"title": "slow", "category": "c"})
    sid = created["stream_id"]
    offer = {"stream_id": sid, "publish_key": created["publish_key"], "sdp": SDP_OFFER, "type": "offer"}
    ended = Events(creator, "stream_ended", PUB)
    await publisher.emit("publish", offer, namespace=PUB)
    await asyncio.sleep(0.05)
    await publisher.disconnect()  # gone before the answer: nobody would ever stop this stream
    msg = await ended.wait_for(lambda m: m["stream_id"] == sid, within=3.0)
    assert msg["reason"] == "publisher_disconnected" and sid not in server.registry.rooms
