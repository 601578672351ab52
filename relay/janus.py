"""A small client of Janus's HTTP API (Janus 1.1.2, ``janus.plugin.streaming``).

- :class:`JanusSession`: one Janus session per server (``create``), kept alive by a long-poll
  task (``GET /janus/<session>``: Janus counts it as a keepalive, and it brings the asynchronous
  events: a plugin's answer to ``watch``/``start``, ``webrtcup``, ``hangup``, ``detached``).
- :class:`StreamingHandle`: one attached ``janus.plugin.streaming`` handle. The session has one
  for the rooms' mountpoints (``create`` / ``destroy`` / ``info``: RTP mountpoints with one VP8
  and one Opus stream, ports chosen by Janus in its ``rtp_port_range``), and one per brokered
  viewer (``watch`` → Janus's SDP offer, ``start`` with our answer, ``hangup``/``detach``).

Every request carries the API secret (``apisecret``) and times out after ``REQUEST_TIMEOUT_S``;
failures raise :class:`JanusError` (a :class:`relay.errors.RelayError` with code
``janus_unavailable``). Events are kept per transaction and per handle in bounded queues.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from relay.errors import RelayError
from relay.tasks import TaskSet

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0
POLL_MAX_EVENTS = 10
POLL_FAILURES = 3  # long polls failing in a row before the session counts as lost
HANDLE_EVENTS = 16  # asynchronous events kept per handle (the oldest is dropped)
PLUGIN = "janus.plugin.streaming"


class JanusError(RelayError):
    code = "janus_unavailable"


class JanusUnreachable(JanusError):
    """Janus did not answer (connection refused, timeout, not JSON): not one request's fault."""


@dataclass(frozen=True)
class Mountpoint:
    """A streaming RTP mountpoint: where its media goes in (Janus's ports, on the Janus host)."""

    id: int
    video_port: int
    video_rtcp_port: int | None
    audio_port: int | None
    video_pt: int
    audio_pt: int


class JanusSession:
    """One Janus session over HTTP. :meth:`open` creates it; :meth:`close` destroys it."""

    def __init__(self, url: str, api_secret: str | None, http: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self._secret = api_secret
        self._http = http
        self.id = 0
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._handle_events: dict[int, deque[dict[str, Any]]] = {}
        self._handle_waiters: dict[int, asyncio.Event] = {}
        self._listeners: dict[int, Callable[[dict[str, Any]], None]] = {}
        self._tasks = TaskSet("janus")
        self.alive = False
        self._closed = False

    @classmethod
    async def open(cls, url: str, api_secret: str | None, http: aiohttp.ClientSession) -> JanusSession:
        self = cls(url, api_secret, http)
        reply = await self._post("", {"janus": "create"})
        self.id = int(reply["data"]["id"])
        self.alive = True
        self._tasks.create(self._poll(), "poll")
        return self

    def _body(self, body: dict[str, Any]) -> dict[str, Any]:
        out = dict(body, transaction=secrets.token_hex(8))
        if self._secret:
            out["apisecret"] = self._secret
        return out

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.url}/{path}" if path else self.url
        try:
            async with self._http.post(
                url, json=self._body(body), timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
            ) as r:
                reply: dict[str, Any] = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise JanusUnreachable(f"janus request failed: {exc!r}") from exc
        if reply.get("janus") == "error":
            raise JanusError(f"janus: {reply.get('error', {}).get('reason', 'error')}")
        return reply

    async def request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous request (its reply is the answer)."""
        return await self._post(path, body)

    async def request_async(self, handle: int, body: dict[str, Any]) -> dict[str, Any]:
        """A plugin message Janus answers with ``ack`` and later an ``event`` (by transaction)."""
        body = self._body(body)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[body["transaction"]] = future
        try:
            url = f"{self.url}/{self.id}/{handle}"
            try:
                async with self._http.post(
                    url, json=body, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
                ) as r:
                    reply: dict[str, Any] = await r.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise JanusUnreachable(f"janus request failed: {exc!r}") from exc
            if reply.get("janus") == "error":
                raise JanusError(f"janus: {reply.get('error', {}).get('reason', 'error')}")
            if reply.get("janus") != "ack":
                return reply
            try:
                return await asyncio.wait_for(future, REQUEST_TIMEOUT_S)
            except TimeoutError as exc:
                raise JanusUnreachable("janus: no answer to an asynchronous request") from exc
        finally:
            self._pending.pop(body["transaction"], None)

    async def _poll(self) -> None:
        """Long poll until the session is closed or lost (then every listener gets a ``hangup``)."""
        params = {"maxev": str(POLL_MAX_EVENTS)}
        if self._secret:
            params["apisecret"] = self._secret
        failures = 0
        while not self._closed and self.alive:
            try:
                async with self._http.get(
                    f"{self.url}/{self.id}", params=params, timeout=aiohttp.ClientTimeout(total=40)
                ) as r:
                    if r.status == 404:  # Janus does not know the session (it restarted)
                        self.alive = False
                        continue
                    r.raise_for_status()
                    events = await r.json(content_type=None)
                failures = 0
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                failures += 1
                if failures >= POLL_FAILURES:
                    logger.warning("janus session %d: long poll failing (%r)", self.id, exc)
                    self.alive = False
                else:
                    await asyncio.sleep(0.5 * failures)
                continue
            for event in events if isinstance(events, list) else [events]:
                if isinstance(event, dict):
                    self._dispatch(event)
        if not self._closed:
            self._lost()

    def _lost(self) -> None:
        """Janus lost the session (restarted, or unreachable): its handles and viewers are gone."""
        listeners, self._listeners = list(self._listeners.values()), {}
        logger.warning(
            "janus session %d lost (Janus restarted or unreachable): %d handles hung up",
            self.id,
            len(listeners),
        )
        for listener in listeners:
            listener({"janus": "hangup", "reason": "janus session lost"})

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("janus")
        if kind == "error" and (event.get("error") or {}).get("code") == 458:  # no such session
            self.alive = False
            return
        future = self._pending.get(str(event.get("transaction")))
        if future is not None and not future.done() and kind == "event":
            future.set_result(event)
            return
        sender = event.get("sender")
        if isinstance(sender, int) and sender in self._handle_events:
            self._handle_events[sender].append(event)
            self._handle_waiters[sender].set()
            listener = self._listeners.get(sender)
            if listener is not None:
                listener(event)

    def listen(self, handle: int, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call ``listener(event)`` for each asynchronous event of ``handle`` (until detached)."""
        self._listeners[handle] = listener

    async def attach(self) -> StreamingHandle:
        reply = await self._post(str(self.id), {"janus": "attach", "plugin": PLUGIN})
        handle = int(reply["data"]["id"])
        self._handle_events[handle] = deque(maxlen=HANDLE_EVENTS)
        self._handle_waiters[handle] = asyncio.Event()
        return StreamingHandle(self, handle)

    async def detach(self, handle: int) -> None:
        self._handle_events.pop(handle, None)
        self._handle_waiters.pop(handle, None)
        self._listeners.pop(handle, None)
        await self._post(f"{self.id}/{handle}", {"janus": "detach"})

    def events(self, handle: int) -> deque[dict[str, Any]]:
        return self._handle_events.get(handle, deque())

    async def wait_event(self, handle: int, kind: str, timeout_s: float) -> dict[str, Any] | None:
        """The first queued event of ``kind`` (``webrtcup``, ``hangup``...) for ``handle``, or None."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            queue, waiter = self._handle_events.get(handle), self._handle_waiters.get(handle)
            if queue is None or waiter is None:
                return None
            for event in queue:
                if event.get("janus") == kind:
                    return event
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return None
            waiter.clear()
            try:
                await asyncio.wait_for(waiter.wait(), left)
            except TimeoutError:
                return None

    async def close(self) -> None:
        """Destroy the session (Janus then tears down its handles). Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._tasks.close(1.0)
        if self.alive:
            try:
                await self._post(str(self.id), {"janus": "destroy"})
            except JanusError as exc:
                logger.info("janus session %d: destroy failed (%s)", self.id, exc)
        self.alive = False


