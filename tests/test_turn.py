"""TURN end to end: Debian's coturn (REST credentials, ``use-auth-secret``) started on loopback;
the server configured with ``--ice-server turn:…`` + ``--turn-secret`` and ``--ice-address
127.0.0.1`` (no test patch of aioice); a Chromium publisher; a Chromium viewer whose every
RTCPeerConnection is forced to ``iceTransportPolicy: "relay"`` receives the pixelated video through
coturn (the selected candidate pair is a relay one). No credential appears in the logs."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from relay.settings import Settings
from signaling.app import create_app
from tests import test_browser
from tests.test_browser import Clip, GroundTruthDetector, ServeApp, judge, launch, snapshot_gray

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

clip, playwright = test_browser.clip, test_browser.playwright  # fixtures
TURNSERVER = shutil.which("turnserver")
SECRET = "turn-rest-secret-for-the-test-0123"

# test-only: every peer connection of the page uses TURN relays only, and is kept for inspection
FORCE_RELAY = """(() => {
  const Native = window.RTCPeerConnection;
  window.__pcs = [];
  window.RTCPeerConnection = function (config) {
    const pc = new Native({ ...(config || {}), iceTransportPolicy: "relay" });
    window.__pcs.push({ pc, config: config || {} });
    return pc;
  };
  window.RTCPeerConnection.prototype = Native.prototype;
})();"""

SELECTED_PAIR_JS = """async () => {
  const { pc } = window.__pcs[window.__pcs.length - 1];
  const stats = [...(await pc.getStats()).values()];
  const transport = stats.find((s) => s.type === "transport" && s.selectedCandidatePairId);
  const pair = stats.find((s) => s.id === (transport && transport.selectedCandidatePairId));
  const local = pair && stats.find((s) => s.id === pair.localCandidateId);
  const remote = pair && stats.find((s) => s.id === pair.remoteCandidateId);
  return { local: local && local.candidateType, remote: remote && remote.candidateType,
           relayPort: local && local.port,
           state: pair && pair.state, received: pair && pair.bytesReceived };
}"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def coturn(tmp_path: Path) -> Any:
    if TURNSERVER is None:
        pytest.skip("Debian's coturn is not installed (scripts/setup.sh --dev)")
    port = free_udp_port()
    log = tmp_path / "turn.log"
    proc = await asyncio.create_subprocess_exec(
        TURNSERVER, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", f"--listening-port={port}",
        "--use-auth-secret", f"--static-auth-secret={SECRET}", "--realm=mosaic.test", "--fingerprint",
        "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers", f"--log-file={log}", "--simple-log",
        f"--pidfile={tmp_path / 'turn.pid'}", "--min-port=49200", "--max-port=49999",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(100):  # listening once a UDP bind on its port fails
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                break
        assert proc.returncode is None, "turnserver exited"
        await asyncio.sleep(0.1)
    try:
        yield port, log
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def test_viewer_receives_video_through_turn_only(
    clip: Clip,
    serve_app: ServeApp,
    playwright: Any,
    coturn: tuple[int, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    port, _ = coturn
    settings = Settings(
        ice_servers=(f"turn:127.0.0.1:{port}?transport=udp",),
        turn_secret=SECRET,
        turn_ttl_s=600,
        ice_addresses=("127.0.0.1",),  # the feature under test, instead of tests.helpers' patch
    )
    url = await serve_app(create_app(settings, GroundTruthDetector(clip)))
    pub_browser = await launch(
        playwright,
        ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
         f"--use-file-for-fake-video-capture={clip.y4m}"],
    )  # fmt: skip
    view_browser = await launch(playwright, ["--autoplay-policy=no-user-gesture-required"])
    try:
        pub = await (await pub_browser.new_context()).new_page()
        await pub.goto(url + "/publish")
        await pub.wait_for_selector("#start:not([disabled])", timeout=30_000)
        await pub.fill("#title", "Through TURN")
        await pub.fill("#category", "test")
        await pub.click("#start")
        await pub.wait_for_selector("#share:not(.hidden)", timeout=30_000)
        share = await pub.input_value("#share-link")

        ctx = await view_browser.new_context()
        await ctx.add_init_script(FORCE_RELAY)
        viewer = await ctx.new_page()
        await viewer.goto(share)
        await viewer.wait_for_function(
            "() => document.querySelector('#remote').getVideoPlaybackQuality().totalVideoFrames >= 30",
            timeout=60_000,
        )
        config = await viewer.evaluate("window.__pcs[window.__pcs.length - 1].config")
        (server,) = config["iceServers"]
        assert server["urls"] == [f"turn:127.0.0.1:{port}?transport=udp"] and server["username"]
        pair = await viewer.evaluate(SELECTED_PAIR_JS)
        print("viewer's selected candidate pair:", pair)
        assert pair["local"] == "relay" and pair["state"] == "succeeded" and pair["received"] > 10_000
        assert 49200 <= pair["relayPort"] <= 49999  # an allocation of this coturn (its --min/max-port)
        verdicts = [judge(clip, await snapshot_gray(viewer, "#remote"), settings) for _ in range(3)]
        assert all(v.inside < 4.0 for v in verdicts), [
            (v.index, v.inside) for v in verdicts
        ]  # still pixelated
        credentials = [server["username"], server["credential"], SECRET]
    finally:
        await pub_browser.close()
        await view_browser.close()
    for secret in credentials:
        assert secret not in caplog.text, "a TURN credential reached the server's logs"
