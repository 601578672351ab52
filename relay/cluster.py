"""Several nodes sharing one registry over Redis (issue #15, ``--redis-url``).

Each node owns one Redis hash, ``mosaic-relay:node:<node id>``, that it **rewrites whole** every
``ttl_s / 3`` seconds (and at once after a change) in one transaction, with a TTL of ``ttl_s``:

=================  =====================================================================
field              value
=================  =====================================================================
``node``           ``{"address", "beat"}``: where its RTP comes from / goes to; a counter
``s:<stream>``     a stream it owns: ``{"info": StreamInfo, "key": sha256 hex, "audio"}``
``v:<stream>``     how many of the stream's viewers are connected to this node
``f:<stream>``     "send me this stream": ``{"host", "video_port", "audio_port"}``
``u:<address>``    streams created but unpublished by this client address on this node
``c:<address>``    socket.io connections of this client address on this node
=================  =====================================================================

So there is nothing to clean up: a node that dies stops beating, its hash expires and every other
node forgets its streams, viewers and forward requests; after a Redis restart (data lost) every
node has written everything it holds again within one beat. Every node reads all hashes every
``SYNC_S`` (and when told on the ``mosaic-relay:events`` channel that something changed) into
:attr:`Cluster.nodes`. A node is *lost* when its ``beat`` has not moved for ``ttl_s`` (seen from
here, so clocks need not agree); while Redis is unreachable nobody is judged, and after it comes
back every node gets ``ttl_s`` again to re-register. The same channel carries small requests
between nodes (``keyframe``, ``end``). What the data means is relay/cluster_registry.py's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from relay.tasks import TaskSet

logger = logging.getLogger(__name__)

PREFIX = "mosaic-relay:"
EVENTS = PREFIX + "events"
SYNC_S = 0.5
OUTBOX_MESSAGES = 256  # requests waiting for Redis at most (the oldest is dropped)
MAX_NODES = 256


def node_key(node_id: str) -> str:
    return f"{PREFIX}node:{node_id}"


@dataclass
class NodeState:
    """What one node holds (see the module docstring for the fields)."""

    node_id: str
    address: str
    beat: int = 0
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)
    viewers: dict[str, int] = field(default_factory=dict)
    forwards: dict[str, dict[str, Any]] = field(default_factory=dict)
    unpublished: dict[str, int] = field(default_factory=dict)
    connections: dict[str, int] = field(default_factory=dict)


_COUNTS = {"v:": "viewers", "u:": "unpublished", "c:": "connections"}
_RECORDS = {"s:": "streams", "f:": "forwards"}


def encode_node(state: NodeState) -> dict[str, str]:
    """The node's hash (pure)."""
    out = {"node": json.dumps({"address": state.address, "beat": state.beat})}
    for prefix, name in _RECORDS.items():
        out.update({prefix + k: json.dumps(v) for k, v in getattr(state, name).items()})
    for prefix, name in _COUNTS.items():
        out.update({prefix + k: str(v) for k, v in getattr(state, name).items() if v > 0})
    return out


def decode_node(node_id: str, fields: dict[str, str]) -> NodeState | None:
    """A node's hash back (pure); ``None`` if it has no valid ``node`` field. Bad fields are skipped."""
    try:
        head = json.loads(fields["node"])
        state = NodeState(node_id, str(head["address"]), int(head["beat"]))
    except (KeyError, ValueError, TypeError):
        return None
    for name, value in fields.items():
        prefix, _, key = name.partition(":")
        prefix += ":"
        try:
            if prefix in _RECORDS:
                record = json.loads(value)
                if isinstance(record, dict):
                    getattr(state, _RECORDS[prefix])[key] = record
            elif prefix in _COUNTS:
                getattr(state, _COUNTS[prefix])[key] = max(0, int(value))
        except (ValueError, TypeError):
            continue
    return state


@dataclass
class _Seen:
    beat: int
    changed: float  # monotonic time the beat was last seen to move


