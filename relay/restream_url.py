"""RTMP restream targets: parse, mask, and refuse server-side request forgery. Pure, except resolving.

A target URL is ``rtmp://host[:port]/app/key`` or ``rtmps://host[:port]/app/key`` (an ``app`` of two
segments, ``/app/instance/key``, as ffmpeg splits it). The **key** (stream name and any query) is
a secret of the streamer: only :func:`mask_url`'s form may appear in responses and log lines.

SSRF guard: every address the host resolves to must be a public (global unicast) address; loopback,
private, link-local, multicast, unspecified, shared (CGNAT), reserved and documentation ranges are
refused unless the operator allows private targets. The restream connects to the very address that
was checked (:class:`RtmpTarget` keeps it), so a DNS answer that changes between the check and the
connect (rebinding) cannot redirect it; each reconnect resolves and checks again.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from relay.errors import BadRequest, RelayError

MAX_URL_LEN = 2048
DEFAULT_PORTS = {"rtmp": 1935, "rtmps": 443}

Resolver = Callable[[str, int], list[str]]


class TargetRefused(RelayError):
    """The target is on a network the relay must not connect to (the HTTP layer answers 403)."""

    code = "target_refused"


@dataclass(frozen=True)
class RtmpTarget:
    scheme: str  # rtmp | rtmps
    host: str  # as given (TLS server name, tcUrl)
    port: int
    app: str
    stream_name: str  # the secret key (may carry a query)

    @property
    def tls(self) -> bool:
        return self.scheme == "rtmps"

    @property
    def tc_url(self) -> str:
        return f"{self.scheme}://{_netloc(self.host, self.port)}/{self.app}"

    @property
    def masked_url(self) -> str:
        return f"{self.tc_url}/****"


def _netloc(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}"


def parse_rtmp_url(url: object) -> RtmpTarget:
    """Split ``url`` into its parts or raise :class:`BadRequest` (whose message never holds the key)."""
    if not isinstance(url, str) or not url:
        raise BadRequest("url must be a non-empty string")
    if len(url) > MAX_URL_LEN:
        raise BadRequest(f"url is longer than {MAX_URL_LEN} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise BadRequest("url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadRequest("url is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BadRequest("only rtmp:// and rtmps:// urls are accepted")
    if parts.username is not None or parts.password is not None:
        raise BadRequest("credentials in the url are not supported")
    host = parts.hostname
    if not host:
        raise BadRequest("url has no host")
    if parts.fragment:
        raise BadRequest("url must not have a fragment")
    segments = parts.path.split("/")[1:]
    if len(segments) < 2 or not all(segments):
        raise BadRequest("url must look like rtmp://host[:port]/app/key")
    # ffmpeg's split: /app/key, /app/instance/key[/...]
    n_app = 1 if len(segments) == 2 else 2
    app = "/".join(segments[:n_app])
    name = "/".join(segments[n_app:]) + (f"?{parts.query}" if parts.query else "")
    return RtmpTarget(scheme, host, port or DEFAULT_PORTS[scheme], app, name)


def mask_url(url: object) -> str:
    """The url with its key replaced by ``****`` (or a placeholder when it does not parse)."""
    try:
        return parse_rtmp_url(url).masked_url
    except BadRequest:
        return "<invalid url>"


def address_allowed(address: str, allow_private: bool) -> bool:
    """Whether the relay may connect to ``address`` (an IPv4/IPv6 literal)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        return False  # never a sensible target, even on a private network
    return allow_private or ip.is_global


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for TCP (blocking: call it off the event loop)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def checked_addresses(target: RtmpTarget, allow_private: bool, resolve: Resolver = resolve_host) -> list[str]:
    """The addresses of ``target`` to connect to, all allowed; else :class:`TargetRefused`/:class:`BadRequest`."""
    try:
        addresses = resolve(target.host, target.port)
    except (OSError, UnicodeError):
        raise BadRequest(f"cannot resolve the host of {target.masked_url}") from None
    if not addresses:
        raise BadRequest(f"cannot resolve the host of {target.masked_url}")
    refused = [a for a in addresses if not address_allowed(a, allow_private)]
    if refused:
        raise TargetRefused(
            f"{target.masked_url} resolves to a loopback, private or otherwise non-public address "
            f"({refused[0]}); the operator can allow it with --restream-allow-private"
        )
    return addresses


def validate_restream_url(url: object, allow_private: bool, *, resolve: Resolver = resolve_host) -> str:
    """``url`` if it is an rtmp(s) URL whose host resolves only to allowed addresses.

    Raises :class:`BadRequest` (malformed, other scheme, unresolvable: 400) or :class:`TargetRefused`
    (loopback/private/... target: 403). Resolves the host: call it off the event loop.
    """
    target = parse_rtmp_url(url)
    checked_addresses(target, allow_private, resolve)
    assert isinstance(url, str)
    return url
