"""``GET /metrics``: Prometheus exposition of a ``prometheus_client.CollectorRegistry``.

The registry is passed in (``add_metrics_route(app, registry)``; ``create_app`` uses the relay's
``RoomRegistry.metrics.registry`` when there is one, else a registry of its own). This module adds
to it what the signaling layer and the process know: ``process_*`` (CPU, memory, open files),
``python_info``, ``mosaic_relay_build_info`` and ``mosaic_relay_socketio_connections``.

On by default and open; ``Settings.metrics_token`` requires ``Authorization: Bearer <token>``
(compared in constant time; the token is never logged); ``Settings.metrics = False`` leaves the route
out (404). Collection runs on the event loop: collectors read in-memory counters only.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from signaling.keys import DETECTOR_NAME_KEY, SETTINGS_KEY, SIO_KEY

log = logging.getLogger(__name__)

METRICS_REGISTRY_KEY = web.AppKey("metrics_registry", CollectorRegistry)


class SignalingCollector(Collector):
    """What the signaling app knows, read at scrape time."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        from mosaic_relay import __version__

        info = InfoMetricFamily("mosaic_relay_build", "mosaic-relay version and detector")
        info.add_metric([], {"version": __version__, "detector": self._app[DETECTOR_NAME_KEY]})
        yield info
        sockets = len(self._app[SIO_KEY].eio.sockets)
        yield GaugeMetricFamily(
            "mosaic_relay_socketio_connections", "Open socket.io (engine.io) connections", value=sockets
        )


def _register(registry: CollectorRegistry, collector: Collector) -> None:
    try:
        registry.register(collector)
    except ValueError:  # the relay registered the same metric names already
        log.debug("collector %s not added: its metric names are taken", type(collector).__name__)


def _authorized(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


async def metrics(request: web.Request) -> web.StreamResponse:
    token = request.app[SETTINGS_KEY].metrics_token
    if token and not _authorized(request, token):
        raise web.HTTPUnauthorized(
            text="metrics need Authorization: Bearer <token>\n", headers={"WWW-Authenticate": "Bearer"}
        )
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encode(request.app[METRICS_REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


def add_metrics_route(app: web.Application, registry: CollectorRegistry | None = None) -> None:
    """Serve ``registry`` (a new one if None) at /metrics, unless ``Settings.metrics`` is off."""
    if not app[SETTINGS_KEY].metrics:
        return
    registry = registry if registry is not None else CollectorRegistry()
    for collector in (
        ProcessCollector(registry=None),
        PlatformCollector(registry=None),
        SignalingCollector(app),
    ):
        _register(registry, collector)
    app[METRICS_REGISTRY_KEY] = registry
    app.router.add_get("/metrics", metrics)
