"""THE fail-closed policy: what to hide on a frame. Pure functions, no state, no threads, no clock.

Inputs: the newest tracked detection (:class:`TrackedResult`, what :class:`relay.tracker.TrackStage`
made of a detection step), the frame (sequence number, capture time, size, scene) and
:class:`relay.settings.Settings`. Output: a :class:`Decision`: boxes to pixelate (grown by a margin)
or ``None`` for the whole frame. See docs/ARCHITECTURE.md, "Fail-closed policy".

- ``EXACT``: the result of a detection of this very frame: its boxes grown by ``box_margin`` (the
  safety net's regions found on this frame, already grown by their own geometry, not at all; those
  held from another frame by ``carry_margin``: :func:`exact_margins`);
- ``CARRIED``: otherwise the newest result, if it is of the same size and scene and no older (in
  capture time) than both ``detector_timeout_s`` and ``carry_max_age_s``: grown by ``carry_margin``;
- ``FULL``: otherwise (no result yet, the last step failed, the result is too old, the frame size
  changed, a scene cut since the result): the whole frame;
- ``RAW``: only when the streamer switched the mosaic off.

**Lookahead**: a decided frame waits (relay/lookahead.py) for the detection of a later frame; each
result that arrives meanwhile adds :func:`lookahead_boxes` to it (:func:`add_boxes`): boxes are only
ever added, a whole-frame decision stays whole.

**Never looked for**: with lookahead on, a frame decided ``CARRIED`` that leaves the queue before
a detection of itself or of a later frame has come back (its deadline passed, the queue overflowed,
the stream ended: the detector fell behind) goes out whole (:func:`release_boxes`). Its carried
boxes only cover what the detector saw before it arrived; an object that came into view since was
never looked for. With ``lookahead_s = 0`` carried frames go out at once with their carried boxes
(the operator chose latency over this rule).

**Scene cut**: a frame flagged as a cut starts a new scene (the runner numbers scenes). A result of
another scene is never used for a frame (so the frames after the cut are ``FULL`` until a detection
of the new scene), the tracker starts afresh on the new scene's first result, and a result adds
lookahead boxes only to frames of its own scene: exactly like start-up. The cut frame itself is
always ``FULL``, even when a detection of it came back in time: a detector that meets a scene cold
misses more (measured on the shared parcel clip offline: its only leaked box was a cut frame's).

**Side detectors** (the text/barcode net on its own thread, relay/sidecar.py): a frame needs a good run
of each side detector on a frame of its scene at most :func:`side_max_age` away from it, before or
after it (the tracker holds a side region that long, no longer). With lookahead on, a frame that has
none when it is decided waits for one (relay/lookahead.py), at most until its deadline, and goes out
whole without it; it is decided ``FULL`` at once with ``lookahead_s = 0``, and before the side
detector's first good run in its scene (start-up, a cut: one run's regions alone are not enough).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from relay.boxes import expand_boxes
from relay.model import ClassId
from relay.settings import Settings

EMPTY_BOXES = np.zeros((0, 6), dtype=np.float32)


class Verdict(Enum):
    EXACT = "exact"
    CARRIED = "carried"
    FULL = "full"
    RAW = "raw"


@dataclass(frozen=True)
class FrameRef:
    """What the policy needs to know about a frame."""

    seq: int
    t_frame: float  # capture/arrival time, seconds (monotonic live, media time offline)
    size: tuple[int, int]  # (width, height)
    scene: int = 0  # bumped by the runner on every scene cut
    cut: bool = False  # this frame is the first of a new scene

    def same_scene(self, other: FrameRef) -> bool:
        """``other`` is of this frame's size and scene (what a result, track or run needs to count)."""
        return (self.size, self.scene) == (other.size, other.scene)


@dataclass(frozen=True)
class TrackedResult:
    """The boxes to hide that one detection step produced (un-grown), and which frame it saw."""

    boxes: np.ndarray  # (N, 6) float32
    frame: FrameRef
    held: int = 0  # the last ``held`` boxes were not found on ``frame``: tracks held from earlier frames


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    boxes: np.ndarray | None  # grown (N, 6) boxes, or None: the whole frame

    @property
    def whole_frame(self) -> bool:
        return self.boxes is None


