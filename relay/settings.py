"""Every knob of the relay in one frozen dataclass.

``run_server.py`` builds it from the command line; tests build it directly
with ``Settings(...)`` or ``dataclasses.replace(Settings(), ...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = REPO_ROOT / "weights" / "detector.onnx"

CLASS_NAMES: tuple[str, ...] = ("license_plate", "id_card", "shipping_label")


@dataclass(frozen=True)
class Settings:
    # --- server ---
    host: str = "0.0.0.0"
    port: int = 8080
    ssl_cert: Path | None = None
    ssl_key: Path | None = None
    log_level: str = "INFO"
    shutdown_timeout_s: float = 5.0

    # --- detector ---
    weights: Path = DEFAULT_WEIGHTS
    conf_threshold: float = 0.6  # MOSAINFO's default
    iou_threshold: float = 0.45
    input_size: int = 416  # detector input (square, letterboxed), multiple of 32
    detector_threads: int = 1  # onnxruntime intra-op threads per detector session

    # --- mosaic / fail-closed policy ---
    mosaic_block: int = 16  # px of a mosaic cell at 720p-equivalent (scaled with frame size)
    box_margin: float = 0.15  # each box grows by this fraction of its size on every side
    carry_margin: float = 0.35  # wider margin for boxes carried forward between detections
    carry_max_age_s: float = 1.0  # a box is carried forward at most this long without re-detection
    detector_timeout_s: float = 0.5  # no detection for this long => frames go out fully pixelated
    track_conf: float = 0.3  # a found object stays hidden while it still scores this (relay/tracker.py)
    track_hold_s: float = 0.4  # ... and this long after the detector last saw it
    lookahead_s: float = 0.25  # a frame waits at most this long for the detection of a later frame (0 = off)

    # --- media ---
    video_bitrate: int = 1_500_000  # bits/s of the one encode per room
    keyframe_interval_s: float = 2.0  # periodic keyframe
    keyframe_min_interval_s: float = 0.5  # forced keyframes (join, PLI/FIR) are throttled to this
    max_fps: float = 30.0

    # --- fast send (relay/fastsend.py, issue #15): our RTP send path for the encoded-once packets ---
    fast_send: str = "on"  # "on" | "off" (off: aiortc's RTCRtpSender sends every packet)
    fast_send_syscall: str = "gso"  # "gso" | "mmsg" | "sendto": how one frame's datagrams reach the kernel

    # --- limits (abuse) ---
    max_streams: int = 16
    max_viewers_per_stream: int = 50
    max_message_bytes: int = 64 * 1024
    max_sdp_bytes: int = 32 * 1024
    max_title_len: int = 120
    max_category_len: int = 40
    requests_per_second: float = 20.0  # per socket.io connection (token bucket, burst = 2x)
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)  # empty = same origin only
    view_token_secret: bytes | None = None  # None = a random secret per server start

    @property
    def detector_floor(self) -> float:
        """The lowest score the detector must return: the tracker continues tracks down to ``track_conf``."""
        return min(self.conf_threshold, self.track_conf)
