"""RTMP(S) restream of a room's sanitized video (H.264) and audio (AAC) as FLV, one thread per target.

- :class:`Restream`: one push to one URL. :meth:`Restream.submit_video` takes the sanitized frames
  the room's sanitizer hands over (any thread, never blocks: a bounded queue, newest wins); its own
  thread copies, encodes (relay/restream_encode.py) and sends them (relay/rtmp.py). It connects on
  the first frame, and when the far end drops or refuses it reconnects with exponential backoff
  (0.5 s doubling, capped at ``BACKOFF_CAP_S``) until :meth:`Restream.stop`.
- :class:`RestreamSet`: a room's restreams (add/remove/list, fan-out of frames, close).

Only sanitized frames ever reach a restream (the room hands them over after the mosaic), so what
leaves over RTMP is what viewers get. The stream key is a secret: logs, errors and API answers only
ever show :attr:`Restream.masked_url` (``rtmp://host:1935/app/****``).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import secrets
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import av
from av import AudioFrame, VideoFrame

from relay.errors import Conflict, LimitExceeded, NotFound, RelayError
from relay.restream_encode import FlvEncoder, private_copy
from relay.restream_url import (
    Resolver,
    TargetRefused,
    checked_addresses,
    parse_rtmp_url,
    resolve_host,
    validate_restream_url,
)
from relay.rtmp import RtmpClient
from relay.rtmp_wire import RtmpError
from relay.settings import Settings

__all__ = ["Restream", "RestreamSet", "TargetRefused", "validate_restream_url"]

logger = logging.getLogger(__name__)

VIDEO_QUEUE_FRAMES = 8  # waiting for the restream thread, at most (the oldest is dropped)
AUDIO_QUEUE_FRAMES = 100  # ~2 s of 20 ms frames
STALE_S = 1.0  # frames older than this when a connection starts are dropped
BACKOFF_START_S = 0.5
BACKOFF_CAP_S = 10.0
STABLE_S = 10.0  # a connection that stayed up this long resets the backoff
CONNECT_TIMEOUT_S = 5.0  # TCP/TLS connect, handshake, each command reply, each blocked send
STATES = {"stopped": 0, "connecting": 1, "live": 2}  # the gauge mosaic_relay_restream_state


@dataclass
class RestreamMetrics:
    frames_in: int = 0
    frames_dropped: int = 0  # dropped from the queue (the thread was behind) or while disconnected
    frames_sent: int = 0
    connects: int = 0  # connections that reached "live"
    failures: int = 0  # connection attempts or connections that failed
    bytes_sent: int = 0
    first_output_s: float | None = None  # start() -> first video tag sent
    encode_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))  # copy + encode + mux


@dataclass(frozen=True)
class RestreamOptions:
    allow_private: bool = False  # targets on loopback/private networks (the SSRF guard off)
    bitrate: int = 2_500_000  # video bits/s (capped: x264 maxrate = bufsize = bitrate)
    keyframe_interval_s: float = 2.0
    resolve: Resolver = resolve_host
    ssl_context: ssl.SSLContext | None = None  # rtmps: None = the system's CAs


class _Inbox:
    """What waits for a restream's thread: video (newest wins) and audio, both bounded. Any thread."""

    def __init__(self, metrics: RestreamMetrics) -> None:
        self.cond = threading.Condition()
        self.video: deque[tuple[VideoFrame, float]] = deque()
        self.audio: deque[tuple[AudioFrame, float]] = deque(maxlen=AUDIO_QUEUE_FRAMES)
        self.open = False  # frames are taken (started, not stopping)
        self.stopping = False
        self._metrics = metrics

    def put_video(self, frame: VideoFrame, arrival: float) -> None:
        with self.cond:
            if not self.open:
                return
            self._metrics.frames_in += 1
            if len(self.video) >= VIDEO_QUEUE_FRAMES:
                self.video.popleft()
                self._metrics.frames_dropped += 1
            self.video.append((frame, arrival))
            self.cond.notify()

    def put_audio(self, frame: AudioFrame, arrival: float) -> None:
        with self.cond:
            if self.open:
                self.audio.append((frame, arrival))

    def stop(self) -> bool:
        """Close the inbox and wake the thread; whether it was already stopping."""
        with self.cond:
            already, self.stopping, self.open = self.stopping, True, False
            self.video.clear()
            self.audio.clear()
            self.cond.notify_all()
        return already

    def wait_video(self, timeout: float | None = None) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.stopping or bool(self.video), timeout)

    def sleep(self, seconds: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.stopping, seconds)

    def take(self, timeout: float) -> tuple[tuple[VideoFrame, float] | None, list[tuple[AudioFrame, float]]]:
        """The oldest waiting video frame (or None) and all waiting audio, after at most ``timeout``."""
        with self.cond:
            self.cond.wait_for(lambda: self.stopping or bool(self.video) or bool(self.audio), timeout)
            video = self.video.popleft() if self.video else None
            audio = list(self.audio)
            self.audio.clear()
        return video, audio

    def push_back(self, video: tuple[VideoFrame, float]) -> None:
        with self.cond:
            self.video.appendleft(video)

    def drop_stale(self, max_age_s: float) -> None:
        with self.cond:
            now = time.monotonic()
            while self.video and now - self.video[0][1] > max_age_s:
                self.video.popleft()
                self._metrics.frames_dropped += 1


