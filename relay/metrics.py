"""Metrics the stages write into: per-pipeline counters, Prometheus metrics per server, a per-stream snapshot.

- :class:`PipelineMetrics`: plain counters of one pipeline (tests and benchmarks read them).
- :class:`RelayMetrics`: one ``prometheus_client.CollectorRegistry`` per server (``RoomRegistry``
  makes one; tests run many servers in one process, so nothing is process-global). Serve
  ``RelayMetrics.registry`` with ``prometheus_client.generate_latest(registry)`` at ``GET /metrics``.
- :class:`StreamMetrics`: one stream's view of it (its label set, removed by :meth:`StreamMetrics.close`
  when the stream ends) plus a cheap rolling :meth:`StreamMetrics.snapshot` of the last seconds
  (fps in/out, detect ms, objects hidden per class, whole-frame fallbacks, viewers) for the publisher page.

Every method may be called from any thread (prometheus_client and the snapshot are thread-safe).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from relay.model import class_name

SNAPSHOT_WINDOW_S = 5.0
_DETECT_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)
_ENCODE_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25)


@dataclass
class PipelineMetrics:
    frames_in: int = 0
    frames_out: int = 0
    dropped_stale: int = 0  # input frames replaced by a newer one before processing
    detections: int = 0  # detection steps that returned a valid result
    detected_boxes: int = 0  # boxes at/above the serving threshold over all steps
    tracked_boxes: int = 0  # boxes below it hidden because they continue a track (relay/tracker.py)
    held_boxes: int = 0  # boxes hidden where a track was last seen (the detector missed it)
    detector_failures: int = 0  # a detector raised or returned a malformed array
    full_pixelations: int = 0  # frames decided fully pixelated (fail closed)
    carried_frames: int = 0  # frames decided with carried-forward boxes
    exact_frames: int = 0  # frames decided with their own detection's boxes
    lookahead_boxes: int = 0  # boxes added to waiting frames by the detection of a later frame
    lookahead_timeouts: int = 0  # frames that went out after lookahead_s without a later detection
    unconfirmed_full: int = 0  # carried frames that went out whole: no detection of them or later came back
    raw_frames: int = 0  # mosaic switched off by the streamer
    frame_errors: int = 0  # frames dropped because processing raised
    scene_cuts: int = 0  # frames flagged as a scene cut
    side_detections: int = (
        0  # valid results of detectors on their own thread (the text net; relay/sidecar.py)
    )
    side_stale_full: int = 0  # frames whole only because a side detector had no good run near them
    side_waits: int = 0  # frames that waited in the lookahead queue for a side detector's run
    whole_out: int = 0  # frames that went out whole, for any reason (decided so, or on release)
    detect_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    side_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))  # one side detector run
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))  # arrival → output
    # the mosaic thread's work per frame: wall time and that thread's CPU time
    process_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    process_cpu_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, deque) else v) for k, v in self.__dict__.items()}


class RelayMetrics:
    """The server's Prometheus metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, s = self.registry, ["stream"]
        self.streams_live = Gauge("mosaic_relay_streams_live", "Streams being published", registry=r)
        self.viewers = Gauge("mosaic_relay_viewers", "Viewers watching", s, registry=r)
        self.frames_in = Counter("mosaic_relay_frames_in", "Frames received from publishers", s, registry=r)
        self.frames_out = Counter(
            "mosaic_relay_frames_out", "Sanitized frames handed to the encoder", s, registry=r
        )
        self.failed_closed = Counter(
            "mosaic_relay_frames_failed_closed", "Frames pixelated whole (fail closed)", s, registry=r
        )
        self.detect_seconds = Histogram(
            "mosaic_relay_detect_seconds",
            "One detector run",
            ["detector"],
            buckets=_DETECT_BUCKETS,
            registry=r,
        )
        self.detector_failures = Counter(
            "mosaic_relay_detector_failures", "Detection steps that failed", s, registry=r
        )
        self.objects_pixelated = Counter(
            "mosaic_relay_objects_pixelated",
            "Boxes pixelated on outgoing frames",
            ["stream", "class"],
            registry=r,
        )
        self.encode_seconds = Histogram(
            "mosaic_relay_encode_seconds", "One video encode", buckets=_ENCODE_BUCKETS, registry=r
        )
        self.bytes_out = Counter(
            "mosaic_relay_bytes_out", "Encoded video bytes (once per stream)", s, registry=r
        )
        self.keyframes = Counter("mosaic_relay_keyframes", "Encoded keyframes", s, registry=r)

    def stream(self, stream_id: str) -> StreamMetrics:
        return StreamMetrics(self, stream_id)

    def watch_restreams(self, states: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        """``mosaic_relay_restream_state{stream, restream}`` (0 stopped, 1 connecting, 2 live), read
        from ``states()`` (stream id, restream id, state code) at every scrape."""
        self.registry.register(_RestreamStates(states))


class _RestreamStates:
    """A collector: the state of every RTMP restream now (restreams come and go with no label to clear)."""

    def __init__(self, states: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        self._states = states

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # (else the registry collects once at registration, before there is anything to read)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "mosaic_relay_restream_state",
            "RTMP restream state: 0 stopped, 1 connecting, 2 live",
            labels=["stream", "restream"],
        )
        for stream_id, restream_id, code in self._states():
            family.add_metric([stream_id, restream_id], code)
        yield family


_PER_STREAM = (
    "viewers",
    "frames_in",
    "frames_out",
    "failed_closed",
    "detector_failures",
    "bytes_out",
    "keyframes",
)


class StreamMetrics:
    """One stream's metrics; :meth:`close` removes its label sets from the registry."""

    def __init__(self, parent: RelayMetrics | None, stream_id: str) -> None:
        self._parent = parent
        self.stream_id = stream_id
        self._lock = threading.Lock()
        self._events: deque[tuple[float, str, str, float]] = deque(maxlen=8192)  # (t, kind, key, value)
        self._classes: set[str] = set()
        self._viewers = 0  # the encoder's viewers (every peer that gets the packets)
        self._previews = 0  # ... of which the publisher page's own preview (not a viewer)
        self._closed = False

    def _child(self, metric: Any) -> Any:
        return metric.labels(stream=self.stream_id)

    def _note(self, kind: str, key: str = "", value: float = 1.0) -> None:
        with self._lock:
            self._events.append((time.monotonic(), kind, key, value))

    def frame_in(self) -> None:
        self._note("in")
        if self._parent is not None:
            self._child(self._parent.frames_in).inc()

    def frame_out(self, boxes: np.ndarray | None) -> None:
        """A sanitized frame went out with ``boxes`` pixelated (``None``: the whole frame)."""
        self._note("out")
        p = self._parent
        if boxes is None:
            self._note("full")
            if p is not None:
                self._child(p.failed_closed).inc()
        if p is not None:
            self._child(p.frames_out).inc()
        if boxes is None or not len(boxes):
            return
        classes, counts = np.unique(boxes[:, 5].astype(np.int64), return_counts=True)
        for c, n in zip(classes.tolist(), counts.tolist(), strict=True):
            name = class_name(c)
            self._note("obj", name, float(n))
            if p is not None:
                with self._lock:
                    self._classes.add(name)
                p.objects_pixelated.labels(stream=self.stream_id, **{"class": name}).inc(n)

    def detected(self, seconds: dict[str, float]) -> None:
        for name, s in seconds.items():
            self._note("detect", name, s)
            if self._parent is not None:
                self._parent.detect_seconds.labels(detector=name).observe(s)

    def detector_failed(self) -> None:
        if self._parent is not None:
            self._child(self._parent.detector_failures).inc()

    def encoded(self, seconds: float, nbytes: int, keyframes: int) -> None:
        if self._parent is None:
            return
        self._parent.encode_seconds.observe(seconds)
        self._child(self._parent.bytes_out).inc(nbytes)
        if keyframes:
            self._child(self._parent.keyframes).inc(keyframes)

    def set_viewers(self, n: int) -> None:
        """The room's viewer count over all its encoders (previews included; see :meth:`set_previews`)."""
        self._viewers = n
        self._publish_viewers()

    def set_previews(self, n: int) -> None:
        """How many of the encoder's viewers are the publisher page's own preview: the room says."""
        self._previews = n
        self._publish_viewers()

    @property
    def viewers(self) -> int:
        """Viewers, not counting the publisher's own preview: what both pages and /metrics show."""
        return max(0, self._viewers - self._previews)

    def _publish_viewers(self) -> None:
        if self._parent is not None and not self._closed:
            self._child(self._parent.viewers).set(self.viewers)

    def snapshot(self, window_s: float = SNAPSHOT_WINDOW_S) -> dict[str, Any]:
        """The last ``window_s`` seconds: fps in/out, detect ms (mean per detector), objects hidden per
        class, whole-frame fallbacks, viewers. Cheap: for the publisher page, a few times a second."""
        since = time.monotonic() - window_s
        with self._lock:
            events = [e for e in self._events if e[0] >= since]
        counts: dict[str, float] = {}
        objects: dict[str, int] = {}
        detect: dict[str, list[float]] = {}
        for _, kind, key, value in events:
            counts[kind] = counts.get(kind, 0.0) + value
            if kind == "obj":
                objects[key] = objects.get(key, 0) + int(value)
            elif kind == "detect":
                detect.setdefault(key, []).append(value * 1000.0)
        return {
            "window_s": window_s,
            "fps_in": round(counts.get("in", 0.0) / window_s, 1),
            "fps_out": round(counts.get("out", 0.0) / window_s, 1),
            "detect_ms": {k: round(float(np.mean(v)), 1) for k, v in detect.items()},
            "objects_hidden": objects,
            "whole_frame_fallbacks": int(counts.get("full", 0.0)),
            "viewers": self.viewers,
        }

    def close(self) -> None:
        """The stream ended: remove its label sets (bounded cardinality). Idempotent."""
        if self._closed or self._parent is None:
            self._closed = True
            return
        self._closed = True
        p = self._parent
        for attr in _PER_STREAM:
            metric = getattr(p, attr)
            try:
                metric.remove(self.stream_id)
            except KeyError:
                pass
        for name in self._classes:
            try:
                p.objects_pixelated.remove(self.stream_id, name)
            except KeyError:
                pass
