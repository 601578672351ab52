"""Access control of the signaling layer: per-connection rate limit and private-stream view tokens.

Publish keys are checked by ``Room.check_key`` (constant time) in ``relay/room.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from relay.errors import Forbidden

DEFAULT_VIEW_TOKEN_TTL_S = 6 * 3600.0


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; one request costs one token."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class ViewTokens:
    """Signed, expiring view tokens for private streams.

    A token is ``"<expiry epoch seconds>.<hex HMAC-SHA256(secret, "<stream_id>|<expiry>")>"``.
    """

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 16:
            raise ValueError("view_token_secret must be at least 16 bytes")
        self._secret = secret
        self._clock = clock

    def _sign(self, stream_id: str, expiry: int) -> str:
        msg = f"{stream_id}|{expiry}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def issue(self, stream_id: str, ttl_s: float = DEFAULT_VIEW_TOKEN_TTL_S) -> tuple[str, int]:
        """Return ``(token, expiry)``."""
        expiry = int(self._clock() + ttl_s)
        return f"{expiry}.{self._sign(stream_id, expiry)}", expiry

    def check(self, stream_id: str, token: str | None) -> None:
        """Raise Forbidden unless ``token`` is a valid, unexpired token for ``stream_id``."""
        if not token:
            raise Forbidden("this stream is private: a view token is required")
        expiry_text, _, signature = token.partition(".")
        if not expiry_text.isdigit() or len(expiry_text) > 12:
            raise Forbidden("invalid view token")
        expiry = int(expiry_text)
        expected = self._sign(stream_id, expiry).encode()
        if not hmac.compare_digest(expected, signature.encode("utf-8", "surrogatepass")):
            raise Forbidden("invalid view token")
        if expiry < self._clock():
            raise Forbidden("view token expired")
