"""SDP checks and peer-connection building for rooms (VP8 or H.264 video, Opus audio).

- :func:`parse_offer`: the checks every offer passes (``BadRequest``); which video codec an offer
  gets is relay/ingest_codecs.py's (publishers) and relay/egress_codecs.py's (viewers, who may get
  ``RelayError`` with code ``unsupported_codec``).
- :class:`PeerConnections`: makes and closes a registry's peer connections and counts those not
  closed yet, per registry and process-wide (:func:`live_peer_connection_count`, for leak tests).
- :func:`accept_publisher` / :func:`answer_offer`: the publisher's receive-only transceivers and
  the answer; :func:`add_viewer_tracks`: a viewer's send-only tracks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from relay.egress_codecs import viewer_video_preferences
from relay.errors import BadRequest
from relay.fanout import PacketTrack, hook_keyframe_requests
from relay.fastsend import FastSend
from relay.ingest_codecs import publisher_video_preferences
from relay.video_codecs import VideoCodec

logger = logging.getLogger(__name__)

CLOSE_STEP_TIMEOUT_S = 2.0
_LIVE_PCS: set[RTCPeerConnection] = set()


def live_peer_connection_count() -> int:
    """Peer connections made by any room that are not closed yet (leak tests)."""
    return len(_LIVE_PCS)


def vp8_preferences() -> list[RTCRtpCodecCapability]:
    caps = RTCRtpSender.getCapabilities("video").codecs
    return [c for c in caps if c.mimeType.lower() in ("video/vp8", "video/rtx")]


def opus_preferences() -> list[RTCRtpCodecCapability]:
    return [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]


def parse_offer(sdp: Any, type_: Any, max_bytes: int) -> aiortc_sdp.SessionDescription:
    """The parsed offer, or ``BadRequest`` (wrong type, empty, oversized, malformed, no video)."""
    if type_ != "offer":
        raise BadRequest(f"expected an SDP offer, got type {type_!r}")
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadRequest("sdp must be a non-empty string")
    if len(sdp.encode("utf-8", "replace")) > max_bytes:
        raise BadRequest(f"sdp is larger than {max_bytes} bytes")
    try:
        parsed = aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as exc:
        raise BadRequest(f"malformed sdp: {exc}") from exc
    if not any(m.kind == "video" for m in parsed.media):
        raise BadRequest("the offer has no video section")
    return parsed


def offer_takes_opus(parsed: aiortc_sdp.SessionDescription) -> bool:
    """Audio is forwarded as the room's Opus packets: only to an offer that takes Opus."""
    return any(
        c.mimeType.lower() == "audio/opus" for m in parsed.media if m.kind == "audio" for c in m.rtp.codecs
    )


class PeerConnections:
    """The peer connections of one registry's rooms."""

    def __init__(self, configuration: RTCConfiguration) -> None:
        self._configuration = configuration
        self._open: set[RTCPeerConnection] = set()

    def new(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(self._configuration)
        _LIVE_PCS.add(pc)
        self._open.add(pc)
        return pc

    async def close(self, pc: RTCPeerConnection) -> None:
        try:
            await asyncio.wait_for(pc.close(), CLOSE_STEP_TIMEOUT_S)
        except Exception:
            logger.warning("peer connection did not close cleanly", exc_info=True)
        finally:
            _LIVE_PCS.discard(pc)
            self._open.discard(pc)

    def __len__(self) -> int:
        return len(self._open)


async def accept_publisher(
    pc: RTCPeerConnection, sdp: str, parsed: aiortc_sdp.SessionDescription
) -> tuple[MediaStreamTrack | None, MediaStreamTrack | None]:
    """Receive-only video (VP8 or H.264, what the offer prefers: relay/ingest_codecs.py) and audio
    from ``sdp`` (``parsed`` is :func:`parse_offer`'s result for it): (video track, audio track)."""
    video_t = pc.addTransceiver("video", direction="recvonly")
    # before setRemoteDescription (answerer)
    video_t.setCodecPreferences(publisher_video_preferences(parsed))
    await _set_offer(pc, sdp)
    video = audio = None
    for t in pc.getTransceivers():
        track = t.receiver.track
        if track is None:
            continue
        if t.kind == "video" and video is None:
            video = track
        elif t.kind == "audio" and audio is None:
            audio = track
    return video, audio


def add_viewer_tracks(
    pc: RTCPeerConnection,
    video: PacketTrack,
    audio: PacketTrack | None,
    on_keyframe_request: Callable[[], None],
    codec: VideoCodec = "vp8",
    fast: FastSend | None = None,
) -> None:
    """Send-only transceivers; PLI/FIR from the viewer go to ``on_keyframe_request`` (the encoder of
    ``codec`` that feeds ``video``). With ``fast``, tracks it made send through relay/fastsend.py."""
    vt = pc.addTransceiver(video, direction="sendonly")
    vt.setCodecPreferences(viewer_video_preferences(codec))
    hook_keyframe_requests(vt.sender, on_keyframe_request)
    if fast is not None:
        fast.attach(vt.sender, video)
    if audio is not None:
        at = pc.addTransceiver(audio, direction="sendonly")
        at.setCodecPreferences(opus_preferences())
        if fast is not None:
            fast.attach(at.sender, audio)


async def _set_offer(pc: RTCPeerConnection, sdp: str) -> None:
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    except Exception as exc:
        raise BadRequest(f"cannot use this offer: {exc}") from exc


async def answer_offer(pc: RTCPeerConnection, sdp: str | None = None) -> dict[str, str]:
    """Set ``sdp`` as the remote offer (unless already set) and return the local answer."""
    if sdp is not None:
        await _set_offer(pc, sdp)
    await pc.setLocalDescription(await pc.createAnswer())
    local = pc.localDescription
    return {"sdp": local.sdp, "type": local.type}
