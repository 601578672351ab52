"""Fan-out benchmark: server CPU per viewer and viewer fps/latency, ours vs. per-viewer encoding.

    .venv/bin/python bench/fanout.py --viewers 20 --seconds 15
    .venv/bin/python bench/fanout.py --viewers 100 --seconds 20 --baseline-viewers 3 --size 1280x720 \
        --light-viewers --viewers-per-process 10 --send-path fast        # issue #15's target

Processes (all on this machine, talking over 127.0.0.1):

- the **relay** (its CPU = getrusage of that process, all threads; the viewers' and the publisher's
  CPU is never counted as the relay's), driven over HTTP;
- the **publisher** (aiortc, ``--size`` at 30 fps, a real shipping-label photo with its send time
  stamped into the picture). It is paced like a camera: a frame it could not hand to its encoder in
  time is skipped, not sent late in a burst. The relay's detector is a fake returning the label's
  box: this measures the media path, not the model;
- the **viewers**, in processes of ``--viewers-per-process``; the ``--probes`` (2) have a process of
  their own: they decode every frame and read the stamp, latency = decoded at the viewer - handed to
  the publisher's encoder (publisher encode, relay decode + sanitize + encode, viewer jitter buffer
  and decode). **No other viewer decodes**: without ``--light-viewers`` they are full aiortc
  receivers (ICE, DTLS, SRTP, jitter buffer, NACK/PLI) whose decoder queue only counts frames; with
  ``--light-viewers`` (for 100 viewers on 2 cores) every SRTP packet is still **decrypted and
  authenticated** with the viewer's own keys (failures: ``auth_failures``), and complete frames are
  counted from the RTP and VP8 headers (:class:`FrameCounter`: a frame counts if its first packet
  starts the VP8 frame, its sequence numbers are consecutive, its last packet has the marker bit; a
  gap is a loss, nothing is retransmitted), skipping aiortc's Python jitter buffer. So the viewers
  count what the relay delivered intact, at a few µs per packet, and the measurement measures the
  relay. Each viewer's sockets get ``--viewer-rcvbuf`` (4 MiB; a viewer process starved for ~1 s
  would overflow the default ~208 KiB and count a loss the relay did not cause: losses still show).

On Linux with ``sched_autogroup`` (the default) the CPU is shared between *sessions*; with
``--sessions own`` (the default) the relay, the publisher and the probes' process each run in a
session of their own, as separate machines would, and the counting viewers share the benchmark's:
otherwise 100 viewers and the publisher would compete with the relay for one session's share of a
loaded box, and the probes' decoders (aiortc's decode queue is unbounded) would fall seconds behind.

Phases, each ``--seconds`` long after a 3 s warm-up: relay with the publisher and no viewer; relay with
N viewers (encode once per room: ours); then a fresh relay in ``baseline`` mode (aiortc
``MediaRelay``: every viewer's RTCRtpSender encodes the sanitized frames again) with no viewer and
with ``--baseline-viewers``. CPU per viewer = (cores with viewers - cores without) / viewers; the
last line printed is one JSON object.

``--send-path both`` (the default) runs "ours" twice, with the fast send path (relay/fastsend.py,
``--fast-send on``, ``--syscall`` gso|mmsg|sendto) and with aiortc's ``RTCRtpSender`` (``--fast-send
off``), then the baseline. Besides the raw ``cores_per_viewer``, each mode reports
``cores_per_viewer_30fps`` (CPU per frame put out, with viewers minus without, x 30 / viewers: on a
loaded box the starved relay puts out fewer frames with viewers than without, which makes the raw
difference meaningless), the same for the event loop's thread alone (``loop_cores_per_viewer_30fps``:
where all RTP is sent), and for the fast path the thread CPU spent inside its sends
(``send_cores_per_viewer``).

Where frames go missing: ``frame_chain_fps`` = [publisher sent, relay received, sanitized, encoded,
viewers' median]; ``clients`` = the publisher's fps, skipped frames and CPU, the viewer processes' CPU,
the light viewers' receive counters (packets, lost, auth failures), the relay's receive counters
from the publisher, and the machine's UDP drop counters (``RcvbufErrors``: a full socket buffer
somewhere on the box); ``server_dropped`` (``dropped_stale``: a frame replaced by a newer one
before the sanitizer took it), ``server_stage_ms_p50`` and ``server_loop_lag_ms``. Report the load
average (``loadavg_1m_idle_loaded``) with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import multiprocessing as mp
import os
import queue
import resource
import socket
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pylibsrtp

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

logger = logging.getLogger("bench.fanout")

W, H = 640, 480  # default --size
STAMP_X, STAMP_BITS, STAMP_CELL = 240, 24, 16  # bottom row (y = height - 32), clear of the label's box


# --- server process ----------------------------------------------------------------------------


def server_main(mode: str, port: int, ready: Any, size: tuple[int, int], syscall: str) -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("relay.room").setLevel(logging.INFO)  # why a stream closed, if it does
    asyncio.run(_serve(mode, port, ready, size, syscall))


async def _serve(mode: str, port: int, ready: Any, size: tuple[int, int], syscall: str) -> None:
    import dataclasses

    from aiohttp import web
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaRelay

    from relay.negotiation import vp8_preferences
    from relay.pipeline import Pipeline
    from relay.room import RoomRegistry
    from relay.settings import Settings
    from tests.helpers.media import FakeDetector, SinkTrack, label_scene, use_loopback_ice

    # "fanout": ours with the fast send path; "fanout-aiortc": ours with aiortc's RTCRtpSender sending
    fast = "on" if mode == "fanout" else "off"
    settings = dataclasses.replace(
        Settings(), max_viewers_per_stream=500, fast_send=fast, fast_send_syscall=syscall
    )
    width, height = size
    _, box = label_scene(width, height)
    detector = FakeDetector(box)
    stack = contextlib.ExitStack()
    stack.enter_context(use_loopback_ice())
    registry = RoomRegistry(settings, detector)
    room, key = registry.create("bench", "bench")
    baseline_pcs: list[RTCPeerConnection] = []
    baseline: dict[str, Any] = {}

    async def publish(request: web.Request) -> web.Response:
        body = await request.json()
        if mode != "baseline":
            return web.json_response(await room.publish(key, body["sdp"], body["type"]))
        pc = RTCPeerConnection(registry.rtc_configuration)
        baseline_pcs.append(pc)
        t = pc.addTransceiver("video", direction="recvonly")
        t.setCodecPreferences(vp8_preferences())
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        sanitized = SinkTrack(maxlen=4)  # the pipeline's sink feeds aiortc's MediaRelay
        s = Pipeline(t.receiver.track, detector, settings, sink=sanitized.sink, name="baseline")
        s.start()
        baseline["sanitizer"] = s
        baseline["track"] = sanitized
        baseline["relay"] = MediaRelay()
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})

    async def view(request: web.Request) -> web.Response:
        body = await request.json()
        if mode != "baseline":
            return web.json_response(await room.add_viewer(body["id"], body["sdp"], body["type"]))
        pc = RTCPeerConnection(registry.rtc_configuration)
        baseline_pcs.append(pc)
        t = pc.addTransceiver(
            baseline["relay"].subscribe(baseline["track"], buffered=False), direction="sendonly"
        )
        t.setCodecPreferences(vp8_preferences())
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})

    async def cpu(request: web.Request) -> web.Response:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        info: dict[str, Any] = {
            "cpu": ru.ru_utime + ru.ru_stime,
            "loop_cpu": time.thread_time(),  # the event loop's thread: where every viewer's RTP is sent
            "threads_cpu": threads_cpu(),
            "t": time.monotonic(),
            "rss_mb": ru.ru_maxrss / 1024,
        }
        pub_pc = baseline_pcs[0] if mode == "baseline" and baseline_pcs else room._publisher_pc
        info["publisher_rx"] = await _inbound_rtp(pub_pc)
        info["loop_lag_ms_p50"] = _pct(list(lags), 50)
        info["loop_lag_ms_p95"] = _pct(list(lags), 95)
        if mode == "baseline" and "sanitizer" in baseline:
            info["sanitizer"] = {
                k: v for k, v in baseline["sanitizer"].metrics.as_dict().items() if not isinstance(v, list)
            }
        if mode != "baseline":
            info["fast_send"] = _fast_send_stats(room)
        if mode != "baseline" and room.encoder is not None and room.sanitizer is not None:
            info["keyframes"] = room.encoder.metrics.keyframes
            info["encoded_frames"] = room.encoder.metrics.frames
            sm, em = room.sanitizer.metrics, room.encoder.metrics
            info["stage_ms_p50"] = {
                "sanitize_wall": _pct(list(sm.process_ms)[-300:], 50),
                "sanitize_cpu": _pct(list(sm.process_cpu_ms)[-300:], 50),
                "encode_wall": _pct(list(em.encode_ms)[-300:], 50),
            }
            info["server_latency_ms_p50"] = _pct(list(room.encoder.metrics.latency_ms)[-300:], 50)
            info["server_latency_ms_p95"] = _pct(list(room.encoder.metrics.latency_ms)[-300:], 95)
            info["sanitizer"] = {
                k: v for k, v in room.sanitizer.metrics.as_dict().items() if not isinstance(v, list)
            }
        return web.json_response(info)

    lags: deque[float] = deque(maxlen=500)

    async def lag_monitor() -> None:  # how late the event loop wakes a 10 ms sleep
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append((time.monotonic() - t - 0.01) * 1000.0)

    monitor = asyncio.get_running_loop().create_task(lag_monitor(), name="lag-monitor")
    app = web.Application()
    app.add_routes([web.post("/publish", publish), web.post("/view", view), web.get("/cpu", cpu)])
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        monitor.cancel()
        await registry.close_all()
        for pc in baseline_pcs:
            await pc.close()
        stack.close()


THREAD_GROUPS = (("decoder", "decoder"), ("encoder", "encoder"), ("mosaic", "mosaic"), ("detect", "detector"))


def thread_group(name: str) -> str:
    """The relay's threads by role, from their Python names. Pure."""
    if name == "MainThread":
        return "loop"
    return next((group for key, group in THREAD_GROUPS if key in name), "other")


