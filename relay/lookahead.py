"""Lookahead stage: decided frames wait, in order, for the detection of a later frame.

A frame leaves :class:`LookaheadQueue` once a result of a *later* frame has been seen (it got that
result's boxes, :func:`relay.policy.lookahead_boxes`) and every side detector it waits for has run
near it (:func:`relay.policy.side_covers`; their regions reach it through
:meth:`LookaheadQueue.add_late`), or at its deadline (``lookahead_s`` after it arrived), or when more
than ``max_held`` frames wait, or on flush. A carried frame that leaves before any detection of itself
or a later frame came back goes out whole (:func:`relay.policy.release_boxes`), and so does a frame
still waiting for a side detector's run. Plain data structure: the caller serialises calls (the
runner holds its lock; the offline driver is single-threaded).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from relay.policy import (
    FrameRef,
    TrackedResult,
    Verdict,
    add_boxes,
    lookahead_boxes,
    release_boxes,
    side_covers,
    usable,
)
from relay.settings import Settings

MAX_HELD = 16  # frames waiting for lookahead, at most (the oldest goes out when a new one would exceed it)


@dataclass
class HeldFrame:
    """A converted frame waiting for lookahead; ``boxes`` only ever gains boxes (``None``: whole frame)."""

    buf: np.ndarray  # planar yuv420p
    ref: FrameRef
    block: int  # mosaic cell size for this frame
    verdict: Verdict
    boxes: np.ndarray | None
    deadline: float  # goes out at this time even without a later detection
    pts: int | None = None
    time_base: Any = None
    seen_later: bool = False  # a result of a later frame has been seen
    confirmed: bool = False  # a result of this frame or a later one has been seen
    side_wait: frozenset[str] = frozenset()  # side detectors with no run near it yet (none left: free)


class LookaheadQueue:
    def __init__(self, settings: Settings, max_held: int = MAX_HELD) -> None:
        self._settings = settings
        self._max_held = max_held
        self._held: deque[HeldFrame] = deque()

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, frame: HeldFrame) -> None:
        self._held.append(frame)

    def clear(self) -> None:
        self._held.clear()

    def on_result(self, result: TrackedResult) -> tuple[int, bool]:
        """A detection step's result: every waiting frame gets its boxes (only adds), those older
        than the detected frame may go out. Returns (boxes added, the oldest frame became ready)."""
        seq = result.frame.seq
        first = self._held[0] if self._held else None
        was_free = first is not None and self._free(first)
        added = 0
        for h in self._held:
            h.seen_later = h.seen_later or h.ref.seq < seq
            # only a detection of the frame's own scene (and size) looked at what it shows: the new
            # scene's first result confirms none of the old scene's carried frames
            h.confirmed = h.confirmed or (h.ref.seq <= seq and usable(result, h.ref))
            extra = lookahead_boxes(result, h.ref, self._settings)
            if h.boxes is not None and len(extra):
                h.boxes = add_boxes(h.boxes, extra)
                added += len(extra)
        return added, first is not None and not was_free and self._free(first)

    def side_ran(self, names: tuple[str, ...], run: FrameRef) -> bool:
        """Side detectors ``names`` had a good run on ``run``: the waiting frames it counts for stop
        waiting for them. Returns whether the oldest frame may now go out."""
        for h in self._held:
            if h.side_wait and side_covers(run, h.ref, self._settings):
                h.side_wait = h.side_wait.difference(names)
        return bool(self._held) and self._free(self._held[0])

    def side_failed(self, names: tuple[str, ...]) -> None:
        """A run of side detectors ``names`` failed: the frames waiting for them go out whole, and
        need not wait any more."""
        for h in self._held:
            if h.side_wait.intersection(names):
                h.boxes, h.side_wait = None, frozenset()

    @staticmethod
    def _free(h: HeldFrame) -> bool:
        """Nothing more to wait for: a later frame's result came back and no side run is missing."""
        return h.seen_later and not h.side_wait

    def add_late(self, result: TrackedResult) -> int:
        """A side detector's boxes (relay/sidecar.py): every waiting frame of the same size and scene
        gets them (only adds); none may go out for it (that is the detection step's say). Boxes added."""
        added = 0
        for h in self._held:
            extra = lookahead_boxes(result, h.ref, self._settings)
            if h.boxes is not None and len(extra):
                h.boxes = add_boxes(h.boxes, extra)
                added += len(extra)
        return added

    def next_release(self) -> float | None:
        """When the oldest waiting frame may go out (0.0: now); ``None`` if none waits."""
        if not self._held:
            return None
        h = self._held[0]
        return 0.0 if self._free(h) else h.deadline

    def pop_ready(
        self, now: float, flush: bool = False, *, mosaic: bool = True
    ) -> tuple[list[HeldFrame], int, int]:
        """The frames that may go out at ``now``, oldest first; how many of them timed out waiting
        for a later detection (with lookahead on); how many of those go out whole because no
        detection of them or a later frame came back (:func:`relay.policy.release_boxes`; ``mosaic``:
        the streamer's switch now, so a raw frame still on its way when it is switched on goes out whole).
        A frame still waiting for a side detector's run goes out whole, its ``side_wait`` left set."""
        ready: list[HeldFrame] = []
        timeouts = unconfirmed = 0
        while self._held:
            h = self._held[0]
            timed_out = now >= h.deadline
            if not (flush or self._free(h) or timed_out or len(self._held) > self._max_held):
                break
            if timed_out and not h.seen_later and self._settings.lookahead_s > 0:
                timeouts += 1
            if h.side_wait:  # no run of a side detector near it came back: whole (its side_wait says why)
                h.boxes = None
            elif release_boxes(h.verdict, h.boxes, h.confirmed, self._settings, mosaic=mosaic) is None:
                unconfirmed += h.boxes is not None and h.verdict is Verdict.CARRIED
                h.boxes = None
            ready.append(self._held.popleft())
        return ready, timeouts, unconfirmed
