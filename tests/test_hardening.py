"""Issue #12, probed from outside against the real server process (``run_server.py`` started by
each test on 127.0.0.1; 127.0.0.2 and 127.0.0.3 serve as other client addresses):

- slot squatting from one address over several connections hits the per-address limit of
  unpublished streams (``X-Forwarded-For`` changes nothing), another address still publishes;
  connections per address are limited too;
- an unpublished stream expires after ``--unpublished-ttl-s`` (``stream_ended`` reason
  ``expired``); a published one does not;
- oversized long-polling bodies (100 KB, 20 MB; Content-Length or chunked; with and without a
  sid) and oversized bodies to other routes are answered 413 within 2 s and the connection is
  closed; a slow body gets 408;
- a fuzz of malformed engine.io/socket.io input keeps the log under a line budget, without a
  traceback, and only the offending connections are dropped;
- SIGTERM under all of it: every stream ends with ``server_shutdown`` and the process exits 0
  within 5 s;
- ``X-Forwarded-For`` is honoured only from ``--trusted-proxies``; HTTP rate limit per address;
- no publish key or view token appears in the log of a full session at DEBUG level.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from aiortc import RTCSessionDescription

from relay.settings import REPO_ROOT
from tests.helpers.media import ImageTrack, Publisher, label_scene, use_loopback_ice
from tests.test_server import dummy_onnx

pytestmark = pytest.mark.timeout(180)

PUB, VIEW = "/publisher", "/viewer"
HOST = "127.0.0.1"


@dataclass
class Server:
    proc: asyncio.subprocess.Process
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """``await start_server("--flag", "value", ...)``: run_server.py on a free port, healthy."""
    weights = await asyncio.to_thread(dummy_onnx, tmp_path / "dummy.onnx")  # off the event loop
    started: list[Server] = []

    async def start(*args: str) -> Server:
        port = free_port()
        log_path = tmp_path / f"server-{port}.log"
        with log_path.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(REPO_ROOT / "run_server.py"), "--host", HOST, "--port", str(port),
                "--weights", str(weights), *args,
                cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        server = Server(proc, port, log_path)
        started.append(server)
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(server.url + "/healthz") as r:
                        if r.status == 200:
                            return server
                except aiohttp.ClientConnectionError:
                    pass
                assert proc.returncode is None, f"server exited during start-up:\n{server.log()}"
                await asyncio.sleep(0.2)
        raise AssertionError("server did not come up within 60 s")

    yield start
    for server in started:
        if server.proc.returncode is None:
            server.proc.kill()
            await server.proc.wait()


Clients = list[socketio.AsyncClient]


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    made: Clients = []
    yield made
    for c in made:
        with contextlib.suppress(Exception):
            if c.connected:
                await c.disconnect()
        with contextlib.suppress(Exception):
            if c.eio.http is not None:
                await c.eio.http.close()


async def connect(
    clients: Clients,
    url: str,
    *namespaces: str,
    source: str = HOST,
    headers: dict[str, str] | None = None,
    transport: str = "websocket",
) -> socketio.AsyncClient:
    """A socket.io client whose TCP connections come from address ``source``."""
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0)))
    client = socketio.AsyncClient(reconnection=False, http_session=http)
    clients.append(client)
    try:
        await client.connect(
            url,
            namespaces=list(namespaces) or [VIEW],
            transports=[transport],
            headers=headers or {},
            wait_timeout=10,
        )
    except BaseException:
        await http.close()
        raise
    return client


async def call(client: socketio.AsyncClient, event: str, data: dict[str, Any], ns: str = PUB) -> Any:
    return await client.call(event, data, namespace=ns, timeout=20)


async def create(client: socketio.AsyncClient, title: str = "t") -> dict[str, Any]:
    ack: dict[str, Any] = await call(client, "create_stream", {"title": title, "category": "test"})
    return ack


async def publish(client: socketio.AsyncClient, created: dict[str, Any], peers: list[Publisher]) -> Any:
    publisher = Publisher(ImageTrack(label_scene()[0], fps=15))
    peers.append(publisher)
    offer = await publisher.offer()
    ack = await call(
        client,
        "publish",
        {
            "stream_id": created["stream_id"],
            "publish_key": created["publish_key"],
            "sdp": offer.sdp,
            "type": "offer",
        },
    )
    if ack.get("ok"):
        await publisher.pc.setRemoteDescription(RTCSessionDescription(sdp=ack["sdp"], type=ack["type"]))
    return ack


@pytest.fixture
async def peers() -> AsyncIterator[list[Publisher]]:
    made: list[Publisher] = []
    with use_loopback_ice():
        yield made
        for p in made:
            await p.close()


def assert_clean_log(text: str) -> None:
    assert "Traceback" not in text, text[-4000:]
    assert " ERROR " not in text, [line for line in text.splitlines() if " ERROR " in line][:5]


# --- per-address limits ------------------------------------------------------------------------


async def test_squatting_from_one_address_is_limited_and_another_address_still_publishes(
    start_server: StartServer, clients: Clients, peers: list[Publisher]
) -> None:
    server = await start_server("--max-connections-per-address", "6")
    url = server.url
    # one address, several connections, some claiming to be someone else (no trusted proxy)
    squatters = [await connect(clients, url, PUB) for _ in range(3)] + [
        await connect(clients, url, PUB, headers={"X-Forwarded-For": f"203.0.113.{i}"}) for i in range(2)
    ]
    acks = [await create(c, f"squat{i}") for i in range(3) for c in squatters]
    ok = [a for a in acks if a["ok"]]
    refused = [a for a in acks if not a["ok"]]
    assert len(ok) == 4, acks
    assert {a["error"]["code"] for a in refused} == {"limit_exceeded"}
    assert "unpublished streams per client address" in refused[0]["error"]["message"]

    # a second address creates and publishes; publishing frees the slot of the first address's
    # own stream too (only unpublished streams count)
    other = await connect(clients, url, PUB, source="127.0.0.2")
    created = await create(other, "honest")
    assert created["ok"], created
    answer = await publish(other, created, peers)
    assert answer["ok"] and answer["sdp"].startswith("v=0"), answer
    assert (await publish(squatters[0], ok[0], peers))["ok"]
    assert (await create(squatters[1], "after publish"))["ok"]
    assert not (await create(squatters[2], "still full"))["ok"]

    # connections per address: a sixth connection from 127.0.0.1 is refused, 127.0.0.3 connects
    await connect(clients, url, VIEW)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await connect(clients, url, VIEW)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await connect(clients, url, VIEW, transport="polling")
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/socket.io/?EIO=4&transport=polling") as r:
            assert r.status == 429
    assert (await call(await connect(clients, url, VIEW, source="127.0.0.3"), "list_streams", {}, VIEW))["ok"]
    # a connection that ends frees its slot
    await squatters[4].disconnect()
    await asyncio.sleep(0.3)
    await connect(clients, url, VIEW)
    assert_clean_log(server.log())


async def test_unpublished_streams_expire(
    start_server: StartServer, clients: Clients, peers: list[Publisher]
) -> None:
    server = await start_server("--unpublished-ttl-s", "1.5")
    pub = await connect(clients, server.url, PUB)
    ended: list[tuple[float, dict[str, Any]]] = []

    async def on_ended(msg: dict[str, Any]) -> None:
        ended.append((time.monotonic(), msg))

    pub.on("stream_ended", on_ended, namespace=PUB)
    idle = [await create(pub, f"idle{i}") for i in range(4)]
    t0 = time.monotonic()
    live = idle.pop()
    assert (await publish(pub, live, peers))["ok"]
    idle.append(await create(pub, "its slot"))  # the published stream no longer counts
    assert idle[-1]["ok"] and not (await create(pub, "over"))["ok"]
    for _ in range(60):
        if len(ended) >= 4:
            break
        await asyncio.sleep(0.1)
    got = {m["stream_id"]: (t - t0, m["reason"]) for t, m in ended}
    assert set(got) == {c["stream_id"] for c in idle}, got
    assert all(reason == "expired" and 1.0 < took < 4.0 for took, reason in got.values()), got
    assert live["stream_id"] not in got  # published: does not expire
    # the slots are free again
    assert all([(await create(pub, f"again{i}"))["ok"] for i in range(4)])
    assert "expired" in server.log()
    assert_clean_log(server.log())


# --- bounded bodies ----------------------------------------------------------------------------


@dataclass
class RawAnswer:
    status: int | None  # None: no answer
    answered_s: float  # time to the status line
    closed_s: float | None  # time until the server closed the connection (None: still open)
    sent: int  # body bytes the client managed to send


async def polling_handshake(url: str, source: str = HOST) -> str:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0))) as http:
        async with http.get(url + "/socket.io/?EIO=4&transport=polling") as r:
            text = await r.text()
    match = re.search(r'"sid":"([^"]+)"', text)
    assert match, text
    return match.group(1)


async def raw_request(
    port: int,
    head: str,
    body_size: int,
    *,
    chunked: bool = False,
    pause_after: int | None = None,
    source: str = HOST,
    within: float = 5.0,
) -> RawAnswer:
    """Send ``head`` and then up to ``body_size`` bytes of body (stopping for good after
    ``pause_after`` bytes), while reading the answer."""
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
    sent = 0
    t0 = time.monotonic()

    async def send_body() -> None:
        nonlocal sent
        writer.write(head.encode())
        chunk = b"4" * 65536
        while sent < body_size:
            n = min(len(chunk), body_size - sent)
            if pause_after is not None and sent + n > pause_after:
                n = pause_after - sent
                if n > 0:
                    writer.write(f"{n:x}\r\n".encode() + chunk[:n] + b"\r\n" if chunked else chunk[:n])
                    sent += n
                await asyncio.sleep(3600)
            writer.write(f"{n:x}\r\n".encode() + chunk[:n] + b"\r\n" if chunked else chunk[:n])
            await writer.drain()
            sent += n
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()

    sender = asyncio.create_task(send_body())
    status: int | None = None
    answered = closed = None
    try:
        async with asyncio.timeout(within):
            line = await reader.readline()
            answered = time.monotonic() - t0
            if line.startswith(b"HTTP/1.1 "):
                status = int(line.split()[1])
            while await reader.read(65536):
                pass
            closed = time.monotonic() - t0
    except (TimeoutError, ConnectionError):
        if answered is not None and closed is None and not sender.done():
            closed = time.monotonic() - t0 if reader.at_eof() else None
    finally:
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        writer.close()
    return RawAnswer(status, answered if answered is not None else within, closed, sent)


def post_head(path: str, length: int | None, extra: str = "") -> str:
    size = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: text/plain\r\n{size}{extra}\r\n"


@pytest.mark.parametrize("size", [100_000, 20_000_000], ids=["100KB", "20MB"])
async def test_oversized_bodies_are_refused_at_once_and_the_connection_closed(
    start_server: StartServer, size: int
) -> None:
    server = await start_server("--body-timeout-s", "1.5")
    port = server.port
    polling = "/socket.io/?EIO=4&transport=polling"
    cases: list[tuple[str, str, bool]] = []
    for chunked in (False, True):
        sid = await polling_handshake(server.url)
        cases += [
            (f"{polling}&sid={sid}", f"polling with sid, chunked={chunked}", chunked),
            (polling, f"polling without sid, chunked={chunked}", chunked),
            ("/api/streams", f"another route, chunked={chunked}", chunked),
        ]
    for path, what, chunked in cases:
        answer = await raw_request(port, post_head(path, None if chunked else size), size, chunked=chunked)
        assert answer.status == 413, (what, answer)
        assert answer.answered_s < 2.0 and answer.closed_s is not None and answer.closed_s < 2.0, (
            what,
            answer,
        )
    # the session of a refused POST is gone; the server still serves everyone
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + f"{polling}&sid={sid}") as r:
            assert r.status == 400
        async with http.get(server.url + "/healthz") as r:
            assert r.status == 200
    assert_clean_log(server.log())


async def test_slow_and_incomplete_bodies_time_out(start_server: StartServer) -> None:
    server = await start_server("--body-timeout-s", "1")
    sid = await polling_handshake(server.url)
    for path, chunked in (
        (f"/socket.io/?EIO=4&transport=polling&sid={sid}", False),
        ("/api/streams", True),
    ):
        answer = await raw_request(
            server.port, post_head(path, None if chunked else 1000), 1000, chunked=chunked, pause_after=10
        )
        assert answer.status == 408 and 0.9 < answer.answered_s < 2.5, (path, answer)
        assert answer.closed_s is not None and answer.closed_s < 3.0, (path, answer)
    assert_clean_log(server.log())


# --- malformed engine.io / socket.io input -----------------------------------------------------

WS_FRAMES: list[str | bytes] = [
    "", "9", "0", "6", "0{}", "4", "4{", "42", "4x", "b!!!not base64", "b", "2probe-not",
    "40/viewer,", "42/viewer,[broken", "42/viewer,{\"a\":1}", "42/viewer,null", "42/nope,[\"x\"]",
    "40/nope,", "44/viewer,{}", "49/viewer,[]", "43/viewer,7[]", "451-/viewer,[\"x\",{\"_placeholder\":true,\"num\":0}]",
    "4" + "1" * 200, "42/viewer,123456789012345678901234567890[\"x\"]", "4" + "\x00\xff" * 10,
    b"\x00\x01\x02garbage", b"\xff" * 100, b"",
]  # fmt: skip
POLL_BODIES: list[bytes] = [
    b"0", b"0{\"sid\":\"x\"}", b"2", b"6", b"9", b"", b"\x1e\x1e", b"\xff\xfe\x00", b"b!!!", b"4\x1e" * 17 + b"4",
    b"42/viewer,[broken", b"40/nope,", b"4" + b"9" * 300, b"d=%ZZ", b"42/viewer,{\"a\":1}",
]  # fmt: skip
BAD_GETS = [
    "/socket.io/", "/socket.io/?EIO=3&transport=polling", "/socket.io/?EIO=4&transport=bogus",
    "/socket.io/?EIO=4&transport=polling&sid=nope", "/socket.io/?EIO=4&transport=websocket",
    "/socket.io/?EIO=4&transport=polling&j=x",
]  # fmt: skip


# inputs after which the server must have closed the websocket (the others may be answered)
MUST_CLOSE: list[str | bytes] = ["", "9", "0", "6", "42/viewer,[broken", '42/viewer,{"a":1}', b"\xff" * 100]


async def fuzz_websocket(http: aiohttp.ClientSession, url: str, frame: str | bytes) -> bool:
    """Send one frame after the handshake; True if the server closed the websocket after it."""
    async with http.ws_connect(url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket") as ws:
        opened = await ws.receive(timeout=5)
        assert opened.type == aiohttp.WSMsgType.TEXT and opened.data.startswith("0"), opened
        if not (isinstance(frame, str) and frame.startswith("40/viewer")):
            await ws.send_str("40/viewer,")
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
        else:
            await ws.send_str(frame)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.3):
                async for _ in ws:
                    pass
        return ws.closed


async def fuzz_polling(http: aiohttp.ClientSession, url: str, body: bytes) -> int:
    async with http.get(url + "/socket.io/?EIO=4&transport=polling") as r:
        sid = re.search(r'"sid":"([^"]+)"', await r.text())
    assert sid is not None
    post = f"{url}/socket.io/?EIO=4&transport=polling&sid={sid.group(1)}"
    async with asyncio.timeout(3):  # every POST is answered (an OPEN packet too)
        async with http.post(post, data=body, headers={"Content-Type": "text/plain"}) as r:
            await r.read()
            return r.status


async def test_malformed_input_is_answered_quietly_and_drops_only_its_connection(
    start_server: StartServer, clients: Clients
) -> None:
    server = await start_server("--http-requests-per-second", "1000")
    url = server.url
    bystander = await connect(clients, url, PUB, VIEW, source="127.0.0.2")
    poller = await connect(clients, url, VIEW, source="127.0.0.2", transport="polling")
    created = await create(bystander, "bystander")
    assert created["ok"]
    lines_before = len(server.log().splitlines())

    sent = 0
    statuses: set[int] = set()
    for round_ in range(6):
        source = "127.0.0.1" if round_ % 2 else "127.0.0.3"
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        async with aiohttp.ClientSession(connector=connector) as http:
            for frame in WS_FRAMES:
                closed = await fuzz_websocket(http, url, frame)
                assert closed or frame not in MUST_CLOSE, frame
                sent += 1
            for body in POLL_BODIES:
                statuses.add(await fuzz_polling(http, url, body))
                sent += 1
            for path in BAD_GETS:
                async with asyncio.timeout(3), http.get(url + path) as r:
                    assert r.status == 400, (path, r.status)
                sent += 1
    assert sent >= 250
    assert statuses <= {200, 400}, statuses

    # only the offending connections were dropped
    assert bystander.connected and poller.connected
    assert (await call(poller, "list_streams", {}, VIEW))["ok"]
    assert (await call(bystander, "list_streams", {}, VIEW))["ok"]
    stop = {"stream_id": created["stream_id"], "publish_key": created["publish_key"]}
    assert (await call(bystander, "stop_stream", stop))["ok"]  # the stream was still there

    await asyncio.sleep(0.5)
    fuzz_log = server.log().splitlines()[lines_before:]
    print(f"{sent} malformed inputs -> {len(fuzz_log)} log lines:", *fuzz_log, sep="\n")
    assert_clean_log("\n".join(fuzz_log))
    warnings = [line for line in fuzz_log if " WARNING " in line]
    # one WARNING per offending address per minute (two addresses), a few INFO lines
    assert len(warnings) <= 2, warnings
    assert all(("127.0.0.1" in w or "127.0.0.3" in w) for w in warnings), warnings
    assert len(fuzz_log) <= 10, fuzz_log


# --- shutdown under abuse ----------------------------------------------------------------------


async def test_sigterm_under_abuse_ends_every_stream_and_exits_within_5s(
    start_server: StartServer, clients: Clients, peers: list[Publisher]
) -> None:
    server = await start_server()  # --shutdown-timeout-s 5 (default)
    url = server.url
    pub = await connect(clients, url, PUB, VIEW)
    ended: list[dict[str, Any]] = []

    async def on_ended(msg: dict[str, Any]) -> None:
        ended.append(msg)

    pub.on("stream_ended", on_ended, namespace=PUB)
    live, idle = await create(pub, "live"), await create(pub, "idle")
    assert (await publish(pub, live, peers))["ok"]
    poller = await connect(clients, url, VIEW, source="127.0.0.2", transport="polling")
    assert poller.connected
    # an unused polling handshake, a GET poll left pending, a hung POST body, a slow 20 MB upload
    unused = await polling_handshake(url)
    pending_sid = await polling_handshake(url, source="127.0.0.3")
    http = aiohttp.ClientSession()
    pending_get = asyncio.create_task(
        http.get(
            f"{url}/socket.io/?EIO=4&transport=polling&sid={pending_sid}", timeout=aiohttp.ClientTimeout(30)
        )
    )
    hung_post = asyncio.create_task(
        raw_request(
            server.port,
            post_head(f"/socket.io/?EIO=4&transport=polling&sid={unused}", 1000),
            1000,
            pause_after=10,
            within=20,
        )
    )
    slow_upload = asyncio.create_task(
        raw_request(
            server.port,
            post_head("/api/streams", None),
            20_000_000,
            chunked=True,
            pause_after=30_000,
            within=20,
        )
    )
    fuzz = asyncio.create_task(fuzz_loop(url))
    await asyncio.sleep(1.0)
    try:
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(server.proc.wait(), 15)
        took = time.monotonic() - t0
        print(f"SIGTERM -> exit: {took:.2f} s")
        assert code == 0 and took < 5.0, (code, took)
        for _ in range(20):
            if len(ended) >= 2:
                break
            await asyncio.sleep(0.1)
        assert {m["stream_id"]: m["reason"] for m in ended} == {
            live["stream_id"]: "server_shutdown",
            idle["stream_id"]: "server_shutdown",
        }
        post_answer = await asyncio.wait_for(hung_post, 5)
        assert post_answer.closed_s is not None and post_answer.closed_s < 20, post_answer
        upload_answer = await asyncio.wait_for(slow_upload, 5)
        assert upload_answer.closed_s is not None and upload_answer.closed_s < 20, upload_answer
        with contextlib.suppress(aiohttp.ClientError):
            async with asyncio.timeout(5):
                response = await pending_get
                await response.read()
    finally:
        fuzz.cancel()
        for task in (pending_get, hung_post, slow_upload, fuzz):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await http.close()
    log = server.log()
    assert "Traceback" not in log and "shutdown failed" not in log, log[-4000:]


async def fuzz_loop(url: str) -> None:
    """Malformed input in the background, until cancelled."""
    with contextlib.suppress(aiohttp.ClientError, OSError, AssertionError, TimeoutError):
        async with aiohttp.ClientSession() as http:
            while True:
                for frame in WS_FRAMES[:8]:
                    await fuzz_websocket(http, url, frame)
                for body in POLL_BODIES[:4]:
                    await fuzz_polling(http, url, body)


# --- X-Forwarded-For and the HTTP rate -----------------------------------------------------------


async def test_x_forwarded_for_is_honoured_only_from_trusted_proxies(
    start_server: StartServer, clients: Clients
) -> None:
    server = await start_server(
        "--trusted-proxies", "127.0.0.1,10.0.0.0/8", "--http-requests-per-second", "5"
    )
    url = server.url
    # behind the trusted proxy (127.0.0.1): the client is the first untrusted address from the right
    for i in range(3):
        headers = {"X-Forwarded-For": f"198.51.100.7, 203.0.113.{i}, 10.1.2.3"}
        c = await connect(clients, url, PUB, headers=headers)
        assert all([(await create(c, f"via proxy {i}.{k}"))["ok"] for k in range(4)])
        assert not (await create(c, "one too many"))["ok"]
    # a peer that is not a trusted proxy cannot choose its address
    spoofers = [
        await connect(clients, url, PUB, source="127.0.0.2", headers={"X-Forwarded-For": f"192.0.2.{i}"})
        for i in range(3)
    ]
    acks = [await create(c, "spoof") for c in spoofers for _ in range(2)]
    assert sum(a["ok"] for a in acks) == 4, acks

    # HTTP rate per address (5/s, burst 10): the proxy's clients are told apart, 429 past it
    async def burst(source: str, forwarded: str | None) -> list[int]:
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
            statuses = []
            for _ in range(20):
                async with http.get(url + "/api/streams") as r:
                    statuses.append(r.status)
                    if r.status == 429:
                        assert r.headers["Retry-After"] == "1"
                        assert (await r.json())["error"]["code"] == "rate_limited"
            return statuses

    first = await burst("127.0.0.1", "203.0.113.50")
    assert first.count(200) in range(9, 13) and first.count(429) >= 7, first
    assert (await burst("127.0.0.1", "203.0.113.51")).count(200) >= 9  # another client of the proxy
    assert (await burst("127.0.0.4", "203.0.113.51")).count(200) >= 9  # 127.0.0.4 itself
    assert (await burst("127.0.0.4", "203.0.113.52")).count(429) >= 7  # ... the header is ignored
    assert_clean_log(server.log())


async def test_without_trusted_proxies_x_forwarded_for_is_ignored(
    start_server: StartServer, clients: Clients
) -> None:
    server = await start_server()
    clients_ = [
        await connect(clients, server.url, PUB, headers={"X-Forwarded-For": f"203.0.113.{i}"})
        for i in range(3)
    ]
    acks = [await create(c, "xff") for c in clients_ for _ in range(2)]
    assert sum(a["ok"] for a in acks) == 4, acks


# --- no secret in the log ------------------------------------------------------------------------


async def test_no_publish_key_or_view_token_in_the_log_at_debug_level(
    start_server: StartServer, clients: Clients, peers: list[Publisher]
) -> None:
    server = await start_server("--log-level", "DEBUG")
    url = server.url
    secrets_seen: list[str] = []
    for transport in ("websocket", "polling"):
        pub = await connect(clients, url, PUB, transport=transport)
        view = await connect(clients, url, VIEW, transport=transport)
        public = await create(pub, "public")
        private = await call(pub, "create_stream", {"title": "p", "category": "c", "private": True})
        assert public["ok"] and private["ok"]
        secrets_seen += [public["publish_key"], private["publish_key"], private["view_token"]]
        for created in (public, private):
            assert (await publish(pub, created, peers))["ok"]
        minted = await call(
            pub, "view_token", {"stream_id": private["stream_id"], "publish_key": private["publish_key"]}
        )
        assert minted["ok"]
        secrets_seen.append(minted["view_token"])
        from tests.helpers.media import Viewer

        viewer = Viewer()
        peers.append(viewer)  # type: ignore[arg-type]
        await viewer.pc.setLocalDescription(await viewer.pc.createOffer())
        offer = {"sdp": viewer.pc.localDescription.sdp, "type": "offer"}
        joined = await call(
            view, "view", {"stream_id": private["stream_id"], "token": minted["view_token"], **offer}, VIEW
        )
        assert joined["ok"], joined
        # wrong keys and tokens, and secrets where they do not belong, are logged as refusals only
        wrong = await call(
            view, "view", {"stream_id": private["stream_id"], "token": public["publish_key"], **offer}, VIEW
        )
        assert not wrong["ok"]
        bad = await call(
            pub,
            "set_mosaic",
            {"stream_id": public["stream_id"], "publish_key": private["publish_key"], "enabled": False},
        )
        assert bad["error"]["code"] == "forbidden"
        odd = await call(
            pub,
            "stop_stream",
            {
                "stream_id": public["stream_id"],
                "publish_key": public["publish_key"],
                "x": private["view_token"],
            },
        )
        assert odd["error"]["code"] == "bad_request"
        for created in (public, private):
            stop = {"stream_id": created["stream_id"], "publish_key": created["publish_key"]}
            assert (await call(pub, "set_mosaic", {**stop, "enabled": False}))["ok"]
            assert (await call(pub, "stop_stream", stop))["ok"]
    await asyncio.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(server.proc.wait(), 10) == 0
    log = server.log()
    assert len(log.splitlines()) > 200 and " DEBUG " in log  # a full DEBUG log, packets included
    for secret in secrets_seen:
        assert secret not in log
        for part in (secret[:16], secret[-16:]):  # nor a recognisable piece of one
            assert part not in log, part


# --- the pure parts ------------------------------------------------------------------------------


def test_address_resolver_trusts_forwarded_for_only_from_trusted_proxies() -> None:
    from signaling.limits import AddressResolver

    plain = AddressResolver()
    assert plain.resolve("10.0.0.1", "203.0.113.9") == "10.0.0.1"
    assert plain.resolve("::ffff:10.0.0.1", None) == "10.0.0.1"
    assert plain.resolve(None, "203.0.113.9") == "unknown"
    proxied = AddressResolver(["10.0.0.0/8", "::1"])
    assert proxied.resolve("10.0.0.1", "203.0.113.9") == "203.0.113.9"
    assert proxied.resolve("10.0.0.1", "198.51.100.1, 203.0.113.9, 10.2.2.2") == "203.0.113.9"
    assert proxied.resolve("10.0.0.1", "198.51.100.1, not-an-ip, 10.2.2.2") == "10.2.2.2"
    assert proxied.resolve("192.0.2.1", "203.0.113.9") == "192.0.2.1"  # not a trusted peer
    assert proxied.resolve("::1", "2001:db8::5") == "2001:db8::5"
    assert proxied.resolve("10.0.0.1", "10.3.3.3") == "10.3.3.3"  # only proxies: the last one


def test_quiet_log_warns_once_per_address_per_minute(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from signaling.logquiet import QuietLog

    now = [0.0]
    quiet = QuietLog(logging.getLogger("test.quiet"), clock=lambda: now[0])
    with caplog.at_level(logging.DEBUG, logger="test.quiet"):
        for i in range(100):
            quiet.report(f"bad {i}\nwith a newline", "192.0.2.1")
            quiet.report("bad", "192.0.2.2")
        now[0] = 61.0
        quiet.report("again", "192.0.2.1")
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert [r.getMessage().split(":")[0] for r in warnings] == [
        "bad input from 192.0.2.1",
        "bad input from 192.0.2.2",
        "bad input from 192.0.2.1",
    ]
    assert all("\n" not in r.getMessage() for r in caplog.records)


def test_secret_filter_redacts_keys_and_tokens() -> None:
    import secrets as secrets_

    from signaling.access import ViewTokens
    from signaling.logquiet import redact

    key = secrets_.token_urlsafe(32)
    token, _ = ViewTokens(b"0123456789abcdef").issue("stream")
    text = redact(f'{{"publish_key": "{key}", "token": "{token}"}} sid=AbCdEfGhIjKlMnOpQrSt')
    assert key not in text and token not in text and "sid=AbCdEfGhIjKlMnOpQrSt" in text


def test_engineio_payload_checks() -> None:
    from signaling.eio import payload_problem

    assert payload_problem(b'42/viewer,["list_streams",{}]\x1e3') is None
    for bad in (b"0", b"2", b"6", b"", b"\xff", b"9", b"4\x1e" * 20):
        assert payload_problem(bad) is not None, bad
