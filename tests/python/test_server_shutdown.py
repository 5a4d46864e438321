"""Graceful shutdown of `m3embed serve`: on SIGTERM the requests in flight complete, new
ones get 503 (or find the port closed), and the process exits 0; a second signal stops at
once, withdrawing queued work.
"""
from __future__ import annotations

import json
import signal
import socket
import threading
import time

import httpx
import pytest

from test_server_cli import BINARY, Server

pytestmark = pytest.mark.skipif(not BINARY, reason="M3_BINARY is not set (ctest sets it)")

BATCH = 256


def big_request(tag: int) -> dict:
    """BATCH inputs of 128 tokens (the fixture's limit; truncated)."""
    return {"inputs": [f"{tag} {i} the quick brown fox jumps over the lazy dog " * 12 for i in range(BATCH)],
            "truncate": True}


def active_requests(server) -> float:
    for line in httpx.get(server.url("/metrics"), timeout=10).text.splitlines():
        if line.startswith("m3_http_active_requests "):
            return float(line.split()[1])
    return 0


def start_backlog(server, count: int, results: list):
    def one(tag):
        try:
            response = httpx.post(server.url("/embed"), json=big_request(tag), timeout=120)
            results.append((response.status_code, len(response.json()) if response.status_code == 200 else 0))
        except httpx.HTTPError as error:
            results.append((type(error).__name__, 0))

    threads = [threading.Thread(target=one, args=(tag,)) for tag in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while active_requests(server) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return threads


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
    with Server("--max-client-batch-size", str(BATCH), "--http-threads", "2") as server:
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=30)  # keep-alive, opened before
        assert send_on(idle, "/health") == 200
        results: list = []
        threads = start_backlog(server, 4, results)
        assert active_requests(server) >= 2, "the backlog finished before the signal: nothing in flight"

        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        # New work is refused while the old finishes.
        assert send_on(idle, "/embed", {"inputs": "too late"}) in (503, None)
        try:
            late = httpx.post(server.url("/embed"), json={"inputs": "too late"}, timeout=10)
            assert late.status_code == 503
            assert late.json()["error_type"] == "Unhealthy"
            assert httpx.get(server.url("/health"), timeout=10).status_code == 503
        except httpx.ConnectError:
            pass  # already stopped listening: refused is fine too
        idle.close()

        for t in threads:
            t.join()
        assert results == [(200, BATCH)] * 4, results
        assert server.proc.wait(60) == 0
        assert "shutting down" in server.log()


def test_second_signal_stops_at_once():
    with Server("--max-client-batch-size", str(BATCH), "--shutdown-timeout", "120") as server:
        results: list = []
        threads = start_backlog(server, 8, results)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
        assert time.monotonic() - start < 5
        for t in threads:
            t.join()
        assert len(results) == 8
        assert any(status != 200 for status, _ in results), "every request finished: the stop was not early"
        assert "again: stopping now" in server.log()


def test_shutdown_timeout_bounds_the_drain():
    with Server("--max-client-batch-size", str(BATCH), "--shutdown-timeout", "0.2") as server:
        results: list = []
        threads = start_backlog(server, 8, results)
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
        assert time.monotonic() - start < 5
        for t in threads:
            t.join()
        assert "shutdown timeout" in server.log()
