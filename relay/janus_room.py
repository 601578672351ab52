"""Egress into Janus (``--janus-url``): a room's encoded-once media to a Janus streaming mountpoint,
and viewers beyond ``--janus-viewer-threshold`` brokered to Janus.

- :class:`JanusEgress`, one per server: the Janus session (opened on first use, reopened if Janus
  lost it), and the control handle that creates and destroys mountpoints.
- :class:`RoomJanus`, one per live room: its mountpoints and their :class:`relay.rtp_forward.RtpForward`
  (VP8 from the room's VP8 encoder, Opus from its audio encoder: the same sanitized packets the
  direct viewers get, so the mosaic and the fail-closed rules are untouched), and the viewers it
  brokered (one Janus handle each).

Payload types: Janus sends a mountpoint's payload types as they are, and a viewer that offered
expects its own (relay/janus_sdp.py), so a room keeps one mountpoint per (VP8, Opus) payload-type
pair its viewers use, at most ``MAX_PROFILES`` (Chromium/Safari's 96/111 is made on publish;
aiortc's 97/96 or Firefox's 120/109 when such a viewer comes). Each costs one more RTP copy of
the stream from the relay, not one per viewer. Keyframes: brokering a viewer asks the encoder
for one, and Janus asks too (it sends a PLI to the mountpoint's RTCP port, which the forwarder
reads, when a viewer starts or a viewer sends PLI/FIR).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from relay.audio import AudioEncoder
from relay.errors import LimitExceeded
from relay.fanout import RoomEncoder
from relay.janus import JanusError, JanusSession, JanusUnreachable, Mountpoint, StreamingHandle
from relay.janus_sdp import SdpError, bridge, payload_types
from relay.rtp_forward import RtpForward, RtpTarget
from relay.settings import Settings

logger = logging.getLogger(__name__)

MAX_PROFILES = 4  # mountpoints per room (payload-type pairs)
DEFAULT_PROFILE = (96, 111)  # Chromium's and Safari's VP8 / Opus payload types
START_TIMEOUT_S = 8.0  # brokering one viewer (mountpoint, attach, watch, start), at most
NO_SUCH_MOUNTPOINT = "(455)"  # the streaming plugin's error code for an unknown mountpoint
RETRY_AFTER_S = 5.0  # after Janus failed a viewer, the next viewers go direct for this long


class JanusEgress:
    """The server's link to Janus. :meth:`session` opens it on first use; :meth:`close` at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._http: aiohttp.ClientSession | None = None
        self._session: JanusSession | None = None
        self._control: StreamingHandle | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self.brokered = 0  # viewers brokered since start
        self.failures = 0  # viewers that could not be brokered (they went direct)
        self._down_until = 0.0  # after a failure, viewers go direct for RETRY_AFTER_S

    @classmethod
    def from_settings(cls, settings: Settings) -> JanusEgress | None:
        return cls(settings) if settings.janus_url else None

    def wants(self, direct_viewers: int) -> bool:
        """Whether the next viewer goes through Janus (``direct_viewers`` are watching directly)."""
        if self._closed or time.monotonic() < self._down_until:
            return False
        return direct_viewers >= self.settings.janus_viewer_threshold

    def failed(self) -> None:
        """A viewer could not be brokered: the next ones go direct for ``RETRY_AFTER_S``."""
        self.failures += 1
        self._down_until = time.monotonic() + RETRY_AFTER_S

    async def session(self) -> tuple[JanusSession, StreamingHandle]:
        """The live session and its control handle (a new one if Janus lost the old)."""
        async with self._lock:
            if self._closed:
                raise JanusError("server is shutting down")
            if self._session is not None and self._control is not None and self._session.alive:
                return self._session, self._control
            if self._session is not None:
                await self._session.close()
            if self._http is None:
                self._http = aiohttp.ClientSession()
            s = self.settings
            self._session = await JanusSession.open(s.janus_url, s.janus_api_secret, self._http)
            self._control = await self._session.attach()
            if self._closed:  # closed while we waited for Janus: undo
                await self.close()
                raise JanusError("server is shutting down")
            logger.info("janus: session %d at %s", self._session.id, s.janus_url)
            return self._session, self._control

    async def close(self, timeout_s: float = 2.0) -> None:
        """Destroy the session (after the rooms destroyed their mountpoints), waiting at most
        ``timeout_s`` for Janus. Idempotent."""
        self._closed = True
        session, http = self._session, self._http
        self._session = self._control = None
        self._http = None
        if session is not None:
            try:
                await asyncio.wait_for(session.close(), timeout_s)
            except TimeoutError:
                logger.warning("janus: session %d not destroyed within %.1f s", session.id, timeout_s)
        if http is not None:
            await http.close()


