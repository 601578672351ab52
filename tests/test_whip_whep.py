"""The HTTP stream API, WHIP ingest and WHEP egress (issue #13) against the real app, real rooms and
real aiortc peers on loopback.

Publishers are aiortc WHIP clients (VP8 + Opus, H.264 + Opus); viewers are aiortc WHEP clients that
decode the video: the label of the scene (a real photo, ``label_scene``) must arrive pixelated. The
detector is a fake that returns the scene's label box (the trained model is exercised elsewhere).
Every error status of the contract is provoked once.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiortc import RTCRtpSender, RTCSessionDescription

from relay.room import PUBLISHER_MEDIA_TIMEOUT_S, live_peer_connection_count
from relay.settings import Settings
from signaling.app import create_app
from tests.helpers.media import (
    FakeDetector,
    ImageTrack,
    Publisher,
    ToneTrack,
    Viewer,
    block_stds,
    box_region,
    frame_gray,
    label_scene,
)

pytestmark = pytest.mark.timeout(120)

ServeApp = Callable[[web.Application], Awaitable[str]]  # type of the conftest fixture
REPO_ROOT = Path(__file__).resolve().parent.parent
ALLOWED_ORIGIN = "http://player.example"
SDP = "application/sdp"


@pytest.fixture
async def no_leaks() -> AsyncIterator[None]:
    yield
    assert live_peer_connection_count() == 0


@pytest.fixture
async def relay_url(no_leaks: None, serve_app: ServeApp, loopback_ice: None) -> str:
    _, box = label_scene()
    settings = Settings(allowed_origins=(ALLOWED_ORIGIN,))
    return await serve_app(create_app(settings, FakeDetector(box)))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# --- client helpers ----------------------------------------------------------------------------


async def create(http: aiohttp.ClientSession, url: str, **fields: Any) -> dict[str, Any]:
    body = {"title": "parcels", "category": "unboxing", **fields}
    async with http.post(f"{url}/api/streams", json=body) as r:
        assert r.status == 201, await r.text()
        data: dict[str, Any] = await r.json()
        return data


async def post_sdp(
    http: aiohttp.ClientSession, url: str, sdp: str, token: str | None = None, content_type: str = SDP
) -> tuple[int, str, dict[str, str]]:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with http.post(url, data=sdp.encode(), headers=headers) as r:
        return r.status, await r.text(), dict(r.headers)


def answerer(http: aiohttp.ClientSession, url: str, token: str | None, out: dict[str, Any]) -> Any:
    """An ``Answerer`` for tests.helpers.media peers that POSTs the offer to a WHIP/WHEP endpoint."""

    async def answer(sdp: str, type_: str) -> dict[str, str]:
        status, body, headers = await post_sdp(http, url, sdp, token)
        assert status == 201, body
        assert headers["Content-Type"] == SDP
        out["location"] = headers["Location"]
        out["answer"] = body
        return {"sdp": body, "type": "answer"}

    return answer


def prefer(pc: Any, kind: str, mime: str, **params: str) -> None:
    codecs = [
        c
        for c in RTCRtpSender.getCapabilities(kind).codecs
        if c.mimeType.lower() == mime.lower() and all(c.parameters.get(k) == v for k, v in params.items())
    ]
    assert codecs, (mime, params)
    for t in pc.getTransceivers():
        if t.kind == kind:
            t.setCodecPreferences(codecs)


def video_codecs(sdp: str) -> set[str]:
    video = sdp.split("m=video", 1)[1].split("\r\nm=", 1)[0]
    return set(re.findall(r"a=rtpmap:\d+ ([A-Za-z0-9]+)/90000", video)) - {"rtx"}


async def assert_pixelated(viewer: Viewer) -> None:
    _, box = label_scene()
    gray = await asyncio.to_thread(frame_gray, viewer.frames[-1])
    inside = block_stds(gray, box_region(box[0]))
    h, w = gray.shape
    outside = block_stds(gray, (int(box[0, 2]) + 64, 0, w, h))  # the checkerboard right of the label
    assert inside.size > 20 and outside.size > 20
    assert np.median(inside) < 4.0, np.median(inside)
    assert np.median(outside) > 3 * max(float(np.median(inside)), 1.0), (
        np.median(outside),
        np.median(inside),
    )


async def public_streams(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with http.get(f"{url}/api/streams") as r:
        streams: list[dict[str, Any]] = (await r.json())["streams"]
        return streams


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float) -> None:  # noqa: ASYNC109
    for _ in range(int(timeout * 10)):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"not true within {timeout} s")


# --- stream API --------------------------------------------------------------------------------


async def test_stream_api_create_and_delete(relay_url: str, http: aiohttp.ClientSession) -> None:
    created = await create(http, relay_url)
    assert set(created) == {"stream_id", "publish_key", "whip_url", "whep_url", "stream"}
    stream_id = created["stream_id"]
    assert created["whip_url"] == f"{relay_url}/whip/{stream_id}"
    assert created["whep_url"] == f"{relay_url}/whep/{stream_id}"
    assert created["stream"]["live"] is False and created["stream"]["stream_id"] == stream_id
    assert created["stream"]["title"] == "parcels" and created["stream"]["private"] is False

    private = await create(http, relay_url, private=True)
    assert private["stream"]["private"] is True
    assert private["view_token"] and private["view_token_expires_at"] > time.time() + 3600

    url = f"{relay_url}/api/streams/{stream_id}"
    async with http.delete(url) as r:
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await r.json())["error"]["code"] == "unauthorized"
    async with http.delete(url, headers={"Authorization": "Bearer " + private["publish_key"]}) as r:
        assert r.status == 401
    async with http.delete(
        f"{relay_url}/api/streams/nosuchstream", headers={"Authorization": "Bearer x"}
    ) as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    async with http.delete(url, headers={"Authorization": "Bearer " + created["publish_key"]}) as r:
        assert r.status == 200 and (await r.json()) == {"stream_id": stream_id}
    async with http.delete(url, headers={"Authorization": "Bearer " + created["publish_key"]}) as r:
        assert r.status == 404
    status, _, _ = await post_sdp(http, created["whip_url"], "v=0\r\n", created["publish_key"])
    assert status == 404


async def test_stream_api_errors(relay_url: str, http: aiohttp.ClientSession) -> None:
    url = f"{relay_url}/api/streams"

    async def error(status: int, code: str, **kwargs: Any) -> str:
        async with http.post(url, **kwargs) as r:
            body = await r.json()
            assert r.status == status, body
            assert r.headers["Content-Type"].startswith("application/json")
            assert body["error"]["code"] == code, body
            return str(body["error"]["message"])

    await error(415, "unsupported_media_type", data=b'{"title": "a", "category": "b"}')
    await error(400, "bad_request", data=b"{nope", headers={"Content-Type": "application/json"})
    await error(400, "bad_request", json=["title"])
    assert "unknown field" in await error(
        400, "bad_request", json={"title": "a", "category": "b", "privat": True}
    )
    assert "title" in await error(400, "bad_request", json={"title": "  ", "category": "b"})
    assert "private" in await error(400, "bad_request", json={"title": "a", "category": "b", "private": 1})
    assert "too long" in await error(400, "bad_request", json={"title": "t" * 121, "category": "b"})
    await error(413, "payload_too_large", json={"title": "a", "category": "b" * 10_000})

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
        yield b'{"title": "a", "category": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}'

    await error(413, "payload_too_large", data=chunked(), headers={"Content-Type": "application/json"})


async def test_stream_api_limits(no_leaks: None, serve_app: ServeApp, http: aiohttp.ClientSession) -> None:
    url = await serve_app(create_app(Settings(max_streams=1), FakeDetector()))
    await create(http, url)
    async with http.post(f"{url}/api/streams", json={"title": "a", "category": "b"}) as r:
        assert r.status == 503 and (await r.json())["error"]["code"] == "limit_exceeded"


# --- WHIP + WHEP with media --------------------------------------------------------------------


async def test_whip_vp8_with_audio_to_whep_viewer(
    relay_url: str, http: aiohttp.ClientSession, peers: list[Any]
) -> None:
    created = await create(http, relay_url)
    stream_id, key = created["stream_id"], created["publish_key"]
    publisher = Publisher(ImageTrack(label_scene()[0], fps=15), ToneTrack())
    peers.append(publisher)
    prefer(publisher.pc, "video", "video/VP8")
    whip: dict[str, Any] = {}
    await publisher.connect(answerer(http, created["whip_url"], key, whip))
    assert video_codecs(whip["answer"]) == {"VP8"}
    assert "a=candidate:" in whip["answer"] and "opus/48000" in whip["answer"]
    assert re.fullmatch(rf"/whip/{stream_id}/[A-Za-z0-9_-]{{32}}", whip["location"])

    # a second publisher (right key) while live: 409
    intruder = Publisher(ImageTrack(label_scene()[0]))
    peers.append(intruder)
    status, body, _ = await post_sdp(http, created["whip_url"], (await intruder.offer()).sdp, key)
    assert status == 409, body

    viewer = Viewer(audio=True)
    peers.append(viewer)
    whep: dict[str, Any] = {}
    await viewer.connect(answerer(http, created["whep_url"], None, whep))
    assert video_codecs(whep["answer"]) == {"VP8"}
    await viewer.wait_frames(40, timeout=40)
    await assert_pixelated(viewer)
    await wait_for(lambda: _audio(viewer), 10)
    listed = await public_streams(http, relay_url)
    assert [(s["stream_id"], s["live"], s["viewer_count"]) for s in listed] == [(stream_id, True, 1)]

    # the viewer leaves through its session URL; a PATCH (trickle) is refused
    async with http.patch(relay_url + whep["location"], data=b"a=end-of-candidates") as r:
        assert r.status == 405
    async with http.delete(relay_url + whep["location"]) as r:
        assert r.status == 200
    await asyncio.wait_for(viewer.ended.wait(), 10)
    assert (await public_streams(http, relay_url))[0]["viewer_count"] == 0
    async with http.delete(relay_url + whep["location"]) as r:
        assert r.status == 404

    # DELETE of the WHIP session ends the stream
    async with http.patch(relay_url + whip["location"], data=b"a=end-of-candidates") as r:
        assert r.status == 405
    async with http.delete(relay_url + whip["location"]) as r:
        assert r.status == 200
    assert await public_streams(http, relay_url) == []
    status, _, _ = await post_sdp(http, created["whep_url"], "v=0\r\n")
    assert status == 404
    async with http.delete(relay_url + whip["location"]) as r:
        assert r.status == 404


async def _audio(viewer: Viewer) -> bool:
    return viewer.audio_frames > 10


async def test_whip_h264_publisher_reaches_vp8_whep_viewer(
    relay_url: str, http: aiohttp.ClientSession, peers: list[Any]
) -> None:
    created = await create(http, relay_url, private=True)
    publisher = Publisher(ImageTrack(label_scene()[0], fps=15), ToneTrack())
    peers.append(publisher)
    prefer(publisher.pc, "video", "video/H264", **{"profile-level-id": "42e01f"})
    whip: dict[str, Any] = {}
    await publisher.connect(answerer(http, created["whip_url"], created["publish_key"], whip))
    assert video_codecs(whip["answer"]) == {"H264"}
    assert "packetization-mode=1" in whip["answer"]

    # private: no token or a wrong one is 401; the view token works
    viewer = Viewer()
    peers.append(viewer)
    await viewer.pc.setLocalDescription(await viewer.pc.createOffer())
    offer = viewer.pc.localDescription.sdp
    for token in (None, "123.abc", created["publish_key"]):
        status, body, headers = await post_sdp(http, created["whep_url"], offer, token)
        assert status == 401, body
        assert headers["WWW-Authenticate"].startswith("Bearer")
    status, answer, headers = await post_sdp(http, created["whep_url"], offer, created["view_token"])
    assert status == 201, answer
    await viewer.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await viewer.wait_frames(40, timeout=40)
    await assert_pixelated(viewer)
    async with http.delete(relay_url + whip["location"]) as r:
        assert r.status == 200
    await asyncio.wait_for(viewer.ended.wait(), 10)


# --- errors of WHIP and WHEP -------------------------------------------------------------------


async def test_whip_errors_options_and_cors(
    relay_url: str, http: aiohttp.ClientSession, peers: list[Any]
) -> None:
    created = await create(http, relay_url)
    url, key = created["whip_url"], created["publish_key"]
    publisher = Publisher(ImageTrack(label_scene()[0]))
    peers.append(publisher)
    prefer(publisher.pc, "video", "video/VP8")
    offer = (await publisher.offer()).sdp

    async def error(
        status: int, code: str, sdp: str, token: str | None = key, **kwargs: Any
    ) -> dict[str, str]:
        got, body, headers = await post_sdp(http, kwargs.pop("to", url), sdp, token, **kwargs)
        assert got == status, body
        assert json.loads(body)["error"]["code"] == code, body
        return headers

    for token in (None, "wrong-key", "x" * 5000):
        headers = await error(401, "unauthorized", offer, token)
        assert headers["WWW-Authenticate"].startswith("Bearer")
    async with http.post(url, data=offer, headers={"Authorization": key, "Content-Type": SDP}) as r:
        assert r.status == 401  # not the Bearer scheme
    for token in (None, key):  # unknown stream: 404 with or without a key, also for a malformed id
        await error(404, "not_found", offer, token, to=f"{relay_url}/whip/nosuchstream")
        await error(404, "not_found", offer, token, to=f"{relay_url}/whip/bad!id")
    await error(415, "unsupported_media_type", offer, content_type="application/json")
    await error(415, "unsupported_media_type", offer, content_type="text/plain")
    big = "v=0\r\n" + "a=x-pad:" + "x" * Settings().max_sdp_bytes + "\r\n"
    await error(413, "payload_too_large", big)
    await error(400, "bad_request", "v=0\r\nnonsense")
    await error(400, "bad_request", "hello")
    await error(400, "bad_request", offer.replace("m=video", "m=text"))
    # no usable codec: VP9 only, H.264 in packetization-mode 0 only, H.264 high profile only
    await error(400, "unsupported_codec", offer.replace("VP8/90000", "VP9/90000"))
    h264 = Publisher(ImageTrack(label_scene()[0]))
    peers.append(h264)
    prefer(h264.pc, "video", "video/H264", **{"profile-level-id": "42e01f"})
    h264_offer = (await h264.offer()).sdp
    await error(400, "unsupported_codec", h264_offer.replace("packetization-mode=1", "packetization-mode=0"))
    await error(
        400, "unsupported_codec", h264_offer.replace("profile-level-id=42e01f", "profile-level-id=640028")
    )
    assert live_peer_connection_count() == 0  # nothing half-made is left over

    # H.264 main profile (what ffmpeg and hardware encoders announce) is accepted
    status, answer, headers = await post_sdp(
        http, url, h264_offer.replace("profile-level-id=42e01f", "profile-level-id=4d0028"), key
    )
    assert status == 201, answer
    assert video_codecs(answer) == {"H264"} and "profile-level-id=4d001f" in answer

    # OPTIONS: 204 + Accept-Post; CORS headers only on a preflight from an allowed origin
    async with http.options(url) as r:
        assert r.status == 204 and r.headers["Accept-Post"] == SDP
        assert "Access-Control-Allow-Origin" not in r.headers
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    async with http.options(url, headers={"Origin": ALLOWED_ORIGIN, **preflight}) as r:
        assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
        assert "Location" in r.headers["Access-Control-Expose-Headers"]
    async with http.options(url, headers={"Origin": "http://evil.example", **preflight}) as r:
        assert r.status == 204 and "Access-Control-Allow-Origin" not in r.headers
    async with http.options(
        relay_url + headers["Location"], headers={"Origin": ALLOWED_ORIGIN, **preflight}
    ) as r:
        assert r.status == 204 and "DELETE" in r.headers["Access-Control-Allow-Methods"]
    async with http.patch(relay_url + headers["Location"]) as r:
        assert r.status == 405
    async with http.delete(f"{relay_url}/whip/{created['stream_id']}/not-a-session") as r:
        assert r.status == 404
    async with http.delete(relay_url + headers["Location"], headers={"Origin": ALLOWED_ORIGIN}) as r:
        assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    await error(404, "not_found", offer)  # the stream ended with its publisher


async def test_whep_errors(relay_url: str, http: aiohttp.ClientSession, peers: list[Any]) -> None:
    created = await create(http, relay_url)
    viewer = Viewer(audio=True)
    peers.append(viewer)
    await viewer.pc.setLocalDescription(await viewer.pc.createOffer())
    offer = viewer.pc.localDescription.sdp
    status, body, _ = await post_sdp(http, created["whep_url"], offer)
    assert status == 404 and "not live" in body, body
    status, _, _ = await post_sdp(http, f"{relay_url}/whep/nosuchstream", offer)
    assert status == 404
    async with http.options(created["whep_url"]) as r:
        assert r.status == 204 and r.headers["Accept-Post"] == SDP

    publisher = Publisher(ImageTrack(label_scene()[0], fps=15))
    peers.append(publisher)
    whip: dict[str, Any] = {}
    await publisher.connect(answerer(http, created["whip_url"], created["publish_key"], whip))
    assert (await post_sdp(http, created["whep_url"], offer, content_type="text/plain"))[0] == 415
    big = "v=0\r\n" + "a=x-pad:" + "x" * Settings().max_sdp_bytes + "\r\n"
    assert (await post_sdp(http, created["whep_url"], big))[0] == 413
    assert (await post_sdp(http, created["whep_url"], "v=0\r\nnonsense"))[0] == 400
    # an offer with neither VP8 nor H.264 constrained baseline in packetization-mode 1 is refused
    # with a clear message (H.264 egress: tests/test_h264_egress.py)
    h264_viewer = Viewer(
        codecs=[c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
    )
    peers.append(h264_viewer)
    await h264_viewer.pc.setLocalDescription(await h264_viewer.pc.createOffer())
    mode0 = h264_viewer.pc.localDescription.sdp.replace("packetization-mode=1", "packetization-mode=0")
    status, body, _ = await post_sdp(http, created["whep_url"], mode0)
    assert status == 400 and "unsupported_codec" in body and "VP8" in body and "42e01f" in body, body
    assert (await public_streams(http, relay_url))[0]["viewer_count"] == 0
    async with http.delete(relay_url + whip["location"]) as r:
        assert r.status == 200


# --- a publisher that vanishes -----------------------------------------------------------------

VANISHING_PUBLISHER = """
import asyncio, sys
import aiohttp
from aiortc import RTCSessionDescription
from tests.helpers.media import ImageTrack, Publisher, label_scene, use_loopback_ice

