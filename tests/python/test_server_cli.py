"""`m3embed serve` as a process: start-up, options from flags and M3_* variables, refusals.

Also home of `Server`, the harness the other test_server_*.py files import: it starts
`$M3_BINARY serve --model $M3_FIXTURES_DIR/tiny-st --host 127.0.0.1 --port 0 ...`, reads the
port from the "listening on http://127.0.0.1:PORT" log line, waits for "ready", and stops it
with SIGTERM, returning the exit status. Loopback only.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

FIXTURES = Path(os.environ.get("M3_FIXTURES_DIR", str(Path(__file__).resolve().parents[1] / "fixtures")))
BINARY = os.environ.get("M3_BINARY")
HIDDEN = 64  # tiny-st
MAX_SEQ_LEN = 128  # tiny-st: max_position_embeddings 130 - 2
START_TIMEOUT_S = 60

pytestmark = pytest.mark.skipif(not BINARY, reason="M3_BINARY is not set (ctest sets it)")


class Server:
    """A running `m3embed serve` on 127.0.0.1 with a free port."""

    def __init__(self, *args: str, env: dict | None = None, model: str = "tiny-st", wait_ready: bool = True):
        command = [BINARY, "serve", "--model", str(FIXTURES / model), "--host", "127.0.0.1", "--port", "0",
                   "--threads", "1", *args]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("M3_") or k in ("M3_BINARY",)}
        full_env.update(env or {})
        self.lines: list[str] = []
        self._listening = threading.Event()
        self._ready = threading.Event()
        self.port = 0
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=full_env)
        threading.Thread(target=self._read, daemon=True).start()
        if not self._listening.wait(START_TIMEOUT_S) or self.proc.poll() is not None:
            self.stop(signal.SIGKILL)
            raise RuntimeError("server did not start:\n" + self.log())
        if wait_ready and not self._ready.wait(START_TIMEOUT_S):
            self.stop(signal.SIGKILL)
            raise RuntimeError("server did not become ready:\n" + self.log())

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "listening on http://" in line:
                self.port = int(line.rsplit(":", 1)[1])
                self._listening.set()
            if line.rstrip().endswith("] ready"):
                self._ready.set()
        self._listening.set()

    def log(self) -> str:
        return "\n".join(self.lines)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.stop(signal.SIGKILL if exc[0] else signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([BINARY, *args], capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- tests


def test_serve_is_a_subcommand():
    result = run_cli("serve", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--api-key", "--max-concurrent-requests", "--max-client-batch-size", "--max-batch-tokens",
                   "--memory-limit", "--max-seq-len", "--auto-truncate", "--replicas", "--threads", "--dtype",
                   "M3_API_KEY", "M3_PORT"):
        assert option in result.stdout, option


def test_starts_answers_and_stops_cleanly():
    with Server() as server:
        health = requests.get(server.url("/health"), timeout=10)
        assert health.status_code == 200
        assert health.json() == {"status": "ready"}
        info = requests.get(server.url("/info"), timeout=10).json()
        assert info["model_id"] == "tiny-st"
        assert info["model_dtype"] == "float32"
        assert info["max_input_length"] == MAX_SEQ_LEN
        assert info["config"]["hidden_size"] == HIDDEN
        assert info["outputs"] == {"dense": True, "sparse": True, "colbert": True}
        assert info["memory"]["plan"]["total_bytes"] > 0
        assert info["memory"]["resident_bytes"] > 0
        assert len(info["memory"]["warmup"]) == 1
        assert server.stop() == 0
    assert "stopped" in server.log()


def test_options_come_from_the_environment():
    port = free_port()
    env = {"M3_PORT": str(port), "M3_API_KEY": "k3y", "M3_MAX_CLIENT_BATCH_SIZE": "2",
           "M3_SERVED_MODEL_NAME": "served", "M3_AUTO_TRUNCATE": "true"}
    with Server(env=env) as server:  # --port 0 on the command line wins over M3_PORT
        assert server.port != port
        url = server.url("/v1/embeddings")
        assert requests.post(url, json={"input": "a"}, timeout=10).status_code == 401
        key = {"Authorization": "Bearer k3y"}
        ok = requests.post(url, json={"input": "a " * 500}, headers=key, timeout=10)  # auto-truncated
        assert ok.status_code == 200, ok.text
        assert ok.json()["model"] == "served"
        assert ok.json()["usage"]["prompt_tokens"] == MAX_SEQ_LEN
        too_many = requests.post(url, json={"input": ["a", "b", "c"]}, headers=key, timeout=10)
        assert too_many.status_code == 413
        assert requests.get(server.url("/health"), timeout=10).status_code == 200  # no key needed

    # Without --port on the command line, M3_PORT is the port.
    proc = subprocess.Popen([BINARY, "serve", "--model", str(FIXTURES / "tiny-st"), "--threads", "1"],
                            env={**os.environ, "M3_PORT": str(port), "M3_HOST": "127.0.0.1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if "listening on" in line:
                assert line.strip().endswith(f"127.0.0.1:{port}"), line
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_an_unknown_dtype_is_refused():
    result = run_cli("serve", "--model", str(FIXTURES / "tiny-st"), "--port", "0", "--dtype", "float64")
    assert result.returncode != 0
    assert "float64" in result.stderr and "bf16" in result.stderr


def test_a_taken_port_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--model", str(FIXTURES / "tiny-st"), "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_a_bad_model_exits_1_after_listening():
    result = run_cli("serve", "--model", str(FIXTURES / "no-such-model"), "--host", "127.0.0.1", "--port", "0")
    assert result.returncode == 1
    assert "no-such-model" in result.stderr


def test_sigint_also_stops_cleanly():
    with Server() as server:
        assert server.stop(signal.SIGINT) == 0
