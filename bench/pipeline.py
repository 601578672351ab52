"""Pipeline benchmark: decode → detect → mosaic → encode, the relay's per-room media path.

    .venv/bin/python bench/pipeline.py                                  # one 1280x720 30 fps stream
    .venv/bin/python bench/pipeline.py --streams 4 --width 640 --height 480 --fps 15

Each stream is a real VP8 bitstream (the shipping-label photo panning slowly, pre-encoded once at
start) decoded in real time by a paced track that decodes in a thread, as aiortc's receiver does;
then the relay's own ``Sanitizer`` (with the real detector, in the one detector thread the
registry shares between rooms) and ``RoomEncoder`` (one VP8 encode), drained by one viewer track.

The detector is ``weights/detector.onnx`` if it exists ("shipped"), else an untrained export of
the same architecture (``training.export.export_untrained_onnx``, "untrained": same compute, no
meaningful boxes). The last line printed is one JSON object: ``fps`` (encoded frames/s, the
slowest stream), ``detect_ms_*`` (one detector run incl. the colour conversion),
``added_latency_ms_*`` (decoded frame reaches the sanitizer → its packet leaves the encoder).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import fractions
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

logger = logging.getLogger("bench.pipeline")
TB = fractions.Fraction(1, 90000)


def make_clip(width: int, height: int, frames: int, bitrate: int) -> list[Any]:
    """VP8 packets of the label scene panning a few pixels per frame (first packet a keyframe)."""
    import av
    import cv2

    from tests.helpers.media import label_scene

    big, _ = label_scene(width + 2 * frames, height)
    big = cv2.resize(big, (width + 2 * frames, height))
    codec: Any = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.bit_rate = bitrate
    codec.time_base = TB
    codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    packets: list[Any] = []
    for i in range(frames):
        x = i if i < frames // 2 else frames - i
        img = np.ascontiguousarray(big[:, x : x + width])
        frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
        frame.pts, frame.time_base = i * 3000, TB
        if i == 0:
            frame.pict_type = av.video.frame.PictureType.I
        packets.extend(codec.encode(frame))
    packets.extend(codec.encode(None))
    return packets


class DecodingTrack:
    """A paced video track that decodes the clip's VP8 packets in its own thread (loops forever)."""

    def __new__(cls, packets: list[Any], fps: float) -> Any:
        import av
        from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

        class _Track(MediaStreamTrack):
            kind = "video"

            def __init__(self) -> None:
                super().__init__()
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="decode")
                self._codec: Any = None
                self.n = 0
                self._start: float | None = None
                self.decode_ms: list[float] = []

            def _decode(self, i: int) -> Any:
                t0 = time.perf_counter()
                if i % len(packets) == 0:
                    self._codec = av.CodecContext.create("libvpx", "r")
                frames = self._codec.decode(packets[i % len(packets)])
                self.decode_ms.append((time.perf_counter() - t0) * 1000)
                return frames[0] if frames else None

            async def recv(self) -> Any:
                if self.readyState != "live":
                    raise MediaStreamError
                loop = asyncio.get_running_loop()
                while True:
                    if self._start is None:
                        self._start = time.monotonic()
                    wait = self._start + self.n / fps - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    frame = await loop.run_in_executor(self._executor, self._decode, self.n)
                    self.n += 1
                    if frame is not None:
                        frame.pts, frame.time_base = int(self.n * 90000 / fps), TB
                        return frame

            def stop(self) -> None:
                super().stop()
                self._executor.shutdown(wait=False)

        return _Track()


def load_detector(settings: Any) -> tuple[Any, str]:
    from relay.detector import detector_from_settings

    weights, kind = settings.weights, "shipped"
    if not Path(weights).is_file():
        from training.export import export_untrained_onnx

        weights = Path(tempfile.gettempdir()) / f"mosaic-relay-untrained-{settings.input_size}.onnx"
        if not weights.is_file():
            export_untrained_onnx(weights, settings.input_size)
        kind = "untrained"
    det = detector_from_settings(settings, weights)
    return det, kind


