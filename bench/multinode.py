"""Two nodes over Redis (issue #15 item 3): what a viewer costs on the node that only relays.

    .venv/bin/python bench/multinode.py --viewers 20 --seconds 15 [--size 1280x720]

Starts a loopback ``redis-server`` and two real ``run_server.py`` nodes (tests/helpers/cluster.py:
the shipped detector, ``--no-text-net``): A on 127.0.0.1, B on 127.0.0.2. A publisher process
sends the stamped test picture (bench/fanout.py's ``make_stamped_track``, 30 fps) to A over
socket.io. Phases, each ``--seconds`` after a 3 s warm-up, CPU of each node process from
``/proc/<pid>/stat`` (all threads):

1. no viewer;
2. ``--viewers`` on **B** (WHEP, in processes of 5: bench/fanout.py's light viewers, which count
   complete frames from the RTP headers; one probe decodes and measures publisher-to-viewer latency):
   A sends one RTP forward to B, B fans out;
3. the same viewers on **A** (local viewers, no forward), for comparison.

Prints one JSON object last: cores of A and B per phase, cores per viewer on B (relay only) and on
A (local), A's cost of the forward, viewer fps (min/median) and latency p50/p95.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.fanout import BenchViewer, ViewerProcs, make_stamped_track  # noqa: E402
from tests.helpers.cluster import REDIS, Node, RedisServer  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime, all threads


class WhepViewer(BenchViewer):
    async def connect(self, http: Any, base: str, stream_id: str) -> None:
        from aiortc import RTCSessionDescription

        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Content-Type": "application/sdp"}
        async with http.post(
            f"{base}/whep/{stream_id}", data=self.pc.localDescription.sdp, headers=headers
        ) as r:
            assert r.status == 201, (r.status, await r.text())
            self.location = base + r.headers["Location"]
            sdp = await r.text()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))


def viewers_main(base: str, stream_id: str, count: int, probes: int, conn: Any) -> None:
    logging.basicConfig(level=logging.WARNING)
    from tests.helpers.media import use_loopback_ice

    with use_loopback_ice():
        asyncio.run(_viewers(base, stream_id, count, probes, conn))


async def _viewers(base: str, stream_id: str, count: int, probes: int, conn: Any) -> None:
    import aiohttp

    loop = asyncio.get_running_loop()
    viewers: list[WhepViewer] = []
    async with aiohttp.ClientSession() as http:
        for i in range(count):
            v = WhepViewer(probe=i < probes, light=True)
            await v.connect(http, base, stream_id)
            viewers.append(v)
        conn.send("ready")
        try:
            while await loop.run_in_executor(None, conn.recv) == "snap":
                lat = [x for v in viewers for x in v.latencies]
                for v in viewers:
                    v.latencies.clear()
                conn.send({"frames": [v.frames for v in viewers], "latency": lat})
        finally:
            for v in viewers:
                with contextlib.suppress(Exception):
                    await http.delete(v.location)
                await v.close()


class Viewers(ViewerProcs):
    """``n`` WHEP viewers, ``per_process`` to a process (bench/fanout.py's ViewerProcs)."""

    def __init__(self, base: str, stream_id: str, n: int, per_process: int = 5) -> None:
        super().__init__()
        ctx = mp.get_context("spawn")
        for first in range(0, n, per_process):
            group = (base, stream_id, min(per_process, n - first), 1 if first == 0 else 0)
            self.spawn(ctx, viewers_main, group)

    def stop(self, join_s: float = 15) -> None:
        super().stop(join_s)


def publisher_main(url: str, size: tuple[int, int], conn: Any) -> None:
    logging.basicConfig(level=logging.WARNING)
    from tests.helpers.media import use_loopback_ice

    with use_loopback_ice():
        asyncio.run(_publish(url, size, conn))


async def _publish(url: str, size: tuple[int, int], conn: Any) -> None:
    import socketio
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from tests.helpers.media import NO_ICE_SERVERS

    sock = socketio.AsyncClient(reconnection=False)
    await sock.connect(url, namespaces=["/publisher"], transports=["websocket"])
    created = await sock.call(
        "create_stream", {"title": "bench", "category": "bench"}, namespace="/publisher"
    )
    pc = RTCPeerConnection(NO_ICE_SERVERS)
    pc.addTrack(make_stamped_track(size))
    await pc.setLocalDescription(await pc.createOffer())
    body = {"stream_id": created["stream_id"], "publish_key": created["publish_key"], "type": "offer"}
    ack = await sock.call("publish", body | {"sdp": pc.localDescription.sdp}, namespace="/publisher")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=ack["sdp"], type=ack["type"]))
    conn.send(created["stream_id"])
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, conn.recv)
    finally:
        await pc.close()
        await sock.disconnect()


