"""RTMP restream (issue #13) into real receivers on loopback: ``ffmpeg -listen 1`` and nginx-rtmp.

What is checked: the SSRF guard and URL masking (pure); the RTMP chunk/AMF/FLV pieces; H.264
(constrained baseline) + AAC at the source size arrive (ffprobe); what arrives from a shared clip
sanitized as the relay does is pixelated where the clip has a label (the shared leak judge, with a
raw control that must leak); nginx-rtmp takes the push and plays it back; a receiver that drops is
reached again (connecting → live); stop; the stream key never appears in the logs; the HTTP routes
through the real server, with a full socket.io/aiortc publish whose end stops the restream.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiohttp import web

from relay.boxes import expand_boxes
from relay.errors import BadRequest
from relay.mosaic import block_for_frame, pixelate
from relay.restream import Restream, RestreamOptions, RestreamSet, TargetRefused, validate_restream_url
from relay.restream_encode import FlvTags, private_copy
from relay.restream_url import address_allowed, mask_url, parse_rtmp_url
from relay.rtmp import ChunkReader, amf_decode, amf_encode, encode_chunks
from relay.settings import Settings

pytestmark = pytest.mark.timeout(120)

ServeApp = Callable[[web.Application], Awaitable[str]]  # types of the conftest fixtures
SHARED = Path("/work/shared")
CLIP = SHARED / "media" / "clips" / "parcel_labels"
NGINX_RTMP = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
LOOPBACK = RestreamOptions(allow_private=True)

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="Debian ffmpeg (setup.sh --dev)")


# --- pure: URL, guard, masking ------------------------------------------------------------------


def fixed(*addresses: str) -> Callable[[str, int], list[str]]:
    return lambda host, port: list(addresses)


def test_parse_and_mask() -> None:
    t = parse_rtmp_url("rtmp://live.example.com/app/sk_ABC?token=1")
    assert (t.host, t.port, t.app, t.stream_name) == ("live.example.com", 1935, "app", "sk_ABC?token=1")
    assert t.masked_url == "rtmp://live.example.com:1935/app/****"
    t = parse_rtmp_url("rtmps://live-api-s.facebook.com:443/rtmp/FB-123")
    assert (t.tls, t.port, t.app, t.tc_url) == (True, 443, "rtmp", "rtmps://live-api-s.facebook.com:443/rtmp")
    t = parse_rtmp_url("rtmp://[2001:db8::1]:1936/live/inst/key")
    assert (t.host, t.app, t.stream_name) == ("2001:db8::1", "live/inst", "key")
    assert t.masked_url == "rtmp://[2001:db8::1]:1936/live/inst/****"
    assert mask_url("rtmp://h/app/secret") == "rtmp://h:1935/app/****"
    assert mask_url("nonsense secret") == "<invalid url>"
    for bad in (
        "http://h/app/key",
        "rtmp://h/app",
        "rtmp://h//key",
        "rtmp:///app/key",
        "rtmp://user:pw@h/app/key",
        "rtmp://h:99999/app/key",
        "rtmp://h/app/key#x",
        "rtmp://h/app/k ey",
        "rtmp://h/app/" + "k" * 3000,
        42,
    ):
        with pytest.raises(BadRequest) as err:
            parse_rtmp_url(bad)
        assert "key" not in str(err.value).replace("app/key", "") or bad == 42


@pytest.mark.parametrize(
    ("address", "public_only", "allowed_private"),
    [
        ("8.8.8.8", True, True),
        ("2606:4700:4700::1111", True, True),
        ("127.0.0.1", False, True),
        ("10.1.2.3", False, True),
        ("172.16.0.1", False, True),
        ("192.168.1.1", False, True),
        ("169.254.169.254", False, True),  # cloud metadata
        ("100.64.0.1", False, True),  # shared address space
        ("::1", False, True),
        ("fe80::1%eth0", False, True),
        ("fd00::2", False, True),
        ("::ffff:127.0.0.1", False, True),  # IPv4-mapped loopback
        ("0.0.0.0", False, False),
        ("224.0.0.1", False, False),
        ("ff02::1", False, False),
    ],
)
def test_address_guard(address: str, public_only: bool, allowed_private: bool) -> None:
    assert address_allowed(address, allow_private=False) is public_only
    assert address_allowed(address, allow_private=True) is allowed_private


def test_validate_restream_url() -> None:
    url = "rtmp://live.example.com/app/sk_secret"
    assert validate_restream_url(url, False, resolve=fixed("93.184.216.34")) == url
    for addresses in (("127.0.0.1",), ("93.184.216.34", "10.0.0.5"), ("169.254.169.254",)):
        with pytest.raises(TargetRefused) as refused:
            validate_restream_url(url, False, resolve=fixed(*addresses))
        assert "sk_secret" not in str(refused.value) and "app/****" in str(refused.value)
        assert validate_restream_url(url, True, resolve=fixed(*addresses)) == url

    def unresolvable(host: str, port: int) -> list[str]:
        raise OSError("no such host")

    with pytest.raises(BadRequest):
        validate_restream_url(url, True, resolve=unresolvable)
    with pytest.raises(BadRequest):
        validate_restream_url("rtmp://h/app/key", True, resolve=fixed())
    # the real resolver: localhost is loopback
    with pytest.raises(TargetRefused):
        validate_restream_url("rtmp://localhost/app/key", False)


# --- pure: protocol pieces ----------------------------------------------------------------------


def test_amf_and_chunks_round_trip() -> None:
    values = ["connect", 1.0, {"app": "live", "n": 2.5, "ok": True}, None, "x" * 300]
    assert amf_decode(b"".join(amf_encode(v) for v in values)) == values
    payloads = [bytes(range(256)) * 3, b"short", b""]
    wire = b"".join(
        encode_chunks(4 + i, 9, 1, ts, p, 128)
        for i, (p, ts) in enumerate(zip(payloads, (0, 70_000, 2**25), strict=True))
    )
    reader = ChunkReader()
    got = [m for i in range(0, len(wire), 7) for m in reader.feed(wire[i : i + 7])]  # fed in pieces
    assert [(m.payload, m.timestamp, m.msg_type, m.stream_id) for m in got] == [
        (payloads[0], 0, 9, 1),
        (payloads[1], 70_000, 9, 1),
        (payloads[2], 2**25, 9, 1),  # extended timestamp
    ]


def test_flv_tags_split() -> None:
    tags = FlvTags()
    header = b"FLV\x01\x05\x00\x00\x00\x09" + bytes(4)
    tag = bytes([9]) + (5).to_bytes(3, "big") + (0x123456).to_bytes(3, "big") + b"\x01" + bytes(3) + b"hello"
    data = header + tag + (16).to_bytes(4, "big")
    for i in range(0, len(data), 5):
        tags.write(data[i : i + 5])
    assert list(tags.tags()) == [(9, 0x01123456, b"hello")]


def test_private_copy_is_independent_and_even() -> None:
    src = to_frame(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8), 1.0)
    src.pts = 7
    copy = private_copy(src)
    copy.pts = 99
    assert src.pts == 7 and copy is not src
    assert np.array_equal(copy.to_ndarray(), src.to_ndarray())
    odd = av.VideoFrame(641, 361, "yuv420p")
    assert (private_copy(odd).width, private_copy(odd).height) == (640, 360)


# --- receivers ----------------------------------------------------------------------------------


def listening(port: int) -> bool:
    """Whether something listens on TCP ``port`` (read from /proc: connecting would use up
    ``ffmpeg -listen 1``'s one connection)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


async def wait_for(pred: Callable[[], bool], within_s: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(step)
    return pred()


def start(cmd: list[str], log_dir: Path) -> subprocess.Popen[bytes]:
    with (log_dir / f"{Path(cmd[0]).name}.out").open("wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=log)


class FfmpegListener:
    """``ffmpeg -listen 1 -i rtmp://127.0.0.1:PORT/app/KEY -c copy OUT.flv``, started and ended by the test."""

    def __init__(self, port: int, key: str, out: Path) -> None:
        self.out = out
        self.log = out.with_suffix(".log")
        url = f"rtmp://127.0.0.1:{port}/app/{key}"
        cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "info", "-y", "-listen", "1", "-i", url]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([*cmd, "-c", "copy", str(out)], stdout=log, stderr=log)
        self.port = port

    async def ready(self) -> None:
        assert await wait_for(lambda: listening(self.port), 10), self.log.read_text()

    async def finish(self, within_s: float = 10.0) -> None:
        try:
            await asyncio.to_thread(self.proc.wait, within_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def receivers() -> Iterator[list[FfmpegListener]]:
    made: list[FfmpegListener] = []
    yield made
    for r in made:
        r.kill()


def probe(target: str, timeout: float = 20.0) -> dict[str, Any]:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name,profile,width,height,sample_rate",
        ]
        + ["-of", "json", target],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr
    return {s["codec_type"]: s for s in json.loads(out.stdout)["streams"]}


def check_streams(streams: dict[str, Any], width: int, height: int) -> None:
    assert streams["video"]["codec_name"] == "h264"
    assert streams["video"]["profile"] == "Constrained Baseline"
    assert (streams["video"]["width"], streams["video"]["height"]) == (width, height)
    assert streams["audio"]["codec_name"] == "aac"


# --- the shared clip, sanitized as the relay does -----------------------------------------------


@pytest.fixture(scope="module")
def judge() -> Any:
    spec = importlib.util.spec_from_file_location("leakrate", SHARED / "tools" / "leakrate.py")
    assert spec is not None and spec.loader is not None
    leakrate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(leakrate)
    return leakrate.Judge(CLIP)


def sanitized(judge: Any, i: int) -> np.ndarray:
    """Clip frame ``i`` with its ground-truth boxes grown by ``box_margin`` and mosaicked (relay/mosaic.py)."""
    s = Settings()
    img = judge.frames[i].copy()
    h, w = img.shape[:2]
    boxes = np.array([[x1, y1, x2, y2, 1.0, c] for c, x1, y1, x2, y2 in judge.gt["frames"][i]], np.float32)
    return pixelate(img, expand_boxes(boxes, s.box_margin, img.shape), block_for_frame(s.mosaic_block, w, h))


def to_frame(bgr: np.ndarray, arrival: float) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(format="yuv420p")
    frame.opaque = arrival  # what the sanitizer sets: the arrival time
    return frame


async def feed(restream: Restream | RestreamSet, images: list[np.ndarray], fps: float) -> None:
    t0 = time.monotonic()
    for n, img in enumerate(images):
        await asyncio.sleep(max(0.0, t0 + n / fps - time.monotonic()))
        frame = await asyncio.to_thread(to_frame, img, t0 + n / fps)
        restream.submit_video(frame)


def audio_rms(video: Path) -> tuple[float, float]:
    """(seconds, RMS) of the received audio track."""
    with av.open(str(video)) as c:
        chunks = [f.to_ndarray().astype(np.float64).ravel() for f in c.decode(audio=0)]
    samples = np.concatenate(chunks)
    return samples.size / 2 / 48000, float(np.sqrt(np.mean(samples**2)))


def leak_report(judge: Any, video: Path) -> tuple[int, int, int, set[int]]:
    """(frames, boxes, leaked boxes, matched source frames) of a received file, each received frame
    judged against the source frame it shows (frames may have been dropped on the way)."""
    frames = boxes = leaked = 0
    matched: set[int] = set()
    with av.open(str(video)) as c:
        for f in c.decode(video=0):
            bgr = f.to_ndarray(format="bgr24")
            i, _ = judge.match(bgr)
            matched.add(i)
            frames += 1
            for b in judge.judge(bgr, i):
                boxes += 1
                leaked += bool(b["leaked"])
    return frames, boxes, leaked, matched


@needs_ffmpeg
async def test_clip_into_ffmpeg_is_h264_aac_and_pixelated(
    judge: Any,
    free_port: int,
    tmp_path: Path,
    receivers: list[FfmpegListener],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    key = "sk_" + secrets.token_hex(8)
    rx = FfmpegListener(free_port, key, tmp_path / "clip.flv")
    receivers.append(rx)
    await rx.ready()
    restream = Restream(f"rtmp://127.0.0.1:{free_port}/app/{key}", LOOPBACK)
    assert restream.state == "stopped" and restream.masked_url == f"rtmp://127.0.0.1:{free_port}/app/****"
    images = await asyncio.to_thread(lambda: [sanitized(judge, i) for i in range(len(judge.frames))])
    restream.start()
    await feed(restream, images, fps=15)
    assert restream.state == "live", restream.last_error
    first_output_s = restream.metrics.first_output_s
    assert first_output_s is not None and first_output_s < 3.0  # the target
    await asyncio.sleep(0.5)
    await restream.stop()
    await restream.stop()  # idempotent
    assert restream.state == "stopped"
    await rx.finish()

    check_streams(await asyncio.to_thread(probe, str(rx.out)), 640, 480)
    frames, boxes, leaked, matched = await asyncio.to_thread(leak_report, judge, rx.out)
    seconds, rms = await asyncio.to_thread(audio_rms, rx.out)
    print(
        f"clip: first output {first_output_s:.2f} s, {frames} frames, {leaked}/{boxes} boxes leaked, audio {seconds:.1f} s"
    )
    assert seconds > 8.0 and rms == 0.0  # no audio from the publisher: silent AAC all along
    assert frames >= 0.8 * len(images), (frames, restream.metrics)
    assert {i // 50 for i in matched} == {0, 1, 2}  # all three photos of the clip arrived
    assert boxes >= 0.8 * len(images)
    assert leaked / boxes <= 0.005, (leaked, boxes)
    assert key not in caplog.text and "app/****" in caplog.text


@needs_ffmpeg
async def test_raw_clip_frames_leak_through_the_same_path(
    judge: Any, free_port: int, tmp_path: Path, receivers: list[FfmpegListener]
) -> None:
    """Control: the judge sees the label in what an un-sanitized restream delivers (it is not blind
    to H.264), so the leak check above can fail."""
    rx = FfmpegListener(free_port, "k", tmp_path / "raw.flv")
    receivers.append(rx)
    await rx.ready()
    restream = Restream(f"rtmp://127.0.0.1:{free_port}/app/k", LOOPBACK)
    restream.start()
    await feed(restream, [judge.frames[i] for i in range(0, 150, 5)], fps=10)
    await asyncio.sleep(0.3)
    await restream.stop()
    await rx.finish()
    frames, boxes, leaked, _ = await asyncio.to_thread(leak_report, judge, rx.out)
    print(f"raw control: {frames} frames, {leaked}/{boxes} boxes leaked")
    assert frames >= 20 and leaked / boxes > 0.5, (frames, boxes, leaked)


@pytest.mark.skipif(not NGINX_RTMP.exists() or shutil.which("nginx") is None, reason="libnginx-mod-rtmp")
async def test_push_into_nginx_rtmp_and_play_back(free_port: int, tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"load_module {NGINX_RTMP};\n"
        f"daemon off;\nmaster_process off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log info;\n"
        "events { worker_connections 64; }\n"
        f"rtmp {{ server {{ listen 127.0.0.1:{free_port}; chunk_size 4096;\n"
        "  application live { live on; record off; } } }\n"
    )
    nginx = start(
        ["nginx", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")], tmp_path
    )
    try:
        assert await wait_for(lambda: listening(free_port), 10), (tmp_path / "error.log").read_text()
        restream = Restream(f"rtmp://127.0.0.1:{free_port}/live/sk_nginx", LOOPBACK)
        restream.start()
        img = np.zeros((720, 1280, 3), np.uint8)
        img[:, ::2] = 255
        feeding = asyncio.create_task(feed(restream, [img] * 150, fps=15), name="feed-nginx")
        try:
            assert await wait_for(lambda: restream.state == "live", 10), restream.last_error
            streams = await asyncio.to_thread(probe, f"rtmp://127.0.0.1:{free_port}/live/sk_nginx")
        finally:
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)
            await restream.stop()
        check_streams(streams, 1280, 720)
        assert restream.metrics.failures == 0
    finally:
        nginx.terminate()
        try:
            nginx.wait(5)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait(5)


@needs_ffmpeg
async def test_receiver_drops_then_reconnect_and_key_never_logged(
    free_port: int, tmp_path: Path, receivers: list[FfmpegListener], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = "sk_live_" + secrets.token_hex(12)
    first = FfmpegListener(free_port, key, tmp_path / "first.flv")
    receivers.append(first)
    await first.ready()
    restream = Restream(f"rtmp://127.0.0.1:{free_port}/app/{key}", LOOPBACK)
    restream.start()
    img = np.random.default_rng(1).integers(0, 255, (360, 640, 3), dtype=np.uint8)
    feeding = asyncio.create_task(feed(restream, [img] * 600, fps=15), name="feed-reconnect")
    states: list[str] = []
    try:
        assert await wait_for(lambda: restream.state == "live", 10), restream.last_error
        await asyncio.sleep(1.0)
        first.kill()  # the far end drops
        assert await wait_for(lambda: restream.state == "connecting", 10)
        states.append(restream.state)
        assert await wait_for(lambda: restream.metrics.failures >= 2, 10)  # refused: nobody listens
        second = FfmpegListener(free_port, key, tmp_path / "second.flv")
        receivers.append(second)
        await second.ready()
        t_back = time.monotonic()
        assert await wait_for(lambda: restream.state == "live", 15), restream.last_error
        states.append(restream.state)
        back_s = time.monotonic() - t_back
        assert restream.metrics.connects == 2
        await asyncio.sleep(1.0)
    finally:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
        await restream.stop()
    await second.finish()
    assert states == ["connecting", "live"] and back_s < 12.0  # backoff is capped at 10 s
    check_streams(await asyncio.to_thread(probe, str(second.out)), 640, 360)
    assert restream.state == "stopped" and not [
        t for t in threading.enumerate() if restream.restream_id in t.name
    ]
    text = caplog.text + json.dumps(restream.to_dict())
    assert key not in text and key[:12] not in text
    assert "failed" in caplog.text and f"127.0.0.1:{free_port}/app/****" in caplog.text


async def test_restream_set_limits_and_fan_out() -> None:
    rs = RestreamSet(max_restreams=2, options=RestreamOptions(allow_private=True), name="t")
    a = rs.add("rtmp://127.0.0.1:9/app/a")
    with pytest.raises(Exception) as dup:
        rs.add("rtmp://127.0.0.1:9/app/a")
    assert getattr(dup.value, "code", "") == "conflict"
    rs.add("rtmp://127.0.0.1:9/app/b")
    with pytest.raises(Exception) as many:
        rs.add("rtmp://127.0.0.1:9/app/c")
    assert getattr(many.value, "code", "") == "limit_exceeded"
    rs.submit_video(to_frame(np.zeros((64, 64, 3), np.uint8), time.monotonic()))
    assert all(r.metrics.frames_in == 1 for r in rs.list())
    await rs.remove(a.restream_id)
    assert [r.url for r in rs.list()] == ["rtmp://127.0.0.1:9/app/b"] and a.state == "stopped"
    t0 = time.monotonic()
    await rs.close()
    assert time.monotonic() - t0 < 3.5 and len(rs) == 0
    with pytest.raises(Exception) as closed:
        rs.add("rtmp://127.0.0.1:9/app/d")
    assert getattr(closed.value, "code", "") == "not_found"


# --- HTTP routes through the real server ----------------------------------------------------------


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def api(
    s: aiohttp.ClientSession, method: str, url: str, key: str | None = None, **kwargs: Any
) -> tuple[int, dict[str, Any], Any]:
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with s.request(method, url, headers=headers, **kwargs) as r:
        return r.status, await r.json(), r.headers


async def create_stream(sio_connect: Any, base: str) -> tuple[Any, str, str]:
    sock = await sio_connect(base, "/publisher")
    created = await sock.call(
        "create_stream", {"title": "restream", "category": "test"}, namespace="/publisher"
    )
    return sock, created["stream_id"], created["publish_key"]


async def test_http_errors(
    serve_app: ServeApp, sio_connect: Any, http_session: aiohttp.ClientSession, loopback_ice: None
) -> None:
    from signaling.app import create_app
    from tests.helpers.media import FakeDetector

    base = await serve_app(create_app(Settings(max_restreams_per_stream=1), FakeDetector()))
    _, sid, key = await create_stream(sio_connect, base)
    url = f"{base}/api/streams/{sid}/restreams"
    target = {"url": "rtmp://127.0.0.1:1935/app/sk_secret"}
    cases = [
        ("POST", f"{base}/api/streams/nope/restreams", key, {"json": target}, 404, "not_found"),
        ("POST", url, None, {"json": target}, 401, "unauthorized"),
        ("POST", url, "wrong", {"json": target}, 401, "unauthorized"),
        ("POST", url, key, {"data": "url=rtmp://x/a/b"}, 415, "unsupported_media_type"),
        (
            "POST",
            url,
            key,
            {"data": "{", "headers": {"Content-Type": "application/json"}},
            400,
            "bad_request",
        ),
        ("POST", url, key, {"json": {"url": "http://example.com/a/b"}}, 400, "bad_request"),
        ("POST", url, key, {"json": {"url": "rtmp://example.com/only-app"}}, 400, "bad_request"),
        ("POST", url, key, {"json": target}, 403, "target_refused"),  # loopback, not allowed
        ("POST", url, key, {"json": {"url": "rtmp://localhost/app/sk_secret"}}, 403, "target_refused"),
        ("GET", url, None, {}, 401, "unauthorized"),
        ("DELETE", f"{url}/nope", key, {}, 404, "not_found"),
    ]
    for method, u, k, kwargs, status, code in cases:
        got, body, headers = await api(http_session, method, u, k, **kwargs)
        assert (got, body["error"]["code"]) == (status, code), (method, u, kwargs, body)
        assert "sk_secret" not in json.dumps(body)
        if status == 401:
            assert headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = await api(http_session, "GET", url, key)
    assert (status, body) == (200, {"restreams": []})


@needs_ffmpeg
async def test_http_restream_of_a_live_stream_stops_with_it(
    serve_app: ServeApp,
    sio_connect: Any,
    http_session: aiohttp.ClientSession,
    loopback_ice: None,
    peers: list[Any],
    free_port: int,
    tmp_path: Path,
    receivers: list[FfmpegListener],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from signaling.app import create_app
    from tests.helpers.media import (
        FakeDetector,
        ImageTrack,
        Publisher,
        ToneTrack,
        block_stds,
        box_region,
        label_scene,
    )

    caplog.set_level(logging.DEBUG)
    scene, box = label_scene()
    settings = Settings(restream_allow_private=True, max_restreams_per_stream=1)
    base = await serve_app(create_app(settings, FakeDetector(box)))
    sock, sid, key = await create_stream(sio_connect, base)
    rkey = "sk_" + secrets.token_hex(10)
    rx = FfmpegListener(free_port, rkey, tmp_path / "room.flv")
    receivers.append(rx)
    await rx.ready()

    # added before the stream is live: it waits, and pushes once frames flow
    url = f"{base}/api/streams/{sid}/restreams"
    t_request = time.monotonic()
    status, body, headers = await api(
        http_session, "POST", url, key, json={"url": f"rtmp://127.0.0.1:{free_port}/app/{rkey}"}
    )
    assert status == 201, body
    rid = body["restream_id"]
    assert body == {
        "restream_id": rid,
        "url": f"rtmp://127.0.0.1:{free_port}/app/****",
        "state": "connecting",
    }
    assert headers["Location"] == f"/api/streams/{sid}/restreams/{rid}"
    status, body, _ = await api(
        http_session, "POST", url, key, json={"url": f"rtmp://127.0.0.1:{free_port}/app/{rkey}"}
    )
    assert (status, body["error"]["code"]) == (409, "conflict")
    status, body, _ = await api(
        http_session, "POST", url, key, json={"url": f"rtmp://127.0.0.1:{free_port}/app/other"}
    )
    assert (status, body["error"]["code"]) == (429, "limit_exceeded")

    publisher = Publisher(ImageTrack(scene, fps=15), ToneTrack())
    peers.append(publisher)

    async def answer(sdp: str, type_: str) -> dict[str, str]:
        ack = await sock.call(
            "publish",
            {"stream_id": sid, "publish_key": key, "sdp": sdp, "type": type_},
            namespace="/publisher",
        )
        assert ack["ok"], ack
        return dict(ack)

    t_live = time.monotonic()
    await publisher.connect(answer)

    async def state() -> str:
        _, listed, _ = await api(http_session, "GET", url, key)
        return str(listed["restreams"][0]["state"])

    for _ in range(200):
        if await state() == "live":
            break
        await asyncio.sleep(0.1)
    assert await state() == "live"
    live_after_s = time.monotonic() - t_live
    assert live_after_s < 10.0 and time.monotonic() - t_request > 0
    # the operator sees it: mosaic_relay_restream_state{stream, restream} 2 (live)
    _, listed, _ = await api(http_session, "GET", url, key)
    rid = listed["restreams"][0]["restream_id"]
    async with http_session.get(f"{base}/metrics") as r:
        scraped = await r.text()
    assert f'mosaic_relay_restream_state{{restream="{rid}",stream="{sid}"}} 2.0' in scraped, scraped[-2000:]
    await asyncio.sleep(3.0)

    ack = await sock.call("stop_stream", {"stream_id": sid, "publish_key": key}, namespace="/publisher")
    assert ack["ok"], ack
    await rx.finish()  # the restream stopped: the receiver's input ended
    assert rx.proc.returncode is not None
    assert not [t for t in threading.enumerate() if t.name.startswith(f"room-{sid}-restream")]
    status, body, _ = await api(http_session, "GET", url, key)
    assert status == 404

    check_streams(await asyncio.to_thread(probe, str(rx.out)), 640, 480)
    with av.open(str(rx.out)) as c:
        last = [f for f in c.decode(video=0)][-1]
    gray = last.to_ndarray(format="gray")
    inside = block_stds(gray, box_region(box[0]))
    outside = block_stds(gray, (int(box[0, 2]) + 64, 0, gray.shape[1], gray.shape[0]))
    assert np.median(inside) < 4.0 and np.median(outside) > 3 * max(float(np.median(inside)), 1.0)
    seconds, rms = await asyncio.to_thread(audio_rms, rx.out)
    print(f"room: live {live_after_s:.2f} s after publish, audio {seconds:.1f} s rms {rms:.3f}")
    assert seconds > 2.0 and rms > 0.05  # the publisher's tone (8000/32768 peak: rms ~0.17)
    assert rkey not in caplog.text


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl) and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
        + ["-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


async def tls_terminator(cert: Path, key: Path, backend_port: int) -> asyncio.Server:
    """A TLS server on a free loopback port that pipes each connection to ``backend_port`` in clear
    (``ffmpeg -listen`` cannot listen on rtmps://)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            w.close()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        br, bw = await asyncio.open_connection("127.0.0.1", backend_port)
        await asyncio.gather(pipe(r, bw), pipe(br, w))

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)


@needs_ffmpeg
async def test_rtmps_verifies_the_certificate_then_pushes(
    free_port: int, tmp_path: Path, receivers: list[FfmpegListener], tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    rx = FfmpegListener(free_port, "sk_tls", tmp_path / "tls.flv")
    receivers.append(rx)
    await rx.ready()
    server = await tls_terminator(cert, key, free_port)
    tls_port = server.sockets[0].getsockname()[1]
    url = f"rtmps://127.0.0.1:{tls_port}/app/sk_tls"
    img = np.zeros((240, 320, 3), np.uint8)
    try:
        # the system's CAs do not trust this certificate: refused, the receiver is never reached
        untrusted = Restream(url, LOOPBACK)
        untrusted.start()
        await feed(untrusted, [img] * 8, fps=15)
        assert await wait_for(lambda: untrusted.metrics.failures >= 1, 10)
        await untrusted.stop()
        assert "CERTIFICATE_VERIFY_FAILED" in str(untrusted.last_error) and untrusted.metrics.connects == 0
        assert rx.proc.poll() is None  # still waiting for its one connection

        trusted = Restream(
            url, RestreamOptions(allow_private=True, ssl_context=ssl.create_default_context(cafile=cert))
        )
        trusted.start()
        await feed(trusted, [img] * 30, fps=15)
        assert trusted.state == "live", trusted.last_error
        await trusted.stop()
        await rx.finish()
    finally:
        server.close()
    check_streams(await asyncio.to_thread(probe, str(rx.out)), 320, 240)


@needs_ffmpeg
async def test_canary_no_raw_frame_reaches_the_rtmp_receiver(
    serve_app: ServeApp,
    sio_connect: Any,
    http_session: aiohttp.ClientSession,
    loopback_ice: None,
    peers: list[Any],
    detector: Any,
    free_port: int,
    tmp_path: Path,
    receivers: list[FfmpegListener],
) -> None:
    """Issue #13's canary for RTMP: every frame the receiver gets, from its first, through start-up
    (no detection yet), an injected detector exception and a stall, has the label pixelated."""
    from signaling.app import create_app
    from signaling.keys import STATE_KEY
    from tests.helpers.media import ImageTrack, Publisher, label_scene
    from tests.test_relay_integration import FrameCheck

    scene, box = label_scene(640, 480)
    app = create_app(Settings(restream_allow_private=True), detector)
    base = await serve_app(app)
    sock, sid, key = await create_stream(sio_connect, base)
    rx = FfmpegListener(free_port, "canary", tmp_path / "canary.flv")
    receivers.append(rx)
    await rx.ready()
    url = f"{base}/api/streams/{sid}/restreams"
    status, body, _ = await api(
        http_session, "POST", url, key, json={"url": f"rtmp://127.0.0.1:{free_port}/app/canary"}
    )
    assert status == 201, body
    publisher = Publisher(ImageTrack(scene, fps=15))
    peers.append(publisher)

    async def answer(sdp: str, type_: str) -> dict[str, str]:
        ack = await sock.call(
            "publish",
            {"stream_id": sid, "publish_key": key, "sdp": sdp, "type": type_},
            namespace="/publisher",
        )
        assert ack["ok"], ack
        return dict(ack)

    await publisher.connect(answer)
    room = app[STATE_KEY].registry.get(sid)
    restream = room.restreams.list()[0]
    assert await wait_for(lambda: restream.state == "live", 15), restream.last_error
    await asyncio.sleep(1.5)
    detector.set_mode("raise")
    await asyncio.sleep(2.0)
    detector.set_mode("stall")
    await asyncio.sleep(2.0)
    detector.set_mode("ok")
    await asyncio.sleep(1.5)
    sanitizer = room.sanitizer
    assert sanitizer is not None
    metrics = sanitizer.metrics
    assert detector.raised > 0 and detector.stalled > 0 and metrics.full_pixelations > 0
    ack = await sock.call("stop_stream", {"stream_id": sid, "publish_key": key}, namespace="/publisher")
    assert ack["ok"], ack
    await rx.finish()

    def check_all() -> int:
        check = FrameCheck(box[0], 640, 480, scene)
        with av.open(str(rx.out)) as c:
            for f in c.decode(video=0):
                check(f)  # raises on the first frame whose label is not pixelated
        return check.frames

    frames = await asyncio.to_thread(check_all)
    print(f"canary: {frames} frames at the RTMP receiver, all pixelated; {metrics.full_pixelations} fully")
    assert frames >= 6 * 15 * 0.7


def restream_threads(restream: Restream) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith(restream.restream_id)]


async def test_stop_is_bounded_while_connecting_to_a_black_hole() -> None:
    """A target that never answers the SYN (a listener whose accept queue is full drops it)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):  # fill the accept queue (nobody accepts)
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    try:
        restream = Restream(f"rtmp://127.0.0.1:{port}/app/key", LOOPBACK)
        restream.start()
        restream.submit_video(to_frame(np.zeros((64, 64, 3), np.uint8), time.monotonic()))
        await asyncio.sleep(1.5)
        assert restream.state == "connecting" and restream.metrics.failures == 0  # still in connect()
        t0 = time.monotonic()
        await restream.stop()
        assert time.monotonic() - t0 < 1.5 and restream.state == "stopped"
        assert await wait_for(lambda: not restream_threads(restream), 1.0)
    finally:
        for s in fillers:
            s.close()
        server.close()


@needs_ffmpeg
async def test_stop_is_bounded_when_the_receiver_stops_reading(
    free_port: int, tmp_path: Path, receivers: list[FfmpegListener]
) -> None:
    """The receiver freezes (SIGSTOP): sends block once the socket buffers are full; stop() aborts them."""
    rx = FfmpegListener(free_port, "k", tmp_path / "frozen.flv")
    receivers.append(rx)
    await rx.ready()
    restream = Restream(
        f"rtmp://127.0.0.1:{free_port}/app/k", RestreamOptions(allow_private=True, bitrate=50_000_000)
    )
    restream.start()
    noise = [np.random.default_rng(i).integers(0, 255, (480, 640, 3), dtype=np.uint8) for i in range(4)]
    feeding = asyncio.create_task(feed(restream, noise * 150, fps=30), name="feed-frozen")
    try:
        assert await wait_for(lambda: restream.state == "live", 10), restream.last_error
        rx.proc.send_signal(signal.SIGSTOP)
        sent, blocked_since = restream.metrics.frames_sent, time.monotonic()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and time.monotonic() - blocked_since < 1.0:
            await asyncio.sleep(0.1)
            if restream.metrics.frames_sent != sent:
                sent, blocked_since = restream.metrics.frames_sent, time.monotonic()
        assert time.monotonic() - blocked_since >= 1.0, "the sends never blocked"
        t0 = time.monotonic()
        await restream.stop()
        stop_s = time.monotonic() - t0
    finally:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
        rx.proc.send_signal(signal.SIGCONT)
    assert stop_s < 3.5 and restream.state == "stopped"
    assert await wait_for(lambda: not restream_threads(restream), 1.0)
