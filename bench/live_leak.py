"""Leak rate through the live server: a shared clip published over WebRTC, judged as a viewer gets it.

    .venv/bin/python bench/live_leak.py [--clip parcel_labels|id_cards ...] [--fps 15] [--loops 1]
        [--text-net/--no-text-net] [--control-raw]

For every clip (``../shared/media/clips/<name>``, rebuilt by its own ``render.py`` into a temp dir as
y4m, 640x480, 15 fps, ground truth for every frame in ``gt.json``):

1. the real relay runs in this process: ``signaling.app.create_app`` with the detectors
   ``run_server.py`` serves (``relay.detector.detectors_from_settings`` after the model contract from
   the ONNX metadata: the shipped YOLO model plus the text/barcode safety net, or ``--no-text-net``),
   on 127.0.0.1 with loopback ICE;
2. an aiortc publisher (socket.io ``create_stream`` + ``publish``) sends the clip in real time at
   ``--fps``, ``--loops`` times; an aiortc viewer (socket.io ``view``), connected before the first frame
   is sent, decodes every frame it receives;
3. each source frame is sent 16 px taller (640x496): the bottom strip carries the send index as 16x16
   black/white cells (16 index bits, then their 16 complements), on the relay's 16 px mosaic grid, so
   it reads back exactly even from a whole-frame mosaic; a frame whose strip does not read back (the
   complement check fails) is counted ``unreadable`` and not judged. The strip is cropped before
   judging. The detectors see the taller frame: boxes they return that reach into the strip are counted
   (``strip_detections``);
4. every received frame is judged against its source frame by ``../shared/tools/leakrate.py``
   (``Judge(clip_dir).judge(bgr, index)``: a box leaks when > 15 % of its 3x3 interior cells keep the
   original's high-pass detail). Frames received before the first detection (whole frame pixelated)
   count like any other.

``--control-raw`` runs each clip once more with the stream's mosaic switched off (``set_mosaic``
false): the same path must then report a leak rate near 1.0, proving the judge sees what a viewer sees.
Prints one line per run and, last, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import faulthandler
import fractions
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack  # noqa: E402
from av import VideoFrame  # noqa: E402

CLIPS = REPO.parent / "shared" / "media" / "clips"
TOOLS = REPO.parent / "shared" / "tools"
CLIP_NAMES = ("parcel_labels", "id_cards")
STRIP = 16  # px added at the bottom of every frame: one row of the relay's 16 px mosaic grid
BITS = 16  # index bits; the next BITS cells hold their complements
TAIL = (1 << BITS) - 1  # index of the tail frames (sent after the clip so the last frames get out)
TAIL_S = 1.5  # seconds of tail frames
PUB, VIEW = "/publisher", "/viewer"
VIDEO_CLOCK = 90000


# --- the clip and its stamp ------------------------------------------------------------------------


def render_clip(clip_dir: Path, out_dir: Path) -> Path:
    """Rebuild the clip with its own ``render.py``; the y4m it wrote."""
    subprocess.run(
        [sys.executable, str(clip_dir / "render.py"), str(out_dir)], check=True, capture_output=True
    )
    found = sorted(out_dir.glob(f"{clip_dir.name}*.y4m"))
    if not found:
        raise FileNotFoundError(f"render.py wrote no y4m for {clip_dir.name} in {out_dir}")
    return found[0]


def read_y4m(path: Path) -> tuple[int, int, list[np.ndarray]]:
    """(width, height, frames): each frame a planar yuv420p array, shape (height * 3 // 2, width)."""
    data = path.read_bytes()
    header, _, rest = data.partition(b"\n")
    fields = {f[:1]: f[1:] for f in header.split()[1:]}
    w, h = int(fields[b"W"]), int(fields[b"H"])
    size = w * h * 3 // 2
    frames, pos = [], 0
    while pos < len(rest):
        nl = rest.index(b"\n", pos)
        if not rest[pos:nl].startswith(b"FRAME"):
            raise ValueError(f"{path}: bad frame header at byte {pos}")
        buf = np.frombuffer(rest, np.uint8, size, nl + 1)
        frames.append(buf.reshape(h * 3 // 2, w))
        pos = nl + 1 + size
    return w, h, frames


def stamp_bits(index: int) -> list[int]:
    bits = [(index >> b) & 1 for b in range(BITS)]
    return bits + [1 - b for b in bits]


def stamp(i420: np.ndarray, width: int, height: int, index: int) -> np.ndarray:
    """The frame ``STRIP`` px taller, the strip carrying ``index`` (yuv420p array in and out)."""
    y = i420[:height]
    u = i420[height:].reshape(-1)[: width * height // 4].reshape(height // 2, width // 2)
    v = i420[height:].reshape(-1)[width * height // 4 :].reshape(height // 2, width // 2)
    strip = np.full((STRIP, width), 128, np.uint8)
    for k, bit in enumerate(stamp_bits(index)):
        strip[:, k * STRIP : (k + 1) * STRIP] = 235 if bit else 16
    chroma = np.full((STRIP // 2, width // 2), 128, np.uint8)
    planes = [np.vstack([y, strip]), np.vstack([u, chroma]), np.vstack([v, chroma])]
    return np.concatenate([p.reshape(-1) for p in planes]).reshape((height + STRIP) * 3 // 2, width)


def read_stamp(gray: np.ndarray) -> int | None:
    """The index in the strip of a received frame's luma (``None``: unreadable)."""
    rows = gray[-STRIP + 4 : -4]
    means = [float(rows[:, k * STRIP + 4 : (k + 1) * STRIP - 4].mean()) for k in range(2 * BITS)]
    if any(70.0 < m < 180.0 for m in means):
        return None
    bits = [int(m >= 125.0) for m in means]
    if any(a == b for a, b in zip(bits[:BITS], bits[BITS:], strict=True)):
        return None
    return sum(b << k for k, b in enumerate(bits[:BITS]))


class ClipTrack(MediaStreamTrack):
    """The clip's first ``total`` frames (looping) at ``fps`` in real time, each stamped with its send
    index, then ``TAIL_S`` of tail frames; waits for ``start`` before the first frame, and after the tail
    for ever (the caller closes the peer)."""

    kind = "video"

    def __init__(self, clip: Clip, fps: float, total: int) -> None:
        super().__init__()
        if total >= TAIL:
            raise ValueError(f"at most {TAIL - 1} frames per run")
        self.clip, self.fps, self.total = clip, fps, total
        self.n_tail = max(1, round(TAIL_S * fps))
        self.start = asyncio.Event()
        self.done = asyncio.Event()
        self.sent = 0
        self._t0 = 0.0

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.sent == 0:
            await self.start.wait()
            self._t0 = time.monotonic()
        if self.sent >= self.total + self.n_tail:
            self.done.set()
            await asyncio.Event().wait()  # cancelled when the peer closes
        wait = self._t0 + self.sent / self.fps - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        c = self.clip
        buf = (
            stamp(c.frames[self.sent % len(c.frames)], c.width, c.height, self.sent)
            if self.sent < self.total
            else c.tail
        )
        frame = VideoFrame.from_ndarray(buf, format="yuv420p")
        frame.pts = round(self.sent * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.sent += 1
        return frame


# --- the viewer's side: read the stamp, judge ------------------------------------------------------


@dataclasses.dataclass
class Tally:
    """What one viewer got, judged frame by frame (filled from the viewer's check thread)."""

    judge: Any
    n_src: int
    height: int
    received: int = 0
    judged: int = 0
    unreadable: int = 0
    tail: int = 0
    duplicates: int = 0
    lossy: int = 0
    boxes: int = 0
    leaked: int = 0
    leaks: list[tuple[int, int, list[int]]] = dataclasses.field(default_factory=list)
    seen: set[int] = dataclasses.field(default_factory=set)
    errors: list[str] = dataclasses.field(default_factory=list)
    save_dir: Path | None = None

    def check(self, frame: VideoFrame, lossy: bool) -> None:
        try:
            self._check(frame, lossy)
        except Exception as exc:  # a bug here must show in the result, not stop the viewer's checks
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _check(self, frame: VideoFrame, lossy: bool) -> None:
        import cv2

        self.received += 1
        bgr: Any = frame.to_ndarray(format="bgr24")
        full = self.height + STRIP
        if bgr.shape[0] != full:
            bgr = cv2.resize(bgr, (bgr.shape[1] * full // bgr.shape[0], full), interpolation=cv2.INTER_AREA)
        index = read_stamp(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        if index is None:
            self.unreadable += 1
            return
        if index == TAIL:
            self.tail += 1
            return
        if index in self.seen:
            self.duplicates += 1
        self.seen.add(index)
        self.judged += 1
        self.lossy += lossy
        src = index % self.n_src
        for box in self.judge.judge(np.ascontiguousarray(bgr[: self.height]), src):
            self.boxes += 1
            if box["leaked"]:
                self.leaked += 1
                self.leaks.append((index, src, box["box"]))
                if self.save_dir is not None:
                    self._save(bgr, index, src, box)

    def _save(self, bgr: np.ndarray, index: int, src: int, box: dict[str, Any]) -> None:
        """The received frame (strip included) beside the source frame, the ground-truth box drawn."""
        import cv2

        assert self.save_dir is not None
        got = bgr[: self.height].copy()
        ref = self.judge.frames[src].copy()
        x1, y1, x2, y2 = box["box"]
        for img in (got, ref):
            cv2.rectangle(img, (x1, y1), (x2, y2), (0, 0, 255), 1)
        clip = Path(self.judge.meta.get("name", "clip")).name
        name = f"{clip}_{index:05d}_src{src:03d}_cells{box['leaked_cells']:.2f}.png"
        cv2.imwrite(str(self.save_dir / name), np.hstack([got, ref]))


# --- the relay, the publisher and the viewer -------------------------------------------------------


class StripWatch:
    """A detector unchanged, but counting the boxes it returns that reach into the stamp strip."""

    def __init__(self, inner: Any, height: int) -> None:
        self.inner, self.height = inner, height
        self.boxes = self.reach_strip = self.in_strip = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        return self._scene_only(self.inner.detect(img_bgr))

    def refine(self, img_bgr: np.ndarray, prior: np.ndarray) -> np.ndarray:
        return self._scene_only(self.inner.refine(img_bgr, prior))

    def _scene_only(self, out: np.ndarray) -> np.ndarray:
        """Counted, then kept to the clip's picture: the strip is the bench's measuring device, not part
        of the scene; a box centred in it (its cells look like a barcode to the net) is dropped and the
        others end at its top edge, so that the relay's pixelation never scrambles the frame index
        (a thin box is filled with one colour across every cell it touches: relay/mosaic.py)."""
        out = np.asarray(out, np.float32)
        self.boxes += len(out)
        if out.ndim != 2 or not len(out):
            return out
        self.reach_strip += int((out[:, 3] > self.height).sum())
        centred = (out[:, 1] + out[:, 3]) / 2 > self.height
        self.in_strip += int(centred.sum())
        out = out[~centred].copy()
        out[:, 3] = np.minimum(out[:, 3], self.height)
        return out


def load_detectors(
    text_net: bool, height: int, net: dict[str, Any] | None = None
) -> tuple[Any, Any, list[StripWatch]]:
    """(settings, DetectorSet, watches): what ``run_server.py`` serves (model contract applied);
    ``net``: safety-net settings overridden (``text_net_*``)."""
    from relay.detection import DetectorSet, DetectorSpec
    from relay.detector import detectors_from_settings
    from relay.model import apply_contract, read_contract
    from relay.settings import Settings

    settings = dataclasses.replace(Settings(), text_net=text_net, **(net or {}))
    settings = apply_contract(settings, read_contract(settings.weights))
    dset = detectors_from_settings(settings)
    watches = [StripWatch(s.detector, height) for s in dset.specs]
    specs = [
        DetectorSpec(s.name, w, s.stride, refines=s.refines, own_thread=s.own_thread)
        for s, w in zip(dset.specs, watches, strict=True)
    ]
    return settings, DetectorSet(specs), watches


@contextlib.asynccontextmanager
async def serve(settings: Any, detectors: Any) -> AsyncIterator[tuple[str, Any]]:
    """The real app on 127.0.0.1 (a free port); yields its base URL and the app."""
    from aiohttp import web

    from signaling.app import create_app

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    app = create_app(settings, detectors)
    runner = web.AppRunner(app, shutdown_timeout=5.0, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        await runner.cleanup()


async def _call(client: Any, event: str, data: dict[str, Any], ns: str) -> dict[str, Any]:
    ack = await client.call(event, data, namespace=ns, timeout=30)
    if not isinstance(ack, dict) or not ack.get("ok"):
        raise RuntimeError(f"{event}: {ack}")
    return ack


@dataclasses.dataclass
class Clip:
    """A rendered clip (yuv420p frames), its tail frame (stamped) and its judge."""

    name: str
    dir: Path
    fps: float
    width: int
    height: int
    frames: list[np.ndarray]
    tail: np.ndarray
    judge: Any


def prepare_clip(name: str, tmp: Path) -> Clip:
    """Render, read the y4m, stamp the tail frame and load the judge. Blocking."""
    spec = importlib.util.spec_from_file_location("leakrate", TOOLS / "leakrate.py")
    assert spec is not None and spec.loader is not None
    leakrate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(leakrate)
    clip_dir = CLIPS / name
    w, h, frames = read_y4m(render_clip(clip_dir, tmp))
    judge = leakrate.Judge(clip_dir)
    if len(frames) != len(judge.frames) or (judge.h, judge.w) != (h, w):
        raise ValueError(f"{name}: y4m has {len(frames)} frames {w}x{h}, the judge {len(judge.frames)}")
    meta = json.loads((clip_dir / "frames.json").read_text())
    grey = np.full((h * 3 // 2, w), 128, np.uint8)
    return Clip(name, clip_dir, float(meta["fps"]), w, h, frames, stamp(grey, w, h, TAIL), judge)


async def measure(
    base_url: str,
    clip: Clip,
    *,
    fps: float,
    loops: int = 1,
    max_frames: int = 0,
    mosaic: bool = True,
    save_dir: Path | None = None,
    app: Any = None,
) -> dict[str, Any]:
    """Publish ``clip`` to the relay at ``base_url`` and judge what one viewer receives (``app``: the
    relay's app when it runs in this process, for its pipeline counters)."""
    import socketio

    from tests.helpers.media import Publisher, Viewer

    total = len(clip.frames) * loops
    total = min(total, max_frames) if max_frames else total
    tally = Tally(clip.judge, len(clip.frames), clip.height, save_dir=save_dir if mosaic else None)
    track = ClipTrack(clip, fps, total)
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(base_url, namespaces=[PUB, VIEW], transports=["websocket"], wait_timeout=10)
    publisher, viewer = Publisher(track), Viewer(keep=1, check=tally.check)
    try:
        made = await _call(client, "create_stream", {"title": clip.name, "category": "bench"}, PUB)
        sid, key = made["stream_id"], made["publish_key"]
        if not mosaic:
            await _call(client, "set_mosaic", {"stream_id": sid, "publish_key": key, "enabled": False}, PUB)

        async def publish(sdp: str, type_: str) -> dict[str, str]:
            return await _call(
                client, "publish", {"stream_id": sid, "publish_key": key, "sdp": sdp, "type": type_}, PUB
            )

        async def view(sdp: str, type_: str) -> dict[str, str]:
            return await _call(client, "view", {"stream_id": sid, "sdp": sdp, "type": type_}, VIEW)

        await publisher.connect(publish)
        await viewer.connect(view)
        for _ in range(600):  # 30 s
            if viewer.connected_at is not None:
                break
            await asyncio.sleep(0.05)
        if viewer.connected_at is None:
            raise RuntimeError("the viewer did not connect within 30 s")
        t0 = time.monotonic()
        track.start.set()
        await asyncio.wait_for(track.done.wait(), total / fps * 3 + 60)
        sent_s = time.monotonic() - t0
        await _settle(viewer, tally)
        counters = _pipeline_counters(app, sid)
    finally:
        await viewer.close()
        await publisher.close()
        await client.disconnect()
    return _result(clip, tally, total, sent_s, mosaic, viewer.loss_reports) | {"pipeline": counters}


def _pipeline_counters(app: Any, stream_id: str) -> dict[str, Any]:
    """The stream's ``PipelineMetrics`` counters (not the timing lists), or {} without the app."""
    if app is None:
        return {}
    from signaling.keys import STATE_KEY

    room = app[STATE_KEY].registry.current(stream_id)
    if room is None or room.sanitizer is None:
        return {}
    return {k: v for k, v in room.sanitizer.metrics.as_dict().items() if isinstance(v, int)}


async def _settle(viewer: Any, tally: Tally, quiet_s: float = 3.0, within: float = 60.0) -> None:
    """Wait until the tail arrived, or nothing new came for ``quiet_s``."""
    deadline, last, last_at = time.monotonic() + within, -1, time.monotonic()
    while time.monotonic() < deadline and tally.tail < 3:
        if viewer.count != last:
            last, last_at = viewer.count, time.monotonic()
        elif time.monotonic() - last_at > quiet_s:
            return
        await asyncio.sleep(0.1)


def _result(
    clip: Clip, t: Tally, sent: int, sent_s: float, mosaic: bool, loss_reports: int
) -> dict[str, Any]:
    return {
        "clip": clip.name,
        "mosaic": mosaic,
        "frames_sent": sent,
        "send_seconds": round(sent_s, 1),
        "frames_received": t.received - t.tail - t.unreadable,
        "unreadable": t.unreadable,
        "duplicates": t.duplicates,
        "lossy_frames": t.lossy,
        "loss_reports": loss_reports,
        "boxes": t.boxes,
        "leaked": t.leaked,
        "leak_rate": round(t.leaked / max(t.boxes, 1), 4),
        "leak_frames": sorted({i for i, _, _ in t.leaks}),  # send indices
        "leak_src_frames": sorted({s for _, s, _ in t.leaks}),  # frame numbers in the clip
        "leaks": [[i, s, b] for i, s, b in t.leaks[:20]],
        "errors": t.errors[:3],
    }


# --- the command -----------------------------------------------------------------------------------


def line(r: dict[str, Any]) -> str:
    what = "CONTROL (mosaic off)" if not r["mosaic"] else "live"
    return (
        f"{r['clip']} [{what}]: frames sent {r['frames_sent']} ({r['send_seconds']} s), received "
        f"{r['frames_received']} (+{r['unreadable']} unreadable), boxes judged {r['boxes']}, leaked "
        f"{r['leaked']}, leak rate {r['leak_rate']:.2%}, leak frames (sent) {r['leak_frames'][:40]}, clip frames {r['leak_src_frames'][:40]}"
    )


def dump_tasks() -> None:
    """SIGUSR2: every asyncio task's stack on stderr (to see where a run hangs)."""
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.helpers.media import use_loopback_ice

    # where a run hangs: SIGUSR1 every thread's stack (even with the loop blocked), SIGUSR2 every task's
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, dump_tasks)

    settings, detectors, watches = await asyncio.to_thread(
        load_detectors, args.text_net, 480, net_overrides(args)
    )
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="live_leak_") as tmp, use_loopback_ice():
        async with serve(settings, detectors) as (url, app):
            for name in args.clip:
                clip = await asyncio.to_thread(prepare_clip, name, Path(tmp))
                runs = [True, False] if args.control_raw else [True]
                for mosaic in runs:
                    r = await measure(
                        url,
                        clip,
                        fps=args.fps,
                        loops=args.loops,
                        mosaic=mosaic,
                        save_dir=args.save_leaks,
                        app=app,
                    )
                    results.append(r)
                    print(line(r), flush=True)
    return {
        "text_net": args.text_net,
        "text_net_settings": {k: getattr(settings, k) for k in NET_KNOBS},
        "fps": args.fps,
        "loops": args.loops,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "detections_reaching_strip": sum(w.reach_strip for w in watches),
        "detections_centred_in_strip_dropped": sum(w.in_strip for w in watches),
        "detections": sum(w.boxes for w in watches),
        "results": results,
    }


NET_KNOBS = ("text_net_model", "text_net_size", "text_net_stride", "text_net_thread")


def net_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in NET_KNOBS if getattr(args, k) is not None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", nargs="+", default=list(CLIP_NAMES), choices=CLIP_NAMES)
    ap.add_argument("--fps", type=float, default=15.0, help="publishing rate (the clips are 15 fps)")
    ap.add_argument("--loops", type=int, default=1, help="times each clip is sent in a row")
    ap.add_argument("--text-net", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--text-net-thread", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--text-net-model", default=None, help="override the served net model")
    ap.add_argument("--text-net-size", type=int, default=None)
    ap.add_argument("--text-net-stride", type=int, default=None)
    ap.add_argument("--control-raw", action="store_true", help="also run each clip with the mosaic off")
    ap.add_argument(
        "--save-leaks", type=Path, help="write every leaked frame (beside its source) here as PNG"
    )
    args = ap.parse_args(argv)
    if args.save_leaks is not None:
        args.save_leaks.mkdir(parents=True, exist_ok=True)
    import logging

    logging.basicConfig(level=logging.WARNING)
    out = asyncio.run(run(args))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