def pct(values: list[float], p: float) -> float | None:
    return round(float(np.percentile(values, p)), 1) if values else None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from aiortc.mediastreams import MediaStreamError

    from relay.fanout import RoomEncoder
    from relay.sanitizer import Sanitizer
    from relay.settings import Settings

    settings = dataclasses.replace(Settings(), max_fps=args.fps)
    if args.lookahead_s is not None:
        settings = dataclasses.replace(settings, lookahead_s=args.lookahead_s)
    detector, kind = load_detector(settings)
    clip = await asyncio.to_thread(make_clip, args.width, args.height, 60, args.bitrate)
    detect_pool = ThreadPoolExecutor(1, thread_name_prefix="detector")  # shared, as in RoomRegistry
    parts = []
    drains = []
    for i in range(args.streams):
        track = DecodingTrack(clip, args.fps)
        san = Sanitizer(track, detector, settings, detector_executor=detect_pool, name=f"s{i}")
        enc = RoomEncoder(san, settings, name=f"e{i}")
        viewer = enc.add_viewer()
        san.start()
        enc.start()

        async def drain(v: Any = viewer) -> None:
            with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
                while True:
                    await v.recv()

        drains.append(asyncio.ensure_future(drain()))
        parts.append((track, san, enc))
    await asyncio.sleep(args.warmup)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    frames0 = [enc.metrics.frames for _, _, enc in parts]
    marks = [
        (len(san.metrics.detect_ms), len(enc.metrics.latency_ms), len(tr.decode_ms)) for tr, san, enc in parts
    ]
    m0 = [dataclasses.replace(san.metrics) for _, san, _ in parts]
    await asyncio.sleep(args.seconds)
    dt = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    fps = [(enc.metrics.frames - f) / dt for (_, _, enc), f in zip(parts, frames0, strict=True)]
    detect = [
        x for (_, san, _), mk in zip(parts, marks, strict=True) for x in list(san.metrics.detect_ms)[mk[0] :]
    ]
    latency = [
        x for (_, _, enc), mk in zip(parts, marks, strict=True) for x in list(enc.metrics.latency_ms)[mk[1] :]
    ]
    decode = [x for (tr, _, _), mk in zip(parts, marks, strict=True) for x in tr.decode_ms[mk[2] :]]
    encode = [x for _, _, enc in parts for x in list(enc.metrics.encode_ms)[-int(args.seconds * args.fps) :]]
    sanitize = [
        x for _, san, _ in parts for x in list(san.metrics.latency_ms)[-int(args.seconds * args.fps) :]
    ]
    counts: dict[str, int] = {}
    for (_, san, _), before in zip(parts, m0, strict=True):
        for k in (
            "frames_out",
            "full_pixelations",
            "carried_frames",
            "exact_frames",
            "dropped_stale",
            "detections",
        ):
            counts[k] = counts.get(k, 0) + getattr(san.metrics, k) - getattr(before, k)
    for d in drains:
        d.cancel()
    for tr, san, enc in parts:
        await enc.stop()
        await san.stop()
        tr.stop()
    detect_pool.shutdown(wait=False)
    return {
        "streams": args.streams,
        "width": args.width,
        "height": args.height,
        "input_fps": args.fps,
        "detector": kind,
        "input_size": settings.input_size,
        "lookahead_s": settings.lookahead_s,
        "fps": round(min(fps), 1),
        "fps_median": round(statistics.median(fps), 1),
        "detect_ms_p50": pct(detect, 50),
        "detect_ms_p95": pct(detect, 95),
        "detections_per_s": round(counts["detections"] / dt, 1),
        "added_latency_ms_p50": pct(latency, 50),
        "added_latency_ms_p95": pct(latency, 95),
        "decode_ms_p50": pct(decode, 50),
        "sanitize_ms_p50": pct(sanitize, 50),
        "encode_ms_p50": pct(encode, 50),
        "frames_fully_pixelated_pct": round(
            100 * counts["full_pixelations"] / max(1, counts["frames_out"]), 1
        ),
        "frames_carried_pct": round(100 * counts["carried_frames"] / max(1, counts["frames_out"]), 1),
        "dropped_stale": counts["dropped_stale"],
        "process_cores": round((ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / dt, 2),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--bitrate", type=int, default=2_500_000, help="of the pre-encoded input clip")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--lookahead-s", type=float, default=None, help="override the relay's lookahead (0 = off)")
    ap.add_argument("--warmup", type=float, default=3.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