async def phase(nodes: list[Node], viewers: Viewers | None, seconds: float) -> dict[str, Any]:
    await asyncio.sleep(3.0)
    c0, t0 = [cpu_s(n.proc.pid) for n in nodes], time.monotonic()
    f0, _ = await asyncio.to_thread(viewers.snap) if viewers else ([], [])
    await asyncio.sleep(seconds)
    c1, t1 = [cpu_s(n.proc.pid) for n in nodes], time.monotonic()
    f1, lat = await asyncio.to_thread(viewers.snap) if viewers else ([], [])
    fps = [(b - a) / (t1 - t0) for a, b in zip(f0, f1, strict=True)]
    lat.sort()
    return {
        "cores": {n.name: round((b - a) / (t1 - t0), 3) for n, a, b in zip(nodes, c0, c1, strict=True)},
        "fps_min": round(min(fps), 1) if fps else None,
        "fps_median": round(statistics.median(fps), 1) if fps else None,
        "latency_ms_p50": round(lat[len(lat) // 2]) if lat else None,
        "latency_ms_p95": round(lat[int(len(lat) * 0.95)]) if lat else None,
        "loadavg_1m": os.getloadavg()[0],  # the box is shared: read every figure with this
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="bench-multinode-"))
    redis = RedisServer(folder)
    redis.start()
    extra = (
        "--max-viewers-per-stream",
        str(max(50, args.viewers + 5)),
        "--no-text-net",
        *args.node_args.split(),
    )
    a = Node("A", "127.0.0.1", redis.url, folder, extra=extra)
    b = Node("B", "127.0.0.2", redis.url, folder, extra=extra)
    ctx = mp.get_context("spawn")
    pub_conn, child = ctx.Pipe()
    publisher = None
    out: dict[str, Any] = {
        "viewers": args.viewers,
        "size": "x".join(map(str, args.size)),
        "node_args": args.node_args,
        "logs": str(folder),
    }
    try:
        await asyncio.gather(a.ready(120), b.ready(120))
        publisher = ctx.Process(target=publisher_main, args=(a.url, args.size, child), daemon=True)
        publisher.start()
        stream_id = await asyncio.to_thread(pub_conn.recv)
        out["idle"] = await phase([a, b], None, args.seconds)
        for name, node in (("on_b", b), ("on_a", a)):
            viewers = Viewers(node.url, stream_id, args.viewers)
            try:
                await asyncio.to_thread(viewers.wait_ready, 60)
                out[name] = await phase([a, b], viewers, args.seconds)
            finally:
                await asyncio.to_thread(viewers.stop)
    finally:
        if publisher is not None:
            with contextlib.suppress(Exception):
                pub_conn.send("stop")
            publisher.join(10)
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))
        redis.stop()
    n, idle = args.viewers, out["idle"]["cores"]
    out["b_cores_per_viewer"] = round((out["on_b"]["cores"]["B"] - idle["B"]) / n, 4)
    out["a_cores_per_local_viewer"] = round((out["on_a"]["cores"]["A"] - idle["A"]) / n, 4)
    out["a_cores_for_the_forward"] = round(out["on_b"]["cores"]["A"] - idle["A"], 4)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--viewers", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--size", type=lambda t: tuple(int(x) for x in t.split("x")), default=(640, 480))
    ap.add_argument(
        "--node-args",
        default="",
        help='more run_server.py flags for both nodes, e.g. "--fast-send off" (aiortc\'s sender per viewer)',
    )
    args = ap.parse_args(argv)
    if not REDIS.is_file():
        print(f"{REDIS} is missing (apt-get install redis-server)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(run(args))
    for key in ("idle", "on_b", "on_a"):
        print(key, result[key])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
