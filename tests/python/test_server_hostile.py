"""Malformed and hostile requests against `m3embed serve`: each gets its 4xx (or, for
transport abuse, a closed connection), nothing takes the server down, and /health still
answers afterwards. Also: overload is refused at once (429), slow clients are cut off by the
read timeout, and a client that disconnects gets its queued work withdrawn.

Nothing here races a clock: work that must stay in flight is held by the test-only batch
gate (Server(gated=True)); a connection the server must cut off is waited for with a client
timeout far longer than the server's, so only the server can end it; and the one bound on
time is a lower one, from the server's own timer, which never fires early.
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
READ_TIMEOUT_S = 1.0  # the slow_server's: what the slow-client tests wait for
CLIENT_TIMEOUT_S = 60  # far longer than READ_TIMEOUT_S: only ends a test that would hang


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


def exchange(port: int, data: bytes, timeout: float = CLIENT_TIMEOUT_S) -> tuple[int | None, bytes]:
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
    ("TEI normalize not a bool", post("/embed", {"inputs": "a", "normalize": "no"}), 422),
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


SERVER_ARGS = ["--api-key", KEY, "--max-client-batch-size", "8", "--payload-limit", str(PAYLOAD_LIMIT),
               "--max-header-bytes", str(HEADER_LIMIT)]


@pytest.fixture(scope="module")
def server():
    # The default read timeout (30 s): however slowly this client sends a request, the
    # server waits for it, so no hostile case depends on how fast the test runs.
    with Server(*SERVER_ARGS) as s:
        yield s
        assert s.proc.poll() is None, "the server died:\n" + s.log()
        assert s.stop() == 0


@pytest.fixture(scope="module")
def slow_server():
    """Cuts off, after READ_TIMEOUT_S, a request header (or body) that has not arrived whole."""
    with Server(*SERVER_ARGS, "--read-timeout", str(READ_TIMEOUT_S)) as s:
        yield s
        assert s.proc.poll() is None, "the server died:\n" + s.log()
        assert s.stop() == 0


def healthy(server) -> bool:
    return exchange(server.port, request_bytes("GET", "/health", key=None))[0] == 200


def still_healthy(server, tries: int = 5) -> bool:
    """healthy() for the slow_server, whose 1 s read timeout would also cut off this client
    if it stalled for a second between connecting and sending: a few tries, so a loaded
    machine's stall cannot fail the test, while a server that stopped serving still does."""
    return any(healthy(server) for _ in range(tries))


def wait_closed(sock: socket.socket, keep_sending: bytes = b"", max_sends: int = 0) -> bytes:
    """Waits until the server closes the connection: returns b"" for a close (EOF or reset),
    or the bytes the server sent instead. With `keep_sending`, first sends it up to
    `max_sends` times, one every 0.2 s (pacing only), for as long as the connection is open.
    Fails if the server keeps the connection open and silent for CLIENT_TIMEOUT_S."""
    try:
        for _ in range(max_sends if keep_sending else 0):
            sock.sendall(keep_sending)
            sock.settimeout(0.2)
            try:
                return sock.recv(1024)
            except socket.timeout:
                continue  # still open: send the next one
        sock.settimeout(CLIENT_TIMEOUT_S)
        try:
            return sock.recv(1024)
        except socket.timeout:
            raise AssertionError(f"the server kept the connection open for {CLIENT_TIMEOUT_S} s") from None
    except (BrokenPipeError, ConnectionResetError):
        return b""


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


def test_slowloris_header_is_cut_off(slow_server):
    line = b"X-Slow: a\r\n"
    max_lines = (HEADER_LIMIT - 100) // len(line)  # never reaches the header limit (that would be a 431)
    start = time.monotonic()  # before connecting: the server's timer starts after its accept
    with socket.create_connection(("127.0.0.1", slow_server.port), timeout=CLIENT_TIMEOUT_S) as sock:
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\n")
        # A header line every 0.2 s, never the blank line that ends the header: only the
        # server's read timeout can end this; the lines sent never reach the header limit.
        reply = wait_closed(sock, keep_sending=line, max_sends=max_lines)
        assert reply == b"", f"the server answered instead of closing: {reply[:200]!r}"
    assert time.monotonic() - start >= READ_TIMEOUT_S  # closed by its timer, which never fires early
    assert still_healthy(slow_server)


def test_slow_body_is_cut_off(slow_server):
    start = time.monotonic()  # before connecting: the server's timer starts after its accept
    with socket.create_connection(("127.0.0.1", slow_server.port), timeout=CLIENT_TIMEOUT_S) as sock:
        sock.sendall(request_bytes("POST", "/embed", b"", headers={"Content-Length": "100"}, content_length=False)
                     + b'{"inputs": ')  # 11 of the 100 bytes announced, and no more
        reply = wait_closed(sock)
        assert reply == b"", f"the server answered instead of closing: {reply[:200]!r}"
    assert time.monotonic() - start >= READ_TIMEOUT_S
    assert still_healthy(slow_server)


def test_idle_connections_are_closed(slow_server):
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", slow_server.port), timeout=CLIENT_TIMEOUT_S) as sock:
        reply = wait_closed(sock)  # never sends a byte
        assert reply == b"", f"the server sent {reply[:200]!r} to a connection that sent nothing"
    assert time.monotonic() - start >= READ_TIMEOUT_S


def test_many_half_open_connections_do_not_block_others(server):
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT_S) for _ in range(50)]
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


