"""A reranker and a mean-pooling embedder served by `m3embed serve`: TEI's /rerank and
/predict, the Cohere/Jina-style /v1/rerank, /embed and /v1/embeddings, against the goldens
of the reference libraries (FlagEmbedding's FlagReranker, sentence-transformers'
SentenceTransformer; tests/fixtures/xlmr_families.py), and the CLI `m3embed rerank`.
"""
from __future__ import annotations

import json
import math

import httpx
import numpy as np
import openai
import pytest

from test_server_cli import BINARY, FIXTURES, Server, run_cli

pytestmark = pytest.mark.skipif(not BINARY, reason="M3_BINARY is not set (ctest sets it)")

GOLDEN = json.loads((FIXTURES / "golden" / "tiny-reranker.json").read_text(encoding="utf-8"))
E5 = json.loads((FIXTURES / "golden" / "tiny-e5.json").read_text(encoding="utf-8"))
REF = GOLDEN["flag_reranker"]  # max_length 128 = the model's limit, query cut at 96
PAIRS = GOLDEN["pairs"]


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def reranker():
    with Server("--auto-truncate", model="tiny-reranker") as s:
        yield s
        assert s.stop() == 0


@pytest.fixture(scope="module")
def e5():
    with Server("--auto-truncate", model="tiny-e5") as s:
        yield s
        assert s.stop() == 0


def by_query():
    """The golden pairs grouped by query, with each pair's index."""
    groups: dict[str, list[int]] = {}
    for i, (query, _) in enumerate(PAIRS):
        groups.setdefault(query, []).append(i)
    return groups


def test_tei_rerank_equals_flag_reranker(reranker):
    for query, idx in by_query().items():
        texts = [PAIRS[i][1] for i in idx]
        raw = httpx.post(reranker.url("/rerank"), json={"query": query, "texts": texts, "raw_scores": True}).json()
        assert [r["score"] for r in raw] == sorted((r["score"] for r in raw), reverse=True)
        assert sorted(r["index"] for r in raw) == list(range(len(idx)))
        for r in raw:
            assert "text" not in r
            assert r["score"] == pytest.approx(REF["scores_ids_level"][idx[r["index"]]], abs=1e-4 * max(1, abs(r["score"])))
        scores = httpx.post(reranker.url("/rerank"), json={"query": query, "texts": texts, "return_text": True}).json()
        assert [s["score"] for s in scores] == sorted((s["score"] for s in scores), reverse=True)
        for s in scores:
            assert s["text"] == texts[s["index"]]
            assert s["score"] == pytest.approx(sigmoid(REF["scores_ids_level"][idx[s["index"]]]), abs=1e-5)


def test_cohere_rerank_equals_flag_reranker_with_top_n(reranker):
    query, idx = max(by_query().items(), key=lambda kv: len(kv[1]))
    documents = [PAIRS[i][1] for i in idx]
    body = {"model": "tiny-reranker", "query": query, "documents": [{"text": d} for d in documents], "top_n": 1,
            "return_documents": True}
    answer = httpx.post(reranker.url("/v1/rerank"), json=body).json()
    want = [sigmoid(REF["scores_ids_level"][i]) for i in idx]
    best = int(np.argmax(want))
    assert answer["model"] == "tiny-reranker" and answer["usage"]["total_tokens"] > 0 and answer["id"]
    assert len(answer["results"]) == 1
    assert answer["results"][0]["index"] == best
    assert answer["results"][0]["relevance_score"] == pytest.approx(want[best], abs=1e-5)
    assert answer["results"][0]["document"] == {"text": documents[best]}
    every = httpx.post(reranker.url("/v1/rerank"), json={"query": query, "documents": documents}).json()["results"]
    assert sorted(r["index"] for r in every) == list(range(len(documents)))
    for r in every:
        assert "document" not in r
        assert r["relevance_score"] == pytest.approx(want[r["index"]], abs=1e-5)


def test_pymilvus_tei_rerank_function(reranker):
    """pymilvus-model's TEIRerankFunction posts TEI's /rerank with return_text and keeps the top 5."""
    from pymilvus.model.reranker import TEIRerankFunction

    query, idx = max(by_query().items(), key=lambda kv: len(kv[1]))
    documents = [PAIRS[i][1] for i in idx]
    results = TEIRerankFunction(api_url=reranker.url(""))(query, documents)
    want = sorted(((sigmoid(REF["scores_ids_level"][i]), k) for k, i in enumerate(idx)), reverse=True)[:5]
    assert [r.index for r in results] == [k for _, k in want]
    for r, (score, k) in zip(results, want):
        assert r.text == documents[k] and r.score == pytest.approx(score, abs=1e-5)


