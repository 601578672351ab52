"""ICE configuration: STUN/TURN servers, short-lived TURN credentials, and the addresses the
server's own candidates use.

``--ice-server`` syntax (repeatable; one STUN or TURN server each)::

    stun:HOST[:PORT]
    turn:USER:PASSWORD@HOST[:PORT][?transport=udp|tcp]     static credentials (percent-encode @ : %)
    turns:USER:PASSWORD@HOST[:PORT][?transport=tcp]        TURN over TLS
    turn:HOST[:PORT][?transport=udp|tcp]                   credentials from --turn-secret

``--turn-secret`` is coturn's ``static-auth-secret`` (``use-auth-secret``, the "TURN REST API"
scheme): every client, and every peer connection of the server, gets its own credentials
``username = "<expiry epoch>:<random id>"``, ``credential = base64(HMAC-SHA1(secret, username))``,
valid for ``--turn-ttl-s``. The pages fetch them from ``GET /api/ice-servers``; the server's peers
make theirs when they are created (``server_rtc_configuration``). aiortc uses the first STUN and the
first TURN server of the list; browsers use them all.

Credentials, secrets and URLs with a password never go to the logs (``redact``).

aioice gathers host candidates on every interface except loopback, through its module function
``aioice.ice.get_host_addresses``; ``use_host_addresses`` replaces it (process-wide) by one that
returns the ``--ice-address`` addresses and the addresses of the ``--ice-interface`` interfaces,
loopback included.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import aioice.ice
import ifaddr
from aiortc import RTCConfiguration, RTCIceServer

from relay.settings import Settings

URL_RE = re.compile(
    r"(?P<scheme>stun|turns?):(?:(?P<user>[^:@/?]*):(?P<password>[^@/?]*)@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>\d{1,5}))?"
    r"(?:\?transport=(?P<transport>udp|tcp))?"
)


@dataclass(frozen=True)
class IceUrl:
    """One ``--ice-server``: what browsers and aiortc get is ``url`` (no credentials in it)."""

    scheme: str
    host: str
    port: int | None
    transport: str | None
    username: str | None
    password: str | None

    @property
    def url(self) -> str:
        port = f":{self.port}" if self.port else ""
        transport = f"?transport={self.transport}" if self.transport else ""
        return f"{self.scheme}:{self.host}{port}{transport}"

    @property
    def is_turn(self) -> bool:
        return self.scheme != "stun"


def redact(text: str) -> str:
    """An ``--ice-server`` value fit for a log or an error message (password hidden)."""
    return re.sub(r"^((?:stun|turns?):[^:@]*:)[^@]*@", r"\1***@", text)


def parse_ice_url(text: str) -> IceUrl:
    """Parse one ``--ice-server`` value; ValueError (with the password hidden) if malformed."""
    m = URL_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(
            f"malformed ICE server {redact(text)!r}: expected stun:HOST[:PORT] or "
            "turn[s]:[USER:PASSWORD@]HOST[:PORT][?transport=udp|tcp]"
        )
    scheme, transport = m["scheme"], m["transport"]
    if scheme == "stun" and (m["user"] is not None or transport):
        raise ValueError(f"{redact(text)!r}: a STUN server takes no credentials or transport")
    if scheme == "turns" and transport == "udp":
        raise ValueError(f"{redact(text)!r}: turns: runs over TCP (TLS)")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{redact(text)!r}: bad port")
    user = unquote(m["user"]) if m["user"] is not None else None
    password = unquote(m["password"]) if m["password"] is not None else None
    return IceUrl(scheme, m["host"], port, transport, user, password)


def ice_server_arg(text: str) -> str:
    """argparse ``type`` of ``--ice-server``: checks the syntax, keeps the text. (An
    ArgumentTypeError's message is shown as is: argparse would otherwise print the password.)"""
    try:
        parse_ice_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def rest_credentials(secret: str, ttl_s: int, now: float | None = None) -> tuple[str, str]:
    """coturn ``use-auth-secret`` credentials valid for ``ttl_s``: (username, credential)."""
    expiry = int((time.time() if now is None else now) + ttl_s)
    username = f"{expiry}:{secrets.token_hex(6)}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers(settings: Settings, now: float | None = None) -> list[dict[str, Any]]:
    """The configured servers as the browser's ``RTCIceServer`` dictionaries, TURN servers
    without a password of their own getting fresh REST credentials (the same for one call)."""
    out: list[dict[str, Any]] = []
    rest: tuple[str, str] | None = None
    for text in settings.ice_servers:
        u = parse_ice_url(text)
        entry: dict[str, Any] = {"urls": [u.url]}
        if u.is_turn and u.username is not None:
            entry.update(username=u.username, credential=u.password or "")
        elif u.is_turn and settings.turn_secret:
            rest = rest or rest_credentials(settings.turn_secret, settings.turn_ttl_s, now)
            entry.update(username=rest[0], credential=rest[1])
        elif u.is_turn:
            continue  # validate() refuses this combination; never hand out a TURN server without credentials
        out.append(entry)
    return out


class _FreshIceServers(RTCConfiguration):
    """An ``RTCConfiguration`` whose ``iceServers`` are made when a peer connection reads them
    (aiortc reads them once per peer), so REST credentials are never older than that peer."""

    def __init__(self, make: Callable[[], list[RTCIceServer]]) -> None:
        self._make = make
        super().__init__()

    @property
    def iceServers(self) -> list[RTCIceServer]:
        return self._make()

    @iceServers.setter
    def iceServers(self, value: object) -> None:  # the dataclass __init__ assigns the default
        pass


def server_rtc_configuration(settings: Settings) -> RTCConfiguration:
    """The configuration of the server's own peer connections. Without ``--ice-server``: no
    STUN/TURN at all (aiortc's default public STUN server would stall every answer offline)."""

    def make() -> list[RTCIceServer]:
        return [
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in ice_servers(settings)
        ]

    if not settings.ice_servers:
        return RTCConfiguration(iceServers=[])
    if settings.turn_secret:
        return _FreshIceServers(make)
    return RTCConfiguration(iceServers=make())


# --- which addresses the server's host candidates use ------------------------------------------


def host_addresses(
    addresses: Iterable[str], interfaces: Iterable[str], use_ipv4: bool, use_ipv6: bool
) -> list[str]:
    """``addresses`` plus the addresses of ``interfaces`` (IPv6 link-local left out), loopback
    included, filtered by IP version, in order, without duplicates."""
    wanted = set(interfaces)
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        if adapter.nice_name in wanted or adapter.name in wanted:
            for ip in adapter.ips:
                if isinstance(ip.ip, str):
                    found.append(ip.ip)
                elif ip.ip[2] == 0:  # (address, flowinfo, scope_id): scoped = link-local
                    found.append(ip.ip[0])
    out: list[str] = []
    for a in [*addresses, *found]:
        version = ipaddress.ip_address(a).version
        if ((version == 4 and use_ipv4) or (version == 6 and use_ipv6)) and a not in out:
            out.append(a)
    return out


def check_host_choice(addresses: Iterable[str], interfaces: Iterable[str]) -> list[str]:
    """Problems with ``--ice-address``/``--ice-interface`` (for the command line's checks)."""
    adapters = ifaddr.get_adapters()
    names = {a.nice_name for a in adapters} | {str(a.name) for a in adapters}
    local = {ip.ip if isinstance(ip.ip, str) else ip.ip[0] for a in adapters for ip in a.ips}
    problems = []
    for name in interfaces:
        if name not in names:
            problems.append(f"--ice-interface {name}: no such interface (have: {', '.join(sorted(names))})")
    for a in addresses:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            problems.append(f"--ice-address {a}: not an IP address")
            continue
        if a not in local:
            problems.append(f"--ice-address {a}: not an address of this machine")
    return problems


def use_host_addresses(settings: Settings) -> Callable[[], None] | None:
    """Make aioice gather host candidates on the chosen addresses only (process-wide). Returns a
    function that undoes it (if nothing replaced it since), or None when nothing is chosen."""
    if not settings.ice_addresses and not settings.ice_interfaces:
        return None

    def chosen(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return host_addresses(settings.ice_addresses, settings.ice_interfaces, use_ipv4, use_ipv6)

    previous = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = chosen

    def undo() -> None:
        if aioice.ice.get_host_addresses is chosen:
            aioice.ice.get_host_addresses = previous

    return undo
