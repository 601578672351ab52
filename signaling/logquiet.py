"""Quiet, secret-free logs under bad input.

- :class:`QuietLog`: a client's bad input (malformed engine.io/socket.io packets, oversized or
  slow bodies, limits hit) is logged as one WARNING line per client address per minute at most
  (address and a short reason), the rest at DEBUG; never with a traceback.
- :class:`LibraryLogger`: the logger handed to engine.io and socket.io. Their warnings and errors
  (about client input, nearly always) go through :class:`QuietLog`; their INFO chatter goes to
  DEBUG with packet data reduced to its type and length (packets carry publish keys and view
  tokens). They get no handler of their own, so nothing is printed beside the root logger.
- :class:`SecretFilter`: a last line of defence on the root handlers: anything shaped like a
  publish key or a view token is replaced by ``[redacted]``.

``PEER`` holds the client address of the request being handled (set by the engine.io server in
``signaling/eio.py``); tasks started while handling it inherit it.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from contextvars import ContextVar
from typing import Any

PEER: ContextVar[str] = ContextVar("mosaic_peer", default="-")

QUIET_PERIOD_S = 60.0
MAX_REASON_CHARS = 160
MAX_TRACKED = 10_000

log = logging.getLogger("signaling.badinput")


def short(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """One line, printable, at most ``limit`` characters."""
    text = "".join(c if c.isprintable() else " " for c in text.replace("\n", " "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, short (the message may quote client input: cut)."""
    msg = str(exc)
    return short(f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__, 100)


class QuietLog:
    """At most one WARNING per key (client address) per ``period_s``; DEBUG for the rest."""

    def __init__(
        self,
        logger: logging.Logger = log,
        period_s: float = QUIET_PERIOD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._period = period_s
        self._clock = clock
        self._last: OrderedDict[str, float] = OrderedDict()

    def report(self, reason: str, peer: str | None = None) -> None:
        peer = peer or PEER.get()
        now = self._clock()
        last = self._last.get(peer)
        if last is not None and now - last < self._period:
            if self._log.isEnabledFor(logging.DEBUG):
                self._log.debug("bad input from %s: %s", peer, short(reason))
            return
        self._last[peer] = now
        self._last.move_to_end(peer)
        while len(self._last) > MAX_TRACKED:
            self._last.popitem(last=False)
        self._log.warning(
            "bad input from %s: %s (more from this address within %.0f s: DEBUG only)",
            peer,
            short(reason),
            self._period,
        )


def _summary(arg: Any) -> Any:
    """Log arguments of engine.io/socket.io without their packet data."""
    if isinstance(arg, (int, float, bool)) or arg is None:
        return arg
    if isinstance(arg, str) and len(arg) <= 32 and arg.isprintable():
        return arg  # sids, event names, namespaces, packet type names
    if isinstance(arg, (str, bytes, bytearray, list, tuple, dict)):
        return f"<{type(arg).__name__} of {len(arg)}>"
    return f"<{type(arg).__name__}>"


class LibraryLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The ``logger`` of engine.io / socket.io (see the module docstring)."""

    def __init__(self, logger: logging.Logger, quiet: QuietLog) -> None:
        super().__init__(logger, {})
        self.quiet = quiet

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        exc_info = kwargs.pop("exc_info", None)
        safe = tuple(_summary(a) for a in args)
        try:
            text = str(msg) % safe if safe else str(msg)
        except (TypeError, ValueError):
            text = str(msg)
        if level >= logging.WARNING:
            if exc_info:
                exc = exc_info[1] if isinstance(exc_info, tuple) else None
                if exc is None and isinstance(exc_info, BaseException):
                    exc = exc_info
                if exc is not None:
                    text += f" ({describe(exc)})"
            self.quiet.report(f"{self.logger.name}: {text}")
        elif self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("%s", short(text, 300))

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return msg, kwargs


# token_urlsafe(32) (publish keys) is 43 URL-safe characters; view tokens are "<epoch>.<64 hex>"
_SECRET_PATTERNS = (
    re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])"),
    re.compile(r"\b\d{9,12}\.[0-9a-f]{64}\b"),
)


def redact(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("[redacted]", text)
    return text


class SecretFilter(logging.Filter):
    """Replace anything shaped like a publish key or view token in a record by ``[redacted]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if clean != message:
            record.msg, record.args = clean, None
        return True
