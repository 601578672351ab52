"""Several nodes sharing one registry over Redis (issue #15 item 3), through the real path.

The test starts its own ``redis-server`` (loopback, no persistence) and two real ``run_server.py``
processes as served (the shipped detector and the text/barcode safety net): node A on 127.0.0.1,
node B on 127.0.0.2. A real aiortc peer publishes the canary scene (a real shipping label photo,
tests/test_canary.py) on A; B lists it with its viewer count over both nodes; an aiortc viewer and a
real Chromium viewer watch it from B, media relayed A -> B as plain RTP. Every frame B's aiortc
viewers decode is checked (the label is pixelated: ``FrameCheck``), Chromium's snapshots too, and a
mosaic-off control shows the check can tell. Also: the per-address limit counts both nodes; one
forward per stream and node, dropped with B's last viewer; a stop through B; redis-server restarted
(data gone) and a stream published afterwards still reaches B; A SIGKILLed: B's viewers get
``stream_ended`` (``node_lost``) within a few seconds, once; a third node with audio (Opus through
the link) stopped cleanly: ``server_shutdown``, never ``node_lost``; B holds no peer connection after.

Skipped only if ``/usr/bin/redis-server`` is missing (scripts/setup.sh --dev installs it).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import socketio
from aiortc.codecs.vpx import Vp8Encoder

from relay.cluster import Liveness, NodeState, decode_node, encode_node
from relay.cluster_registry import wanted_forwards
from relay.remote import ForwardTarget
from relay.room import StreamInfo
from relay.rtp_receive import RtpDepacketizer, Vp8Assembler, vp8_is_keyframe
from tests.helpers.cluster import REDIS, Node, RedisServer
from tests.helpers.media import ImageTrack, Publisher, ToneTrack, Viewer, block_stds, box_region
from tests.test_canary import BOX, PUB, SCENE, VIEW, call, go_live, until, watch
from tests.test_relay_integration import FrameCheck

NODE_TTL_S = 2.0
needs_redis = pytest.mark.skipif(
    not REDIS.is_file(), reason="/usr/bin/redis-server is missing (apt-get install redis-server)"
)


# --- pure parts ----------------------------------------------------------------------------------


def _rtp_frames(n: int) -> list[tuple[bytes, list[bytes]]]:
    """``n`` real VP8 frames (the first a keyframe) and aiortc's RTP payloads of each."""
    import av

    codec: Any = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt, codec.bit_rate = 320, 240, "yuv420p", 2_000_000
    codec.options = {"deadline": "realtime", "cpu-used": "8"}
    out = []
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
        frame.pts = i * 3000
        for packet in codec.encode(frame):
            data = bytes(packet)
            out.append((data, Vp8Encoder._packetize(data, i)))
    return out


def test_vp8_assembler_rebuilds_frames_and_gates_after_loss() -> None:
    frames = _rtp_frames(6)
    assert vp8_is_keyframe(frames[0][0]) and not vp8_is_keyframe(frames[1][0])
    assert all(len(p) > 1 for _, p in frames[:1])  # a keyframe spans several packets
    a, seq, got = Vp8Assembler(), 100, []
    for i, (_, payloads) in enumerate(frames):
        for j, payload in enumerate(payloads):
            lost = i == 2 and j == 0  # the first packet of frame 2 never arrives
            if not lost:
                f = a.push(seq & 0xFFFF, i * 3000, j == len(payloads) - 1, payload)
                if f is not None:
                    got.append((i, f.data, f.keyframe))
            seq += 1
    # frames 0 and 1 whole; 2 lost; 3-5 dropped until a keyframe (none comes): never a broken picture
    assert [(i, d) for i, d, _ in got] == [(0, frames[0][0]), (1, frames[1][0])]
    assert got[0][2] and a.wants_keyframe and a.losses == 1


def test_depacketizer_restarts_at_a_keyframe_on_a_new_ssrc() -> None:
    from aiortc.rtp import RtpPacket

    out: list[Any] = []
    losses: list[int] = []
    d = RtpDepacketizer("video", out.append, lambda: losses.append(1))
    frames = _rtp_frames(3)
    seq = 65530  # wraps
    for ssrc in (1, 2):
        for i, (_, payloads) in enumerate(frames):
            for j, payload in enumerate(payloads):
                rtp = RtpPacket(
                    payload_type=96, marker=int(j == len(payloads) - 1), sequence_number=seq & 0xFFFF
                )
                rtp.timestamp, rtp.ssrc, rtp.payload = (2**32 - 3000 + i * 3000) & 0xFFFFFFFF, ssrc, payload
                d.datagram(bytes(rtp.serialize()))
                seq += 1
    assert len(out) == 6 and out[0].is_keyframe and out[3].is_keyframe and not losses
    assert [p.pts - out[0].pts for p in out[:3]] == [0, 3000, 6000]  # unwrapped across 2**32


