"""Bad input and fuzzing while a healthy stream is watched (issue #3, points 2 and 5).

Property-based (hypothesis, derandomized) tests send arbitrary payloads to every socket.io event of
both namespaces (and to unknown events), and arbitrary requests to every HTTP route, against the
real app with a real room that one aiortc viewer is watching. For every request:

- the answer is an ack ``{"ok": true, ...}`` or ``{"ok": false, "error": {code, message}}`` with a
  documented code (never ``internal_error``, never a traceback), within a few seconds;
- an HTTP answer is never a 5xx and never shows a traceback;
- afterwards the server holds the same peer connections as before (accepted views are left,
  created streams stopped by the test, everything refused leaves nothing behind);
- the healthy stream is still live, mosaicked and watched.

After the run the viewer must have kept receiving (sanitized) frames with no gap longer than
``MAX_GAP_S``, and the server's tasks and peer connections are back where they were. Floods and
every configurable limit are tested on the real app below the fuzzers.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import hypothesis
import pytest
import socketio
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from yarl import URL

from relay.tasks import live_task_count
from tests.helpers.media import Viewer
from tests.test_canary import (
    BOX,
    PUB,
    SCENE,
    VIEW,
    CanaryDetector,
    Live,
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

pytestmark = pytest.mark.timeout(240)

ServeApp = Callable[[web.Application], Awaitable[str]]  # types of the conftest fixtures
SioConnect = Callable[..., Awaitable[socketio.AsyncClient]]

# docs/PROTOCOL.md, "Error codes"; internal_error and timeout would be bugs here
EXPECTED_CODES = {
    "bad_request",
    "not_found",
    "forbidden",
    "conflict",
    "limit_exceeded",
    "rate_limited",
    "unsupported_codec",
    "unknown_event",
}
EVENTS = {
    PUB: ["create_stream", "publish", "set_mosaic", "set_text_net", "view_token", "stop_stream"],
    VIEW: ["list_streams", "view", "leave"],
}
ALL_FIELDS = [
    "title",
    "category",
    "private",
    "stream_id",
    "publish_key",
    "sdp",
    "type",
    "enabled",
    "ttl_s",
    "token",
    "viewer_id",
]
ERROR_ACK_WITHIN_S = 3.0  # an error ack comes at once; 3 s leaves room for a loaded machine
RSS_TOLERANCE_MB = 40.0  # server, clients and hypothesis share the process (normal: -15..+7 MB)
MAX_GAP_S = 2.5  # longest pause between two frames the healthy viewer may see during the fuzzing
FUZZ_SETTINGS = settings(
    max_examples=70,
    deadline=None,
    derandomize=True,
    database=None,
    # no shrinking: examples run on the test's event loop, which stands still while hypothesis
    # shrinks, so the healthy stream would stall and bury the real failure under a second one
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- the healthy stream ------------------------------------------------------------------------


class TimedCheck(FrameCheck):
    """FrameCheck that also records when each frame was decoded."""

    def __init__(self) -> None:
        super().__init__(BOX, 640, 480, SCENE)
        self.times: list[float] = []

    def __call__(self, frame: Any, lossy: bool = False) -> None:
        self.times.append(time.monotonic())
        super().__call__(frame, lossy)


@dataclass
class Healthy:
    url: str
    app: web.Application
    live: Live
    viewer: Viewer
    check: TimedCheck
    fuzzer: socketio.AsyncClient
    offer_sdp: str
    pcs: int
    tasks: int
    healthy_viewer_id: str
    rss: float
    started: float = field(default_factory=time.monotonic)
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)

    def assert_healthy(self) -> None:
        room = room_of(self.app, self.live.stream_id)
        assert room.info.live and room.info.mosaic, room.info
        assert not self.viewer.ended.is_set(), "the healthy viewer's track ended"
        assert not self.viewer.errors, self.viewer.errors[0]


@pytest.fixture
async def healthy(
    detector: CanaryDetector,
    loopback_ice: None,
    serve_app: ServeApp,
    sio_connect: SioConnect,
    peers: list[Any],
) -> AsyncIterator[Healthy]:
    """A live, watched stream; a fuzzing connection on both namespaces. On teardown: the stream
    was never interrupted, and the server's peer connections and tasks are back to where they were."""
    # the rate limit is tested on its own below; here it would only shorten the fuzzing
    url, app = await start_relay(serve_app, detector, requests_per_second=10_000.0, max_streams=4)
    owner = await sio_connect(url, PUB)
    live = await go_live(owner, peers)
    check = TimedCheck()
    viewer, viewer_id = await watch(await sio_connect(url, VIEW), live.stream_id, peers, check=check)
    await viewer.wait_frames(5, timeout=30)
    offer_pc = Viewer()
    peers.append(offer_pc)
    await offer_pc.pc.setLocalDescription(await offer_pc.pc.createOffer())
    fuzzer = await sio_connect(url, PUB, VIEW)
    h = Healthy(
        url,
        app,
        live,
        viewer,
        check,
        fuzzer,
        offer_pc.pc.localDescription.sdp,
        server_pcs(app),
        live_task_count(),
        viewer_id,
        rss_mb(),
    )
    yield h
    # the fuzzing never interrupted the healthy stream
    h.assert_healthy()
    times = [t for t in check.times if t >= h.started]
    gaps = [b - a for a, b in zip([h.started, *times], [*times, time.monotonic()], strict=True)]
    assert max(gaps) < MAX_GAP_S, f"the healthy stream paused for {max(gaps):.1f} s"
    await viewer.wait_frames(viewer.count + 5, timeout=10)  # and it still flows
    assert metrics_of(app, live.stream_id).raw_frames == 0
    # nothing left behind (rss_mb collects first)
    grown = rss_mb() - h.rss
    assert grown < RSS_TOLERANCE_MB, f"RSS grew by {grown:.0f} MB during the fuzzing"
    await fuzzer.disconnect()
    await until(lambda: server_pcs(app) == h.pcs, 5, "peer connections back to baseline")
    await until(lambda: live_task_count() <= h.tasks, 5, "relay tasks back to baseline")


