"""viewer_count means the same everywhere: the publisher page's own "what viewers see" preview (a
viewer on the publisher's socket.io connection) is not a viewer; anyone else is, including the
streamer watching from another tab."""

from __future__ import annotations

import pytest

from signaling.keys import STATE_KEY
from tests import test_signaling
from tests.test_signaling import PUB, SDP_OFFER, VIEW, Events, Server, call, live_stream, until

start_server, server = test_signaling.start_server, test_signaling.server  # fixtures

pytestmark = pytest.mark.timeout(60)

OFFER = {"sdp": SDP_OFFER, "type": "offer"}


async def test_publisher_preview_is_not_a_viewer(server: Server) -> None:
    pub = await server.connect(server.url, PUB, VIEW)  # the publisher page: one connection, two namespaces
    other_tab = await server.viewer()
    watcher = await server.viewer()
    updates = Events(watcher, "stream_updated")
    sid, _, _ = await live_stream(pub)

    preview = await call(pub, "view", {"stream_id": sid, **OFFER}, VIEW)
    assert preview["ok"] and preview["stream"]["viewer_count"] == 0
    assert server.registry.get(sid).info.viewer_count == 1  # the relay does carry it
    assert (await call(watcher, "list_streams", {}, VIEW))["streams"][0]["viewer_count"] == 0

    seen = await call(other_tab, "view", {"stream_id": sid, **OFFER}, VIEW)
    assert seen["stream"]["viewer_count"] == 1
    await updates.wait_for(lambda m: m["stream"]["viewer_count"] == 1)
    assert all(m["stream"]["viewer_count"] <= 1 for m in updates.items), updates.items  # never 2

    # the preview leaves: still 1 viewer (not 0); the real viewer leaves: 0
    n = len(updates.items)
    assert (await call(pub, "leave", {"stream_id": sid, "viewer_id": preview["viewer_id"]}, VIEW))["ok"]
    await until(lambda: len(updates.items) > n, 5)
    assert updates.items[-1]["stream"]["viewer_count"] == 1
    assert (await call(other_tab, "leave", {"stream_id": sid, "viewer_id": seen["viewer_id"]}, VIEW))["ok"]
    await updates.wait_for(lambda m: m["stream"]["viewer_count"] == 0)
    assert not server.app[STATE_KEY].previews.get(sid)


async def test_preview_forgotten_when_the_publisher_disconnects(server: Server) -> None:
    pub = await server.connect(server.url, PUB, VIEW)
    sid, _, _ = await live_stream(pub)
    assert (await call(pub, "view", {"stream_id": sid, **OFFER}, VIEW))["ok"]
    state = server.app[STATE_KEY]
    assert state.previews[sid]
    await pub.disconnect()
    await until(lambda: not state.previews.get(sid), 5)
