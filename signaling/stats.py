"""The publisher page's live stats: a ``stream_stats`` event about once a second, to the stream's
publisher only (docs/PROTOCOL.md).

One task per live stream published over socket.io (``stats-<stream_id>``, referenced here),
started when the publish succeeds and cancelled when the stream ends (``SignalingState.forget_stream``)
or the server shuts down. Each tick sends ``room.metrics.snapshot()`` (relay/metrics.py) to the
``/publisher`` connection that owns the stream (``SignalingState.owned``); nobody else gets it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from relay.tasks import TaskSet

if TYPE_CHECKING:
    from signaling.base import SignalingState

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 1.0
STATS_EVENT = "stream_stats"


class StatsFeed:
    """The per-stream ``stream_stats`` tasks of one app."""

    def __init__(self, state: SignalingState, interval_s: float = STATS_INTERVAL_S) -> None:
        self._state = state
        self._interval_s = interval_s
        self._tasks = TaskSet("stats")
        self._by_stream: dict[str, asyncio.Task[Any]] = {}

    def __len__(self) -> int:
        return len(self._by_stream)

    def start(self, stream_id: str) -> None:
        """Feed the publisher of ``stream_id`` (idempotent)."""
        if stream_id in self._by_stream:
            return
        task = self._tasks.create(self._run(stream_id), f"stats-{stream_id}")
        self._by_stream[stream_id] = task
        task.add_done_callback(lambda t: self._forget(stream_id, t))

    def stop(self, stream_id: str) -> None:
        """The stream ended: cancel its task (it ends at its next await)."""
        task = self._by_stream.pop(stream_id, None)
        if task is not None:
            task.cancel()

    def _forget(self, stream_id: str, task: asyncio.Task[Any]) -> None:
        if self._by_stream.get(stream_id) is task:
            del self._by_stream[stream_id]

    async def close(self, grace_s: float = 1.0) -> None:
        self._by_stream.clear()
        await self._tasks.close(grace_s)

    def owners(self, stream_id: str) -> list[str]:
        """The ``/publisher`` sids that own ``stream_id`` (one, or none while it changes hands)."""
        return [sid for sid, streams in self._state.owned.items() if stream_id in streams]

    async def _run(self, stream_id: str) -> None:
        from signaling.base import PUBLISHER_NS

        state = self._state
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                room = state.registry.get(stream_id)
            except LookupError:
                return  # ended; forget_stream cancels us too
            message = {"stream_id": stream_id, "stats": room.metrics.snapshot()}
            for sid in self.owners(stream_id):
                await state.sio.emit(STATS_EVENT, message, to=sid, namespace=PUBLISHER_NS)
