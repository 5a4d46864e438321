"""The server's responses in flight are bounded by --output-memory, which the memory plan
counts: a response that could never fit is refused with 413 before any compute, one that
does not fit now gets 429, and the reserved bytes come back once responses are written.
Work is held in flight with the test-only batch gate, so nothing here races a clock.
"""
from __future__ import annotations

import threading

import httpx
import pytest

from test_server_cli import BINARY, HIDDEN, MAX_SEQ_LEN, Server

pytestmark = pytest.mark.skipif(not BINARY, reason="M3_BINARY is not set (ctest sets it)")

OUTPUT_MEMORY = 2 << 20
LONG = "the quick brown fox jumps over the lazy dog " * 12  # truncated to 128 tokens


def colbert_request(n: int) -> dict:
    return {"inputs": [f"{i} {LONG}" for i in range(n)], "truncate": True}


def test_responses_in_flight_are_bounded_by_the_output_memory():
    with Server("--output-memory", str(OUTPUT_MEMORY), "--max-client-batch-size", "256", gated=True) as server:
        info = httpx.get(server.url("/info"), timeout=30).json()
        assert info["memory"]["plan"]["result_buffer_bytes"] == OUTPUT_MEMORY
        assert server.metric("m3_response_bytes_capacity") == OUTPUT_MEMORY

        # 256 x 128 ColBERT rows of 64 floats can never fit 2 MiB: refused before any compute.
        batches_before = server.metric("m3_batches_total")
        too_big = httpx.post(server.url("/embed_all"), json=colbert_request(256), timeout=60)
        assert too_big.status_code == 413, too_big.text
        assert "--output-memory" in too_big.json()["error"]
        assert server.metric("m3_batches_total") == batches_before

        # One that fits alone (10 x 128 rows: ~1.6 MiB reserved), held in flight by the gate...
        first: list = []
        holder = threading.Thread(target=lambda: first.append(
            httpx.post(server.url("/embed_all"), json=colbert_request(10), timeout=300)))
        holder.start()
        server.wait_until(lambda: server.gate()["held"] == 1, "the first request held in flight")
        reserved = server.metric("m3_response_bytes_in_flight")
        assert 10 * (MAX_SEQ_LEN - 1) * HIDDEN * 4 < reserved <= OUTPUT_MEMORY
        # ...leaves too little for a second one now: 429, naming the limit.
        busy = httpx.post(server.url("/embed_all"), json=colbert_request(5), timeout=60)
        assert busy.status_code == 429, busy.text
        assert "--output-memory" in busy.json()["error"]

        server.open_gate()
        holder.join()
        assert first[0].status_code == 200 and len(first[0].json()) == 10
        server.wait_until(lambda: server.metric("m3_response_bytes_in_flight") == 0, "the reservation returned")
        again = httpx.post(server.url("/embed_all"), json=colbert_request(5), timeout=300)
        assert again.status_code == 200 and len(again.json()) == 5


def test_plan_counts_the_output_memory():
    import json
    import subprocess
    from test_server_cli import FIXTURES
    def total(*args):
        result = subprocess.run([BINARY, "plan", "--model", str(FIXTURES / "tiny-st"), "--json", *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)
    small, large = total("--output-memory", "1MiB"), total("--output-memory", "9MiB")
    assert large["result_buffer_bytes"] - small["result_buffer_bytes"] == 8 << 20
    assert large["total_bytes"] - small["total_bytes"] == 8 << 20
    text = subprocess.run([BINARY, "plan", "--model", str(FIXTURES / "tiny-st"), "--output-memory", "1MiB"],
                          capture_output=True, text=True, timeout=60).stdout
    assert "results waiting to be written (--output-memory)" in text
