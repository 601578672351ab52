"""Detection stage: any number of detectors behind one protocol, run on one frame, fail closed.

- :class:`Detector`: ``detect(img_bgr) -> (N, 6) float32 x1, y1, x2, y2, score, class`` (blocking).
  The YOLO model is :class:`relay.detector.YoloOnnxDetector`; the text/barcode net plugs in the same way.
- :class:`DetectorSet`: the detectors a pipeline runs, each at its ``stride`` (1 = every detection
  step, ``k`` = every k-th step; the tracker carries its regions in between). :meth:`DetectorSet.run`
  runs the due ones on one BGR image and merges their boxes; if **any** of them raises or returns
  something that is not an ``(N, >=5)`` finite array, the whole step fails with :class:`DetectionFailed`
  (the caller then pixelates whole frames until the next good step, as for one detector).
  A spec with ``refines=True`` gets the boxes of the detectors before it on the same image and returns
  their replacement (``detector.refine(img, boxes)``: the text net keeps weak YOLO boxes only where it
  sees text, relay/regions.py ``combine``); on the steps it does not run they pass unchanged.
- A detector marked ``own_thread`` (the text/barcode net) is a *side* detector: live, it is not part of
  the detection step but runs beside it on its own thread (relay/sidecar.py), so a frame's YOLO step
  never waits for it; its regions join the tracker when they are ready. Offline every detector runs
  in the step (no thread: the result is the same as a side detector that takes no time).
- :func:`warm_up`: the first runs allocate and pick kernels; done once, here, when a detector is loaded.

No threads here: the runner (relay/pipeline.py) calls :meth:`DetectorSet.run` in its detector thread
(and relay/sidecar.py in the side detectors' thread).
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np

EMPTY_DETECTIONS = np.zeros((0, 6), dtype=np.float32)
Lane = Literal["all", "step", "side"]  # which detectors a run is for: offline, live step, live side


class Detector(Protocol):
    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        """``(N, 6)`` float32 ``x1, y1, x2, y2, score, class`` in pixels of ``img_bgr``."""
        ...


class DetectionFailed(RuntimeError):
    """A detector raised or returned a malformed result: the frame's detection step failed."""


@dataclass(frozen=True)
class DetectorSpec:
    name: str
    detector: Detector
    stride: int = 1  # runs on every stride-th detection step (0, k, 2k, ...); own_thread: every k-th frame
    # refines the boxes of the detectors before it: ``detector.refine(img, boxes) -> boxes`` replaces
    # them (the text net's policy: relay/regions.py ``combine``); on its own thread it has none (the
    # weak YOLO boxes then pass unchanged: more hidden, never less)
    refines: bool = False
    own_thread: bool = False  # live: beside the detection step, on its own thread (relay/sidecar.py)

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"{self.name}: stride must be >= 1, got {self.stride}")


@dataclass(frozen=True)
class DetectionResult:
    boxes: np.ndarray  # (N, 6) float32, every due detector's boxes
    ran: tuple[str, ...]  # the detectors that ran
    seconds: dict[str, float] = field(default_factory=dict)  # per detector, incl. its share of conversion


def validate_detections(dets: object) -> np.ndarray:
    """``dets`` as an ``(N, 6)`` float32 array, or :class:`DetectionFailed` (wrong type/shape, NaN)."""
    if not isinstance(dets, np.ndarray) or dets.ndim != 2 or dets.shape[1] < 5:
        raise DetectionFailed(f"detector returned {type(dets).__name__} {getattr(dets, 'shape', '')}")
    if len(dets) and not np.isfinite(dets[:, :5]).all():
        raise DetectionFailed("detector returned non-finite boxes")
    out = np.asarray(dets, dtype=np.float32)
    if out.shape[1] == 5:  # no class column: class 0
        out = np.concatenate([out, np.zeros((len(out), 1), np.float32)], axis=1)
    return out[:, :6]


def warm_up(detector: Detector, size: int = 416, runs: int = 2) -> float:
    """Run ``detector`` ``runs`` times on a black image; checks the output contract. Seconds taken."""
    t0 = time.perf_counter()
    for _ in range(runs):
        validate_detections(detector.detect(np.zeros((size, size, 3), np.uint8)))
    return time.perf_counter() - t0


