"""Settings from a TOML file (--config / MOSAIC_RELAY_CONFIG) and MOSAIC_RELAY_* variables, the
command line winning; --help shows the defaults in effect."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

import run_server
from relay.settings import Settings
from tests.test_server import REPO_ROOT, dummy_onnx, start_process, stop_process, wait_healthy

pytestmark = pytest.mark.timeout(120)

CONFIG = """
port = 9100
conf-threshold = 0.5
max_streams = 3                      # underscores work too
allowed-origins = ["https://a.example", "https://b.example/"]
log-level = "debug"
"""


def settings(tmp_path: Path, argv: list[str], env: dict[str, str], config: str = CONFIG) -> Settings:
    path = tmp_path / "relay.toml"
    path.write_text(config)
    return run_server.settings_from_args(["--config", str(path), *argv], environ=env)


def test_file_then_environment_then_command_line(tmp_path: Path) -> None:
    s = settings(tmp_path, [], {})
    assert (s.port, s.conf_threshold, s.max_streams, s.log_level) == (9100, 0.5, 3, "DEBUG")
    assert s.allowed_origins == ("https://a.example", "https://b.example")
    assert s.iou_threshold == Settings().iou_threshold  # not in the file: built-in default
    env = {"MOSAIC_RELAY_PORT": "9200", "MOSAIC_RELAY_ALLOWED_ORIGINS": "https://c.example", "HOME": "/x"}
    s = settings(tmp_path, [], env)
    assert (s.port, s.allowed_origins, s.max_streams) == (9200, ("https://c.example",), 3)
    s = settings(tmp_path, ["--port", "9300", "--max-streams", "5"], env)
    assert (s.port, s.max_streams, s.conf_threshold) == (9300, 5, 0.5)


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("max-viewers-per-stream = 7\n")
    s = run_server.settings_from_args([], environ={"MOSAIC_RELAY_CONFIG": str(path)})
    assert s.max_viewers_per_stream == 7
    assert run_server.settings_from_args([], environ={}) == Settings()


@pytest.mark.parametrize(
    ("config", "env", "message"),
    [
        ("prot = 1\n", {}, "prot: unknown setting"),
        ("", {"MOSAIC_RELAY_PROT": "1"}, "MOSAIC_RELAY_PROT: unknown setting"),
        ("port = 'http'\n", {}, "port: invalid value 'http'"),
        ("", {"MOSAIC_RELAY_CONF_THRESHOLD": "high"}, "MOSAIC_RELAY_CONF_THRESHOLD: invalid value"),
        ("log-level = 'loud'\n", {}, "'LOUD' is not one of"),
        ("port = true\n", {}, "expected a single value"),
        ("port = [1, 2]\n", {}, "expected a single value"),
        ("port = \n", {}, "relay.toml"),  # TOML syntax error names the file
        ("conf-threshold = 1.5\n", {}, "--conf-threshold must be in (0, 1)"),  # the usual checks apply
    ],
)
def test_bad_config_exits_2_with_the_name(
    tmp_path: Path, config: str, env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        settings(tmp_path, [], env, config)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_server.settings_from_args(["--config", str(tmp_path / "nope.toml")], environ={})
    assert "cannot read config file" in capsys.readouterr().err


def test_help_shows_real_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("max-streams = 4\n")
    env = {**os.environ, "MOSAIC_RELAY_PORT": "9400"}
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_server.py"), "--config", str(path), "--help"],
        capture_output=True, text=True, timeout=60, env=env,
    ).stdout  # fmt: skip
    flat = " ".join(out.split())
    assert "--port PORT TCP port (HTTP and socket.io on the same port) (default: 9400)" in flat
    assert "(default: 4)" in flat and "MOSAIC_RELAY_MAX_STREAMS" in flat
    assert "(default: None)" not in flat and "(default: ())" not in flat and "(default: [])" not in flat


async def test_server_started_from_file_and_environment(tmp_path: Path, free_port: int) -> None:
    weights = dummy_onnx(tmp_path / "dummy.onnx")
    path = tmp_path / "relay.toml"
    path.write_text(f'weights = "{weights}"\nport = 1\n')  # port 1 is overridden by the environment
    os.environ["MOSAIC_RELAY_PORT"] = str(free_port)
    try:
        proc = await start_process("--config", str(path))
    finally:
        del os.environ["MOSAIC_RELAY_PORT"]
    try:
        health = await wait_healthy(proc, f"http://127.0.0.1:{free_port}")
        assert health["detector"] == "YoloOnnxDetector:dummy.onnx+TextNet"
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        await stop_process(proc)
