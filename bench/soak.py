"""Soak test: does the relay hold steady for a long run under churn and bad input?

    nice -n 5 .venv/bin/python bench/soak.py --minutes 20

The relay (``create_app``, the real signaling, rooms, sanitizer and encoders; the detector is a
fake returning the scene's label box, so that the media path, not the model, is what runs for
20 minutes) serves on 127.0.0.1 in this process, so its own figures can be read: resident memory,
open file descriptors, asyncio tasks, relay tasks, peer connections, threads, engine.io sessions.
A second process is the clients:

- 4 publishers (aiortc, 640x480 at 15 fps, a real shipping-label photo), each its own stream;
- viewers: ``--viewers`` (4) watching at any time; every ``--churn-s`` (3) seconds the oldest
  leaves and a new one joins a random stream. Every decoded frame is checked canary-style
  (tests/test_relay_integration.py ``FrameCheck``: the label's cells must be flat and must not
  correlate with the raw label); a frame that fails is a *leaked frame*;
- a bad-input client (from 127.0.0.3) sending malformed engine.io/socket.io packets, oversized
  bodies and bad handshakes, about 4 a second.

Figures are printed after a warm-up (start), at the end of the run with the same streams and
number of viewers (end), and after every client left (idle). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import json
import logging
import multiprocessing as mp
import os
import random
import socket
import sys
import threading
import time
import tracemalloc
from collections import Counter, deque
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

logger = logging.getLogger("bench.soak")

STREAMS, W, H, FPS = 4, 640, 480, 15
BAD_SOURCE = "127.0.0.3"


# --- the server (this process) -------------------------------------------------------------------


def task_kinds() -> Counter[str]:
    return Counter(getattr(t.get_coro(), "__qualname__", "?") for t in asyncio.all_tasks())


def server_figures(app: Any) -> dict[str, float]:
    """This process's figures; memory after a GC and ``malloc_trim`` (live memory, not what the
    allocator keeps after a free)."""
    from relay.tasks import live_task_count
    from signaling.keys import SIO_KEY, STATE_KEY

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    state = app[STATE_KEY]
    return {
        "rss_mb": round(rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1),
        "fds": len(os.listdir("/proc/self/fd")),
        "asyncio_tasks": len(asyncio.all_tasks()),
        "relay_tasks": live_task_count(),
        "peer_connections": state.registry.peer_connection_count,
        "threads": threading.active_count(),
        "streams": len(state.registry.rooms),
        "engineio_sessions": len(app[SIO_KEY].eio.sockets),
    }


class BoxDetector:
    """The label's known box for every frame (keeps nothing per call: a soak must not grow)."""

    def __init__(self, box: Any) -> None:
        self.box = box

    def detect(self, img_bgr: Any) -> Any:
        return self.box.copy()


