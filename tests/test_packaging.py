"""Packaging: ``pip install .`` from a fresh copy gives a working ``mosaic-relay`` command that finds
its pages, socket.io client and weights; the Dockerfile's COPY sources exist; the committed
socket.io client is npm's pinned one."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENDORED = REPO / "static" / "vendor" / "socket.io.min.js"

pytestmark = pytest.mark.timeout(240)


def fresh_copy(dest: Path) -> Path:
    """What a fresh clone holds: tracked files plus new, not ignored ones (the working tree's state)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        src = REPO / name
        if src.is_file() and not src.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    assert not (dest / "node_modules").exists() and not (dest / ".venv").exists()
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway venv with the wheel built from a fresh copy installed (dependencies come from the
    test's own environment through a .pth file: installing them again would take minutes)."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = fresh_copy(tmp / "clone")
    wheels = tmp / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "-w", str(wheels), "--no-deps",
         "--no-build-isolation", "-q"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("mosaic_relay-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = next(venv.glob("lib/python3*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "zz_test_deps.pth").write_text("\n".join(deps) + "\n")  # after the venv's own packages
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
         "--no-index", "-q", str(wheel)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    return venv


def run_installed(venv: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",) and not k.startswith("MOSAIC_")}
    return subprocess.run(
        [str(venv / "bin" / "mosaic-relay"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=venv, env=env,
    )  # fmt: skip


def test_installed_command_help_and_dispatch(installed: Path) -> None:
    out = run_installed(installed, "serve", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: mosaic-relay serve")
    assert "--weights" in out.stdout and "(default: 8080)" in out.stdout
    # the default weights are the installed copy, not the checkout's
    assert str(installed) in out.stdout.replace("\n", "").replace(" ", "")
    assert run_installed(installed, "--version").stdout.startswith("mosaic-relay 0.")
    bad = run_installed(installed, "fly")
    assert bad.returncode == 2 and "unknown command 'fly'" in bad.stderr


def test_installed_server_serves_pages_client_and_model(installed: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    proc = subprocess.Popen(
        [str(installed / "bin" / "mosaic-relay"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=installed, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        health = None
        for _ in range(300):
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
                    health = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.2)
        assert health is not None and health["status"] == "ok"
        assert (
            health["detector"] == "YoloOnnxDetector:detector.onnx+TextNet"
        )  # the real model (package data) and the safety net
        for path, needle in [
            ("/", b"<video"),
            ("/publish", b"<video"),
            ("/vendor/socket.io.min.js", b"Socket.IO"),
        ]:
            with urllib.request.urlopen(base + path, timeout=5) as r:
                assert needle in r.read(), path
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert "mosaic_relay/weights/detector.onnx" in out  # logged at start-up: the installed copy


def test_offline_command_dispatches_to_relay_offline(tmp_path: Path) -> None:
    """`mosaic-relay offline` runs relay.offline: its own usage, and its clear error on bad input."""
    out = subprocess.run(
        [sys.executable, "-m", "mosaic_relay", "offline", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0 and "--video-format" in out.stdout, out.stderr
    missing = tmp_path / "nope.mp4"
    out = subprocess.run(
        [sys.executable, "-m", "mosaic_relay", "offline", str(missing), "--out", str(tmp_path / "o")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "nope.mp4" in out.stderr and "Traceback" not in out.stderr, out.stderr


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_copies_existing_paths_runs_as_non_root_and_checks_health() -> None:
    steps = dockerfile_instructions((REPO / "Dockerfile").read_text())
    assert steps[0][0] == "FROM" and "slim" in steps[0][1]
    copies = [shlex.split(rest) for op, rest in steps if op == "COPY"]
    assert copies
    ignored = (REPO / ".dockerignore").read_text().split()
    for args in copies:
        sources = [a for a in args[:-1] if not a.startswith("--")]
        for src in sources:
            assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"
            assert not any(src.rstrip("/") == pat for pat in ignored), f"{src} is in .dockerignore"
    users = [rest for op, rest in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    (health,) = [rest for op, rest in steps if op == "HEALTHCHECK"]
    assert "/healthz" in health
    assert any(op == "ENTRYPOINT" and "mosaic-relay" in rest for op, rest in steps)


def test_vendored_socket_io_client_is_the_pinned_npm_one() -> None:
    pinned = json.loads((REPO / "package.json").read_text())["dependencies"]["socket.io-client"]
    assert f"Socket.IO v{pinned}\n" in VENDORED.read_text()[:200]
    npm_copy = REPO / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"
    if npm_copy.is_file():  # after `npm ci`: refresh with `cp` if this fails (docs/OPERATIONS.md)
        assert npm_copy.read_bytes() == VENDORED.read_bytes()