# --- strategies --------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)


def json_containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)


json_values = st.recursive(
    json_scalars,
    json_containers,
    max_leaves=12,
)


EVENT_FIELDS: dict[str, tuple[list[str], list[str]]] = {  # event -> (required, optional) fields
    "create_stream": (["title", "category"], ["private"]),
    "publish": (["stream_id", "publish_key", "sdp", "type"], []),
    "set_mosaic": (["stream_id", "publish_key", "enabled"], []),
    "set_text_net": (["stream_id", "publish_key", "enabled"], []),
    "view_token": (["stream_id", "publish_key"], ["ttl_s"]),
    "stop_stream": (["stream_id", "publish_key"], []),
    "list_streams": ([], []),
    "view": (["stream_id", "sdp", "type"], ["token"]),
    "leave": (["stream_id", "viewer_id"], []),
}


def field_values(h: Healthy) -> dict[str, st.SearchStrategy[Any]]:
    """Per field: mostly well-formed values (so requests get past validation and reach the rooms),
    some borderline or wrong ones."""
    sid = h.live.stream_id
    stream_ids = st.sampled_from([sid] * 6 + [sid + "x", sid.upper(), "", "a" * 65, "../x", "nope"])
    printable = st.characters(blacklist_categories=("Cc", "Cs"))
    texts = st.text(printable, min_size=1, max_size=130) | st.sampled_from(
        ["t" * 121, " ", "a\nb", "\x00", "\u202e", "ok"]
    )
    sdps = st.sampled_from(
        [h.offer_sdp] * 6
        + [
            h.offer_sdp.replace("VP8", "XYZ"),
            h.offer_sdp.replace("m=video", "m=audio"),
            h.offer_sdp[: len(h.offer_sdp) // 2],
            "v=0",
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n",
            "v=0\r\n" + "a=x\r\n" * 8000,  # over max_sdp_bytes, under max_message_bytes
        ]
    ) | st.text(max_size=300).map(lambda s: "v=0\r\n" + s)
    return {
        "title": texts,
        "category": texts,
        "private": st.booleans() | st.sampled_from([0, 1, "yes"]),
        "stream_id": stream_ids,
        "publish_key": st.text(min_size=1, max_size=300) | st.sampled_from(["", "k" * 257]),
        "sdp": sdps,
        "type": st.sampled_from(["offer"] * 5 + ["answer", "pranswer", "rollback", "OFFER"]),
        "enabled": st.booleans() | st.sampled_from([0, 1, "true"]),
        "ttl_s": st.floats(allow_nan=False) | st.integers() | st.sampled_from([59, 60, 604800, 604801]),
        "token": st.text(max_size=300) | st.sampled_from(["1.abc", "99999999999.00", ""]),
        "viewer_id": st.text(min_size=1, max_size=300) | st.just(h.healthy_viewer_id),
    }


def shaped_payloads(h: Healthy, event: str) -> st.SearchStrategy[tuple[Any, ...]]:
    """One object with this event's fields, well-formed or nearly so: gets past validation."""
    values = field_values(h)
    required, optional = EVENT_FIELDS[event]
    return st.fixed_dictionaries(
        {name: values[name] for name in required}, optional={name: values[name] for name in optional}
    ).map(lambda p: (p,))


def any_payloads(h: Healthy) -> st.SearchStrategy[tuple[Any, ...]]:
    """Any arguments: objects with any (also foreign and extra) fields, any JSON, none, two."""
    values = field_values(h)
    loose = st.fixed_dictionaries(
        {},
        optional={name: values[name] | json_values for name in ALL_FIELDS}
        | {"extra_" + str(i): json_values for i in range(2)},
    )
    one = loose | json_values
    return st.one_of(one.map(lambda p: (p,)), st.just(()), st.tuples(one, one))


# --- socket.io events ----------------------------------------------------------------------------


def assert_answer(ack: Any) -> None:
    assert isinstance(ack, dict), ack
    assert ack.get("ok") in (True, False), ack
    if ack["ok"]:
        return
    err = ack.get("error")
    assert isinstance(err, dict) and set(err) == {"code", "message"}, ack
    assert err["code"] in EXPECTED_CODES, ack
    assert isinstance(err["message"], str) and len(err["message"]) < 1000, ack
    assert not any(m in err["message"] for m in ("Traceback", 'File "')), ack


async def send(h: Healthy, ns: str, event: str, args: tuple[Any, ...]) -> None:
    t0 = time.monotonic()
    ack = await h.fuzzer.call(event, args, namespace=ns, timeout=15)
    took = time.monotonic() - t0
    assert_answer(ack)
    # refusals are quick (no request is held open); an accepted view negotiates a peer connection
    assert took < (10.0 if ack["ok"] else ERROR_ACK_WITHIN_S), f"{event} took {took:.1f} s: {ack}"
    outcome = "ok" if ack["ok"] else ack["error"]["code"]
    h.outcomes[outcome] += 1
    hypothesis.event(outcome)
    if ack["ok"]:
        # only requests that need no key can succeed: put back what they made
        assert event in ("create_stream", "list_streams", "view", "leave"), (event, args, ack)
        if event == "view":
            leave = {"stream_id": args[0]["stream_id"], "viewer_id": ack["viewer_id"]}
            assert (await call(h.fuzzer, "leave", leave, VIEW))["ok"]
        elif event == "create_stream":
            stop = {"stream_id": ack["stream_id"], "publish_key": ack["publish_key"]}
            assert (await call(h.fuzzer, "stop_stream", stop, PUB))["ok"]
    await until(lambda: server_pcs(h.app) == h.pcs, 5, "peer connections back to baseline")
    h.assert_healthy()


KNOWN_EVENTS = [(ns, event) for ns, events in EVENTS.items() for event in events]
MISPLACED_EVENTS = [(VIEW, "create_stream"), (PUB, "view"), (PUB, "__init__"), (VIEW, "trigger_event")]


@pytest.mark.parametrize(("ns", "event"), KNOWN_EVENTS)
@settings(FUZZ_SETTINGS, max_examples=60)
@given(data=st.data())
async def test_fuzz_socketio_events_shaped(
    healthy: Healthy, ns: str, event: str, data: st.DataObject
) -> None:
    await send(healthy, ns, event, data.draw(shaped_payloads(healthy, event), label="args"))
    if event != "list_streams":
        assert set(healthy.outcomes) - {"bad_request"}, "no request got past validation yet"


@pytest.mark.parametrize(("ns", "event"), KNOWN_EVENTS + MISPLACED_EVENTS)
@settings(FUZZ_SETTINGS, max_examples=40)
@given(data=st.data())
async def test_fuzz_socketio_events_any(healthy: Healthy, ns: str, event: str, data: st.DataObject) -> None:
    await send(healthy, ns, event, data.draw(any_payloads(healthy), label="args"))


@FUZZ_SETTINGS
@given(
    ns=st.sampled_from([PUB, VIEW]),
    event=st.text(min_size=1, max_size=80).filter(lambda e: e not in ("connect", "disconnect", "message")),
    payload=json_values,
)
async def test_fuzz_unknown_events(healthy: Healthy, ns: str, event: str, payload: Any) -> None:
    known = event in EVENTS[ns]
    ack = await healthy.fuzzer.call(event, payload, namespace=ns, timeout=15)
    assert_answer(ack)
    if not known:
        assert ack["error"]["code"] in ("unknown_event", "rate_limited"), (event, ack)
    healthy.assert_healthy()


# --- HTTP routes -------------------------------------------------------------------------------

ROUTES = ["/", "/publish", "/api/streams", "/healthz", "/static/", "/vendor/socket.io.min.js", "/socket.io/"]


@FUZZ_SETTINGS
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
    route=st.sampled_from(ROUTES),
    suffix=st.text(max_size=40) | st.sampled_from(["../relay/settings.py", "%2e%2e/%2e%2e/etc/passwd", ""]),
    query=st.dictionaries(
        st.sampled_from(["EIO", "transport", "sid", "t", "x"]),
        st.text(max_size=20) | st.sampled_from(["4", "3", "polling", "websocket"]),
        max_size=4,
    ),
    body=st.binary(max_size=2000),
    headers=st.dictionaries(
        st.sampled_from(["Origin", "Content-Type", "X-Forwarded-For", "Range", "Accept-Encoding"]),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
        max_size=3,
    ),
)
async def test_fuzz_http_routes(
    healthy: Healthy,
    method: str,
    route: str,
    suffix: str,
    query: dict[str, str],
    body: bytes,
    headers: dict[str, str],
) -> None:
    path = route + urllib.parse.quote(suffix, safe="/%")
    url = healthy.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, URL(url, encoded=True), data=body, headers=headers, allow_redirects=False) as r,
    ):
        text = (await r.read())[:100_000].decode("utf-8", "replace")
        assert r.status < 500, (method, path, query, r.status, text[:500])
        if path.startswith(("/static", "/vendor")) and r.status == 200:
            return  # our own JS/CSS files may contain anything
        assert "Traceback" not in text and 'File "' not in text, text[:500]
    healthy.assert_healthy()


