"""Persistent channels (``--channels FILE``, relay/channels.py): parsing, then the real server with
aiortc WHIP publishers and a WHEP viewer on loopback: the channel key publishes (WHIP, socket.io,
the restream API), a wrong one gets 401, the channel is listed only while live, a new publish after
the end gets a fresh room under the same id, and a restarted server (a new app from the same file)
serves it again. No key ever appears in a log line."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from relay.channels import ChannelsError, hash_key, key_digest, load_channels, main, parse_channels
from relay.settings import Settings
from signaling.app import create_app
from signaling.keys import STATE_KEY
from tests.helpers.media import FakeDetector, ImageTrack, Publisher, ToneTrack, Viewer, label_scene
from tests.test_whip_whep import (
    ServeApp,
    answerer,
    assert_pixelated,
    http,
    no_leaks,
    post_sdp,
    public_streams,
    wait_for,
)

pytestmark = pytest.mark.timeout(150)
_ = (http, no_leaks)  # fixtures

KEY = "desk-key-0123456789abcdef"
SECRET_KEY = "secret-key-0123456789abcdef"
TOML = f"""
[[channel]]
stream_id = "desk"
title = "My desk"
category = "talk"
publish_key_hash = "{hash_key(KEY)}"

[[channel]]
stream_id = "back-office"
title = "Back office"
category = "parcels"
private = true
publish_key = "{SECRET_KEY}"
"""


# --- the file ----------------------------------------------------------------------------------


def test_toml_and_json_files(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(TOML)
    channels = load_channels(tmp_path / "c.toml")
    assert list(channels) == ["desk", "back-office"]
    desk, office = channels["desk"], channels["back-office"]
    assert (desk.title, desk.category, desk.private) == ("My desk", "talk", False)
    assert desk.key_digest == key_digest(KEY) and office.key_digest == key_digest(SECRET_KEY)
    assert office.private and SECRET_KEY not in repr(office) and SECRET_KEY not in repr(channels)
    as_json = [{"stream_id": "desk", "title": "t", "category": "c", "publish_key_hash": hash_key(KEY)}]
    (tmp_path / "c.json").write_text(json.dumps({"channel": as_json}))
    assert load_channels(tmp_path / "c.json")["desk"].key_digest == key_digest(KEY)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"stream_id": "a b"}, "stream_id must match"),
        ({"publish_key_hash": hash_key(KEY)}, "exactly one of"),
        ({"publish_key": None, "publish_key_hash": "sha256:abc"}, "sha256:<64 hex digits>"),
        ({"publish_key": "short"}, "publish_key must be"),
        ({"title": ""}, "title must be"),
        ({"private": "yes"}, "private must be"),
        ({"colour": "red"}, "unknown fields"),
    ],
)
def test_invalid_channels_say_where_never_the_key(entry: dict[str, Any], message: str) -> None:
    base = {"stream_id": "desk", "title": "t", "category": "c", "publish_key": KEY}
    bad = {k: v for k, v in {**base, **entry}.items() if v is not None}
    with pytest.raises(ChannelsError, match=message) as info:
        parse_channels({"channel": [bad]}, "chan.toml")
    assert "chan.toml" in str(info.value) and KEY not in str(info.value)
    with pytest.raises(ChannelsError, match="appears twice"):
        parse_channels([base, base])


def test_unreadable_file_and_bad_syntax(tmp_path: Path) -> None:
    with pytest.raises(ChannelsError, match="cannot read"):
        load_channels(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text(f'[[channel]]\npublish_key = "{KEY}\n')
    with pytest.raises(ChannelsError, match="not valid") as info:
        load_channels(tmp_path / "bad.toml")
    assert KEY not in str(info.value)


def test_key_tool_and_server_flag(tmp_path: Path) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["new"]) == 0
    key_line, hash_line = out.getvalue().splitlines()
    key = key_line.rsplit(" ", 1)[1]
    assert hash_line == f'publish_key_hash = "{hash_key(key)}"'
    done = subprocess.run(
        [sys.executable, "-m", "relay.channels", "hash"], input=KEY + "\n", capture_output=True, text=True
    )
    assert done.stdout.strip() == f'publish_key_hash = "{hash_key(KEY)}"'
    # run_server refuses a bad file at start, naming the problem and not the key
    (tmp_path / "bad.toml").write_text(f'[[channel]]\nstream_id = "x y"\npublish_key = "{KEY}"\n')
    from run_server import settings_from_args

    with pytest.raises(SystemExit):
        settings_from_args(["--channels", str(tmp_path / "bad.toml")], environ={})
    (tmp_path / "c.toml").write_text(TOML)
    assert (
        settings_from_args(["--channels", str(tmp_path / "c.toml")], environ={}).channels
        == tmp_path / "c.toml"
    )


# --- the server --------------------------------------------------------------------------------


async def whip_publish(http: aiohttp.ClientSession, url: str, key: str, peers: list[Any]) -> str:
    """Publish the label scene over WHIP to ``url``; the session URL."""
    publisher = Publisher(ImageTrack(label_scene()[0], fps=15), ToneTrack())
    peers.append(publisher)
    out: dict[str, Any] = {}
    await publisher.connect(answerer(http, url, key, out))
    return str(out["location"])


async def test_channel_publish_end_republish_and_restart(
    no_leaks: None,
    serve_app: ServeApp,
    loopback_ice: None,
    http: aiohttp.ClientSession,
    peers: list[Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "channels.toml"
    path.write_text(TOML)
    settings = Settings(channels=path, restream_allow_private=True)
    _, box = label_scene()
    app = create_app(settings, FakeDetector(box))
    url = await serve_app(app)
    registry = app[STATE_KEY].registry
    whip, whep = f"{url}/whip/desk", f"{url}/whep/desk"

    assert await public_streams(http, url) == []  # not listed while nobody publishes
    probe = Publisher(ImageTrack(label_scene()[0]))
    peers.append(probe)
    offer = (await probe.offer()).sdp
    for key, status in ((None, 401), ("wrong-key-0123456789", 401), (SECRET_KEY, 401)):
        got, body, headers = await post_sdp(http, whip, offer, key)
        assert got == status, body
        assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert (await post_sdp(http, f"{url}/whip/nochannel", offer, KEY))[0] == 404

    # WHIP with the channel key: live, listed with the channel's title, pixelated for a WHEP viewer
    location = await whip_publish(http, whip, KEY, peers)
    first_room = registry.get("desk")
    assert first_room.channel and first_room.info.live
    listed = await public_streams(http, url)
    assert [(s["stream_id"], s["title"], s["category"], s["live"]) for s in listed] == [
        ("desk", "My desk", "talk", True)
    ]
    viewer = Viewer()
    peers.append(viewer)
    await viewer.connect(answerer(http, whep, None, {}))
    await viewer.wait_frames(20, timeout=40)
    await assert_pixelated(viewer)

    # the restream API takes the channel key (and only it)
    restreams = f"{url}/api/streams/desk/restreams"
    async with http.get(restreams, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status == 200 and await r.json() == {"restreams": []}
    async with http.get(restreams, headers={"Authorization": f"Bearer {SECRET_KEY}"}) as r:
        assert r.status == 401

    # the stream ends (WHIP DELETE): unlisted; the next publish gets a fresh room under the same id
    async with http.delete(url + location) as r:
        assert r.status == 200
    assert await public_streams(http, url) == []
    location = await whip_publish(http, whip, KEY, peers)
    second_room = registry.get("desk")
    assert second_room is not first_room and second_room.info.live
    assert [s["stream_id"] for s in await public_streams(http, url)] == ["desk"]
    async with http.delete(url + location) as r:
        assert r.status == 200

    # socket.io publish with the channel key; the connection going away ends it, the channel stays
    sock = socketio.AsyncClient(reconnection=False)
    await sock.connect(url, namespaces=["/publisher"], transports=["websocket"])
    publisher = Publisher(ImageTrack(label_scene()[0], fps=15))
    peers.append(publisher)

    async def answer(sdp: str, type_: str) -> dict[str, str]:
        payload = {"stream_id": "desk", "publish_key": KEY, "sdp": sdp, "type": type_}
        ack = await sock.call("publish", payload, namespace="/publisher", timeout=20)
        assert ack["ok"], ack
        return dict(ack)

    ended: list[Any] = []
    stats: list[Any] = []
    sock.on("stream_ended", ended.append, namespace="/publisher")
    sock.on("stream_stats", stats.append, namespace="/publisher")
    await publisher.connect(answer)
    await wait_for(lambda: _listed(http, url, "desk"), 10)
    # the last stream's end announced late (after this publish): the new stream is left alone
    state = app[STATE_KEY]
    await state.stream_ended(first_room)
    assert registry.current("desk") is not first_room and len(state.stats) == 1
    assert [s for s in state.owned.values() if "desk" in s] and not ended
    n = len(stats)
    await wait_for(lambda: _more(stats, n), 5)
    assert await _listed(http, url, "desk")
    await sock.disconnect()
    await wait_for(lambda: _unlisted(http, url), 10)

    # a private channel is never listed, even live
    location = await whip_publish(http, f"{url}/whip/back-office", SECRET_KEY, peers)
    assert registry.get("back-office").info.live and await public_streams(http, url) == []
    async with http.delete(url + location) as r:
        assert r.status == 200

    # a restarted server (a new app from the same file) serves the channel again
    app2 = create_app(settings, FakeDetector(box))
    url2 = await serve_app(app2)
    location = await whip_publish(http, f"{url2}/whip/desk", KEY, peers)
    assert [s["stream_id"] for s in await public_streams(http, url2)] == ["desk"]
    async with http.delete(url2 + location) as r:
        assert r.status == 200

    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (KEY, SECRET_KEY, hash_key(KEY)[7:], hash_key(SECRET_KEY)[7:]):
        assert secret not in logged


async def _listed(http: aiohttp.ClientSession, url: str, stream_id: str) -> bool:
    return [s["stream_id"] for s in await public_streams(http, url)] == [stream_id]


async def _unlisted(http: aiohttp.ClientSession, url: str) -> bool:
    return await public_streams(http, url) == []


async def _more(items: list[Any], n: int) -> bool:
    return len(items) > n
