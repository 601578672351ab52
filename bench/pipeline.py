"""Pipeline benchmark: decode → detect → mosaic → encode, the relay's per-room media path.

    .venv/bin/python bench/pipeline.py                                  # one 1280x720 30 fps stream
    .venv/bin/python bench/pipeline.py --streams 4 --width 640 --height 480 --fps 15
    .venv/bin/python bench/pipeline.py --codecs vp8,h264            # VP8 alone, then VP8 + H.264

Each stream is a real VP8 bitstream (the shipping-label photo panning slowly, pre-encoded once at
start) decoded in real time by a paced track that decodes in a thread, as aiortc's receiver does;
then the relay's own ``Pipeline`` (with the real detector, in the one detector thread the
registry shares between rooms) handing each frame to ``RoomEncoder.submit`` (one VP8 encode; the
production hand-off), drained by one viewer track. With ``--codecs vp8,h264`` the same run then
starts an H.264 ``RoomEncoder`` beside the VP8 one (fed the same frames, as relay/media.py does when a
room's first H.264 viewer joins) and measures a second window: ``phases`` holds both, each with
``per_codec`` fps, latency and encode time. ``encode_cpu_ms_per_frame`` is each codec's encode alone
(CPU time of a tight loop over the clip, measured first), the figure that other load on the box
does not inflate.

The detector is ``weights/detector.onnx`` if it exists ("shipped"), else an untrained export of
the same architecture (``training.export.export_untrained_onnx``, "untrained": same compute, no
meaningful boxes). The last line printed is one JSON object: ``fps`` (encoded frames/s, the
slowest stream), ``detect_ms_*`` (one detector run incl. the colour conversion),
``added_latency_ms_*`` (decoded frame reaches the pipeline → its packet leaves the encoder).
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
from typing import TYPE_CHECKING, Any, cast

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

if TYPE_CHECKING:
    from relay.video_codecs import VideoCodec

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
        img = np.ascontiguousarray(big[:, x : x + width], dtype=np.uint8)
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
    """The YOLO model alone, or (``settings.text_net``) the served detectors: YOLO + the safety net."""
    from relay.detector import detector_from_settings, detectors_from_settings

    if settings.text_net and Path(settings.weights).is_file():
        return detectors_from_settings(settings), "shipped+text_net"

    weights, kind = settings.weights, "shipped"
    if not Path(weights).is_file():
        from training.export import export_untrained_onnx

        weights = Path(tempfile.gettempdir()) / f"mosaic-relay-untrained-v2-{settings.input_size}.onnx"
        if not weights.is_file():
            export_untrained_onnx(weights, settings.input_size)
        kind = "untrained"
    det = detector_from_settings(settings, weights)
    return det, kind


def pct(values: list[float], p: float) -> float | None:
    return round(float(np.percentile(values, p)), 1) if values else None


def encode_cpu_ms(codec: VideoCodec, clip: list[Any], settings: Any, width: int, height: int) -> float:
    """CPU ms per frame of one codec's encode alone (this thread's CPU time, so other load on the box
    does not count): the clip decoded, then encoded by the room's codec settings, tight loop."""
    import av

    from relay.video_codecs import VIDEO_TIME_BASE, encoder_input, new_context

    decoder: Any = av.CodecContext.create("libvpx", "r")
    frames = [f for p in clip for f in decoder.decode(p)]
    ctx = new_context(codec, width, height, settings.video_bitrate, settings.max_fps)
    t0 = time.thread_time()
    for i, frame in enumerate(frames * 2):
        frame = encoder_input(codec, frame)  # (H.264: its frame copy counts)
        frame.pts, frame.time_base = i * 3000, VIDEO_TIME_BASE
        frame.pict_type = av.video.frame.PictureType.NONE
        list(ctx.encode(frame))
    return round((time.thread_time() - t0) * 1000 / (2 * len(frames)), 2)


