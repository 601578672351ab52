"""Per-client-address limits: who the client is, how many connections and unpublished streams it
holds, how fast it may call the HTTP routes.

The client address is the TCP peer's address. ``X-Forwarded-For`` is honoured only when the peer
is one of ``--trusted-proxies`` (addresses or CIDRs; none by default): the header is then read
from the right, skipping trusted proxies, and the first address that is not one is the client.
Anything else (a header from an untrusted peer, a malformed entry) is ignored, so a client cannot
choose its own address.

Every limiter takes the client address as a plain string, so any API (socket.io, the coming
HTTP stream API) can call the same one: :meth:`UnpublishedStreams.admit` before creating a
stream, :meth:`UnpublishedStreams.track` after.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from relay.errors import LimitExceeded
from relay.settings import Settings
from signaling.access import TokenBucket
from signaling.logquiet import PEER

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
UNKNOWN_ADDRESS = "unknown"
MAX_TRACKED_ADDRESSES = 10_000  # per-address tables forget the idlest entries beyond this
MAX_FORWARDED_HOPS = 16  # X-Forwarded-For entries looked at, from the right


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """``["10.0.0.1", "192.168.0.0/16"]`` -> networks; raises ValueError on a malformed entry."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip())


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class AddressResolver:
    """The client address of a request: the peer, or ``X-Forwarded-For`` from a trusted proxy."""

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self._trusted = parse_networks(trusted_proxies)

    def _is_trusted(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip.version == net.version and ip in net for net in self._trusted)

    def resolve(self, peer: str | None, forwarded_for: str | None) -> str:
        ip = _ip(peer)
        if ip is None:
            return UNKNOWN_ADDRESS
        if not self._trusted or not forwarded_for or not self._is_trusted(ip):
            return str(ip)
        hops = [h.strip() for h in forwarded_for.split(",")][-MAX_FORWARDED_HOPS:]
        for hop in reversed(hops):
            hop_ip = _ip(hop)
            if hop_ip is None:  # a malformed entry: whatever lies left of it is not to be trusted
                return str(ip)
            if not self._is_trusted(hop_ip):
                return str(hop_ip)
            ip = hop_ip
        return str(ip)

    def of_request(self, request: web.BaseRequest) -> str:
        forwarded = ",".join(request.headers.getall("X-Forwarded-For", []))
        return self.resolve(request.remote, forwarded or None)


class AddressBuckets:
    """One token bucket per address (``rate``/s, burst ``burst``); the table stays bounded."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate, self._burst, self._clock = rate, burst, clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, address: str) -> bool:
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = TokenBucket(self._rate, self._burst, self._clock)
            while len(self._buckets) > MAX_TRACKED_ADDRESSES:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(address)
        return bucket.take()

    def __len__(self) -> int:
        return len(self._buckets)


def _none(address: str) -> int:
    return 0


class ConnectionCounter:
    """Open connections per address. ``alive(key)`` is asked on every count, so a connection whose
    end was never reported does not hold its address's slot forever."""

    def __init__(self, limit: int, alive: Callable[[str], bool]) -> None:
        self.limit = limit
        self._alive = alive
        self.others: Callable[[str], int] = _none  # the address's connections on other nodes (--redis-url)
        self._by_address: dict[str, set[str]] = {}
        self._address_of: dict[str, str] = {}

    def count(self, address: str) -> int:
        keys = self._by_address.get(address)
        if not keys:
            return 0
        for key in [k for k in keys if not self._alive(k)]:
            self.remove(key)
        return len(self._by_address.get(address, ()))

    def full(self, address: str) -> bool:
        return self.count(address) + self.others(address) >= self.limit

    def counts(self) -> dict[str, int]:
        """Connections per address on this node (shared with the other nodes)."""
        return {a: len(keys) for a, keys in self._by_address.items()}

    def add(self, address: str, key: str) -> bool:
        """Count connection ``key`` of ``address``; False (nothing counted) if the address is full."""
        if self.full(address):
            return False
        self._by_address.setdefault(address, set()).add(key)
        self._address_of[key] = address
        return True

    def remove(self, key: str) -> None:
        address = self._address_of.pop(key, None)
        if address is None:
            return
        keys = self._by_address.get(address)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_address[address]

    def address_of(self, key: str) -> str | None:
        return self._address_of.get(key)


