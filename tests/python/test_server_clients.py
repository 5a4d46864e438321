"""`m3embed serve` through real clients nobody here wrote: the official `openai` package,
`httpx`, `requests` and `curl`. Every answer must equal the engine's own output for the same
input, as the CLI (`m3embed encode`, `score`, `tokenize`) prints it, within 1e-6.
"""
from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess

import httpx
import numpy as np
import openai
import pytest
import requests

from test_server_cli import BINARY, FIXTURES, HIDDEN, MAX_SEQ_LEN, Server, run_cli

TOL = 1e-6
MODEL_DIR = str(FIXTURES / "tiny-st")

pytestmark = pytest.mark.skipif(not BINARY, reason="M3_BINARY is not set (ctest sets it)")

TEXTS = [
    "hello world", "猫", "ok 👍", "Straße", "¿Qué?", " x ", "  leading,   inner   runs\tof\t\twhitespace\nand newlines  ",
    "我们在图书馆学习中文，老师很好。", "東京の天気は今日も晴れです。", "مرحبا، كيف حالك اليوم؟",
    "The quick brown fox jumps over the lazy dog. " * 8,  # longer than 128 tokens: truncated on both sides
    "<s> literal specials </s> <mask> <pad>", "a",
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def encode_reference(texts, tmp_path, name="ref"):
    """What `m3embed encode` prints for `texts` (dense, sparse, ColBERT), cut at 128 tokens."""
    src, out = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.out.jsonl"
    write_jsonl(src, [{"text": t} for t in texts])
    result = run_cli("encode", "--model", MODEL_DIR, "--input", str(src), "--output", str(out), "--dense", "--sparse",
                     "--colbert", "--max-length", str(MAX_SEQ_LEN), "--threads", "1", "-q", timeout=300)
    assert result.returncode == 0, result.stderr
    return read_jsonl(out)


def token_ids(texts, tmp_path):
    src, out = tmp_path / "tok.jsonl", tmp_path / "tok.out.jsonl"
    write_jsonl(src, [{"text": t} for t in texts])
    result = run_cli("tokenize", "--model", MODEL_DIR, "--input", str(src), "--output", str(out))
    assert result.returncode == 0, result.stderr
    return [row["input_ids"] for row in read_jsonl(out)]


def close(a, b, tol=TOL):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and np.allclose(a, b, rtol=0, atol=tol)


def renormalized(v, d):
    v = np.asarray(v[:d], dtype=np.float64)
    return v / max(np.linalg.norm(v), 1e-12)


@pytest.fixture(scope="module")
def server():
    with Server("--auto-truncate", "--http-threads", "2") as s:
        yield s
        assert s.stop() == 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return encode_reference(TEXTS, tmp_path_factory.mktemp("ref"))


@pytest.fixture(scope="module")
def lengths(tmp_path_factory):
    return [min(len(ids), MAX_SEQ_LEN) for ids in token_ids(TEXTS, tmp_path_factory.mktemp("tok"))]


# --------------------------------------------------------------------------- openai


def test_openai_client_default_base64(server, reference, lengths):
    client = openai.OpenAI(base_url=server.url("/v1"), api_key="unused")
    response = client.embeddings.create(input=TEXTS, model="bge-m3")  # the client asks for base64
    assert response.model == "bge-m3"
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    for item, ref in zip(response.data, reference):
        assert close(item.embedding, ref["dense_vecs"])
    assert response.usage.prompt_tokens == sum(lengths)
    assert response.usage.total_tokens == sum(lengths)


def test_openai_client_float_and_dimensions(server, reference):
    client = openai.OpenAI(base_url=server.url("/v1"), api_key="unused")
    plain = client.embeddings.create(input=TEXTS[0], model="m", encoding_format="float")
    assert close(plain.data[0].embedding, reference[0]["dense_vecs"])
    for fmt in ("float", "base64"):
        cut = client.embeddings.create(input=TEXTS[:3], model="m", dimensions=16, encoding_format=fmt)
        for item, ref in zip(cut.data, reference):
            vector = item.embedding  # asked for explicitly, base64 comes back undecoded
            if fmt == "base64":
                vector = np.frombuffer(base64.b64decode(vector), dtype="<f4")
            assert len(vector) == 16
            assert close(vector, renormalized(ref["dense_vecs"], 16))
            assert abs(np.linalg.norm(vector) - 1) < 1e-5


def test_openai_client_token_ids_equal_texts(server, reference, tmp_path):
    ids = [i[:MAX_SEQ_LEN - 1] + [2] if len(i) > MAX_SEQ_LEN else i for i in token_ids(TEXTS, tmp_path)]
    client = openai.OpenAI(base_url=server.url("/v1"), api_key="unused")
    several = client.embeddings.create(input=ids, model="m")
    for item, ref in zip(several.data, reference):
        assert close(item.embedding, ref["dense_vecs"])
    one = client.embeddings.create(input=ids[0], model="m")  # one list of ids is one input
    assert len(one.data) == 1 and close(one.data[0].embedding, reference[0]["dense_vecs"])


def test_openai_client_sees_typed_errors(server):
    client = openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as empty:
        client.embeddings.create(input="", model="m")
    assert empty.value.body["param"] == "input"
    with pytest.raises(openai.UnprocessableEntityError):
        client.embeddings.create(input="x", model="m", dimensions=HIDDEN + 1, encoding_format="base64")
    with Server("--api-key", "right") as keyed:
        wrong = openai.OpenAI(base_url=keyed.url("/v1"), api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.embeddings.create(input="x", model="m")
        right = openai.OpenAI(base_url=keyed.url("/v1"), api_key="right", max_retries=0)
        assert len(right.embeddings.create(input="x", model="m").data) == 1
        assert [m.id for m in right.models.list()] == ["tiny-st"]


# --------------------------------------------------------------------------- TEI routes (httpx)


def test_tei_embed_sparse_all_with_httpx(server, reference):
    with httpx.Client(base_url=server.base, timeout=30) as client:
        dense = client.post("/embed", json={"inputs": TEXTS})
        assert dense.status_code == 200, dense.text
        for got, ref in zip(dense.json(), reference):
            assert close(got, ref["dense_vecs"])
        single = client.post("/embed", json={"inputs": TEXTS[1], "dimensions": 8}).json()
        assert len(single) == 1 and close(single[0], renormalized(reference[1]["dense_vecs"], 8))

        sparse = client.post("/embed_sparse", json={"inputs": TEXTS})
        assert sparse.status_code == 200
        for got, ref in zip(sparse.json(), reference):
            assert [e["index"] for e in got] == sorted(e["index"] for e in got), "TEI lists indices ascending"
            weights = {str(e["index"]): e["value"] for e in got}
            assert weights.keys() == ref["lexical_weights"].keys()
            assert all(abs(weights[k] - v) <= TOL for k, v in ref["lexical_weights"].items())

        colbert = client.post("/embed_all", json={"inputs": TEXTS})
        assert colbert.status_code == 200
        for got, ref in zip(colbert.json(), reference):
            assert close(got, ref["colbert_vecs"])

        tokens = client.post("/tokenize", json={"inputs": ["hello world"]}).json()
        assert tokens[0][0] == {"id": 0, "text": "<s>", "special": True, "start": None, "stop": None}
        assert tokens[0][-1]["id"] == 2 and tokens[0][-1]["special"] is True


def test_tei_truncate_flag(tmp_path):
    long_text = "The quick brown fox jumps over the lazy dog. " * 8
    with Server() as strict, httpx.Client(base_url=strict.base, timeout=30) as client:
        refused = client.post("/embed", json={"inputs": long_text})
        assert refused.status_code == 413
        assert refused.json()["error_type"] == "Validation"
        assert "128" in refused.json()["error"]
        cut = client.post("/embed", json={"inputs": long_text, "truncate": True})
        assert cut.status_code == 200
        assert close(cut.json()[0], encode_reference([long_text], tmp_path)[0]["dense_vecs"])


# --------------------------------------------------------------------------- native routes


def test_native_encode(server, reference, tmp_path):
    with httpx.Client(base_url=server.base, timeout=30) as client:
        body = {"input": TEXTS + [""], "return_dense": True, "return_sparse": True, "return_colbert_vecs": True,
                "return_tokens": True}
        got = client.post("/m3/encode", json=body)
        assert got.status_code == 200, got.text
        data = got.json()["data"]
        short = client.post("/m3/encode", json={"input": TEXTS[10], "max_length": 16, "truncate": True}).json()
    # The references (CLI runs) after the requests: no keep-alive connection sits idle while they run.
    empty_ref = encode_reference([""], tmp_path, "empty")[0]  # FlagEmbedding encodes "" as <s></s>
    ids = token_ids(TEXTS + [""], tmp_path)
    for item, ref, want_ids in zip(data, reference + [empty_ref], ids):
        assert close(item["dense_vecs"], ref["dense_vecs"])
        assert item["lexical_weights"].keys() == ref["lexical_weights"].keys()
        assert all(abs(item["lexical_weights"][k] - v) <= TOL for k, v in ref["lexical_weights"].items())
        assert close(item["colbert_vecs"], ref["colbert_vecs"])
        assert item["truncated"] == (len(want_ids) > MAX_SEQ_LEN)
        cut = want_ids if len(want_ids) <= MAX_SEQ_LEN else want_ids[:MAX_SEQ_LEN - 1] + [2]
        assert item["input_ids"] == cut
        assert len(item["tokens"]) == len(cut) and item["tokens"][0] == "<s>"
    assert len(short["data"][0]["dense_vecs"]) == HIDDEN and short["usage"]["prompt_tokens"] == 16


def test_native_score_equals_cli_score(server, tmp_path):
    pairs = [{"query": TEXTS[i], "passage": TEXTS[(i + 3) % len(TEXTS)]} for i in range(len(TEXTS))]
    src, out = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    write_jsonl(src, pairs)
    result = run_cli("score", "--model", MODEL_DIR, "--input", str(src), "--output", str(out), "--weights",
                     "0.4,0.2,0.4", "--max-query-length", "16", "--max-passage-length", "128", "--threads", "1", "-q")
    assert result.returncode == 0, result.stderr
    expected = read_jsonl(out)
    got = requests.post(server.url("/m3/score"), timeout=30, json={
        "pairs": [[p["query"], p["passage"]] for p in pairs], "weights": [0.4, 0.2, 0.4], "max_query_length": 16})
    assert got.status_code == 200, got.text
    for item, ref in zip(got.json()["data"], expected):
        for key in ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"):
            assert abs(item[key] - ref[key]) <= TOL, (key, item, ref)


# --------------------------------------------------------------------------- requests, curl


def test_tokenize_with_requests(server, tmp_path):
    response = requests.post(server.url("/tokenize"), json={"inputs": TEXTS, "add_special_tokens": True}, timeout=30)
    assert response.status_code == 200
    assert [[t["id"] for t in seq] for seq in response.json()] == token_ids(TEXTS, tmp_path)
    bare = requests.post(server.url("/tokenize"), json={"inputs": "hello", "add_special_tokens": False}, timeout=30)
    assert all(not t["special"] for t in bare.json()[0])


def test_tokenize_offsets_are_tei_byte_offsets(server):
    """TEI's /tokenize: the added <s> and </s> are special with null offsets; every other
    token has start/stop, byte offsets into the input equal to tokenizers' (TEI's router
    reports the Rust library's), and text, the input's bytes there. Dify cuts a long text at
    the start of the first token past its limit; that cut must be a prefix of the text."""
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(MODEL_DIR + "/tokenizer.json")
    response = requests.post(server.url("/tokenize"), json={"inputs": TEXTS}, timeout=30)
    assert response.status_code == 200
    for text, tokens, e in zip(TEXTS, response.json(), reference.encode_batch(TEXTS)):
        data = text.encode("utf-8")
        starts = [len(text[:i].encode("utf-8")) for i in range(len(text) + 1)]
        assert [t["id"] for t in tokens] == e.ids
        assert [t["special"] for t in tokens] == [bool(m) for m in e.special_tokens_mask]
        for t, (a, b), special in zip(tokens, e.offsets, e.special_tokens_mask):
            if special:
                assert t["start"] is None and t["stop"] is None and t["text"] in ("<s>", "</s>")
            else:
                assert (t["start"], t["stop"]) == (starts[a], starts[b]), (text, t)
                assert t["text"].encode("utf-8") == data[t["start"]:t["stop"]]
    long_text = TEXTS[10]
    tokens = requests.post(server.url("/tokenize"), json={"inputs": long_text}, timeout=30).json()[0]
    data = long_text.encode("utf-8")
    k = next(k for k in range(50, len(tokens) - 1)
             if data[tokens[k]["start"] - 1:tokens[k]["start"]] == b" " and tokens[k - 1]["stop"] <= tokens[k]["start"])
    cut = data[:tokens[k]["start"]].decode("utf-8")  # where Dify cuts: a word starts there
    assert long_text.startswith(cut) and len(cut) > 0
    kept = requests.post(server.url("/tokenize"), json={"inputs": cut}, timeout=30).json()[0]
    assert [t["id"] for t in kept[1:-1]] == [t["id"] for t in tokens[1:k]]


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "30", *args], capture_output=True, text=True, timeout=60)


