"""Validated request dataclasses of the socket.io API (see docs/PROTOCOL.md).

Every request payload must be a JSON object. ``from_dict`` checks types, lengths and the
SDP size and raises :class:`relay.errors.BadRequest` with a message that names the field.
Each request declares one validator per field (``FIELDS``); the checks live in the small
functions below, shared by every request.

Unknown fields are **rejected**, not ignored: a misspelt optional field (``"privat": true``)
would otherwise silently produce a public stream, and this server fails closed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from relay.errors import BadRequest
from relay.settings import Settings

STREAM_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_KEY_LEN = 256  # publish keys, viewer ids and view tokens
SDP_TYPES = ("offer",)  # the server is always the answerer
VIEW_TOKEN_TTL_RANGE_S = (60, 7 * 24 * 3600)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # titles and categories are single-line text

Payload = dict[str, Any]
# validator(payload, field name, settings) -> the field's value, or raises BadRequest
Validator = Callable[[Payload, str, Settings], Any]
_MISSING = object()


def _value(data: Payload, name: str, default: Any = _MISSING) -> Any:
    value = data.get(name)
    if value is None:
        if default is not _MISSING:
            return default
        raise BadRequest(f"missing field: {name}")
    return value


def _str(data: Payload, name: str, max_len: int) -> str:
    value = _value(data, name)
    if not isinstance(value, str):
        raise BadRequest(f"field {name} must be a string, got {type(value).__name__}")
    if not value:
        raise BadRequest(f"field {name} must not be empty")
    if len(value) > max_len:
        raise BadRequest(f"field {name} is too long ({len(value)} > {max_len} characters)")
    return value


# --- validators (one per kind of field) --------------------------------------------------------


def check_stream_id(data: Payload, name: str, settings: Settings) -> str:
    value = _str(data, name, 64)
    if not STREAM_ID_RE.match(value):
        raise BadRequest(f"field {name} must match [A-Za-z0-9_-]{{1,64}}")
    return value


def check_key(data: Payload, name: str, settings: Settings) -> str:
    """Publish keys, viewer ids."""
    return _str(data, name, MAX_KEY_LEN)


def check_optional_key(data: Payload, name: str, settings: Settings) -> str | None:
    return None if data.get(name) is None else check_key(data, name, settings)


def check_text(max_len: Callable[[Settings], int]) -> Validator:
    """A single-line human text: stripped, no control characters, 1..max_len characters."""

    def check(data: Payload, name: str, settings: Settings) -> str:
        value = _str(data, name, max_len(settings)).strip()
        if not value:
            raise BadRequest(f"field {name} must not be blank")
        if _CONTROL_RE.search(value):
            raise BadRequest(f"field {name} must not contain control characters")
        return value

    return check


def check_bool(default: bool | None = None) -> Validator:
    def check(data: Payload, name: str, settings: Settings) -> bool:
        value = _value(data, name, _MISSING if default is None else default)
        if type(value) is not bool:  # reject 0/1: bool is a subclass of int
            raise BadRequest(f"field {name} must be a boolean, got {type(value).__name__}")
        return value

    return check


def check_sdp(data: Payload, name: str, settings: Settings) -> str:
    value = _value(data, name)
    if not isinstance(value, str):
        raise BadRequest(f"field {name} must be a string, got {type(value).__name__}")
    size = len(value.encode("utf-8", errors="surrogatepass"))
    if size > settings.max_sdp_bytes:
        raise BadRequest(f"field {name} is too large ({size} > {settings.max_sdp_bytes} bytes)")
    if not value.startswith("v=0"):
        raise BadRequest(f"field {name} is not a session description (must start with v=0)")
    return value


def check_sdp_type(data: Payload, name: str, settings: Settings) -> str:
    value = _value(data, name)
    if value not in SDP_TYPES:
        raise BadRequest(f"field {name} must be one of {list(SDP_TYPES)}")
    return str(value)


def check_ttl(data: Payload, name: str, settings: Settings) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    lo, hi = VIEW_TOKEN_TTL_RANGE_S
    if type(value) not in (int, float) or not lo <= value <= hi:
        raise BadRequest(f"field {name} must be a number of seconds between {lo} and {hi}")
    return float(value)


# --- requests ----------------------------------------------------------------------------------


class Request:
    """Base of every request: ``from_dict(payload, settings)`` validates or raises BadRequest."""

    FIELDS: ClassVar[Mapping[str, Validator]] = {}

    @classmethod
    def from_dict(cls, data: object, settings: Settings) -> Self:
        if not isinstance(data, dict):
            raise BadRequest(f"payload of {cls.__name__} must be a JSON object, got {type(data).__name__}")
        unknown = sorted(str(k) for k in data if k not in cls.FIELDS)
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(unknown)[:200]}")
        return cls(**{name: check(data, name, settings) for name, check in cls.FIELDS.items()})


@dataclass(frozen=True)
class CreateStreamRequest(Request):
    title: str
    category: str
    private: bool = False

    FIELDS = {
        "title": check_text(lambda s: s.max_title_len),
        "category": check_text(lambda s: s.max_category_len),
        "private": check_bool(default=False),
    }


@dataclass(frozen=True)
class PublishRequest(Request):
    stream_id: str
    publish_key: str
    sdp: str
    type: str

    FIELDS = {
        "stream_id": check_stream_id,
        "publish_key": check_key,
        "sdp": check_sdp,
        "type": check_sdp_type,
    }


@dataclass(frozen=True)
class ViewRequest(Request):
    stream_id: str
    sdp: str
    type: str
    token: str | None = None

    FIELDS = {
        "stream_id": check_stream_id,
        "sdp": check_sdp,
        "type": check_sdp_type,
        "token": check_optional_key,
    }


@dataclass(frozen=True)
class ListStreamsRequest(Request):
    """No fields."""


@dataclass(frozen=True)
class SetMosaicRequest(Request):
    stream_id: str
    publish_key: str
    enabled: bool

    FIELDS = {"stream_id": check_stream_id, "publish_key": check_key, "enabled": check_bool()}


@dataclass(frozen=True)
class SetTextNetRequest(Request):
    stream_id: str
    publish_key: str
    enabled: bool

    FIELDS = {"stream_id": check_stream_id, "publish_key": check_key, "enabled": check_bool()}


@dataclass(frozen=True)
class StopStreamRequest(Request):
    stream_id: str
    publish_key: str

    FIELDS = {"stream_id": check_stream_id, "publish_key": check_key}


@dataclass(frozen=True)
class LeaveRequest(Request):
    stream_id: str
    viewer_id: str

    FIELDS = {"stream_id": check_stream_id, "viewer_id": check_key}


@dataclass(frozen=True)
class ViewTokenRequest(Request):
    """Mint a fresh view token for a private stream (publisher only)."""

    stream_id: str
    publish_key: str
    ttl_s: float | None = None

    FIELDS = {"stream_id": check_stream_id, "publish_key": check_key, "ttl_s": check_ttl}