def detector_label(detector: Detector) -> str:
    name = getattr(detector, "name", None)
    return name if isinstance(name, str) and name else type(detector).__name__


class DetectorSet:
    """The detectors of a pipeline. Thread-compatible: one caller at a time per step."""

    def __init__(self, detectors: Sequence[Detector | DetectorSpec]) -> None:
        specs = [d if isinstance(d, DetectorSpec) else DetectorSpec(detector_label(d), d) for d in detectors]
        if not specs:
            raise ValueError("a pipeline needs at least one detector")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"detector names must be unique, got {names}")
        self.specs: tuple[DetectorSpec, ...] = tuple(specs)

    @classmethod
    def of(cls, detectors: Detector | DetectorSet | Sequence[Detector | DetectorSpec]) -> DetectorSet:
        if isinstance(detectors, DetectorSet):
            return detectors
        if isinstance(detectors, Sequence):
            return cls(detectors)
        return cls([detectors])

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    @property
    def name(self) -> str:
        """What /healthz shows: each detector's class (and weights file), joined by ``+``."""
        parts = []
        for s in self.specs:
            weights = getattr(s.detector, "weights", None)
            parts.append(detector_label(s.detector) + (f":{Path(weights).name}" if weights else ""))
        return "+".join(parts)

    @property
    def side(self) -> tuple[DetectorSpec, ...]:
        """The detectors that run on their own thread live (``own_thread``)."""
        return tuple(s for s in self.specs if s.own_thread)

    def due(
        self, step: int, skip: frozenset[str] = frozenset(), lane: Lane = "all"
    ) -> tuple[DetectorSpec, ...]:
        """Lane ``"all"``: every detector due at ``step`` (offline); ``"step"``: those of the live
        detection step; ``"side"``: every side detector (its caller keeps its stride)."""
        if lane == "side":
            return tuple(s for s in self.side if s.name not in skip)
        return tuple(
            s
            for s in self.specs
            if step % s.stride == 0 and s.name not in skip and not (lane == "step" and s.own_thread)
        )

    def run(
        self, img_bgr: np.ndarray, step: int = 0, skip: frozenset[str] = frozenset(), lane: Lane = "all"
    ) -> DetectionResult:
        """The due detectors of ``lane`` (but those named in ``skip``: a stream switched them off) on
        ``img_bgr``; raises :class:`DetectionFailed` if any fails. Blocking."""
        parts: list[np.ndarray] = []
        seconds: dict[str, float] = {}
        due = self.due(step, skip, lane)
        for spec in due:
            t0 = time.perf_counter()
            try:
                if spec.refines:
                    prior = np.concatenate(parts) if parts else EMPTY_DETECTIONS.copy()
                    dets = getattr(spec.detector, "refine")(img_bgr, prior)  # noqa: B009
                    parts = []
                else:
                    dets = spec.detector.detect(img_bgr)
            except Exception as exc:
                raise DetectionFailed(f"{spec.name} raised {exc!r}") from exc
            parts.append(validate_detections(dets))
            seconds[spec.name] = time.perf_counter() - t0
        boxes = np.concatenate(parts) if parts else EMPTY_DETECTIONS.copy()
        return DetectionResult(boxes, tuple(s.name for s in due), seconds)

    def run_i420(
        self, buf: np.ndarray, step: int = 0, skip: frozenset[str] = frozenset(), lane: Lane = "all"
    ) -> DetectionResult:
        """As :meth:`run`, from a planar yuv420p buffer (converted once for every detector)."""
        t0 = time.perf_counter()
        bgr = cv2.cvtColor(buf, cv2.COLOR_YUV2BGR_I420)
        convert = time.perf_counter() - t0
        res = self.run(bgr, step, skip, lane)
        share = convert / max(1, len(res.seconds))
        return DetectionResult(res.boxes, res.ran, {k: v + share for k, v in res.seconds.items()})


def outcome(f: concurrent.futures.Future[Any]) -> DetectionResult | DetectionFailed:
    """A finished detection run's result, or its failure (whatever raised: e.g. the colour conversion)."""
    exc = f.exception()
    if exc is None:
        result: DetectionResult = f.result()
        return result
    return exc if isinstance(exc, DetectionFailed) else DetectionFailed(f"detection raised {exc!r}")
