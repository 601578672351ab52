"""Send many UDP datagrams to one address in one system call: ``sendmmsg(2)`` through ctypes.

No compiler needed: libc's ``sendmmsg`` is called through :mod:`ctypes` (which releases the GIL
during the call). Datagrams are joined into one buffer and each message points into it.

With ``gso=True`` consecutive datagrams of equal size (the last of a run may be shorter) are sent
as one message carrying a ``UDP_SEGMENT`` control message (UDP generic segmentation offload,
Linux >= 4.18): the kernel's UDP/IP output path runs once per run instead of once per datagram,
and the segments still arrive as separate datagrams. The RTP packets of one VP8 frame fit that
shape (aiortc's packetizer cuts equal chunks; only the last is shorter).

:func:`send_batch` never blocks: the socket is non-blocking (asyncio's). It returns how many of
the datagrams were handed to the kernel, in order; the caller decides what to do with the rest
(``EAGAIN``: the send buffer is full).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)

SOL_UDP = 17
UDP_SEGMENT = 103
GSO_MAX_SEGMENTS = 64  # kernel UDP_MAX_SEGMENTS
GSO_MAX_BYTES = 65000  # below the 64 KiB IP datagram limit, headers included
MAX_MESSAGES = 1024  # UIO_MAXIOV: the kernel's limit on messages per sendmmsg call


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


# struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; } + u16 data, padded to 8
_CMSG_HDR = struct.Struct("@Nii")
_CMSG_LEN = _CMSG_HDR.size + 2
_CMSG_SPACE = (_CMSG_LEN + 7) & ~7


def _load_sendmmsg() -> ctypes._NamedFuncPointer | None:
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fn = libc.sendmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_sendmmsg = _load_sendmmsg()


def available() -> bool:
    """True if libc has ``sendmmsg`` (Linux glibc/musl)."""
    return _sendmmsg is not None


def sockaddr(host: str, port: int) -> bytes:
    """The ``struct sockaddr_in``/``sockaddr_in6`` bytes of an IP literal and port."""
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + packed + b"\x00" * 8
    except OSError:
        packed = socket.inet_pton(socket.AF_INET6, host.split("%")[0])
        scope = socket.if_nametoindex(host.split("%")[1]) if "%" in host else 0
        return (
            struct.pack("=H", socket.AF_INET6)
            + struct.pack("!HI", port, 0)
            + packed
            + struct.pack("=I", scope)
        )


def gso_groups(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """Split datagram sizes into GSO runs ``(start, count)``: equal sizes, the last may be shorter,
    at most GSO_MAX_SEGMENTS segments and GSO_MAX_BYTES bytes per run. Pure."""
    groups: list[tuple[int, int]] = []
    i, n = 0, len(sizes)
    while i < n:
        seg, j, total = sizes[i], i + 1, sizes[i]
        while j < n and j - i < GSO_MAX_SEGMENTS and total + sizes[j] <= GSO_MAX_BYTES:
            if sizes[j] > seg:
                break
            total += sizes[j]
            j += 1
            if sizes[j - 1] < seg:  # a shorter segment ends the run
                break
        groups.append((i, j - i))
        i = j
    return groups


class SendError(OSError):
    """sendmmsg failed with an error other than EAGAIN before sending anything."""


class BatchSender:
    """``sendmmsg`` to one address, with the message/iovec/control arrays allocated once.

    Each datagram is its own iovec pointing into the ``bytes`` object (no copy); with GSO a message
    gathers the iovecs of one run (:func:`gso_groups`) and carries a ``UDP_SEGMENT`` cmsg. Not
    thread-safe (one per socket, used from the event loop).
    """

    def __init__(self, fd: int, addr: bytes, capacity: int = 256) -> None:
        if _sendmmsg is None:
            raise SendError(errno.ENOSYS, "sendmmsg is not available")
        self.fd = fd
        self._name = ctypes.create_string_buffer(addr, len(addr))
        self._name_p, self._name_len = ctypes.addressof(self._name), len(addr)
        self._capacity = 0
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        self._capacity = capacity
        self._iovs = (_Iovec * capacity)()
        self._msgs = (_Mmsghdr * capacity)()
        self._control = ctypes.create_string_buffer(_CMSG_SPACE * capacity)
        self._iov_p = ctypes.addressof(self._iovs)
        self._control_p = ctypes.addressof(self._control)
        for k in range(capacity):
            hdr = self._msgs[k].msg_hdr
            hdr.msg_name = self._name_p
            hdr.msg_namelen = self._name_len

    def send(self, datagrams: Sequence[bytes], *, gso: bool = False) -> int:
        """See :func:`send_batch`."""
        n = len(datagrams)
        if n == 0:
            return 0
        if n > self._capacity:
            self._grow(max(n, 2 * self._capacity))
        sizes = [len(d) for d in datagrams]
        groups = gso_groups(sizes) if gso else None
        iovs, msgs, iov_size = self._iovs, self._msgs, ctypes.sizeof(_Iovec)
        keep = [ctypes.c_char_p(d) for d in datagrams]  # pointers into the bytes objects
        for i, p in enumerate(keep):
            iov = iovs[i]
            iov.iov_base = ctypes.cast(p, ctypes.c_void_p).value
            iov.iov_len = sizes[i]
        if groups is None:
            m = n
            for k in range(n):
                hdr = msgs[k].msg_hdr
                hdr.msg_iov = ctypes.cast(self._iov_p + k * iov_size, ctypes.POINTER(_Iovec))
                hdr.msg_iovlen = 1
                hdr.msg_control = None
                hdr.msg_controllen = 0
        else:
            m = len(groups)
            for k, (start, count) in enumerate(groups):
                hdr = msgs[k].msg_hdr
                hdr.msg_iov = ctypes.cast(self._iov_p + start * iov_size, ctypes.POINTER(_Iovec))
                hdr.msg_iovlen = count
                if count > 1:
                    off = k * _CMSG_SPACE
                    struct.pack_into(
                        _CMSG_FMT, self._control, off, _CMSG_LEN, SOL_UDP, UDP_SEGMENT, sizes[start]
                    )
                    hdr.msg_control = self._control_p + off
                    hdr.msg_controllen = _CMSG_SPACE
                else:
                    hdr.msg_control = None
                    hdr.msg_controllen = 0
        done = _call(self.fd, ctypes.addressof(msgs), m)
        del keep
        if done >= m:
            return n
        return done if groups is None else groups[done][0]


_CMSG_FMT = _CMSG_HDR.format + "H"


def _call(fd: int, msgs_p: int, m: int) -> int:
    """sendmmsg until all ``m`` messages are sent or the socket would block; returns how many were."""
    assert _sendmmsg is not None
    size = ctypes.sizeof(_Mmsghdr)
    done = 0
    while done < m:
        batch = min(m - done, MAX_MESSAGES)
        r = _sendmmsg(fd, msgs_p + done * size, batch, 0)
        if r < 0:
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            if err in (errno.EAGAIN, errno.ENOBUFS) or done > 0:
                break
            raise SendError(err, f"sendmmsg: {errno.errorcode.get(err, err)}")
        if r == 0:
            break
        done += r
    return done


def send_batch(fd: int, addr: bytes, datagrams: Sequence[bytes], *, gso: bool = False) -> int:
    """Send ``datagrams`` to ``addr`` (from :func:`sockaddr`) on socket ``fd`` in one ``sendmmsg``
    (more only past MAX_MESSAGES messages, or to finish a partial send). Returns the number of
    datagrams the kernel took (in order); stops early on EAGAIN/ENOBUFS. Raises :class:`SendError`
    on any other error (e.g. the kernel refuses GSO: call again with ``gso=False``)."""
    return BatchSender(fd, addr, max(1, len(datagrams))).send(datagrams, gso=gso)


def send_each(sock: socket.socket, addr: tuple[str, int], datagrams: Sequence[bytes]) -> int:
    """One ``sendto`` per datagram (the reference path); stops at EAGAIN. Returns how many were sent."""
    for i, d in enumerate(datagrams):
        try:
            sock.sendto(d, addr)
        except (BlockingIOError, InterruptedError):
            return i
    return len(datagrams)


def send_gso(
    sock: socket.socket,
    addr: tuple[str, int],
    datagrams: Sequence[bytes],
    groups: list[tuple[int, int]] | None = None,
) -> int:
    """One ``sendmsg`` with ``UDP_SEGMENT`` per run of :func:`gso_groups` (one per VP8 frame,
    usually). Returns how many datagrams were sent (stops at EAGAIN); raises OSError if the kernel
    refuses GSO (e.g. EIO without checksum offload on the route)."""
    if groups is None:
        groups = gso_groups([len(d) for d in datagrams])
    for start, count in groups:
        try:
            if count == 1:
                sock.sendto(datagrams[start], addr)
            else:
                seg = struct.pack("=H", len(datagrams[start]))
                sock.sendmsg(datagrams[start : start + count], [(SOL_UDP, UDP_SEGMENT, seg)], 0, addr)
        except (BlockingIOError, InterruptedError):
            return start
    return len(datagrams)


MODES = ("gso", "mmsg", "sendto")


class Datapath:
    """Sends a viewer's datagrams on the ICE socket (by its fd) to the selected remote address.

    ``mode``: ``gso`` (:func:`send_gso`), ``mmsg`` (:class:`BatchSender`) or ``sendto``
    (:func:`send_each`). Datagrams the kernel does not take (EAGAIN) go to ``spill`` (asyncio's
    transport, which buffers them until the socket is writable). If GSO or sendmmsg fails, the
    path falls back to ``sendto`` for good. Holds a duplicate of the fd: call :meth:`close`.
    """

    def __init__(
        self, fd: int, family: int, addr: tuple[str, int], mode: str, spill: Callable[[bytes], None]
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self._sock: socket.socket | None = socket.socket(family, socket.SOCK_DGRAM, 0, os.dup(fd))
        self._sock.setblocking(False)
        self.addr = addr
        self.mode = mode if (mode != "mmsg" or available()) else "sendto"
        self._mmsg = BatchSender(self._sock.fileno(), sockaddr(*addr)) if self.mode == "mmsg" else None
        self._spill = spill
        self.syscalls = 0
        self.spilled = 0
        self.fallbacks = 0

    def send(self, datagrams: Sequence[bytes]) -> None:
        sock = self._sock
        if sock is None or not datagrams:
            return
        try:
            if self.mode == "gso":
                groups = gso_groups([len(d) for d in datagrams])
                calls = len(groups)
                sent = send_gso(sock, self.addr, datagrams, groups)
            elif self._mmsg is not None:
                calls = 1
                sent = self._mmsg.send(datagrams)
            else:
                calls = len(datagrams)
                sent = send_each(sock, self.addr, datagrams)
        except OSError as exc:
            logger.warning("batched send failed (%s); falling back to one sendto per datagram", exc)
            self.mode, self._mmsg = "sendto", None
            self.fallbacks += 1
            sent, calls = 0, 1
        self.syscalls += calls
        for d in datagrams[sent:]:
            self.spilled += 1
            self._spill(d)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
