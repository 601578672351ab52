"""``bench/fanout.py --engine janus``: every viewer through Janus; the relay's CPU and Janus's.

    .venv/bin/python bench/fanout.py --engine janus --viewers 200 --steps 50,100,200 --light-viewers

One private Janus 1.1.2 (tests/helpers/janus.py), the relay in its own process with ``--janus-url``
and ``--janus-viewer-threshold 0`` (the room forwards its encoded-once RTP to a mountpoint), the
publisher in a second process (as bench/fanout.py), and the viewers in processes of
``--viewers-per-process``: aiortc peers that offer to the relay, which brokers them to Janus
(``--light-viewers``: all but the probes count frames from the clear RTP headers). Janus's ICE
uses this host's non-loopback address (it never gathers loopback), so the viewers gather on it.

Phases, ``--seconds`` each after a warm-up: no viewer, then ``--steps`` viewer counts in turn
(viewers are added between phases). Per phase: relay cores (getrusage of its process), Janus
cores (``/proc/PID/stat`` utime + stime), the viewers' fps (median/min) and the probes' latency.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.fanout import ViewerProcs, _pct, _viewer_group, publisher_main

logger = logging.getLogger("bench.fanout_janus")


# --- the relay (its own process): one room, POST /publish and /view, GET /cpu ------------------


def relay_main(port: int, ready: Any, size: tuple[int, int], overrides: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve(port, ready, size, overrides))


async def _serve(port: int, ready: Any, size: tuple[int, int], overrides: dict[str, Any]) -> None:
    import dataclasses
    import resource

    from aiohttp import web

    from relay.room import RoomRegistry
    from relay.settings import Settings
    from tests.helpers.media import FakeDetector, label_scene, use_loopback_ice

    settings = dataclasses.replace(Settings(), **overrides)
    _, box = label_scene(*size)
    with use_loopback_ice():  # the relay's own peers (the publisher) on loopback
        registry = RoomRegistry(settings, FakeDetector(box))
        room, key = registry.create("bench", "bench")

        async def publish(request: web.Request) -> web.Response:
            body = await request.json()
            return web.json_response(await room.publish(key, body["sdp"], body["type"]))

        async def view(request: web.Request) -> web.Response:
            body = await request.json()
            return web.json_response(await room.add_viewer(body["id"], body["sdp"], body["type"]))

        async def cpu(request: web.Request) -> web.Response:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            encoder = room.encoder
            return web.json_response(
                {
                    "cpu": ru.ru_utime + ru.ru_stime,
                    "loop_cpu": time.thread_time(),  # the event loop's thread
                    "t": time.monotonic(),
                    "rss_mb": ru.ru_maxrss / 1024,
                    "encoded_frames": encoder.metrics.frames if encoder is not None else 0,
                    "janus_viewers": room.janus.viewer_count if room.janus is not None else 0,
                    "direct_viewers": len(room.viewer_ids) - (room.janus.viewer_count if room.janus else 0),
                }
            )

        app = web.Application()
        app.add_routes([web.post("/publish", publish), web.post("/view", view), web.get("/cpu", cpu)])
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        try:
            await asyncio.Event().wait()
        finally:
            await registry.close_all()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def viewer_main(base: str, first: int, count: int, probes: int, conn: Any, light: bool, address: str) -> None:
    """A viewer process whose aiortc peers gather only ``address`` (where Janus's ICE is)."""
    import aioice

    logging.basicConfig(level=logging.WARNING)
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [address] if use_ipv4 else []
    asyncio.run(_viewer_group(base, first, count, probes, conn, light))


class Viewers(ViewerProcs):
    """Viewer processes added in batches; ``snap()`` over all of them (bench/fanout.py's ViewerProcs)."""

    def __init__(self, ctx: Any, base: str, args: argparse.Namespace, address: str) -> None:
        super().__init__()
        self.ctx, self.base, self.args, self.address = ctx, base, args, address
        self.count = 0

    def add(self, n: int) -> None:
        new = []
        while n > 0:
            count = min(self.args.viewers_per_process, n)
            probes = max(0, min(self.args.probes - self.count, count))
            group = (self.base, self.count, count, probes)
            tail = (self.args.light_viewers, self.address)
            new.append(self.spawn(self.ctx, viewer_main, group, tail))
            self.count += count
            n -= count
        self.wait_ready(180, new)


def viewers_cpu_s(viewers: Viewers | None) -> float:
    """CPU seconds of the viewer processes (the client side runs on the same box)."""
    return sum(cpu_s(p.pid) for p in viewers.procs) if viewers else 0.0


async def phase(
    http: Any, base: str, viewers: Viewers | None, seconds: float, janus_pid: int
) -> dict[str, Any]:
    """One measurement: the relay's, Janus's and the viewer processes' CPU, the viewers' fps."""
    async with http.get(f"{base}/cpu") as r:
        c0 = await r.json()
    j0, v0 = cpu_s(janus_pid), viewers_cpu_s(viewers)
    f0, _ = await asyncio.to_thread(viewers.snap) if viewers else ([], [])
    await asyncio.sleep(seconds)
    async with http.get(f"{base}/cpu") as r:
        c1 = await r.json()
    f1, lat = await asyncio.to_thread(viewers.snap) if viewers else ([], [])
    elapsed = c1["t"] - c0["t"]
    janus_cores = (cpu_s(janus_pid) - j0) / elapsed
    viewer_cores = (viewers_cpu_s(viewers) - v0) / elapsed
    fps = [(b - a) / elapsed for a, b in zip(f0, f1, strict=True)]
    return {
        "viewers": viewers.count if viewers else 0,
        "janus_viewers": c1["janus_viewers"],
        "relay_cores": round((c1["cpu"] - c0["cpu"]) / elapsed, 3),
        "relay_loop_cores": round((c1["loop_cpu"] - c0["loop_cpu"]) / elapsed, 3),
        "janus_cores": round(janus_cores, 3),
        "viewer_processes_cores": round(viewer_cores, 3),  # the client side, on the same box
        "server_fps_encoded": round((c1["encoded_frames"] - c0["encoded_frames"]) / elapsed, 1),
        "fps_median": round(statistics.median(fps), 1) if fps else None,
        "fps_min": round(min(fps), 1) if fps else None,
        "latency_ms_p50": _pct(lat, 50),
        "latency_ms_p95": _pct(lat, 95),
        "relay_rss_mb": round(c1["rss_mb"], 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


async def main_janus(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    from tests.helpers import janus as janus_helper

    reason = janus_helper.missing_reason()
    if reason is not None:
        raise SystemExit(f"--engine janus: {reason}")
    steps = [int(x) for x in args.steps.split(",") if x] or [args.viewers]
    janus = janus_helper.start(Path(tempfile.mkdtemp(prefix="bench-janus-")), rtp_range="30000-39999")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    ready, pub_ready = ctx.Event(), ctx.Event()
    overrides = {
        "janus_url": janus.url,
        "janus_api_secret": janus.api_secret,
        "janus_viewer_threshold": 0,
        "janus_max_viewers_per_stream": max(steps) + 10,
    }
    proc = ctx.Process(target=relay_main, args=(port, ready, args.size, overrides), daemon=True)
    proc.start()
    base = f"http://127.0.0.1:{port}"
    viewers: Viewers | None = None
    phases: list[dict[str, Any]] = []
    try:
        if not ready.wait(60):
            raise RuntimeError("server did not start")
        pub = ctx.Process(target=publisher_main, args=(base, pub_ready, args.size), daemon=True)
        pub.start()
        if not pub_ready.wait(60):
            raise RuntimeError("publisher did not start")
        async with aiohttp.ClientSession() as http:
            await asyncio.sleep(3.0)
            phases.append(await phase(http, base, None, args.seconds, janus.pid))
            logger.info("janus: %s", phases[-1])
            viewers = Viewers(ctx, base, args, janus.ice_address)
            for step in steps:
                await asyncio.to_thread(viewers.add, step - viewers.count)
                await asyncio.sleep(3.0)
                phases.append(await phase(http, base, viewers, args.seconds, janus.pid))
                logger.info("janus: %s", phases[-1])
        pub.terminate()
        pub.join(10)
    finally:
        if viewers is not None:
            viewers.stop()
        proc.terminate()
        proc.join(10)
        janus.stop()
    return {
        "engine": "janus",
        "size": f"{args.size[0]}x{args.size[1]}",
        "seconds": args.seconds,
        "light_viewers": args.light_viewers,
        "phases": phases,
        "cpu_count": os.cpu_count(),
    }