class StreamingHandle:
    """One attached ``janus.plugin.streaming`` handle."""

    def __init__(self, session: JanusSession, handle_id: int) -> None:
        self.session = session
        self.id = handle_id

    async def message(self, body: dict[str, Any], jsep: dict[str, str] | None = None) -> dict[str, Any]:
        """A synchronous plugin request; returns the plugin's ``data`` (error → JanusError)."""
        msg: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            msg["jsep"] = jsep
        reply = await self.session.request(f"{self.session.id}/{self.id}", msg)
        return _plugin_data(reply)

    async def message_async(
        self, body: dict[str, Any], jsep: dict[str, str] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """An asynchronous plugin request (watch, start): the event's ``data`` and its ``jsep``."""
        msg: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            msg["jsep"] = jsep
        event = await self.session.request_async(self.id, msg)
        return _plugin_data(event), event.get("jsep")

    async def create_mountpoint(self, name: str, *, audio: bool, video_pt: int, audio_pt: int) -> Mountpoint:
        media: list[dict[str, Any]] = [
            {"type": "video", "mid": "v", "port": 0, "rtcpport": 0, "pt": video_pt, "codec": "vp8"}
        ]
        if audio:
            media.append({"type": "audio", "mid": "a", "port": 0, "pt": audio_pt, "codec": "opus"})
        body = {"request": "create", "type": "rtp", "description": name, "media": media, "permanent": False}
        data = await self.message(body)
        stream = data.get("stream", {})
        ports = {m.get("mid"): m for m in stream.get("ports", [])}
        video = ports.get("v", {})
        return Mountpoint(
            id=int(stream["id"]),
            video_port=int(video["port"]),
            video_rtcp_port=int(video["rtcp_port"]) if "rtcp_port" in video else None,
            audio_port=int(ports["a"]["port"]) if "a" in ports else None,
            video_pt=video_pt,
            audio_pt=audio_pt,
        )

    async def destroy_mountpoint(self, mountpoint_id: int) -> None:
        await self.message({"request": "destroy", "id": mountpoint_id, "permanent": False})

    async def info(self, mountpoint_id: int) -> dict[str, Any]:
        """The mountpoint's ``info`` (``viewers`` among it); JanusError if it does not exist."""
        data = await self.message({"request": "info", "id": mountpoint_id})
        info: dict[str, Any] = data.get("info", {})
        return info

    async def watch(self, mountpoint_id: int, mids: list[str]) -> str:
        """Subscribe to ``mids`` of the mountpoint: Janus's SDP offer."""
        _, jsep = await self.message_async({"request": "watch", "id": mountpoint_id, "media": mids})
        if jsep is None or jsep.get("type") != "offer":
            raise JanusError("janus: watch returned no offer")
        return str(jsep["sdp"])

    async def start(self, answer_sdp: str) -> None:
        await self.message_async({"request": "start"}, {"type": "answer", "sdp": answer_sdp})

    async def detach(self) -> None:
        await self.session.detach(self.id)


def _plugin_data(reply: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = reply.get("plugindata", {}).get("data", {})
    if "error" in data:
        raise JanusError(f"janus streaming: {data['error']} ({data.get('error_code')})")
    return data
