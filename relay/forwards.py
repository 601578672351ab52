"""The owner's side of node-to-node media (issue #15): one RTP forward per (stream, viewer node).

Which forwards should exist is declared by the viewer nodes in Redis (relay/cluster.py ``f:``
fields); after every read, :meth:`Forwards.reconcile` opens the missing ones and closes those no
longer wanted (the viewer node's last viewer left, the node died, the stream ended). Each forward
is two :class:`relay.rtp_forward.RtpForward`: the room's VP8 encoder and its Opus encoder, both
attached like a viewer, so the other node gets exactly the sanitized, encoded-once packets this
node's viewers get; the mosaic and fail-closed rules are not involved here at all.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from relay.media import RoomMedia
from relay.remote import ForwardTarget
from relay.rtp_forward import RtpForward, RtpTarget
from relay.tasks import TaskSet

logger = logging.getLogger(__name__)

VP8_PT = 96
OPUS_PT = 111

Key = tuple[str, str]  # (stream id, viewer node id)


@dataclass
class Forward:
    target: ForwardTarget
    media: RoomMedia
    video: RtpForward | None = None
    audio: RtpForward | None = None

    def request_keyframe(self) -> None:
        if self.video is not None:
            self.video.request_keyframe()

    def close(self) -> None:
        for f in (self.video, self.audio):
            if f is not None:
                f.close()


class Forwards:
    """This node's outgoing forwards; ``local_host``: the address they are sent from."""

    def __init__(self, local_host: str) -> None:
        self._local_host = local_host
        self._active: dict[Key, Forward] = {}
        self._tasks = TaskSet("forwards")

    def __len__(self) -> int:
        return len(self._active)

    def reconcile(self, wanted: dict[Key, tuple[RoomMedia, ForwardTarget]]) -> None:
        for key, fwd in list(self._active.items()):
            want = wanted.get(key)
            if want is None or want[0] is not fwd.media or want[1] != fwd.target:
                del self._active[key]
                fwd.close()
                logger.info("stream %s: forward to node %s stopped", *key)
        for key, (media, target) in wanted.items():
            if key not in self._active:
                fwd = self._active[key] = Forward(target, media)
                self._tasks.create(self._open(key, fwd), f"open-{key[0]}-{key[1]}")

    async def _open(self, key: Key, fwd: Forward) -> None:
        t, media = fwd.target, fwd.media
        try:
            video = await RtpForward.open(
                media.encoder,
                RtpTarget(t.host, t.video_port, VP8_PT, random.getrandbits(32)),
                name=f"{key[0]}-{key[1]}-v",
                local_host=self._local_host,
            )
            audio = None
            if media.audio is not None and t.audio_port:
                audio = await RtpForward.open(
                    media.audio,
                    RtpTarget(t.host, t.audio_port, OPUS_PT, random.getrandbits(32)),
                    name=f"{key[0]}-{key[1]}-a",
                    local_host=self._local_host,
                )
        except (OSError, RuntimeError) as exc:
            logger.warning("stream %s: forward to node %s failed: %s", key[0], key[1], exc)
            if self._active.get(key) is fwd:
                del self._active[key]
            return
        fwd.video, fwd.audio = video, audio
        if self._active.get(key) is not fwd:  # stopped while opening
            fwd.close()
            return
        logger.info("stream %s: forwarding to node %s at %s:%d", key[0], key[1], t.host, t.video_port)

    def request_keyframe(self, key: Key) -> None:
        fwd = self._active.get(key)
        if fwd is not None:
            fwd.request_keyframe()

    async def close(self) -> None:
        for fwd in self._active.values():
            fwd.close()
        self._active.clear()
        await self._tasks.close(1.0)

    @property
    def task_count(self) -> int:
        return len(self._tasks)
