"""Graceful shutdown of `m3embed serve`: on SIGTERM the requests in flight complete, new
ones get 503 (or find the port closed), and the process exits 0; a second signal stops at
once, withdrawing queued work; --shutdown-timeout bounds the drain.

The work in flight is held by the test-only batch gate (Server(gated=True)), so every
assertion holds however fast or loaded the machine is: nothing here races a clock.
"""
from __future__ import annotations

import json
import signal
import socket
import threading

import httpx
import pytest

from test_server_cli import BINARY, Server

pytestmark = pytest.mark.skipif(not BINARY, reason="M3_BINARY is not set (ctest sets it)")

BATCH = 64


def big_request(tag: int) -> dict:
    """BATCH inputs of 128 tokens (the fixture's limit; truncated)."""
    return {"inputs": [f"{tag} {i} the quick brown fox jumps over the lazy dog " * 12 for i in range(BATCH)],
            "truncate": True}


def start_backlog(server: Server, count: int, results: list) -> list[threading.Thread]:
    """`count` requests, all admitted and held in flight (the gate holds the first batch)."""
    def one(tag):
        try:
            response = httpx.post(server.url("/embed"), json=big_request(tag), timeout=300)
            results.append((response.status_code, len(response.json()) if response.status_code == 200 else 0))
        except httpx.HTTPError as error:
            results.append((type(error).__name__, 0))

    threads = [threading.Thread(target=one, args=(tag,)) for tag in range(count)]
    for t in threads:
        t.start()
    server.wait_until(lambda: server.metric("m3_http_active_requests") == count, f"{count} requests admitted")
    server.wait_until(lambda: server.gate()["held"] == 1, "a batch held at the gate")
    return threads


def health(server: Server) -> int | None:
    try:
        return httpx.get(server.url("/health"), timeout=30).status_code
    except httpx.HTTPError:
        return None  # already closed: refusing is fine too


def send_on(sock, path: str, body: dict | None = None) -> int | None:
    """A request on an already open keep-alive connection: its status, or None if closed."""
    data = json.dumps(body).encode() if body is not None else b""
    method = "POST" if body is not None else "GET"
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
    try:
        sock.sendall(head + data)
        reply = sock.recv(65536)
    except (BrokenPipeError, ConnectionResetError):
        return None
    return int(reply.split(b" ")[1]) if reply.startswith(b"HTTP/1.1") else None


def test_sigterm_finishes_in_flight_and_refuses_new():
    with Server("--max-client-batch-size", str(BATCH), "--http-threads", "2", gated=True) as server:
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=30)  # keep-alive, opened before
        assert send_on(idle, "/health") == 200
        results: list = []
        threads = start_backlog(server, 4, results)

        server.proc.send_signal(signal.SIGTERM)
        server.wait_until(lambda: health(server) != 200, "the server draining after SIGTERM")
        # New work is refused while the old is still held in flight.
        assert send_on(idle, "/embed", {"inputs": "too late"}) in (503, None)
        try:
            late = httpx.post(server.url("/embed"), json={"inputs": "too late"}, timeout=30)
            assert late.status_code == 503
            assert late.json()["error_type"] == "Unhealthy"
        except httpx.ConnectError:
            pass  # already stopped listening: refused is fine too
        idle.close()
        assert results == [], "a held request finished before the gate opened"

        server.open_gate()  # the in-flight work may now finish: all of it must
        for t in threads:
            t.join()
        assert results == [(200, BATCH)] * 4, results
        assert server.proc.wait(120) == 0
        assert "shutting down" in server.log()


def test_second_signal_stops_at_once():
    # The drain could last 1000 s and the gate never opens: only the second signal ends it.
    with Server("--max-client-batch-size", str(BATCH), "--shutdown-timeout", "1000", gated=True) as server:
        results: list = []
        threads = start_backlog(server, 8, results)
        server.proc.send_signal(signal.SIGTERM)
        server.wait_until(lambda: health(server) != 200, "the server draining after SIGTERM")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(120) == 0
        for t in threads:
            t.join()
        assert len(results) == 8
        assert all(status != 200 for status, _ in results), results  # nothing was let through
        assert "again: stopping now" in server.log()


def test_shutdown_timeout_bounds_the_drain():
    # Held work never finishes by itself, so only the 0.2 s drain limit can end the process.
    with Server("--max-client-batch-size", str(BATCH), "--shutdown-timeout", "0.2", gated=True) as server:
        results: list = []
        threads = start_backlog(server, 8, results)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(120) == 0
        for t in threads:
            t.join()
        assert all(status != 200 for status, _ in results), results
        assert "shutdown timeout" in server.log()


def test_the_batch_gate_is_refused_outside_tests(tmp_path):
    import subprocess
    from test_server_cli import FIXTURES
    result = subprocess.run([BINARY, "serve", "--model", str(FIXTURES / "tiny-st"), "--port", "0",
                             "--test-batch-gate"], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert "test-only" in result.stderr and "M3_ENABLE_TEST_CONTROLS=1" in result.stderr
