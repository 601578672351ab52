"""GET /metrics: Prometheus exposition of the registry passed in plus the signaling/process
collectors; bearer token; off switch; and a real scrape by Debian's Prometheus."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import socketio
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from relay.settings import Settings
from signaling.app import create_app

pytestmark = pytest.mark.timeout(120)

ServeApp = Callable[[web.Application], Awaitable[str]]
SioConnect = Callable[..., Awaitable[socketio.AsyncClient]]


class NoDetections:
    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        return np.zeros((0, 6), np.float32)


def samples(text: str) -> dict[str, float]:
    """Every sample as ``name{label="v",...}`` -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


async def scrape(url: str, **headers: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics", headers=headers) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


async def test_metrics_serves_the_registry_passed_in_plus_process_and_signaling(
    serve_app: ServeApp, sio_connect: SioConnect
) -> None:
    registry = CollectorRegistry()
    frames = Counter("mosaic_relay_test_frames", "frames (test)", ["stream"], registry=registry)
    frames.labels(stream="abc").inc(7)
    url = await serve_app(create_app(Settings(), NoDetections(), metrics_registry=registry))
    await sio_connect(url, "/viewer")
    await sio_connect(url, "/viewer", "/publisher")
    status, content_type, text = await scrape(url)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    got = samples(text)
    assert got['mosaic_relay_test_frames_total{stream="abc"}'] == 7.0
    assert got["mosaic_relay_socketio_connections"] == 2.0
    assert got["process_resident_memory_bytes"] > 10e6 and "process_cpu_seconds_total" in got
    (info,) = [k for k in got if k.startswith("mosaic_relay_build_info")]
    assert 'detector="NoDetections"' in info
    # OpenMetrics when the scraper asks for it (Prometheus does)
    status, content_type, text = await scrape(url, Accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and text.rstrip().endswith("# EOF")


async def test_metrics_token_and_off_switch(serve_app: ServeApp) -> None:
    token = "s3cret-token-for-tests"
    url = await serve_app(create_app(Settings(metrics_token=token), NoDetections()))
    assert (await scrape(url))[0] == 401
    assert (await scrape(url, Authorization="Bearer wrong"))[0] == 401
    assert (await scrape(url, Authorization=f"Basic {token}"))[0] == 401
    status, _, text = await scrape(url, Authorization=f"Bearer {token}")
    assert status == 200 and "mosaic_relay_socketio_connections" in text
    off = await serve_app(create_app(dataclasses.replace(Settings(), metrics=False), NoDetections()))
    assert (await scrape(off))[0] == 404


def test_metrics_flags() -> None:
    import run_server

    assert run_server.settings_from_args([], environ={}).metrics is True
    assert run_server.settings_from_args(["--no-metrics"], environ={}).metrics is False
    assert run_server.settings_from_args([], environ={"MOSAIC_RELAY_METRICS": "off"}).metrics is False
    s = run_server.settings_from_args([], environ={"MOSAIC_RELAY_METRICS_TOKEN": "abc"})
    assert s.metrics_token == "abc"


PROMETHEUS = shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is not installed (setup.sh --dev)")
async def test_real_prometheus_scrapes_the_server(serve_app: ServeApp, tmp_path: Path) -> None:
    token = "prometheus-test-token"
    url = await serve_app(create_app(Settings(metrics_token=token), NoDetections()))
    target = url.removeprefix("http://")
    (tmp_path / "token").write_text(token)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: mosaic\n"
        f"    authorization:\n      credentials_file: {tmp_path / 'token'}\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    assert PROMETHEUS is not None
    proc = await asyncio.create_subprocess_exec(
        PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api/v1/query"
    try:
        async with aiohttp.ClientSession() as http:

            async def query(q: str) -> list[dict[str, object]]:
                try:
                    async with http.get(api, params={"query": q}) as r:
                        return list((await r.json())["data"]["result"]) if r.status == 200 else []
                except aiohttp.ClientConnectionError:
                    return []

            for _ in range(120):  # start-up plus a few 1 s scrapes
                up = await query('up{job="mosaic"} == 1')
                conns = await query("mosaic_relay_socketio_connections")
                if up and conns:
                    break
                assert proc.returncode is None, "prometheus exited"
                await asyncio.sleep(0.5)
            else:
                raise AssertionError("Prometheus did not scrape the server within 60 s")
            assert await query("mosaic_relay_build_info")
            assert await query("process_resident_memory_bytes > 0")
    finally:
        proc.terminate()
        err = await asyncio.wait_for(proc.communicate(), 20)
        print("prometheus stderr:", err[1].decode()[-2000:])
