"""run_server.py: the command line, detector loading errors, start-up and graceful shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import socketio

import run_server
from relay.settings import Settings

pytestmark = pytest.mark.timeout(120)

REPO_ROOT = Path(run_server.__file__).resolve().parent


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_server.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def dummy_onnx(path: Path, anchors: int = 10, classes: int = 3, conf: float = 0.6) -> Path:
    """A valid model with the detector's contract (images [1,3,S,S] -> [1,A,5+nc]) that finds nothing."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    zeros = numpy_helper.from_array(np.zeros((1, anchors, 5 + classes), np.float32), "zeros")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
            helper.make_node("Mul", ["mean", "zeros"], ["output0"]),
        ],
        "dummy",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, "S", "S"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, anchors, 5 + classes])],
        [zeros],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    from relay.model import MODEL_CLASS_NAMES, ModelContract

    contract = ModelContract(MODEL_CLASS_NAMES[:classes], 416, conf)  # what training/export.py writes
    helper.set_model_props(model, contract.metadata())
    onnx.save(model, str(path))
    return path


def test_the_server_takes_the_serving_threshold_from_the_model_unless_given(tmp_path: Path) -> None:
    weights = dummy_onnx(tmp_path / "m.onnx", conf=0.55)
    s = dataclasses.replace(Settings(), weights=weights)
    _, resolved = run_server.load_detector(s)
    assert resolved.conf_threshold == 0.55 and resolved.input_size == 416
    argv = ["--conf-threshold=0.7"]
    _, kept = run_server.load_detector(
        s, [n for n in ("conf_threshold", "input_size") if run_server.given(argv, n)]
    )
    assert kept.conf_threshold == s.conf_threshold


def test_help_lists_every_setting() -> None:
    out = run_cli("--help").stdout
    for f in dataclasses.fields(Settings):
        assert run_server._flag(f.name) in out, f.name
    assert "(default: 0.6)" in out and "--port" in out and "--host" in out


def test_arguments_become_settings(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"0123456789abcdef0123\n")
    s = run_server.settings_from_args(
        [
            "--port", "9000", "--conf-threshold", "0.5", "--input-size", "320", "--max-streams", "3",
            "--allowed-origins", "https://a.example, https://b.example/", "--log-level", "debug",
            "--view-token-secret-file", str(secret), "--weights", "w.onnx",
        ]
    )  # fmt: skip
    assert (s.port, s.conf_threshold, s.input_size, s.max_streams) == (9000, 0.5, 320, 3)
    assert s.allowed_origins == ("https://a.example", "https://b.example")
    assert (
        s.log_level == "DEBUG"
        and s.view_token_secret == b"0123456789abcdef0123"
        and s.weights == Path("w.onnx")
    )
    assert run_server.settings_from_args([]) == dataclasses.replace(Settings(), view_token_secret=None)


@pytest.mark.parametrize(
    "args",
    [
        ["--conf-threshold", "1.5"],
        ["--input-size", "100"],
        ["--port", "0"],
        ["--ssl-cert", "c.pem"],
        ["--max-streams", "0"],
        ["--port", "http"],
        ["--max-message-bytes", "1000"],
        ["--track-conf", "0.7"],  # above --conf-threshold (0.6)
        ["--track-conf", "0"],
        ["--track-hold-s", "-1"],
        ["--lookahead-s", "-0.1"],
        ["--lookahead-s", "2"],
        ["--trusted-proxies", "10.0.0.0/8,not-an-address"],
        ["--max-unpublished-per-address", "0"],
        ["--unpublished-ttl-s", "0"],
        ["--body-timeout-s", "-1"],
    ],
)
def test_bad_arguments_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run_server.settings_from_args(args)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_missing_or_invalid_weights_exit_1(tmp_path: Path) -> None:
    missing = run_cli("--weights", str(tmp_path / "nope.onnx"))
    assert missing.returncode == 1
    assert "weights not found" in missing.stderr and "Traceback" not in missing.stderr
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a model")
    bad = run_cli("--weights", str(garbage))
    assert bad.returncode == 1
    assert "cannot load detector weights" in bad.stderr and "Traceback" not in bad.stderr


async def start_process(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(REPO_ROOT / "run_server.py"), "--host", "127.0.0.1", *args,
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


async def wait_healthy(proc: asyncio.subprocess.Process, url: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(url + "/healthz", ssl=False) as r:
                    return dict(await r.json())
            except aiohttp.ClientConnectionError:
                assert proc.returncode is None, "server exited during start-up"
                await asyncio.sleep(0.2)
    raise AssertionError("server did not come up within 60 s")


async def stop_process(proc: asyncio.subprocess.Process) -> str:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    out = (await proc.stdout.read()).decode() if proc.stdout else ""
    assert "Traceback" not in out, out
    return out


async def test_serves_and_shuts_down_gracefully(tmp_path: Path, free_port: int) -> None:
    weights = dummy_onnx(tmp_path / "dummy.onnx")
    url = f"http://127.0.0.1:{free_port}"
    proc = await start_process(
        "--port", str(free_port), "--weights", str(weights), "--shutdown-timeout-s", "3"
    )
    client = socketio.AsyncClient(reconnection=False)
    try:
        health = await wait_healthy(proc, url)
        assert health == {"status": "ok", "streams": 0, "detector": "YoloOnnxDetector:dummy.onnx"}
        ended: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        client.on("stream_ended", ended.put, namespace="/publisher")
        await client.connect(url, namespaces=["/publisher"], transports=["websocket"], wait_timeout=10)
        ack = await client.call(
            "create_stream", {"title": "t", "category": "c"}, namespace="/publisher", timeout=10
        )
        assert ack["ok"]

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        msg = await asyncio.wait_for(ended.get(), 5)
        assert msg == {"stream_id": ack["stream_id"], "reason": "server_shutdown"}
        code = await asyncio.wait_for(proc.wait(), 15)
        assert code == 0
        print(f"SIGTERM -> exit: {time.monotonic() - t0:.2f} s")
        assert time.monotonic() - t0 < 3 + 2.5  # the shutdown timeout, plus process exit on a loaded machine
    finally:
        if client.connected:
            await client.disconnect()
        await stop_process(proc)


@pytest.fixture
def tls_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def test_serves_https(tmp_path: Path, free_port: int, tls_pair: tuple[Path, Path]) -> None:
    cert, key = tls_pair
    weights = dummy_onnx(tmp_path / "dummy.onnx")
    proc = await start_process(
        "--port", str(free_port), "--weights", str(weights), "--ssl-cert", str(cert), "--ssl-key", str(key)
    )
    try:
        health = await wait_healthy(proc, f"https://127.0.0.1:{free_port}")
        assert health["status"] == "ok"
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        out = await stop_process(proc)
    assert "https://127.0.0.1" in out
