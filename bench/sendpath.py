"""Send CPU per viewer and frame: relay/fastsend.py vs. aiortc's per-packet path, same frames, one process.

    .venv/bin/python bench/sendpath.py --size 1280x720 --frames 150

A server peer connection (sendonly, our FastTrack attached) and one aiortc viewer connect on
loopback. The same VP8 packets (a 1280x720 label scene panning, encoded once at 1.5 Mbps by the
room's encoder settings) are then sent to that viewer twice, timed with the thread CPU clock
around the send code only (the kernel's loopback delivery runs inside the send system call and is
counted; the viewer's receive work runs later on the loop and is not):

- ``fast``: ``ViewerLink.send_packets`` (shared packetization, per-viewer header + SRTP, one
  batch per frame: ``--syscall``);
- ``aiortc``: what ``RTCRtpSender._run_rtp`` does per frame in aiortc 1.16 for a packet track:
  ``Vp8Encoder.pack`` per viewer, then per RTP packet an ``RtpPacket`` with abs-send-time and mid,
  ``serialize``, and ``await RTCDtlsTransport._send_rtp`` (SRTP + ICE + asyncio ``sendto``). The
  task wake-up per frame that aiortc also pays is not included (it favours aiortc).

Robust to a loaded box (CPU time, not wall time), unlike the end-to-end bench. Last line: JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def encode_frames(width: int, height: int, n: int) -> list[Any]:
    import av

    from relay.fanout import VIDEO_TIME_BASE, _new_vp8
    from tests.helpers.media import label_scene

    scene, _ = label_scene(width + n * 4, height)
    codec = _new_vp8(width, height, 1_500_000)
    packets: list[Any] = []
    for i in range(n):
        img = scene[:, i * 4 : i * 4 + width].copy()  # a pan: every frame differs
        frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
        frame.pts = i * 3000
        frame.time_base = VIDEO_TIME_BASE
        frame.pict_type = av.video.frame.PictureType.I if i % 60 == 0 else av.video.frame.PictureType.NONE
        for p in codec.encode(frame):
            p.time_base = VIDEO_TIME_BASE
            packets.append(p)
    return packets


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from aiortc import RTCPeerConnection, RTCSessionDescription, clock
    from aiortc.codecs.vpx import Vp8Encoder
    from aiortc.rtp import RtpPacket

    from relay.fastsend import FastSend
    from relay.room import _vp8_preferences
    from tests.helpers.media import NO_ICE_SERVERS, Viewer

    packets = await asyncio.to_thread(encode_frames, args.size[0], args.size[1], args.frames)
    fast = FastSend(args.syscall)
    track = fast.track("video", 1000, gated=False)
    server = RTCPeerConnection(NO_ICE_SERVERS)
    vt = server.addTransceiver(track, direction="sendonly")
    vt.setCodecPreferences(_vp8_preferences())
    assert fast.attach(vt.sender, track)
    viewer = Viewer()

    async def answer(sdp: str, type_: str) -> dict[str, str]:
        await server.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=type_))
        await server.setLocalDescription(await server.createAnswer())
        return {"sdp": server.localDescription.sdp, "type": server.localDescription.type}

    await viewer.connect(answer)
    link = track.link
    assert link is not None
    for _ in range(200):
        if link.ready():
            break
        await asyncio.sleep(0.05)
    assert link.ready(), "not connected"
    sender, dtls = vt.sender, vt.sender.transport
    ext_map = sender._RTCRtpSender__rtp_header_extensions_map  # type: ignore[attr-defined]
    mid = sender._RTCRtpSender__mid  # type: ignore[attr-defined]
    pt = link._pt
    results: dict[str, list[float]] = {"fast": [], "aiortc": []}
    pkts_per_frame: list[int] = []
    for rnd in range(args.rounds):
        for p in packets:  # fast path
            t0 = time.thread_time_ns()
            link.send_packets([p])
            results["fast"].append((time.thread_time_ns() - t0) / 1e3)
            await asyncio.sleep(args.gap)
        enc, seq, history = Vp8Encoder(), 1000, {}
        for p in packets:  # aiortc's per-packet path (rtcrtpsender.py _run_rtp, packet branch)
            t0 = time.thread_time_ns()
            payloads, ts = enc.pack(p)
            for i, payload in enumerate(payloads):
                rtp = RtpPacket(payload_type=pt, sequence_number=seq, timestamp=ts)
                rtp.ssrc = 12345
                rtp.payload = payload
                rtp.marker = 1 if i == len(payloads) - 1 else 0
                rtp.extensions.abs_send_time = (clock.current_ntp_time() >> 14) & 0x00FFFFFF
                rtp.extensions.mid = mid
                history[seq % 128] = rtp
                await dtls._send_rtp(rtp.serialize(ext_map))
                seq = (seq + 1) & 0xFFFF
            results["aiortc"].append((time.thread_time_ns() - t0) / 1e3)
            if rnd == 0:
                pkts_per_frame.append(len(payloads))
            await asyncio.sleep(args.gap)
    await viewer.close()
    await server.close()
    out: dict[str, Any] = {
        "size": f"{args.size[0]}x{args.size[1]}",
        "frames": len(packets),
        "rounds": args.rounds,
        "syscall": args.syscall,
        "rtp_packets_per_frame_mean": round(statistics.mean(pkts_per_frame), 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    for k, v in results.items():
        out[f"{k}_us_per_frame_median"] = round(statistics.median(v), 1)
        out[f"{k}_us_per_frame_mean"] = round(statistics.mean(v), 1)
        # cores one viewer costs at 30 frames/s
        out[f"{k}_cores_per_viewer_at_30fps"] = round(statistics.mean(v) * 30 / 1e6, 5)
    out["speedup_mean"] = round(out["aiortc_us_per_frame_mean"] / out["fast_us_per_frame_mean"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    from tests.helpers.media import use_loopback_ice

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=lambda t: tuple(int(x) for x in t.split("x")), default=(1280, 720))
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gap", type=float, default=1 / 30, help="seconds between frames (as live: 1/30)")
    ap.add_argument("--syscall", choices=["gso", "mmsg", "sendto"], default="gso")
    args = ap.parse_args(argv)
    with use_loopback_ice():
        out = asyncio.run(run(args))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