def _grow(boxes: np.ndarray, margin: float | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``boxes`` grown by ``margin`` (one for all, or one per box), clipped to a frame of ``size``."""
    return expand_boxes(boxes, margin, (size[1], size[0]))


def exact_margins(result: TrackedResult, settings: Settings) -> np.ndarray:
    """The margin of each box of ``result`` on the very frame its step saw: ``box_margin`` for the
    YOLO model's; none for the safety net's regions (classes ``TEXT`` and ``BARCODE``) found on that
    frame, which come grown by their own geometry (a line height around print, a label around a
    barcode: relay/regions.py); ``carry_margin`` for the net's regions the tracker holds from another
    frame (an earlier run, or the net on its own thread: the print may have moved since)."""
    b = result.boxes
    held = np.arange(len(b)) >= len(b) - result.held
    net_margin = np.where(held, settings.carry_margin, 0.0)
    margins: np.ndarray = np.where(b[:, 5] >= ClassId.TEXT, net_margin, settings.box_margin)
    return margins


def side_max_age(settings: Settings) -> float:
    """How far (capture time) a side detector's run may be from a frame and still count for it: no
    more than the tracker holds its regions, nor than a frame may be decided from an old detection."""
    return min(settings.detector_timeout_s, settings.carry_max_age_s, settings.track_hold_s)


def side_covers(run: FrameRef, frame: FrameRef, settings: Settings) -> bool:
    """A side detector's run on ``run`` counts for ``frame``: same size and scene, near enough."""
    return run.same_scene(frame) and abs(frame.t_frame - run.t_frame) <= side_max_age(settings)


def usable(result: TrackedResult | None, frame: FrameRef) -> bool:
    """A result may decide ``frame`` at all: same size, same scene."""
    return result is not None and result.frame.same_scene(frame)


def decide(
    result: TrackedResult | None, frame: FrameRef, settings: Settings, *, mosaic: bool = True
) -> Decision:
    """What to hide on ``frame`` given the newest result (``None``: none, or the last step failed)."""
    if not mosaic:
        return Decision(Verdict.RAW, EMPTY_BOXES)
    if frame.cut or result is None or not usable(result, frame):
        return Decision(Verdict.FULL, None)
    if result.frame.seq == frame.seq:
        return Decision(Verdict.EXACT, _grow(result.boxes, exact_margins(result, settings), frame.size))
    age = frame.t_frame - result.frame.t_frame
    if age > min(settings.detector_timeout_s, settings.carry_max_age_s) or age < 0:
        return Decision(Verdict.FULL, None)
    return Decision(Verdict.CARRIED, _grow(result.boxes, settings.carry_margin, frame.size))


def lookahead_boxes(result: TrackedResult, waiting: FrameRef, settings: Settings) -> np.ndarray:
    """Boxes a later frame's result adds to a ``waiting`` frame (grown by ``carry_margin``); none
    across a size change or a scene cut."""
    if not usable(result, waiting) or not len(result.boxes):
        return EMPTY_BOXES
    return _grow(result.boxes, settings.carry_margin, waiting.size)


def add_boxes(boxes: np.ndarray | None, extra: np.ndarray) -> np.ndarray | None:
    """``boxes`` plus ``extra``; a whole-frame decision (``None``) stays whole: never un-hide."""
    if boxes is None or not len(extra):
        return boxes
    return np.concatenate([boxes, extra])


def release_boxes(
    verdict: Verdict, boxes: np.ndarray | None, confirmed: bool, settings: Settings, *, mosaic: bool = True
) -> np.ndarray | None:
    """What a frame leaving the lookahead queue is pixelated with: its boxes, or ``None`` (whole) for a
    ``CARRIED`` frame that no detection of itself or a later frame of its scene has ``confirmed`` (lookahead on),
    and for a ``RAW`` frame when the streamer has switched the mosaic back on (``mosaic``) meanwhile."""
    if verdict is Verdict.CARRIED and not confirmed and settings.lookahead_s > 0:
        return None
    if verdict is Verdict.RAW and mosaic:
        return None
    return boxes


def lookahead_deadline(frame: FrameRef, settings: Settings, verdict: Verdict) -> float:
    """When a frame goes out even without a later detection (a raw frame waits for nothing)."""
    return frame.t_frame + (0.0 if verdict is Verdict.RAW else settings.lookahead_s)