def test_node_state_round_trip_and_garbage() -> None:
    state = NodeState("n1", "10.0.0.5", 7, streams={"s": {"info": {"stream_id": "s"}, "key": "ab"}})
    state.viewers, state.forwards, state.connections = {"s": 3}, {"x": {"host": "h"}}, {"1.2.3.4": 2}
    back = decode_node("n1", encode_node(state))
    assert back == state
    assert decode_node("n1", {"s:x": "{}"}) is None  # no node field
    messy = decode_node("n1", {**encode_node(state), "v:s": "NaN?", "s:y": "[1]", "zz": "1"})
    assert messy is not None and messy.viewers == {} and set(messy.streams) == {"s"}


def test_liveness_judges_by_the_beat_moving_and_forgives_our_own_outage() -> None:
    live = Liveness(ttl_s=3.0)
    assert live.observe("a", 1, now=0.0) and live.observe("b", 1, now=0.0)
    live.observe("a", 2, now=2.5)  # a beats, b does not
    assert live.lost(now=3.5) == ["b"]
    assert not live.observe("b", 1, now=3.6)  # b's stale hash, still in Redis, does not revive it
    assert live.observe("b", 2, now=3.7)  # a new beat does
    live.resume(now=10.0)  # Redis was away until now: nobody is judged on that gap
    assert live.lost(now=12.0) == [] and sorted(live.lost(now=13.5)) == ["a", "b"]


def test_forwards_go_only_to_the_asking_nodes_own_address() -> None:
    class _Room:
        def __init__(self) -> None:
            self.media = object()
            self.info = StreamInfo("s", "t", "c", 0.0, live=True)

    room = _Room()
    asking = NodeState(
        "b", "10.0.0.2", forwards={"s": {"host": "10.0.0.2", "video_port": 5, "audio_port": 0}}
    )
    elsewhere = NodeState(
        "c", "10.0.0.3", forwards={"s": {"host": "192.0.2.9", "video_port": 5, "audio_port": 6}}
    )
    broken = NodeState("d", "10.0.0.4", forwards={"s": {"host": "10.0.0.4"}, "nope": {"host": "10.0.0.4"}})
    wanted = wanted_forwards([asking, elsewhere, broken], {"s": room})  # type: ignore[dict-item]
    assert list(wanted) == [("s", "b")] and wanted[("s", "b")][1] == ForwardTarget("10.0.0.2", 5, 0)
    room.info.live = False
    assert wanted_forwards([asking], {"s": room}) == {}  # type: ignore[dict-item]


# --- the real thing ------------------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nodes(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    a = Node("A", "127.0.0.1", redis_server.url, tmp_path, ttl_s=NODE_TTL_S)
    b = Node("B", "127.0.0.2", redis_server.url, tmp_path, ttl_s=NODE_TTL_S)
    try:
        await asyncio.gather(a.ready(120), b.ready(120))
        yield a, b
    finally:
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))


async def connect(url: str, ns: str, clients: list[socketio.AsyncClient]) -> socketio.AsyncClient:
    sock = socketio.AsyncClient(reconnection=False)
    clients.append(sock)
    await sock.connect(url, namespaces=[ns], transports=["websocket"], wait_timeout=20)
    return sock


def listed(streams: list[dict[str, Any]], stream_id: str) -> dict[str, Any] | None:
    return next((s for s in streams if s["stream_id"] == stream_id), None)


async def chromium_viewer(p: Any, url: str, stream_id: str) -> tuple[Any, Any]:
    browser = await p.chromium.launch(
        executable_path=shutil.which("chromium"),
        timeout=60_000,
        args=[
            *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
            *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
            "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--autoplay-policy=no-user-gesture-required",
        ],
    )
    page = await (await browser.new_context()).new_page()
    await page.goto(url + "/")
    card = page.locator(f'li.stream-card[data-stream-id="{stream_id}"]')
    await card.wait_for(timeout=15_000)
    await card.click()
    return browser, page


