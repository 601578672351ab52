"""Which video codecs a publisher may send: VP8, or H.264 (packetization-mode 1; constrained baseline,
baseline or main profile). Viewers are served the room's VP8 encode whatever the publisher sends.

aiortc 1.16 decodes H.264 with PyAV's decoder (any profile) but offers only baseline (42001f) and
constrained baseline (42e01f): :func:`register_h264_main` adds a main-profile (4d001f) capability to
aiortc's codec table once, so that an answerer can accept the main profile that ffmpeg's ``whip``
muxer and hardware encoders announce. aiortc compares H.264 profiles, not levels, so 4d0028 or
42e034 in an offer match too.

:func:`publisher_video_preferences` picks the first usable codec of the offer's first video section
(the publisher's preference wins) and answers with that one only (and its RTX), so the publisher
never switches codecs mid-stream; the transceiver must get it before ``setRemoteDescription``
(aiortc negotiates there when it answers).
"""

from __future__ import annotations

from aiortc import RTCRtpReceiver
from aiortc import sdp as aiortc_sdp
from aiortc.codecs import CODECS
from aiortc.rtcpeerconnection import is_codec_compatible
from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpCodecCapability, RTCRtpCodecParameters

from relay.errors import RelayError

H264_MAIN = "4d001f"
INGEST_VIDEO = ("video/vp8", "video/h264")


def register_h264_main() -> None:
    """Add H.264 main profile (packetization-mode 1) and its RTX to aiortc's video codecs (idempotent)."""
    video = CODECS["video"]
    if any(c.parameters.get("profile-level-id") == H264_MAIN for c in video):
        return
    pt = max(c.payloadType or 0 for c in video) + 1  # aiortc uses 97..102; 103/104 are free
    video.append(
        RTCRtpCodecParameters(
            mimeType="video/H264",
            clockRate=90000,
            payloadType=pt,
            rtcpFeedback=[
                RTCRtcpFeedback(type="nack"),
                RTCRtcpFeedback(type="nack", parameter="pli"),
                RTCRtcpFeedback(type="goog-remb"),
            ],
            parameters={
                "level-asymmetry-allowed": "1",
                "packetization-mode": "1",
                "profile-level-id": H264_MAIN,
            },
        )
    )
    video.append(
        RTCRtpCodecParameters(
            mimeType="video/rtx", clockRate=90000, payloadType=pt + 1, parameters={"apt": pt}
        )
    )


register_h264_main()


def publisher_video_preferences(offer: aiortc_sdp.SessionDescription) -> list[RTCRtpCodecCapability]:
    """The receive codec for a publisher's offer: its first usable one (and RTX), or raise
    ``RelayError(code="unsupported_codec")`` when the offer's video has neither VP8 nor a usable H.264."""
    media = next((m for m in offer.media if m.kind == "video"), None)
    local = [c for c in CODECS["video"] if c.mimeType.lower() in INGEST_VIDEO]
    remote = media.rtp.codecs if media is not None else []
    chosen = next((c for r in remote for c in local if is_codec_compatible(c, r)), None)
    if chosen is None:
        offered = sorted({c.mimeType for m in offer.media if m.kind == "video" for c in m.rtp.codecs})
        raise RelayError(
            "the relay takes VP8 or H.264 (packetization-mode 1; constrained baseline, baseline or main)"
            f" video; the offer has {', '.join(offered) or 'no video codec'}",
            code="unsupported_codec",
        )
    capabilities = RTCRtpReceiver.getCapabilities("video")
    caps = capabilities.codecs if capabilities is not None else []
    return [cap for cap in caps if _same(cap, chosen) or cap.mimeType.lower() == "video/rtx"]


def _same(cap: RTCRtpCodecCapability, codec: RTCRtpCodecParameters) -> bool:
    return cap.mimeType.lower() == codec.mimeType.lower() and cap.parameters == codec.parameters
