"""relay/fastsend.py: the header-extension template (aiortc's map runs once per link, then only the
abs-send-time bytes change) and the NTP reading shared by the viewers of one frame."""

from __future__ import annotations

import random
import struct
import time
from types import SimpleNamespace

from aiortc import clock
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters
from aiortc.rtp import HeaderExtensions, HeaderExtensionsMap

from relay.fastsend import NTP_REUSE_NS, RoomPacketizer, ext_template

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


def builder(uris: list[tuple[int, str]], mid: str = "0"):  # type: ignore[no-untyped-def]
    ext_map = HeaderExtensionsMap()
    ext_map.configure(
        SimpleNamespace(headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for i, u in uris])
    )

    def build(abs_send_time: int) -> tuple[int, bytes]:  # what ViewerLink._ext_block does
        values = HeaderExtensions()
        values.abs_send_time, values.mid = abs_send_time, mid
        profile, value = ext_map.set(values)
        return (0x90, struct.pack("!HH", profile, len(value) >> 2) + value) if value else (0x80, b"")

    return build


def patched(template: tuple[int, bytes, int | None], abs_send_time: int) -> tuple[int, bytes]:
    b0, block, offset = template
    assert offset is not None and offset >= 0
    return b0, block[:offset] + abs_send_time.to_bytes(3, "big") + block[offset + 3 :]


def test_template_gives_the_bytes_aiortc_writes() -> None:
    rng = random.Random(5)
    for uris, mid in (([(4, MID), (10, ABS)], "0"), ([(3, ABS), (1, MID)], "video-12"), ([(14, ABS)], "1")):
        build = builder(uris, mid)
        template = ext_template(build)
        assert template[2] is not None and template[2] >= 0
        for value in [0, 1, 0xFFFFFF, 0x800000] + [rng.getrandbits(24) for _ in range(200)]:
            assert patched(template, value) == build(value), (uris, value)


def test_template_without_abs_send_time_is_constant() -> None:
    build = builder([(4, MID)])
    assert ext_template(build) == (*build(0), None)
    assert ext_template(builder([])) == (0x80, b"", None)


def test_template_refuses_a_block_it_cannot_patch() -> None:
    def odd(abs_send_time: int) -> tuple[int, bytes]:  # the value changes the length: no fixed slot
        return 0x90, b"\xbe\xde\x00\x01" + str(abs_send_time).encode()

    assert ext_template(odd)[2] == -1


def test_viewers_of_one_frame_share_one_ntp_reading() -> None:
    p = RoomPacketizer("video")
    first = p.ntp_now()
    assert p.ntp_now() == first  # within NTP_REUSE_NS
    time.sleep(2 * NTP_REUSE_NS / 1e9)
    later = p.ntp_now()
    assert later > first
    # and it is aiortc's clock (NTP 32.32 fixed point), not another one
    assert abs(clock.current_ntp_time() - later) < (1 << 32) // 100  # < 10 ms apart
