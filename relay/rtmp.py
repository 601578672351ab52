"""A small RTMP(S) publish client over a plain socket, for FLV tags made by PyAV's ``flv`` muxer.

Why not ffmpeg's own ``rtmp://`` output through PyAV: PyAV opens an output URL with ``avio_open``
while holding the GIL and with no timeout, so connecting to a slow or black-holed host would freeze
the whole server (event loop included) for minutes. Here every socket operation has a timeout, a
blocked send is ended from another thread by :meth:`RtmpClient.abort`, the address connected to is
the one the SSRF guard checked, and ``rtmps://`` verifies the server's certificate.

What is implemented (what ffmpeg's ``rtmpproto.c`` does when it publishes): the simple handshake,
``connect`` / ``releaseStream`` / ``FCPublish`` / ``createStream`` / ``publish``, our chunk size 4096,
the peer's chunk size, window acknowledgements, ping responses, ``onStatus`` errors, and the FLV
tag → RTMP message mapping (script data goes out as ``@setDataFrame``). Blocking: one thread per client.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from relay.restream_url import RtmpTarget

OUT_CHUNK_SIZE = 4096
HANDSHAKE_SIZE = 1536
FLASH_VER = "FMLE/3.0 (compatible; mosaic-relay)"
# message types
SET_CHUNK_SIZE, ABORT, ACK, USER_CONTROL, WINDOW_ACK_SIZE, SET_PEER_BW = 1, 2, 3, 4, 5, 6
AUDIO, VIDEO, DATA_AMF0, COMMAND_AMF0 = 8, 9, 18, 20
PING_REQUEST, PING_RESPONSE = 6, 7
# chunk stream ids (as ffmpeg uses them)
CSID_CONTROL, CSID_COMMAND, CSID_AUDIO, CSID_VIDEO = 2, 3, 4, 6


class RtmpError(Exception):
    """The connection failed or the server refused; the message never holds the stream key."""


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


class RtmpClient:
    """One publishing connection. Blocking calls, each bounded by ``timeout_s``; :meth:`abort` from any thread."""

    def __init__(
        self,
        target: RtmpTarget,
        address: str,
        *,
        timeout_s: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._target = target
        self._address = address
        self._timeout = timeout_s
        self._ssl_context = ssl_context
        self._sock: socket.socket | None = None
        self._reader = ChunkReader()
        self._stream_id = 0
        self._received = 0
        self._acked = 0
        self._ack_window = 2_500_000
        self._aborted = False
        self.bytes_sent = 0

    # --- connection ---------------------------------------------------------------------------

    def connect(self) -> None:
        """TCP (+TLS), handshake, connect, createStream, publish; raises :class:`RtmpError`."""
        try:
            sock = self._tcp_connect()
            if self._target.tls:
                ctx = self._ssl_context or ssl.create_default_context()
                self._sock = ctx.wrap_socket(sock, server_hostname=self._target.host)
            self._handshake()
            self._publish()
        except RtmpError:
            self.close()
            raise
        except (OSError, ValueError) as exc:  # socket.timeout and ssl errors are OSErrors
            self.close()
            raise RtmpError(f"{type(exc).__name__}: {exc}") from None

    def _tcp_connect(self) -> socket.socket:
        """A non-blocking connect polled in slices, so that :meth:`abort` ends it within ~0.1 s."""
        family = socket.AF_INET6 if ":" in self._address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock = sock
        sock.setblocking(False)
        err = sock.connect_ex((self._address, self._target.port))
        deadline = time.monotonic() + self._timeout
        while err in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
            if self._aborted:
                raise RtmpError("aborted")
            if time.monotonic() > deadline:
                raise RtmpError(f"TimeoutError: no answer within {self._timeout:.0f} s")
            if select.select([], [sock], [], 0.1)[1]:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise RtmpError(f"ConnectionError: {os.strerror(err)}")
        sock.settimeout(self._timeout)
        return sock

    def _handshake(self) -> None:
        c1 = bytes(8) + os.urandom(HANDSHAKE_SIZE - 8)
        self._send(b"\x03" + c1)
        s0s1 = self._recv_exact(1 + HANDSHAKE_SIZE)
        if s0s1[0] != 3:
            raise RtmpError(f"not an RTMP server (handshake version {s0s1[0]})")
        self._recv_exact(HANDSHAKE_SIZE)  # S2
        self._send(s0s1[1:])  # C2 echoes S1

    def _publish(self) -> None:
        t, name = self._target, self._target.stream_name
        self._send(encode_chunks(CSID_CONTROL, SET_CHUNK_SIZE, 0, 0, struct.pack(">I", OUT_CHUNK_SIZE), 128))
        self._command(
            ["connect", 1, {"app": t.app, "type": "nonprivate", "flashVer": FLASH_VER, "tcUrl": t.tc_url}]
        )
        self._await_result(1, "connect")
        self._command(["releaseStream", 2, None, name])
        self._command(["FCPublish", 3, None, name])
        self._command(["createStream", 4, None])
        result = self._await_result(4, "createStream")
        self._stream_id = int(result[3]) if len(result) > 3 and isinstance(result[3], float) else 1
        self._command(["publish", 5, None, name, "live"], stream_id=self._stream_id)
        self._await(lambda v: v[0] == "onStatus" and _status_code(v) == "NetStream.Publish.Start", "publish")

    def _command(self, values: list[Any], stream_id: int = 0) -> None:
        payload = b"".join(amf_encode(v) for v in values)
        self._send(encode_chunks(CSID_COMMAND, COMMAND_AMF0, stream_id, 0, payload, OUT_CHUNK_SIZE))

    def _await_result(self, txn: int, what: str) -> list[Any]:
        def match(v: list[Any]) -> bool:
            if len(v) > 1 and v[0] == "_error" and v[1] == txn:
                raise RtmpError(f"the server refused {what}: {_status_code(v) or 'no reason given'}")
            return len(v) > 1 and v[0] == "_result" and v[1] == txn

        return self._await(match, what)

    def _await(self, match: Any, what: str) -> list[Any]:
        assert self._sock is not None
        while True:
            data = self._sock.recv(65536)
            if not data:
                raise RtmpError(f"the server closed the connection during {what}")
            for msg in self._feed(data):
                if msg.msg_type == COMMAND_AMF0:
                    values = amf_decode(msg.payload)
                    if values and match(values):
                        return values

    # --- incoming -----------------------------------------------------------------------------

    def _feed(self, data: bytes) -> Iterator[Message]:
        self._received += len(data)
        for msg in self._reader.feed(data):
            self._handle(msg)
            yield msg
        if self._received - self._acked >= self._ack_window:
            self._acked = self._received
            self._send(
                encode_chunks(CSID_CONTROL, ACK, 0, 0, struct.pack(">I", self._received & 0xFFFFFFFF), 128)
            )

    def _handle(self, msg: Message) -> None:
        p = msg.payload
        if msg.msg_type == WINDOW_ACK_SIZE and len(p) >= 4:
            self._ack_window = max(1, struct.unpack(">I", p[:4])[0])
        elif msg.msg_type == USER_CONTROL and len(p) >= 6 and struct.unpack(">H", p[:2])[0] == PING_REQUEST:
            pong = struct.pack(">H", PING_RESPONSE) + p[2:6]
            self._send(encode_chunks(CSID_CONTROL, USER_CONTROL, 0, 0, pong, 128))
        elif msg.msg_type == COMMAND_AMF0:
            values = amf_decode(p)
            if values and values[0] == "onStatus" and _info(values).get("level") == "error":
                # only the status code: a description may quote the stream name (the key)
                raise RtmpError(f"the server refused the stream: {_status_code(values)}")

    def poll(self) -> None:
        """Handle whatever the server sent (pings, acks, errors) without blocking."""
        sock = self._sock
        if sock is None:
            raise RtmpError("not connected")
        try:
            while (isinstance(sock, ssl.SSLSocket) and sock.pending()) or select.select([sock], [], [], 0)[0]:
                sock.settimeout(0)
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, ssl.SSLWantReadError):
                    return
                finally:
                    sock.settimeout(self._timeout)
                if not data:
                    raise RtmpError("the server closed the connection")
                for _ in self._feed(data):
                    pass
        except (OSError, ValueError) as exc:
            raise RtmpError(f"{type(exc).__name__}: {exc}") from None

    # --- outgoing -----------------------------------------------------------------------------

    def send_tag(self, tag_type: int, timestamp: int, data: bytes) -> None:
        """Send one FLV tag (audio 8, video 9, script 18) as an RTMP message."""
        if tag_type == DATA_AMF0:
            payload, csid = amf_encode("@setDataFrame") + data, 5
        elif tag_type in (AUDIO, VIDEO):
            payload, csid = data, (CSID_AUDIO if tag_type == AUDIO else CSID_VIDEO)
        else:
            return
        try:
            self._send(encode_chunks(csid, tag_type, self._stream_id, timestamp, payload, OUT_CHUNK_SIZE))
        except (OSError, ValueError) as exc:
            raise RtmpError(f"{type(exc).__name__}: {exc}") from None
        self.poll()

    def _send(self, data: bytes) -> None:
        if self._sock is None or self._aborted:
            raise RtmpError("aborted")
        self._sock.sendall(data)
        self.bytes_sent += len(data)

    def _recv_exact(self, n: int) -> bytes:
        assert self._sock is not None
        buf = bytearray()
        while len(buf) < n:
            data = self._sock.recv(n - len(buf))
            if not data:
                raise RtmpError("the server closed the connection during the handshake")
            buf += data
        return bytes(buf)

    # --- end ----------------------------------------------------------------------------------

    def abort(self) -> None:
        """Any thread: end a blocked send/recv now (the owner's call raises :class:`RtmpError`)."""
        self._aborted = True
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self, polite: bool = False) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            if polite and not self._aborted and self._stream_id:
                sock.settimeout(1.0)
                name = self._target.stream_name
                for values, sid in (
                    (["FCUnpublish", 6, None, name], 0),
                    (["deleteStream", 7, None, self._stream_id], 0),
                ):
                    payload = b"".join(amf_encode(v) for v in values)
                    sock.sendall(encode_chunks(CSID_COMMAND, COMMAND_AMF0, sid, 0, payload, OUT_CHUNK_SIZE))
        except OSError:
            pass
        finally:
            sock.close()


def _info(values: list[Any]) -> dict[str, Any]:
    for v in values[2:]:
        if isinstance(v, dict):
            return v
    return {}


def _status_code(values: list[Any]) -> str:
    return str(_info(values).get("code", ""))
