"""Restream benchmark: CPU of one RTMP restream (copy + H.264/AAC encode + FLV + RTMP send) per frame,
and the time from ``start()`` to the first video sent, into ``ffmpeg -listen 1`` on 127.0.0.1.

    .venv/bin/python bench/restream.py --seconds 10

For each size (640x480 at 15 fps, 1280x720 at 30 fps) the shared parcel-label clip (resized) is fed
to a :class:`relay.restream.Restream` in real time as pre-built yuv420p frames, as the sanitizer
hands them over. CPU = this process's user+system time over the measured window (the receiver is
another process), minus the same feed with no restream, per frame sent. ``encode_ms`` is the
restream thread's wall time per frame (copy + encode + mux), p50/p95. The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from relay.restream import Restream, RestreamOptions  # noqa: E402

CLIP = Path("/work/shared/media/clips/parcel_labels")


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clip_frames(width: int, height: int) -> list[av.VideoFrame]:
    spec = importlib.util.spec_from_file_location("render", CLIP / "render.py")
    assert spec is not None and spec.loader is not None
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    meta, _ = render.load_meta()
    out = []
    for _, bgr in render.render_frames(meta):
        img = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
        out.append(av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p"))
    return out


def receiver(port: int) -> subprocess.Popen[bytes]:
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-listen", "1"]
    return subprocess.Popen(
        [*cmd, "-i", f"rtmp://127.0.0.1:{port}/app/bench", "-c", "copy", "-f", "null", "-"]
    )


async def feed(restream: Restream | None, frames: list[av.VideoFrame], fps: float, seconds: float) -> int:
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(max(0.0, t0 + n / fps - time.monotonic()))
        frame = frames[n % len(frames)]
        frame.opaque = time.monotonic()
        if restream is not None:
            restream.submit_video(frame)
        n += 1
    return n


async def run(width: int, height: int, fps: float, seconds: float) -> dict[str, Any]:
    frames = clip_frames(width, height)
    c0 = cpu_s()
    await feed(None, frames, fps, seconds / 2)
    idle_per_s = (cpu_s() - c0) / (seconds / 2)

    port = free_port()
    rx = receiver(port)
    try:
        await asyncio.sleep(1.0)
        restream = Restream(f"rtmp://127.0.0.1:{port}/app/bench", RestreamOptions(allow_private=True))
        restream.start()
        await feed(restream, frames, fps, 1.0)  # warm-up (connect, first keyframe)
        sent0, c0, t0 = restream.metrics.frames_sent, cpu_s(), time.monotonic()
        await feed(restream, frames, fps, seconds)
        cpu = cpu_s() - c0 - idle_per_s * (time.monotonic() - t0)
        sent = restream.metrics.frames_sent - sent0
        m = restream.metrics
        await restream.stop()
    finally:
        rx.kill()
        rx.wait(5)
    enc = sorted(m.encode_ms)
    return {
        "size": f"{width}x{height}",
        "fps": fps,
        "frames_sent": sent,
        "frames_dropped": m.frames_dropped,
        "sent_fps": round(sent / seconds, 1),
        "cpu_ms_per_frame": round(cpu * 1000 / max(sent, 1), 2),
        "cores": round(cpu / seconds, 3),
        "encode_ms_p50": round(statistics.median(enc), 2),
        "encode_ms_p95": round(enc[int(0.95 * (len(enc) - 1))], 2),
        "first_output_s": round(m.first_output_s or -1.0, 3),
        "kbit_s": round(m.bytes_sent * 8 / 1000 / (seconds + 1.0), 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    results = []
    for width, height, fps in ((640, 480, 15.0), (1280, 720, 30.0)):
        r = asyncio.run(run(width, height, fps, args.seconds))
        print(r, flush=True)
        results.append(r)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
