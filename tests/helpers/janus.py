"""Start and stop a private Janus (Debian ``janus`` 1.1.2) for tests and benchmarks.

The config is written into a temporary folder: only the streaming plugin and the HTTP transport
(on a free loopback port, no admin API), an API secret, RTP ports in a range. Janus's ICE never
gathers loopback candidates (src/ice.c, "Skip loopback interfaces"), so its WebRTC side uses one
address of this host (``ice_address()``: traffic to it stays on the host, the kernel routes it
over ``lo``); everything else (its HTTP API, the mountpoint's RTP ports) is on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

JANUS = Path("/usr/bin/janus")
LIB = Path("/usr/lib/x86_64-linux-gnu/janus")
OTHER_PLUGINS = (
    "audiobridge duktape echotest lua nosip recordplay sip textroom videocall videoroom voicemail"
).split()
OTHER_TRANSPORTS = "mqtt nanomsg pfunix rabbitmq websockets".split()


def missing_reason() -> str | None:
    """Why Janus cannot run here (None: it can)."""
    if not JANUS.exists():
        return f"{JANUS} is missing (Debian package janus; scripts/setup.sh --dev installs it)"
    if not (LIB / "plugins" / "libjanus_streaming.so").exists():
        return f"{LIB}/plugins/libjanus_streaming.so is missing"
    if ice_address() is None:
        return "this host has no non-loopback IPv4 address: Janus 1.1.2 gathers no loopback ICE candidate"
    return None


def ice_address() -> str | None:
    """An IPv4 address of this host that is not loopback (Janus's ICE side)."""
    try:
        out = subprocess.run(
            ["ip", "-4", "-o", "addr", "show", "up"], capture_output=True, text=True, timeout=5, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] == "inet" and not fields[3].startswith("127."):
            return fields[3].split("/")[0]
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(folder: Path, *, http_port: int, api_secret: str, ice: str, rtp_range: str) -> Path:
    """janus.jcfg and the two plugin/transport configs in ``folder``; returns janus.jcfg."""
    folder.mkdir(parents=True, exist_ok=True)
    disable_plugins = ",".join(f"libjanus_{p}.so" for p in OTHER_PLUGINS)
    disable_transports = ",".join(f"libjanus_{t}.so" for t in OTHER_TRANSPORTS)
    (folder / "janus.jcfg").write_text(
        f"""general: {{
    configs_folder = "{folder}"
    plugins_folder = "{LIB}/plugins"
    transports_folder = "{LIB}/transports"
    events_folder = "{LIB}/events"
    loggers_folder = "{LIB}/loggers"
    debug_level = 3
    api_secret = "{api_secret}"
    session_timeout = 60
    protected_folders = ["/bin", "/boot", "/dev", "/etc", "/lib", "/proc", "/sbin", "/sys", "/usr", "/var"]
}}
certificates: {{
}}
media: {{
    rtp_port_range = "{rtp_range}"
}}
nat: {{
    nice_debug = false
    ice_enforce_list = "{ice}"
}}
plugins: {{
    disable = "{disable_plugins}"
}}
transports: {{
    disable = "{disable_transports}"
}}
loggers: {{
    disable = "libjanus_jsonlog.so"
}}
events: {{
    broadcast = false
}}
"""
    )
    (folder / "janus.transport.http.jcfg").write_text(
        f"""general: {{
    json = "plain"
    base_path = "/janus"
    http = true
    port = {http_port}
    ip = "127.0.0.1"
    https = false
}}
admin: {{
    admin_http = false
    admin_https = false
}}
"""
    )
    (folder / "janus.plugin.streaming.jcfg").write_text(
        'general: {\n    rtp_port_range = "' + rtp_range + '"\n}\n'
    )
    return folder / "janus.jcfg"


@dataclass
class JanusProcess:
    """A running Janus: ``url`` of its HTTP API (``/janus``), ``api_secret``, ``pid``."""

    proc: subprocess.Popen[bytes]
    url: str
    api_secret: str
    log: Path
    ice_address: str  # the host address Janus's ICE gathers (never loopback in Janus 1.1.2)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start(
    folder: Path, *, api_secret: str = "test-secret", rtp_range: str = "31000-31999", http_port: int = 0
) -> JanusProcess:
    """Write the config into ``folder`` and start Janus; waits until its HTTP API answers."""
    ice = ice_address()
    assert ice is not None, missing_reason()
    port = http_port or free_port()
    config = write_config(folder, http_port=port, api_secret=api_secret, ice=ice, rtp_range=rtp_range)
    log = folder / "janus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(JANUS), "-C", str(config), "-F", str(folder), "-o", "-D"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
    url = f"http://127.0.0.1:{port}/janus"
    janus = JanusProcess(proc, url, api_secret, log, ice)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"janus exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/info", timeout=1) as r:
                if json.load(r).get("janus") == "server_info":
                    return janus
        except OSError:
            time.sleep(0.2)
    janus.stop()
    raise RuntimeError(f"janus did not answer within 20 s: {log.read_text()[-2000:]}")


def available() -> bool:
    return missing_reason() is None and shutil.which("ip") is not None
