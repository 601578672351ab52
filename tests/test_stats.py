"""The publisher's live stats (``stream_stats``, signaling/stats.py) through the real rooms: a
python-socketio publisher connection with an aiortc publisher, a preview and a real viewer; the
numbers are sane, only the publisher gets them, viewer counts agree with ``/metrics``, and the
stream's task goes away with the stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import numpy as np
import pytest
import socketio
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from relay.settings import Settings
from signaling.app import create_app
from signaling.keys import STATE_KEY
from tests.helpers.media import FakeDetector, label_scene
from tests.test_signaling_media import PUB, VIEW, call, go_live, no_leaks, watch

pytestmark = pytest.mark.timeout(90)

ServeApp = Callable[[web.Application], Awaitable[str]]
SioConnect = Callable[..., Awaitable[socketio.AsyncClient]]
_ = no_leaks  # fixture


def stats_log(client: socketio.AsyncClient) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    client.on("stream_stats", lambda msg: got.append(msg), namespace=PUB)
    return got


async def gauge(url: str, stream_id: str) -> float | None:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as r:
        text = await r.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "mosaic_relay_viewers" and s.labels.get("stream") == stream_id:
                return float(s.value)
    return None


async def until(pred: Callable[[], bool], within_s: float, what: str) -> None:
    end = time.monotonic() + within_s
    while not pred():
        assert time.monotonic() < end, what
        await asyncio.sleep(0.1)


async def test_publisher_gets_stream_stats_with_sane_numbers(
    no_leaks: None, serve_app: ServeApp, loopback_ice: None, sio_connect: SioConnect, peers: list[Any]
) -> None:
    _, label = label_scene()
    text = label.copy()
    text[0, :4] = (500, 40, 620, 80)  # a second box, class "text" (the safety net's region class)
    text[0, 5] = 3
    app = create_app(Settings(), FakeDetector(np.concatenate([label, text])))
    url = await serve_app(app)
    pub = await sio_connect(url, PUB, VIEW)  # the publisher page: one connection, both namespaces
    other_pub = await sio_connect(url, PUB)  # another publisher connection: gets nothing of it
    ours, theirs = stats_log(pub), stats_log(other_pub)

    stream_id, key, _ = await go_live(pub, peers)
    await watch(pub, stream_id, peers)  # the preview: not a viewer
    await watch(await sio_connect(url, VIEW), stream_id, peers)  # one real viewer

    def settled() -> bool:
        s = ours[-1]["stats"] if ours else None
        return bool(s and s["fps_out"] >= 5 and s["viewers"] == 1 and s["window_s"] * s["fps_in"] >= 25)

    await until(settled, 30, f"no settled stream_stats: {ours[-3:]}")
    msg = ours[-1]
    stats = msg["stats"]
    print("stream_stats:", msg)
    assert msg["stream_id"] == stream_id
    assert 5 <= stats["fps_in"] <= 16 and 5 <= stats["fps_out"] <= 16, stats  # a 15 fps source
    assert stats["detect_ms"] and all(0 <= ms < 1000 for ms in stats["detect_ms"].values()), stats
    hidden = stats["objects_hidden"]
    assert hidden.get("shipping_label", 0) >= stats["fps_out"] * 2, stats  # one per frame out
    assert hidden.get("text", 0) >= stats["fps_out"] * 2, stats
    assert 0 <= stats["whole_frame_fallbacks"] <= stats["fps_out"] * stats["window_s"], stats
    assert stats["viewers"] == 1 and await gauge(url, stream_id) == 1.0  # the preview is no viewer

    # about once a second
    n = len(ours)
    await asyncio.sleep(3.2)
    assert 2 <= len(ours) - n <= 5, len(ours) - n
    assert not theirs, theirs  # only the stream's publisher

    state = app[STATE_KEY]
    assert len(state.stats) == 1
    ack = await call(pub, "stop_stream", {"stream_id": stream_id, "publish_key": key}, PUB)
    assert ack["ok"], ack
    await until(lambda: len(state.stats) == 0, 5, "the stats task outlived its stream")
    n = len(ours)
    await asyncio.sleep(1.5)
    assert len(ours) == n, "stream_stats after the stream ended"


async def test_socketio_owner_of_a_whip_published_stream_gets_stream_stats(
    no_leaks: None, serve_app: ServeApp, loopback_ice: None, sio_connect: SioConnect, peers: list[Any]
) -> None:
    from tests.helpers.media import ImageTrack, Publisher
    from tests.test_whip_whep import answerer

    _, label = label_scene()
    url = await serve_app(create_app(Settings(), FakeDetector(label)))
    pub = await sio_connect(url, PUB)
    ours = stats_log(pub)
    created = await call(pub, "create_stream", {"title": "obs", "category": "test"}, PUB)
    publisher = Publisher(ImageTrack(label_scene()[0], fps=15))
    peers.append(publisher)
    async with aiohttp.ClientSession() as http:
        await publisher.connect(
            answerer(http, f"{url}/whip/{created['stream_id']}", created["publish_key"], {})
        )
        await until(lambda: bool(ours) and ours[-1]["stats"]["fps_out"] > 0, 20, f"no stream_stats: {ours}")
    assert ours[-1]["stream_id"] == created["stream_id"]