async def main(url, key):
    with use_loopback_ice():
        publisher = Publisher(ImageTrack(label_scene()[0], fps=15))
        offer = await publisher.offer()
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": "Bearer " + key, "Content-Type": "application/sdp"}
            async with http.post(url, data=offer.sdp, headers=headers) as r:
                assert r.status == 201, await r.text()
                answer = await r.text()
        await publisher.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        print("published", flush=True)
        await asyncio.sleep(600)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_whip_publisher_that_vanishes_ends_the_stream(
    relay_url: str, http: aiohttp.ClientSession, peers: list[Any]
) -> None:
    """The publisher process is killed (no DELETE, no DTLS close): the room's media watchdog ends
    the stream after PUBLISHER_MEDIA_TIMEOUT_S without video, and the WHEP viewer's track ends."""
    created = await create(http, relay_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        VANISHING_PUBLISHER,
        created["whip_url"],
        created["publish_key"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.strip() == b"published", line
        viewer = Viewer()
        peers.append(viewer)
        await viewer.connect(answerer(http, created["whep_url"], None, {}))
        await viewer.wait_frames(15, timeout=40)
        proc.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        await asyncio.wait_for(viewer.ended.wait(), PUBLISHER_MEDIA_TIMEOUT_S + 15)
        waited = time.monotonic() - t0
        assert waited > PUBLISHER_MEDIA_TIMEOUT_S - 1, waited  # the watchdog, not something else
        assert await public_streams(http, relay_url) == []
        assert (await post_sdp(http, created["whep_url"], "v=0\r\n"))[0] == 404
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


# --- ffmpeg's WHIP muxer (an independent encoder) ------------------------------------------------

FFMPEG_PUBLISHER = """
import fractions, sys, time
import av
from tests.helpers.media import label_scene

url, key, cert, pem_key = sys.argv[1:5]
options = {"authorization": key, "handshake_timeout": "10000", "cert_file": cert, "key_file": pem_key}
out = av.open(url, mode="w", format="whip", options=options)
video = out.add_stream(
    "libx264", rate=15, options={"profile": "baseline", "tune": "zerolatency", "bf": "0", "g": "15", "preset": "ultrafast"}
)
video.width, video.height, video.pix_fmt = 640, 480, "yuv420p"
frame = av.VideoFrame.from_ndarray(label_scene()[0], format="bgr24").reformat(format="yuv420p")
start = time.monotonic()
for n in range(int(sys.argv[5])):
    frame.pts, frame.time_base = n, fractions.Fraction(1, 15)
    for packet in video.encode(frame):
        out.mux(packet)
    time.sleep(max(0.0, start + (n + 1) / 15 - time.monotonic()))
out.close()  # sends DELETE to the session URL
print("done", flush=True)
"""


def ecdsa_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate and key (PEM) for ffmpeg's DTLS (see the test)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ffmpeg-whip")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "whip.crt", folder / "whip.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_ffmpeg_whip_muxer_publishes_h264(
    relay_url: str, http: aiohttp.ClientSession, peers: list[Any], tmp_path: Path
) -> None:
    """ffmpeg 8's ``whip`` muxer (PyAV's build: libx264, GnuTLS) publishes H.264 baseline to our WHIP
    endpoint; an aiortc WHEP viewer gets the label pixelated; ffmpeg's DELETE on close ends the stream.

    With its default self-signed certificate the muxer reaches 201 and ICE, then its DTLS handshake
    with aiortc fails ("A TLS fatal alert has been received"); an ECDSA P-256 certificate works. An
    RSA-2048 certificate fails too, because aiortc's DTLS offers ECDHE-ECDSA suites only (adding
    ECDHE-RSA suites to its context made the RSA certificate work); the default certificate still
    failed with those suites added, so it differs in something else (not found in the time box).
    docs/PROTOCOL.md tells ffmpeg users to pass an ECDSA certificate."""
    av = pytest.importorskip("av")
    if "whip" not in av.formats_available:
        pytest.skip("this PyAV's ffmpeg has no whip muxer (ffmpeg >= 8 needed)")
    created = await create(http, relay_url)
    cert, key = ecdsa_certificate(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FFMPEG_PUBLISHER,
        created["whip_url"],
        created["publish_key"],
        str(cert),
        str(key),
        "150",
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
    )
    try:

        async def live() -> bool:
            return [s["stream_id"] for s in await public_streams(http, relay_url)] == [created["stream_id"]]

        await wait_for(live, 30)
        viewer = Viewer()
        peers.append(viewer)
        await viewer.connect(answerer(http, created["whep_url"], None, {}))
        await viewer.wait_frames(30, timeout=30)
        await assert_pixelated(viewer)
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"done"
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        await asyncio.wait_for(viewer.ended.wait(), 10)  # ffmpeg's DELETE ended the stream
        assert await public_streams(http, relay_url) == []
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
