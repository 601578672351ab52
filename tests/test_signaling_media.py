"""The socket.io API through the real rooms with real aiortc peers on loopback.

Publisher and viewers are aiortc peers (``tests/helpers/media.py``) that do their SDP exchange
over socket.io against the real app; the detector is a fake that returns the scene's label box.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import socketio
from aiohttp import web

from relay.room import live_peer_connection_count
from relay.settings import Settings
from signaling.app import create_app
from tests.helpers.media import (
    FakeDetector,
    ImageTrack,
    Publisher,
    Viewer,
    block_stds,
    box_region,
    frame_gray,
    label_scene,
)

pytestmark = pytest.mark.timeout(90)

ServeApp = Callable[[web.Application], Awaitable[str]]  # types of the conftest fixtures
SioConnect = Callable[..., Awaitable[socketio.AsyncClient]]

PUB, VIEW = "/publisher", "/viewer"
PROTOCOL_DOC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"


@pytest.fixture
async def no_leaks() -> AsyncIterator[None]:
    """Torn down after the server: every peer connection the rooms made must be closed by then."""
    yield
    assert live_peer_connection_count() == 0


@pytest.fixture
async def relay_url(no_leaks: None, serve_app: ServeApp, loopback_ice: None) -> str:
    _, box = label_scene()
    return await serve_app(create_app(Settings(), FakeDetector(box)))


async def call(client: socketio.AsyncClient, event: str, data: dict[str, Any], ns: str) -> dict[str, Any]:
    ack = await client.call(event, data, namespace=ns, timeout=20)
    assert isinstance(ack, dict)
    return ack


async def go_live(client: socketio.AsyncClient, peers: list[Any]) -> tuple[str, str, Publisher]:
    created = await call(client, "create_stream", {"title": "label", "category": "test"}, PUB)
    stream_id, key = created["stream_id"], created["publish_key"]
    scene, _ = label_scene()
    publisher = Publisher(ImageTrack(scene, fps=15))
    peers.append(publisher)

    async def answer(sdp: str, type_: str) -> dict[str, str]:
        ack = await call(
            client, "publish", {"stream_id": stream_id, "publish_key": key, "sdp": sdp, "type": type_}, PUB
        )
        assert ack["ok"], ack
        return ack

    await publisher.connect(answer)
    return stream_id, key, publisher


async def watch(client: socketio.AsyncClient, stream_id: str, peers: list[Any]) -> tuple[Viewer, str]:
    viewer = Viewer()
    peers.append(viewer)
    ids: list[str] = []

    async def answer(sdp: str, type_: str) -> dict[str, str]:
        ack = await call(client, "view", {"stream_id": stream_id, "sdp": sdp, "type": type_}, VIEW)
        assert ack["ok"], ack
        ids.append(ack["viewer_id"])
        return ack

    await viewer.connect(answer)
    return viewer, ids[0]


async def test_publish_view_sanitized_and_publisher_disconnect(
    relay_url: str, sio_connect: SioConnect, peers: list[Any]
) -> None:
    pub_sock = await sio_connect(relay_url, PUB)
    view_sock = await sio_connect(relay_url, VIEW)
    ended: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    view_sock.on("stream_ended", ended.put, namespace=VIEW)

    stream_id, key, _ = await go_live(pub_sock, peers)
    listed = await call(view_sock, "list_streams", {}, VIEW)
    assert [s["stream_id"] for s in listed["streams"]] == [stream_id]
    viewer, _ = await watch(view_sock, stream_id, peers)
    await viewer.wait_frames(40, timeout=30)

    _, box = label_scene()
    gray = await asyncio.to_thread(frame_gray, viewer.frames[-1])
    inside = block_stds(gray, box_region(box[0]))
    h, w = gray.shape
    outside = block_stds(gray, (int(box[0, 2]) + 64, 0, w, h))  # checkerboard right of the label
    assert inside.size > 20 and outside.size > 20
    assert np.median(inside) < 4.0, np.median(inside)
    assert np.median(outside) > 3 * max(np.median(inside), 1.0), (np.median(outside), np.median(inside))

    # the publisher's socket drops: the viewers hear about it within 2 s and their track ends
    t0 = time.monotonic()
    await pub_sock.disconnect()
    msg = await asyncio.wait_for(ended.get(), 2.0)
    assert msg == {"stream_id": stream_id, "reason": "publisher_disconnected"}
    assert time.monotonic() - t0 < 2.0
    await asyncio.wait_for(viewer.ended.wait(), 10)
    assert (await call(view_sock, "list_streams", {}, VIEW))["streams"] == []
    assert (await call(view_sock, "view", {"stream_id": stream_id, "sdp": "v=0\r\n", "type": "offer"}, VIEW))[
        "error"
    ]["code"] == "not_found"
    assert key  # the key is useless now: the stream is gone


async def test_viewer_disconnect_removes_peer_and_conflict(
    relay_url: str, sio_connect: SioConnect, peers: list[Any]
) -> None:
    pub_sock = await sio_connect(relay_url, PUB)
    view_sock = await sio_connect(relay_url, VIEW)
    stream_id, key, _ = await go_live(pub_sock, peers)
    pcs_before = live_peer_connection_count()
    viewer, viewer_id = await watch(view_sock, stream_id, peers)
    await viewer.wait_frames(5, timeout=30)
    assert live_peer_connection_count() == pcs_before + 1

    # a second publisher with the right key gets a conflict and no peer connection is left over
    intruder = Publisher(ImageTrack(label_scene()[0]))
    peers.append(intruder)
    offer = await intruder.offer()
    ack = await call(
        pub_sock,
        "publish",
        {"stream_id": stream_id, "publish_key": key, "sdp": offer.sdp, "type": "offer"},
        PUB,
    )
    assert ack["error"]["code"] == "conflict"
    # garbage that passes the size/type checks is refused by the room, also without a leak
    ack = await call(
        view_sock, "view", {"stream_id": stream_id, "sdp": "v=0\r\nnonsense", "type": "offer"}, VIEW
    )
    assert ack["ok"] is False and ack["error"]["code"] == "bad_request"
    assert live_peer_connection_count() == pcs_before + 1

    await view_sock.disconnect()
    for _ in range(100):
        if live_peer_connection_count() == pcs_before:
            break
        await asyncio.sleep(0.05)
    assert live_peer_connection_count() == pcs_before
    listed = await call(await sio_connect(relay_url, VIEW), "list_streams", {}, VIEW)
    assert listed["streams"][0]["viewer_count"] == 0
    assert viewer_id


async def test_stop_and_mosaic_switch_through_real_room(
    relay_url: str, sio_connect: SioConnect, peers: list[Any]
) -> None:
    pub_sock = await sio_connect(relay_url, PUB)
    view_sock = await sio_connect(relay_url, VIEW)
    updates: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    ended: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    view_sock.on("stream_updated", updates.put, namespace=VIEW)
    view_sock.on("stream_ended", ended.put, namespace=VIEW)
    stream_id, key, _ = await go_live(pub_sock, peers)
    ack = await call(
        pub_sock, "set_mosaic", {"stream_id": stream_id, "publish_key": key, "enabled": False}, PUB
    )
    assert ack["ok"] and ack["stream"]["mosaic"] is False
    async with asyncio.timeout(5):
        while (await updates.get())["stream"]["mosaic"] is not False:
            pass
    assert (await call(pub_sock, "stop_stream", {"stream_id": stream_id, "publish_key": key}, PUB))["ok"]
    assert await asyncio.wait_for(ended.get(), 5) == {"stream_id": stream_id, "reason": "stopped"}


async def test_protocol_doc_client_example_works(relay_url: str) -> None:
    """The minimal client in docs/PROTOCOL.md, run as written against the real app."""
    doc = PROTOCOL_DOC.read_text()
    match = re.search(r"## A minimal Python client.*?```python\n(.*?)```", doc, re.S)
    assert match, "docs/PROTOCOL.md lost its client example"
    namespace: dict[str, Any] = {"__name__": "protocol_example"}
    exec(compile(match.group(1), "docs/PROTOCOL.md", "exec"), namespace)
    assert await namespace["publish_and_watch"](relay_url, frames=20) == 20
