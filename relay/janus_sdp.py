"""Bridge a viewer's SDP offer and Janus's SDP offer into two answers (pure functions).

Our viewers always offer (docs/PROTOCOL.md: the server answers; WHEP is client-offer), and Janus
1.1.2's streaming plugin always offers too: ``watch`` ignores a client's offer and sends its own
("We're always going to do the offer ourselves, never answer", src/plugins/janus_streaming.c).
So the server answers **both** offers, each with the other side's transport parameters:

- to the viewer, an answer made from its own offer (its mids, its payload types, its m-line
  order) with Janus's ICE credentials, candidates, DTLS fingerprint and SSRCs, ``setup:passive``;
- to Janus, an answer made from Janus's offer (its mids and payload types) with the viewer's ICE
  credentials, candidates and fingerprint, ``setup:active``.

The DTLS roles agree (the viewer is the DTLS client, Janus the server). Both ICE agents believe
they are controlling: RFC 8445's role-conflict repair (487) settles it, which Chromium, libnice
and aioice implement. What both answers leave out, so that nothing depends on numbers the other
side chose: RTP header extensions (BUNDLE demultiplexes by the SSRCs of Janus's offer), RTX, and
transport-cc. RTP payload types cannot be rewritten (Janus sends the mountpoint's), so the
mountpoint's payload types must be the viewer's: :func:`payload_types` reads them from the offer
and the room keeps one mountpoint per (VP8, Opus) payload-type pair it meets (relay/janus_room.py).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

FEEDBACK = ("nack", "nack pli", "ccm fir")  # RTCP feedback both sides can honour


class SdpError(ValueError):
    pass


@dataclass
class Section:
    """One m-line and its attribute lines (``a=...`` without the ``a=``)."""

    kind: str
    port: int
    proto: str
    formats: list[str]
    attrs: list[str] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        prefix = name + ":"
        for a in self.attrs:
            if a.startswith(prefix):
                return a[len(prefix) :]
            if a == name:
                return ""
        return None

    def all(self, name: str) -> list[str]:
        prefix = name + ":"
        return [a[len(prefix) :] for a in self.attrs if a.startswith(prefix)]

    @property
    def mid(self) -> str:
        return self.get("mid") or ""

    def pt_of(self, name: str) -> int | None:
        """The first payload type whose rtpmap encoding is ``name`` (case-insensitive)."""
        for rtpmap in self.all("rtpmap"):
            pt, _, enc = rtpmap.partition(" ")
            if enc.split("/")[0].lower() == name.lower() and pt in self.formats:
                return int(pt)
        return None


@dataclass
class Sdp:
    session: list[str]  # session-level attribute lines (without ``a=``)
    sections: list[Section]

    def attr(self, section: Section, name: str) -> str | None:
        """A media attribute, or the session-level one."""
        value = section.get(name)
        if value is not None:
            return value
        prefix = name + ":"
        for a in self.session:
            if a.startswith(prefix):
                return a[len(prefix) :]
        return None

    def first(self, kind: str) -> Section | None:
        return next((s for s in self.sections if s.kind == kind and s.port != 0), None)


def parse(sdp: str) -> Sdp:
    session: list[str] = []
    sections: list[Section] = []
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            parts = line[2:].split()
            if len(parts) < 4:
                raise SdpError(f"bad m-line: {line!r}")
            try:
                port = int(parts[1].split("/")[0])
            except ValueError as exc:
                raise SdpError(f"bad m-line: {line!r}") from exc
            sections.append(Section(parts[0], port, parts[2], parts[3:]))
        elif line.startswith("a="):
            (sections[-1].attrs if sections else session).append(line[2:])
    if not sections:
        raise SdpError("no media section")
    return Sdp(session, sections)


def payload_types(viewer_offer: str) -> tuple[int, int | None] | None:
    """(VP8 payload type, Opus payload type or None) of a viewer's offer; None: no VP8."""
    offer = parse(viewer_offer)
    video, audio = offer.first("video"), offer.first("audio")
    vp8 = video.pt_of("VP8") if video is not None else None
    if vp8 is None:
        return None
    return vp8, audio.pt_of("opus") if audio is not None else None


@dataclass(frozen=True)
class Transport:
    """One side's ICE and DTLS parameters."""

    ufrag: str
    pwd: str
    fingerprint: str
    candidates: tuple[str, ...]


