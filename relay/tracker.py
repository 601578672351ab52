"""Hysteresis across detections: keep hiding an object once it has been found.

A detector scores the same object differently from frame to frame (pose, blur, compression). With a
single threshold, an object whose score hovers around it is pixelated on some frames and shown on
the others, and a viewer needs only one raw frame to read a plate. :class:`BoxTracker` turns the
per-frame detections into the boxes to hide:

- a detection scoring at least ``conf`` (the serving threshold, 0.6 by default) starts a track;
- a detection scoring at least ``track_conf`` (lower) is hidden when it overlaps a track or a
  detection hidden on this frame (IoU at least ``match_iou``, or one box mostly inside the other;
  any class: the detector sometimes names a label an ID card, or boxes a label's plate-like
  tracking number as a plate and the whole label only weakly), and continues those tracks, so a
  found object stays hidden, whole, while the detector still sees it weakly;
- a track that no detection continues stays hidden where it was last seen for ``hold_s`` seconds
  (short misses: motion blur, a finger over the plate), then ends;
- a detection that lies mostly inside a track (a text line or a number on a card) continues it but
  does not replace it: the track stays held where it was last seen whole (the part does not show
  where the rest of the object went), for ``hold_s`` after the last part seen inside it (the object
  is still there: a card the detector later sees only by its photo or its text lines keeps its whole
  box); a detection covering it replaces it at once.

A weak detection that continues no track is not hidden: an object must be confirmed once at the
serving threshold. The tracker only ever adds boxes to what the serving threshold alone would
hide. Pure numpy, no threads: the caller serialises :meth:`update` calls.
"""

from __future__ import annotations

import numpy as np

from relay.policy import FrameRef, TrackedResult

EMPTY = np.zeros((0, 6), dtype=np.float32)