# --- floods and limits -------------------------------------------------------------------------


async def test_request_flood_is_rate_limited_and_answered_quickly(
    detector: CanaryDetector,
    loopback_ice: None,
    serve_app: ServeApp,
    sio_connect: SioConnect,
    peers: list[Any],
) -> None:
    url, app = await start_relay(serve_app, detector, requests_per_second=10.0)
    live = await go_live(await sio_connect(url, PUB), peers)
    check = FrameCheck(BOX, 640, 480, SCENE)
    viewer, _ = await watch(await sio_connect(url, VIEW), live.stream_id, peers, check=check)
    await viewer.wait_frames(5, timeout=30)
    pcs = server_pcs(app)
    flooder = await sio_connect(url, PUB, VIEW)
    events = [("list_streams", {}, VIEW), ("create_stream", {"title": "t"}, PUB), ("nope", {}, VIEW)]
    t0 = time.monotonic()
    acks = await asyncio.gather(
        *(flooder.call(e, d, namespace=ns, timeout=15) for i in range(100) for e, d, ns in [events[i % 3]])
    )
    elapsed = time.monotonic() - t0
    for ack in acks:
        assert_answer(ack)
    codes = [a["error"]["code"] if not a["ok"] else "ok" for a in acks]
    assert codes.count("rate_limited") >= 60, codes  # burst 2x10, then 10/s
    assert elapsed < 10, f"300 requests took {elapsed:.1f} s"
    # another connection is not affected, nor the stream
    other = await sio_connect(url, VIEW)
    assert (await call(other, "list_streams", {}, VIEW))["ok"]
    await viewer.wait_frames(viewer.count + 10, timeout=20)
    assert not viewer.errors and room_of(app, live.stream_id).info.live
    assert server_pcs(app) == pcs


