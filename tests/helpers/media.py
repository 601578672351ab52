"""Shared media test helpers: loopback aiortc peers, frame sources, fake detectors, pixelation checks.

Loopback on this machine
------------------------
aioice (aiortc's ICE) gathers host candidates from every interface **except** 127.0.0.1/::1,
and aiortc adds a public STUN server unless ``RTCConfiguration(iceServers=[])`` is passed.
This machine has ``lo`` plus ``eth0`` (192.0.2.2, fd00::2) and no internet, so peers would pair on
eth0 addresses — and on a box with only ``lo`` they would gather no candidate at all. Tests call
:func:`use_loopback_ice` (or the ``loopback_ice`` fixture in the test modules), which replaces
``aioice.ice.get_host_addresses`` by one that returns ``["127.0.0.1"]``, so every peer — the relay's
and the test clients' — pairs over 127.0.0.1 whatever interfaces exist; and every
``RTCPeerConnection`` here is created with :data:`NO_ICE_SERVERS`.

Usage::

    from tests.helpers.media import (Publisher, Viewer, FakeDetector, label_scene, use_loopback_ice, ...)
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aioice.ice
import cv2
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

logger = logging.getLogger(__name__)

NO_ICE_SERVERS = RTCConfiguration(iceServers=[])
SHARED_DATA = Path("/work/shared/data")
LABEL_PHOTO = SHARED_DATA / "ups_labels" / "images" / "IMG_8747.jpg"
LABEL_YOLO = SHARED_DATA / "ups_labels" / "labels" / "IMG_8747.txt"
VIDEO_TIME_BASE = fractions.Fraction(1, 90000)

Answerer = Callable[[str, str], Awaitable[dict[str, str]]]


# --- loopback ICE ------------------------------------------------------------------------------


@contextmanager
def use_loopback_ice() -> Iterator[None]:
    """Make every aiortc peer in this process gather only a 127.0.0.1 host candidate."""
    original = aioice.ice.get_host_addresses

    def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    aioice.ice.get_host_addresses = loopback_only  # type: ignore[assignment]
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original  # type: ignore[assignment]


# --- scenes ------------------------------------------------------------------------------------


def label_scene(width: int = 640, height: int = 480) -> tuple[np.ndarray, np.ndarray]:
    """A BGR scene with a real shipping label and its box ``(1, 6)`` ``[x1,y1,x2,y2,1,2]``.

    The photo (portrait, ``IMG_8747.jpg``, hand-labelled) fills the left part at full height; the
    right part is a high-contrast checkerboard, so "not pixelated" is easy to tell from "pixelated".
    """
    photo = cv2.imread(str(LABEL_PHOTO))
    if photo is None:
        raise FileNotFoundError(LABEL_PHOTO)
    ph, pw = photo.shape[:2]
    new_w = round(pw * height / ph)
    photo = cv2.resize(photo, (new_w, height), interpolation=cv2.INTER_AREA)
    scene = checkerboard(width, height, 8)
    scene[:, :new_w] = photo[:, : min(new_w, width)]
    cls, cx, cy, bw, bh = (float(v) for v in LABEL_YOLO.read_text().split()[:5])
    box = np.array(
        [
            [
                (cx - bw / 2) * new_w,
                (cy - bh / 2) * height,
                (cx + bw / 2) * new_w,
                (cy + bh / 2) * height,
                1.0,
                cls,
            ]
        ],
        dtype=np.float32,
    )
    return scene, box


def checkerboard(width: int, height: int, cell: int = 8) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    board = (((yy // cell) + (xx // cell)) % 2 * 200 + 28).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(board[:, :, None], 3, axis=2))


def text_scene(width: int, height: int, box: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """A synthetic BGR scene: checkerboard background, a white card with dark text inside ``box``."""
    img = checkerboard(width, height, 8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 235
    rng = np.random.default_rng(seed)
    y = y1 + 20
    while y < y2 - 6:
        text = "".join(rng.choice(list("ABCDEFGHJKLMNPRSTUVWXYZ0123456789"), size=12))
        cv2.putText(img, text, (x1 + 6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (20, 20, 20), 2)
        y += 24
    return img


# --- pixelation checks -------------------------------------------------------------------------


def block_stds(
    gray: np.ndarray, region: tuple[int, int, int, int], block: int = 16, inset: int = 0
) -> np.ndarray:
    """Std of every ``block``-px cell (global grid) lying fully inside ``region`` (x1, y1, x2, y2).

    ``inset`` leaves that many pixels out on each side of every cell: after a real VP8 encode the
    codec's loop (deblocking) filter smooths up to 3 px on each side of every 16 px macroblock
    edge, so a flat mosaic cell next to a very different one gets a gentle ramp at its border.
    """
    x1, y1, x2, y2 = region
    xa, ya = -(-x1 // block) * block, -(-y1 // block) * block
    xb, yb = (x2 // block) * block, (y2 // block) * block
    if xb <= xa or yb <= ya:
        return np.zeros(0)
    cells = gray[ya:yb, xa:xb].astype(np.float32)
    cells = cells.reshape((yb - ya) // block, block, (xb - xa) // block, block)
    if inset:
        cells = cells[:, inset : block - inset, :, inset : block - inset]
    return cells.std(axis=(1, 3)).ravel()


def frame_gray(frame: VideoFrame) -> np.ndarray:
    """Luma plane of a decoded frame (blocking: call via ``asyncio.to_thread`` in async code)."""
    if frame.format.name == "yuv420p":
        return frame.to_ndarray()[: frame.height]
    return cv2.cvtColor(frame.to_ndarray(format="bgr24"), cv2.COLOR_BGR2GRAY)


def box_region(box: np.ndarray) -> tuple[int, int, int, int]:
    b = np.asarray(box, dtype=np.float32).reshape(-1)[:4]
    return int(b[0]), int(b[1]), int(np.ceil(b[2])), int(np.ceil(b[3]))


# --- fake detectors ----------------------------------------------------------------------------


class FakeDetector:
    """Returns fixed boxes ``(N, 6)``; counts calls; optional per-call delay (blocking sleep)."""

    def __init__(self, boxes: np.ndarray | None = None, delay_s: float = 0.0) -> None:
        self.boxes = np.zeros((0, 6), np.float32) if boxes is None else np.asarray(boxes, np.float32)
        self.delay_s = delay_s
        self.calls = 0
        self.shapes: list[tuple[int, ...]] = []

    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.shapes.append(img_bgr.shape)
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.boxes.copy()


class RaisingDetector:
    def __init__(self) -> None:
        self.calls = 0

    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        self.calls += 1
        raise RuntimeError("detector exploded")


class StallingDetector(FakeDetector):
    """Blocks inside ``detect`` while ``stalled`` is set (a hung model), else returns its boxes."""

    def __init__(self, boxes: np.ndarray | None = None) -> None:
        super().__init__(boxes)
        self.release = threading.Event()
        self.release.set()

    def stall(self) -> None:
        self.release.clear()

    def resume(self) -> None:
        self.release.set()

    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        self.release.wait(30.0)
        return super().detect(img_bgr)


# --- frame sources -----------------------------------------------------------------------------


def bgr_to_frame(img: np.ndarray, pts: int) -> VideoFrame:
    frame = VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
    frame.pts = pts
    frame.time_base = VIDEO_TIME_BASE
    return frame


class ImageTrack(MediaStreamTrack):
    """A live video track showing ``image`` (BGR) at ``fps``; ``image`` may be swapped at any time.

    ``paced=False`` returns frames as fast as they are asked for (for unit tests without aiortc).
    """

    kind = "video"

    def __init__(self, image: np.ndarray, fps: float = 30.0, paced: bool = True) -> None:
        super().__init__()
        self.fps = fps
        self.paced = paced
        self.sent = 0
        self._start: float | None = None
        self.set_image(image)

    def set_image(self, image: np.ndarray) -> None:
        self.image = image
        self._yuv = VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p").to_ndarray()

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        if self.paced:
            wait = self._start + self.sent / self.fps - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = VideoFrame.from_ndarray(self._yuv, format="yuv420p")
        frame.pts = int(self.sent * 90000 / self.fps)
        frame.time_base = VIDEO_TIME_BASE
        self.sent += 1
        return frame


class ListTrack(MediaStreamTrack):
    """Yields the given frames (then ends); an ``asyncio.Event`` per frame can gate delivery."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._queue: asyncio.Queue[VideoFrame | None] = asyncio.Queue(maxsize=1000)

    def put(self, frame: VideoFrame | None) -> None:
        self._queue.put_nowait(frame)

    async def recv(self) -> VideoFrame:
        frame = await self._queue.get()
        if frame is None:
            self.stop()
            raise MediaStreamError
        return frame


