"""Side detectors on their own thread, beside the detection step (the text/barcode safety net).

Live, a :class:`relay.detection.DetectorSpec` marked ``own_thread`` is not run inside the detection
step: :class:`Sidecar` runs it on its own executor, so a frame's YOLO step never waits for it, on a
frame every ``stride`` frames (the minimum of the side detectors' strides) whenever it is not already
running, and at once on the first frame of a new scene or size or once ``max_interval_s`` (capture
time) has passed since its last start: at low frame rates a stride of frames is long, and a run must
land while the frames after it can still use it (relay/policy.py ``side_covers``). When a run
finishes, ``on_result`` gets the frame it ran on and its result or failure (relay/core.py
``SanitizeCore.on_side``: the boxes join the tracker stamped with that frame's time and the frames
still waiting for lookahead, and the frames near it stop waiting for it; a failure fails closed; a
frame with no good run near it goes out whole).

``nice``: the sidecar's own thread runs that much nicer than the process (``Settings.text_net_nice``).

At most one run is pending per stream (the executor, possibly shared by the rooms, holds at most one
item per stream: bounded). ``on_result`` is called from the executor's thread without any lock of
this class held; no future is cancelled under the lock (its callbacks would run under it).
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np

from relay.detection import DetectionFailed, DetectionResult, DetectorSet, outcome
from relay.policy import FrameRef

OnSide = Callable[[FrameRef, DetectionResult | DetectionFailed, tuple[str, ...]], None]


def lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux: per thread), so that the side
    detector only takes CPU the YOLO step and the encoder leave; a side detector starved by it gives
    stale results, hence whole frames (fail closed). No-op where unsupported."""
    if nice <= 0:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError):  # not Linux, or not permitted
        pass


class Sidecar:
    def __init__(
        self,
        detectors: DetectorSet,
        on_result: OnSide,
        executor: Executor | None = None,
        name: str = "side",
        nice: int = 0,
        max_interval_s: float = float("inf"),
    ) -> None:
        self._detectors = detectors
        self._names = tuple(s.name for s in detectors.side)
        self._stride = min((s.stride for s in detectors.side), default=1)
        self._max_interval_s = max_interval_s
        self._on_result = on_result
        self._own = executor is None and bool(self._names)
        self._executor: Executor | None = executor
        if self._own:
            self._executor = ThreadPoolExecutor(
                1, thread_name_prefix=f"{name}-side", initializer=lower_priority, initargs=(nice,)
            )
        self._lock = threading.Lock()
        self._pending: concurrent.futures.Future[Any] | None = None
        self._last: FrameRef | None = None  # the frame of its last start
        self._stopped = False

    def active(self, skip: frozenset[str]) -> frozenset[str]:
        """The side detectors a stream runs (all but those it switched off, ``skip``)."""
        return frozenset(n for n in self._names if n not in skip)

    def maybe_start(self, buf: np.ndarray, ref: FrameRef, skip: frozenset[str]) -> bool:
        """Start a run on ``buf`` (planar yuv420p, copied) if one is due and none is running."""
        names = tuple(sorted(self.active(skip)))
        if not names:
            return False
        failed: DetectionFailed | None = None
        with self._lock:
            if self._pending is not None or self._stopped or self._executor is None:
                return False
            last = self._last
            if (
                last is not None
                and last.same_scene(ref)
                and ref.seq - last.seq < self._stride
                and ref.t_frame - last.t_frame < self._max_interval_s
            ):
                return False
            self._last = ref
            try:
                pending = self._executor.submit(self._detectors.run_i420, buf.copy(), 0, skip, "side")
            except RuntimeError as exc:  # executor shut down (server stopping)
                failed = DetectionFailed(f"cannot run {'+'.join(names)}: {exc}")
            else:
                self._pending = pending
        if failed is not None:
            self._on_result(ref, failed, names)
            return False
        pending.add_done_callback(partial(self._done, ref, names))
        return True

    def _done(self, ref: FrameRef, names: tuple[str, ...], f: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            if self._pending is f:
                self._pending = None
            if f.cancelled() or self._stopped:
                return
        self._on_result(ref, outcome(f), names)

    def stop(self) -> None:
        """Cancel a pending run; release the thread if it is this sidecar's own. Idempotent.

        The cancel happens outside the lock: cancelling a queued run calls its done callback
        (:meth:`_done`, which takes the lock) at once, in this thread."""
        with self._lock:
            self._stopped = True
            pending = self._pending
        if pending is not None:
            pending.cancel()
        if self._own and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
