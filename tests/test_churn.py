"""Viewer churn leaves nothing behind (issue #3, point 3), against the real app and rooms.

200 signaling-level joins and leaves of one live, watched stream, in batches of 25 on fresh
connections: every ``view`` makes a real server-side peer connection (answer included); a third of
them are left with ``leave``, a third by dropping the connection, and the rest are abandoned while
the ``view`` request is still in flight. Each batch also has real aiortc viewers that connect and
decode frames before they leave. Afterwards the server's peer connections, relay tasks, asyncio
tasks, ``RTCPeerConnection`` objects and signaling state are back to where they were, and its memory
(RSS) grew by less than ``RSS_TOLERANCE_MB``; the healthy viewer never stopped.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import socketio
from aiohttp import web
from aiortc import RTCPeerConnection

from relay.tasks import live_task_count
from signaling.app import PING_INTERVAL_S
from signaling.keys import STATE_KEY
from tests.helpers.media import Viewer
from tests.test_canary import (
    BOX,
    PUB,
    SCENE,
    VIEW,
    CanaryDetector,
    call,
    go_live,
    metrics_of,
    room_of,
    rss_mb,
    server_pcs,
    start_relay,
    until,
    watch,
)
from tests.test_relay_integration import FrameCheck

pytestmark = pytest.mark.timeout(180)

ServeApp = Callable[[web.Application], Awaitable[str]]  # types of the conftest fixtures
SioConnect = Callable[..., Awaitable[socketio.AsyncClient]]

BATCHES = 8
BATCH = 25  # signaling joins per batch (8 x 25 = 200)
REAL_PER_BATCH = 2  # aiortc viewers per batch that connect and decode before leaving
RSS_TOLERANCE_MB = 60.0


def describe(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return f"{task.get_name()}:{getattr(coro, '__qualname__', coro)}"


def peer_connection_objects() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, RTCPeerConnection))


class Churn:
    """A live stream watched by a checking viewer, and one reusable offer for signaling-level joins."""

    def __init__(self, url: str, app: web.Application, sio_connect: SioConnect, peers: list[Any]) -> None:
        self.url, self.app, self.sio_connect, self.peers = url, app, sio_connect, peers
        self.check = FrameCheck(BOX, 640, 480, SCENE)

    async def start(self) -> None:
        live = await go_live(await self.sio_connect(self.url, PUB), self.peers)
        self.sid = live.stream_id
        self.healthy, _ = await watch(
            await self.sio_connect(self.url, VIEW), self.sid, self.peers, check=self.check
        )
        await self.healthy.wait_frames(5, timeout=30)
        offer_pc = Viewer()
        await offer_pc.pc.setLocalDescription(await offer_pc.pc.createOffer())
        self.offer = {"stream_id": self.sid, "sdp": offer_pc.pc.localDescription.sdp, "type": "offer"}
        await offer_pc.close()

    async def batch(self, n: int) -> int:
        """``n`` joins on a fresh connection: a third leave, real viewers connect and leave, the
        rest go with the connection. Returns how many joins the server accepted."""
        sock = await self.sio_connect(self.url, VIEW)
        acks = await asyncio.gather(*(call(sock, "view", self.offer, VIEW) for _ in range(n)))
        assert all(a["ok"] for a in acks), [a for a in acks if not a["ok"]][:3]
        for ack in acks[: n // 3]:
            left = await call(sock, "leave", {"stream_id": self.sid, "viewer_id": ack["viewer_id"]}, VIEW)
            assert left["ok"], left
        real = await asyncio.gather(*(watch(sock, self.sid, self.peers) for _ in range(REAL_PER_BATCH)))
        await asyncio.gather(*(v.wait_frames(3, timeout=30) for v, _ in real))
        for v, viewer_id in real:
            assert (await call(sock, "leave", {"stream_id": self.sid, "viewer_id": viewer_id}, VIEW))["ok"]
            await v.close()
            self.peers.remove(v)
        await sock.disconnect()
        return len(acks)

    async def abandoned(self, n: int) -> None:
        """``n`` joins whose connection drops while the ``view`` request is in flight."""
        quitter = await self.sio_connect(self.url, VIEW)
        for _ in range(n):
            await quitter.emit("view", self.offer, namespace=VIEW)
        await asyncio.sleep(0.02)
        await quitter.disconnect()

    async def settled(self) -> None:
        await until(lambda: server_pcs(self.app) == 2, 10, "only the publisher's and the healthy pc")
        room = room_of(self.app, self.sid)
        await until(lambda: room.info.viewer_count == 1, 5, "only the healthy viewer counted")
        assert len(room.viewer_ids) == 1

    def signaling_state(self) -> tuple[int, int, int]:
        state = self.app[STATE_KEY]
        return len(state.buckets), sum(map(len, state.viewers.values())), len(state.owned)

    async def healthy_still_watching(self) -> None:
        await self.healthy.wait_frames(self.healthy.count + 10, timeout=20)
        assert not self.healthy.errors, self.healthy.errors[0]
        assert metrics_of(self.app, self.sid).raw_frames == 0


@pytest.fixture
async def churn(
    detector: CanaryDetector,
    loopback_ice: None,
    serve_app: ServeApp,
    sio_connect: SioConnect,
    peers: list[Any],
) -> Churn:
    url, app = await start_relay(serve_app, detector, requests_per_second=1000.0, max_viewers_per_stream=60)
    c = Churn(url, app, sio_connect, peers)
    await c.start()
    return c


async def test_hundreds_of_joins_and_leaves_leave_nothing_behind(churn: Churn) -> None:
    # warm-up (first-use allocations), then the baseline
    await churn.batch(BATCH)
    await churn.settled()
    await asyncio.sleep(0.5)
    base_tasks, base_relay_tasks = asyncio.all_tasks(), live_task_count()
    base_objects, base_rss = peer_connection_objects(), rss_mb()
    base_state = churn.signaling_state()

    joined = 0
    for _ in range(BATCHES):
        joined += await churn.batch(BATCH)
        assert not churn.healthy.errors, churn.healthy.errors[0]
    assert joined == BATCHES * BATCH
    await churn.settled()
    await asyncio.sleep(0.5)

    assert live_task_count() <= base_relay_tasks
    try:
        # engine.io ends a closed connection's ping task at its next ping (PING_INTERVAL_S)
        await until(
            lambda: len(asyncio.all_tasks()) <= len(base_tasks) + 3, PING_INTERVAL_S + 5, "tasks back"
        )
    except AssertionError:
        new = sorted(describe(t) for t in asyncio.all_tasks() - base_tasks)
        raise AssertionError(f"{len(new)} tasks more than before the churn: {new[:20]}") from None
    assert peer_connection_objects() <= base_objects + 2, "RTCPeerConnection objects are kept alive"
    assert churn.signaling_state() == base_state
    grown = rss_mb() - base_rss
    assert grown < RSS_TOLERANCE_MB, f"RSS grew by {grown:.0f} MB over {joined} joins"
    await churn.healthy_still_watching()


async def test_joins_abandoned_mid_request_leave_nothing_behind(churn: Churn) -> None:
    base_state = churn.signaling_state()
    for _ in range(4):
        await churn.abandoned(10)
    await churn.settled()
    assert churn.signaling_state() == base_state
    await churn.healthy_still_watching()
