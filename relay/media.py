"""A room's media: the publisher's video through the pipeline into the one encoder, its audio into
the Opus encoder, and the watchdog that notices when the publisher's video ends or stops arriving."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor

from aiortc.mediastreams import MediaStreamTrack

from relay.fanout import AudioEncoder, RoomEncoder
from relay.metrics import StreamMetrics
from relay.pipeline import Detectors, Pipeline, SceneCutHook
from relay.restream import RestreamSet, fan_out
from relay.settings import Settings


class RoomMedia:
    def __init__(
        self,
        video: MediaStreamTrack,
        audio: MediaStreamTrack | None,
        detectors: Detectors,
        settings: Settings,
        *,
        detector_executor: Executor,
        stream: StreamMetrics,
        name: str,
        mosaic: bool,
        scene_cut: SceneCutHook | None = None,
        restreams: RestreamSet | None = None,
    ) -> None:
        # the pipeline hands each frame to the encoder from its mosaic thread (the one hand-off)
        self.encoder = RoomEncoder(settings, name=f"{name}-encoder", stream=stream)
        self.pipeline = Pipeline(
            video,
            detectors,
            settings,
            # and to the room's RTMP restreams, if any (relay/restream.py)
            sink=self.encoder.submit
            if restreams is None
            else fan_out(self.encoder.submit, restreams.submit_video),
            detector_executor=detector_executor,
            name=f"{name}-pipeline",
            mosaic=mosaic,
            stream=stream,
            scene_cut=scene_cut,
        )
        audio_sink = restreams.submit_audio if restreams is not None else None
        self.audio = AudioEncoder(audio, name=f"{name}-audio", sink=audio_sink) if audio is not None else None

    def start(self) -> None:
        self.encoder.start()  # first: the pipeline hands it frames as soon as it runs
        self.pipeline.start()
        if self.audio is not None:
            self.audio.start()

    async def stop_output(self, grace_s: float) -> None:
        """Stop producing (viewer senders then end on their own)."""
        await self.encoder.stop(grace_s)
        if self.audio is not None:
            await self.audio.stop(grace_s)

    async def stop(self, grace_s: float) -> None:
        await self.stop_output(grace_s)
        await self.pipeline.stop(grace_s)

    @property
    def task_count(self) -> int:
        return (
            self.pipeline.task_count + self.encoder.task_count + (self.audio.task_count if self.audio else 0)
        )

    async def watch(self, timeout_s: float) -> str:
        """Until the publisher's video ends (pipeline or encoder done: ``publisher_ended``) or stops
        arriving for ``timeout_s`` (``publisher_timeout``: a publisher that vanished without closing;
        aiortc's ICE consent checks would take ~30 s to notice)."""
        last_count, last_change = -1, time.monotonic()
        while not (self.pipeline.ended.is_set() or self.encoder.ended.is_set()):
            await asyncio.sleep(0.2)
            count = self.pipeline.metrics.frames_in
            now = time.monotonic()
            if count != last_count:
                last_count, last_change = count, now
            elif now - last_change > timeout_s:
                return "publisher_timeout"
        return "publisher_ended"
