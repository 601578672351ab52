"""``create_app(settings, detector)``: the one aiohttp application with socket.io attached.

Tests start it in-process on a free port; ``run_server.py`` runs it with ``web.run_app``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import socketio
from aiohttp import web

from relay.settings import Settings
from signaling.access import ViewTokens
from signaling.base import PUBLISHER_NS, VIEWER_NS, SignalingState
from signaling.http import add_routes
from signaling.ice_http import add_ice
from signaling.ingest import add_ingest_routes
from signaling.keys import DETECTOR_NAME_KEY, SETTINGS_KEY, SIO_KEY, STATE_KEY
from signaling.metrics_http import add_metrics_route
from signaling.publisher import PublisherNamespace
from signaling.restream_http import add_restream_routes
from signaling.viewer import ViewerNamespace

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from relay.pipeline import Detectors
    from relay.room import RoomRegistry

log = logging.getLogger(__name__)

PING_INTERVAL_S = 10  # a publisher whose network vanished (no close frame) is noticed within ~20 s
PING_TIMEOUT_S = 10


def cors_origins(settings: Settings) -> list[str] | str | None:
    """engine.io's ``cors_allowed_origins``: ``None`` means same origin only (checked against
    the Host header); clients that send no Origin header (non-browser clients) are accepted."""
    if not settings.allowed_origins:
        return None
    if "*" in settings.allowed_origins:
        return "*"
    return list(settings.allowed_origins)


def detector_name(detector: Any) -> str:
    """What /healthz reports: the detector's ``name``, else its class (and weights file)."""
    name = getattr(detector, "name", None)
    if name:
        return str(name)
    weights = getattr(detector, "weights", None)
    return type(detector).__name__ + (f":{Path(weights).name}" if weights else "")


def create_app(
    settings: Settings,
    detector: Detectors,
    *,
    registry: RoomRegistry | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> web.Application:
    """Build the app. ``detector`` is the loaded, warmed-up detector (tests may pass a fake);
    ``registry`` replaces the real ``RoomRegistry(settings, detector)`` in unit tests;
    ``metrics_registry`` is what /metrics serves (default: the relay's ``registry.metrics.registry``
    when the relay has one, else a new one)."""
    if registry is None:
        from relay.ice import server_rtc_configuration
        from relay.room import RoomRegistry

        registry = RoomRegistry(settings, detector, rtc_configuration=server_rtc_configuration(settings))

    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        namespaces=[PUBLISHER_NS, VIEWER_NS],  # anything else, "/" included, is refused at connect
        cors_allowed_origins=cors_origins(settings),
        max_http_buffer_size=settings.max_message_bytes,
        ping_interval=PING_INTERVAL_S,
        ping_timeout=PING_TIMEOUT_S,
        logger=False,
        engineio_logger=False,
    )
    secret = settings.view_token_secret or secrets.token_bytes(32)
    state = SignalingState(sio=sio, settings=settings, registry=registry, view_tokens=ViewTokens(secret))
    registry.on_event = state.on_registry_event
    sio.register_namespace(PublisherNamespace(state))
    sio.register_namespace(ViewerNamespace(state))

    app = web.Application(client_max_size=settings.max_message_bytes)
    app[SETTINGS_KEY] = settings
    app[SIO_KEY] = sio
    app[STATE_KEY] = state
    app[DETECTOR_NAME_KEY] = detector_name(detector)
    sio.attach(app)
    add_routes(app)
    add_restream_routes(app)
    add_ingest_routes(app)  # HTTP stream API, WHIP, WHEP (signaling/ingest.py)
    add_ice(app)
    if metrics_registry is None:
        metrics_registry = getattr(getattr(registry, "metrics", None), "registry", None)
    add_metrics_route(app, metrics_registry)
    app.on_shutdown.append(_shutdown)
    return app


async def _shutdown(app: web.Application) -> None:
    """Close every stream (viewers get ``stream_ended``), then every socket.io connection; bounded."""
    state = app[STATE_KEY]
    timeout = app[SETTINGS_KEY].shutdown_timeout_s
    state.shutting_down = True
    try:
        async with asyncio.timeout(timeout):
            await state.registry.close_all()
    except TimeoutError:
        log.error("closing all streams took longer than %.1f s; exiting anyway", timeout)
    except Exception:
        log.exception("closing all streams failed")
    await state.stats.close()
    sio = app[SIO_KEY]
    try:
        async with asyncio.timeout(2.0):
            sockets = list(sio.eio.sockets.values())
            if sockets:  # close every connection, so that no handler holds the exit up
                log.info("closing %d socket.io connections", len(sockets))
                await sio.eio.disconnect()
                # engine.io's websocket writer ends (and closes the websocket) only when its queue
                # yields None; otherwise each handler waits for its client to hang up, which holds
                # aiohttp's shutdown for seconds (python-engineio 4.15, pinned)
                for s in sockets:
                    await s.queue.put(None)
            await sio.shutdown()
    except Exception:
        log.exception("socket.io shutdown failed")