class BoxTracker:
    def __init__(
        self, conf: float, track_conf: float, hold_s: float, match_iou: float = 0.2, contain: float = 0.6
    ) -> None:
        if not 0.0 <= track_conf <= conf <= 1.0:
            raise ValueError(f"need 0 <= track_conf ({track_conf}) <= conf ({conf}) <= 1")
        if hold_s < 0 or not 0.0 < match_iou <= 1.0:
            raise ValueError(f"need hold_s >= 0 (got {hold_s}) and match_iou in (0, 1] (got {match_iou})")
        self.conf = conf
        self.track_conf = track_conf
        self.hold_s = hold_s
        self.match_iou = match_iou
        self.contain = contain
        self._boxes = EMPTY.copy()  # (T, 6) x1 y1 x2 y2 score class: where each track was last seen
        self._seen = np.zeros((0,), dtype=np.float64)  # (T,) time of the detection that last continued it
        self._t = 0.0  # the newest capture time seen

    def __len__(self) -> int:
        """Tracks alive (hidden) at the newest time the tracker has seen."""
        return int(((self._t - self._seen) <= self.hold_s).sum())

    def reset(self) -> None:
        self._boxes = EMPTY.copy()
        self._seen = np.zeros((0,), dtype=np.float64)
        self._t = 0.0

    def update(
        self, dets: np.ndarray, t: float, start_conf: float | None = None
    ) -> tuple[np.ndarray, int, int]:
        """Detections of the frame captured at ``t`` (seconds, non-decreasing) → boxes to hide.

        ``start_conf`` (default ``conf``): the score that starts a track on this step (lower while a
        new scene settles: :class:`TrackStage`).

        ``dets`` is ``(N, >=6)``: x1, y1, x2, y2, score, class. Returns ``(boxes, continued, held)``:
        the ``(M, 6)`` float32 boxes to hide on that frame, how many of them are weak detections
        (below ``conf``) kept because they continue a track, and how many are tracks held where
        they were last seen.
        """
        start = self.conf if start_conf is None else start_conf
        dets = np.asarray(dets, dtype=np.float32)
        if dets.ndim != 2 or dets.shape[1] < 5:
            raise ValueError(f"expected (N, >=5) detections, got shape {dets.shape}")
        if dets.shape[1] == 5:  # no class column
            dets = np.concatenate([dets, np.zeros((len(dets), 1), np.float32)], axis=1)
        dets = dets[:, :6]
        dets = dets[dets[:, 4] >= self.track_conf]
        dets = dets[np.argsort(-dets[:, 4], kind="stable")]
        alive = (t - self._seen) <= self.hold_s
        # a track ended less than hold_s ago is kept, not hidden: a late part (add) captured while it
        # was alive brings it back
        dormant = ~alive & ((t - self._seen) <= 2 * self.hold_s)
        old, seen = self._boxes[alive], self._seen[alive]
        later_boxes, later_seen = self._boxes[dormant], self._seen[dormant]
        replaced = np.zeros(len(old), dtype=bool)
        hidden: list[np.ndarray] = []
        continued = 0
        for d in dets:  # strongest first, so a weak detection can continue what a strong one found
            on_old = self._overlaps(d, old)
            on_new = self._overlaps(d, np.asarray(hidden, np.float32).reshape(-1, 6))
            if d[4] >= start or on_old.any() or on_new.any():
                hidden.append(d)
                replaced |= on_old & self._covers(d, old)
                continued += int(d[4] < self.conf)
            # else: a weak detection that continues nothing is not hidden
        # a track ends early only when a detection covers it: one that lies inside it (a text line,
        # a number on the card) does not show where the rest of the object went, so the track stays
        # held where it was last seen whole, and as long as parts of it are still seen there
        seen = self._refreshed(old, seen, dets, t)  # every one of dets is hidden if it lies inside
        held = old[~replaced]
        # the tracks from now on: every hidden detection (seen now) and the held ones (seen before)
        now = np.asarray(hidden, np.float32).reshape(-1, 6)
        self._boxes = np.concatenate([now, held, later_boxes])
        self._seen = np.concatenate([np.full(len(now), t), seen[~replaced], later_seen])
        self._t = max(self._t, t)
        return np.concatenate([now, held]), continued, len(held)

    def _refreshed(self, tracks: np.ndarray, seen: np.ndarray, dets: np.ndarray, t: float) -> np.ndarray:
        """``seen`` with each track that one of ``dets`` (captured at ``t``) lies mostly inside
        (``contain``) seen at ``t``: a part of the object still there keeps its whole box held (a card
        the detector now only sees by its photo or text lines), until hold_s after the last such part
        or a detection covering the track replaces it. Only ever hides more."""
        out = seen.copy()
        for d in dets:
            inter, area_d, _ = _intersections(d, tracks)
            out[inter / area_d >= self.contain] = t
        kept: np.ndarray = np.maximum(out, seen)
        return kept

    def add(self, dets: np.ndarray, t: float, now: float, start_conf: float | None = None) -> np.ndarray:
        """Detections of an earlier frame (captured at ``t``) that come in late, after the tracker has
        seen the frame of ``now`` (a detector on its own thread): those scoring ``start_conf`` (default
        ``conf``), or at least ``track_conf`` and overlapping a track or one of those, become tracks seen
        at ``t`` (held until ``t + hold_s``, continued by later detections as any track). A late detection
        lying inside a track that was alive at ``t`` keeps it held from ``t`` (bringing it back if it
        ended since). Returns the ``(M, 6)`` boxes this adds to what is hidden at ``now`` (none if ``t``
        is already more than ``hold_s`` before ``now``)."""
        start = self.conf if start_conf is None else start_conf
        dets = np.asarray(dets, dtype=np.float32).reshape(-1, 6)
        if now - t > self.hold_s:
            return EMPTY.copy()
        dets = dets[dets[:, 4] >= self.track_conf]
        dets = dets[np.argsort(-dets[:, 4], kind="stable")]
        is_alive = (now - self._seen) <= self.hold_s
        alive = self._boxes[is_alive]
        # a late part seen inside a track alive at its frame keeps it held too (as in update), and
        # brings back one that ended since
        was_alive = (t - self._seen) <= self.hold_s
        self._seen = np.where(was_alive, self._refreshed(self._boxes, self._seen, dets, t), self._seen)
        revived = self._boxes[~is_alive & ((now - self._seen) <= self.hold_s)]
        added: list[np.ndarray] = []
        for d in dets:
            if (
                d[4] >= start
                or self._overlaps(d, alive).any()
                or self._overlaps(d, np.array(added).reshape(-1, 6)).any()
            ):
                added.append(d)
        new = np.asarray(added, np.float32).reshape(-1, 6)
        self._boxes = np.concatenate([self._boxes, new])
        self._seen = np.concatenate([self._seen, np.full(len(new), t)])
        self._t = max(self._t, now)
        return np.concatenate([new, revived])

    def _overlaps(self, d: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Which ``boxes`` the detection ``d`` continues: IoU >= ``match_iou``, or one of the two lies
        mostly (``contain``) inside the other (a plate-like block inside a label, the whole label)."""
        inter, area_d, area_b = _intersections(d, boxes)
        iou = inter / np.maximum(area_d + area_b - inter, 1e-9)
        hit: np.ndarray = (iou >= self.match_iou) | (inter / np.minimum(area_d, area_b) >= self.contain)
        return hit

    def _covers(self, d: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Which ``boxes`` the detection ``d`` stands in for: the box lies mostly (``contain``) inside
        ``d``, or IoU >= ``match_iou`` unless ``d`` is a part of the box (lies mostly inside it and is
        less than ``contain`` of its area: a text line across half a card overlaps it by IoU 0.45)."""
        inter, area_d, area_b = _intersections(d, boxes)
        iou = inter / np.maximum(area_d + area_b - inter, 1e-9)
        part = (inter / area_d >= self.contain) & (area_d < self.contain * area_b)
        hit: np.ndarray = ((iou >= self.match_iou) & ~part) | (inter / area_b >= self.contain)
        return hit


def _intersections(d: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Intersection areas of ``d`` with each of ``boxes``, ``d``'s area, the boxes' areas."""
    ix = np.clip(np.minimum(d[2], boxes[:, 2]) - np.maximum(d[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(d[3], boxes[:, 3]) - np.maximum(d[1], boxes[:, 1]), 0, None)
    area_d = max(float((d[2] - d[0]) * (d[3] - d[1])), 1e-9)
    area_b = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-9)
    return ix * iy, area_d, area_b


class TrackStage:
    """Tracking stage of a pipeline: detection steps, in frame order, → the newest :class:`TrackedResult`.

    Tracks are in the pixels of one frame size and belong to one scene: a step on a frame of another
    size or scene starts afresh (relay/policy.py, scene cut). A step on a frame older than the newest
    result (steps finishing out of order), or older than the frame that started the current tracks
    when it is of another size or scene, is not news and is dropped. A failed step clears the result:
    frames are fully pixelated until the next good step. :meth:`add` takes a side detector's late
    detections (relay/sidecar.py). The caller serialises calls.
    """

    def __init__(self, conf: float, track_conf: float, hold_s: float, settle_s: float = 0.0) -> None:
        self._tracker = BoxTracker(conf, track_conf, hold_s)
        self._key: tuple[tuple[int, int], int] | None = None  # (size, scene) of the tracks
        self._key_seq = 0  # the frame that started them
        self._now = 0.0  # capture time of the newest frame the tracker has seen
        self._since = 0.0  # capture time of the first frame of this size and scene
        self._settle_s = settle_s
        self.result: TrackedResult | None = None

    def accept(self, dets: np.ndarray, frame: FrameRef) -> tuple[TrackedResult | None, int, int]:
        """Detections of ``frame`` → (the new result, or None if out of order; continued; held)."""
        if self.result is not None and self.result.frame.seq > frame.seq:
            return None, 0, 0
        if not self._enter(frame):
            return None, 0, 0
        hide, continued, held = self._tracker.update(dets, frame.t_frame, start_conf=self._start(frame))
        self._now = max(self._now, frame.t_frame)
        self.result = TrackedResult(hide, frame, held)  # update() puts the held tracks last
        return self.result, continued, held

    def add(self, dets: np.ndarray, frame: FrameRef) -> np.ndarray:
        """A side detector's detections of ``frame``, which may be older than the newest result: they
        join the tracks (:meth:`BoxTracker.add`) and the newest result if it is of the same size and
        scene. Returns the boxes added (none: another size or scene than the tracks, or too old)."""
        if not self._enter(frame):
            return EMPTY.copy()
        now = max(self._now, frame.t_frame)
        added = self._tracker.add(dets, frame.t_frame, now, start_conf=self._start(frame))
        self._now = now
        r = self.result
        if len(added) and r is not None and (r.frame.size, r.frame.scene) == self._key:
            self.result = TrackedResult(np.concatenate([r.boxes, added]), r.frame, r.held + len(added))
        return added

    def _enter(self, frame: FrameRef) -> bool:
        """Make ``frame``'s size and scene the tracks' (afresh if they change); False if it is older
        than the frame that started the current ones and of another size or scene (not news)."""
        key = (frame.size, frame.scene)
        if self._key == key:
            return True
        if self._key is not None and frame.seq < self._key_seq:
            return False
        self._tracker.reset()
        self._key, self._key_seq, self._since, self._now = key, frame.seq, frame.t_frame, frame.t_frame
        return True

    def _start(self, frame: FrameRef) -> float | None:
        # a scene the tracker has not settled into yet (start-up, a cut, a new size): nothing found
        # there yet can be continued, so every detection down to track_conf starts a track
        settling = frame.t_frame - self._since < self._settle_s
        return self._tracker.track_conf if settling else None

    def fail(self) -> None:
        self.result = None
