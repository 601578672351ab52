"""Publisher track → newest frame → detector (own thread) → mosaic → yuv420p frames. Fail closed.

Pipeline (one :class:`Sanitizer` per room):

- a **reader** task always drains the publisher's ``RemoteStreamTrack`` (aiortc's queue of
  decoded frames is unbounded) into a one-frame slot: the newest frame wins, older
  unprocessed frames are counted as ``dropped_stale``;
- a **worker** task takes the newest frame, converts it once to a planar yuv420p array
  (mosaic thread), starts a detection on it if the detector is idle (detector thread),
  waits for that detection for at most half a frame interval and decides the frame's boxes
  from the newest result;
- **lookahead**: the frame then waits (at most ``MAX_HELD`` frames) until the detector has seen
  a *later* frame, or ``lookahead_s`` after it arrived: the boxes of every detection that finishes
  meanwhile are added to it (grown by ``carry_margin``), so an object that the detector confirms
  a frame after it came into view is hidden on that first frame too. It costs about one
  detection interval of latency; ``lookahead_s = 0`` turns it off;
- frames whose wait is over are mosaicked (mosaic thread), in order, and handed to ``sink``
  (the room encoder's ``submit``) or queued (at most ``OUT_FRAMES``) for :meth:`Sanitizer.recv`.

Which boxes a frame gets (see docs/ARCHITECTURE.md, "Fail-closed policy"). A detection's boxes
are what :class:`relay.tracker.BoxTracker` makes of it: what scores ``conf_threshold``, plus weaker
detections that continue an object found before, plus objects the detector lost less than
``track_hold_s`` ago, where they were last seen.

- the result of a detection on this very frame: its boxes grown by ``box_margin``;
- otherwise the newest result, if it is no older (in capture time) than both
  ``detector_timeout_s`` and ``carry_max_age_s``: its boxes grown by ``carry_margin``;
- otherwise — no result yet, the last detection raised or returned garbage, the result
  is too old (the detector stalled or fell behind), the frame size changed since the
  result — the **whole frame** is pixelated.

Only when the streamer switched the mosaic off does a frame go out unmodified.
Nothing here runs numpy/cv2/PyAV work on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from relay.boxes import expand_boxes
from relay.detector import Detector
from relay.mosaic import block_for_frame, pixelate_all_i420, pixelate_i420
from relay.settings import Settings
from relay.tasks import TaskSet
from relay.tracker import BoxTracker

logger = logging.getLogger(__name__)

EMPTY_BOXES = np.zeros((0, 6), dtype=np.float32)
MAX_HELD = 16  # frames waiting for lookahead, at most (the oldest goes out when a new one would exceed it)
# sanitized frames waiting to be taken with recv(), at most (the oldest is dropped): lookahead releases
# frames in bursts (all those older than a new detection at once), the reader takes them one by one
OUT_FRAMES = 4


@dataclass
class SanitizerMetrics:
    frames_in: int = 0
    frames_out: int = 0
    dropped_stale: int = 0  # input frames replaced by a newer one before processing
    dropped_output: int = 0  # sanitized frames dropped before recv() took them (OUT_FRAMES waited)
    detections: int = 0  # detector runs that returned a valid result
    detected_boxes: int = 0  # boxes at/above the serving threshold over all runs
    tracked_boxes: int = 0  # boxes below it hidden because they continue a track (relay/tracker.py)
    held_boxes: int = 0  # boxes hidden where a track was last seen (the detector missed it)
    detector_failures: int = 0  # raised or returned a malformed array
    full_pixelations: int = 0  # frames that went out fully pixelated (fail closed)
    carried_frames: int = 0  # frames that went out with carried-forward boxes
    exact_frames: int = 0  # frames that went out with their own detection's boxes
    lookahead_boxes: int = 0  # boxes added to waiting frames by the detection of a later frame
    lookahead_timeouts: int = 0  # frames that went out after lookahead_s without a later detection
    raw_frames: int = 0  # mosaic switched off by the streamer
    frame_errors: int = 0  # frames dropped because processing raised
    detect_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))  # arrival → output
    # the mosaic thread's work per frame: wall time and that thread's CPU time (a big gap = waiting
    # for the CPU or the GIL)
    process_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    process_cpu_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, deque) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class _Result:
    boxes: np.ndarray  # (N, 6) to hide (the tracker's output), un-grown
    frame_seq: int
    t_frame: float  # arrival (capture-side) time of the detected frame, monotonic
    size: tuple[int, int]  # (width, height) of the detected frame


@dataclass
class _Held:
    """A converted frame waiting for lookahead; ``boxes`` (grown) only ever gains boxes, ``None``
    means the whole frame is pixelated."""

    buf: np.ndarray
    size: tuple[int, int]
    block: int
    boxes: np.ndarray | None
    seq: int
    t_arrival: float
    deadline: float  # monotonic time at which it goes out even without a later detection
    pts: int | None
    time_base: Any
    seen_later: bool = False  # the detector has returned a result for a later frame


def frame_to_i420(frame: VideoFrame) -> np.ndarray:
    """Planar yuv420p copy of ``frame`` (odd sizes are cropped by one pixel). Blocking."""
    w, h = frame.width & ~1, frame.height & ~1
    if frame.format.name != "yuv420p" or (w, h) != (frame.width, frame.height):
        frame = frame.reformat(width=w, height=h, format="yuv420p")
    return np.ascontiguousarray(frame.to_ndarray())


class Sanitizer:
    """Turns the publisher's track into mosaicked yuv420p frames, newest first."""

    def __init__(
        self,
        source: MediaStreamTrack,
        detector: Detector,
        settings: Settings,
        *,
        detector_executor: Executor | None = None,
        name: str = "sanitizer",
        mosaic: bool = True,
        sink: Callable[[VideoFrame], None] | None = None,
    ) -> None:
        self._source = source
        self._detector = detector
        self._settings = settings
        self._name = name
        self.mosaic_enabled = mosaic
        # called with every sanitized frame, in the mosaic thread (the room encoder's submit);
        # without a sink, frames are taken with recv()
        self._sink = sink
        self.metrics = SanitizerMetrics()
        self._own_detector_executor = detector_executor is None
        self._detector_executor: Executor = detector_executor or ThreadPoolExecutor(
            1, thread_name_prefix=f"{name}-detect"
        )
        self._mosaic_executor = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-mosaic")
        self._tasks = TaskSet(name)
        self._tracker = BoxTracker(settings.conf_threshold, settings.detector_floor, settings.track_hold_s)
        self._latest: tuple[VideoFrame, float, int] | None = None
        self._in_event = asyncio.Event()
        self._out: deque[VideoFrame] = deque()
        self._out_event = asyncio.Event()
        self._source_ended = False
        self.ended = asyncio.Event()  # set when the source ended or stop() ran
        self._seq = 0
        self._result: _Result | None = None
        self._tracked_size: tuple[int, int] | None = None
        self._lock = threading.RLock()  # RLock: a done-callback may run at once, in the thread that adds it
        self._held: deque[_Held] = deque()  # frames waiting for lookahead, oldest first (under _lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: concurrent.futures.Future[Any] | None = None
        self._started = False
        self._stopped = False
        self._failing = False
        # how long a frame waits for its own detection: half a frame interval, so that waiting plus
        # mosaic still fits one interval and a detector slower than the frame rate costs carried
        # boxes (wider margin), not frames (docs/BENCHMARKS.md: a full interval held 720p30 at 27 fps)
        self._hold_s = 0.5 / max(settings.max_fps, 1.0)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._tasks.create(self._reader(), "reader")
        self._tasks.create(self._worker(), "worker")

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop both tasks and release the threads. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.ended.set()
        self._out_event.set()
        await self._tasks.close(grace_s)
        with self._lock:
            if self._pending is not None:
                self._pending.cancel()
            self._held.clear()  # frames still waiting for lookahead never go out
        self._mosaic_executor.shutdown(wait=False, cancel_futures=True)
        if self._own_detector_executor:
            self._detector_executor.shutdown(wait=False, cancel_futures=True)

    @property
    def task_count(self) -> int:
        return len(self._tasks)

    # --- output ------------------------------------------------------------------------------

    async def recv(self) -> VideoFrame:
        """Newest sanitized frame (waits for one); ``MediaStreamError`` once ended."""
        while not self._out:
            if self.ended.is_set():
                raise MediaStreamError
            self._out_event.clear()
            await self._out_event.wait()
        return self._out.popleft()

    # --- reader ------------------------------------------------------------------------------

    async def _reader(self) -> None:
        try:
            while True:
                frame = await self._source.recv()
                if not isinstance(frame, VideoFrame):
                    continue
                self._seq += 1
                self.metrics.frames_in += 1
                if self._latest is not None:
                    self.metrics.dropped_stale += 1
                self._latest = (frame, time.monotonic(), self._seq)
                self._in_event.set()
        except MediaStreamError:
            logger.debug("%s: source ended", self._name)
        finally:
            self._source_ended = True
            self._in_event.set()

    # --- worker ------------------------------------------------------------------------------

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                while self._latest is None:
                    if self._source_ended:  # the frames still waiting go out with what they have
                        await self._release_waiting(loop, flush=True)
                        return
                    self._in_event.clear()
                    deadline = self._next_release()
                    if deadline is not None and deadline <= time.monotonic():
                        # no new frame, but waiting frames may go out (a later detection, or time)
                        await self._release_waiting(loop)
                        continue
                    try:
                        async with asyncio.timeout(None if deadline is None else deadline - time.monotonic()):
                            await self._in_event.wait()
                    except TimeoutError:
                        pass
                frame, t_arrival, seq = self._latest
                self._latest = None
                try:
                    outs = await self._process(loop, frame, t_arrival, seq)
                except Exception:  # a frame we cannot process is dropped, never sent as it is
                    self._frame_error()
                    continue
                self._publish(outs)
        finally:
            self.ended.set()
            self._out_event.set()

    async def _release_waiting(self, loop: asyncio.AbstractEventLoop, flush: bool = False) -> None:
        """Between new frames: the waiting frames that may go out do (mosaic thread), or are dropped."""
        try:
            self._publish(await loop.run_in_executor(self._mosaic_executor, self._release, flush))
        except Exception:
            self._frame_error()

    def _frame_error(self) -> None:
        self.metrics.frame_errors += 1
        if self.metrics.frame_errors == 1 or self.metrics.frame_errors % 100 == 0:
            logger.exception("%s: dropping a frame that could not be processed", self._name)

    def _publish(self, outs: list[VideoFrame]) -> None:
        """Event loop: count the frames that went out (the sink has them) or put them in the slot."""
        now = time.monotonic()
        for out in outs:
            self.metrics.frames_out += 1
            self.metrics.latency_ms.append((now - out.opaque) * 1000.0)
            if self._sink is not None:
                continue
            if len(self._out) >= OUT_FRAMES:
                self._out.popleft()
                self.metrics.dropped_output += 1
            self._out.append(out)
            self._out_event.set()

    def _next_release(self) -> float | None:
        """When the oldest waiting frame may go out (now, if the detector has seen a later frame);
        ``None`` if no frame waits."""
        with self._lock:
            if not self._held:
                return None
            h = self._held[0]
            return 0.0 if h.seen_later else h.deadline

    def _wake(self) -> None:
        """Any thread: wake the worker (a waiting frame may go out)."""
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._in_event.set)
            except RuntimeError:  # the loop is closed: nobody left to wake
                pass

    async def _process(
        self, loop: asyncio.AbstractEventLoop, frame: VideoFrame, t_arrival: float, seq: int
    ) -> list[VideoFrame]:
        # one trip to the mosaic thread per frame: convert, maybe start a detection (and wait for
        # it for at most half a frame interval), decide the boxes; then mosaic and wrap every
        # frame whose lookahead is over (this one, earlier ones, or none)
        return await loop.run_in_executor(
            self._mosaic_executor, self._process_sync, frame, t_arrival, seq, self.mosaic_enabled
        )

    def _process_sync(self, frame: VideoFrame, t_arrival: float, seq: int, mosaic: bool) -> list[VideoFrame]:
        """Mosaic thread. Shared state (result, pending detection, held frames, metrics) is under ``_lock``."""
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            self._process_frame(frame, t_arrival, seq, mosaic)
            return self._release()
        finally:
            self.metrics.process_ms.append((time.perf_counter() - t0) * 1000.0)
            self.metrics.process_cpu_ms.append((time.thread_time() - c0) * 1000.0)

    def _release(self, flush: bool = False) -> list[VideoFrame]:
        """Mosaic thread: render, in order, the held frames that may go out (the detector saw a later
        frame, their deadline passed, too many wait, or ``flush``), and hand them to the sink."""
        now = time.monotonic()
        ready: list[_Held] = []
        with self._lock:
            while self._held:
                h = self._held[0]
                timed_out = now >= h.deadline
                if not (flush or h.seen_later or timed_out or len(self._held) > MAX_HELD):
                    break
                if timed_out and not h.seen_later and self._settings.lookahead_s > 0:
                    self.metrics.lookahead_timeouts += 1
                ready.append(self._held.popleft())
        outs = []
        for h in ready:
            out = self._render(h.buf, h.size[0], h.size[1], h.boxes, h.block)
            out.pts = h.pts
            out.time_base = h.time_base
            out.opaque = h.t_arrival  # for the end-to-end (arrival → packet) latency metrics
            if self._sink is not None:
                self._sink(out)
            outs.append(out)
        return outs

    def _process_frame(self, frame: VideoFrame, t_arrival: float, seq: int, mosaic: bool) -> None:
        """Convert ``frame``, decide its boxes and queue it for lookahead (mosaic thread)."""
        buf = frame_to_i420(frame)
        size = (buf.shape[1], buf.shape[0] * 2 // 3)
        block = block_for_frame(self._settings.mosaic_block, *size)

        def hold(boxes: np.ndarray | None, *, raw: bool = False) -> None:  # under _lock
            deadline = t_arrival + (0.0 if raw else self._settings.lookahead_s)
            self._held.append(
                _Held(buf, size, block, boxes, seq, t_arrival, deadline, frame.pts, frame.time_base, raw)
            )

        if not mosaic:
            with self._lock:
                self.metrics.raw_frames += 1
                hold(EMPTY_BOXES, raw=True)  # the streamer's choice: nothing to wait for
            return
        finished: threading.Event | None = None
        with self._lock:
            if self._pending is None and not self._stopped:
                try:
                    pending = self._detector_executor.submit(self._detect_job, buf.copy())
                except RuntimeError as exc:  # executor shut down (server stopping)
                    self._fail(f"cannot run the detector: {exc}")
                else:
                    finished = threading.Event()
                    self._pending = pending
                    pending.add_done_callback(partial(self._detection_done, seq, t_arrival, size, finished))
        if finished is not None:
            finished.wait(self._hold_s)
        with self._lock:  # decided and queued at once: every detection that finishes later adds to it
            hold(self._boxes_for(seq, t_arrival, size))

    def _boxes_for(self, seq: int, t_frame: float, size: tuple[int, int]) -> np.ndarray | None:
        """Boxes to pixelate on this frame, or ``None`` for a fully pixelated frame (under ``_lock``)."""
        r = self._result
        s = self._settings
        if r is None or r.size != size:
            self.metrics.full_pixelations += 1
            return None
        if r.frame_seq == seq:
            self.metrics.exact_frames += 1
            return expand_boxes(r.boxes, s.box_margin, (size[1], size[0]))
        age = t_frame - r.t_frame
        if age > min(s.detector_timeout_s, s.carry_max_age_s) or age < 0:
            self.metrics.full_pixelations += 1
            return None
        self.metrics.carried_frames += 1
        return expand_boxes(r.boxes, s.carry_margin, (size[1], size[0]))

    @staticmethod
    def _render(buf: np.ndarray, width: int, height: int, boxes: np.ndarray | None, block: int) -> VideoFrame:
        if boxes is None:
            pixelate_all_i420(buf, width, height, block)
        elif len(boxes):
            pixelate_i420(buf, width, height, boxes, block)
        return VideoFrame.from_ndarray(buf, format="yuv420p")

    # --- detection (detector thread) ---------------------------------------------------------

    def _detect_job(self, buf: np.ndarray) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        bgr = cv2.cvtColor(buf, cv2.COLOR_YUV2BGR_I420)
        dets = self._detector.detect(bgr)
        return dets, (time.perf_counter() - t0) * 1000.0

    def _detection_done(
        self,
        seq: int,
        t_frame: float,
        size: tuple[int, int],
        finished: threading.Event,
        f: concurrent.futures.Future[Any],
    ) -> None:
        try:
            self._record_detection(seq, t_frame, size, f)
        finally:
            finished.set()

    def _record_detection(
        self, seq: int, t_frame: float, size: tuple[int, int], f: concurrent.futures.Future[Any]
    ) -> None:
        with self._lock:
            if self._pending is f:
                self._pending = None
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                self._fail(f"detector raised {exc!r}")
                return
            dets, ms = f.result()
            boxes = self._validate(dets)
            if boxes is None:
                self._fail(f"detector returned {type(dets).__name__} {getattr(dets, 'shape', '')}")
                return
            self.metrics.detections += 1
            if self._failing:
                self._failing = False
                logger.info("%s: detector recovered", self._name)
            self.metrics.detected_boxes += int((boxes[:, 4] >= self._settings.conf_threshold).sum())
            self.metrics.detect_ms.append(ms)
            if self._result is None or self._result.frame_seq <= seq:
                if self._tracked_size != size:  # tracks are in pixels of one frame size
                    self._tracker.reset()
                    self._tracked_size = size
                hide, continued, held = self._tracker.update(boxes, t_frame)
                self.metrics.tracked_boxes += continued
                self.metrics.held_boxes += held
                self._result = _Result(hide, seq, t_frame, size)
                self._look_ahead(seq, size, hide)
            # else: an out-of-order result the tracker did not take: not news for the waiting frames

    def _look_ahead(self, seq: int, size: tuple[int, int], hide: np.ndarray) -> None:
        """Under ``_lock``, after the tracker took a detection of frame ``seq`` (``hide``: its boxes):
        every waiting frame of that size gets them (they only add to what it hides), and those older
        than ``seq`` may go out."""
        grown = None
        if self._held and not self._held[0].seen_later and self._held[0].seq < seq:
            self._wake()
        for h in self._held:
            h.seen_later = h.seen_later or h.seq < seq
            if h.size != size or h.boxes is None or not len(hide):
                continue
            if grown is None:
                grown = expand_boxes(hide, self._settings.carry_margin, (size[1], size[0]))
            h.boxes = np.concatenate([h.boxes, grown])
            self.metrics.lookahead_boxes += len(grown)

    def _validate(self, dets: Any) -> np.ndarray | None:
        if not isinstance(dets, np.ndarray) or dets.ndim != 2 or dets.shape[1] < 5:
            return None
        if len(dets) and not np.isfinite(dets[:, :5]).all():
            return None
        return np.asarray(dets, dtype=np.float32)  # the tracker drops what scores under track_conf

    def _fail(self, why: str) -> None:
        self.metrics.detector_failures += 1
        self._result = None  # fail closed until the next good result
        if self._failing:
            logger.debug("%s: %s", self._name, why)
            return
        self._failing = True
        logger.warning("%s: %s; frames are fully pixelated until the next good detection", self._name, why)
