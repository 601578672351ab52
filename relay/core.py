"""The stages after the frame source, for one stream, without threads: what the live runner
(relay/pipeline.py, under its lock) and the offline driver (same module, single-threaded) both call.

    admit(frame)      converted frame → policy decision (relay/policy.py) → lookahead queue
    on_detection(..)  a detection step's boxes (or failure) → tracker → newest result → lookahead
    on_side(..)       a side detector's late boxes (or failure; relay/sidecar.py) → tracker → lookahead
    release(now)      frames whose lookahead is over, oldest first
    render(held)      pixelate (relay/mosaic.py) → yuv420p VideoFrame     (no shared state: no lock needed)

Every counter of :class:`relay.metrics.PipelineMetrics` and every stream metric is written here.
The caller serialises every call but :meth:`SanitizeCore.render`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from av import VideoFrame

from relay.detection import DetectionFailed, DetectionResult
from relay.lookahead import HeldFrame, LookaheadQueue
from relay.metrics import PipelineMetrics, StreamMetrics
from relay.mosaic import block_for_frame, pixelate_all_i420, pixelate_i420
from relay.policy import FrameRef, TrackedResult, Verdict, decide, lookahead_deadline, side_covers, usable
from relay.settings import Settings
from relay.tracker import TrackStage

logger = logging.getLogger(__name__)


class SanitizeCore:
    def __init__(
        self,
        settings: Settings,
        metrics: PipelineMetrics,
        stream: StreamMetrics | None = None,
        *,
        name: str = "pipeline",
    ) -> None:
        self._settings = settings
        self.metrics = metrics
        self._stream = stream
        self._name = name
        self.tracks = TrackStage(
            settings.conf_threshold, settings.detector_floor, settings.track_hold_s, settings.scene_settle_s
        )
        self.held = LookaheadQueue(settings)
        self._failing = False
        self._side_seen: dict[str, FrameRef] = {}  # side detector → the frame of its last good run

    def admit(
        self,
        buf: np.ndarray,
        ref: FrameRef,
        *,
        mosaic: bool,
        pts: int | None,
        time_base: Any,
        side: frozenset[str] = frozenset(),
    ) -> None:
        """Decide ``buf``'s boxes from the newest result and queue it for lookahead. ``side``: the side
        detectors this frame needs (on for the stream). Without a good run of each near it
        (:func:`relay.policy.side_covers`; their last run not failed) the frame waits for one in the
        lookahead queue and goes out whole without it; it is decided whole at once with lookahead off,
        and before a side detector's first good run in the frame's scene (start-up, after a cut)."""
        stale = frozenset(n for n in side if not self._side_fresh(n, ref))
        wait = (
            bool(stale) and self._settings.lookahead_s > 0 and all(self._side_ran_in(n, ref) for n in stale)
        )
        d = decide(None if stale and not wait else self.tracks.result, ref, self._settings, mosaic=mosaic)
        m = self.metrics
        if (
            stale
            and not wait
            and d.verdict is Verdict.FULL
            and not ref.cut
            and usable(self.tracks.result, ref)
        ):
            m.side_stale_full += 1
        side_wait = stale if wait and d.verdict in (Verdict.EXACT, Verdict.CARRIED) else frozenset()
        m.side_waits += bool(side_wait)
        if d.verdict is Verdict.RAW:
            m.raw_frames += 1
        elif d.verdict is Verdict.FULL:
            m.full_pixelations += 1
        elif d.verdict is Verdict.EXACT:
            m.exact_frames += 1
        else:
            m.carried_frames += 1
        block = block_for_frame(self._settings.mosaic_block, *ref.size)
        deadline = lookahead_deadline(ref, self._settings, d.verdict)
        raw = d.verdict is Verdict.RAW  # the streamer's choice: nothing to wait for
        self.held.hold(
            HeldFrame(
                buf,
                ref,
                block,
                d.verdict,
                d.boxes,
                deadline,
                pts,
                time_base,
                seen_later=raw,
                side_wait=side_wait,
            )
        )

    def on_detection(self, outcome: DetectionResult | DetectionFailed, ref: FrameRef) -> bool:
        """Record a detection step of frame ``ref``. True if a waiting frame may now go out."""
        if isinstance(outcome, DetectionFailed):
            self._fail(str(outcome))
            return False
        m = self.metrics
        m.detections += 1
        if self._failing:
            self._failing = False
            logger.info("%s: detector recovered", self._name)
        boxes = outcome.boxes
        m.detected_boxes += int((boxes[:, 4] >= self._settings.conf_threshold).sum())
        m.detect_ms.append(1000.0 * sum(outcome.seconds.values()))
        if self._stream is not None:
            self._stream.detected(outcome.seconds)
        result, continued, held = self.tracks.accept(boxes, ref)
        if result is None:  # an out-of-order step: not news for the waiting frames
            return False
        m.tracked_boxes += continued
        m.held_boxes += held
        added, ready = self.held.on_result(result)
        m.lookahead_boxes += added
        return ready

    def on_side(
        self, outcome: DetectionResult | DetectionFailed, ref: FrameRef, names: tuple[str, ...]
    ) -> bool:
        """Record a run of the side detectors ``names`` on frame ``ref`` (it finishes after later frames
        were decided): its boxes join the tracks and the waiting frames, and the frames near ``ref``
        stop waiting for it; a failure fails closed (frames whole, those waiting for it too) until their
        next good run. True if a waiting frame may now go out."""
        if isinstance(outcome, DetectionFailed):
            for name in names:
                self._side_seen.pop(name, None)
            self.held.side_failed(names)
            self._fail(str(outcome))
            return False
        m = self.metrics
        m.side_detections += 1
        m.side_ms.append(1000.0 * sum(outcome.seconds.values()))
        if self._stream is not None:
            self._stream.detected(outcome.seconds)
        added = self.tracks.add(outcome.boxes, ref)
        if len(added):
            m.lookahead_boxes += self.held.add_late(TrackedResult(added, ref))
        for name in names:
            last = self._side_seen.get(name)
            if last is None or last.seq < ref.seq:
                self._side_seen[name] = ref
        return self.held.side_ran(names, ref)

    def _side_ran_in(self, name: str, ref: FrameRef) -> bool:
        """The side detector ``name`` has had a good run in ``ref``'s scene (and size)."""
        last = self._side_seen.get(name)
        return last is not None and last.same_scene(ref)

    def _side_fresh(self, name: str, ref: FrameRef) -> bool:
        last = self._side_seen.get(name)
        return last is not None and side_covers(last, ref, self._settings)

    def _fail(self, why: str) -> None:
        self.metrics.detector_failures += 1
        if self._stream is not None:
            self._stream.detector_failed()
        self.tracks.fail()  # fail closed until the next good result
        if self._failing:
            logger.debug("%s: %s", self._name, why)
            return
        self._failing = True
        logger.warning("%s: %s; frames are fully pixelated until the next good detection", self._name, why)

    def release(self, now: float, flush: bool = False, *, mosaic: bool = True) -> list[HeldFrame]:
        """Frames that may go out now (``mosaic``: the streamer's switch now)."""
        ready, timeouts, unconfirmed = self.held.pop_ready(now, flush, mosaic=mosaic)
        self.metrics.lookahead_timeouts += timeouts
        self.metrics.unconfirmed_full += unconfirmed
        self.metrics.side_stale_full += sum(bool(h.side_wait) for h in ready)
        self.metrics.whole_out += sum(h.boxes is None for h in ready)
        return ready

    def render(self, h: HeldFrame) -> VideoFrame:
        """Pixelate ``h`` in place and wrap it (``opaque`` = its arrival time, for latency metrics)."""
        w, hgt = h.ref.size
        if h.boxes is None:
            pixelate_all_i420(h.buf, w, hgt, h.block)
        elif len(h.boxes):
            pixelate_i420(h.buf, w, hgt, h.boxes, h.block)
        out = VideoFrame.from_ndarray(h.buf, format="yuv420p")
        out.pts = h.pts
        out.time_base = h.time_base
        out.opaque = h.ref.t_frame
        if self._stream is not None:
            self._stream.frame_out(h.boxes)
        return out