@dataclass
class _Pending:
    address: str
    created: float


@dataclass
class UnpublishedStreams:
    """Streams created but not published yet: at most ``limit`` per client address, each for at
    most ``ttl_s`` (:meth:`expired` lists the overdue ones; the caller ends them).

    ``is_unpublished(stream_id)`` tells whether a tracked stream still exists and is not live; a
    stream that went live or ended stops counting without being told.
    """

    limit: int
    ttl_s: float
    is_unpublished: Callable[[str], bool]
    clock: Callable[[], float] = time.monotonic
    others: Callable[[str], int] = _none  # the address's unpublished streams on other nodes (--redis-url)
    _pending: dict[str, _Pending] = field(default_factory=dict)

    def _prune(self) -> None:
        for stream_id in [s for s in self._pending if not self.is_unpublished(s)]:
            del self._pending[stream_id]

    def count(self, address: str) -> int:
        self._prune()
        return sum(1 for p in self._pending.values() if p.address == address)

    def admit(self, address: str) -> None:
        """Raise ``LimitExceeded`` if ``address`` holds ``limit`` unpublished streams already."""
        if self.count(address) + self.others(address) >= self.limit:
            raise LimitExceeded(
                f"at most {self.limit} unpublished streams per client address: publish or stop one first"
            )

    def counts(self) -> dict[str, int]:
        """Unpublished streams per address on this node (shared with the other nodes)."""
        self._prune()
        out: dict[str, int] = {}
        for p in self._pending.values():
            out[p.address] = out.get(p.address, 0) + 1
        return out

    def track(self, address: str, stream_id: str) -> None:
        self._pending[stream_id] = _Pending(address, self.clock())

    def forget(self, stream_id: str) -> None:
        self._pending.pop(stream_id, None)

    def expired(self) -> list[str]:
        """Tracked streams still unpublished ``ttl_s`` after they were created (oldest first)."""
        self._prune()
        now = self.clock()
        return [s for s, p in self._pending.items() if now - p.created >= self.ttl_s]


@dataclass
class AddressLimits:
    """The per-address limiters of one app (see docs/SECURITY.md, "Limits")."""

    resolver: AddressResolver
    http: AddressBuckets
    connections: ConnectionCounter
    unpublished: UnpublishedStreams

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        connection_alive: Callable[[str], bool],
        is_unpublished: Callable[[str], bool],
    ) -> AddressLimits:
        rate = settings.http_requests_per_second
        return cls(
            resolver=AddressResolver(settings.trusted_proxies),
            http=AddressBuckets(rate, max(1.0, 2 * rate)),
            connections=ConnectionCounter(settings.max_connections_per_address, connection_alive),
            unpublished=UnpublishedStreams(
                settings.max_unpublished_per_address, settings.unpublished_ttl_s, is_unpublished
            ),
        )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def rate_limit_middleware(
    limits: AddressLimits, report: Callable[[str, str], None], is_session: Callable[[str], bool]
) -> Any:
    """HTTP requests per client address (``http_requests_per_second``, burst 2x); past it ``429``
    with ``Retry-After``. Requests of an open engine.io session (``/socket.io/?sid=<is_session>``)
    are not counted here: they are bounded by the connection limit and the per-connection request
    rate."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        address = limits.resolver.of_request(request)
        token = PEER.set(address)  # whatever is logged about this request names its client
        try:
            in_session = request.path.startswith("/socket.io/") and is_session(request.query.get("sid", ""))
            if not in_session and not limits.http.take(address):
                report(f"HTTP rate limit ({request.method} {request.path[:64]})", address)
                return web.json_response(
                    {"error": {"code": "rate_limited", "message": "too many requests from your address"}},
                    status=429,
                    headers={"Retry-After": "1"},
                )
            return await handler(request)
        finally:
            PEER.reset(token)

    return middleware