class SinkTrack(MediaStreamTrack):
    """The other end of a pipeline's one hand-off: pass ``track.sink`` as the pipeline's ``sink``
    (called from its mosaic thread) and read the sanitized frames with ``recv()``. Bounded (the
    oldest frame is dropped, counted in ``dropped``); once ``ended`` (e.g. ``pipeline.ended``) is set
    and every frame was taken, ``recv()`` raises ``MediaStreamError``."""

    kind = "video"

    def __init__(self, ended: asyncio.Event | None = None, maxlen: int = 256) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._frames: deque[VideoFrame] = deque(maxlen=maxlen)
        self._event = asyncio.Event()
        self._ended = ended
        self.dropped = 0

    def end_with(self, ended: asyncio.Event) -> None:
        self._ended = ended

    def sink(self, frame: VideoFrame) -> None:
        loop = self._loop
        assert loop is not None
        loop.call_soon_threadsafe(self._put, frame)

    def _put(self, frame: VideoFrame) -> None:
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append(frame)
        self._event.set()

    async def recv(self) -> VideoFrame:
        while not self._frames:
            if self._ended is not None and self._ended.is_set():
                await asyncio.sleep(0)  # frames handed over just before the end land first
                if not self._frames:
                    raise MediaStreamError
                break
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), 0.05)
            except TimeoutError:
                pass
        return self._frames.popleft()


