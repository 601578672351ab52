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
import contextlib
import logging
import multiprocessing as mp
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.fanout import _pct, _viewer_group, measure_phase, publisher_main, server_main

logger = logging.getLogger("bench.fanout_janus")


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


class Viewers:
    """Viewer processes added in batches; ``snap()`` over all of them (as bench/fanout.py's)."""

    def __init__(self, ctx: Any, base: str, args: argparse.Namespace, address: str) -> None:
        self.ctx, self.base, self.args, self.address = ctx, base, args, address
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        self.count = 0

    def add(self, n: int) -> None:
        new = []
        while n > 0:
            count = min(self.args.viewers_per_process, n)
            parent, child = self.ctx.Pipe()
            probes = max(0, min(self.args.probes - self.count, count))
            p = self.ctx.Process(
                target=viewer_main,
                args=(self.base, self.count, count, probes, child, self.args.light_viewers, self.address),
                daemon=True,
            )
            p.start()
            self.procs.append(p)
            self.conns.append(parent)
            new.append(parent)
            self.count += count
            n -= count
        for c in new:
            if not c.poll(180) or c.recv() != "ready":
                raise RuntimeError("viewers did not connect")

    def snap(self) -> tuple[list[int], list[float]]:
        for c in self.conns:
            c.send("snap")
        frames: list[int] = []
        lat: list[float] = []
        for c in self.conns:
            r = c.recv()
            frames += r["frames"]
            lat += r["latency"]
        return frames, lat

    def stop(self) -> None:
        for c in self.conns:
            with contextlib.suppress(Exception):
                c.send("stop")
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()


def viewers_cpu_s(viewers: Viewers | None) -> float:
    """CPU seconds of the viewer processes (the client side runs on the same box)."""
    return sum(cpu_s(p.pid) for p in viewers.procs) if viewers else 0.0


async def phase(
    http: Any, base: str, viewers: Viewers | None, seconds: float, janus_pid: int
) -> dict[str, Any]:
    j0, v0, t0 = cpu_s(janus_pid), viewers_cpu_s(viewers), time.monotonic()
    m = await measure_phase(http, base, viewers, seconds)
    elapsed = time.monotonic() - t0
    janus_cores = (cpu_s(janus_pid) - j0) / elapsed
    viewer_cores = (viewers_cpu_s(viewers) - v0) / elapsed
    fps, lat = m["fps"], m["latency"]
    return {
        "viewers": viewers.count if viewers else 0,
        "relay_cores": round(m["cores"], 3),
        "relay_loop_cores": round(m["loop_cores"], 3),
        "janus_cores": round(janus_cores, 3),
        "viewer_processes_cores": round(viewer_cores, 3),  # the client side, on the same box
        "server_fps_encoded": m["server_fps_encoded"],
        "fps_median": round(statistics.median(fps), 1) if fps else None,
        "fps_min": round(min(fps), 1) if fps else None,
        "latency_ms_p50": _pct(lat, 50),
        "latency_ms_p95": _pct(lat, 95),
        "relay_rss_mb": round(m["server"]["rss_mb"], 1),
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
    mode = "fanout" if args.send_path != "aiortc" else "fanout-aiortc"
    proc = ctx.Process(
        target=server_main, args=(mode, port, ready, args.size, args.syscall, overrides), daemon=True
    )
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
