"""The streamer's safety-net switch (issue #11): ``set_text_net`` stops (and restarts) the text and
barcode net on that stream only; the Stream object says whether it runs; the YOLO model goes on."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np

from relay.detection import DetectorSet, DetectorSpec
from relay.detector import TEXT_NET
from tests.test_canary import (
    PUB,
    CanaryDetector,
    ServeApp,
    SioConnect,
    call,
    go_live,
    start_relay,
    until,
)


class CountingNet:
    """Stands in for the text net: finds nothing, counts its runs (any thread)."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        with self._lock:
            self.calls += 1
        return np.zeros((0, 6), np.float32)


async def test_the_streamer_switches_the_safety_net_off_and_on(
    loopback_ice: None, serve_app: ServeApp, sio_connect: SioConnect, peers: list[Any]
) -> None:
    yolo, net = CanaryDetector(), CountingNet()
    detectors = DetectorSet([DetectorSpec("yolo", yolo), DetectorSpec(TEXT_NET, net)])
    url, _ = await start_relay(serve_app, detectors)  # type: ignore[arg-type]
    sock = await sio_connect(url, PUB)
    live = await go_live(sock, peers)
    assert live.created["stream"]["text_net"] is True
    await until(lambda: net.calls >= 3, 20, "the net runs")
    base = {"stream_id": live.stream_id, "publish_key": live.publish_key}

    ack = await call(sock, "set_text_net", base | {"enabled": False}, PUB)
    assert ack["ok"] and ack["stream"]["text_net"] is False, ack
    await asyncio.sleep(0.5)  # a step already running may finish
    off_calls, yolo_calls = net.calls, yolo.calls
    await asyncio.sleep(1.5)
    assert net.calls == off_calls, "the net still ran on a stream that switched it off"
    assert yolo.calls > yolo_calls + 3, "the YOLO model must go on"

    wrong = await call(sock, "set_text_net", base | {"publish_key": "x" * 43, "enabled": True}, PUB)
    assert not wrong["ok"] and wrong["error"]["code"] == "forbidden", wrong
    ack = await call(sock, "set_text_net", base | {"enabled": True}, PUB)
    assert ack["ok"] and ack["stream"]["text_net"] is True, ack
    await until(lambda: net.calls > off_calls + 2, 20, "the net runs again")


async def test_a_server_without_the_net_cannot_switch_it_on(
    loopback_ice: None, serve_app: ServeApp, sio_connect: SioConnect, peers: list[Any]
) -> None:
    url, _ = await start_relay(serve_app, CanaryDetector())
    sock = await sio_connect(url, PUB)
    live = await go_live(sock, peers)
    assert live.created["stream"]["text_net"] is False
    base = {"stream_id": live.stream_id, "publish_key": live.publish_key}
    ack = await call(sock, "set_text_net", base | {"enabled": True}, PUB)
    assert not ack["ok"] and ack["error"]["code"] == "conflict", ack
