"""The ``/viewer`` namespace: list live streams, watch one, leave it.

Every connection of this namespace receives ``stream_updated``/``stream_ended`` for public
streams that went live (that is how the list page stays current); viewers of any other stream
receive them for that stream only. A viewer's peer connections are removed when its socket
disconnects.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from relay.errors import NotFound
from signaling.base import (
    VIEWER_NS,
    RequestNamespace,
    Result,
    SignalingState,
    new_viewer_id,
    request,
    room_name,
)
from signaling.messages import LeaveRequest, ListStreamsRequest, ViewRequest

log = logging.getLogger(__name__)


def public_streams(state: SignalingState) -> list[Result]:
    """Live, non-private streams, oldest first: ``list_streams`` and ``GET /api/streams``."""
    infos = sorted(state.registry.list(), key=lambda i: (i.started_at or i.created_at, i.stream_id))
    return [state.stream_api(i) for i in infos]


class ViewerNamespace(RequestNamespace):
    def __init__(self, state: SignalingState, namespace: str = VIEWER_NS) -> None:
        super().__init__(namespace, state)

    @request(ListStreamsRequest)
    async def on_list_streams(self, sid: str, req: ListStreamsRequest) -> Result:
        return {"streams": public_streams(self.state)}

    @request(ViewRequest)
    async def on_view(self, sid: str, req: ViewRequest) -> Result:
        room = self.state.registry.get(req.stream_id)
        if room.info.private:
            self.state.view_tokens.check(req.stream_id, req.token)
        viewer_id = new_viewer_id()
        preview = self._is_publisher(sid, req.stream_id)
        if preview:  # before add_viewer: the stream_updated it causes must not count the preview
            self.state.previews.setdefault(req.stream_id, set()).add(viewer_id)
            room.set_preview(viewer_id, True)  # nor the Prometheus gauge and the stats panel
        try:
            answer = await room.add_viewer(viewer_id, req.sdp, req.type)
            if not self.connected(sid):  # dropped while negotiating: on_disconnect missed this viewer
                self.state.previews.get(req.stream_id, set()).discard(viewer_id)
                await room.remove_viewer(viewer_id)
                raise NotFound("the connection closed while joining")
        except BaseException:
            self.state.previews.get(req.stream_id, set()).discard(viewer_id)
            room.set_preview(viewer_id, False)
            raise
        self.state.viewers.setdefault(sid, {})[viewer_id] = req.stream_id
        await self.enter_room(sid, room_name(req.stream_id))
        log.info("stream %s: %s %s joined", req.stream_id, "preview" if preview else "viewer", viewer_id)
        return {
            "sdp": answer["sdp"],
            "type": answer["type"],
            "viewer_id": viewer_id,
            "stream": self.state.stream_api(room.info),
        }

    def _is_publisher(self, sid: str, stream_id: str) -> bool:
        """Whether this viewer connection is also the stream's publisher connection (the
        publisher page watching its own output)."""
        entry = self.state.buckets.get(self._eio_sid(sid))
        sids = entry[1] if entry else set()
        return any(stream_id in self.state.owned.get(other, ()) for other in sids)

    @request(LeaveRequest)
    async def on_leave(self, sid: str, req: LeaveRequest) -> Result:
        mine = self.state.viewers.get(sid, {})
        if mine.get(req.viewer_id) != req.stream_id:
            raise NotFound("no such viewer of this stream on this connection")
        del mine[req.viewer_id]
        if req.stream_id not in mine.values():
            await self.leave_room(sid, room_name(req.stream_id))
        await self._remove(req.stream_id, req.viewer_id)
        return {"stream_id": req.stream_id, "viewer_id": req.viewer_id}

    async def _remove(self, stream_id: str, viewer_id: str) -> None:
        try:
            room = self.state.registry.get(stream_id)
        except LookupError:
            return  # the stream ended meanwhile; its viewers went with it
        self.state.previews.get(stream_id, set()).discard(viewer_id)  # first: remove_viewer broadcasts
        await room.remove_viewer(viewer_id)
        log.info("stream %s: viewer %s left", stream_id, viewer_id)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        await super().on_disconnect(sid, reason)
        mine = self.state.viewers.pop(sid, {})
        results = await asyncio.gather(
            *(self._remove(stream_id, viewer_id) for viewer_id, stream_id in mine.items()),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                log.error("removing a viewer of disconnected %s failed: %r", sid, r)
