"""Encode once per room, forward the same ``av.Packet``s to every viewer (SFU-style).

- :class:`RoomEncoder`: one encode per room **and codec** (VP8 via libvpx, H.264 via libx264:
  relay/video_codecs.py) in its own single-thread executor; the room's pipeline hands every running
  encoder the same sanitized yuv420p frames (relay/media.py) through :meth:`RoomEncoder.submit`.
- :class:`relay.packets.PacketTrack`: one per viewer and media kind; ``recv()`` returns the shared
  packets, which aiortc's ``RTCRtpSender`` only packetizes (``encoder.pack``): SSRC, sequence numbers,
  NACK/RTX history stay per viewer.
- :class:`relay.audio.AudioEncoder`: the publisher's audio, encoded once to Opus, forwarded the same way.

Keyframes (aiortc drops PLI/FIR on its packet path, so they are ours):
a new video viewer is **gated** (gets nothing) until a keyframe, and joining requests one;
PLI/FIR from any viewer (hooked into its sender, see :func:`relay.packets.hook_keyframe_requests`)
requests one; requests are coalesced and throttled to one per ``keyframe_min_interval_s`` (a request
inside the interval is delayed, not lost); a keyframe is also sent every ``keyframe_interval_s``.

Bitrate policy: the room encodes at a **fixed** ``video_bitrate`` (CBR). Receiver estimates
(REMB) are ignored: following the slowest viewer would degrade every viewer and each >10 %
change would restart the codec (an extra keyframe). A viewer that cannot keep up overflows its
own bounded queue: its queue is cleared and it is gated to the next keyframe (requested), so it
skips ahead to live instead of falling behind; nobody else is affected.

Codecs: a viewer gets the codec its offer prefers among VP8 and H.264 constrained baseline
(relay/egress_codecs.py); the room runs its VP8 encode always and an H.264 encode only while it has
H.264 viewers (relay/media.py). Keyframe gate, keyframe requests (PLI/FIR go to the viewer's own
encoder), fixed bitrate and the error rule are the same for both. An offer with neither codec is
refused with the error code ``unsupported_codec``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import av
from av import VideoFrame

from relay.audio import AudioEncoder
from relay.metrics import StreamMetrics
from relay.packets import VIDEO_QUEUE_PACKETS, PacketTrack, hook_keyframe_requests
from relay.settings import Settings
from relay.tasks import TaskSet
from relay.video_codecs import VIDEO_TIME_BASE, VideoCodec, encoder_input, new_context, vp8_cpu_used
from relay.video_codecs import new_vp8 as _new_vp8

__all__ = [
    "VIDEO_QUEUE_PACKETS",
    "AudioEncoder",
    "EncoderMetrics",
    "PacketTrack",
    "RoomEncoder",
    "_new_vp8",
    "hook_keyframe_requests",
    "vp8_cpu_used",
]

logger = logging.getLogger(__name__)

ENCODER_QUEUE_FRAMES = 4  # sanitized frames waiting for the encoder, at most (the oldest is dropped)
MAX_CONSECUTIVE_ENCODE_ERRORS = 3  # then the encoder ends, and the room with it (relay/room.py)


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


def keyframe_due(since_last: float, wanted: bool, settings: Settings) -> tuple[bool, bool]:
    """(force, periodic) for a frame ``since_last`` seconds after the last keyframe."""
    if wanted and since_last >= settings.keyframe_min_interval_s:
        return True, False
    if since_last >= settings.keyframe_interval_s:
        return True, True
    return False, False


class RoomEncoder:
    """One encode per room and codec (``"vp8"`` or ``"h264"``: relay/video_codecs.py); packets go to
    every :class:`PacketTrack` of the encoder's viewers.

    Frames come from :meth:`submit`, which any thread may call — the room's pipeline calls it from
    its mosaic thread, so a frame goes mosaic thread → encoder thread without waking the event loop
    in between; the loop is woken once per frame, to hand the packets to the viewers. At most
    ``ENCODER_QUEUE_FRAMES`` wait (lookahead hands frames over in small bursts); beyond that the
    oldest is dropped. A frame's timestamp follows its arrival at the pipeline (``frame.opaque``),
    not when it was handed over, so a burst plays back at the pace it was captured.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        codec: VideoCodec = "vp8",
        name: str = "encoder",
        stream: StreamMetrics | None = None,
    ) -> None:
        self.codec: VideoCodec = codec
        self._stream = stream
        self._settings = settings
        self._name = name
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-{codec}")
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

    @property
    def task_count(self) -> int:
        return len(self._tasks)

    @property
    def failed(self) -> bool:
        """Gave up after ``MAX_CONSECUTIVE_ENCODE_ERRORS`` (``ended`` is set too)."""
        return self._failed

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
        """A viewer's track (``make``: :class:`PacketTrack`, or relay/fastsend.py's batched one)."""
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

    # --- encoding (encoder thread) -----------------------------------------------------------

    def _encode(self, frame: VideoFrame, pts: int, force: bool) -> list[av.Packet[Any]]:
        frame = encoder_input(self.codec, frame)
        size = (frame.width, frame.height)
        if self._codec is None or size != self._size:
            s = self._settings
            self._codec = new_context(self.codec, frame.width, frame.height, s.video_bitrate, s.max_fps)
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
                force, periodic = keyframe_due(
                    now - self._last_keyframe, self._keyframe_wanted, self._settings
                )
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
                    logger.warning(
                        "%s: %s encode failed; restarting the codec", self._name, self.codec, exc_info=True
                    )
                    continue
                logger.exception(
                    "%s: %s encode failed %d times in a row; ending the stream",
                    self._name,
                    self.codec,
                    self._failures,
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
                keyframes = 0
                for packet in packets:
                    self.metrics.packets += 1
                    if packet.is_keyframe:
                        keyframes += 1
                        self.metrics.keyframes += 1
                        self._last_keyframe = now
                        if self._keyframe_wanted:
                            self.metrics.forced_keyframes += 1
                            self._keyframe_wanted = False
                        elif periodic:
                            self.metrics.periodic_keyframes += 1
            if self._stream is not None:
                self._stream.encoded(done - now, sum(p.size for p in packets), keyframes)
            if packets and self._loop is not None:
                try:
                    self._loop.call_soon_threadsafe(self._deliver, packets)
                except RuntimeError:  # the loop is closed
                    return

    def _deliver(self, packets: list[av.Packet[Any]]) -> None:
        for packet in packets:
            for track in self._viewers:
                track.push(packet)
