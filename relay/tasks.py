"""A small task group: every task named, referenced, logged if it fails, cancelled and awaited on close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)

#: every live TaskSet task in the process, for leak tests
_LIVE: set[asyncio.Task[Any]] = set()


def live_task_count() -> int:
    """Number of tasks started through any :class:`TaskSet` that have not finished yet."""
    return sum(1 for t in _LIVE if not t.done())


class TaskSet:
    """Holds references to the tasks it creates so they are not garbage-collected mid-run."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def create(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self._owner}: task set is closed")
        task = asyncio.get_running_loop().create_task(coro, name=f"{self._owner}:{name}")
        self._tasks.add(task)
        _LIVE.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        _LIVE.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("task %s failed", task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self, grace_s: float) -> None:
        """Cancel every task and wait for them (at most ``grace_s`` seconds). Idempotent."""
        self._closed = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=grace_s)
        for t in pending:
            logger.warning("task %s did not stop within %.1f s", t.get_name(), grace_s)
