"""The codecs a room encodes its sanitized video into for viewers: VP8 (libvpx) and H.264 (libx264).

Both run at a **fixed** bitrate with keyframes placed by the room (:class:`relay.fanout.RoomEncoder`
forces an I frame with ``frame.pict_type``; the codec's own GOP is effectively infinite).

- VP8: aiortc's realtime libvpx settings (aiortc/codecs/vpx.py), a faster speed above 640x480.
- H.264: constrained baseline (``profile=baseline``: no B-frames, no CABAC), ``tune=zerolatency``
  (no lookahead, a frame in → its packet out), no scene-cut keyframes, every forced keyframe an IDR
  with SPS/PPS in front, the level from the frame size and rate (:func:`h264_level`). PyAV's libx264
  context without a global header writes **Annex-B** (start codes), which is what aiortc's
  ``H264Encoder.pack`` splits into NAL units (aiortc/codecs/h264.py ``_split_bitstream``).
  What is signalled in SDP is ``profile-level-id=42e01f`` (relay/egress_codecs.py); frames above
  level 3.1 carry their level in the SPS (``level-asymmetry-allowed=1``; decoders take it).
"""

from __future__ import annotations

import fractions
from typing import Any, Literal

import av
from av import VideoFrame

from relay.restream_encode import private_copy

VideoCodec = Literal["vp8", "h264"]
VIDEO_CODECS: tuple[VideoCodec, ...] = ("vp8", "h264")
VIDEO_TIME_BASE = fractions.Fraction(1, 90000)

# (level, max frame size in macroblocks, max macroblocks per second): ITU-T H.264 table A-1
_H264_LEVELS = (
    ("3.1", 3600, 108_000),
    ("3.2", 5120, 216_000),
    ("4.0", 8192, 245_760),
    ("4.2", 8704, 522_240),
    ("5.1", 36_864, 983_040),
    ("5.2", 36_864, 2_073_600),
)


def vp8_cpu_used(width: int, height: int) -> int:
    """libvpx speed for a frame size: aiortc's -6 up to 640x480, -10 above.

    Measured here on a 1280x720 pan at 1.5 Mbps (docs/BENCHMARKS.md): -6 takes 12.4 ms a frame and
    -10 9.1 ms for the same PSNR (37.7 dB); with the detector on the other core, the 720p encode at -6
    was what kept the room under 30 fps. Small frames keep -6 (they are cheap either way).
    """
    return -6 if width * height <= 640 * 480 else -10


def new_vp8(width: int, height: int, bitrate: int) -> Any:
    """A libvpx context with aiortc's realtime settings (codecs/vpx.py) at a fixed bitrate, without
    the denoiser, and a faster speed for frames above 640x480 (:func:`vp8_cpu_used`)."""
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
        # no temporal denoiser (aiortc's 4): the input is a decoded, sanitized stream, not a camera;
        # on a 1280x720 pan at 1.5 Mbps it took 8.5 → 4.7-5.2 ms CPU a frame, PSNR-Y 37.9 → 40.3-43.2 dB
        # (docs/BENCHMARKS.md, fan-out: where 100 viewers' frames were lost)
        "noise-sensitivity": "0",
        "overshoot-pct": "15",
        "partitions": "0",
        "static-thresh": "1",
        "undershoot-pct": "100",
    }
    codec.thread_count = 1
    return codec


def h264_level(width: int, height: int, fps: float) -> str:
    """The lowest H.264 level for ``width`` x ``height`` at ``fps`` (at least 3.1, as WebRTC's 42e01f)."""
    mbs = -(-width // 16) * -(-height // 16)
    for level, max_fs, max_mbps in _H264_LEVELS:
        if mbs <= max_fs and mbs * fps <= max_mbps:
            return level
    return _H264_LEVELS[-1][0]


def new_h264(width: int, height: int, bitrate: int, fps: float) -> Any:
    """A libx264 context: constrained baseline, zerolatency, fixed bitrate (VBV of one second),
    keyframes only when the room forces them (IDR), one thread like the VP8 encode."""
    codec: Any = av.CodecContext.create("libx264", "w")
    codec.width = width
    codec.height = height
    codec.bit_rate = bitrate
    codec.pix_fmt = "yuv420p"
    codec.time_base = VIDEO_TIME_BASE
    codec.framerate = fractions.Fraction(round(fps * 1000), 1000)
    codec.gop_size = 100_000  # keyframes are placed by the room
    codec.max_b_frames = 0
    codec.options = {
        "preset": "veryfast",
        "tune": "zerolatency",
        "profile": "baseline",
        "level": h264_level(width, height, fps),
        "forced-idr": "1",
        "x264-params": "bframes=0:scenecut=0:repeat-headers=1",
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
    }
    codec.thread_count = 1
    return codec


def new_context(codec: VideoCodec, width: int, height: int, bitrate: int, fps: float) -> Any:
    if codec == "h264":
        return new_h264(width, height, bitrate, fps)
    return new_vp8(width, height, bitrate)


def encoder_input(codec: VideoCodec, frame: VideoFrame) -> VideoFrame:
    """The frame an encoder of ``codec`` may stamp (pts, picture type). VP8, the room's first
    encoder, takes the sanitized frame itself; H.264 takes its own copy (its thread would otherwise
    stamp the same frame as the VP8 thread), at an even size (yuv420p H.264 needs one)."""
    return private_copy(frame) if codec == "h264" else frame
