"""One restream connection's encode: sanitized yuv420p frames (and audio) → H.264 + AAC → FLV tags.

:class:`FlvEncoder` runs in the restream's own thread (never on the event loop). A new one is made
for every connection, so each connection starts with fresh timestamps (0 ms) and a keyframe with
its sequence headers. Timestamps follow each frame's arrival at the relay (``frame.opaque``, the
capture-side clock the room encoder uses too), so a burst handed over by the sanitizer's lookahead
plays at the pace it was captured, and audio (stamped when it arrives) stays in sync with it.

Video: libx264, constrained baseline (no B-frames), ``veryfast`` + ``zerolatency``, a keyframe every
``keyframe_interval_s`` (placed by time, IDR, no scene-cut keyframes), a capped bitrate, at the
source size (rounded down to even). Audio: AAC-LC 48 kHz stereo; when the publisher sends no audio
(or it stalls), silence keeps the audio track going, as RTMP platforms expect one.
"""

from __future__ import annotations

import fractions
from collections.abc import Iterator
from typing import Any

import av
import numpy as np
from av import AudioFrame, VideoFrame
from av.audio.resampler import AudioResampler

MS = fractions.Fraction(1, 1000)
AUDIO_RATE = 48000
AAC_FRAME = 1024
AUDIO_BITRATE = 128_000
SILENCE_AFTER_S = 0.3  # no audio up to this far behind the video => fill with silence
AUDIO_LATE_S = 0.1  # real audio this far after the audio timeline => the gap is filled with silence
AUDIO_EARLY_S = 1.0  # real audio this far before the timeline (a burst) => dropped


class FlvTags:
    """A write-only file for PyAV's ``flv`` muxer that splits what it writes into (type, timestamp ms, data)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._header_done = False

    def write(self, data: bytes) -> int:
        self._buf += data
        return len(data)

    def tags(self) -> Iterator[tuple[int, int, bytes]]:
        b = self._buf
        if not self._header_done:
            if len(b) < 9:
                return
            offset = int.from_bytes(b[5:9], "big")
            if len(b) < offset + 4:
                return
            del b[: offset + 4]  # the file header and PreviousTagSize0
            self._header_done = True
        while len(b) >= 11:
            size = int.from_bytes(b[1:4], "big")
            if len(b) < 11 + size + 4:
                return
            ts = int.from_bytes(b[4:7], "big") | (b[7] << 24)
            yield b[0] & 0x1F, ts, bytes(b[11 : 11 + size])
            del b[: 11 + size + 4]


def even_size(width: int, height: int) -> tuple[int, int]:
    """The encoded size for a source size: yuv420p H.264 needs even dimensions."""
    return max(2, width & ~1), max(2, height & ~1)


def private_copy(frame: VideoFrame) -> VideoFrame:
    """A copy of a sanitized frame that this thread may stamp (the room's encoder stamps the original)."""
    w, h = even_size(frame.width, frame.height)
    if (w, h) != (frame.width, frame.height) or frame.format.name != "yuv420p":
        return frame.reformat(width=w, height=h, format="yuv420p")
    planes: np.ndarray[Any, np.dtype[np.uint8]] = np.ascontiguousarray(frame.to_ndarray(), dtype=np.uint8)
    return VideoFrame.from_ndarray(planes, format="yuv420p")


class FlvEncoder:
    """H.264 + AAC into FLV tags for one connection. Not thread-safe: one thread owns it."""

    def __init__(self, width: int, height: int, bitrate: int, keyframe_interval_s: float = 2.0) -> None:
        self.size = even_size(width, height)
        self._out = FlvTags()
        self._container: Any = av.open(
            self._out,
            "w",
            format="flv",
            container_options={
                "flvflags": "no_duration_filesize",
                "flush_packets": "1",
                "max_interleave_delta": "500000",  # µs: never hold video back for long waiting for audio
            },
        )
        self._video: Any = self._container.add_stream("libx264", rate=30)
        self._video.width, self._video.height = self.size
        self._video.pix_fmt = "yuv420p"
        self._video.bit_rate = bitrate
        ctx = self._video.codec_context
        ctx.time_base = MS
        ctx.gop_size = 100_000  # keyframes are placed by time (below)
        ctx.options = {
            "preset": "veryfast",
            "tune": "zerolatency",
            "profile": "baseline",
            "forced-idr": "1",
            "x264-params": "scenecut=0:bframes=0",
            "maxrate": str(bitrate),
            "bufsize": str(bitrate),
        }
        self._audio: Any = self._container.add_stream("aac", rate=AUDIO_RATE)
        self._audio.layout = "stereo"
        self._audio.format = "fltp"
        self._audio.bit_rate = AUDIO_BITRATE
        self._audio.codec_context.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._resampler = AudioResampler(
            format="fltp", layout="stereo", rate=AUDIO_RATE, frame_size=AAC_FRAME
        )
        self._keyframe_ms = max(1, int(keyframe_interval_s * 1000))
        self._last_ms = -1
        self._last_key_ms: int | None = None
        self._samples = 0  # the audio timeline: samples encoded so far
        self.keyframes = 0

    def add_video(self, frame: VideoFrame, t_s: float) -> list[tuple[int, int, bytes]]:
        """Encode ``frame`` (a private copy, see :func:`private_copy`) at ``t_s`` s into the connection."""
        ms = max(int(t_s * 1000), self._last_ms + 1)
        self._last_ms = ms
        key = self._last_key_ms is None or ms - self._last_key_ms >= self._keyframe_ms
        if key:
            self._last_key_ms = ms
            self.keyframes += 1
        frame.pts = ms
        frame.time_base = MS
        frame.pict_type = av.video.frame.PictureType.I if key else av.video.frame.PictureType.NONE
        for packet in self._video.encode(frame):
            self._container.mux(packet)
        if self._samples < (ms / 1000 - SILENCE_AFTER_S) * AUDIO_RATE:
            self._silence_until(int(ms / 1000 * AUDIO_RATE))
        return list(self._out.tags())

    def add_audio(self, frame: AudioFrame, t_s: float) -> list[tuple[int, int, bytes]]:
        """Encode the publisher's ``frame`` that arrived at ``t_s`` s into the connection."""
        expected = int(t_s * AUDIO_RATE)
        if self._samples > expected + AUDIO_EARLY_S * AUDIO_RATE:
            return []
        if self._samples < expected - AUDIO_LATE_S * AUDIO_RATE:
            self._silence_until(expected)
        for f in self._resampler.resample(frame):
            self._encode_audio(f)
        return list(self._out.tags())

    def _silence_until(self, sample: int) -> None:
        while self._samples + AAC_FRAME <= sample:
            f = AudioFrame(format="fltp", layout="stereo", samples=AAC_FRAME)
            for plane in f.planes:
                plane.update(bytes(plane.buffer_size))
            f.sample_rate = AUDIO_RATE
            self._encode_audio(f)

    def _encode_audio(self, f: AudioFrame) -> None:
        f.pts = self._samples
        f.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._samples += f.samples
        for packet in self._audio.encode(f):
            self._container.mux(packet)

    def close(self) -> None:
        try:
            self._container.close()
        except (av.FFmpegError, ValueError):
            pass