def threads_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads by :func:`thread_group` (/proc/self/task)."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            group = thread_group(names.get(int(task.name), ""))
            out[group] = out.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def cores_needed_30fps(threads: dict[str, float], fps_in: float, fps_encoded: float) -> float | None:
    """The relay's CPU for 30 fps in and out, from what each thread spent per frame it handled: the
    decoder per frame received, the rest per frame encoded (or sanitized). An upper bound: the
    loop's RTCP/ICE work per viewer does not grow with the frame rate. Pure."""
    if not fps_in or not fps_encoded:
        return None
    per_frame = sum(c / (fps_in if g == "decoder" else fps_encoded) for g, c in threads.items())
    return round(30 * per_frame, 3)


def in_own_session(target: Any, *args: Any) -> None:
    """Run ``target(*args)`` in a new session (``setsid``): with Linux's ``sched_autogroup`` (on by
    default) the kernel then schedules this process as its own group, like a service of its own,
    instead of sharing one group's CPU share with every other process of the benchmark."""
    os.setsid()
    target(*args)


def _proc_target(target: Any, own_session: bool) -> Any:
    return functools.partial(in_own_session, target) if own_session else target


async def _inbound_rtp(pc: Any) -> dict[str, int]:
    """The relay's receive counters of the publisher's video (packets lost on the way in). Read from
    the receiver's per-SSRC statistics: aiortc's ``getStats`` gives the RTX stream the same id as the
    media stream, so once anything was retransmitted it reports the RTX stream's counters."""
    out = {"packets": 0, "lost": 0}
    if pc is None:
        return out
    for t in pc.getTransceivers():
        streams = getattr(t.receiver, "_RTCRtpReceiver__remote_streams", {})
        if t.kind == "video" and streams:
            media = max(streams.values(), key=lambda s: s.packets_received)
            out["packets"] += media.packets_received
            out["lost"] += media.packets_lost
    return out