class Stream:
    """One room: decoding track → Pipeline → every encoder in ``encoders`` (the production fan-out),
    each drained by one viewer track."""

    def __init__(self, i: int, clip: list[Any], detector: Any, settings: Any, pool: Any, fps: float) -> None:
        from relay.pipeline import Pipeline

        self.i, self.settings = i, settings
        self.track = DecodingTrack(clip, fps)
        self.encoders: dict[str, Any] = {}
        self._targets: tuple[Any, ...] = ()  # replaced, never mutated (read by the mosaic thread)
        self.drains: list[asyncio.Future[None]] = []
        self.san = Pipeline(
            self.track, detector, settings, sink=self._sink, detector_executor=pool, name=f"s{i}"
        )

    def _sink(self, frame: Any) -> None:
        for enc in self._targets:
            enc.submit(frame)

    def add_encoder(self, codec: VideoCodec) -> None:
        from aiortc.mediastreams import MediaStreamError

        from relay.fanout import RoomEncoder

        enc = RoomEncoder(self.settings, codec=codec, name=f"e{self.i}")
        viewer = enc.add_viewer()
        enc.start()
        self.encoders[codec] = enc
        self._targets = tuple(self.encoders.values())

        async def drain() -> None:
            with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
                while True:
                    await viewer.recv()

        self.drains.append(asyncio.ensure_future(drain()))

    async def stop(self) -> None:
        for d in self.drains:
            d.cancel()
        for enc in self.encoders.values():
            await enc.stop()
        await self.san.stop()
        self.track.stop()


