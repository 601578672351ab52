"""Real processes for the several-nodes tests and bench: a loopback ``redis-server`` and
``run_server.py`` nodes sharing it (tests/test_multinode.py, bench/multinode.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from relay.settings import REPO_ROOT

REDIS = Path("/usr/bin/redis-server")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, folder: Path) -> None:
        self.port = free_port("127.0.0.1")
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            str(REDIS),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen([*args, "--dir", str(self.folder)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


class Node:
    def __init__(
        self,
        name: str,
        host: str,
        redis_url: str,
        folder: Path,
        *,
        ttl_s: float = 3.0,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.name, self.host = name, host
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.log = folder / f"node-{name}.log"
        # WebRTC on 127.0.0.1 (the only address of lo here); HTTP and node-to-node RTP on ``host``
        args = [
            sys.executable,
            str(REPO_ROOT / "run_server.py"),
            *("--host", host, "--port", str(self.port), "--redis-url", redis_url, "--node-id", name),
            *("--node-ttl-s", str(ttl_s), "--ice-address", "127.0.0.1"),
            *("--max-connections-per-address", "64", "--http-requests-per-second", "200"),
            *extra,
        ]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)

    async def ready(self, within: float) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"node {self.name} exited:\n{self.log.read_text()[-3000:]}"
                try:
                    async with http.get(self.url + "/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.3)
        raise AssertionError(f"node {self.name} not up within {within} s:\n{self.log.read_text()[-3000:]}")

    async def health(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(self.url + "/healthz") as r:
            assert r.status == 200
            body = await r.json()
        return dict(body["cluster"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