def counter(server: Server, name: str) -> float:
    """A /metrics sample, 0 while the server has not written it (a counter never seen yet)."""
    try:
        return server.metric(name)
    except KeyError:
        return 0.0


def post_in_background(server: Server, body: dict, results: dict, key: str) -> threading.Thread:
    """POSTs /embed on a thread of its own; results[key] = (status, inputs answered or error text)."""
    def run():
        try:
            response = httpx.post(server.url("/embed"), json=body, timeout=300)
            results[key] = (response.status_code,
                            len(response.json()) if response.status_code == 200 else response.text)
        except httpx.HTTPError as error:
            results[key] = (type(error).__name__, str(error))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def join(threads, limit_s: float = 300):
    for thread in threads:
        thread.join(limit_s)  # the limit only ends a hang: the check below fails then
        assert not thread.is_alive(), "a request never finished"


def test_overload_is_refused_fast_with_429():
    # Three requests at once at most, a queue of 1024 tokens (8 long texts), batches of two
    # long texts. The gate holds every batch, so what is in flight is exactly what the test put
    # there: each 429 below comes while the admitted requests are held, not by luck of timing.
    args = ["--max-concurrent-requests", "3", "--max-queue-tokens", "1024", "--max-client-batch-size", "256",
            "--max-batch-tokens", "256"]
    with Server(*args, gated=True) as s, httpx.Client(base_url=s.base, timeout=60) as client:
        results: dict = {}
        a = post_in_background(s, big_request(2), results, "a")  # 256 tokens: the first batch, held
        s.wait_until(lambda: s.gate()["held"] == 1, "a's batch held at the gate")
        b = post_in_background(s, big_request(4), results, "b")  # 512 tokens, queued behind it
        s.wait_until(lambda: s.metric("m3_queue_tokens") == 512, "b queued")
        c = post_in_background(s, big_request(4), results, "c")  # 512 more: the queue is full
        s.wait_until(lambda: s.metric("m3_queue_tokens") == 1024, "c queued")
        assert s.metric("m3_http_active_requests") == 3

        # Over --max-concurrent-requests: refused at once, while the three are still held.
        over = client.post("/embed", json={"inputs": "one more"})
        assert over.status_code == 429, over.text
        assert over.json()["error_type"] == "Overloaded" and "concurrent" in over.json()["error"]

        # One batch through: a is answered, and the next batch (two of b's texts) is held.
        s.release(1)
        join([a])
        assert results["a"] == (200, 2), results
        s.wait_until(lambda: (lambda g: g["passed"] == 1 and g["held"] == 1)(s.gate()), "the next batch held")
        s.wait_until(lambda: s.metric("m3_http_active_requests") == 2, "a's permit returned")
        assert s.metric("m3_queue_tokens") == 768

        # Admitted (two in flight of three), but 384 more tokens do not fit the queue: 429 at once.
        full = client.post("/embed", json=big_request(3))
        assert full.status_code == 429, full.text
        assert full.json()["error_type"] == "Overloaded" and "queue full" in full.json()["error"]
        # More than the whole queue could ever hold is not "try later": 413.
        never = client.post("/embed", json=big_request(16))  # 2048 tokens > 1024
        assert never.status_code == 413 and "queue" in never.json()["error"], never.text
        assert "b" not in results and "c" not in results  # still held all along

        s.open_gate()
        join([b, c])
        assert results["b"] == (200, 4) and results["c"] == (200, 4), results
        assert counter(s, 'm3_http_requests_total{route="/embed",status="429"}') == 2
        assert s.metric('m3_scheduler_requests_total{outcome="rejected"}') == 1  # the queue-full one
        assert s.metric('m3_scheduler_requests_total{outcome="completed"}') == 3


def test_disconnected_client_has_its_work_withdrawn():
    with Server("--max-client-batch-size", "256", "--max-batch-tokens", "1024", gated=True) as s:
        # A short request whose batch the gate holds keeps the single replica busy...
        results: dict = {}
        holder = post_in_background(s, {"inputs": "hold the replica"}, results, "holder")
        s.wait_until(lambda: s.gate()["held"] == 1, "the holder's batch held at the gate")
        # ...so these three are certainly still queued when their clients go away.
        socks = []
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", s.port), timeout=CLIENT_TIMEOUT_S)
            sock.sendall(request_bytes("POST", "/embed", json.dumps(big_request(8)).encode(), key=None))
            socks.append(sock)
        s.wait_until(lambda: s.metric("m3_queue_requests") == 3, "the three requests queued")
        for sock in socks:
            sock.close()

        cancelled = 'm3_scheduler_requests_total{outcome="cancelled"}'
        s.wait_until(lambda: s.metric(cancelled) == 3, "the three requests withdrawn")
        s.wait_until(lambda: counter(s, 'm3_http_requests_total{route="/embed",status="499"}') == 3,
                     "the three recorded as 499 (client closed)")
        assert s.metric("m3_queue_requests") == 0 and s.metric("m3_queue_tokens") == 0
        assert "holder" not in results  # the replica was held all along

        s.open_gate()
        join([holder])
        assert results["holder"] == (200, 1), results
        # Only the holder's batch ever ran: the withdrawn requests were never computed.
        assert s.gate()["passed"] == 1
        assert s.metric('m3_scheduler_requests_total{outcome="completed"}') == 1
        assert s.metric(cancelled) == 3
        assert httpx.get(s.url("/health"), timeout=CLIENT_TIMEOUT_S).status_code == 200
