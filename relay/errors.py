"""Errors that carry a machine-readable code back to API clients.

Every request in the socket.io API is answered with either a result or an
error object ``{"code": ..., "message": ...}``; these exceptions are how the
relay and signaling layers produce the latter.
"""

from __future__ import annotations


class RelayError(Exception):
    """An error with a stable ``code`` that is safe to show to a client."""

    code = "internal_error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class BadRequest(RelayError, ValueError):
    code = "bad_request"


class NotFound(RelayError, LookupError):
    code = "not_found"


class Forbidden(RelayError, PermissionError):
    code = "forbidden"


class Conflict(RelayError):
    code = "conflict"


class LimitExceeded(RelayError):
    code = "limit_exceeded"


class RateLimited(RelayError):
    code = "rate_limited"
