"""Which video codec a viewer is served: VP8, or H.264 constrained baseline (issue #13).

:func:`viewer_video_codec` walks the offer's first video section in the offer's order and takes the
first codec the relay can send: VP8, or H.264 in packetization-mode 1 whose profile is constrained
baseline (``42e0xx``, as every browser offers). Browsers list VP8 before H.264 and keep getting VP8;
an offer that puts H.264 first (Safari, a WHEP player that only decodes H.264) gets H.264. Neither:
``RelayError(code="unsupported_codec")``.

:func:`viewer_video_preferences` is the transceiver's codec list for that choice (set before
``setRemoteDescription``: aiortc negotiates when it answers): the codec and RTX only, so the answer
names one codec; for H.264 it says ``profile-level-id=42e01f;packetization-mode=1``, what the room's
libx264 encode (relay/video_codecs.py) produces.
"""

from __future__ import annotations

from aiortc import RTCRtpSender
from aiortc import sdp as aiortc_sdp
from aiortc.rtcpeerconnection import is_codec_compatible
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters

from relay.errors import RelayError
from relay.video_codecs import VideoCodec

H264_EGRESS = "42e01f"  # constrained baseline, level 3.1
_MIME: dict[VideoCodec, str] = {"vp8": "video/vp8", "h264": "video/h264"}


def _sendable(codec: VideoCodec) -> RTCRtpCodecCapability:
    for cap in RTCRtpSender.getCapabilities("video").codecs:
        if cap.mimeType.lower() != _MIME[codec]:
            continue
        if codec == "vp8" or (
            cap.parameters.get("profile-level-id") == H264_EGRESS
            and str(cap.parameters.get("packetization-mode")) == "1"
        ):
            return cap
    raise LookupError(f"aiortc has no {codec} capability")  # pragma: no cover (aiortc 1.16 has both)


def _as_parameters(cap: RTCRtpCodecCapability) -> RTCRtpCodecParameters:
    return RTCRtpCodecParameters(mimeType=cap.mimeType, clockRate=cap.clockRate, parameters=cap.parameters)


def viewer_video_codec(offer: aiortc_sdp.SessionDescription) -> VideoCodec:
    """The codec for a viewer's offer (the offer's order wins), or ``unsupported_codec``."""
    media = next((m for m in offer.media if m.kind == "video"), None)
    remote = media.rtp.codecs if media is not None else []
    local = {codec: _as_parameters(_sendable(codec)) for codec in _MIME}
    for offered in remote:
        for codec, ours in local.items():
            if is_codec_compatible(ours, offered):
                return codec
    names = sorted({c.mimeType for c in remote})
    raise RelayError(
        "viewers are served VP8 or H.264 (constrained baseline 42e01f, packetization-mode 1);"
        f" the offer's video has {', '.join(names) or 'no codec'}",
        code="unsupported_codec",
    )


def viewer_video_preferences(codec: VideoCodec) -> list[RTCRtpCodecCapability]:
    """The send codec for ``codec`` and RTX, for the viewer's transceiver."""
    chosen = _sendable(codec)
    return [
        cap
        for cap in RTCRtpSender.getCapabilities("video").codecs
        if cap == chosen or cap.mimeType.lower() == "video/rtx"
    ]