def test_curl(server, reference, tmp_path):
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"input": TEXTS[:4], "encoding_format": "base64"}))
    result = curl("-H", "Content-Type: application/json", "--data-binary", f"@{body}", server.url("/v1/embeddings"))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)["data"]
    for item, ref in zip(data, reference):
        assert close(np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4"), ref["dense_vecs"])
    # curl with Expect: 100-continue gets its answer (whether the server's "100 Continue" came
    # is shown below, without timing curl's fallback wait).
    result = curl("-H", "Expect: 100-continue", "-H", "Content-Type: application/json", "--data-binary", f"@{body}",
                  "-w", "\n%{http_code}", server.url("/v1/embeddings"))
    assert result.stdout.rsplit("\n", 1)[1] == "200", result.stdout + result.stderr
    health = curl("-i", server.url("/health"))
    assert health.stdout.startswith("HTTP/1.1 200")


def test_expect_100_continue_is_answered_before_the_body(server, reference):
    """The server says "100 Continue" while the body is still unsent: the client waits for it
    (with a timeout that only ends a hang) and sends the body only after it arrived."""
    data = json.dumps({"input": TEXTS[:2], "encoding_format": "float"}).encode()
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nExpect: 100-continue\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head)  # no body yet
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = sock.recv(65536)
            assert chunk, f"the server closed the connection instead of answering 100: {interim!r}"
            interim += chunk
        interim, rest = interim.split(b"\r\n\r\n", 1)
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        assert rest == b"", rest  # nothing else before the body: the request is not complete yet
        sock.sendall(data)
        (status, body), = read_responses(sock, 1)
    assert status == 200, body
    for item, ref in zip(json.loads(body)["data"], reference):
        assert close(item["embedding"], ref["dense_vecs"])