class Restream:
    """One RTMP(S) push of one stream. ``start()`` on the event loop; ``await stop()`` ends it."""

    def __init__(self, url: str, options: RestreamOptions | None = None, *, name: str = "restream") -> None:
        self._target = parse_rtmp_url(url)
        self.url = url
        self.restream_id = secrets.token_urlsafe(9)
        self.masked_url = self._target.masked_url
        self._options = options or RestreamOptions()
        self._name = f"{name}-{self.restream_id}"
        self.metrics = RestreamMetrics()
        self._inbox = _Inbox(self.metrics)
        self._state = "stopped"
        self._thread: threading.Thread | None = None
        self._client: RtmpClient | None = None
        self._finished: asyncio.Event | None = None
        self._started_at = 0.0
        self.last_error: str | None = None

    @property
    def state(self) -> str:
        return self._state

    @property
    def state_code(self) -> int:
        return STATES[self._state]

    def to_dict(self) -> dict[str, str | None]:
        return {
            "restream_id": self.restream_id,
            "url": self.masked_url,
            "state": self._state,
            "error": self.last_error,
        }

    # --- life cycle (event loop) --------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        loop = asyncio.get_running_loop()
        finished = asyncio.Event()
        self._finished = finished
        self._state = "connecting"
        self._started_at = time.monotonic()
        self._inbox.open = True

        def run() -> None:
            try:
                self._run()
            finally:
                self._state = "stopped"
                try:
                    loop.call_soon_threadsafe(finished.set)
                except RuntimeError:  # the loop is closed
                    pass

        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()
        logger.info("%s: restream to %s started", self._name, self.masked_url)

    async def stop(self, grace_s: float = 3.0) -> None:
        """Stop (idempotent): a polite close when the connection is idle, an abort after ``grace_s / 3``."""
        already = self._inbox.stop()
        if self._finished is None:
            self._state = "stopped"
            return
        if not already:
            logger.info("%s: restream to %s stopping", self._name, self.masked_url)
        try:
            await asyncio.wait_for(self._finished.wait(), grace_s / 3)
        except TimeoutError:
            client = self._client
            if client is not None:
                client.abort()  # a send blocked on a slow far end
            try:
                await asyncio.wait_for(self._finished.wait(), grace_s * 2 / 3)
            except TimeoutError:
                logger.warning("%s: thread did not stop within %.1f s", self._name, grace_s)
        self._state = "stopped"

    # --- input (any thread) -------------------------------------------------------------------

    def submit_video(self, frame: VideoFrame) -> None:
        """Queue a sanitized frame (never blocks; the oldest waiting frame is dropped when full)."""
        self._inbox.put_video(frame, frame.opaque if isinstance(frame.opaque, float) else time.monotonic())

    def submit_audio(self, frame: AudioFrame) -> None:
        """Queue a frame of the publisher's audio (never blocks; bounded, the oldest is dropped)."""
        self._inbox.put_audio(frame, time.monotonic())

    # --- the restream thread ------------------------------------------------------------------

    def _run(self) -> None:
        backoff = BACKOFF_START_S
        inbox = self._inbox
        while not inbox.stopping:
            self._state = "connecting"
            inbox.wait_video()  # connect when there is something to send
            if inbox.stopping:
                return
            began = time.monotonic()
            try:
                self._connect_and_stream()
                continue  # stopped, or the source size changed: no backoff
            except (RtmpError, RelayError, av.FFmpegError, OSError, ValueError) as exc:
                self.metrics.failures += 1
                self.last_error = str(exc) if isinstance(exc, (RtmpError, RelayError)) else type(exc).__name__
                if inbox.stopping:
                    return
                if time.monotonic() - began >= STABLE_S:
                    backoff = BACKOFF_START_S
                msg = "%s: restream to %s failed (%s); retrying in %.1f s"
                logger.warning(msg, self._name, self.masked_url, self.last_error, backoff)
            self._state = "connecting"
            inbox.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_CAP_S)

    def _connect_and_stream(self) -> None:
        # resolve and check again at every connect; connect to the address that was checked
        address = checked_addresses(self._target, self._options.allow_private, self._options.resolve)[0]
        client = RtmpClient(
            self._target, address, timeout_s=CONNECT_TIMEOUT_S, ssl_context=self._options.ssl_context
        )
        self._client = client
        encoder: FlvEncoder | None = None
        try:
            if self._inbox.stopping:
                return
            client.connect()
            logger.info("%s: connected to %s", self._name, self.masked_url)
            self._inbox.drop_stale(STALE_S)
            encoder = self._stream(client)
        finally:
            self._client = None
            self.metrics.bytes_sent += client.bytes_sent
            client.close(polite=self._inbox.stopping)
            if encoder is not None:
                encoder.close()

    def _stream(self, client: RtmpClient) -> FlvEncoder | None:
        """Send until stopped (returns) or the source size changes (returns); raises on errors."""
        encoder: FlvEncoder | None = None
        t0, o = 0.0, self._options
        try:
            while True:
                video, audio = self._inbox.take(0.5)
                if self._inbox.stopping:
                    return encoder
                tags: list[tuple[int, int, bytes]] = []
                if video is not None:
                    frame, arrival = video
                    began = time.monotonic()
                    copy = private_copy(frame)
                    if encoder is None:
                        encoder = FlvEncoder(copy.width, copy.height, o.bitrate, o.keyframe_interval_s)
                        t0 = arrival
                    elif (copy.width, copy.height) != encoder.size:
                        self._inbox.push_back(video)  # the new size starts a new connection
                        logger.info("%s: source size changed; reconnecting", self._name)
                        return encoder
                    tags += encoder.add_video(copy, arrival - t0)
                    self.metrics.encode_ms.append((time.monotonic() - began) * 1000.0)
                    self.metrics.frames_sent += 1
                if encoder is not None:
                    for aframe, at in audio:
                        if at >= t0:
                            tags += encoder.add_audio(aframe, at - t0)
                for tag in tags:
                    client.send_tag(*tag)
                if video is not None and self._state != "live":
                    self._went_live()
                if not tags:
                    client.poll()
        except BaseException:
            if encoder is not None:
                encoder.close()
            raise

    def _went_live(self) -> None:
        self._state = "live"
        self.metrics.connects += 1
        self.last_error = None
        if self.metrics.first_output_s is None:
            self.metrics.first_output_s = time.monotonic() - self._started_at
        logger.info("%s: live on %s", self._name, self.masked_url)


