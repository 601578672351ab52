"""RTMP's wire formats (AMF0 values, chunked messages), pure: no sockets (relay/rtmp.py sends them)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


class RtmpError(Exception):
    """The connection failed or the server refused; the message never holds the stream key."""


# message types
SET_CHUNK_SIZE, ABORT, ACK, USER_CONTROL, WINDOW_ACK_SIZE, SET_PEER_BW = 1, 2, 3, 4, 5, 6
AUDIO, VIDEO, DATA_AMF0, COMMAND_AMF0 = 8, 9, 18, 20
PING_REQUEST, PING_RESPONSE = 6, 7
# chunk stream ids (as ffmpeg uses them)
CSID_CONTROL, CSID_COMMAND, CSID_AUDIO, CSID_VIDEO = 2, 3, 4, 6


# --- AMF0 -------------------------------------------------------------------------------------


def amf_encode(value: Any) -> bytes:
    if value is None:
        return b"\x05"
    if isinstance(value, bool):
        return b"\x01" + (b"\x01" if value else b"\x00")
    if isinstance(value, (int, float)):
        return b"\x00" + struct.pack(">d", float(value))
    if isinstance(value, str):
        raw = value.encode()
        return b"\x02" + struct.pack(">H", len(raw)) + raw
    if isinstance(value, dict):
        body = b"".join(
            struct.pack(">H", len(k.encode())) + k.encode() + amf_encode(v) for k, v in value.items()
        )
        return b"\x03" + body + b"\x00\x00\x09"
    raise TypeError(f"cannot encode {type(value).__name__} as AMF0")


def _amf_decode_one(data: bytes, pos: int) -> tuple[Any, int]:
    marker = data[pos]
    pos += 1
    if marker == 0x00:
        return struct.unpack_from(">d", data, pos)[0], pos + 8
    if marker == 0x01:
        return data[pos] != 0, pos + 1
    if marker == 0x02:
        (n,) = struct.unpack_from(">H", data, pos)
        return data[pos + 2 : pos + 2 + n].decode("utf-8", "replace"), pos + 2 + n
    if marker in (0x03, 0x08):  # object, ECMA array
        if marker == 0x08:
            pos += 4
        obj: dict[str, Any] = {}
        while True:
            (n,) = struct.unpack_from(">H", data, pos)
            key = data[pos + 2 : pos + 2 + n].decode("utf-8", "replace")
            pos += 2 + n
            if n == 0 and data[pos] == 0x09:
                return obj, pos + 1
            obj[key], pos = _amf_decode_one(data, pos)
    if marker in (0x05, 0x06):  # null, undefined
        return None, pos
    raise ValueError(f"unsupported AMF0 marker {marker}")


def amf_decode(data: bytes) -> list[Any]:
    """Decode the AMF0 values of a command message (stops at the first unsupported value)."""
    out: list[Any] = []
    pos = 0
    try:
        while pos < len(data):
            value, pos = _amf_decode_one(data, pos)
            out.append(value)
    except (ValueError, IndexError, struct.error):
        pass
    return out


# --- chunks -----------------------------------------------------------------------------------


def encode_chunks(
    csid: int, msg_type: int, stream_id: int, timestamp: int, payload: bytes, chunk_size: int
) -> bytes:
    """One message as chunks: a type-0 header, then type-3 continuations (csid 2..63)."""
    ts = timestamp & 0xFFFFFFFF
    extended = ts >= 0xFFFFFF
    ext = struct.pack(">I", ts) if extended else b""
    header = (
        bytes([csid & 0x3F])
        + (0xFFFFFF if extended else ts).to_bytes(3, "big")
        + len(payload).to_bytes(3, "big")
        + bytes([msg_type])
        + struct.pack("<I", stream_id)
        + ext
    )
    parts = [header, payload[:chunk_size]]
    for i in range(chunk_size, len(payload), chunk_size):
        parts.append(bytes([0xC0 | (csid & 0x3F)]) + ext)
        parts.append(payload[i : i + chunk_size])
    return b"".join(parts)


@dataclass
class _InChunkStream:
    timestamp: int = 0
    delta: int = 0
    length: int = 0
    msg_type: int = 0
    stream_id: int = 0
    extended: bool = False
    body: bytearray = field(default_factory=bytearray)


@dataclass
class Message:
    msg_type: int
    stream_id: int
    timestamp: int
    payload: bytes


class ChunkReader:
    """Incremental parser of the server's chunk stream: :meth:`feed` bytes, get whole messages."""

    def __init__(self) -> None:
        self.chunk_size = 128
        self._buf = bytearray()
        self._streams: dict[int, _InChunkStream] = {}

    def feed(self, data: bytes) -> Iterator[Message]:
        self._buf += data
        while True:
            msg, ok = self._next()
            if not ok:
                return
            if msg is not None:
                yield msg

    def _next(self) -> tuple[Message | None, bool]:
        b = self._buf
        if not b:
            return None, False
        fmt, csid, pos = b[0] >> 6, b[0] & 0x3F, 1
        if csid == 0:
            if len(b) < 2:
                return None, False
            csid, pos = 64 + b[1], 2
        elif csid == 1:
            if len(b) < 3:
                return None, False
            csid, pos = 64 + b[1] + 256 * b[2], 3
        cs = self._streams.setdefault(csid, _InChunkStream())
        need = pos + (11, 7, 3, 0)[fmt]
        if len(b) < need:
            return None, False
        if fmt <= 2:
            ts = int.from_bytes(b[pos : pos + 3], "big")
            cs.extended = ts == 0xFFFFFF
        if fmt <= 1:
            cs.length = int.from_bytes(b[pos + 3 : pos + 6], "big")
            cs.msg_type = b[pos + 6]
        if fmt == 0:
            (cs.stream_id,) = struct.unpack_from("<I", b, pos + 7)
        if cs.extended:
            if len(b) < need + 4:
                return None, False
            if fmt <= 2:
                (ts,) = struct.unpack_from(">I", b, need)
            need += 4
        take = min(self.chunk_size, cs.length - len(cs.body))
        if len(b) < need + take:
            return None, False
        if fmt == 0:
            cs.timestamp, cs.delta = ts, 0
        elif fmt <= 2:
            cs.delta = ts
        if fmt != 0 and not cs.body and fmt <= 2:
            cs.timestamp += cs.delta
        cs.body += b[need : need + take]
        del b[: need + take]
        if len(cs.body) < cs.length:
            return None, True
        msg = Message(cs.msg_type, cs.stream_id, cs.timestamp, bytes(cs.body))
        cs.body = bytearray()
        if msg.msg_type == SET_CHUNK_SIZE and len(msg.payload) >= 4:
            self.chunk_size = max(1, struct.unpack(">I", msg.payload[:4])[0] & 0x7FFFFFFF)
        return msg, True


def command_message(values: list[Any], stream_id: int, chunk_size: int) -> bytes:
    """An AMF0 command (``connect``, ``publish``...) as chunks."""
    payload = b"".join(amf_encode(v) for v in values)
    return encode_chunks(CSID_COMMAND, COMMAND_AMF0, stream_id, 0, payload, chunk_size)


def tag_message(tag_type: int, stream_id: int, timestamp: int, data: bytes, chunk_size: int) -> bytes | None:
    """One FLV tag (audio 8, video 9, script 18) as an RTMP message's chunks (script data goes out
    as ``@setDataFrame``); ``None`` for any other tag type."""
    if tag_type == DATA_AMF0:
        payload, csid = amf_encode("@setDataFrame") + data, 5
    elif tag_type in (AUDIO, VIDEO):
        payload, csid = data, (CSID_AUDIO if tag_type == AUDIO else CSID_VIDEO)
    else:
        return None
    return encode_chunks(csid, tag_type, stream_id, timestamp, payload, chunk_size)
