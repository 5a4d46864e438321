"""Malformed and hostile requests against `m3embed serve`: each gets its 4xx (or, for
transport abuse, a closed connection), nothing takes the server down, and /health still
answers afterwards. Also: overload is refused fast (429), slow clients are cut off by the
read timeout, and a client that disconnects gets its queued work withdrawn.
"""
from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from test_server_cli import BINARY, HIDDEN, Server

pytestmark = pytest.mark.skipif(not BINARY, reason="M3_BINARY is not set (ctest sets it)")

KEY = "hostile-key"
PAYLOAD_LIMIT = 65536
HEADER_LIMIT = 4096
READ_TIMEOUT_S = 1.0


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict | None = None, key: str | None = KEY,
                  content_length: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    if body or method == "POST":
        lines.append("Content-Type: application/json")
        if content_length:
            lines.append(f"Content-Length: {len(body)}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def exchange(port: int, data: bytes, timeout: float = 10) -> tuple[int | None, bytes]:
    """Sends raw bytes; returns (status, body) of the first response, or (None, b"") when the
    server closed the connection without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        buffer = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                if b"\r\n\r\n" in buffer:
                    head, rest = buffer.split(b"\r\n\r\n", 1)
                    lengths = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
                    if lengths and len(rest) >= int(lengths[0].split(b":")[1]):
                        break
        except (ConnectionResetError, socket.timeout):
            pass
    if not buffer.startswith(b"HTTP/1."):
        return None, b""
    head, _, body = buffer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def post(path: str, body, **kw) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request_bytes("POST", path, data, **kw)


LONG_TEXT = "The quick brown fox jumps over the lazy dog. " * 20  # > 128 tokens

# (name, request bytes, expected status; None: the server may just close the connection)
CASES = [
    ("bad JSON", post("/v1/embeddings", b'{"input": "a",'), 400),
    ("not JSON at all", post("/embed", b"hello"), 400),
    ("JSON array body", post("/v1/embeddings", [1, 2]), 422),
    ("JSON string body", post("/embed", "just a string"), 422),
    ("input is a number", post("/v1/embeddings", {"input": 42}), 422),
    ("input is null", post("/v1/embeddings", {"input": None}), 422),
    ("input is an object", post("/v1/embeddings", {"input": {"text": "a"}}), 422),
    ("missing input", post("/v1/embeddings", {"model": "m"}), 422),
    ("empty input list", post("/v1/embeddings", {"input": []}), 422),
    ("empty string", post("/v1/embeddings", {"input": ""}), 422),
    ("empty string in a list", post("/embed", {"inputs": ["a", ""]}), 422),
    ("mixed list", post("/v1/embeddings", {"input": ["a", 1]}), 422),
    ("invalid UTF-8", post("/v1/embeddings", b'{"input": "caf\xe9"}'), 422),
    ("UTF-8 encoded surrogate", post("/embed", b'{"inputs": "\xed\xa0\x80"}'), 422),
    ("lone surrogate escape", post("/embed", b'{"inputs": "\\udc00"}'), 400),
    ("too many inputs", post("/v1/embeddings", {"input": ["a"] * 9}), 413),
    ("too many pairs", post("/m3/score", {"pairs": [["a", "b"]] * 9}), 413),
    ("input longer than max_seq_len", post("/v1/embeddings", {"input": LONG_TEXT}), 413),
    ("body over the payload limit", post("/v1/embeddings", {"input": "x" * (PAYLOAD_LIMIT + 10)}), 413),
    ("Content-Length over the limit, no body", request_bytes("POST", "/embed", headers={"Content-Length": "999999999"},
                                                             content_length=False), 413),
    ("header over the limit", request_bytes("GET", "/health", headers={"X-Junk": "j" * (HEADER_LIMIT * 2)}), 431),
    ("no API key", post("/v1/embeddings", {"input": "a"}, key=None), 401),
    ("wrong API key", post("/embed", {"inputs": "a"}, key="guess"), 401),
    ("unknown route", request_bytes("GET", "/admin"), 404),
    ("path traversal", request_bytes("GET", "/../../etc/passwd"), 404),
    ("wrong method", request_bytes("GET", "/v1/embeddings"), 405),
    ("DELETE on a route", request_bytes("DELETE", "/embed"), 405),
    ("negative dimensions", post("/v1/embeddings", {"input": "a", "dimensions": -1}), 422),
    ("base64 with dimensions > hidden", post("/v1/embeddings", {"input": "a", "encoding_format": "base64",
                                                                "dimensions": HIDDEN + 1}), 422),
    ("dimensions as a string", post("/v1/embeddings", {"input": "a", "dimensions": "8"}), 422),
    ("unknown encoding_format", post("/v1/embeddings", {"input": "a", "encoding_format": "int4"}), 422),
    ("token id out of range", post("/v1/embeddings", {"input": [0, 10 ** 9, 2]}), 422),
    ("negative token id", post("/v1/embeddings", {"input": [0, -5, 2]}), 422),
    ("fractional token id", post("/v1/embeddings", {"input": [0, 1.5, 2]}), 422),
    ("huge integer", post("/v1/embeddings", b'{"input": [0, 123456789012345678901234567890, 2]}'), 400),
    ("one token id", post("/v1/embeddings", {"input": [7]}), 422),
    ("nested too deep for inputs", post("/v1/embeddings", {"input": [[[0, 2]]]}), 422),
    ("JSON nested 30000 deep", post("/embed", b"[" * 30000 + b"]" * 30000), 400),
    ("TEI normalize false", post("/embed", {"inputs": "a", "normalize": False}), 422),
    ("TEI truncate not a boolean", post("/embed", {"inputs": "a", "truncate": "yes"}), 422),
    ("tokenize token ids", post("/tokenize", {"inputs": [0, 2]}), 422),
    ("score weights wrong", post("/m3/score", {"pairs": [["a", "b"]], "weights": [1, -1, 1]}), 422),
    ("score empty pairs", post("/m3/score", {"pairs": []}), 422),
    ("encode asks for nothing", post("/m3/encode", {"input": "a", "return_dense": False}), 422),
    ("bad Content-Length", request_bytes("POST", "/embed", b"{}", headers={"Content-Length": "abc"},
                                         content_length=False), 400),
    ("bad chunk size", request_bytes("POST", "/embed", b"zz\r\n{}\r\n0\r\n\r\n",
                                     headers={"Transfer-Encoding": "chunked"}, content_length=False), 400),
    ("garbage request line", b"GARBAGE\r\n\r\n", 400),
    ("binary junk", bytes(range(256)) * 4, 400),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", None),
]


@pytest.fixture(scope="module")
def server():
    args = ["--api-key", KEY, "--max-client-batch-size", "8", "--payload-limit", str(PAYLOAD_LIMIT),
            "--max-header-bytes", str(HEADER_LIMIT), "--read-timeout", str(READ_TIMEOUT_S)]
    with Server(*args) as s:
        yield s
        assert s.proc.poll() is None, "the server died:\n" + s.log()
        assert s.stop() == 0


def healthy(server) -> bool:
    return exchange(server.port, request_bytes("GET", "/health", key=None))[0] == 200


def test_case_list_is_long_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name,data,expected", CASES, ids=[c[0] for c in CASES])
def test_hostile_request(server, name, data, expected):
    status, body = exchange(server.port, data)
    if expected is None:
        assert status is None or 400 <= status < 500, (name, status, body)
    else:
        assert status == expected, (name, status, body[:300])
        if status != 431:
            error = json.loads(body)
            assert "error" in error  # OpenAI {"error": {...}} or TEI {"error", "error_type"}
    assert healthy(server), name


def test_every_error_body_names_what_went_wrong(server):
    status, body = exchange(server.port, post("/v1/embeddings", {"input": ["a", ""]}))
    assert status == 422
    error = json.loads(body)["error"]
    assert error["param"] == "input[1]" and error["type"] == "invalid_request_error" and "empty" in error["message"]
    status, body = exchange(server.port, post("/embed", {"inputs": LONG_TEXT}))
    assert status == 413
    assert json.loads(body)["error_type"] == "Validation" and "128" in json.loads(body)["error"]


def test_slowloris_header_is_cut_off(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\n")
        closed = False
        for _ in range(40):  # a header line every 0.1 s: never finishing
            try:
                sock.sendall(b"X-Slow: a\r\n")
                sock.settimeout(0.1)
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed, "the server kept a never-ending header open"
        assert time.monotonic() - start < READ_TIMEOUT_S + 1.5
    assert healthy(server)


def test_slow_body_is_cut_off(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request_bytes("POST", "/embed", b"", headers={"Content-Length": "100"}, content_length=False)
                     + b'{"inputs": ')
        start = time.monotonic()
        sock.settimeout(READ_TIMEOUT_S + 3)
        try:
            assert sock.recv(1024) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - start < READ_TIMEOUT_S + 1.5
    assert healthy(server)


def test_idle_connections_are_closed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.settimeout(READ_TIMEOUT_S + 3)
        start = time.monotonic()
        assert sock.recv(1024) == b""
        assert time.monotonic() - start < READ_TIMEOUT_S + 1.5


def test_many_half_open_connections_do_not_block_others(server):
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(50)]
    try:
        for s in socks:
            s.sendall(b"POST /embed HTTP/1.1\r\n")
        assert healthy(server)
        status, _ = exchange(server.port, post("/embed", {"inputs": "still serving"}))
        assert status == 200
    finally:
        for s in socks:
            s.close()


def big_request(n=256):
    """n inputs of 128 tokens (the fixture's limit; truncated)."""
    return {"inputs": [f"{i} The quick brown fox jumps over the lazy dog again and again " * 12 for i in range(n)],
            "truncate": True}


def test_overload_is_refused_fast_with_429():
    # Two requests at once at most, and a queue of 1024 tokens (8 long texts).
    with Server("--max-concurrent-requests", "2", "--max-queue-tokens", "1024", "--max-client-batch-size", "256",
                "--max-batch-tokens", "256") as s:
        statuses = []
        start_together = threading.Barrier(12)

        def one():
            with httpx.Client(base_url=s.base, timeout=60) as client:
                client.get("/health")  # connected before the barrier
                start_together.wait()
                statuses.append(client.post("/embed", json=big_request(8)).status_code)

        threads = [threading.Thread(target=one) for _ in range(12)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(statuses) <= {200, 429}, statuses
        assert 429 in statuses and 200 in statuses, statuses
        with httpx.Client(base_url=s.base, timeout=60) as client:
            over = client.post("/embed", json=big_request(16))  # 2048 tokens > the whole queue: never fits
            assert over.status_code == 413 and "queue" in over.json()["error"]
            metrics = client.get("/metrics").text
        assert 'm3_http_requests_total{route="/embed",status="429"}' in metrics
        assert time.monotonic() - start < 60


def test_disconnected_client_has_its_work_withdrawn():
    with Server("--max-client-batch-size", "256") as s:
        # A backlog of big requests keeps the single replica busy for a while...
        backlog = [threading.Thread(target=lambda: httpx.post(s.url("/embed"), json=big_request(), timeout=120))
                   for _ in range(4)]
        for t in backlog:
            t.start()
        time.sleep(0.2)
        # ...so this one is still queued when its client goes away.
        for _ in range(3):  # sent and gone at once: the server sees the request, then the close
            with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
                sock.sendall(request_bytes("POST", "/embed", json.dumps(big_request(64)).encode(), key=None))
        for t in backlog:
            t.join()
        metrics = httpx.get(s.url("/metrics"), timeout=30).text
        cancelled = [float(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith('m3_scheduler_requests_total{outcome="cancelled"}')]
        assert cancelled and cancelled[0] >= 1, metrics
        assert 'status="499"' in metrics
        assert httpx.get(s.url("/health"), timeout=10).status_code == 200