@dataclass
class LimitCase:
    name: str
    overrides: dict[str, Any]
    over: Callable[[str], tuple[str, str, dict[str, Any]]]  # stream_id -> (namespace, event, payload)
    code: str


async def test_every_limit_is_configurable_and_enforced(
    detector: CanaryDetector,
    loopback_ice: None,
    serve_app: ServeApp,
    sio_connect: SioConnect,
    peers: list[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each limit set low on the real app: the request over it gets its error code; the watched
    stream goes on; nothing is left behind."""
    caplog.set_level(logging.ERROR)
    url, app = await start_relay(
        serve_app,
        detector,
        max_title_len=10,
        max_category_len=5,
        max_sdp_bytes=12_000,
        max_message_bytes=32 * 1024,
        max_streams=2,
        max_viewers_per_stream=2,
    )
    owner = await sio_connect(url, PUB)
    live = await go_live(owner, peers)
    view_sock = await sio_connect(url, VIEW)
    viewer, _ = await watch(view_sock, live.stream_id, peers, check=FrameCheck(BOX, 640, 480, SCENE))
    await viewer.wait_frames(3, timeout=30)
    offer_pc = Viewer()
    peers.append(offer_pc)
    await offer_pc.pc.setLocalDescription(await offer_pc.pc.createOffer())
    offer = offer_pc.pc.localDescription.sdp
    sid = live.stream_id
    pcs = server_pcs(app)

    async def ask(ns: str, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        return await call(owner if ns == PUB else view_sock, event, payload, ns)

    title_ok = await ask(PUB, "create_stream", {"title": "t" * 10, "category": "c" * 5})
    assert title_ok["ok"], title_ok  # at the limit: accepted (and now max_streams is reached)
    for ns, event, payload, expected in [
        (PUB, "create_stream", {"title": "t" * 11, "category": "c"}, "bad_request"),
        (PUB, "create_stream", {"title": "t", "category": "c" * 6}, "bad_request"),
        (PUB, "create_stream", {"title": "t", "category": "c"}, "limit_exceeded"),
        (VIEW, "view", {"stream_id": sid, "sdp": offer + "a=x\r\n" * 3000, "type": "offer"}, "bad_request"),
    ]:
        ack = await ask(ns, event, payload)
        assert ack["ok"] is False and ack["error"]["code"] == expected, (event, ack)
    # max_viewers_per_stream: one more viewer fits, the third is refused
    second, _ = await watch(view_sock, sid, peers)
    ack = await ask(VIEW, "view", {"stream_id": sid, "sdp": offer, "type": "offer"})
    assert ack["ok"] is False and ack["error"]["code"] == "limit_exceeded", ack
    assert server_pcs(app) == pcs + 1
    # max_message_bytes: an oversized message drops that connection only
    big = await sio_connect(url, VIEW)
    await big.emit("list_streams", {"pad": "x" * 40_000}, namespace=VIEW)
    await until(lambda: not big.connected, 5, "the oversized sender dropped")
    await viewer.wait_frames(viewer.count + 10, timeout=20)
    assert not viewer.errors and room_of(app, sid).info.live and view_sock.connected
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
