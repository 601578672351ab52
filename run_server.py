#!/usr/bin/env python3
"""Run the mosaic-relay server: one aiohttp app (pages, JSON API, socket.io signaling) on one port.

    .venv/bin/python run_server.py [--host 0.0.0.0] [--port 8080] [--weights weights/detector.onnx] ...

Every knob of ``relay.settings.Settings`` has a flag (``--help`` lists them with defaults). The
detector is loaded and warmed up before the port opens; missing or unusable weights end the
program with a message and exit status 1. SIGINT/SIGTERM close every stream (viewers are told)
within ``--shutdown-timeout-s``. This is the only place that configures logging.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import ssl
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relay.settings import Settings

log = logging.getLogger("run_server")

SECRET_ENV = "MOSAIC_VIEW_TOKEN_SECRET"

# One line of help per Settings field; tests check that every field has a flag.
HELP: dict[str, str] = {
    "host": "address to listen on",
    "port": "TCP port (HTTP and socket.io on the same port)",
    "ssl_cert": "TLS certificate (PEM); serve HTTPS/WSS (browsers need it for the camera off localhost)",
    "ssl_key": "TLS private key (PEM), with --ssl-cert",
    "log_level": "logging level (DEBUG, INFO, WARNING, ERROR)",
    "shutdown_timeout_s": "on SIGINT/SIGTERM, seconds to close every stream before exiting",
    "weights": "detector weights (YOLOv5 ONNX, see training/export.py)",
    "conf_threshold": "detector confidence threshold (MOSAINFO's default: 0.6)",
    "iou_threshold": "non-maximum suppression IoU threshold",
    "input_size": "detector input size in px (square, letterboxed, multiple of 32)",
    "detector_threads": "onnxruntime intra-op threads of the detector",
    "mosaic_block": "mosaic cell size in px at 720p (scaled up for larger frames)",
    "box_margin": "each detected box grows by this fraction of its size on every side",
    "carry_margin": "wider margin of boxes carried forward between detections",
    "carry_max_age_s": "a box is carried forward at most this long without re-detection",
    "detector_timeout_s": "no detection for this long => frames go out fully pixelated (fail closed)",
    "track_conf": "an object found at --conf-threshold stays hidden while it still scores this (<= --conf-threshold)",
    "track_hold_s": "... and this many seconds after the detector last saw it",
    "lookahead_s": "a frame goes out once the detector has seen a later frame, or after this many seconds "
    "(hides an object on the frames before it was found; costs about one detection of latency; 0 = off)",
    "video_bitrate": "bits/s of the single VP8 encode per stream",
    "keyframe_interval_s": "periodic keyframe interval",
    "keyframe_min_interval_s": "forced keyframes (viewer join, PLI/FIR) are throttled to this interval",
    "max_fps": "frames per second processed per stream at most",
    "fast_send": "on: the relay packetizes once per stream and sends each viewer's RTP itself, one system call "
    "per frame (aiortc keeps ICE/DTLS/RTCP); off: aiortc's sender sends every packet",
    "fast_send_syscall": "with --fast-send on: gso (UDP_SEGMENT), mmsg (sendmmsg via ctypes) or sendto",
    "max_streams": "streams at once at most",
    "max_viewers_per_stream": "viewers per stream at most",
    "max_message_bytes": "largest socket.io message accepted (bigger ones drop the connection)",
    "max_sdp_bytes": "largest SDP offer accepted",
    "max_title_len": "longest stream title (characters)",
    "max_category_len": "longest stream category (characters)",
    "requests_per_second": "socket.io requests per second per connection (token bucket, burst 2x)",
    "allowed_origins": "comma-separated origins allowed to open socket.io from a browser, or '*' "
    "(default: same origin only)",
    "view_token_secret": f"file with the HMAC secret of private-stream view tokens (or env {SECRET_ENV}; "
    "default: random per start, so tokens die with the process)",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-") + ("-file" if name == "view_token_secret" else "")


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="run_server.py",
        description="mosaic-relay: live streaming that pixelates license plates, ID cards and shipping labels.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in dataclasses.fields(Settings):
        default = getattr(defaults, f.name)
        kwargs: dict[str, Any] = {"dest": f.name, "help": HELP[f.name]}
        if f.name == "allowed_origins":
            kwargs.update(type=_origins, default=default, metavar="ORIGINS")
        elif f.name == "view_token_secret":
            kwargs.update(type=Path, default=None, metavar="PATH")
        elif f.name in ("ssl_cert", "ssl_key", "weights"):
            kwargs.update(type=Path, default=default, metavar="PATH")
        elif f.name in ("fast_send", "fast_send_syscall"):
            kwargs.update(
                default=default, choices=["on", "off"] if f.name == "fast_send" else ["gso", "mmsg", "sendto"]
            )
        elif f.name == "log_level":
            kwargs.update(type=str.upper, default=default, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        elif isinstance(default, bool):
            kwargs.update(action=argparse.BooleanOptionalAction, default=default)
        else:
            kwargs.update(type=type(default), default=default)
        parser.add_argument(_flag(f.name), **kwargs)
    return parser


def _origins(text: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())


def settings_from_args(argv: Sequence[str] | None = None) -> Settings:
    parser = build_parser()
    args = parser.parse_args(argv)
    values = vars(args)
    secret_file: Path | None = values.pop("view_token_secret")
    secret: bytes | None = None
    if secret_file is not None:
        try:
            secret = secret_file.read_bytes().strip()
        except OSError as exc:
            parser.error(f"cannot read --view-token-secret-file: {exc}")
    elif os.environ.get(SECRET_ENV):
        secret = os.environ[SECRET_ENV].encode()
    if secret is not None and len(secret) < 16:
        parser.error("the view token secret must be at least 16 bytes")
    settings = Settings(**values, view_token_secret=secret)
    problems = validate(settings)
    if problems:
        parser.error("; ".join(problems))
    return settings


def validate(s: Settings) -> list[str]:
    problems = []
    if not 0 < s.port < 65536:
        problems.append("--port must be 1..65535")
    if (s.ssl_cert is None) != (s.ssl_key is None):
        problems.append("--ssl-cert and --ssl-key go together")
    if not 0.0 < s.conf_threshold < 1.0:
        problems.append("--conf-threshold must be in (0, 1)")
    if not 0.0 < s.track_conf <= s.conf_threshold:
        problems.append("--track-conf must be in (0, --conf-threshold]")
    if s.track_hold_s < 0:
        problems.append("--track-hold-s must be >= 0")
    if not 0.0 <= s.lookahead_s <= 1.0:
        problems.append("--lookahead-s must be in [0, 1]")
    if not 0.0 < s.iou_threshold < 1.0:
        problems.append("--iou-threshold must be in (0, 1)")
    if s.input_size < 64 or s.input_size % 32:
        problems.append("--input-size must be a multiple of 32, at least 64")
    for name in (
        "detector_threads",
        "mosaic_block",
        "max_streams",
        "max_viewers_per_stream",
        "video_bitrate",
    ):
        if getattr(s, name) < 1:
            problems.append(f"{_flag(name)} must be positive")
    for name in (
        "shutdown_timeout_s",
        "detector_timeout_s",
        "carry_max_age_s",
        "keyframe_interval_s",
        "max_fps",
    ):
        if getattr(s, name) <= 0:
            problems.append(f"{_flag(name)} must be positive")
    if s.requests_per_second <= 0:
        problems.append("--requests-per-second must be positive")
    if s.max_message_bytes < s.max_sdp_bytes + 1024:
        problems.append("--max-message-bytes must exceed --max-sdp-bytes by at least 1024")
    return problems


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if level != "DEBUG":  # per-packet chatter
        for noisy in ("aioice", "aiortc", "socketio", "engineio", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


class StartupError(Exception):
    """The server cannot start; the message says why and what to do."""


def load_detector(settings: Settings) -> Any:
    """Load and warm up the real detector, or raise StartupError with a clear message."""
    weights = settings.weights
    if not weights.is_file():
        raise StartupError(
            f"detector weights not found: {weights}\n"
            "  pass --weights PATH, or export a model with training/export.py (see weights/README.md)"
        )
    try:
        from relay.detector import detector_from_settings
    except ImportError as exc:
        raise StartupError(f"cannot import the detector ({exc}); run: bash scripts/setup.sh") from exc
    t0 = time.monotonic()
    try:
        detector = detector_from_settings(settings)
        out = detector.detect(np.zeros((480, 640, 3), np.uint8))  # warm-up and contract check
    except Exception as exc:
        raise StartupError(f"cannot load detector weights {weights}: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(out, np.ndarray) and out.ndim == 2 and out.shape[1] == 6):
        raise StartupError(f"detector {weights} returned {getattr(out, 'shape', out)!r}, expected (N, 6)")
    log.info("detector %s loaded and warmed up in %.1f s", weights, time.monotonic() - t0)
    return detector


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.ssl_cert is None or settings.ssl_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(settings.ssl_cert, settings.ssl_key)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot load TLS certificate/key: {exc}") from exc
    return ctx


def main(argv: Sequence[str] | None = None) -> int:
    settings = settings_from_args(argv)
    configure_logging(settings.log_level)
    try:
        detector = load_detector(settings)
        context = ssl_context(settings)
    except StartupError as exc:
        print(f"run_server.py: error: {exc}", file=sys.stderr)
        return 1

    from aiohttp import web

    from signaling.app import create_app

    app = create_app(settings, detector)
    scheme = "https" if context else "http"
    shown = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    print(
        f"mosaic-relay: watch at {scheme}://{shown}:{settings.port}/  stream at {scheme}://{shown}:{settings.port}/publish"
    )
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        ssl_context=context,
        shutdown_timeout=settings.shutdown_timeout_s,
        print=None,
        access_log=None,
    )
    log.info("server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
