"""The runner: the only place with threads and locks. Live (:class:`Pipeline`) and offline (:func:`run_offline`).

Live, one :class:`Pipeline` per room (docs/ARCHITECTURE.md draws it)::

    publisher track ─(aiortc queue)→ NewestFrameSource [event loop, reader task]
      ─(one-frame slot)→ worker task [event loop] ─(run_in_executor)→ mosaic thread:
          frame_to_i420 → maybe start a detection step (DetectorSet, detector thread; the frame waits
          for it at most half a frame interval) and a side run (relay/sidecar.py, side thread; the step
          never waits for it) → policy decision → LookaheadQueue (where a frame with no side run near it
          waits for one, at most its lookahead)
      detector thread: DetectorSet.run_i420 → SanitizeCore.on_detection (tracker, lookahead boxes)
      side thread: the text/barcode net → SanitizeCore.on_side (its regions join tracker and lookahead)
      mosaic thread: frames whose lookahead is over → render → sink(frame)   (the room encoder's submit)

One lock (``_lock``) guards the :class:`relay.core.SanitizeCore` shared by the two threads. The one
hand-off is the ``sink`` callable: the server, bench/pipeline.py and the tests all pass one.

Offline, :func:`run_offline` drives the same core over a sequence of frames on the calling thread:
every frame is detected, nothing is dropped or pixelated for being late, no wall clock (a frame's
time is its media time; lookahead releases a frame once the next frame's detection is in).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from aiortc.mediastreams import MediaStreamTrack
from av import VideoFrame

from relay import frames as frames_module
from relay.core import SanitizeCore
from relay.detection import (
    DetectionFailed,
    DetectionResult,
    Detector,
    DetectorSet,
    DetectorSpec,
    outcome,
    validate_detections,
)
from relay.frames import InputFrame, NewestFrameSource
from relay.lookahead import HeldFrame
from relay.metrics import PipelineMetrics, StreamMetrics
from relay.policy import FrameRef, side_max_age
from relay.settings import Settings
from relay.sidecar import Sidecar
from relay.tasks import TaskSet

logger = logging.getLogger(__name__)

Detectors = Detector | DetectorSet | Sequence[Detector | DetectorSpec]
Sink = Callable[[VideoFrame], None]
SceneCutHook = Callable[[np.ndarray], bool]  # planar yuv420p buffer → "this frame starts a new scene"


class Pipeline:
    """Publisher track → sanitized yuv420p frames handed to ``sink`` (from the mosaic thread)."""

    def __init__(
        self,
        source: MediaStreamTrack,
        detectors: Detectors,
        settings: Settings,
        *,
        sink: Sink,
        detector_executor: Executor | None = None,
        name: str = "pipeline",
        mosaic: bool = True,
        stream: StreamMetrics | None = None,
        scene_cut: SceneCutHook | None = None,
        side_executor: Executor | None = None,
    ) -> None:
        self._detectors, self._settings, self._name = DetectorSet.of(detectors), settings, name
        self.mosaic_enabled = mosaic
        self.skip_detectors: frozenset[str] = frozenset()  # detectors this stream switched off
        self._sink, self._scene_cut = sink, scene_cut
        self.metrics = PipelineMetrics()
        self._wake_event = asyncio.Event()
        self._source = NewestFrameSource(
            source, self._wake_event.set, self.metrics, stream, name=f"{name}-source"
        )
        self._core = SanitizeCore(settings, self.metrics, stream, name=name)
        self._own_detector_executor = detector_executor is None
        self._detector_executor: Executor = detector_executor or ThreadPoolExecutor(
            1, thread_name_prefix=f"{name}-detect"
        )
        self._mosaic_executor = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-mosaic")
        self._tasks = TaskSet(name)
        self.ended = asyncio.Event()  # set when the source ended or stop() ran
        self._lock = threading.RLock()  # RLock: a done-callback may run at once, in the thread adding it
        on_side, every = partial(_side_done, self._lock, self._core, self._wake), side_max_age(settings) / 2
        self._sidecar = Sidecar(self._detectors, on_side, side_executor, name, settings.text_net_nice, every)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: concurrent.futures.Future[Any] | None = None
        self._step = 0  # detection steps started (strides count these)
        self._scene = 0  # mosaic thread only
        self._started = self._stopped = False
        # a frame waits for its own detection for half a frame interval, so that waiting plus mosaic
        # fits one interval and a slower detector costs carried boxes (wider margin), not frames
        self._hold_s = 0.5 / max(settings.max_fps, 1.0)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._source.start()
        self._tasks.create(self._worker(), "worker")

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop the tasks and release the threads; frames still waiting never go out. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.ended.set()
        await self._source.stop(grace_s)
        await self._tasks.close(grace_s)
        with self._lock:
            if self._pending is not None:
                self._pending.cancel()
            self._core.held.clear()
        self._sidecar.stop()
        self._mosaic_executor.shutdown(wait=False, cancel_futures=True)
        if self._own_detector_executor:
            self._detector_executor.shutdown(wait=False, cancel_futures=True)

    @property
    def task_count(self) -> int:
        return len(self._tasks) + self._source.task_count

    # --- worker (event loop) -----------------------------------------------------------------

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = self._source.take()
                if item is None:
                    if self._source.ended:  # the frames still waiting go out with what they have
                        await self._run(loop, self._release_sync, True)
                        return
                    await self._idle(loop)
                    continue
                await self._run(loop, self._process_sync, item, self.mosaic_enabled)
        finally:
            self.ended.set()

    async def _idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """No new frame: let waiting frames go out when they may, else wait for a frame or a wake-up."""
        self._wake_event.clear()
        with self._lock:
            deadline = self._core.held.next_release()
        if deadline is not None and deadline <= time.monotonic():
            await self._run(loop, self._release_sync, False)
            return
        if self._source.ended:
            return
        try:
            async with asyncio.timeout(None if deadline is None else deadline - time.monotonic()):
                await self._wake_event.wait()
        except TimeoutError:
            pass

    async def _run(
        self, loop: asyncio.AbstractEventLoop, fn: Callable[..., list[VideoFrame]], *args: Any
    ) -> None:
        """``fn`` in the mosaic thread; count what went out. A frame that cannot be processed is
        dropped, never sent as it is."""
        try:
            outs = await loop.run_in_executor(self._mosaic_executor, fn, *args)
        except Exception:
            self.metrics.frame_errors += 1
            if self.metrics.frame_errors == 1 or self.metrics.frame_errors % 100 == 0:
                logger.exception("%s: dropping a frame that could not be processed", self._name)
            return
        now = time.monotonic()
        for out in outs:
            self.metrics.frames_out += 1
            t_arrival = out.opaque if isinstance(out.opaque, float) else now
            self.metrics.latency_ms.append((now - t_arrival) * 1000.0)

    def _wake(self) -> None:
        _wake_loop(self._loop, self._wake_event)  # any thread: a waiting frame may go out

    # --- mosaic thread -----------------------------------------------------------------------

    def _process_sync(self, item: InputFrame, mosaic: bool) -> list[VideoFrame]:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            buf = frames_module.frame_to_i420(item.frame)
            cut = self._scene_cut is not None and self._scene_cut(buf)
            if cut:
                self._scene += 1
                self.metrics.scene_cuts += 1
            size = (buf.shape[1], buf.shape[0] * 2 // 3)
            ref = FrameRef(item.seq, item.t_arrival, size, self._scene, cut=cut)
            finished = self._start_detection(buf, ref) if mosaic else None
            skip = self.skip_detectors
            if mosaic:
                self._sidecar.maybe_start(buf, ref, skip)
            if finished is not None:
                finished.wait(self._hold_s)
            side = self._sidecar.active(skip) if mosaic else frozenset()
            with self._lock:  # decided and queued at once: every step finishing later adds to it
                self._core.admit(
                    buf, ref, mosaic=mosaic, pts=item.frame.pts, time_base=item.frame.time_base, side=side
                )
            return self._release_sync(False)
        finally:
            self.metrics.process_ms.append((time.perf_counter() - t0) * 1000.0)
            self.metrics.process_cpu_ms.append((time.thread_time() - c0) * 1000.0)

    def _release_sync(self, flush: bool) -> list[VideoFrame]:
        with self._lock:
            ready: list[HeldFrame] = self._core.release(time.monotonic(), flush, mosaic=self.mosaic_enabled)
        outs = [self._core.render(h) for h in ready]
        for out in outs:
            self._sink(out)
        return outs

    def _start_detection(self, buf: np.ndarray, ref: FrameRef) -> threading.Event | None:
        """Start a detection step on ``buf`` if none is running; an event set when it is recorded."""
        with self._lock:
            if self._pending is not None or self._stopped:
                return None
            step, self._step = self._step, self._step + 1
            try:
                pending = self._detector_executor.submit(
                    self._detectors.run_i420, buf.copy(), step, self.skip_detectors, "step"
                )
            except RuntimeError as exc:  # executor shut down (server stopping)
                self._core.on_detection(DetectionFailed(f"cannot run the detector: {exc}"), ref)
                return None
            finished = threading.Event()
            self._pending = pending
            pending.add_done_callback(partial(self._detection_done, ref, finished))
            return finished

    # --- detector thread (done-callback) -----------------------------------------------------

    def _detection_done(
        self, ref: FrameRef, finished: threading.Event, f: concurrent.futures.Future[Any]
    ) -> None:
        try:
            with self._lock:
                if self._pending is f:
                    self._pending = None
                if f.cancelled():
                    return
                if self._core.on_detection(outcome(f), ref):
                    self._wake()
        finally:
            finished.set()


def _wake_loop(loop: asyncio.AbstractEventLoop | None, event: asyncio.Event) -> None:
    """Any thread: set ``event`` on ``loop`` (a pipeline's worker wakes up)."""
    if loop is not None:
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # the loop is closed: nobody left to wake
            pass


def _side_done(
    lock: threading.RLock,
    core: SanitizeCore,
    wake: Callable[[], None],
    ref: FrameRef,
    result: DetectionResult | DetectionFailed,
    names: tuple[str, ...],
) -> None:
    """Side thread: a side run finished (relay/sidecar.py; it calls nothing once stopped)."""
    with lock:
        ready = core.on_side(result, ref, names)
    if ready:
        wake()


# --- offline -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfflineFrame:
    frame: VideoFrame  # sanitized, yuv420p, pts/time_base of the input
    index: int  # input order, from 0
    boxes: np.ndarray | None  # what was pixelated (grown), None: the whole frame
    verdict: str  # relay.policy.Verdict value


def run_offline(
    frames: Iterable[VideoFrame | tuple[VideoFrame, bool]],
    detectors: Detectors,
    settings: Settings,
    *,
    metrics: PipelineMetrics | None = None,
    stream: StreamMetrics | None = None,
    fps: float = 30.0,
    scene_cut: SceneCutHook | None = None,
) -> Iterator[OfflineFrame]:
    """Sanitize ``frames`` in order with the live stages and defaults, on the calling thread.

    An item may be ``(frame, scene_cut)``; else ``scene_cut`` (the live hook) says where cuts are.
    A frame's time is its pts (else ``index / fps``). Every frame is detected (each detector at its stride over frame indices) and comes out, in order."""
    dset = DetectorSet.of(detectors)
    m = metrics if metrics is not None else PipelineMetrics()
    core = SanitizeCore(settings, m, stream, name="offline")
    scene, t, by_seq = 0, 0.0, {}
    for index, item in enumerate(frames):
        frame, cut = item if isinstance(item, tuple) else (item, False)
        m.frames_in += 1
        buf = frames_module.frame_to_i420(frame)
        if scene_cut is not None and scene_cut(buf):
            cut = True
        scene += int(cut)
        m.scene_cuts += int(cut)
        t = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else index / fps
        ref = FrameRef(index + 1, t, (buf.shape[1], buf.shape[0] * 2 // 3), scene, cut=bool(cut))
        by_seq[index + 1] = index
        try:
            outcome: DetectionResult | DetectionFailed = dset.run_i420(buf, index)
        except DetectionFailed as exc:
            outcome = exc
        core.on_detection(outcome, ref)
        core.admit(buf, ref, mosaic=True, pts=frame.pts, time_base=frame.time_base)
        yield from _emit(core, core.release(t), by_seq, m)
    yield from _emit(core, core.release(t, flush=True), by_seq, m)


def _emit(
    core: SanitizeCore, ready: list[HeldFrame], by_seq: dict[int, int], m: PipelineMetrics
) -> Iterator[OfflineFrame]:
    for h in ready:
        boxes = None if h.boxes is None else h.boxes.copy()
        out = core.render(h)
        m.frames_out += 1
        yield OfflineFrame(out, by_seq.pop(h.ref.seq), boxes, h.verdict.value)


def replay_boxes(
    detections: Sequence[np.ndarray], size: tuple[int, int], settings: Settings, fps: float
) -> list[np.ndarray | None]:
    """What the offline driver hides on each frame (grown boxes, ``None``: the whole frame), from
    per-frame detections already made (``(N, >=5)`` each, down to the tracker floor or lower):
    the same core as :func:`run_offline` without the pixels. For coverage measurements."""
    core = SanitizeCore(settings, PipelineMetrics(), name="replay")
    placeholder = np.zeros((0, 0), np.uint8)  # never rendered
    out: dict[int, np.ndarray | None] = {}
    t = 0.0
    for i, dets in enumerate(detections):
        t = i / fps
        ref = FrameRef(i + 1, t, size)
        outcome: DetectionResult | DetectionFailed
        try:
            outcome = DetectionResult(validate_detections(dets), ("replay",))
        except DetectionFailed as exc:
            outcome = exc
        core.on_detection(outcome, ref)
        core.admit(placeholder, ref, mosaic=True, pts=None, time_base=None)
        out.update((h.ref.seq, h.boxes) for h in core.release(t))
    out.update((h.ref.seq, h.boxes) for h in core.release(t, flush=True))
    return [out[i + 1] for i in range(len(detections))]
