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
    """A running `m3embed serve` on 127.0.0.1 with a free port.

    gated=True starts it with the test-only batch gate (--test-batch-gate): every batch then
    waits, in flight, until the test releases it (release(), open_gate()), so a test can hold
    work in flight for as long as it needs without racing the machine's speed.
    """

    def __init__(self, *args: str, env: dict | None = None, model: str = "tiny-st", wait_ready: bool = True,
                 gated: bool = False):
        command = [BINARY, "serve", "--model", str(FIXTURES / model), "--host", "127.0.0.1", "--port", "0",
                   "--threads", "1", *args]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("M3_") or k in ("M3_BINARY",)}
        full_env.update(env or {})
        if gated:
            command.append("--test-batch-gate")
            full_env["M3_ENABLE_TEST_CONTROLS"] = "1"
        self.lines: list[str] = []
        self._listening = threading.Event()
        self._ready = threading.Event()  # set on "ready", or when the output ends (then _saw_ready is False)
        self._saw_ready = False
        self.port = 0
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=full_env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._listening.wait(START_TIMEOUT_S) or self.proc.poll() is not None:
            self.stop(signal.SIGKILL)
            raise RuntimeError("server did not start:\n" + self.log())
        if wait_ready and (not self._ready.wait(START_TIMEOUT_S) or not self._saw_ready):
            self.stop(signal.SIGKILL)
            raise RuntimeError("server did not become ready:\n" + self.log())

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "listening on http://" in line:
                self.port = int(line.rsplit(":", 1)[1])
                self._listening.set()
            if line.rstrip().endswith("] ready"):
                self._saw_ready = True
                self._ready.set()
        self._listening.set()  # the process is gone: nobody waits for a line that cannot come
        self._ready.set()

    def log(self) -> str:
        """Everything the server printed so far; once it has exited, everything it printed: the
        reader thread may still be behind the exit, so wait for it to reach the end of the pipe
        (the limit only ends a hang)."""
        if self.proc.poll() is not None:
            self._reader.join(60)
        return "\n".join(self.lines)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    # --- the test-only batch gate (gated=True) ---
    def gate(self, body: dict | None = None) -> dict:
        """GET (or POST `body` to) /test/batch-gate: {"held", "passed", "permits", "open"}."""
        url = self.url("/test/batch-gate")
        response = requests.post(url, json=body, timeout=30) if body is not None else requests.get(url, timeout=30)
        response.raise_for_status()
        return response.json()

    def release(self, batches: int = 1) -> dict:
        return self.gate({"release": batches})

    def open_gate(self) -> dict:
        return self.gate({"open": True})

    def wait_until(self, condition, what: str, limit_s: float = 120):
        """Polls until condition() holds. The limit only ends a test that would otherwise hang:
        nothing asserts how long it took."""
        deadline = time.monotonic() + limit_s
        while not condition():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"never happened: {what}\n" + self.log())
            time.sleep(0.01)

    def metric(self, name: str) -> float:
        for line in requests.get(self.url("/metrics"), timeout=30).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

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
        health = requests.get(server.url("/health"), timeout=60)
        assert health.status_code == 200
        assert health.json() == {"status": "ready"}
        info = requests.get(server.url("/info"), timeout=60).json()
        assert info["model_id"] == "tiny-st"
        assert info["model_dtype"] == "float32"
        assert info["max_input_length"] == MAX_SEQ_LEN
        assert info["config"]["hidden_size"] == HIDDEN
        assert info["outputs"] == {"dense": True, "sparse": True, "colbert": True, "scores": False}
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
        assert requests.post(url, json={"input": "a"}, timeout=60).status_code == 401
        key = {"Authorization": "Bearer k3y"}
        ok = requests.post(url, json={"input": "a " * 500}, headers=key, timeout=60)  # auto-truncated
        assert ok.status_code == 200, ok.text
        assert ok.json()["model"] == "served"
        assert ok.json()["usage"]["prompt_tokens"] == MAX_SEQ_LEN
        too_many = requests.post(url, json={"input": ["a", "b", "c"]}, headers=key, timeout=60)
        assert too_many.status_code == 413
        assert requests.get(server.url("/health"), timeout=60).status_code == 200  # no key needed

    # Without --port on the command line, M3_PORT is the port.
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3_")}
    proc = subprocess.Popen([BINARY, "serve", "--model", str(FIXTURES / "tiny-st"), "--threads", "1"],
                            env={**env, "M3_PORT": str(port), "M3_HOST": "127.0.0.1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(120, proc.kill)  # only ends a hang; nothing asserts how long it took
    watchdog.start()
    try:
        # Read up to "ready", so that SIGTERM finds a loaded server, not one still loading.
        listening, output = None, []
        for line in proc.stdout:
            output.append(line)
            if "listening on" in line:
                listening = line.strip()
            if line.rstrip().endswith("] ready"):
                break
        assert listening is not None and listening.endswith(f"127.0.0.1:{port}"), "".join(output)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(60) == 0
        finally:
            watchdog.cancel()
            proc.kill()
            proc.wait()
            proc.stdout.close()


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