async def measure(streams: list[Stream], seconds: float, fps_in: float) -> dict[str, Any]:
    """One measurement window over every stream: fps, latency, detect/decode/encode times."""
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    codecs = list(streams[0].encoders)
    frames0 = {(s.i, c): s.encoders[c].metrics.frames for s in streams for c in codecs}
    lat0 = {(s.i, c): len(s.encoders[c].metrics.latency_ms) for s in streams for c in codecs}
    marks = [
        (len(s.san.metrics.detect_ms), len(s.track.decode_ms), len(s.san.metrics.side_ms)) for s in streams
    ]
    m0 = [dataclasses.replace(s.san.metrics) for s in streams]
    await asyncio.sleep(seconds)
    dt = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    n = int(seconds * fps_in)
    per_codec: dict[str, Any] = {}
    for c in codecs:
        fps = [(s.encoders[c].metrics.frames - frames0[(s.i, c)]) / dt for s in streams]
        lat = [x for s in streams for x in list(s.encoders[c].metrics.latency_ms)[lat0[(s.i, c)] :]]
        enc_ms = [x for s in streams for x in list(s.encoders[c].metrics.encode_ms)[-n:]]
        per_codec[c] = {
            "fps": round(min(fps), 1),
            "fps_median": round(statistics.median(fps), 1),
            "added_latency_ms_p50": pct(lat, 50),
            "added_latency_ms_p95": pct(lat, 95),
            "encode_ms_p50": pct(enc_ms, 50),
        }
    detect = [x for s, mk in zip(streams, marks, strict=True) for x in list(s.san.metrics.detect_ms)[mk[0] :]]
    decode = [x for s, mk in zip(streams, marks, strict=True) for x in s.track.decode_ms[mk[1] :]]
    side = [x for s, mk in zip(streams, marks, strict=True) for x in list(s.san.metrics.side_ms)[mk[2] :]]
    sanitize = [x for s in streams for x in list(s.san.metrics.latency_ms)[-n:]]
    keys = (
        "frames_out",
        "full_pixelations",
        "carried_frames",
        "exact_frames",
        "dropped_stale",
        "detections",
        "side_detections",
        "side_stale_full",
        "side_waits",
        "whole_out",
    )
    counts = {
        k: sum(getattr(s.san.metrics, k) - getattr(b, k) for s, b in zip(streams, m0, strict=True))
        for k in keys
    }
    first = per_codec[codecs[0]]
    return {
        "codecs": "+".join(codecs),
        "fps": first["fps"],  # the first codec's (VP8): what the existing numbers compare with
        "fps_median": first["fps_median"],
        "detect_ms_p50": pct(detect, 50),
        "detect_ms_p95": pct(detect, 95),
        "detections_per_s": round(counts["detections"] / dt, 1),
        "net_ms_p50": pct(side, 50),  # the net on its own thread, one run (text + barcodes + regions)
        "net_ms_p95": pct(side, 95),
        "net_runs_per_s": round(counts["side_detections"] / dt, 1),
        "frames_whole_net_stale_pct": round(
            100 * counts["side_stale_full"] / max(1, counts["frames_out"]), 1
        ),
        "added_latency_ms_p50": first["added_latency_ms_p50"],
        "added_latency_ms_p95": first["added_latency_ms_p95"],
        "decode_ms_p50": pct(decode, 50),
        "sanitize_ms_p50": pct(sanitize, 50),
        "encode_ms_p50": first["encode_ms_p50"],
        "per_codec": per_codec,
        "frames_fully_pixelated_pct": round(100 * counts["whole_out"] / max(1, counts["frames_out"]), 1),
        "frames_waited_for_net_pct": round(100 * counts["side_waits"] / max(1, counts["frames_out"]), 1),
        "frames_carried_pct": round(100 * counts["carried_frames"] / max(1, counts["frames_out"]), 1),
        "dropped_stale": counts["dropped_stale"],
        "process_cores": round((ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / dt, 2),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def net_settings(args: argparse.Namespace, settings: Any) -> Any:
    """The safety net's knobs from the command line (default: as served)."""
    over: dict[str, Any] = {}
    for name in ("text_net_size", "text_net_stride", "text_net_model", "text_net_thread", "text_net_nice"):
        value = getattr(args, name)
        if value is not None:
            over[name] = value
    return dataclasses.replace(settings, **over)


def stage_cpu_ms(clip: list[Any], detector: Any, settings: Any, frames: int = 20) -> dict[str, float]:
    """CPU ms per frame of each stage alone at serving size (this thread's CPU time, tight loop over
    the clip's decoded frames; other load on the box counts less than in wall time)."""
    import av
    import cv2

    from relay.boxes import expand_boxes
    from relay.detection import DetectorSet
    from relay.frames import frame_to_i420
    from relay.mosaic import block_for_frame, pixelate_i420
    from relay.tracker import BoxTracker

    decoder: Any = av.CodecContext.create("libvpx", "r")
    decoded = [f for p in clip for f in decoder.decode(p)][:frames]
    bufs = [frame_to_i420(f) for f in decoded]
    bgrs = [cv2.cvtColor(b, cv2.COLOR_YUV2BGR_I420) for b in bufs]
    dset = DetectorSet.of(detector)
    specs = {s.name: s.detector for s in dset.specs}
    out: dict[str, float] = {}

    def timed(name: str, fn: Any, items: list[Any]) -> list[Any]:
        fn(items[0])  # warm
        t0 = time.thread_time()
        res = [fn(x) for x in items]
        out[name] = round((time.thread_time() - t0) * 1000 / len(items), 2)
        return res

    timed("i420_to_bgr", lambda b: cv2.cvtColor(b, cv2.COLOR_YUV2BGR_I420), bufs)
    boxes = timed("yolo", specs["yolo"].detect, bgrs) if "yolo" in specs else [np.zeros((0, 6))] * len(bgrs)
    net: Any = specs.get("text_net")  # relay.textnet.TextNet
    if net is not None:
        timed("net_text", net.lines, bgrs)
        timed("net_barcode", net.barcode_boxes, bgrs)
        nets = timed("net_whole", net.detect, bgrs)  # text + barcode + regions
        boxes = [np.concatenate([b, n]) for b, n in zip(boxes, nets, strict=True)]
    tracker = BoxTracker(settings.conf_threshold, settings.detector_floor, settings.track_hold_s)
    timed("tracker", lambda ib: tracker.update(ib[1], ib[0] / 30), list(enumerate(boxes)))
    h, w = bgrs[0].shape[:2]
    block = block_for_frame(settings.mosaic_block, w, h)
    grown = [expand_boxes(b, settings.carry_margin, (h, w)) if len(b) else b for b in boxes]
    timed(
        "mosaic",
        lambda bb: pixelate_i420(bb[0].copy(), w, h, bb[1], block),
        list(zip(bufs, grown, strict=True)),
    )
    timed("frame_to_i420", frame_to_i420, decoded)
    out["boxes_per_frame"] = round(float(np.mean([len(b) for b in boxes])), 1)
    return out


async def run_config(
    settings: Any, detector: Any, clip: list[Any], codecs: list[Any], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Start ``args.streams`` rooms with ``detector``, measure one window per codec step, stop them."""
    detect_pool = ThreadPoolExecutor(1, thread_name_prefix="detector")  # shared, as in RoomRegistry
    streams = [Stream(i, clip, detector, settings, detect_pool, args.fps) for i in range(args.streams)]
    for s in streams:
        s.add_encoder("vp8")
        s.san.start()
    await asyncio.sleep(args.warmup)
    phases = [await measure(streams, args.seconds, args.fps)]
    if len(codecs) > 1:  # the room's H.264 encode starts beside the running VP8 one, as on a join
        for s in streams:
            s.add_encoder("h264")
        await asyncio.sleep(args.warmup)
        phases.append(await measure(streams, args.seconds, args.fps))
    for s in streams:
        await s.stop()
    detect_pool.shutdown(wait=False)
    return phases


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from relay.settings import Settings

    names = [c.strip() for c in args.codecs.split(",") if c.strip()]
    if names not in (["vp8"], ["vp8", "h264"]):
        raise SystemExit("--codecs: vp8 or vp8,h264")
    codecs = [cast("VideoCodec", c) for c in names]
    settings = dataclasses.replace(Settings(), max_fps=args.fps, text_net=args.text_net)
    if args.lookahead_s is not None:
        settings = dataclasses.replace(settings, lookahead_s=args.lookahead_s)
    settings = net_settings(args, settings)
    detector, kind = load_detector(settings)
    clip = await asyncio.to_thread(make_clip, args.width, args.height, 60, args.bitrate)
    cpu = {
        c: await asyncio.to_thread(encode_cpu_ms, c, clip, settings, args.width, args.height) for c in codecs
    }
    head: dict[str, Any] = {
        "streams": args.streams,
        "width": args.width,
        "height": args.height,
        "input_fps": args.fps,
        "detector": kind,
        "input_size": settings.input_size,
        "lookahead_s": settings.lookahead_s,
        "encode_cpu_ms_per_frame": cpu,  # each codec alone, CPU time (steadier than wall time under load)
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    if settings.text_net:
        head["text_net"] = {
            k: getattr(settings, k)
            for k in (
                "text_net_model",
                "text_net_size",
                "text_net_stride",
                "text_net_thread",
                "text_net_threads",
            )
        }
    if args.stages:
        head["stage_cpu_ms_per_frame"] = await asyncio.to_thread(stage_cpu_ms, clip, detector, settings)
    baseline: list[dict[str, Any]] = []
    if settings.text_net and not args.no_baseline:  # YOLO alone first, in the same run
        yolo = [s.detector for s in detector.specs if s.name == "yolo"]
        baseline = await run_config(dataclasses.replace(settings, text_net=False), yolo, clip, codecs, args)
    phases = await run_config(settings, detector, clip, codecs, args)
    if baseline:
        b, p = baseline[0], phases[0]
        head["baseline_yolo_alone"] = b if len(baseline) == 1 else {"phases": baseline}
        head["vs_baseline"] = {
            "fps_ratio": round(p["fps"] / max(b["fps"], 1e-9), 3),
            "added_latency_p95_over_baseline_ms": round(
                (p["added_latency_ms_p95"] or 0) - (b["added_latency_ms_p95"] or 0), 1
            ),
        }
    if len(phases) == 1:
        return head | phases[0]
    return head | {"phases": phases}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--bitrate", type=int, default=2_500_000, help="of the pre-encoded input clip")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument(
        "--lookahead-s", type=float, default=None, help="override the relay's lookahead (0 = off)"
    )
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument(
        "--text-net",
        action="store_true",
        help="serve what run_server serves: the YOLO model and the text/barcode safety net (default: YOLO alone)",
    )
    ap.add_argument(
        "--codecs",
        default="vp8",
        help="vp8, or vp8,h264: measure VP8 alone, then start an H.264 encode beside it and measure again",
    )
    ap.add_argument("--text-net-size", type=int, default=None, help="override the net's input size")
    ap.add_argument("--text-net-stride", type=int, default=None, help="override the net's stride")
    ap.add_argument("--text-net-model", default=None, help="ppocrv5, ppocrv6-tiny or ppocrv6-small")
    ap.add_argument(
        "--text-net-thread",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the net on its own thread (default: as served) or inside the detection step",
    )
    ap.add_argument("--text-net-nice", type=int, default=None, help="override the net thread's nice")
    ap.add_argument("--no-baseline", action="store_true", help="with --text-net: skip the YOLO-alone run")
    ap.add_argument("--stages", action="store_true", help="also time each stage alone (CPU ms per frame)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