def _fast_send_stats(room: Any) -> dict[str, Any] | None:
    """Totals over the viewers' fast-send links (None: aiortc's path)."""
    if room.fast is None:
        return None
    out = {
        "links": 0,
        "frames": 0,
        "packets": 0,
        "syscalls": 0,
        "spilled": 0,
        "retransmits": 0,
        "fallbacks": 0,
        "cpu_s": 0.0,
        "packetized": sum(p.packed for p in room.fast._packetizers.values()),
    }
    for v in room._viewers.values():
        for track in (v.video, v.audio):
            link = getattr(track, "link", None)
            if link is None:
                continue
            out["links"] += 1
            out["frames"] += link.stats.frames
            out["packets"] += link.stats.packets
            out["retransmits"] += link.stats.retransmits
            out["cpu_s"] += link.stats.cpu_ns / 1e9
            if link.path is not None:
                out["syscalls"] += link.path.syscalls
                out["spilled"] += link.path.spilled
                out["fallbacks"] += link.path.fallbacks
    return out


def _pct(values: list[float], p: float) -> float | None:
    return round(float(np.percentile(values, p)), 1) if values else None


# --- client side -------------------------------------------------------------------------------


def now_ms24() -> int:
    """CLOCK_MONOTONIC in ms, modulo 2**24 (the same clock in every process of this machine)."""
    return int(time.monotonic() * 1000) & 0xFFFFFF


def make_stamped_track(size: tuple[int, int], fps: float = 30.0, counters: Any = None) -> Any:
    """Publisher video: the label scene with its send time (ms, 24 bits) stamped as 16 px cells.

    Paced like a camera: frame ``n`` is due at ``n / fps``; a frame that could not be handed to the
    encoder within its interval is skipped, not sent late in a burst (a starved publisher would
    otherwise catch up with back-to-back frames, which the relay's newest-frame-wins source drops
    as stale). ``counters`` (a shared int array of 2, optional): frames produced, frames skipped."""
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
    from av import VideoFrame

    from tests.helpers.media import VIDEO_TIME_BASE, label_scene

    width, height = size
    stamp_y = height - 32
    scene, _ = label_scene(width, height)
    base = VideoFrame.from_ndarray(scene, format="bgr24").reformat(format="yuv420p").to_ndarray()

    class StampedTrack(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.n = 0
            self._start: float | None = None

        async def recv(self) -> Any:
            if self.readyState != "live":
                raise MediaStreamError
            now = time.monotonic()
            if self._start is None:
                self._start = now
            due = int((now - self._start) * fps)  # the camera's current frame
            if due > self.n:
                if counters is not None:
                    counters[1] += due - self.n
                self.n = due
            wait = self._start + self.n / fps - now
            if wait > 0:
                await asyncio.sleep(wait)
            buf = base.copy()
            stamp = now_ms24()
            for bit in range(STAMP_BITS):
                x = STAMP_X + bit * STAMP_CELL
                buf[stamp_y : stamp_y + STAMP_CELL, x : x + STAMP_CELL] = 235 if (stamp >> bit) & 1 else 16
            frame = VideoFrame.from_ndarray(buf, format="yuv420p")
            frame.pts = int(self.n * 90000 / fps)
            frame.time_base = VIDEO_TIME_BASE
            self.n += 1
            if counters is not None:
                counters[0] += 1
            return frame

    return StampedTrack()


def read_stamp(gray: np.ndarray) -> int:
    stamp_y = gray.shape[0] - 32
    value = 0
    for bit in range(STAMP_BITS):
        x = STAMP_X + bit * STAMP_CELL
        cell = gray[stamp_y + 4 : stamp_y + STAMP_CELL - 4, x + 4 : x + STAMP_CELL - 4]
        if cell.mean() > 128:
            value |= 1 << bit
    return value


def publisher_main(base: str, ready: Any, size: tuple[int, int], counters: Any = None) -> None:
    """Publisher process: its own CPU, so the viewers' work does not slow the source down."""
    logging.basicConfig(level=logging.WARNING)
    from tests.helpers.media import use_loopback_ice

    with use_loopback_ice():
        asyncio.run(_publish(base, ready, size, counters))


async def _publish(base: str, ready: Any, size: tuple[int, int], counters: Any = None) -> None:
    import aiohttp
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from tests.helpers.media import NO_ICE_SERVERS

    pc = RTCPeerConnection(NO_ICE_SERVERS)
    pc.addTrack(make_stamped_track(size, counters=counters))
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/publish", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as r:
            ans = await r.json()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=ans["sdp"], type=ans["type"]))
    ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await pc.close()