async def serve(args: argparse.Namespace) -> dict[str, Any]:
    from aiohttp import web

    from relay.settings import Settings
    from signaling.app import create_app
    from tests.helpers.media import label_scene, use_loopback_ice

    _, box = label_scene(W, H)
    settings = dataclasses.replace(Settings(), max_viewers_per_stream=100)
    with use_loopback_ice():
        app = create_app(settings, BoxDetector(box))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        runner = web.AppRunner(app, shutdown_timeout=1.0, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        parent, child = mp.get_context("spawn").Pipe()
        proc = mp.get_context("spawn").Process(
            target=clients_main, args=(url, args, child), name="soak-clients", daemon=True
        )
        proc.start()
        figures: dict[str, Any] = {}
        kinds: dict[str, Counter[str]] = {}
        snapshots: dict[str, tracemalloc.Snapshot] = {}
        try:
            while True:
                msg = await asyncio.to_thread(parent.recv)
                if msg[0] in ("start", "end"):
                    figures[msg[0]] = server_figures(app)
                    kinds[msg[0]] = task_kinds()
                    if tracemalloc.is_tracing():
                        snapshots[msg[0]] = tracemalloc.take_snapshot()
                    print(f"{msg[0]:>5}: {json.dumps(figures[msg[0]])}", flush=True)
                    parent.send("ok")
                elif msg[0] == "done":
                    figures["clients"] = msg[1]
                    break
            if snapshots:
                print("Python allocations that grew most between start and end:")
                for stat in snapshots["end"].compare_to(snapshots["start"], "lineno")[:10]:
                    print(f"  {stat}")
            more, fewer = kinds["end"] - kinds["start"], kinds["start"] - kinds["end"]
            print(f"tasks end vs start: more {dict(more)}, fewer {dict(fewer)}", flush=True)
            await asyncio.sleep(3.0)  # the last leaves and closes reach the server
            figures["idle"] = server_figures(app)
            print(f" idle: {json.dumps(figures['idle'])}", flush=True)
            print(f"tasks when idle: {dict(task_kinds())}", flush=True)
        finally:
            await asyncio.to_thread(proc.join, 30)
            await runner.cleanup()
    return figures


# --- the clients (a second process) ----------------------------------------------------------------


def clients_main(url: str, args: argparse.Namespace, conn: Connection) -> None:
    logging.basicConfig(level=logging.WARNING)
    from tests.helpers.media import use_loopback_ice

    with use_loopback_ice():
        result = asyncio.run(run_clients(url, args, conn))
    conn.send(("done", result))


class CountingCheck:
    """Runs ``FrameCheck`` on every decoded frame; counts frames and leaked (failing) ones."""

    def __init__(self, check: Any) -> None:
        self.check = check
        self.frames = 0
        self.leaked = 0

    def __call__(self, frame: Any, lossy: bool) -> None:
        self.frames += 1
        try:
            self.check(frame, lossy)
        except AssertionError as exc:
            self.leaked += 1
            logger.error("leaked frame: %s", exc)


async def run_clients(url: str, args: argparse.Namespace, conn: Connection) -> dict[str, Any]:
    import socketio
    from aiortc import RTCSessionDescription

    from tests.helpers.media import ImageTrack, Publisher, Viewer, label_scene
    from tests.test_relay_integration import FrameCheck

    scene, box = label_scene(W, H)
    pub = socketio.AsyncClient(reconnection=False)
    view = socketio.AsyncClient(reconnection=False)
    await pub.connect(url, namespaces=["/publisher"], transports=["websocket"])
    await view.connect(url, namespaces=["/viewer"], transports=["websocket"])
    publishers, stream_ids = [], []
    for i in range(STREAMS):
        created = await pub.call(
            "create_stream", {"title": f"soak{i}", "category": "soak"}, namespace="/publisher"
        )
        publisher = Publisher(ImageTrack(scene, fps=FPS))
        offer = await publisher.offer()
        ack = await pub.call(
            "publish",
            {
                "stream_id": created["stream_id"],
                "publish_key": created["publish_key"],
                "sdp": offer.sdp,
                "type": "offer",
            },
            namespace="/publisher",
            timeout=30,
        )
        await publisher.pc.setRemoteDescription(RTCSessionDescription(sdp=ack["sdp"], type=ack["type"]))
        publishers.append(publisher)
        stream_ids.append(created["stream_id"])

    checks: list[CountingCheck] = []
    watching: deque[tuple[Viewer, str, str]] = deque()
    counts = {"joins": 0, "leaves": 0, "join_failures": 0}

    async def join(stream_id: str) -> None:
        check = CountingCheck(FrameCheck(box, W, H, scene))
        viewer = Viewer(check=check)
        ids: list[str] = []

        async def answer(sdp: str, type_: str) -> dict[str, str]:
            ack: dict[str, Any] = await view.call(
                "view", {"stream_id": stream_id, "sdp": sdp, "type": type_}, namespace="/viewer", timeout=30
            )
            if not ack.get("ok"):
                raise RuntimeError(ack)
            ids.append(ack["viewer_id"])
            return ack

        try:
            await viewer.connect(answer)
        except Exception as exc:
            counts["join_failures"] += 1
            logger.warning("join failed: %s", exc)
            await viewer.close()
            return
        checks.append(check)
        watching.append((viewer, ids[0], stream_id))
        counts["joins"] += 1

    async def leave() -> None:
        viewer, viewer_id, stream_id = watching.popleft()
        with contextlib.suppress(Exception):
            await view.call(
                "leave", {"stream_id": stream_id, "viewer_id": viewer_id}, namespace="/viewer", timeout=10
            )
        await viewer.close()
        counts["leaves"] += 1

    for i in range(args.viewers):
        await join(stream_ids[i % STREAMS])
    bad = asyncio.create_task(bad_input(url) if args.bad_input else asyncio.sleep(0), name="soak-bad-input")
    await asyncio.sleep(args.warmup_s)
    conn.send(("start", None))
    await asyncio.to_thread(conn.recv)
    deadline = time.monotonic() + max(0.0, args.minutes * 60 - args.warmup_s)
    rng = random.Random(12)
    while time.monotonic() < deadline:
        await asyncio.sleep(args.churn_s or 1.0)
        if args.churn_s:
            await leave()
            await join(rng.choice(stream_ids))
    await asyncio.sleep(2.0)
    conn.send(("end", None))
    await asyncio.to_thread(conn.recv)
    bad.cancel()
    with contextlib.suppress(BaseException):
        await bad
    while watching:
        await leave()
    for publisher in publishers:
        await publisher.close()
    await pub.disconnect()
    await view.disconnect()
    return {
        **counts,
        "frames_checked": sum(c.frames for c in checks),
        "frames_leaked": sum(c.leaked for c in checks),
        "bad_inputs": BAD_SENT[0],
    }


BAD_SENT = [0]


async def bad_input(url: str) -> None:
    """Malformed engine.io/socket.io input and oversized bodies, ~4 a second, until cancelled."""
    import aiohttp

    ws_frames: list[str | bytes] = ["", "9", "0", "42/viewer,[broken", '42/viewer,{"a":1}', b"\xff" * 64]
    bodies = [b"0", b"2", b"\xff\xfe", b"4" * 100_000]
    connector = aiohttp.TCPConnector(local_addr=(BAD_SOURCE, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with asyncio.timeout(5):
                    async with http.ws_connect(
                        url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
                    ) as ws:
                        await ws.receive()
                        await ws.send_str("40/viewer,")
                        frame = random.choice(ws_frames)
                        await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.2):
                                async for _ in ws:
                                    pass
                    async with http.get(url + "/socket.io/?EIO=4&transport=polling") as r:
                        text = await r.text()
                    sid = text.split('"sid":"', 1)[1].split('"', 1)[0] if '"sid":"' in text else "x"
                    async with http.post(
                        f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}", data=random.choice(bodies)
                    ) as r:
                        await r.read()
                    async with http.get(url + "/socket.io/") as r:
                        await r.read()
                BAD_SENT[0] += 4
            await asyncio.sleep(1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="length of the run")
    parser.add_argument("--viewers", type=int, default=4, help="viewers watching at any time")
    parser.add_argument(
        "--churn-s", type=float, default=3.0, help="a viewer leaves and another joins this often"
    )
    parser.add_argument("--warmup-s", type=float, default=20.0, help="seconds before the start figures")
    parser.add_argument(
        "--bad-input", action=argparse.BooleanOptionalAction, default=True, help="run the bad-input client"
    )
    parser.add_argument("--tracemalloc", action="store_true", help="print where Python memory grew (slower)")
    args = parser.parse_args()
    if args.tracemalloc:
        tracemalloc.start(1)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    t0 = time.monotonic()
    figures = asyncio.run(serve(args))
    start, end, idle = figures["start"], figures["end"], figures["idle"]
    print(f"{'':18}{'start':>10}{'end':>10}{'idle':>10}{'end-start':>12}")
    for key in start:
        print(f"{key:18}{start[key]:>10}{end[key]:>10}{idle[key]:>10}{round(end[key] - start[key], 1):>12}")
    clients = figures["clients"]
    print(
        f"clients: {clients['joins']} joins, {clients['leaves']} leaves, {clients['join_failures']} failed joins, "
        f"{clients['bad_inputs']} bad inputs; frames checked {clients['frames_checked']}, "
        f"leaked {clients['frames_leaked']}; {(time.monotonic() - t0) / 60:.1f} min"
    )
    print(json.dumps({"minutes": args.minutes, **figures}))
    return 1 if clients["frames_leaked"] else 0


if __name__ == "__main__":
    sys.exit(main())