SNAPSHOT_JS = """(v) => { const c = document.createElement("canvas"); c.width = v.videoWidth;
  c.height = v.videoHeight; c.getContext("2d").drawImage(v, 0, 0); return c.toDataURL("image/png"); }"""


async def label_cells_std(page: Any) -> float:
    """Median std of the label's 16 px cells in what Chromium shows now (raw label: 25-75)."""
    import base64

    import cv2

    data = await page.eval_on_selector("#remote", SNAPSHOT_JS)
    png = np.frombuffer(base64.b64decode(data.split(",", 1)[1]), np.uint8)
    gray = await asyncio.to_thread(cv2.imdecode, png, cv2.IMREAD_GRAYSCALE)
    assert gray is not None and gray.shape == (480, 640), None if gray is None else gray.shape
    return float(np.median(block_stds(gray, box_region(BOX), inset=3)))


@needs_redis
@pytest.mark.browser
@pytest.mark.timeout(300)
async def test_two_nodes_one_stream_viewers_on_both_survive_redis_restart_end_on_node_loss(
    redis_server: RedisServer, nodes: tuple[Node, Node], loopback_ice: None, peers: list[Any], tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    a, b = nodes
    clients: list[socketio.AsyncClient] = []
    try:
        pub = await connect(a.url, PUB, clients)
        live = await go_live(pub, peers, title="two nodes")
        sid = live.stream_id
        on_b = await connect(b.url, VIEW, clients)
        ended: list[tuple[float, dict[str, Any]]] = []
        on_b.on("stream_ended", lambda msg: ended.append((time.monotonic(), msg)), namespace=VIEW)

        # B lists A's stream (the registry is shared) ...
        async def list_b() -> list[dict[str, Any]]:
            return list((await call(on_b, "list_streams", {}, VIEW))["streams"])

        deadline = time.monotonic() + 10
        while listed(await list_b(), sid) is None:
            assert time.monotonic() < deadline, "B never listed A's stream"
            await asyncio.sleep(0.2)

        # ... a view that fails (a broken offer) leaves no copy of the stream on B
        bad = await call(on_b, "view", {"stream_id": sid, "sdp": "v=0\r\nnot sdp", "type": "offer"}, VIEW)
        assert not bad["ok"] and "video section" in bad["error"]["message"], bad  # refused by the copy
        await until_health(b, "remote_streams", 0)

        # ... and the per-address limit of unpublished streams counts both nodes
        await per_address_limit_is_shared(a, b)

        # ... an aiortc viewer on B gets A's sanitized stream; every frame is checked
        check = FrameCheck(BOX, 640, 480, SCENE)
        viewer, _ = await watch(on_b, sid, peers, check=check)
        await viewer.wait_frames(45, timeout=60)
        assert not viewer.errors, viewer.errors[0]

        # ... a local viewer on A too, and both nodes count both viewers
        on_a = await connect(a.url, VIEW, clients)
        local_check = FrameCheck(BOX, 640, 480, SCENE)
        local, _ = await watch(on_a, sid, peers, check=local_check)
        await local.wait_frames(15, timeout=60)
        for sock in (on_a, on_b):
            await until_listed(sock, sid, 2)

        # ... and a real Chromium viewer on B: the label is pixelated in every snapshot
        async with async_playwright() as p:
            browser, page = await chromium_viewer(p, b.url, sid)
            try:
                await page.wait_for_function(
                    "() => document.querySelector('#remote').getVideoPlaybackQuality().totalVideoFrames >= 30",
                    timeout=60_000,
                )
                stds = [await label_cells_std(page) for _ in range(5)]
                assert max(stds) < 4.0, f"the label is not pixelated in Chromium on B: {stds}"
                await until_listed(on_b, sid, 3)
                # one forward A -> B for the stream, however many viewers B has
                assert (await a.health())["forwards_out"] == 1
                assert (await b.health())["remote_streams"] == 1
            finally:
                await browser.close()
        await until_listed(on_b, sid, 2)

        # Redis restarts (its data gone): the nodes write themselves again; a new viewer on B watches
        await asyncio.to_thread(redis_server.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(redis_server.start)
        await asyncio.sleep(NODE_TTL_S + 1.0)
        assert not ended, ended
        await until_listed(on_b, sid, 2)  # A wrote its stream again, B its viewer
        again = FrameCheck(BOX, 640, 480, SCENE)
        second, _ = await watch(on_b, sid, peers, check=again)
        await second.wait_frames(30, timeout=60)
        await viewer.wait_frames(viewer.count + 30, timeout=30)  # the first one never stopped
        # a stream published after the restart: a new forward A -> B, asked for through Redis
        live2 = await go_live(pub, peers, title="after the restart")
        check2 = FrameCheck(BOX, 640, 480, SCENE)
        third, third_id = await watch_when_listed(on_b, live2.stream_id, peers, check2)
        await third.wait_frames(30, timeout=60)
        assert (await a.health())["forwards_out"] == 2
        assert_clean(viewer=viewer, second=second, local_on_a=local, third=third)
        # negative control: the streamer switches the mosaic off on A; B's check sees the raw label
        # (so the check above can tell), and B lists the switch
        off = {"stream_id": live2.stream_id, "publish_key": live2.publish_key, "enabled": False}
        assert (await call(pub, "set_mosaic", off, PUB))["ok"]
        await until(lambda: bool(third.errors), 15, "B's viewer seeing the raw label once the mosaic is off")
        await until_mosaic_listed(on_b, live2.stream_id, False)
        # its only viewer on B leaves: B drops its copy, A stops that forward
        left = await call(on_b, "leave", {"stream_id": live2.stream_id, "viewer_id": third_id}, VIEW)
        assert left["ok"], left
        await until_health(b, "remote_streams", 1)
        await until_health(a, "forwards_out", 1)
        # the streamer stops it through B (HTTP API, publish key): A ends it, everyone is told once
        async with aiohttp.ClientSession() as http:
            auth = {"Authorization": f"Bearer {live2.publish_key}"}
            async with http.delete(f"{b.url}/api/streams/{live2.stream_id}", headers=auth) as r:
                assert r.status == 200, await r.text()
        await until(lambda: bool(ended), 10, "stream_ended of the stream stopped through B")
        assert [m for _, m in ended] == [{"stream_id": live2.stream_id, "reason": "stopped"}], ended
        ended.clear()

        # node A dies: B's viewers are told within a few seconds, and B lists nothing
        t_kill = time.monotonic()
        await asyncio.to_thread(a.kill)
        await until(lambda: bool(ended), NODE_TTL_S + 4.0, "stream_ended on B after A was killed")
        took = ended[0][0] - t_kill
        assert ended[0][1] == {"stream_id": sid, "reason": "node_lost"}, ended
        assert took < NODE_TTL_S + 3.0, took
        await asyncio.wait_for(viewer.ended.wait(), 10)
        await asyncio.wait_for(second.ended.wait(), 10)
        assert await list_b() == []
        await until_health(b, "remote_streams", 0)
        await asyncio.sleep(1.0)
        assert len(ended) == 1, ended  # announced once
        ended.clear()

        # a node that stops cleanly (SIGTERM): its stream ends once, "server_shutdown", never "node_lost"
        c = Node("C", "127.0.0.3", redis_server.url, tmp_path, ttl_s=NODE_TTL_S)
        try:
            await c.ready(120)
            pub_c = await connect(c.url, PUB, clients)
            live3 = await go_live_with_audio(pub_c, peers)  # and Opus through the node link too
            fourth, _ = await watch_when_listed(
                on_b, live3, peers, FrameCheck(BOX, 640, 480, SCENE), audio=True
            )
            await fourth.wait_frames(15, timeout=60)
            await until(lambda: fourth.audio_frames >= 50, 20, "B's viewer hearing C's audio")
            assert not fourth.errors, fourth.errors[0]
        finally:
            await asyncio.to_thread(c.stop)
        await until(lambda: bool(ended), 10, "stream_ended of C's stream")
        await asyncio.sleep(NODE_TTL_S + 1.5)
        assert [m for _, m in ended] == [{"stream_id": live3, "reason": "server_shutdown"}], ended
        await asyncio.wait_for(fourth.ended.wait(), 10)
        assert await list_b() == []
        # nothing of the three streams is left on B: no copy, no peer connection (Chromium's included)
        await until_health(b, "remote_streams", 0)
        await until_health(b, "peer_connections", 0)
        print(f"stream_ended on B {took:.2f} s after node A was killed")
        # how many frames kept detail outside the label depends on the load (a starved detector makes the
        # owner send whole-frame mosaic, fail closed); the mosaic-off control shows that the check can tell
        print("frames with detail outside the label:", check.detailed, again.detailed)
        print(
            "B's aiortc viewers decoded",
            viewer.count,
            second.count,
            "frames; checked",
            check.frames,
            again.frames,
        )
    finally:
        for sock in clients:
            if sock.connected:
                await sock.disconnect()


def assert_clean(**viewers: Any) -> None:
    """No viewer decoded a frame with the label raw (all are named: B's viewers and A's own)."""
    seen = {name: str(v.errors[0]) for name, v in viewers.items() if v.errors}
    assert not seen, seen


async def per_address_limit_is_shared(a: Node, b: Node, limit: int = 4) -> None:
    """``limit`` unpublished streams made on A from 127.0.0.1 (the default
    ``--max-unpublished-per-address``): one more on B is refused; they are stopped after."""
    body = {"title": "unpublished", "category": "test"}
    async with aiohttp.ClientSession() as http:
        made = []
        for _ in range(limit):
            async with http.post(f"{a.url}/api/streams", json=body) as r:
                assert r.status == 201, await r.text()
                made.append(await r.json())
        await asyncio.sleep(3.0)  # A's next beat (<= 1 s), B's next read (<= 0.5 s), on a loaded box
        async with http.post(f"{b.url}/api/streams", json=body) as r:
            refused = await r.json()
            assert r.status == 503 and refused["error"]["code"] == "limit_exceeded", (r.status, refused)
        for m in made:
            auth = {"Authorization": f"Bearer {m['publish_key']}"}
            async with http.delete(f"{a.url}/api/streams/{m['stream_id']}", headers=auth) as r:
                assert r.status == 200


async def go_live_with_audio(sock: socketio.AsyncClient, peers: list[Any]) -> str:
    created = await call(sock, "create_stream", {"title": "with audio", "category": "test"}, PUB)
    assert created["ok"], created
    publisher = Publisher(ImageTrack(SCENE, fps=15), ToneTrack())
    peers.append(publisher)

    async def answer(sdp: str, type_: str) -> dict[str, str]:
        body = {
            "stream_id": created["stream_id"],
            "publish_key": created["publish_key"],
            "sdp": sdp,
            "type": type_,
        }
        ack = await call(sock, "publish", body, PUB)
        assert ack["ok"], ack
        return ack

    await publisher.connect(answer)
    return str(created["stream_id"])


async def watch_when_listed(
    sock: socketio.AsyncClient, stream_id: str, peers: list[Any], check: FrameCheck, audio: bool = False
) -> tuple[Any, str]:
    deadline = time.monotonic() + 10
    while listed((await call(sock, "list_streams", {}, VIEW))["streams"], stream_id) is None:
        assert time.monotonic() < deadline, f"{stream_id} never listed"
        await asyncio.sleep(0.1)
    if not audio:
        return await watch(sock, stream_id, peers, check=check)
    viewer = Viewer(audio=True, check=check)
    peers.append(viewer)
    ids: list[str] = []

    async def answer(sdp: str, type_: str) -> dict[str, str]:
        ack = await call(sock, "view", {"stream_id": stream_id, "sdp": sdp, "type": type_}, VIEW)
        assert ack["ok"], ack
        ids.append(ack["viewer_id"])
        return ack

    await viewer.connect(answer)
    return viewer, ids[0]


async def until_mosaic_listed(sock: socketio.AsyncClient, stream_id: str, mosaic: bool) -> None:
    deadline = time.monotonic() + 10
    while (seen := listed((await call(sock, "list_streams", {}, VIEW))["streams"], stream_id)) is None or (
        seen["mosaic"] is not mosaic
    ):
        assert time.monotonic() < deadline, seen
        await asyncio.sleep(0.2)


async def until_health(node: Node, name: str, value: int, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while (seen := (await node.health())[name]) != value:
        assert time.monotonic() < deadline, f"node {node.name}: {name} is {seen}, not {value}"
        await asyncio.sleep(0.2)


async def until_listed(sock: socketio.AsyncClient, stream_id: str, viewers: int, within: float = 10) -> None:
    deadline = time.monotonic() + within
    seen = None
    while time.monotonic() < deadline:
        seen = listed((await call(sock, "list_streams", {}, VIEW))["streams"], stream_id)
        if seen is not None and seen["viewer_count"] == viewers:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"expected {viewers} viewers of {stream_id}, saw {seen}")
