"""A room's media: the publisher's video through the pipeline into one encoder per codec that the
room's viewers need, its audio into the Opus encoder, and the watchdog that notices when the
publisher's video ends or stops arriving.

Encoders (issue #13): the VP8 encode runs for the room's whole life (``encoder``); an H.264 encode
starts when the first viewer that needs it joins and stops when the last one leaves, so a room with
only VP8 viewers pays nothing for it. Every running encoder gets the same sanitized frames from the
pipeline's one hand-off (:meth:`RoomMedia._hand_off`, the mosaic thread), as do the RTMP restreams.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor

from aiortc.mediastreams import MediaStreamTrack
from av import VideoFrame

from relay.detector import TEXT_NET
from relay.fanout import AudioEncoder, PacketTrack, RoomEncoder
from relay.fastsend import FastSend
from relay.metrics import StreamMetrics
from relay.pipeline import Detectors, Pipeline, SceneCutHook
from relay.restream import RestreamSet
from relay.settings import Settings
from relay.video_codecs import VideoCodec


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
        self._settings, self._name, self._stream = settings, name, stream
        self.encoder = RoomEncoder(settings, name=f"{name}-encoder", stream=stream)  # VP8
        self._encoders: dict[VideoCodec, RoomEncoder] = {"vp8": self.encoder}
        self._restreams = restreams
        # the batched per-viewer send path (relay/fastsend.py, --fast-send); None: aiortc's own
        self.fast = FastSend.create(settings.fast_send == "on", settings.fast_send_syscall)
        # what the hand-off feeds: replaced (never mutated) on the loop, read by the mosaic thread
        self._targets: tuple[RoomEncoder, ...] = (self.encoder,)
        self._started = False
        self._forwards = self._external = 0  # see set_external
        self.pipeline = Pipeline(
            video,
            detectors,
            settings,
            sink=self._hand_off,
            detector_executor=detector_executor,
            name=f"{name}-pipeline",
            mosaic=mosaic,
            stream=stream,
            scene_cut=scene_cut,
        )
        audio_sink = restreams.submit_audio if restreams is not None else None
        self.audio = AudioEncoder(audio, name=f"{name}-audio", sink=audio_sink) if audio is not None else None

    def _hand_off(self, frame: VideoFrame) -> None:
        """The pipeline's sink (mosaic thread): every running encoder, then the RTMP restreams."""
        for encoder in self._targets:
            encoder.submit(frame)
        if self._restreams is not None:
            self._restreams.submit_video(frame)

    # --- encoders per codec ------------------------------------------------------------------

    @property
    def encoders(self) -> dict[VideoCodec, RoomEncoder]:
        """The running encoders by codec (a copy)."""
        return dict(self._encoders)

    def add_viewer(self, codec: VideoCodec) -> tuple[RoomEncoder, PacketTrack]:
        """A new viewer's video track from the encoder of ``codec``, started if it is not running."""
        encoder = self._encoders.get(codec)
        if encoder is None:
            encoder = RoomEncoder(
                self._settings, codec=codec, name=f"{self._name}-encoder", stream=self._stream
            )
            if self._started:
                encoder.start()
            self._encoders[codec] = encoder
            self._targets = tuple(self._encoders.values())
        # the batched send path (relay/fastsend.py) packetizes VP8 once per room; H.264 uses aiortc's
        track = encoder.add_viewer(
            self.fast.track if self.fast is not None and codec == "vp8" else PacketTrack
        )
        self._count_viewers()
        return encoder, track

    def add_audio_viewer(self) -> PacketTrack | None:
        """A new viewer's audio track (``None``: the publisher sends no audio)."""
        if self.audio is None:
            return None
        return self.audio.add_viewer(self.fast.track if self.fast is not None else PacketTrack)

    async def remove_viewer(self, encoder: RoomEncoder, track: PacketTrack) -> None:
        """Drop a viewer's track; an encoder other than VP8 stops with its last viewer."""
        encoder.remove_viewer(track)
        self._count_viewers()
        if (
            encoder is self.encoder
            or encoder.viewer_count
            or self._encoders.get(encoder.codec) is not encoder
        ):
            return
        del self._encoders[encoder.codec]
        self._targets = tuple(self._encoders.values())
        await encoder.stop()

    @property
    def viewer_count(self) -> int:
        """Viewers of the room's encoders, minus its RTP forwarders, plus its viewers served by Janus."""
        own = sum(e.viewer_count for e in self._encoders.values())
        return own - self._forwards + self._external

    def set_external(self, forwards: int, viewers: int) -> None:
        """``forwards``: RTP forwarders attached to the encoders (relay/rtp_forward.py), not viewers;
        ``viewers``: viewers served elsewhere (Janus: relay/janus_room.py), counted all the same."""
        self._forwards, self._external = forwards, viewers
        self._count_viewers()

    def _count_viewers(self) -> None:
        self._stream.set_viewers(self.viewer_count)

    # --- life --------------------------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        for encoder in self._encoders.values():  # first: the pipeline hands them frames as soon as it runs
            encoder.start()
        self.pipeline.start()
        if self.audio is not None:
            self.audio.start()

    def apply_switches(self, mosaic: bool, text_net: bool) -> None:
        """The streamer's switches: the mosaic on/off, the text/barcode safety net on/off."""
        self.pipeline.mosaic_enabled = mosaic
        self.pipeline.skip_detectors = frozenset() if text_net else frozenset({TEXT_NET})

    async def stop_output(self, grace_s: float) -> None:
        """Stop producing (viewer senders then end on their own)."""
        encoders, self._targets = list(self._encoders.values()), ()
        await asyncio.gather(*(e.stop(grace_s) for e in encoders))
        if self.audio is not None:
            await self.audio.stop(grace_s)

    async def stop(self, grace_s: float) -> None:
        await self.stop_output(grace_s)
        await self.pipeline.stop(grace_s)

    @property
    def task_count(self) -> int:
        encoders = sum(e.task_count for e in self._encoders.values())
        return self.pipeline.task_count + encoders + (self.audio.task_count if self.audio else 0)

    async def watch(self, timeout_s: float) -> str:
        """Until the publisher's video ends (pipeline or VP8 encoder done, or an encoder of another
        codec gave up after repeated errors: ``publisher_ended``) or stops
        arriving for ``timeout_s`` (``publisher_timeout``: a publisher that vanished without closing;
        aiortc's ICE consent checks would take ~30 s to notice)."""
        last_count, last_change = -1, time.monotonic()
        while not (
            self.pipeline.ended.is_set()
            or self.encoder.ended.is_set()
            or any(e.failed for e in self._encoders.values())
        ):
            await asyncio.sleep(0.2)
            count = self.pipeline.metrics.frames_in
            now = time.monotonic()
            if count != last_count:
                last_count, last_change = count, now
            elif now - last_change > timeout_s:
                return "publisher_timeout"
        return "publisher_ended"