class Liveness:
    """Which nodes live, judged by their ``beat`` moving as seen from here (clocks need not agree)."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._seen: dict[str, _Seen] = {}
        self._dead: dict[str, int] = {}  # lost nodes' last beat: a stale hash does not bring them back

    def resume(self, now: float) -> None:
        """After an outage of our own: every node gets a full ``ttl_s`` again."""
        for entry in self._seen.values():
            entry.changed = now

    def observe(self, node_id: str, beat: int, now: float) -> bool:
        """Note ``node_id``'s beat; False if it is a lost node's last one (still in Redis)."""
        if self._dead.get(node_id) == beat:
            return False
        self._dead.pop(node_id, None)
        seen = self._seen.get(node_id)
        if seen is None or seen.beat != beat:
            self._seen[node_id] = _Seen(beat, now)
        return True

    def forget(self, node_id: str) -> None:
        self._seen.pop(node_id, None)

    def lost(self, now: float) -> list[str]:
        """Nodes whose beat has not moved for ``ttl_s`` (forgotten from now on)."""
        gone = [n for n, s in self._seen.items() if now - s.changed > self._ttl_s]
        for n in gone:
            self._dead[n] = self._seen.pop(n).beat
        while len(self._dead) > MAX_NODES:
            del self._dead[next(iter(self._dead))]
        return gone


async def read_nodes(redis: aioredis.Redis, own_id: str) -> dict[str, NodeState]:
    """Every other node's hash (one SCAN, one pipelined HGETALL each)."""
    keys = [k async for k in redis.scan_iter(match=node_key("*"), count=100)][:MAX_NODES]
    async with redis.pipeline(transaction=False) as pipe:
        for k in keys:
            pipe.hgetall(k)
        values = await pipe.execute()
    states = {}
    for k, fields in zip(keys, values, strict=True):
        node_id = k[len(node_key("")) :]
        state = decode_node(node_id, fields) if fields else None
        if state is not None and node_id != own_id:
            states[node_id] = state
    return states


