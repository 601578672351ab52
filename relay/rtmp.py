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

import contextlib
import errno
import os
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

from relay.restream_url import RtmpTarget
from relay.rtmp_wire import (  # noqa: F401  (re-exported: the wire formats live there)
    ABORT,
    ACK,
    AUDIO,
    COMMAND_AMF0,
    CSID_AUDIO,
    CSID_COMMAND,
    CSID_CONTROL,
    CSID_VIDEO,
    DATA_AMF0,
    PING_REQUEST,
    PING_RESPONSE,
    SET_CHUNK_SIZE,
    SET_PEER_BW,
    USER_CONTROL,
    VIDEO,
    WINDOW_ACK_SIZE,
    ChunkReader,
    Message,
    RtmpError,
    amf_decode,
    amf_encode,
    command_message,
    encode_chunks,
    tag_message,
)

OUT_CHUNK_SIZE = 4096
HANDSHAKE_SIZE = 1536
FLASH_VER = "FMLE/3.0 (compatible; mosaic-relay)"


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
        self._send(command_message(values, stream_id, OUT_CHUNK_SIZE))

    def _await_result(self, txn: int, what: str) -> list[Any]:
        return self._await(_result_of(txn, what), what)

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
        window, reply = _control(msg)
        if window is not None:
            self._ack_window = window
        if reply is not None:
            self._send(reply)

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
        message = tag_message(tag_type, self._stream_id, timestamp, data, OUT_CHUNK_SIZE)
        if message is None:
            return
        try:
            self._send(message)
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

    def abort(self) -> None:
        """Any thread: end a blocked send/recv now (the owner's call raises :class:`RtmpError`)."""
        self._aborted = True
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

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
                    sock.sendall(command_message(values, sid, OUT_CHUNK_SIZE))
        except OSError:
            pass
        finally:
            sock.close()


def _result_of(txn: int, what: str) -> Callable[[list[Any]], bool]:
    """Matches the ``_result`` of command ``txn``; raises :class:`RtmpError` on its ``_error``."""

    def match(v: list[Any]) -> bool:
        if len(v) > 1 and v[0] == "_error" and v[1] == txn:
            raise RtmpError(f"the server refused {what}: {_status_code(v) or 'no reason given'}")
        return len(v) > 1 and v[0] == "_result" and v[1] == txn

    return match


def _control(msg: Message) -> tuple[int | None, bytes | None]:
    """What an incoming message asks of the client: a new acknowledgement window, a reply to send
    (a ping's pong); raises :class:`RtmpError` when the server refuses the stream."""
    p = msg.payload
    if msg.msg_type == WINDOW_ACK_SIZE and len(p) >= 4:
        return max(1, struct.unpack(">I", p[:4])[0]), None
    if msg.msg_type == USER_CONTROL and len(p) >= 6 and struct.unpack(">H", p[:2])[0] == PING_REQUEST:
        pong = struct.pack(">H", PING_RESPONSE) + p[2:6]
        return None, encode_chunks(CSID_CONTROL, USER_CONTROL, 0, 0, pong, 128)
    if msg.msg_type == COMMAND_AMF0:
        values = amf_decode(p)
        if values and values[0] == "onStatus" and _info(values).get("level") == "error":
            # only the status code: a description may quote the stream name (the key)
            raise RtmpError(f"the server refused the stream: {_status_code(values)}")
    return None, None


def _info(values: list[Any]) -> dict[str, Any]:
    for v in values[2:]:
        if isinstance(v, dict):
            return v
    return {}


def _status_code(values: list[Any]) -> str:
    return str(_info(values).get("code", ""))