class CountingQueue(queue.Queue):  # type: ignore[type-arg]
    """Replaces a viewer receiver's decoder queue: counts complete frames instead of decoding."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = 0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:  # the receiver's stop sentinel: let the (idle) decoder thread exit
            super().put(item, block, timeout)
        else:
            self.frames += 1


def rtp_fields(packet: bytes) -> tuple[int, int, int, bool, int] | None:
    """(payload type, sequence number, timestamp, marker, offset of the payload) of a clear RTP
    packet, or None if it is not one. Pure."""
    if len(packet) < 12 or packet[0] >> 6 != 2:
        return None
    offset = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:  # header extension: 4 bytes + length words
        if len(packet) < offset + 4:
            return None
        offset += 4 + 4 * int.from_bytes(packet[offset + 2 : offset + 4], "big")
    if offset >= len(packet):
        return None
    seq, ts = int.from_bytes(packet[2:4], "big"), int.from_bytes(packet[4:8], "big")
    return packet[1] & 0x7F, seq, ts, bool(packet[1] & 0x80), offset


DRAIN_MAX = 64  # datagrams a light viewer reads from its socket per callback


class FrameCounter:
    """A light viewer's video receive path: every SRTP packet is **decrypted and authenticated** with
    the viewer's own SRTP session (pylibsrtp, as aiortc does; a packet that fails is counted in
    ``auth_failures`` and not used), then complete VP8 frames are counted from the RTP and VP8
    headers, without a jitter buffer or a decoder:

    a frame counts if its first packet starts a VP8 partition 0 (payload descriptor S=1, PID=0), its
    packets have consecutive sequence numbers and the same timestamp, and its last one has the
    marker bit. A sequence gap is a loss (``lost`` packets): the frame it falls in does not count
    (nothing is retransmitted: a light viewer sends no NACK). Reordered or duplicate packets are
    counted in ``reordered`` and ignored; a replayed one fails SRTP's replay check (``auth_failures``).

    :meth:`intercept` takes SRTP packets straight from the ICE socket's ``datagram_received``
    (aioice), skipping aioice's queue and aiortc's DTLS receive coroutine; STUN, DTLS and RTCP
    still go the normal way."""

    def __init__(self, session: Any) -> None:
        self.session = session  # pylibsrtp.Session with the viewer's receive keys
        self.frames = 0
        self.packets = 0
        self.lost = 0
        self.reordered = 0
        self.auth_failures = 0
        self._pt: int | None = None
        self._last_seq: int | None = None
        self._frame_ts: int | None = None  # timestamp of the frame being received, None: no clean start
        self._socks: list[socket.socket] = []  # duplicates of the ICE sockets' fds (intercept)

    def close(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks.clear()

    def intercept(self, connection: Any) -> None:
        for protocol in connection._protocols:
            original = protocol.datagram_received
            # asyncio hands out a wrapper without recvfrom: read through a duplicate of the fd
            fd = os.dup(protocol.transport.get_extra_info("socket").fileno())
            sock = socket.socket(fileno=fd)
            self._socks.append(sock)

            def handle(data: bytes, addr: Any, original: Any = original) -> None:
                if len(data) > 12 and 127 < data[0] < 192 and not 192 <= data[1] <= 208:
                    self.on_srtp(data)
                else:  # STUN, DTLS, RTCP: aiortc's way
                    original(data, addr)

            def received(data: bytes, addr: Any, handle: Any = handle, sock: Any = sock) -> None:
                # asyncio reads one datagram per socket and loop turn: drain what is already
                # queued in this one callback (bounded), so that the counting keeps up with a
                # backlog at a fraction of the per-datagram cost of a loop turn
                for _ in range(DRAIN_MAX):
                    handle(data, addr)
                    try:
                        data, addr = sock.recvfrom(2048)
                    except OSError:  # BlockingIOError: nothing more queued
                        return
                handle(data, addr)

            protocol.datagram_received = received

    def on_srtp(self, data: bytes) -> None:
        try:
            clear = self.session.unprotect(data)
        except pylibsrtp.Error:
            self.auth_failures += 1
            return
        self.on_rtp(clear)

    def on_rtp(self, packet: bytes) -> None:
        """Count one clear RTP packet (see the class docstring)."""
        fields = rtp_fields(packet)
        if fields is None:
            return
        pt, seq, ts, marker, offset = fields
        if self._pt is None:
            self._pt = pt
        if pt != self._pt:  # RTX or another stream: not this counter's
            return
        gap = 0
        if self._last_seq is not None:
            gap = (seq - self._last_seq - 1) & 0xFFFF
            if gap >= 0x8000:  # older than the last one: reordered or duplicated
                self.reordered += 1
                return
        self._last_seq = seq
        self.packets += 1
        self.lost += gap
        if packet[offset] & 0x17 == 0x10:  # S=1, PID=0: the frame's first packet
            self._frame_ts = ts
        elif gap or ts != self._frame_ts:
            self._frame_ts = None
        if marker:
            if self._frame_ts == ts:
                self.frames += 1
            self._frame_ts = None


def set_rcvbuf(connection: Any, size: int) -> int:
    """SO_RCVBUF of an ICE connection's sockets (aioice), the kernel's effective value (0: unchanged)."""
    got = 0
    for protocol in connection._protocols:
        sock = protocol.transport.get_extra_info("socket")
        if size:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return got


class BenchViewer:
    def __init__(self, probe: bool, light: bool = False, rcvbuf: int = 0) -> None:
        from aiortc import RTCPeerConnection

        from tests.helpers.media import NO_ICE_SERVERS

        self.pc = RTCPeerConnection(NO_ICE_SERVERS)
        t = self.pc.addTransceiver("video", direction="recvonly")
        self.probe = probe
        self.counter: CountingQueue | None = None
        if not probe:
            self.counter = CountingQueue()
            t.receiver._RTCRtpReceiver__decoder_queue = self.counter  # type: ignore[attr-defined]
        self.light: FrameCounter | None = None
        self.rcvbuf = 0  # the effective SO_RCVBUF of this viewer's sockets, once DTLS is up
        dtls = t.receiver.transport
        setup = dtls._setup_srtp

        def setup_srtp() -> None:
            setup()
            # a viewer process starved for a while must not lose what the relay sent: remote
            # viewers have CPU of their own (losses still show in rx "lost" and udp_machine)
            self.rcvbuf = set_rcvbuf(dtls.transport._connection, rcvbuf)
            if light and not probe:
                self.light = FrameCounter(dtls._rx_srtp)
                self.light.intercept(dtls.transport._connection)

        dtls._setup_srtp = setup_srtp  # type: ignore[method-assign]
        self.decoded = 0
        self.latencies: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)

    def _on_track(self, track: Any) -> None:
        if self.probe:
            self._task = asyncio.get_running_loop().create_task(self._read(track), name="probe-reader")

    async def _read(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                now = time.monotonic()
                self.decoded += 1
                sent = read_stamp(frame.to_ndarray()[: frame.height])
                age = ((int(now * 1000) & 0xFFFFFF) - sent) & 0xFFFFFF
                if age < 30_000:
                    self.latencies.append(float(age))

    @property
    def frames(self) -> int:
        if self.light is not None:
            return self.light.frames
        return self.counter.frames if self.counter is not None else self.decoded

    async def connect(self, http: Any, base: str, viewer_id: str) -> None:
        async def post(sdp: str, kind: str) -> dict[str, Any]:
            async with http.post(f"{base}/view", json={"id": viewer_id, "sdp": sdp, "type": kind}) as r:
                answer: dict[str, Any] = await r.json()
            return answer

        await self.negotiate(post)

    async def negotiate(self, answer: Any) -> None:
        """Offer, and apply what ``await answer(sdp, type)`` returns ({"sdp", "type"})."""
        from aiortc import RTCSessionDescription

        await self.pc.setLocalDescription(await self.pc.createOffer())
        ans = await answer(self.pc.localDescription.sdp, self.pc.localDescription.type)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=ans["sdp"], type=ans["type"]))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.pc.close()
        if self.light is not None:
            self.light.close()


def viewer_group_main(
    base: str, first: int, count: int, probes: int, conn: Any, light: bool = False, rcvbuf: int = 0
) -> None:
    """A process with ``count`` viewers, driven over ``conn``: "snap" -> counters, "stop"."""
    logging.basicConfig(level=logging.WARNING)
    from tests.helpers.media import use_loopback_ice

    with use_loopback_ice():
        asyncio.run(_viewer_group(base, first, count, probes, conn, light, rcvbuf))


async def _viewer_group(
    base: str, first: int, count: int, probes: int, conn: Any, light: bool, rcvbuf: int = 0
) -> None:
    import aiohttp

    loop = asyncio.get_running_loop()
    viewers: list[BenchViewer] = []
    async with aiohttp.ClientSession() as http:
        for i in range(count):
            v = BenchViewer(probe=i < probes, light=light, rcvbuf=rcvbuf)
            await v.connect(http, base, f"v{first + i}")
            viewers.append(v)
    conn.send("ready")
    try:
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            if cmd != "snap":
                break
            lat = [x for v in viewers for x in v.latencies]
            for v in viewers:
                v.latencies.clear()
            conn.send({"frames": [v.frames for v in viewers], "latency": lat, "rx": rx_totals(viewers)})
    finally:
        for v in viewers:
            await v.close()


RX_KEYS = ("packets", "lost", "reordered", "auth_failures")


def rx_totals(viewers: list[BenchViewer]) -> dict[str, int]:
    """The light viewers' receive counters, summed (:class:`FrameCounter`)."""
    out = {k: sum(getattr(v.light, k) for v in viewers if v.light is not None) for k in RX_KEYS}
    out["rcvbuf_min"] = min((v.rcvbuf for v in viewers), default=0)
    return out


