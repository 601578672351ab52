"""Access control against the real app and real rooms (issue #3, point 1).

- Only the holder of a stream's publish key may publish to it, switch its mosaic, mint view
  tokens or stop it; a wrong key changes nothing (the stream stays live, mosaicked, watched).
- A second publish to a live stream ID is refused (``conflict``), not a takeover: the first
  publisher keeps the stream, and the refused connection does not become its owner.
- Stream IDs and publish keys are unguessable (length, alphabet, entropy, uniqueness); keys and
  view-token signatures are compared with ``hmac.compare_digest`` (constant time).
- Private streams: viewing needs a signed, unexpired view token for *that* stream, signed with
  *this* server's secret; private streams are neither listed nor announced to outsiders.
- Origin checks on the socket.io endpoint (websocket and long-polling), configurable.

The signaling-only variants (with a fake registry) are in test_signaling.py; these go through
``relay.room`` and real aiortc peers, so a regression in either layer shows here.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import math
import re
import string
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from aiohttp import web

import relay.channels
import relay.room
import signaling.access
from relay.room import RoomRegistry
from relay.settings import Settings
from signaling.access import ViewTokens
from signaling.keys import STATE_KEY
from tests.helpers.media import Publisher, Viewer
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
    server_pcs,
    start_relay,
    until,
    watch,
)
from tests.test_relay_integration import FrameCheck

pytestmark = pytest.mark.timeout(90)

ServeApp = Callable[[web.Application], Awaitable[str]]  # types of the conftest fixtures
SioConnect = Callable[..., Awaitable[socketio.AsyncClient]]

URLSAFE = set(string.ascii_letters + string.digits + "-_")


def code(ack: dict[str, Any]) -> str:
    assert ack["ok"] is False, ack
    assert set(ack["error"]) == {"code", "message"}, ack
    return str(ack["error"]["code"])


async def test_only_the_key_holder_controls_a_live_stream(
    detector: CanaryDetector,
    loopback_ice: None,
    serve_app: ServeApp,
    sio_connect: SioConnect,
    peers: list[Any],
) -> None:
    url, app = await start_relay(serve_app, detector)
    owner = await sio_connect(url, PUB)
    intruder = await sio_connect(url, PUB)
    view_sock = await sio_connect(url, VIEW)
    live = await go_live(owner, peers)
    other = await go_live(intruder, peers, title="the intruder's own stream")
    sid, key = live.stream_id, live.publish_key
    check = FrameCheck(BOX, 640, 480, SCENE)
    viewer, _ = await watch(view_sock, sid, peers, check=check)
    await viewer.wait_frames(5, timeout=30)
    pcs = server_pcs(app)

    wrong_keys = [
        "",
        "x",
        key[:-1],
        key + "x",
        key.swapcase(),
        key[::-1],
        other.publish_key,  # a valid key, of another stream
        "A" * 256,
    ]
    second = Publisher(live.publisher.video)  # a well-formed offer for the same video
    peers.append(second)
    offer = await second.offer()
    for bad in wrong_keys:
        base = {"stream_id": sid, "publish_key": bad}
        acks = [
            await call(intruder, "publish", base | {"sdp": offer.sdp, "type": "offer"}, PUB),
            await call(intruder, "set_mosaic", base | {"enabled": False}, PUB),
            await call(intruder, "stop_stream", base, PUB),
            await call(intruder, "view_token", base, PUB),
        ]
        # "" is refused by validation (bad_request), every other wrong key by the key check
        expected = "bad_request" if not bad else "forbidden"
        assert [code(a) for a in acks] == [expected] * 4, (bad, acks)

    # a second publish with the right key is refused, not a takeover
    ack = await call(
        intruder, "publish", {"stream_id": sid, "publish_key": key, "sdp": offer.sdp, "type": "offer"}, PUB
    )
    assert code(ack) == "conflict"

    room = room_of(app, sid)
    assert room.info.live and room.info.mosaic and room.sanitizer is not None
    assert room.sanitizer.mosaic_enabled
    assert server_pcs(app) == pcs, "a refused request left a peer connection behind"
    # the refused connection did not become the owner: its leaving does not end the stream
    await intruder.disconnect()
    frames = viewer.count
    await viewer.wait_frames(frames + 15, timeout=30)
    assert room_of(app, sid).info.live
    assert not viewer.errors, viewer.errors[0]
    assert metrics_of(app, sid).raw_frames == 0

    # a created, not yet published stream: nobody but the key holder may publish to it first
    pcs = server_pcs(app)  # (the intruder's own stream ended with its connection)
    created = await call(owner, "create_stream", {"title": "soon", "category": "test"}, PUB)
    fresh = {"stream_id": created["stream_id"], "sdp": offer.sdp, "type": "offer"}
    for bad in wrong_keys[1:]:
        assert code(await call(owner, "publish", fresh | {"publish_key": bad}, PUB)) == ("forbidden")
    assert not room_of(app, created["stream_id"]).info.live
    assert server_pcs(app) == pcs

    # the key holder can do all of it
    ack = await call(owner, "set_mosaic", {"stream_id": sid, "publish_key": key, "enabled": True}, PUB)
    assert ack["ok"], ack
    assert (await call(owner, "stop_stream", {"stream_id": sid, "publish_key": key}, PUB))["ok"]
    await asyncio.wait_for(viewer.ended.wait(), 10)


def _entropy_bits_per_char(tokens: list[str]) -> float:
    counts = collections.Counter("".join(tokens))
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def test_stream_ids_and_keys_are_unguessable() -> None:
    import dataclasses

    reg = RoomRegistry(dataclasses.replace(Settings(), max_streams=600), CanaryDetector())
    made = [reg.create("t", "c") for _ in range(500)]
    ids = [room.stream_id for room, _ in made]
    keys = [key for _, key in made]
    assert len(set(ids)) == len(ids) and len(set(keys)) == len(keys)
    assert not set(ids) & set(keys)
    for sid, key in zip(ids, keys, strict=True):
        assert len(sid) >= 16 and set(sid) <= URLSAFE and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", sid)
        assert len(key) >= 40 and set(key) <= URLSAFE and sid not in key
    # ~6 bits per character over a 64-symbol alphabet: >= 96 bits per ID, >= 240 bits per key;
    # sequential, time-based or hex IDs would fail this
    assert _entropy_bits_per_char(ids) > 5.8
    assert _entropy_bits_per_char(keys) > 5.8
    # no shared prefixes beyond chance (time- or counter-based IDs share their first characters)
    assert len({sid[:4] for sid in ids}) > 450


def test_keys_and_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Room.check_key`` (SHA-256 digests, relay/channels.py) and ``ViewTokens.check`` decide
    through ``hmac.compare_digest``."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(relay.channels.hmac, "compare_digest", spy)
    reg = RoomRegistry(Settings(), CanaryDetector())
    room, key = reg.create("t", "c")
    room.check_key(key)
    with pytest.raises(PermissionError):
        room.check_key(key[:-1] + ("A" if key[-1] != "A" else "B"))
    assert len(compared) == 2 and compared[0][0] == relay.channels.key_digest(key)

    compared.clear()
    monkeypatch.setattr(signaling.access.hmac, "compare_digest", spy)
    tokens = ViewTokens(b"s" * 32)
    token, _ = tokens.issue("stream")
    tokens.check("stream", token)
    with pytest.raises(PermissionError):
        tokens.check("stream", token[:-1] + ("0" if token[-1] != "0" else "1"))
    assert len(compared) == 2


async def test_private_streams_need_a_valid_token_for_that_stream(
    detector: CanaryDetector,
    loopback_ice: None,
    serve_app: ServeApp,
    sio_connect: SioConnect,
    peers: list[Any],
) -> None:
    url, app = await start_relay(serve_app, detector)
    pub = await sio_connect(url, PUB)
    outsider = await sio_connect(url, VIEW)
    updates: list[Any] = []
    outsider.on("stream_updated", updates.append, namespace=VIEW)
    secret_stream = await go_live(pub, peers, private=True, title="private")
    other_private = await go_live(pub, peers, private=True, title="another private")
    public = await go_live(pub, peers, title="public")
    sid = secret_stream.stream_id
    token = secret_stream.created["view_token"]
    pcs = server_pcs(app)

    # not listed, not announced
    listed = await call(outsider, "list_streams", {}, VIEW)
    assert [s["stream_id"] for s in listed["streams"]] == [public.stream_id]
    async with aiohttp.ClientSession() as http, http.get(url + "/api/streams") as r:
        assert [s["stream_id"] for s in (await r.json())["streams"]] == [public.stream_id]
    await asyncio.sleep(0.3)
    assert all(u["stream"]["stream_id"] == public.stream_id for u in updates), updates

    state = app[STATE_KEY]
    expired, _ = state.view_tokens.issue(sid, -5)
    foreign, _ = ViewTokens(b"another server's secret!").issue(sid)
    expiry, _, sig = token.partition(".")
    refused = {
        "none": None,
        "empty": "",
        "another stream's": other_private.created["view_token"],
        "expired": expired,
        "signed by another secret": foreign,
        "tampered signature": f"{expiry}.{sig[:-1]}{'0' if sig[-1] != '0' else '1'}",
        "extended expiry": f"{int(expiry) + 3600}.{sig}",
        "no signature": expiry,
        "garbage": "not-a-token",
    }
    offer_pc = Viewer()
    peers.append(offer_pc)
    await offer_pc.pc.setLocalDescription(await offer_pc.pc.createOffer())
    offer = {"stream_id": sid, "sdp": offer_pc.pc.localDescription.sdp, "type": "offer"}
    for what, bad in refused.items():
        payload = offer | ({"token": bad} if bad is not None else {})
        ack = await call(outsider, "view", payload, VIEW)
        assert code(ack) in ("forbidden", "bad_request"), (what, ack)
        if bad:  # a well-formed but wrong token is a permission error
            assert code(ack) == "forbidden", (what, ack)
    assert server_pcs(app) == pcs

    # a token for a public stream is not needed, view tokens for it are not issued
    ack = await call(
        pub, "view_token", {"stream_id": public.stream_id, "publish_key": public.publish_key}, PUB
    )
    assert code(ack) == "forbidden"

    # the right token (from create_stream, or freshly minted by the key holder) works
    check = FrameCheck(BOX, 640, 480, SCENE)
    viewer, _ = await watch(outsider, sid, peers, check=check, token=token)
    await viewer.wait_frames(5, timeout=30)
    minted = await call(
        pub, "view_token", {"stream_id": sid, "publish_key": secret_stream.publish_key, "ttl_s": 60}, PUB
    )
    assert minted["ok"] and minted["view_token"] != token
    second, _ = await watch(outsider, sid, peers, token=minted["view_token"])
    await second.wait_frames(3, timeout=30)
    assert not viewer.errors, viewer.errors[0]
    await until(lambda: room_of(app, sid).info.viewer_count == 2, 5, "two viewers counted")


async def test_origin_check_on_websocket_and_polling(
    detector: CanaryDetector, serve_app: ServeApp, sio_connect: SioConnect
) -> None:
    url, _ = await start_relay(serve_app, detector)
    polling = "/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as http:
        async with http.get(url + polling, headers={"Origin": "http://evil.example"}) as r:
            assert r.status >= 400 and r.status < 500
            assert "sid" not in await r.text()
        async with http.get(url + polling, headers={"Origin": url}) as r:
            assert r.status == 200 and '"sid"' in await r.text()
        async with http.get(url + polling) as r:  # no Origin: a non-browser client
            assert r.status == 200
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio_connect(url, VIEW, headers={"Origin": "http://evil.example"})
    assert (await sio_connect(url, VIEW, headers={"Origin": url})).connected

    allowed, _ = await start_relay(serve_app, detector, allowed_origins=("https://stream.example",))
    assert (await sio_connect(allowed, VIEW, headers={"Origin": "https://stream.example"})).connected
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio_connect(allowed, VIEW, headers={"Origin": "https://stream.example.evil.com"})
    async with aiohttp.ClientSession() as http:
        async with http.get(allowed + polling, headers={"Origin": "http://evil.example"}) as r:
            assert r.status >= 400 and r.status < 500


SECURITY_DOC = Path(__file__).resolve().parent.parent / "docs" / "SECURITY.md"


def test_security_doc_limits_match_the_settings() -> None:
    """docs/SECURITY.md's limits table: every row names a real setting, its flag and its default."""
    import dataclasses

    from run_server import build_parser

    text = SECURITY_DOC.read_text()
    section = text.split("## Limits", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `(--[\w-]+)` \| ([^|]+) \|", section, re.M)
    assert len(rows) >= 8, "the limits table is missing"
    defaults = Settings()
    fields = {f.name for f in dataclasses.fields(Settings)}
    flags = {a.dest: a.option_strings for a in build_parser()._actions}
    for name, flag, shown in rows:
        assert name in fields, name
        assert flag in flags[name], (name, flag)
        value = getattr(defaults, name)
        if isinstance(value, tuple):
            assert not value and "empty" in shown, (name, shown)
        else:
            assert shown.strip() == str(value), (name, shown, value)
    # every abuse limit of Settings is in the table
    for name in (
        "max_streams",
        "max_viewers_per_stream",
        "max_message_bytes",
        "max_sdp_bytes",
        "max_title_len",
        "max_category_len",
        "requests_per_second",
        "allowed_origins",
        "max_unpublished_per_address",
        "unpublished_ttl_s",
        "max_connections_per_address",
        "http_requests_per_second",
        "body_timeout_s",
        "trusted_proxies",
    ):
        assert name in {r[0] for r in rows}, f"{name} is not documented in docs/SECURITY.md"
    # the documented key/id/token sizes are what the code makes
    reg = RoomRegistry(Settings(), CanaryDetector())
    room, key = reg.create("t", "c")
    assert "token_urlsafe(12)" in text and len(room.stream_id) == 16
    assert "token_urlsafe(32)" in text and len(key) == 43
