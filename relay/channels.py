"""Persistent channels (``--channels FILE``): streams the operator defines once, for OBS users who
paste a URL and a key once (issue #13).

A channel is a stream id with a title, a category, a privacy flag and a publish key (or its
SHA-256). It never expires; it is published like any stream (socket.io ``publish``, WHIP
``POST /whip/{stream_id}``, the restream API, all with its key), listed while live, and when its
stream ends the next publish gets a fresh room under the same id. Channels come from the file, so
they survive restarts. :class:`relay.registry.RoomRegistry` makes a channel's room on demand
(``RoomRegistry.get``).

The file is TOML (``.toml``) or JSON (``.json``)::

    [[channel]]
    stream_id = "desk"                  # [A-Za-z0-9_-]{1,64}
    title = "My desk"
    category = "talk"
    private = false                     # optional
    publish_key_hash = "sha256:<64 hex>"  # or publish_key = "<the key>" (kept only as its hash)

(JSON: ``{"channel": [{...}, ...]}`` or a bare list.) Make a key and its hash with
``python -m relay.channels new`` (or hash your own: ``python -m relay.channels hash`` reads it from
stdin). Keys are compared as SHA-256 digests in constant time; no key or hash is ever logged or put
in an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STREAM_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # as signaling/messages.py check_stream_id
HASH_RE = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
MIN_KEY_LEN = 16
MAX_TEXT_LEN = 120
_FIELDS = {"stream_id", "title", "category", "private", "publish_key", "publish_key_hash"}


class ChannelsError(ValueError):
    """The channels file is unreadable or invalid (the message names the place, never a key)."""


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def hash_key(key: str) -> str:
    """``sha256:<hex>``: what goes into the file instead of the key."""
    return "sha256:" + key_digest(key).hex()


def keys_match(key: object, digest: bytes) -> bool:
    """Whether ``key`` has the SHA-256 ``digest``, compared in constant time."""
    return isinstance(key, str) and hmac.compare_digest(key_digest(key), digest)


@dataclass(frozen=True)
class Channel:
    stream_id: str
    title: str
    category: str
    private: bool
    key_digest: bytes  # SHA-256 of the publish key

    def __repr__(self) -> str:  # no digest in logs either
        return f"Channel({self.stream_id!r}, private={self.private})"


def _text(entry: Mapping[str, Any], name: str, where: str) -> str:
    value = entry.get(name)
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > MAX_TEXT_LEN:
        raise ChannelsError(f"{where}: {name} must be a text of 1..{MAX_TEXT_LEN} characters")
    if any(ord(c) < 32 for c in value):
        raise ChannelsError(f"{where}: {name} has control characters")
    return value.strip()


def parse_channel(entry: Any, where: str) -> Channel:
    if not isinstance(entry, Mapping):
        raise ChannelsError(f"{where}: a channel is a table/object")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ChannelsError(f"{where}: unknown fields {unknown}")
    stream_id = entry.get("stream_id")
    if not isinstance(stream_id, str) or not STREAM_ID_RE.match(stream_id):
        raise ChannelsError(f"{where}: stream_id must match [A-Za-z0-9_-]{{1,64}}")
    where = f"{where} ({stream_id})"
    private = entry.get("private", False)
    if not isinstance(private, bool):
        raise ChannelsError(f"{where}: private must be true or false")
    key, hashed = entry.get("publish_key"), entry.get("publish_key_hash")
    if (key is None) == (hashed is None):
        raise ChannelsError(f"{where}: give exactly one of publish_key and publish_key_hash")
    if key is not None:
        if not isinstance(key, str) or len(key) < MIN_KEY_LEN or len(key) > 256:
            raise ChannelsError(f"{where}: publish_key must be {MIN_KEY_LEN}..256 characters")
        digest = key_digest(key)
    else:
        m = HASH_RE.match(hashed) if isinstance(hashed, str) else None
        if m is None:
            raise ChannelsError(f"{where}: publish_key_hash must be sha256:<64 hex digits>")
        digest = bytes.fromhex(m.group(1))
    return Channel(stream_id, _text(entry, "title", where), _text(entry, "category", where), private, digest)


def parse_channels(data: Any, where: str = "channels") -> dict[str, Channel]:
    """Channels from a parsed file: ``{"channel": [...]}`` or a list of channel tables."""
    entries = data.get("channel", []) if isinstance(data, Mapping) else data
    if isinstance(data, Mapping) and set(data) - {"channel"}:
        raise ChannelsError(f"{where}: only [[channel]] tables are allowed")
    if not isinstance(entries, list):
        raise ChannelsError(f"{where}: expected a list of channels")
    channels: dict[str, Channel] = {}
    for i, entry in enumerate(entries):
        channel = parse_channel(entry, f"{where}: channel {i + 1}")
        if channel.stream_id in channels:
            raise ChannelsError(f"{where}: stream_id {channel.stream_id!r} appears twice")
        channels[channel.stream_id] = channel
    return channels


def load_channels(path: Path) -> dict[str, Channel]:
    """Read ``path`` (TOML, or JSON for ``.json``). Raises :class:`ChannelsError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ChannelsError(f"cannot read the channels file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError and json.JSONDecodeError are ValueErrors
        # the messages name a line and column, not the content
        raise ChannelsError(f"{path}: not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}") from None
    return parse_channels(data, str(path))


def main(argv: list[str]) -> int:
    """``new``: print a fresh key and its hash; ``hash``: hash the key read from stdin."""
    if argv == ["new"]:
        key = secrets.token_urlsafe(32)
        print(f"publish key (give it to the streamer): {key}")
        print(f'publish_key_hash = "{hash_key(key)}"')
        return 0
    if argv == ["hash"]:
        key = sys.stdin.readline().rstrip("\r\n")
        if len(key) < MIN_KEY_LEN:
            print(f"a publish key has at least {MIN_KEY_LEN} characters", file=sys.stderr)
            return 2
        print(f'publish_key_hash = "{hash_key(key)}"')
        return 0
    print("usage: python -m relay.channels new | hash  (hash reads the key from stdin)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