def proc_cpu_s(pids: list[int]) -> float:
    """utime + stime of processes (seconds, /proc/PID/stat), 0 for one that is gone."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def udp_counters() -> dict[str, int]:
    """The machine's UDP counters (/proc/net/snmp): drops at a full socket buffer show here."""
    with contextlib.suppress(OSError):
        lines = [x.split() for x in Path("/proc/net/snmp").read_text().splitlines() if x.startswith("Udp:")]
        return dict(zip(lines[0][1:], (int(v) for v in lines[1][1:]), strict=True))
    return {}


class ViewerProcs:
    """Viewer processes driven over pipes (bench/fanout.py, bench/fanout_janus.py, bench/multinode.py):
    each says ``"ready"`` once its viewers are connected, answers ``"snap"`` with a dict holding at least
    ``frames`` (per viewer) and ``latency`` (ms since the last snap), and ends on ``"stop"``."""

    def __init__(self) -> None:
        self.procs: list[Any] = []
        self.conns: list[Any] = []

    def spawn(self, ctx: Any, target: Any, before: tuple[Any, ...], after: tuple[Any, ...] = ()) -> Any:
        """Start ``target(*before, child_conn, *after)`` in a daemon process; the parent's end of its pipe."""
        parent, child = ctx.Pipe()
        p = ctx.Process(target=target, args=(*before, child, *after), daemon=True)
        p.start()
        self.procs.append(p)
        self.conns.append(parent)
        return parent

    def wait_ready(self, timeout: float, conns: list[Any] | None = None) -> None:
        for c in self.conns if conns is None else conns:
            if not c.poll(timeout) or c.recv() != "ready":
                raise RuntimeError("viewers did not connect")

    def replies(self) -> list[dict[str, Any]]:
        """Every process's answer to ``"snap"`` (asked of all first, then read)."""
        for c in self.conns:
            c.send("snap")
        return [c.recv() for c in self.conns]

    def snap(self) -> tuple[list[int], list[float]]:
        """Frames per viewer and the latencies since the last snap."""
        frames: list[int] = []
        lat: list[float] = []
        for r in self.replies():
            frames += r["frames"]
            lat += r["latency"]
        return frames, lat

    def stop(self, join_s: float = 10) -> None:
        for c in self.conns:
            with contextlib.suppress(Exception):
                c.send("stop")
        for p in self.procs:
            p.join(join_s)
            if p.is_alive():
                p.terminate()


