"""The ``/publisher`` namespace: create a stream, publish to it, switch its mosaic, stop it.

Only the holder of the publish key returned by ``create_stream`` may publish, switch the mosaic,
mint view tokens or stop (``Room.check_key`` compares in constant time). The connection that
created or last published a stream owns it: when that connection drops, the stream ends at once
(reason ``publisher_disconnected``) instead of after the ~30 s ICE consent timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from relay.errors import Forbidden, NotFound
from signaling.access import DEFAULT_VIEW_TOKEN_TTL_S
from signaling.base import (
    PUBLISHER_NS,
    RequestNamespace,
    Result,
    SignalingState,
    request,
    room_name,
)
from signaling.messages import (
    CreateStreamRequest,
    PublishRequest,
    SetMosaicRequest,
    SetTextNetRequest,
    StopStreamRequest,
    ViewTokenRequest,
)

log = logging.getLogger(__name__)


class PublisherNamespace(RequestNamespace):
    def __init__(self, state: SignalingState, namespace: str = PUBLISHER_NS) -> None:
        super().__init__(namespace, state)

    def _own(self, sid: str, stream_id: str) -> None:
        for streams in self.state.owned.values():
            streams.discard(stream_id)
        self.state.owned.setdefault(sid, set()).add(stream_id)

    @request(CreateStreamRequest)
    async def on_create_stream(self, sid: str, req: CreateStreamRequest) -> Result:
        if not self.connected(sid):  # nobody would own (and eventually close) the stream
            raise NotFound("the connection is closing")
        address = self.client_address(sid)
        room, publish_key = self.state.create_stream(address, req.title, req.category, req.private)
        stream_id = room.info.stream_id
        self._own(sid, stream_id)
        await self.enter_room(sid, room_name(stream_id))
        log.info("stream %s created (private=%s)", stream_id, req.private)
        result: Result = {
            "stream_id": stream_id,
            "publish_key": publish_key,
            "stream": self.state.stream_api(room.info),
        }
        if req.private:
            token, expiry = self.state.view_tokens.issue(stream_id, DEFAULT_VIEW_TOKEN_TTL_S)
            result.update(view_token=token, view_token_expires_at=expiry)
        return result

    @request(PublishRequest)
    async def on_publish(self, sid: str, req: PublishRequest) -> Result:
        room = self.state.registry.get(req.stream_id)
        answer = await room.publish(req.publish_key, req.sdp, req.type)  # checks the key first
        if not self.connected(sid):  # dropped while negotiating: on_disconnect missed this stream
            await self.state.end_stream(room, "publisher_disconnected")
            raise NotFound("the connection closed while publishing")
        self._own(sid, req.stream_id)
        await self.enter_room(sid, room_name(req.stream_id))
        self.state.stats.start(req.stream_id)  # stream_stats to this connection, ~1/s (signaling/stats.py)
        log.info("stream %s published", req.stream_id)
        return {"sdp": answer["sdp"], "type": answer["type"]}

    @request(SetMosaicRequest)
    async def on_set_mosaic(self, sid: str, req: SetMosaicRequest) -> Result:
        room = self.state.registry.get(req.stream_id)
        room.set_switches(req.publish_key, mosaic=req.enabled)
        return {"stream": self.state.stream_api(room.info)}

    @request(SetTextNetRequest)
    async def on_set_text_net(self, sid: str, req: SetTextNetRequest) -> Result:
        room = self.state.registry.get(req.stream_id)
        room.set_switches(req.publish_key, text_net=req.enabled)
        return {"stream": self.state.stream_api(room.info)}

    @request(ViewTokenRequest)
    async def on_view_token(self, sid: str, req: ViewTokenRequest) -> Result:
        room = self.state.registry.get(req.stream_id)
        room.check_key(req.publish_key)
        if not room.info.private:
            raise Forbidden("view tokens are only needed for private streams")
        token, expiry = self.state.view_tokens.issue(req.stream_id, req.ttl_s or DEFAULT_VIEW_TOKEN_TTL_S)
        return {"view_token": token, "view_token_expires_at": expiry}

    @request(StopStreamRequest)
    async def on_stop_stream(self, sid: str, req: StopStreamRequest) -> Result:
        room = self.state.registry.get(req.stream_id)
        room.check_key(req.publish_key)
        await self.state.end_stream(room, "stopped")
        return {"stream_id": req.stream_id}

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        await super().on_disconnect(sid, reason)
        streams = self.state.owned.pop(sid, set())
        if streams:
            await asyncio.gather(*(self._close_orphan(s) for s in streams))

    async def _close_orphan(self, stream_id: str) -> None:
        try:
            room = self.state.registry.get(stream_id)
        except LookupError:
            return
        log.info("stream %s: publisher disconnected, closing", stream_id)
        await self.state.end_stream(room, "publisher_disconnected")
