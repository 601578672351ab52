"""Every request body is bounded before a handler sees it (an aiohttp middleware).

- ``Content-Length`` above ``max_message_bytes``: ``413`` at once, nothing read.
- A chunked (or lying) body is read up to ``max_message_bytes``; one byte more: ``413``.
- A body that has not arrived completely within ``body_timeout_s``: ``408``.
- A body still arriving when the server shuts down: ``503``.

Each of these answers ends the HTTP connection (``Connection: close``; after at most
``DRAIN_S`` of reading what the client still sends, so that it can read the answer, the socket is
closed). A body that passed is kept by aiohttp (``await request.read()`` returns it again), and
the engine.io server reads it from there (``signaling/eio.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_exceptions import HTTPRequestEntityTooLarge

from signaling.logquiet import QuietLog

log = logging.getLogger(__name__)

DRAIN_S = 0.3  # after a refusal, read (and drop) what the client still sends for this long at most
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RejectHook = Callable[[web.Request, int], Awaitable[None]]


class BodyGuard:
    """The body middleware of one app, and the bodies it is waiting for (cut at shutdown)."""

    def __init__(self, limit: int, timeout_s: float, quiet: QuietLog) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self.quiet = quiet
        self.on_reject: RejectHook | None = None  # e.g. drop the engine.io session of a refused POST
        self._reading: set[asyncio.Timeout] = set()
        self._closing = False

    def cut_all(self) -> None:
        """Shutdown: every body still being read is refused now (``503``)."""
        self._closing = True
        now = asyncio.get_running_loop().time()
        for timeout in list(self._reading):
            timeout.reschedule(now)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        length = request.content_length
        if length is not None and length > self.limit:
            return await self._refuse(request, 413, f"a body of {length} bytes (limit {self.limit})")
        if request.body_exists:
            if self._closing:
                return await self._refuse(request, 503, "a body during shutdown")
            refused = await self._read(request)
            if refused is not None:
                return refused
        return await handler(request)

    async def _read(self, request: web.Request) -> web.StreamResponse | None:
        try:
            async with asyncio.timeout(self.timeout_s) as timeout:
                self._reading.add(timeout)
                try:
                    await request.read()  # aiohttp stops at client_max_size (limit + 1)
                finally:
                    self._reading.discard(timeout)
        except HTTPRequestEntityTooLarge:
            return await self._refuse(request, 413, f"a body over {self.limit} bytes")
        except TimeoutError:
            if self._closing:
                return await self._refuse(request, 503, "a body cut by the shutdown")
            return await self._refuse(request, 408, f"a body incomplete after {self.timeout_s:.0f} s")
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            self.quiet.report(f"body not received ({type(exc).__name__})")
            return await self._refuse(request, 400, "an interrupted body")
        return None

    async def _refuse(self, request: web.Request, status: int, what: str) -> web.StreamResponse:
        self.quiet.report(f"{request.method} {request.path[:64]}: {what}: {status}")
        code, text = {
            408: ("timeout", "request body too slow"),
            413: ("payload_too_large", "request body too large"),
            503: ("shutting_down", "server shutting down"),
        }.get(status, ("bad_request", "bad request body"))
        # the JSON error shape of the HTTP APIs (docs/PROTOCOL.md), whichever route was asked
        response = web.json_response(
            {"error": {"code": code, "message": text}}, status=status, headers={"Connection": "close"}
        )
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        await self._drain(request)
        request.protocol.force_close()  # the answer is written; no lingering read of the rest
        if self.on_reject is not None:  # after the answer: it may take a while (a stream may end)
            try:
                await self.on_reject(request, status)
            except Exception as exc:
                log.warning("body refusal hook failed: %s", type(exc).__name__)
        return response

    @staticmethod
    async def _drain(request: web.Request) -> None:
        """Read (and drop) what the client still sends for a moment: closing a socket with unread
        data resets the connection, and the client might lose the answer."""
        try:
            async with asyncio.timeout(DRAIN_S):
                while await request.content.readany():
                    pass
        except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except Exception:  # the payload already failed (e.g. too large): nothing more to read
            pass