class ViewerGroups(ViewerProcs):
    """Viewers spread over processes, so the client side does not limit what is measured."""

    def __init__(
        self,
        ctx: Any,
        base: str,
        n: int,
        probes: int,
        per_process: int,
        light: bool = False,
        rcvbuf: int = 0,
        probe_session: bool = False,
    ) -> None:
        super().__init__()
        self.rx = dict.fromkeys(RX_KEYS, 0)
        self.rcvbuf = 0  # the smallest effective SO_RCVBUF over the viewers
        first = 0
        while first < n:
            # the probes (decoding, 720p) get a process of their own: their decoder's backlog must not
            # hold up the counting viewers' sockets, nor theirs the probes' latency
            count = min(probes if first == 0 and probes else per_process, n - first)
            target = _proc_target(viewer_group_main, probe_session and first == 0 and probes > 0)
            group = (base, first, count, max(0, min(probes - first, count)))
            self.spawn(ctx, target, group, (light, rcvbuf))
            first += count

    def snap(self) -> tuple[list[int], list[float]]:
        """Frames per viewer and the latencies since the last snap; ``self.rx``: receive totals."""
        frames: list[int] = []
        lat: list[float] = []
        self.rx = dict.fromkeys(RX_KEYS, 0)
        for r in self.replies():
            frames += r["frames"]
            lat += r["latency"]
            for k in RX_KEYS:
                self.rx[k] += r["rx"][k]
            self.rcvbuf = min(self.rcvbuf or r["rx"]["rcvbuf_min"], r["rx"]["rcvbuf_min"])
        return frames, lat


def client_snapshot(groups: ViewerGroups | None, publisher: Any) -> dict[str, Any]:
    """What the client side did so far: publisher frames, the processes' CPU, UDP drop counters."""
    return {
        "t": time.monotonic(),
        "publisher": list(publisher.counters) if publisher is not None else [0, 0],
        "publisher_cpu": proc_cpu_s([publisher.pid]) if publisher is not None else 0.0,
        "viewer_cpu": proc_cpu_s([p.pid for p in groups.procs]) if groups else 0.0,
        "rx": dict(groups.rx) if groups else dict.fromkeys(RX_KEYS, 0),
        "rcvbuf": groups.rcvbuf if groups else 0,
        "udp": udp_counters(),
    }