# --------------------------------------------------------------------------- concurrency, connections


def test_200_concurrent_clients_each_get_their_own_answer(server, tmp_path):
    texts = [f"{TEXTS[i % len(TEXTS)][:200]} #{i}" for i in range(200)]
    reference = encode_reference(texts, tmp_path, "many")
    routes = ["/v1/embeddings", "/embed", "/m3/encode"]

    async def one(client, i):
        route = routes[i % len(routes)]
        body = {"input": texts[i]} if route != "/embed" else {"inputs": texts[i]}
        if route == "/v1/embeddings":
            body["encoding_format"] = "float"
        response = await client.post(route, json=body)
        assert response.status_code == 200, response.text
        payload = response.json()
        if route == "/v1/embeddings":
            return payload["data"][0]["embedding"]
        if route == "/embed":
            return payload[0]
        return payload["data"][0]["dense_vecs"]

    async def run():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=server.base, limits=limits, timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(200)))

    answers = asyncio.run(run())
    for i, (answer, ref) in enumerate(zip(answers, reference)):
        assert close(answer, ref["dense_vecs"]), i


def http_request(path: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def read_responses(sock, count):
    """Reads `count` Content-Length framed responses: [(status, body bytes)]."""
    buffer, responses = b"", []
    while len(responses) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
        while b"\r\n\r\n" in buffer:
            head, rest = buffer.split(b"\r\n\r\n", 1)
            length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")][0].split(b":")[1])
            if len(rest) < length:
                break
            responses.append((int(head.split(b" ")[1]), rest[:length]))
            buffer = rest[length:]
    return responses


def test_keep_alive_and_pipelined_requests_answer_in_order(server, reference):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        requests_bytes = b"".join(http_request("/embed", {"inputs": TEXTS[i]}) for i in (2, 0, 1))
        sock.sendall(requests_bytes)
        responses = read_responses(sock, 3)
        assert [status for status, _ in responses] == [200, 200, 200]
        for (_, body), i in zip(responses, (2, 0, 1)):
            assert close(json.loads(body)[0], reference[i]["dense_vecs"])
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # the connection is still usable
        assert read_responses(sock, 1)[0][0] == 200


def test_metrics_after_traffic(server):
    # Its own traffic, answered before /metrics is read (not what earlier tests happened to send).
    assert requests.post(server.url("/v1/embeddings"), json={"input": "a"}, timeout=30).status_code == 200
    assert requests.post(server.url("/embed"), json={"inputs": "a"}, timeout=30).status_code == 200
    assert requests.post(server.url("/v1/embeddings"), json={"input": ""}, timeout=30).status_code == 422
    text = requests.get(server.url("/metrics"), timeout=30).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['m3_http_requests_total{route="/v1/embeddings",status="200"}'] >= 1
    assert samples['m3_http_requests_total{route="/v1/embeddings",status="422"}'] >= 1
    assert samples['m3_http_requests_total{route="/embed",status="200"}'] >= 1
    assert samples["m3_tokens_total"] > 0 and samples["m3_sequences_total"] > 0
    assert samples["m3_batch_tokens_count"] > 0
    assert samples['m3_batch_tokens_bucket{le="+Inf"}'] == samples["m3_batch_tokens_count"]
    assert samples['m3_http_request_duration_seconds_count{route="/embed"}'] >= 1
    for name in ("m3_queue_requests", "m3_queue_tokens", "m3_queue_max_tokens", "m3_memory_resident_bytes",
                 'm3_memory_planned_bytes{part="total"}', "m3_request_queue_seconds_count",
                 "m3_request_inference_seconds_count", "m3_ready"):
        assert name in samples, name
    assert samples["m3_ready"] == 1


def test_tei_aliases_and_sagemaker_routes(server, reference):
    """POST / and POST /invocations are /embed (huggingface_hub's InferenceClient(model=URL) and
    SageMaker post there), GET /ping is /health, and /info carries TEI's fields."""
    with httpx.Client(base_url=server.base, timeout=30) as client:
        for path in ("/", "/invocations"):
            r = client.post(path, json={"inputs": TEXTS[:3]})
            assert r.status_code == 200, (path, r.text)
            assert all(close(g, ref["dense_vecs"]) for g, ref in zip(r.json(), reference)), path
        assert client.get("/ping").status_code == 200
        info = client.get("/info").json()
        assert info["served_model_name"] == info["model_id"]
        assert info["tokenization_workers"] == 2
        for field in ("model_sha", "max_batch_requests", "sha", "docker_label"):
            assert field in info, field


def test_openai_sdk_with_base_url_at_the_server_root(server, reference):
    """The openai SDK without /v1 in base_url posts /embeddings (TEI has that alias too)."""
    client = openai.OpenAI(base_url=server.base, api_key="unused", max_retries=0)
    got = client.embeddings.create(model="bge-m3", input=TEXTS[:2])
    assert [close(d.embedding, ref["dense_vecs"]) for d, ref in zip(got.data, reference)] == [True, True]


# --------------------------------------------------------------------------- huggingface_hub


def test_huggingface_hub_inference_client(server, reference, tmp_path):
    """huggingface_hub's InferenceClient pointed at the server: feature_extraction on the bare
    URL (it posts to /) and on /embed, with truncate and left truncation, and
    sentence_similarity (/similarity)."""
    from huggingface_hub import InferenceClient

    for url in (server.base, server.url("/embed")):
        got = InferenceClient(model=url).feature_extraction(TEXTS[0])
        assert close(np.asarray(got).reshape(-1), reference[0]["dense_vecs"]), url

    # Left truncation keeps the end of a long text: equal to embedding the ids that do so.
    long_text = TEXTS[10]
    ids = token_ids([long_text], tmp_path)[0]
    assert len(ids) > MAX_SEQ_LEN
    kept = [ids[0]] + ids[len(ids) - (MAX_SEQ_LEN - 1):]
    left = InferenceClient(model=server.url("/embed")).feature_extraction(
        long_text, truncate=True, truncation_direction="left")
    with httpx.Client(base_url=server.base, timeout=30) as client:
        by_ids = client.post("/embed", json={"inputs": kept}).json()[0]
        right = client.post("/embed", json={"inputs": long_text, "truncate": True}).json()[0]
    assert close(np.asarray(left).reshape(-1), by_ids)
    assert not close(np.asarray(left).reshape(-1), right)

    scores = InferenceClient(model=server.url("/similarity")).sentence_similarity(
        TEXTS[0], other_sentences=[TEXTS[0], TEXTS[1], TEXTS[2]])
    want = [float(np.dot(reference[0]["dense_vecs"], reference[k]["dense_vecs"])) for k in range(3)]
    assert close(scores, want)


def test_tei_decode(server, tmp_path):
    """/decode gives what the model's tokenizer (transformers) decodes, specials skipped or not."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    texts = ["hello world", "Straße", "ok 👍, yes", "  leading spaces"]
    ids = token_ids(texts, tmp_path)
    with httpx.Client(base_url=server.base, timeout=30) as client:
        one = client.post("/decode", json={"ids": ids[0]})
        assert one.status_code == 200 and one.json() == [tokenizer.decode(ids[0], skip_special_tokens=True)], one.text
        for skip in (True, False):
            got = client.post("/decode", json={"ids": ids, "skip_special_tokens": skip}).json()
            assert got == [tokenizer.decode(i, skip_special_tokens=skip) for i in ids], skip
        bad = client.post("/decode", json={"ids": [10**9]})
        assert bad.status_code == 422 and "token id" in bad.text


# --------------------------------------------------------------------------- langchain-openai


class _Cl100kStandIn:
    """tiktoken's cl100k_base downloads its BPE file at first use, which this machine cannot:
    this stand-in gives ids the way it would (arbitrary vocabulary ids, no XLM-R specials), so
    langchain-openai's own code builds and sends its real request body of token arrays."""
    name = "cl100k_base"

    def encode(self, text, **kwargs):
        return [1000 + ord(c) % 50000 for c in text]

    encode_ordinary = encode


def test_langchain_openai_default_is_refused_not_wrong_and_raw_text_works(server, reference, monkeypatch):
    """langchain-openai's default (check_embedding_ctx_length=True) tokenizes with tiktoken and
    sends those ids: refused with a message naming the fix, never a meaningless vector. With
    check_embedding_ctx_length=False it sends the texts and gets the engine's vectors."""
    import tiktoken
    from langchain_openai import OpenAIEmbeddings

    monkeypatch.setattr(tiktoken, "encoding_for_model", lambda name: _Cl100kStandIn())
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: _Cl100kStandIn())

    default = OpenAIEmbeddings(model="bge-m3", base_url=server.url("/v1"), api_key="unused", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        default.embed_documents(TEXTS[:2])
    assert "check_embedding_ctx_length=False" in str(refused.value)

    raw = OpenAIEmbeddings(model="bge-m3", base_url=server.url("/v1"), api_key="unused", max_retries=0,
                           check_embedding_ctx_length=False)
    got = raw.embed_documents(TEXTS[:3])
    assert all(close(g, ref["dense_vecs"]) for g, ref in zip(got, reference[:3]))
    assert close(raw.embed_query(TEXTS[0]), reference[0]["dense_vecs"])


def test_tei_embed_normalize_false_is_the_raw_cls_state(server, tmp_path):
    """normalize=false (haystack's and huggingface_hub's option) returns the CLS row of the last
    hidden state, as transformers computes it, not the normalized vector."""
    import torch
    from huggingface_hub import InferenceClient
    from transformers import AutoModel

    model = AutoModel.from_pretrained(MODEL_DIR).eval()
    texts = TEXTS[:4]
    ids = token_ids(texts, tmp_path)
    with torch.no_grad():
        want = [model(input_ids=torch.tensor([i])).last_hidden_state[0, 0].numpy() for i in ids]
    with httpx.Client(base_url=server.base, timeout=30) as client:
        got = client.post("/embed", json={"inputs": texts, "normalize": False})
        assert got.status_code == 200, got.text
        for g, w in zip(got.json(), want):
            assert close(g, w, tol=1e-4), (np.max(np.abs(np.asarray(g) - w)))
        cut = client.post("/embed", json={"inputs": texts[0], "normalize": False, "dimensions": 8}).json()[0]
        assert close(cut, want[0][:8], tol=1e-4)
    hub = InferenceClient(model=server.url("/embed")).feature_extraction(texts[0], normalize=False)
    assert close(np.asarray(hub).reshape(-1), want[0], tol=1e-4)