def test_tei_predict_single_pair_and_batch(reranker):
    q, p = PAIRS[0]
    one = httpx.post(reranker.url("/predict"), json={"inputs": [q, p], "raw_scores": True}).json()
    assert one[0]["label"] == "LABEL_0"
    assert one[0]["score"] == pytest.approx(REF["scores_ids_level"][0], abs=1e-4 * max(1, abs(one[0]["score"])))
    batch = httpx.post(reranker.url("/predict"), json={"inputs": [[q, p], PAIRS[1]]}).json()
    assert len(batch) == 2
    assert batch[1][0]["score"] == pytest.approx(sigmoid(REF["scores_ids_level"][1]), abs=1e-5)


def test_the_wrong_kind_of_model_is_a_clear_424(reranker, e5):
    for url, body in [("/embed", {"inputs": "hello"}), ("/v1/embeddings", {"input": "hello", "model": "x"}),
                      ("/m3/encode", {"input": ["hello"]})]:
        r = httpx.post(reranker.url(url), json=body)
        assert r.status_code == 424, (url, r.text)
        assert "is a classifier" in r.text
    r = httpx.post(e5.url("/rerank"), json={"query": "q", "texts": ["a"]})
    assert r.status_code == 424 and "model is not a re-ranker model" in r.json()["error"]
    assert r.json()["error_type"] == "Backend"
    r = httpx.post(e5.url("/v1/rerank"), json={"query": "q", "documents": ["a"]})
    assert r.status_code == 424 and r.json()["error"]["type"] == "invalid_request_error"


def test_rerank_refusals(reranker):
    url = reranker.url("/rerank")
    assert httpx.post(url, json={"query": "q", "texts": []}).status_code == 422
    assert httpx.post(url, json={"texts": ["a"]}).status_code == 422
    left = httpx.post(url, json={"query": "q", "texts": ["a"], "truncation_direction": "Left"})
    assert left.status_code == 422 and "not supported for pairs" in left.text
    long_text = "word " * 300
    cut = httpx.post(url, json={"query": "q", "texts": [long_text], "truncate": False})
    assert cut.status_code == 413 and "texts[0]" in cut.text
    assert httpx.post(url, json={"query": "q", "texts": [long_text], "truncate": True}).status_code == 200
    assert httpx.post(reranker.url("/v1/rerank"), json={"query": "q", "documents": ["a"], "top_n": 0}).status_code == 422


def test_mean_pooling_embedder_serves_sentence_transformers_vectors(e5):
    texts = E5["texts"][1:8]
    want = np.array(E5["embeddings"][1:8])
    got = np.array(httpx.post(e5.url("/embed"), json={"inputs": texts}).json())
    assert np.abs(got - want).max() < 1e-5
    client = openai.OpenAI(base_url=e5.url("/v1"), api_key="x")
    vectors = np.array([d.embedding for d in client.embeddings.create(model="tiny-e5", input=texts).data])
    assert np.abs(vectors - want).max() < 1e-5
    raw = np.array(httpx.post(e5.url("/embed"), json={"inputs": texts, "normalize": False}).json())
    assert np.abs(raw - np.array(E5["mean_pooled"][1:8])).max() < 1e-4 * np.abs(raw).max()
    info = httpx.get(e5.url("/info")).json()
    assert info["max_input_length"] == E5["max_seq_length"]


def test_cli_rerank(tmp_path):
    source = tmp_path / "in.jsonl"
    groups = by_query()
    lines = [{"query": q, "passages": [PAIRS[i][1] for i in idx]} for q, idx in groups.items()]
    lines.append(PAIRS[0])
    source.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = run_cli("rerank", "--model", str(FIXTURES / "tiny-reranker"), "--input", str(source), "--output", str(out),
                     "--max-length", "128", "-q")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row, idx in zip(rows, groups.values()):
        assert row["scores"] == pytest.approx([REF["scores_ids_level"][i] for i in idx], abs=1e-4, rel=1e-4)
    assert rows[-1]["score"] == pytest.approx(REF["scores_ids_level"][0], abs=1e-4, rel=1e-4)
    short = GOLDEN["flag_reranker_short"]
    normalized = run_cli("rerank", "--model", str(FIXTURES / "tiny-reranker"), "--input", str(source), "--output",
                         str(out), "--max-length", "32", "--normalize", "-q")
    assert normalized.returncode == 0, normalized.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row, idx in zip(rows, groups.values()):
        assert row["scores"] == pytest.approx([sigmoid(short["scores_ids_level"][i]) for i in idx], abs=1e-5)
    wrong = run_cli("rerank", "--model", str(FIXTURES / "tiny-st"), "--input", str(source), "-q")
    assert wrong.returncode != 0 and "is not a reranker" in wrong.stderr
