"""Encode once per room, forward the same ``av.Packet``s to every viewer (SFU-style).

- :class:`RoomEncoder`: one VP8 (libvpx, aiortc's realtime settings) encode per room in a
  single-thread executor, reading sanitized yuv420p frames from the room's sanitizer.
- :class:`PacketTrack`: one per viewer and media kind; ``recv()`` returns the shared packets,
  which aiortc's ``RTCRtpSender`` only packetizes (``encoder.pack``): SSRC, sequence numbers,
  NACK/RTX history stay per viewer.
- :class:`AudioEncoder`: the publisher's audio, encoded once to Opus, forwarded the same way.

Keyframes (aiortc drops PLI/FIR on its packet path, so they are ours):
a new video viewer is **gated** (gets nothing) until a keyframe, and joining requests one;
PLI/FIR from any viewer (hooked into its sender, see :func:`hook_keyframe_requests`) requests
one; requests are coalesced and throttled to one per ``keyframe_min_interval_s`` (a request
inside the interval is delayed, not lost); a keyframe is also sent every ``keyframe_interval_s``.

Bitrate policy: the room encodes at a **fixed** ``video_bitrate`` (CBR). Receiver estimates
(REMB) are ignored: following the slowest viewer would degrade every viewer and each >10 %
change would restart the codec (an extra keyframe). A viewer that cannot keep up overflows its
own bounded queue: its queue is cleared and it is gated to the next keyframe (requested), so it
skips ahead to live instead of falling behind; nobody else is affected.

Codecs: viewers are served VP8 only (one encode). An offer without VP8 is refused by the room
with the error code ``unsupported_codec`` (see relay/room.py).

This relies on aiortc 1.16.0 internals (``RTCRtpSender._handle_rtcp_packet`` and the
``av.Packet`` path of ``_next_encoded_frame``); requirements.txt pins it and
tests/test_fanout.py checks both.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import av
from aiortc import RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket
from av import AudioFrame, VideoFrame
from av.audio.resampler import AudioResampler

from relay.settings import Settings
from relay.tasks import TaskSet

logger = logging.getLogger(__name__)

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
AUDIO_RATE = 48000
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)
VIDEO_QUEUE_PACKETS = 30  # ~1 s at 30 fps; overflow => skip to the next keyframe
ENCODER_QUEUE_FRAMES = 4  # sanitized frames waiting for the encoder, at most (the oldest is dropped)
MAX_CONSECUTIVE_ENCODE_ERRORS = 3  # then the encoder ends, and the room with it (relay/room.py)
AUDIO_QUEUE_PACKETS = 25  # 0.5 s of 20 ms packets; overflow => drop the oldest


class FrameSource(Protocol):
    async def recv(self) -> VideoFrame: ...


class PacketTrack(MediaStreamTrack):
    """A viewer's track: the room's shared packets from a bounded queue."""

    def __init__(
        self,
        kind: str,
        maxlen: int,
        *,
        gated: bool,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self._queue: deque[av.Packet] = deque()
        self._maxlen = maxlen
        self._event = asyncio.Event()
        self.gated = gated  # waiting for a keyframe
        self._on_overflow = on_overflow
        self.packets_in = 0
        self.packets_out = 0
        self.packets_dropped = 0
        self.overflows = 0

    def push(self, packet: av.Packet) -> None:
        if self.readyState != "live":
            return
        self.packets_in += 1
        if self.gated:
            if not packet.is_keyframe:
                self.packets_dropped += 1
                return
            self.gated = False
        if len(self._queue) >= self._maxlen:
            self.overflows += 1
            if self.kind == "video":
                # newest wins: skip to the next keyframe rather than play a stale backlog
                self.packets_dropped += len(self._queue) + (0 if packet.is_keyframe else 1)
                self._queue.clear()
                if not packet.is_keyframe:
                    self.gated = True
                    if self._on_overflow is not None:
                        self._on_overflow()
                    return
            else:
                self._queue.popleft()
                self.packets_dropped += 1
        self._queue.append(packet)
        self._event.set()

    async def recv(self) -> av.Packet:  # type: ignore[override]
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._event.clear()
            await self._event.wait()
        if self.readyState != "live":
            raise MediaStreamError
        self.packets_out += 1
        return self._queue.popleft()

    def stop(self) -> None:
        super().stop()
        self._queue.clear()
        self._event.set()


def hook_keyframe_requests(sender: RTCRtpSender, on_request: Callable[[], None]) -> None:
    """Route PLI/FIR that reach ``sender`` to ``on_request`` (aiortc ignores them for packets).

    aiortc 1.16.0 delivers RTCP to ``sender._handle_rtcp_packet(packet)`` via attribute lookup
    on the instance (``RTCDtlsTransport._handle_rtcp_data``), so wrapping it per instance is enough.
    """
    original = sender._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            on_request()
        await original(packet)

    sender._handle_rtcp_packet = handle  # type: ignore[method-assign]


@dataclass
class EncoderMetrics:
    frames: int = 0
    packets: int = 0
    keyframes: int = 0
    forced_keyframes: int = 0  # join / PLI / overflow requests served
    periodic_keyframes: int = 0
    keyframe_requests: int = 0
    encode_errors: int = 0
    dropped_frames: int = 0  # frames dropped because ENCODER_QUEUE_FRAMES already waited
    encode_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    # publisher frame arrival at the sanitizer → packet handed to the viewers (server-side added latency)
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))


def vp8_cpu_used(width: int, height: int) -> int:
    """libvpx speed for a frame size: aiortc's -6 up to 640x480, -10 above.

    Measured here on a 1280x720 pan at 1.5 Mbps (docs/BENCHMARKS.md): -6 takes 12.4 ms a frame and
    -10 9.1 ms for the same PSNR (37.7 dB); with the detector on the other core, the 720p encode at -6
    was what kept the room under 30 fps. Small frames keep -6 (they are cheap either way).
    """
    return -6 if width * height <= 640 * 480 else -10


def _new_vp8(width: int, height: int, bitrate: int) -> Any:
    """A libvpx context with aiortc's realtime settings (codecs/vpx.py) at a fixed bitrate,
    and a faster speed for frames above 640x480 (:func:`vp8_cpu_used`)."""
    codec: Any = av.CodecContext.create("libvpx", "w")
    codec.width = width
    codec.height = height
    codec.bit_rate = bitrate
    codec.pix_fmt = "yuv420p"
    codec.time_base = VIDEO_TIME_BASE
    codec.gop_size = 3000  # keyframes are placed by the room
    codec.qmin = 2
    codec.qmax = 56
    codec.options = {
        "bufsize": str(bitrate),
        "cpu-used": str(vp8_cpu_used(width, height)),
        "deadline": "realtime",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "noise-sensitivity": "4",
        "overshoot-pct": "15",
        "partitions": "0",
        "static-thresh": "1",
        "undershoot-pct": "100",
    }
    codec.thread_count = 1
    return codec


class RoomEncoder:
    """One VP8 encode per room; packets go to every :class:`PacketTrack` of the room.

    Frames come either from ``source.recv()`` (pull: a task reads it) or from :meth:`submit`,
    which any thread may call — the room's sanitizer calls it from its mosaic thread, so a frame
    goes mosaic thread → encoder thread without waking the event loop in between; the loop is
    woken once per frame, to hand the packets to the viewers. At most ``ENCODER_QUEUE_FRAMES`` wait
    (the sanitizer's lookahead hands frames over in small bursts); beyond that the oldest is dropped.
    A frame's timestamp follows its arrival at the sanitizer (``frame.opaque``), not when it was
    handed over, so a burst plays back at the pace it was captured.
    """

    def __init__(self, source: FrameSource | None, settings: Settings, *, name: str = "encoder") -> None:
        self._source = source
        self._settings = settings
        self._name = name
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-vp8")
        self._tasks = TaskSet(name)
        self._viewers: set[PacketTrack] = set()
        self._codec: Any = None
        self._size: tuple[int, int] | None = None
        self._t0 = time.monotonic()
        self._last_pts = -1
        self._lock = threading.Lock()  # guards the queue, the busy flag and the keyframe state
        self._queue: deque[tuple[VideoFrame, float]] = deque()
        self._busy = False
        self._last_keyframe = float("-inf")
        self._keyframe_wanted = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.metrics = EncoderMetrics()
        self.ended = asyncio.Event()
        self._stopped = False
        self._failures = 0  # consecutive encode errors (encoder thread)
        self._failed = False  # gave up after MAX_CONSECUTIVE_ENCODE_ERRORS

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._source is not None:
            self._tasks.create(self._pull(), "pull")

    async def stop(self, grace_s: float = 2.0) -> None:
        if self._stopped:
            return
        with self._lock:
            self._stopped = True
            self._queue.clear()
        await self._tasks.close(grace_s)
        for track in list(self._viewers):
            track.stop()
        self._viewers.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.ended.set()

    # --- viewers -----------------------------------------------------------------------------

    def add_viewer(self, make: Callable[..., PacketTrack] = PacketTrack) -> PacketTrack:
        track = make("video", VIDEO_QUEUE_PACKETS, gated=True, on_overflow=self.request_keyframe)
        self._viewers.add(track)
        self.request_keyframe()
        return track

    def remove_viewer(self, track: PacketTrack) -> None:
        self._viewers.discard(track)
        track.stop()

    @property
    def viewer_count(self) -> int:
        return len(self._viewers)

    def request_keyframe(self) -> None:
        """Ask for a keyframe; coalesced and throttled to ``keyframe_min_interval_s``."""
        with self._lock:
            self.metrics.keyframe_requests += 1
            self._keyframe_wanted = True

    # --- input -------------------------------------------------------------------------------

    def submit(self, frame: VideoFrame) -> None:
        """Queue ``frame`` for encoding (dropping the oldest waiting frame if the queue is full). Any thread."""
        with self._lock:
            if self._stopped or self._failed or self._loop is None:
                return
            if len(self._queue) >= ENCODER_QUEUE_FRAMES:
                self._queue.popleft()
                self.metrics.dropped_frames += 1
            self._queue.append((frame, time.monotonic()))
            if self._busy:
                return
            self._busy = True
        try:
            self._executor.submit(self._drain)
        except RuntimeError:  # shut down
            with self._lock:
                self._busy = False

    async def _pull(self) -> None:
        try:
            while True:
                try:
                    frame = await self._source.recv()  # type: ignore[union-attr]
                except MediaStreamError:
                    return
                self.submit(frame)
        finally:
            self.ended.set()

    # --- encoding (encoder thread) -----------------------------------------------------------

    def _want_keyframe(self, now: float) -> tuple[bool, bool]:
        """(force, periodic) for the frame about to be encoded at ``now`` (under ``_lock``)."""
        since = now - self._last_keyframe
        if self._keyframe_wanted and since >= self._settings.keyframe_min_interval_s:
            return True, False
        if since >= self._settings.keyframe_interval_s:
            return True, True
        return False, False

    def _encode(self, frame: VideoFrame, pts: int, force: bool) -> list[av.Packet]:
        size = (frame.width, frame.height)
        if self._codec is None or size != self._size:
            self._codec = _new_vp8(frame.width, frame.height, self._settings.video_bitrate)
            self._size = size
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        frame.pict_type = av.video.frame.PictureType.I if force else av.video.frame.PictureType.NONE
        packets = list(self._codec.encode(frame))
        for p in packets:
            p.time_base = VIDEO_TIME_BASE
        return packets

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue or self._stopped:
                    self._busy = False
                    return
                frame, now = self._queue.popleft()
                force, periodic = self._want_keyframe(now)
            arrival = frame.opaque if isinstance(frame.opaque, float) else None
            captured = now if arrival is None else arrival
            pts = max(int((captured - self._t0) * 90000), self._last_pts + 1)
            self._last_pts = pts
            try:
                packets = self._encode(frame, pts, force)
            except Exception:
                self.metrics.encode_errors += 1
                self._codec = None
                self._failures += 1
                if self._failures < MAX_CONSECUTIVE_ENCODE_ERRORS:
                    logger.warning("%s: encode failed; restarting the codec", self._name, exc_info=True)
                    continue
                logger.exception(
                    "%s: encode failed %d times in a row; ending the stream", self._name, self._failures
                )
                with self._lock:
                    self._failed, self._busy = True, False
                    self._queue.clear()
                if self._loop is not None:
                    try:
                        self._loop.call_soon_threadsafe(self.ended.set)  # the room closes on it
                    except RuntimeError:  # the loop is closed
                        pass
                return
            self._failures = 0
            done = time.monotonic()
            with self._lock:
                self.metrics.frames += 1
                self.metrics.encode_ms.append((done - now) * 1000.0)
                if arrival is not None and packets:
                    self.metrics.latency_ms.append((done - arrival) * 1000.0)
                for packet in packets:
                    self.metrics.packets += 1
                    if packet.is_keyframe:
                        self.metrics.keyframes += 1
                        self._last_keyframe = now
                        if self._keyframe_wanted:
                            self.metrics.forced_keyframes += 1
                            self._keyframe_wanted = False
                        elif periodic:
                            self.metrics.periodic_keyframes += 1
            if packets and self._loop is not None:
                try:
                    self._loop.call_soon_threadsafe(self._deliver, packets)
                except RuntimeError:  # the loop is closed
                    return

    def _deliver(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            for track in self._viewers:
                track.push(packet)


class AudioEncoder:
    """Drains the publisher's audio track and encodes it once to Opus for every viewer."""

    def __init__(self, source: MediaStreamTrack, *, name: str = "audio") -> None:
        self._source = source
        self._name = name
        self._tasks = TaskSet(name)
        self._viewers: set[PacketTrack] = set()
        self._codec: Any = None
        self._resampler = AudioResampler(format="s16", layout="stereo", rate=AUDIO_RATE, frame_size=960)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-opus")
        self._stopped = False
        self.packets = 0

    def start(self) -> None:
        self._tasks.create(self._run(), "opus")

    async def stop(self, grace_s: float = 2.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self._tasks.close(grace_s)
        for track in list(self._viewers):
            track.stop()
        self._viewers.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def add_viewer(self, make: Callable[..., PacketTrack] = PacketTrack) -> PacketTrack:
        track = make("audio", AUDIO_QUEUE_PACKETS, gated=False)
        self._viewers.add(track)
        return track

    def remove_viewer(self, track: PacketTrack) -> None:
        self._viewers.discard(track)
        track.stop()

    def _encode(self, frame: AudioFrame) -> list[av.Packet]:
        if self._codec is None:
            codec: Any = av.CodecContext.create("libopus", "w")
            codec.bit_rate = 64000
            codec.format = "s16"
            codec.layout = "stereo"
            codec.sample_rate = AUDIO_RATE
            codec.time_base = AUDIO_TIME_BASE
            codec.options = {"application": "voip"}
            self._codec = codec
        out: list[av.Packet] = []
        for f in self._resampler.resample(frame):
            out.extend(self._codec.encode(f))
        for p in out:
            p.time_base = AUDIO_TIME_BASE
        return out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await self._source.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, AudioFrame):
                continue
            try:
                packets = await loop.run_in_executor(self._executor, self._encode, frame)
            except Exception:
                logger.exception("%s: opus encode failed", self._name)
                self._codec = None
                continue
            for packet in packets:
                self.packets += 1
                for track in self._viewers:
                    track.push(packet)
