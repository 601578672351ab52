"""ICE configuration (relay/ice.py, signaling/ice_http.py): --ice-server syntax, coturn REST
credentials, the configuration of the server's peers, /api/ice-servers, and host candidates on
chosen addresses (loopback included). The TURN path end to end is in tests/test_turn.py."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
import aioice.ice
import numpy as np
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection

import run_server
from relay.ice import (
    host_addresses,
    ice_servers,
    parse_ice_url,
    redact,
    rest_credentials,
    server_rtc_configuration,
    use_host_addresses,
)
from relay.settings import Settings
from signaling.app import create_app

pytestmark = pytest.mark.timeout(60)
ServeApp = Callable[[web.Application], Awaitable[str]]
SECRET = "coturn-static-auth-secret-for-tests"


class NoDetections:
    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        return np.zeros((0, 6), np.float32)


def test_ice_server_syntax() -> None:
    u = parse_ice_url("turn:al%40ice:p%3Ass@turn.example.com:3478?transport=tcp")
    assert (u.username, u.password, u.url) == ("al@ice", "p:ss", "turn:turn.example.com:3478?transport=tcp")
    assert parse_ice_url("stun:[2001:db8::1]:19302").url == "stun:[2001:db8::1]:19302"
    assert parse_ice_url("turns:u:p@h").url == "turns:h" and parse_ice_url("turn:h").username is None
    for bad in ("http://h", "stun:u:p@h", "stun:h?transport=udp", "turns:u:p@h?transport=udp", "turn:u:p@h:99999",
                "turn:u:hunter2@h x"):  # fmt: skip
        with pytest.raises(ValueError) as exc:
            parse_ice_url(bad)
        assert "hunter2" not in str(exc.value)
    assert redact("turn:bob:hunter2@h:3478") == "turn:bob:***@h:3478" and redact("stun:h") == "stun:h"


def test_rest_credentials_follow_coturns_scheme() -> None:
    t0 = time.time()
    user, cred = rest_credentials(SECRET, 600, now=t0)
    expiry, _, label = user.partition(":")
    assert int(expiry) == int(t0 + 600) and len(label) == 12
    expected = base64.b64encode(hmac.new(SECRET.encode(), user.encode(), hashlib.sha1).digest()).decode()
    assert cred == expected
    assert rest_credentials(SECRET, 600, now=t0)[0] != user  # per client


def test_servers_for_pages_and_for_the_servers_peers() -> None:
    s = Settings(
        ice_servers=(
            "stun:stun.example:3478",
            "turn:bob:pw@turn.example",
            "turn:turn.example:3479?transport=tcp",
        ),
        turn_secret=SECRET,
        turn_ttl_s=600,
    )
    stun, static, rest = ice_servers(s)
    assert stun == {"urls": ["stun:stun.example:3478"]}
    assert static == {"urls": ["turn:turn.example"], "username": "bob", "credential": "pw"}
    assert rest["urls"] == ["turn:turn.example:3479?transport=tcp"] and rest["username"].count(":") == 1
    config = server_rtc_configuration(s)
    first, second = config.iceServers, config.iceServers  # REST: fresh credentials per peer
    assert [x.urls for x in first] == [["stun:stun.example:3478"], ["turn:turn.example"], [rest["urls"][0]]]
    assert first[2].username != second[2].username and first[1].username == "bob"
    pc = RTCPeerConnection(config)  # aiortc accepts it
    assert pc is not None
    assert server_rtc_configuration(Settings()).iceServers == []  # no public STUN default
    assert "pw" not in repr(s) and SECRET not in repr(s)  # settings never print their secrets


def test_ice_flags(tmp_path: object) -> None:
    env = {"MOSAIC_RELAY_ICE_SERVERS": "stun:a.example,stun:b.example", "MOSAIC_RELAY_TURN_SECRET": SECRET}
    s = run_server.settings_from_args(
        ["--ice-server", "turn:t.example", "--ice-interface", "lo"], environ=env
    )
    assert s.ice_servers == ("turn:t.example",)  # the command line replaces the environment's list
    assert s.turn_secret == SECRET and s.ice_interfaces == ("lo",)
    s = run_server.settings_from_args(
        [], environ={"MOSAIC_RELAY_ICE_SERVERS": "stun:a.example,stun:b.example"}
    )
    assert s.ice_servers == ("stun:a.example", "stun:b.example")
    for argv in (["--ice-server", "turn:t.example"], ["--turn-secret", "x"], ["--ice-address", "10.255.0.9"],
                 ["--ice-interface", "nope0"], ["--ice-server", "ftp:x"]):  # fmt: skip
        with pytest.raises(SystemExit):
            run_server.settings_from_args(argv, environ={})


async def test_api_ice_servers_gives_fresh_credentials_and_logs_none(
    serve_app: ServeApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = Settings(ice_servers=("turn:127.0.0.1:3478",), turn_secret=SECRET, turn_ttl_s=300)
    url = await serve_app(create_app(settings, NoDetections()))
    got = []
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.get(url + "/api/ice-servers") as r:
                assert r.headers["Cache-Control"] == "no-store"
                got.append(await r.json())
    a, b = (g["iceServers"][0] for g in got)
    assert a["urls"] == ["turn:127.0.0.1:3478"] and a["username"] != b["username"]
    assert abs(got[0]["expires_at"] - (time.time() + 300)) < 5
    for secret in (SECRET, a["credential"], b["credential"], a["username"]):
        assert secret not in caplog.text
    plain = await serve_app(create_app(Settings(), NoDetections()))
    async with aiohttp.ClientSession() as http, http.get(plain + "/api/ice-servers") as r:
        assert await r.json() == {"iceServers": [], "expires_at": None}


def test_host_addresses_of_interfaces_include_loopback() -> None:
    assert host_addresses([], ["lo"], True, False) == ["127.0.0.1"]
    assert "::1" in host_addresses([], ["lo"], False, True)
    assert host_addresses(["127.0.0.1", "::1"], ["lo"], True, False) == ["127.0.0.1"]
    assert "127.0.0.1" not in aioice.ice.get_host_addresses(True, False)  # what aioice does by itself


async def offer_candidates() -> list[str]:
    pc = RTCPeerConnection(server_rtc_configuration(Settings()))
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        lines = pc.localDescription.sdp.splitlines()
        return [line.split()[4] for line in lines if line.startswith("a=candidate:")]
    finally:
        await pc.close()


async def test_chosen_addresses_are_what_peers_gather() -> None:
    original = aioice.ice.get_host_addresses
    undo = use_host_addresses(Settings(ice_addresses=("127.0.0.1",)))
    assert undo is not None
    try:
        assert await offer_candidates() == ["127.0.0.1"]
    finally:
        undo()
    assert aioice.ice.get_host_addresses is original
    assert "127.0.0.1" not in await offer_candidates()
    assert use_host_addresses(Settings()) is None


async def test_app_applies_the_choice_while_it_runs() -> None:
    original = aioice.ice.get_host_addresses
    settings = dataclasses.replace(Settings(), ice_interfaces=("lo",))
    runner = web.AppRunner(create_app(settings, NoDetections()), handle_signals=False)
    await runner.setup()  # runs the app's cleanup_ctx start
    try:
        assert "127.0.0.1" in aioice.ice.get_host_addresses(True, False)
        assert set(await offer_candidates()) <= {"127.0.0.1", "::1"} and await offer_candidates()
    finally:
        await runner.cleanup()
    assert aioice.ice.get_host_addresses is original