@dataclass
class _Profile:
    mountpoint: Mountpoint
    forwards: list[RtpForward] = field(default_factory=list)

    @property
    def audio(self) -> bool:
        return self.mountpoint.audio_port is not None


class RoomJanus:
    """One room's mountpoints and brokered viewers. ``on_gone(viewer_id)``: Janus hung up a viewer;
    ``on_change()``: a forwarder was attached to the room's encoders (the room recounts)."""

    def __init__(
        self,
        egress: JanusEgress,
        name: str,
        video: RoomEncoder,
        audio: AudioEncoder | None,
        on_gone: Callable[[str], None],
        on_change: Callable[[], None],
    ) -> None:
        self._egress, self._name, self._video, self._audio = egress, name, video, audio
        self._on_gone = on_gone
        self._profiles: dict[tuple[int, int | None], _Profile] = {}
        self._viewers: dict[str, StreamingHandle] = {}
        self._lock = asyncio.Lock()  # profiles are made one at a time
        self._pending: set[str] = set()  # viewer ids being brokered
        self._on_change = on_change
        self._closed = False

    @property
    def viewer_count(self) -> int:
        return len(self._viewers)

    @property
    def forwards(self) -> list[RtpForward]:
        """The RTP forwarders of every mountpoint (stats: ``RtpForward.stats``)."""
        return [f for p in self._profiles.values() for f in p.forwards]

    def forwards_of(self, mountpoint_id: int) -> list[RtpForward]:
        """The forwarders of one mountpoint (video first)."""
        return next((p.forwards for p in self._profiles.values() if p.mountpoint.id == mountpoint_id), [])

    @property
    def forward_count(self) -> int:  # forwarders attached to the room's encoders (not viewers)
        return len(self.forwards)

    @property
    def mountpoints(self) -> dict[tuple[int, int | None], int]:
        """Janus mountpoint id by (VP8, Opus) payload types."""
        return {key: p.mountpoint.id for key, p in self._profiles.items()}

    @property
    def viewer_ids(self) -> list[str]:  # brokered viewers
        return list(self._viewers)

    async def open(self) -> None:
        """The default mountpoint (on publish)."""
        await self._profile(*DEFAULT_PROFILE)

    async def open_quietly(self) -> None:
        """:meth:`open`, logging a failure (viewers are then served directly, or retried later)."""
        try:
            await asyncio.wait_for(self.open(), START_TIMEOUT_S)
        except (JanusError, TimeoutError) as exc:
            if isinstance(exc, JanusUnreachable | TimeoutError):
                self._egress.failed()
            logger.warning("%s: no janus mountpoint (%s); viewers are served directly", self._name, exc)

    async def _profile(self, vpt: int, apt: int | None) -> _Profile:
        """A mountpoint with VP8 at ``vpt`` (and Opus at ``apt``, if the room has audio)."""
        has_audio = self._audio is not None
        async with self._lock:
            for (v, a), p in self._profiles.items():
                if v == vpt and (apt is None or not has_audio or a == apt):
                    return p
            if self._closed:
                raise JanusError("stream is closed")
            if len(self._profiles) >= MAX_PROFILES:
                raise JanusError(f"at most {MAX_PROFILES} payload-type profiles per stream")
            if has_audio and (apt is None or apt == vpt):
                apt = next(pt for pt in (111, 109, 110) if pt != vpt)
            _, control = await self._egress.session()
            mp = await control.create_mountpoint(
                self._name, audio=has_audio, video_pt=vpt, audio_pt=apt if apt is not None else 0
            )
            if self._closed:  # the stream ended meanwhile
                await _destroy(self._egress, [mp.id], self._name)
                raise JanusError("stream is closed")
            profile = _Profile(mp)
            host = self._egress.settings.janus_rtp_host
            try:
                target = RtpTarget(host, mp.video_port, vpt, random.getrandbits(32), mp.video_rtcp_port)
                profile.forwards.append(
                    await RtpForward.open(self._video, target, name=f"{self._name}-v{vpt}")
                )
                if self._audio is not None and mp.audio_port is not None and apt is not None:
                    target = RtpTarget(host, mp.audio_port, apt, random.getrandbits(32))
                    profile.forwards.append(
                        await RtpForward.open(self._audio, target, name=f"{self._name}-a{apt}")
                    )
            except OSError as exc:
                for f in profile.forwards:
                    f.close()
                await _destroy(self._egress, [mp.id], self._name)
                raise JanusError(f"cannot send RTP to janus: {exc}") from exc
            self._profiles[(vpt, apt if has_audio else None)] = profile
            self._on_change()
            logger.info("%s: janus mountpoint %d (vp8 %d, opus %s)", self._name, mp.id, vpt, apt)
            return profile

    def wants(self, direct_viewers: int) -> bool:
        """Whether the next viewer goes through Janus (``direct_viewers`` watch directly)."""
        return not self._closed and self._egress.wants(direct_viewers)

    async def add_viewer(self, viewer_id: str, offer: str) -> str | None:
        """Broker a viewer to Janus: the answer for it, or None if Janus cannot take it now (the
        caller serves it directly). LimitExceeded past ``janus_max_viewers_per_stream``."""
        limit = self._egress.settings.janus_max_viewers_per_stream
        if len(self._viewers) + len(self._pending) >= limit:
            raise LimitExceeded(f"at most {limit} viewers per stream through Janus")
        self._pending.add(viewer_id)
        try:
            answer = await asyncio.wait_for(self.broker(viewer_id, offer), START_TIMEOUT_S)
        except (JanusError, SdpError, TimeoutError) as exc:
            if isinstance(exc, JanusUnreachable | TimeoutError):  # Janus, not this offer or stream
                self._egress.failed()
            logger.warning("%s: viewer not brokered to janus, served directly (%s)", self._name, exc)
            return None
        finally:
            self._pending.discard(viewer_id)
        self._egress.brokered += 1
        return answer

    async def broker(self, viewer_id: str, offer: str) -> str:
        """Relay a viewer's offer to Janus; the answer for the viewer. JanusError/SdpError if not."""
        pts = payload_types(offer)
        if pts is None:
            raise SdpError("the offer has no VP8 (the Janus path carries VP8 only)")
        profile = await self._profile(*pts)
        session, _ = await self._egress.session()
        handle = await session.attach()
        try:
            mids = ["v", "a"] if pts[1] is not None and profile.audio else ["v"]
            try:
                janus_offer = await handle.watch(profile.mountpoint.id, mids)
            except JanusError as exc:
                if NO_SUCH_MOUNTPOINT in str(exc):  # Janus restarted: the next viewer makes it again
                    await self._forget(profile)
                raise
            to_viewer, to_janus = bridge(offer, janus_offer)
            await handle.start(to_janus)
            if self._closed:
                raise JanusError("stream is closed")
        except BaseException:
            await _detach(handle)
            raise
        self._viewers[viewer_id] = handle
        session.listen(handle.id, lambda event: self._event(viewer_id, handle, event))
        profile.forwards[0].request_keyframe()
        return to_viewer

    async def _forget(self, profile: _Profile) -> None:
        async with self._lock:
            for key, p in list(self._profiles.items()):
                if p is profile:
                    del self._profiles[key]
            for f in profile.forwards:
                f.close()
        self._on_change()

    def _event(self, viewer_id: str, handle: StreamingHandle, event: dict[str, Any]) -> None:
        if event.get("janus") in ("hangup", "detached") and self._viewers.get(viewer_id) is handle:
            self._on_gone(viewer_id)

    def has(self, viewer_id: str) -> bool:
        return viewer_id in self._viewers or viewer_id in self._pending

    def pop(self, viewer_id: str) -> StreamingHandle | None:
        """Forget a brokered viewer (then :func:`hang_up` its handle); None if not ours."""
        return self._viewers.pop(viewer_id, None)

    async def close(self, timeout_s: float) -> None:
        """Stop forwarding at once; hang up the brokered viewers and destroy the mountpoints in
        Janus within ``timeout_s`` (a Janus that does not answer keeps them: logged). Idempotent."""
        self._closed = True
        handles, profiles = list(self._viewers.values()), list(self._profiles.values())
        self._viewers.clear()
        self._profiles.clear()
        for p in profiles:
            for f in p.forwards:
                f.close()
        try:
            await asyncio.wait_for(self._release(handles, [p.mountpoint.id for p in profiles]), timeout_s)
        except TimeoutError:
            logger.warning(
                "%s: janus did not answer within %.1f s; mountpoints left: %s",
                self._name,
                timeout_s,
                [p.mountpoint.id for p in profiles],
            )

    async def _release(self, handles: list[StreamingHandle], mountpoints: list[int]) -> None:
        await asyncio.gather(*(_detach(h) for h in handles))
        if mountpoints:
            await _destroy(self._egress, mountpoints, self._name)


async def _destroy(egress: JanusEgress, mountpoints: list[int], name: str) -> None:
    try:
        _, control = await egress.session()
        for m in mountpoints:
            await control.destroy_mountpoint(m)
    except JanusError as exc:
        logger.warning("%s: janus mountpoints %s not destroyed (%s)", name, mountpoints, exc)


async def hang_up(handle: StreamingHandle) -> None:
    """Detach a viewer's handle: Janus closes its peer connection."""
    await _detach(handle)


async def _detach(handle: StreamingHandle) -> None:
    try:
        await handle.detach()
    except JanusError as exc:
        logger.info("janus handle %d: detach failed (%s)", handle.id, exc)