def client_delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Rates between two :func:`client_snapshot`s. Pure."""
    dt = max(b["t"] - a["t"], 1e-9)
    return {
        "publisher_fps": round((b["publisher"][0] - a["publisher"][0]) / dt, 1),
        "publisher_skipped": b["publisher"][1] - a["publisher"][1],
        "publisher_cores": round((b["publisher_cpu"] - a["publisher_cpu"]) / dt, 3),
        "viewer_processes_cores": round((b["viewer_cpu"] - a["viewer_cpu"]) / dt, 3),
        "viewer_rx": {k: b["rx"][k] - a["rx"][k] for k in RX_KEYS},
        "viewer_rcvbuf": b.get("rcvbuf", 0),
        "udp_machine": {
            k: b["udp"].get(k, 0) - a["udp"].get(k, 0) for k in ("RcvbufErrors", "SndbufErrors", "InErrors")
        },
    }


async def measure_phase(
    http: Any, base: str, groups: ViewerGroups | None, seconds: float, publisher: Any = None
) -> dict[str, Any]:
    async with http.get(f"{base}/cpu") as r:
        c0 = await r.json()
    f0, _ = await asyncio.to_thread(groups.snap) if groups else ([], [])
    k0 = client_snapshot(groups, publisher)
    await asyncio.sleep(seconds)
    async with http.get(f"{base}/cpu") as r:
        c1 = await r.json()
    f1, lat = await asyncio.to_thread(groups.snap) if groups else ([], [])
    clients = client_delta(k0, client_snapshot(groups, publisher))
    rx0, rx1 = c0.get("publisher_rx") or {}, c1.get("publisher_rx") or {}
    clients["relay_rx_from_publisher"] = {k: rx1.get(k, 0) - rx0.get(k, 0) for k in ("packets", "lost")}
    elapsed = c1["t"] - c0["t"]
    fps = [(b - a) / elapsed for a, b in zip(f0, f1, strict=True)]
    san0, san1 = c0.get("sanitizer") or {}, c1.get("sanitizer") or {}
    fs0, fs1 = c0.get("fast_send") or {}, c1.get("fast_send") or {}
    fast = {k: round(v - fs0.get(k, 0), 3) for k, v in fs1.items() if k != "links"} if fs1 else None
    if fast is not None:
        fast["links"] = fs1["links"]
        fast["send_cores"] = round(fast["cpu_s"] / elapsed, 4)  # thread CPU inside the fast path's sends
        # what the relay sent each viewer (frames per link and second): the viewers' counts can only
        # be lower (loss, or a viewer process behind on its socket buffer)
        fast["fps_per_link"] = round(fast["frames"] / max(fs1["links"], 1) / elapsed, 1)
    t0, t1 = c0.get("threads_cpu") or {}, c1.get("threads_cpu") or {}
    return {
        "threads_cores": {g: round((v - t0.get(g, 0.0)) / elapsed, 3) for g, v in t1.items()},
        "fast_send": fast,
        "cores": (c1["cpu"] - c0["cpu"]) / elapsed,
        "loop_cores": (c1["loop_cpu"] - c0["loop_cpu"]) / elapsed,
        "server_fps_in": round((san1.get("frames_in", 0) - san0.get("frames_in", 0)) / elapsed, 1),
        "server_fps_out": round((san1.get("frames_out", 0) - san0.get("frames_out", 0)) / elapsed, 1),
        "server_fps_encoded": round((c1.get("encoded_frames", 0) - c0.get("encoded_frames", 0)) / elapsed, 1),
        "server_dropped": {
            k: san1.get(k, 0) - san0.get(k, 0)
            for k in ("dropped_stale", "dropped_output", "full_pixelations")
        },
        "fps": fps,
        "latency": lat,
        "server": c1,
        "clients": clients,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


async def run_mode(mode: str, n_viewers: int, args: argparse.Namespace) -> dict[str, Any]:
    seconds, per_process = args.seconds, args.viewers_per_process
    probes = min(args.probes, n_viewers)
    import aiohttp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    own = args.sessions == "own"
    proc = ctx.Process(
        target=_proc_target(server_main, own), args=(mode, port, ready, args.size, args.syscall), daemon=True
    )
    proc.start()
    if not ready.wait(60):
        raise RuntimeError("server did not start")
    logger.info("%s: relay pid %d", mode, proc.pid)  # for a profiler: py-spy record --pid ...
    base = f"http://127.0.0.1:{port}"
    pub_ready = ctx.Event()
    counters = ctx.Array("q", 2)  # frames produced, skipped (make_stamped_track)
    pub = ctx.Process(
        target=_proc_target(publisher_main, own), args=(base, pub_ready, args.size, counters), daemon=True
    )
    pub.start()
    pub.counters = counters  # type: ignore[attr-defined]  # read by client_side
    groups: ViewerGroups | None = None
    try:
        if not pub_ready.wait(60):
            raise RuntimeError("publisher did not start")
        async with aiohttp.ClientSession() as http:
            await asyncio.sleep(3.0)
            idle = await measure_phase(http, base, None, seconds, pub)
            logger.info("%s: no viewers: %.3f cores", mode, idle["cores"])
            groups = ViewerGroups(
                ctx, base, n_viewers, probes, per_process, args.light_viewers, args.viewer_rcvbuf, own
            )
            await asyncio.to_thread(groups.wait_ready, 120)
            logger.info("%s: %d viewers connected", mode, n_viewers)
            await asyncio.sleep(3.0)
            loaded = await measure_phase(http, base, groups, seconds, pub)
            logger.info("%s: %d viewers: %.3f cores", mode, n_viewers, loaded["cores"])
    finally:
        if groups is not None:
            groups.stop()
        pub.terminate()
        pub.join(10)
        proc.terminate()
        proc.join(10)
    return {"idle": idle, "loaded": loaded}


def _per_frame_cores(phase: dict[str, Any]) -> float | None:
    """Relay CPU seconds per frame it put out (encoded once, or sanitized for per-viewer encoders)."""
    frames = phase["server_fps_encoded"] or phase["server_fps_out"]
    return phase["cores"] / frames if frames else None


def summarize(res: dict[str, Any], n: int) -> dict[str, Any]:
    """``cores_per_viewer``: (cores with viewers - cores without) / viewers. On a box where the relay is
    starved it also processes fewer frames with viewers, so ``cores_per_viewer_30fps`` normalizes each
    phase to CPU per frame put out, and scales the difference to 30 frames/s."""
    fps = res["loaded"]["fps"]
    idle_f, loaded_f = _per_frame_cores(res["idle"]), _per_frame_cores(res["loaded"])
    per_frame = (
        round((loaded_f - idle_f) * 30 / n, 5) if idle_f is not None and loaded_f is not None else None
    )
    # the same on the event loop's thread only (the send paths run there; encoder/sanitizer threads do not)
    fi, fl = res["idle"], res["loaded"]
    ni, nl = (
        fi["server_fps_encoded"] or fi["server_fps_out"],
        fl["server_fps_encoded"] or fl["server_fps_out"],
    )
    loop_per_frame = round((fl["loop_cores"] / nl - fi["loop_cores"] / ni) * 30 / n, 5) if ni and nl else None
    lat = res["loaded"]["latency"]
    return {
        "clients": res["loaded"]["clients"],
        # where frames go missing, in the loaded phase: publisher → relay in → sanitized → encoded → viewers
        "frame_chain_fps": [
            res["loaded"]["clients"]["publisher_fps"],
            res["loaded"]["server_fps_in"],
            res["loaded"]["server_fps_out"],
            res["loaded"]["server_fps_encoded"],
            round(statistics.median(fps), 1) if fps else None,
        ],
        "loadavg_1m_idle_loaded": [res["idle"]["loadavg_1m"], res["loaded"]["loadavg_1m"]],
        "server_fps_in": res["loaded"]["server_fps_in"],
        "server_fps_out": res["loaded"]["server_fps_out"],
        "server_fps_encoded": res["loaded"]["server_fps_encoded"],
        "server_dropped": res["loaded"]["server_dropped"],
        "server_stage_ms_p50": res["loaded"]["server"].get("stage_ms_p50"),
        "server_loop_lag_ms": [
            res["loaded"]["server"].get("loop_lag_ms_p50"),
            res["loaded"]["server"].get("loop_lag_ms_p95"),
        ],
        "server_rss_mb": round(res["loaded"]["server"]["rss_mb"], 1),
        # CPU by thread in the loaded phase, and what 30 fps would take at the same cost per frame
        "server_threads_cores": res["loaded"]["threads_cores"],
        "server_cores_needed_30fps_no_viewer": cores_needed_30fps(
            res["idle"]["threads_cores"],
            res["idle"]["server_fps_in"],
            res["idle"]["server_fps_encoded"] or res["idle"]["server_fps_out"],
        ),
        "server_cores_needed_30fps": cores_needed_30fps(
            res["loaded"]["threads_cores"],
            res["loaded"]["server_fps_in"],
            res["loaded"]["server_fps_encoded"] or res["loaded"]["server_fps_out"],
        ),
        # frame at the relay's sanitizer → its packets handed to the viewers (the relay's own share)
        "server_latency_ms_p50_p95": [
            res["loaded"]["server"].get("server_latency_ms_p50"),
            res["loaded"]["server"].get("server_latency_ms_p95"),
        ],
        "fast_send": res["loaded"]["fast_send"],
        "send_cores_per_viewer": (
            round(res["loaded"]["fast_send"]["send_cores"] / n, 5) if res["loaded"]["fast_send"] else None
        ),
        "cores_idle": round(res["idle"]["cores"], 3),
        "cores_loaded": round(res["loaded"]["cores"], 3),
        "cores_per_viewer": round((res["loaded"]["cores"] - res["idle"]["cores"]) / n, 4),
        "cores_per_viewer_30fps": per_frame,
        "loop_cores_per_viewer_30fps": loop_per_frame,
        "loop_cores_idle_loaded": [round(fi["loop_cores"], 3), round(fl["loop_cores"], 3)],
        "server_fps_encoded_idle": res["idle"]["server_fps_encoded"] or res["idle"]["server_fps_out"],
        "fps_median": round(statistics.median(fps), 1) if fps else None,
        "fps_min": round(min(fps), 1) if fps else None,
        "latency_ms_p50": _pct(lat, 50),
        "latency_ms_p95": _pct(lat, 95),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    n = args.viewers
    paths = ["fast", "aiortc"] if args.send_path == "both" else [args.send_path]
    runs = {
        p: summarize(await run_mode("fanout" if p == "fast" else "fanout-aiortc", n, args), n) for p in paths
    }
    base = summarize(await run_mode("baseline", args.baseline_viewers, args), args.baseline_viewers)
    ours = runs[paths[0]]

    def ratio(r: dict[str, Any], key: str = "cores_per_viewer") -> float | None:
        if base[key] is None or not r[key] or r[key] <= 0:
            return None
        return round(base[key] / r[key], 1)

    out = {
        "viewers": n,
        "seconds": args.seconds,
        "size": f"{args.size[0]}x{args.size[1]}",
        "send_path": paths[0],
        "syscall": args.syscall,
        "light_viewers": args.light_viewers,
        "sessions": args.sessions,
        "cores_per_viewer": ours["cores_per_viewer"],
        "cores_per_viewer_baseline": base["cores_per_viewer"],
        "baseline_viewers": args.baseline_viewers,
        "fps_median": ours["fps_median"],
        "fps_min": ours["fps_min"],
        "latency_ms_p50": ours["latency_ms_p50"],
        "latency_ms_p95": ours["latency_ms_p95"],
        "ratio_per_viewer": ratio(ours),
        "cores_per_viewer_30fps": ours["cores_per_viewer_30fps"],
        "cores_per_viewer_30fps_baseline": base["cores_per_viewer_30fps"],
        "ratio_per_viewer_30fps": ratio(ours, "cores_per_viewer_30fps"),
        "send_cores_per_viewer": ours["send_cores_per_viewer"],
        "loop_cores_per_viewer_30fps": ours["loop_cores_per_viewer_30fps"],
        "fast_send": ours.get("fast_send"),
        "server_fps_sent_per_viewer": (ours.get("fast_send") or {}).get("fps_per_link"),
        "frame_chain_fps": ours["frame_chain_fps"],
        "clients": ours["clients"],
        "loadavg_1m_idle_loaded": ours["loadavg_1m_idle_loaded"],
        "server_cores_idle": ours["cores_idle"],
        "server_cores_loaded": ours["cores_loaded"],
        "server_fps_in": ours["server_fps_in"],
        "server_fps_out": ours["server_fps_out"],
        "server_fps_encoded": ours["server_fps_encoded"],
        "server_fps_encoded_idle": ours["server_fps_encoded_idle"],  # the same relay with no viewer
        "server_dropped": ours["server_dropped"],
        "server_stage_ms_p50": ours["server_stage_ms_p50"],
        "server_loop_lag_ms_p50_p95": ours["server_loop_lag_ms"],
        "server_rss_mb": ours["server_rss_mb"],
        "server_latency_ms_p50_p95": ours["server_latency_ms_p50_p95"],
        "server_threads_cores": ours["server_threads_cores"],
        "server_cores_needed_30fps": ours["server_cores_needed_30fps"],
        "server_cores_needed_30fps_no_viewer": ours["server_cores_needed_30fps_no_viewer"],
        "baseline": base,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    if "aiortc" in runs and paths[0] != "aiortc":
        out["aiortc_path"] = runs["aiortc"]
        out["ratio_per_viewer_aiortc_path"] = ratio(runs["aiortc"])
        out["ratio_per_viewer_30fps_aiortc_path"] = ratio(runs["aiortc"], "cores_per_viewer_30fps")
    return out


def _size(text: str) -> tuple[int, int]:
    w, h = (int(x) for x in text.lower().split("x"))
    return w, h


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--viewers", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--baseline-viewers", type=int, default=5)
    ap.add_argument("--probes", type=int, default=2, help="viewers that decode and measure latency")
    ap.add_argument("--viewers-per-process", type=int, default=5)
    ap.add_argument("--size", type=_size, default=(W, H), help="publisher frame size, WxH (default 640x480)")
    ap.add_argument(
        "--send-path",
        choices=["fast", "aiortc", "both"],
        default="both",
        help="ours with the fast send path (relay/fastsend.py), with aiortc's RTCRtpSender, or both in one run",
    )
    ap.add_argument(
        "--light-viewers",
        action="store_true",
        help="viewers other than the probes count frames from the clear RTP headers and do not decrypt "
        "(client CPU; for 100 viewers on 2 cores)",
    )
    ap.add_argument(
        "--viewer-rcvbuf",
        type=int,
        default=4 << 20,
        help="SO_RCVBUF asked for every viewer's sockets (the kernel caps it at net.core.rmem_max; "
        "0: the system default, ~208 KiB, which a viewer process starved for ~1 s overflows)",
    )
    ap.add_argument(
        "--sessions",
        choices=["own", "shared"],
        default="own",
        help="own (default): the relay, the publisher and the probes' process each run in a session of "
        "their own (setsid: their own sched_autogroup, as separate machines), the counting viewers "
        "share the benchmark's; "
        "shared: every process in the benchmark's session (the viewers' CPU competes with the relay's)",
    )
    ap.add_argument("--syscall", choices=["gso", "mmsg", "sendto"], default="gso", help="--fast-send-syscall")
    ap.add_argument(
        "--engine",
        choices=["relay", "janus"],
        default="relay",
        help="janus: every viewer through a private Janus (bench/fanout_janus.py; --steps)",
    )
    ap.add_argument(
        "--steps", default="", help="with --engine janus: viewer counts measured in turn, e.g. 50,100,200"
    )
    args = ap.parse_args(argv)
    if args.engine == "janus":
        from bench.fanout_janus import main_janus

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
        print(json.dumps(asyncio.run(main_janus(args))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("aioice").setLevel(logging.WARNING)
    from tests.helpers.media import use_loopback_ice

    with use_loopback_ice():
        out = asyncio.run(main_async(args))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