def transport_of(sdp: Sdp) -> Transport:
    section = sdp.sections[0]
    ufrag, pwd = sdp.attr(section, "ice-ufrag"), sdp.attr(section, "ice-pwd")
    fingerprint = sdp.attr(section, "fingerprint")
    if not (ufrag and pwd and fingerprint):
        raise SdpError("an offer without ICE credentials or a DTLS fingerprint")
    candidates = tuple(dict.fromkeys(c for s in sdp.sections for c in s.all("candidate")))
    if not candidates:
        raise SdpError("an offer without ICE candidates (the server takes no trickled candidates)")
    return Transport(ufrag, pwd, fingerprint, candidates)


def _media_lines(
    section: Section,
    pt: int,
    codec: str,
    direction: str,
    offered_fb: list[str],
    remote: Transport,
    setup: str,
) -> list[str]:
    lines = [
        f"m={section.kind} 9 {section.proto} {pt}",
        "c=IN IP4 0.0.0.0",
        f"a=mid:{section.mid}",
        f"a={direction}",
        "a=rtcp-mux",
        f"a=ice-ufrag:{remote.ufrag}",
        f"a=ice-pwd:{remote.pwd}",
        f"a=fingerprint:{remote.fingerprint}",
        f"a=setup:{setup}",
        f"a=rtpmap:{pt} {codec}",
    ]
    lines += [f"a=rtcp-fb:{pt} {fb}" for fb in FEEDBACK if f"{pt} {fb}" in offered_fb]
    return lines


def _rejected(section: Section) -> list[str]:
    return [f"m={section.kind} 0 {section.proto} {section.formats[0]}", f"a=mid:{section.mid}", "a=inactive"]


def _ssrc_lines(section: Section) -> list[str]:
    """The primary SSRC of a Janus m-line (the first of its FID group, or its first ``a=ssrc``)."""
    group = section.get("ssrc-group")
    ssrcs = (
        group.split()[1:]
        if group and group.startswith("FID")
        else [s.split()[0] for s in section.all("ssrc")]
    )
    if not ssrcs:
        return []
    msid = section.get("msid")
    out = [f"a=ssrc:{ssrcs[0]} cname:janus"]
    return ([f"a=msid:{msid}"] if msid else []) + out


def _session(mids: list[str]) -> list[str]:
    return [
        "v=0",
        f"o=- {secrets.randbits(62)} 2 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        f"a=group:BUNDLE {' '.join(mids)}",
        "a=msid-semantic: WMS *",
    ]


CODECS = {"video": ("VP8", "VP8/90000"), "audio": ("opus", "opus/48000/2")}


def bridge(viewer_offer: str, janus_offer: str) -> tuple[str, str]:
    """(answer for the viewer, answer for Janus). Raises SdpError if they cannot be bridged."""
    viewer, janus = parse(viewer_offer), parse(janus_offer)
    viewer_t, janus_t = transport_of(viewer), transport_of(janus)
    janus_by_kind = {s.kind: s for s in reversed(janus.sections) if s.port != 0}
    to_viewer: list[str] = []
    accepted: list[str] = []
    used: set[str] = set()
    for section in viewer.sections:
        j = janus_by_kind.get(section.kind)
        name, rtpmap = CODECS.get(section.kind, ("", ""))
        pt = section.pt_of(name) if name else None
        if j is None or pt is None or section.port == 0 or section.kind in used or j.pt_of(name) != pt:
            to_viewer += _rejected(section)
            continue
        used.add(section.kind)
        accepted.append(section.mid)
        to_viewer += _media_lines(section, pt, rtpmap, "sendonly", section.all("rtcp-fb"), janus_t, "passive")
        to_viewer += _ssrc_lines(j)
        to_viewer += [f"a=candidate:{c}" for c in janus_t.candidates] + ["a=end-of-candidates"]
    if "video" not in used:
        raise SdpError("the viewer's offer and the mountpoint share no VP8 payload type")
    to_janus: list[str] = []
    janus_mids: list[str] = []
    for j in janus.sections:
        name, rtpmap = CODECS.get(j.kind, ("", ""))
        pt = j.pt_of(name) if name else None
        if j.kind not in used or pt is None:
            to_janus += _rejected(j)
            continue
        janus_mids.append(j.mid)
        to_janus += _media_lines(j, pt, rtpmap, "recvonly", j.all("rtcp-fb"), viewer_t, "active")
        to_janus += [f"a=candidate:{c}" for c in viewer_t.candidates] + ["a=end-of-candidates"]
    viewer_answer = "\r\n".join(_session(accepted) + to_viewer) + "\r\n"
    janus_answer = "\r\n".join(_session(janus_mids) + to_janus) + "\r\n"
    return viewer_answer, janus_answer
