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

from relay.cluster_registry import ClusterRegistry
from relay.settings import Settings
from signaling.access import ViewTokens
from signaling.base import PUBLISHER_NS, VIEWER_NS, SignalingState
from signaling.bodylimit import BodyGuard
from signaling.cluster import attach_cluster, client_manager
from signaling.eio import RelaySocketServer, drop_session
from signaling.http import add_routes
from signaling.ice_http import add_ice
from signaling.ingest import add_ingest_routes
from signaling.keys import (
    BODY_GUARD_KEY,
    DETECTOR_NAME_KEY,
    EXPIRY_TASK_KEY,
    SETTINGS_KEY,
    SIO_KEY,
    STATE_KEY,
)
from signaling.limits import AddressLimits, rate_limit_middleware
from signaling.logquiet import LibraryLogger, QuietLog
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
CONNECTIONS_BUDGET_S = 1.0  # of the shutdown time, kept for cutting connections after the streams
EXPIRY_CHECK_S = 1.0  # unpublished streams are checked for expiry this often (at most)


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

        kind = ClusterRegistry if settings.redis_url else RoomRegistry  # several nodes over Redis, or one
        registry = kind(settings, detector, rtc_configuration=server_rtc_configuration(settings))

    quiet = QuietLog()
    state_ref: list[SignalingState] = []
    limits = AddressLimits.from_settings(
        settings,
        connection_alive=lambda eio_sid: eio_sid in sio.eio.sockets,
        is_unpublished=lambda stream_id: state_ref[0].is_unpublished(stream_id),
    )
    sio = RelaySocketServer(
        limits=limits,
        quiet=quiet,
        async_mode="aiohttp",
        namespaces=[PUBLISHER_NS, VIEWER_NS],  # anything else, "/" included, is refused at connect
        cors_allowed_origins=cors_origins(settings),
        max_http_buffer_size=settings.max_message_bytes,
        ping_interval=PING_INTERVAL_S,
        ping_timeout=PING_TIMEOUT_S,
        # their warnings (about client input) through QuietLog, the rest at DEBUG without packet data
        logger=LibraryLogger(logging.getLogger("socketio.server"), quiet),
        engineio_logger=LibraryLogger(logging.getLogger("engineio.server"), quiet),
        client_manager=client_manager(settings),  # through Redis with --redis-url (signaling/cluster.py)
    )
    secret = settings.view_token_secret or secrets.token_bytes(32)
    state = SignalingState(
        sio=sio, settings=settings, registry=registry, view_tokens=ViewTokens(secret), limits=limits
    )
    state_ref.append(state)
    registry.on_event = state.on_registry_event
    sio.register_namespace(PublisherNamespace(state))
    sio.register_namespace(ViewerNamespace(state))

    guard = BodyGuard(settings.max_message_bytes, settings.body_timeout_s, quiet)
    guard.on_reject = lambda request, status: _drop_polling_session(sio, request)
    app = web.Application(
        client_max_size=settings.max_message_bytes + 1,  # aiohttp refuses a body of this size
        middlewares=[
            rate_limit_middleware(limits, quiet.report, is_session=lambda sid: sid in sio.eio.sockets),
            guard.middleware,
        ],
    )
    app[SETTINGS_KEY] = settings
    app[SIO_KEY] = sio
    app[STATE_KEY] = state
    app[BODY_GUARD_KEY] = guard
    app[DETECTOR_NAME_KEY] = detector_name(detector)
    sio.attach(app)
    add_routes(app)
    add_restream_routes(app)
    add_ingest_routes(app)  # HTTP stream API, WHIP, WHEP (signaling/ingest.py)
    add_ice(app)
    if metrics_registry is None:
        metrics_registry = getattr(getattr(registry, "metrics", None), "registry", None)
    add_metrics_route(app, metrics_registry)
    if isinstance(registry, ClusterRegistry):  # --redis-url: several nodes (signaling/cluster.py)
        attach_cluster(app, state, registry, limits)
    app.on_startup.append(_start_expiry)
    app.on_shutdown.append(_shutdown)
    return app


async def _drop_polling_session(sio: socketio.AsyncServer, request: web.Request) -> None:
    """A refused long-polling POST (too large, too slow) ends its engine.io session too."""
    sid = request.query.get("sid")
    if request.path.startswith("/socket.io/") and sid:
        await drop_session(sio.eio, sid)


async def _start_expiry(app: web.Application) -> None:
    state = app[STATE_KEY]
    app[EXPIRY_TASK_KEY] = asyncio.get_running_loop().create_task(
        _expiry_loop(state), name="signaling:unpublished-expiry"
    )


async def _expiry_loop(state: SignalingState) -> None:
    period = min(EXPIRY_CHECK_S, max(0.05, state.settings.unpublished_ttl_s / 4))
    while not state.shutting_down:
        await asyncio.sleep(period)
        try:
            await state.expire_unpublished()
        except Exception:
            log.exception("expiring unpublished streams failed")


def _is_closed(room: Any) -> bool:
    closed = getattr(room, "closed", True)
    return closed.is_set() if isinstance(closed, asyncio.Event) else bool(closed)


def _rooms(registry: Any) -> list[Any]:
    rooms = registry.rooms
    return list(rooms.values() if isinstance(rooms, dict) else rooms)


async def _shutdown(app: web.Application) -> None:
    """Within ``shutdown_timeout_s`` in all: cut bodies still arriving, close every stream
    (clients get ``stream_ended``/``server_shutdown``; a stream that does not close in time is
    announced anyway), then drop every engine.io session (pending polls and websockets end)."""
    state = app[STATE_KEY]
    settings = app[SETTINGS_KEY]
    sio = app[SIO_KEY]
    state.shutting_down = True
    app[BODY_GUARD_KEY].cut_all()
    expiry = app.get(EXPIRY_TASK_KEY)
    if expiry is not None:
        expiry.cancel()
    rooms = _rooms(state.registry)
    budget = max(0.5, settings.shutdown_timeout_s - CONNECTIONS_BUDGET_S)
    try:
        async with asyncio.timeout(budget):
            await state.registry.close_all()
    except TimeoutError:
        log.error("closing all streams took longer than %.1f s; exiting anyway", budget)
    except Exception:
        log.exception("closing all streams failed")
    await state.stats.close()
    try:
        async with asyncio.timeout(CONNECTIONS_BUDGET_S):
            unannounced = [r for r in rooms if not _is_closed(r)]
            for room in unannounced:  # did not close in time: their clients are told anyway
                await state.stream_ended(room)
            sids = list(sio.eio.sockets)
            if sids:  # close every connection, so that no handler holds the exit up
                log.info("closing %d socket.io connections", len(sids))
                await asyncio.gather(*(drop_session(sio.eio, sid) for sid in sids), return_exceptions=True)
            await sio.shutdown()
    except TimeoutError:
        log.warning("closing connections took longer than %.1f s; exiting anyway", CONNECTIONS_BUDGET_S)
    except Exception as exc:
        log.warning("closing connections failed: %s", type(exc).__name__)
