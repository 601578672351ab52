"""Validated request dataclasses of the socket.io API (see docs/PROTOCOL.md).

Every request payload must be a JSON object. ``from_dict`` checks types, lengths and the
SDP size and raises :class:`relay.errors.BadRequest` with a message that names the field.

Unknown fields are **rejected**, not ignored: a misspelt optional field (``"privat": true``)
would otherwise silently produce a public stream, and this server fails closed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Self

from relay.errors import BadRequest
from relay.settings import Settings

STREAM_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_KEY_LEN = 256  # publish keys, viewer ids and view tokens
SDP_TYPES = ("offer",)  # the server is always the answerer
# C0/C1 control characters: titles and categories are single-line text
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _fields_of(data: object, cls: type, known: frozenset[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadRequest(f"payload of {cls.__name__} must be a JSON object, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)[:200]}")
    return data


def _require(data: dict[str, Any], name: str) -> Any:
    if name not in data or data[name] is None:
        raise BadRequest(f"missing field: {name}")
    return data[name]


def _str(data: dict[str, Any], name: str, max_len: int) -> str:
    value = _require(data, name)
    if not isinstance(value, str):
        raise BadRequest(f"field {name} must be a string, got {type(value).__name__}")
    if not value:
        raise BadRequest(f"field {name} must not be empty")
    if len(value) > max_len:
        raise BadRequest(f"field {name} is too long ({len(value)} > {max_len} characters)")
    return value


def _text(data: dict[str, Any], name: str, max_len: int) -> str:
    """A single-line human text: stripped, no control characters, 1..max_len characters."""
    value = _str(data, name, max_len).strip()
    if not value:
        raise BadRequest(f"field {name} must not be blank")
    if _CONTROL_RE.search(value):
        raise BadRequest(f"field {name} must not contain control characters")
    return value


def _bool(data: dict[str, Any], name: str, *, default: bool | None = None) -> bool:
    if default is not None and data.get(name) is None:
        return default
    value = _require(data, name)
    if type(value) is not bool:  # reject 0/1: bool is a subclass of int
        raise BadRequest(f"field {name} must be a boolean, got {type(value).__name__}")
    return value


def _stream_id(data: dict[str, Any]) -> str:
    value = _str(data, "stream_id", 64)
    if not STREAM_ID_RE.match(value):
        raise BadRequest("field stream_id must match [A-Za-z0-9_-]{1,64}")
    return value


def _key(data: dict[str, Any], name: str) -> str:
    return _str(data, name, MAX_KEY_LEN)


def _optional_key(data: dict[str, Any], name: str) -> str | None:
    return None if data.get(name) is None else _key(data, name)


def _sdp(data: dict[str, Any], settings: Settings) -> tuple[str, str]:
    sdp = _require(data, "sdp")
    if not isinstance(sdp, str):
        raise BadRequest(f"field sdp must be a string, got {type(sdp).__name__}")
    size = len(sdp.encode("utf-8", errors="surrogatepass"))
    if size > settings.max_sdp_bytes:
        raise BadRequest(f"field sdp is too large ({size} > {settings.max_sdp_bytes} bytes)")
    if not sdp.startswith("v=0"):
        raise BadRequest("field sdp is not a session description (must start with v=0)")
    sdp_type = _require(data, "type")
    if sdp_type not in SDP_TYPES:
        raise BadRequest(f"field type must be one of {list(SDP_TYPES)}")
    return sdp, sdp_type


class Request:
    """Base of every request: ``from_dict(payload, settings)`` validates or raises BadRequest."""

    @classmethod
    def known_fields(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: object, settings: Settings) -> Self:
        raise NotImplementedError


@dataclass(frozen=True)
class CreateStreamRequest(Request):
    title: str
    category: str
    private: bool = False

    @classmethod
    def from_dict(cls, data: object, settings: Settings) -> Self:
        d = _fields_of(data, cls, cls.known_fields())
        return cls(
            title=_text(d, "title", settings.max_title_len),
            category=_text(d, "category", settings.max_category_len),
            private=_bool(d, "private", default=False),
        )


@dataclass(frozen=True)
class PublishRequest(Request):
    stream_id: str
    publish_key: str
    sdp: str
    type: str

    @classmethod
    def from_dict(cls, data: object, settings: Settings) -> Self:
        d = _fields_of(data, cls, cls.known_fields())
        stream_id = _stream_id(d)
        key = _key(d, "publish_key")
        sdp, sdp_type = _sdp(d, settings)
        return cls(stream_id=stream_id, publish_key=key, sdp=sdp, type=sdp_type)


@dataclass(frozen=True)
class ViewRequest(Request):
    stream_id: str
    sdp: str
    type: str
    token: str | None = None

    @classmethod
    def from_dict(cls, data: object, settings: Settings) -> Self:
        d = _fields_of(data, cls, cls.known_fields())
        stream_id = _stream_id(d)
        sdp, sdp_type = _sdp(d, settings)
        return cls(stream_id=stream_id, sdp=sdp, type=sdp_type, token=_optional_key(d, "token"))


@dataclass(frozen=True)
class ListStreamsRequest(Request):
    @classmethod
    def from_dict(cls, data: object, settings: Settings) -> Self:
        _fields_of(data, cls, cls.known_fields())
        return cls()


@dataclass(frozen=True)
class SetMosaicRequest(Request):
    stream_id: str
    publish_key: str
    enabled: bool

    @classmethod
    def from_dict(cls, data: object, settings: Settings) -> Self:
        d = _fields_of(data, cls, cls.known_fields())
        stream_id = _stream_id(d)
        key = _key(d, "publish_key")
        return cls(stream_id=stream_id, publish_key=key, enabled=_bool(d, "enabled"))


@dataclass(frozen=True)
class StopStreamRequest(Request):
    stream_id: str
    publish_key: str

    @classmethod
    def from_dict(cls, data: object, settings: Settings) -> Self:
        d = _fields_of(data, cls, cls.known_fields())
        stream_id = _stream_id(d)
        key = _key(d, "publish_key")
        return cls(stream_id=stream_id, publish_key=key)


@dataclass(frozen=True)
class LeaveRequest(Request):
    stream_id: str
    viewer_id: str

    @classmethod
    def from_dict(cls, data: object, settings: Settings) -> Self:
        d = _fields_of(data, cls, cls.known_fields())
        stream_id = _stream_id(d)
        viewer_id = _key(d, "viewer_id")
        return cls(stream_id=stream_id, viewer_id=viewer_id)


@dataclass(frozen=True)
class ViewTokenRequest(Request):
    """Mint a fresh view token for a private stream (publisher only)."""

    stream_id: str
    publish_key: str
    ttl_s: float | None = None

    @classmethod
    def from_dict(cls, data: object, settings: Settings) -> Self:
        d = _fields_of(data, cls, cls.known_fields())
        stream_id = _stream_id(d)
        key = _key(d, "publish_key")
        ttl = d.get("ttl_s")
        if ttl is not None:
            if type(ttl) not in (int, float) or not (60 <= ttl <= 7 * 24 * 3600):
                raise BadRequest("field ttl_s must be a number of seconds between 60 and 604800")
            ttl = float(ttl)
        return cls(stream_id=stream_id, publish_key=key, ttl_s=ttl)