def fan_out(*sinks: Callable[[VideoFrame], None]) -> Callable[[VideoFrame], None]:
    """One sanitized-frame sink that hands each frame to every one of ``sinks``, in order."""

    def sink(frame: VideoFrame) -> None:
        for s in sinks:
            s(frame)

    return sink


class RestreamSet:
    """A room's restreams: at most ``max_restreams``; frames fan out to all of them (any thread)."""

    def __init__(
        self, max_restreams: int = 3, options: RestreamOptions | None = None, name: str = "room"
    ) -> None:
        self.max_restreams = max_restreams
        self.options = options or RestreamOptions()
        self._name = name
        self._restreams: dict[str, Restream] = {}
        self._active: tuple[Restream, ...] = ()  # replaced, never mutated: read by other threads
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, name: str) -> RestreamSet:
        options = RestreamOptions(
            allow_private=settings.restream_allow_private, keyframe_interval_s=settings.keyframe_interval_s
        )
        return cls(settings.max_restreams_per_stream, options, name)

    def add(self, url: str) -> Restream:
        """Start a restream to ``url`` (checked with :func:`validate_restream_url` by the caller, off
        the loop; the restream checks the address again at every connect). Event loop."""
        if self._closed:
            raise NotFound("stream is closed")
        target = parse_rtmp_url(url)
        if any(r.url == url for r in self._restreams.values()):
            raise Conflict(f"already restreaming to {target.masked_url}")
        if len(self._restreams) >= self.max_restreams:
            raise LimitExceeded(f"at most {self.max_restreams} restreams per stream")
        restream = Restream(url, self.options, name=f"{self._name}-restream")
        self._restreams[restream.restream_id] = restream
        self._active = tuple(self._restreams.values())
        restream.start()
        return restream

    def get(self, restream_id: str) -> Restream:
        restream = self._restreams.get(restream_id) if isinstance(restream_id, str) else None
        if restream is None:
            raise NotFound("no such restream")
        return restream

    async def remove(self, restream_id: str) -> None:
        restream = self.get(restream_id)
        del self._restreams[restream_id]
        self._active = tuple(self._restreams.values())
        await restream.stop()

    def list(self) -> builtins.list[Restream]:
        return list(self._restreams.values())

    def __len__(self) -> int:
        return len(self._restreams)

    def submit_video(self, frame: VideoFrame) -> None:
        for restream in self._active:
            restream.submit_video(frame)

    def submit_audio(self, frame: AudioFrame) -> None:
        for restream in self._active:
            restream.submit_audio(frame)

    async def close(self) -> None:
        """Stop every restream (concurrently, bounded). Idempotent."""
        self._closed = True
        restreams = list(self._restreams.values())
        self._restreams.clear()
        self._active = ()
        await asyncio.gather(*(r.stop() for r in restreams), return_exceptions=True)