class Cluster:
    """This node's link to Redis: writes its :class:`NodeState` (from ``snapshot()``), reads the
    others' into :attr:`nodes`, calls ``on_sync(lost)`` after each read (``lost``: nodes found
    dead this time) and ``on_message(msg)`` for each request addressed to this node."""

    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        ttl_s: float,
        snapshot: Callable[[], NodeState],
        on_sync: Callable[[list[NodeState]], None],
        on_message: Callable[[dict[str, Any]], None],
    ) -> None:
        self.node_id = node_id
        self._url = url
        self._ttl_s = ttl_s
        self._snapshot = snapshot
        self._on_sync = on_sync
        self._on_message = on_message
        self._redis: aioredis.Redis | None = None
        self._tasks = TaskSet(f"cluster-{node_id}")
        self._beat = 0
        self._beat_now = asyncio.Event()
        self._sync_now = asyncio.Event()
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(OUTBOX_MESSAGES)
        self._liveness = Liveness(ttl_s)
        self._healthy = True
        self.nodes: dict[str, NodeState] = {}  # the other live nodes, as last read
        self.syncs = 0
        self.failures = 0

    async def start(self) -> None:
        self._redis = aioredis.Redis.from_url(
            self._url, socket_timeout=2.0, socket_connect_timeout=2.0, decode_responses=True
        )
        self._tasks.create(self._beat_loop(), "beat")
        self._tasks.create(self._sync_loop(), "sync")
        self._tasks.create(self._listen_loop(), "listen")
        self._tasks.create(self._send_loop(), "send")

    async def stop(self) -> None:
        await self._tasks.close(2.0)
        if self._redis is not None:
            try:  # a clean exit: the others forget us now, without a loss to announce
                async with asyncio.timeout(1.0):
                    await self._redis.delete(node_key(self.node_id))
                    await self._redis.publish(
                        EVENTS, json.dumps({"op": "bye", "to": "*", "from": self.node_id})
                    )
            except (RedisError, OSError, TimeoutError):
                pass
            await self._redis.aclose()
            self._redis = None

    # --- what others ask of us / we ask of others ---------------------------------------------

    @property
    def healthy(self) -> bool:
        """The last Redis operation worked."""
        return self._healthy

    async def claim(self, name: str, ttl_s: int) -> bool:
        """True for the first node to claim ``name`` (within ``ttl_s``): one node acts, not all."""
        assert self._redis is not None
        return bool(await self._redis.set(name, self.node_id, nx=True, ex=ttl_s))

    def changed(self) -> None:
        """This node's state changed: write it now and tell the others to read it."""
        self._beat_now.set()

    def send(self, to: str, op: str, **fields: Any) -> None:
        """A request to node ``to`` (or ``"*"``), best effort (dropped if Redis stays away)."""
        msg = {"op": op, "to": to, "from": self.node_id, **fields}
        if self._outbox.full():
            self._outbox.get_nowait()
        self._outbox.put_nowait(msg)

    # --- loops ---------------------------------------------------------------------------------

    def _failed(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        if self._healthy:
            logger.warning("redis: %s failed (%s); retrying", what, exc)
        self._healthy = False

    async def _beat_loop(self) -> None:
        assert self._redis is not None
        period = self._ttl_s / 3
        while True:
            told = self._beat_now.is_set()
            self._beat_now.clear()
            self._beat += 1
            state = self._snapshot()
            state.beat = self._beat
            key = node_key(self.node_id)
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.delete(key)
                    pipe.hset(key, mapping=dict[Any, Any](encode_node(state)))
                    pipe.pexpire(key, int(self._ttl_s * 1000))
                    await pipe.execute()
                if told:
                    await self._redis.publish(
                        EVENTS, json.dumps({"op": "sync", "to": "*", "from": self.node_id})
                    )
            except (RedisError, OSError) as exc:
                self._failed("writing this node's state", exc)
            try:
                async with asyncio.timeout(period):
                    await self._beat_now.wait()
            except TimeoutError:
                pass

    async def _sync_loop(self) -> None:
        while True:
            self._sync_now.clear()
            try:
                assert self._redis is not None
                states = await read_nodes(self._redis, self.node_id)
            except (RedisError, OSError) as exc:
                self._failed("reading the other nodes", exc)
            else:
                self._apply(states)
            try:
                async with asyncio.timeout(SYNC_S):
                    await self._sync_now.wait()
            except TimeoutError:
                pass

    def _apply(self, states: dict[str, NodeState]) -> None:
        now = time.monotonic()
        if not self._healthy:  # Redis is back: everyone gets a full ttl to write itself again
            logger.info("redis: reachable again")
            self._liveness.resume(now)
            self._healthy = True
        for node_id, state in states.items():
            if self._liveness.observe(node_id, state.beat, now):
                self.nodes[node_id] = state
        lost = [self.nodes.pop(n) for n in self._liveness.lost(now) if n in self.nodes]
        for state in lost:
            logger.warning(
                "node %s (%s) lost: no heartbeat for %.1f s", state.node_id, state.address, self._ttl_s
            )
        self.syncs += 1
        self._on_sync(lost)

    async def _listen_loop(self) -> None:
        assert self._redis is not None
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(EVENTS)
                self._sync_now.set()  # whatever was said while we were away: read it all
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None:
                        self._heard(msg.get("data"))
            except (RedisError, OSError) as exc:
                self._failed("listening", exc)
                await asyncio.sleep(0.5)
            finally:
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except (RedisError, OSError):
                    pass

    def _heard(self, data: Any) -> None:
        try:
            msg = json.loads(data)
        except (TypeError, ValueError):
            return
        if not isinstance(msg, dict) or msg.get("from") == self.node_id:
            return
        if msg.get("op") == "sync":
            self._sync_now.set()
        elif msg.get("op") == "bye":  # left cleanly (its streams ended and were announced)
            gone = self.nodes.pop(str(msg.get("from")), None)
            self._liveness.forget(str(msg.get("from")))
            if gone is not None:
                self._on_sync([])
        elif msg.get("to") in (self.node_id, "*"):
            try:
                self._on_message(msg)
            except Exception:
                logger.exception("cluster message %s failed", msg.get("op"))

    async def _send_loop(self) -> None:
        assert self._redis is not None
        while True:
            msg = await self._outbox.get()
            try:
                await self._redis.publish(EVENTS, json.dumps(msg))
            except (RedisError, OSError) as exc:
                self._failed("sending a request", exc)
