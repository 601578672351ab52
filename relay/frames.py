"""Frame source stage: the publisher's track drained into a one-frame slot, newest frame wins.

aiortc's queue of decoded frames is unbounded; :class:`NewestFrameSource` reads it as fast as it
fills (a task on the event loop, no pixel work) and keeps only the newest frame: an older one that
was not taken yet is counted in ``dropped_stale``. :func:`frame_to_i420` is the one conversion a
frame gets (blocking: call it off the event loop).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from relay.metrics import PipelineMetrics, StreamMetrics
from relay.tasks import TaskSet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputFrame:
    frame: VideoFrame
    t_arrival: float  # monotonic, when it left the source
    seq: int  # 1, 2, ... in arrival order (dropped frames leave gaps)


def frame_to_i420(frame: VideoFrame) -> np.ndarray:
    """Planar yuv420p copy of ``frame`` (odd sizes are cropped by one pixel). Blocking."""
    w, h = frame.width & ~1, frame.height & ~1
    if frame.format.name != "yuv420p" or (w, h) != (frame.width, frame.height):
        frame = frame.reformat(width=w, height=h, format="yuv420p")
    return np.ascontiguousarray(frame.to_ndarray())


class NewestFrameSource:
    """Drains ``track`` into a one-frame slot. ``notify`` is called (event loop) on every new frame
    and when the track ends. Counts ``frames_in`` and ``dropped_stale`` into ``metrics``."""

    def __init__(
        self,
        track: MediaStreamTrack,
        notify: Callable[[], None],
        metrics: PipelineMetrics,
        stream: StreamMetrics | None = None,
        *,
        name: str = "source",
    ) -> None:
        self._track = track
        self._notify = notify
        self._metrics = metrics
        self._stream = stream
        self._name = name
        self._tasks = TaskSet(name)
        self._slot: InputFrame | None = None
        self._seq = 0
        self.ended = False

    def start(self) -> None:
        self._tasks.create(self._read(), "reader")

    async def stop(self, grace_s: float = 2.0) -> None:
        await self._tasks.close(grace_s)

    @property
    def task_count(self) -> int:
        return len(self._tasks)

    def take(self) -> InputFrame | None:
        """The newest frame not taken yet, if any (event loop)."""
        frame, self._slot = self._slot, None
        return frame

    async def _read(self) -> None:
        try:
            while True:
                frame = await self._track.recv()
                if not isinstance(frame, VideoFrame):
                    continue
                self._seq += 1
                self._metrics.frames_in += 1
                if self._stream is not None:
                    self._stream.frame_in()
                if self._slot is not None:
                    self._metrics.dropped_stale += 1
                self._slot = InputFrame(frame, time.monotonic(), self._seq)
                self._notify()
        except MediaStreamError:
            logger.debug("%s: source ended", self._name)
        finally:
            self.ended = True
            self._notify()
