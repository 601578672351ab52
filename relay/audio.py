"""The publisher's audio, encoded once to Opus and forwarded to every viewer as shared packets."""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame
from av.audio.resampler import AudioResampler

from relay.packets import AUDIO_QUEUE_PACKETS, PacketTrack
from relay.tasks import TaskSet

logger = logging.getLogger(__name__)

AUDIO_RATE = 48000
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)


class AudioEncoder:
    """Drains the publisher's audio track and encodes it once to Opus for every viewer."""

    def __init__(
        self,
        source: MediaStreamTrack,
        *,
        name: str = "audio",
        sink: Callable[[AudioFrame], None] | None = None,
    ) -> None:
        self._sink = sink  # also gets every decoded frame (the room's RTMP restreams)
        self._source = source
        self._name = name
        self._tasks = TaskSet(name)
        self._viewers: set[PacketTrack] = set()
        self._codec: Any = None
        self._resampler = AudioResampler(format="s16", layout="stereo", rate=AUDIO_RATE, frame_size=960)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-opus")
        self._stopped = False
        self.packets = 0

    @property
    def task_count(self) -> int:
        return len(self._tasks)

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

    def _encode(self, frame: AudioFrame) -> list[av.Packet[Any]]:
        if self._codec is None:
            codec: Any = av.CodecContext.create("libopus", "w")
            codec.bit_rate = 64000
            codec.format = "s16"
            codec.layout = "stereo"
            codec.sample_rate = AUDIO_RATE
            codec.time_base = AUDIO_TIME_BASE
            codec.options = {"application": "voip"}
            self._codec = codec
        out: list[av.Packet[Any]] = []
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
            if self._sink is not None:
                self._sink(frame)
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