async def feed(track: MediaStreamTrack, submit: Callable[[VideoFrame], None]) -> None:
    """Hand every frame of ``track`` to ``submit`` (e.g. an encoder's), until the track ends."""
    try:
        while True:
            frame = await track.recv()
            assert isinstance(frame, VideoFrame)
            submit(frame)
    except MediaStreamError:
        return


class ToneTrack(MediaStreamTrack):
    """20 ms s16 mono 48 kHz frames of a 440 Hz tone, paced in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._n = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._n * 0.02 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (np.arange(960) + self._n * 960) / 48000
        samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).reshape(1, -1)
        frame = AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self._n * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self._n += 1
        return frame


# --- aiortc client peers -----------------------------------------------------------------------


class Publisher:
    """An aiortc publisher: sends ``video`` (and optionally ``audio``) to an answerer."""

    def __init__(self, video: MediaStreamTrack, audio: MediaStreamTrack | None = None) -> None:
        self.pc = RTCPeerConnection(NO_ICE_SERVERS)
        self.video = video
        self.pc.addTrack(video)
        if audio is not None:
            self.pc.addTrack(audio)

    async def offer(self) -> RTCSessionDescription:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription

    async def connect(self, answer: Answerer) -> None:
        offer = await self.offer()
        reply = await answer(offer.sdp, offer.type)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type=reply["type"]))

    async def close(self) -> None:
        await self.pc.close()


class Viewer:
    """An aiortc viewer: receives video (and audio), decodes, keeps the newest ``keep`` frames.

    Every decoded frame can be checked on arrival by ``check(frame, lossy) -> None`` (run in a
    thread); the first exception is kept in ``errors``. ``lossy`` is True from the moment this
    viewer's receiver reported packet loss (sent a NACK or PLI) until the next keyframe: on a loaded
    box loopback UDP does drop packets, and a VP8 decoder then shows artefacts (a delta frame applied
    to the wrong reference) that are no leak but are not clean mosaic cells either.
    """

    def __init__(
        self,
        *,
        audio: bool = False,
        keep: int = 8,
        check: Callable[[VideoFrame, bool], None] | None = None,
        codecs: list[Any] | None = None,
    ) -> None:
        self.pc = RTCPeerConnection(NO_ICE_SERVERS)
        vt = self.pc.addTransceiver("video", direction="recvonly")
        if codecs is not None:
            vt.setCodecPreferences(codecs)
        if audio:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.frames: deque[VideoFrame] = deque(maxlen=keep)
        self.count = 0
        self.audio_frames = 0
        self.first_frame_at: float | None = None
        self.connected_at: float | None = None  # ICE + DTLS done (connectionState "connected")
        self.loss_reports = 0  # NACK/PLI sent by this viewer's video receiver
        self.lossy_frames = 0
        self.errors: list[BaseException] = []
        self.ended = asyncio.Event()
        self._check = check
        self._tasks: set[asyncio.Task[Any]] = set()
        self._new = asyncio.Event()
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)
        self._watch_loss(vt.receiver)

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()

    def _watch_loss(self, receiver: Any) -> None:
        nack, pli = receiver._send_rtcp_nack, receiver._send_rtcp_pli

        async def on_nack(media_ssrc: int, lost: list[int]) -> None:
            self.loss_reports += 1
            await nack(media_ssrc, lost)

        async def on_pli(media_ssrc: int) -> None:
            self.loss_reports += 1
            await pli(media_ssrc)

        receiver._send_rtcp_nack = on_nack
        receiver._send_rtcp_pli = on_pli

    def _on_track(self, track: MediaStreamTrack) -> None:
        coro = self._read_video(track) if track.kind == "video" else self._read_audio(track)
        task = asyncio.get_running_loop().create_task(coro, name=f"viewer-{track.kind}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read_video(self, track: MediaStreamTrack) -> None:
        seen_losses = 0
        lossy = False
        try:
            while True:
                frame = await track.recv()
                assert isinstance(frame, VideoFrame)
                if self.first_frame_at is None:
                    self.first_frame_at = time.monotonic()
                self.frames.append(frame)
                if self.loss_reports > seen_losses:
                    seen_losses, lossy = self.loss_reports, True
                elif frame.key_frame:
                    lossy = False
                self.lossy_frames += lossy
                if self._check is not None and not self.errors:
                    try:
                        await asyncio.to_thread(self._check, frame, lossy)
                    except Exception as exc:  # kept for the test to assert on
                        self.errors.append(exc)
                self.count += 1  # counted once checked, so wait_frames(n) means n frames were checked
                self._new.set()
        except MediaStreamError:
            pass
        finally:
            self.ended.set()
            self._new.set()

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
                self.audio_frames += 1
        except MediaStreamError:
            pass

    async def connect(self, answer: Answerer) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = self.pc.localDescription
        reply = await answer(offer.sdp, offer.type)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type=reply["type"]))

    async def wait_frames(self, n: int, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until ``n`` frames in total were decoded (``TimeoutError`` otherwise)."""

        async def waiter() -> None:
            while self.count < n:
                if self.ended.is_set():
                    raise AssertionError(f"track ended after {self.count} frames")
                self._new.clear()
                await self._new.wait()

        await asyncio.wait_for(waiter(), timeout)

    async def close(self) -> None:
        await self.pc.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
