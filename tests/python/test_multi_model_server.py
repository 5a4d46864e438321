"""One `m3embed serve` for several models (an embedder, a reranker and a mean-pooling
embedder): requests route by their "model" field, else to the first model of the kind
their route needs; one --threads and one --memory-limit are shared; /v1/models, /info and
/metrics show each model. Numbers are checked against the reference libraries' goldens.
"""
from __future__ import annotations

import json
import math
import re
import subprocess

import httpx
import numpy as np
import pytest

from test_server_cli import BINARY, FIXTURES, Server

pytestmark = pytest.mark.skipif(not BINARY, reason="M3_BINARY is not set (ctest sets it)")

M3 = json.loads((FIXTURES / "golden" / "tiny-st.json").read_text(encoding="utf-8"))
E5 = json.loads((FIXTURES / "golden" / "tiny-e5.json").read_text(encoding="utf-8"))
RERANK = json.loads((FIXTURES / "golden" / "tiny-reranker.json").read_text(encoding="utf-8"))
LIMIT = 96 << 20


@pytest.fixture(scope="module")
def server():
    args = ["--model", f"rr={FIXTURES / 'tiny-reranker'}", "--model", f"e5={FIXTURES / 'tiny-e5'}",
            "--memory-limit", str(LIMIT)]
    with Server(*args) as s:  # Server passes --model tiny-st first, and --threads 1
        yield s
        assert s.stop() == 0


def test_models_are_listed_and_planned_within_one_limit(server):
    names = [m["id"] for m in httpx.get(server.url("/v1/models")).json()["data"]]
    assert names == ["tiny-st", "rr", "e5"]
    info = httpx.get(server.url("/info")).json()
    assert [(m["name"], m["kind"]) for m in info["models"]] == [("tiny-st", "embedder"), ("rr", "reranker"),
                                                                  ("e5", "embedder")]
    assert sum(m["planned_bytes"] for m in info["models"]) <= LIMIT
    assert len({m["max_batch_tokens"] for m in info["models"]}) == 1  # one shared batch size
    assert "3 models share 1 CPU threads: 1 each" in server.log()
    metrics = httpx.get(server.url("/metrics")).text
    for name, kind in [("tiny-st", "embedder"), ("rr", "reranker"), ("e5", "embedder")]:
        assert f'm3_model_info{{model="{name}",kind="{kind}"}} 1' in metrics
        assert re.search(rf'm3_model_memory_planned_bytes{{model="{name}"}} \d+', metrics)


def test_requests_route_by_model_or_by_kind(server):
    texts = M3["texts"][1:4]
    # No model: the first embedder (tiny-st, BGE-M3's CLS pooling).
    got = np.array(httpx.post(server.url("/embed"), json={"inputs": texts}).json())
    assert np.abs(got - np.array(M3["dense_vecs"][1:4])).max() < 1e-5
    # By name: the mean-pooling embedder.
    data = httpx.post(server.url("/v1/embeddings"), json={"model": "e5", "input": E5["texts"][1:4]}).json()["data"]
    assert np.abs(np.array([d["embedding"] for d in data]) - np.array(E5["embeddings"][1:4])).max() < 1e-5
    # /rerank goes to the one reranker.
    query, passage = RERANK["pairs"][0]
    scores = httpx.post(server.url("/rerank"), json={"query": query, "texts": [passage], "raw_scores": True}).json()
    want = RERANK["flag_reranker"]["scores_ids_level"][0]
    assert scores[0]["score"] == pytest.approx(want, abs=1e-4 * max(1, abs(want)))
    cohere = httpx.post(server.url("/v1/rerank"), json={"model": "some-client-default", "query": query,
                                                        "documents": [passage]}).json()
    assert cohere["results"][0]["relevance_score"] == pytest.approx(1 / (1 + math.exp(-want)), abs=1e-5)


def test_unknown_or_wrong_models_are_refused(server):
    # Two embedders: an unknown name cannot be routed by kind.
    r = httpx.post(server.url("/v1/embeddings"), json={"model": "text-embedding-3-small", "input": "hi"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert '"tiny-st", "e5"' in r.json()["error"]["message"]
    r = httpx.post(server.url("/v1/embeddings"), json={"model": "rr", "input": "hi"})
    assert r.status_code == 424 and "is a classifier" in r.json()["error"]["message"]
    r = httpx.post(server.url("/rerank"), json={"model": "e5", "query": "q", "texts": ["a"]})
    assert r.status_code == 424 and "model is not a re-ranker model" in r.json()["error"]


def test_a_limit_too_small_for_the_models_together_is_refused_at_start():
    result = subprocess.run([BINARY, "serve", "--model", str(FIXTURES / "tiny-st"), "--model",
                             f"rr={FIXTURES / 'tiny-reranker'}", "--memory-limit", "1MiB", "--port", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "cannot hold these 2 models together" in result.stderr + result.stdout
    same = subprocess.run([BINARY, "serve", "--model", f"a={FIXTURES / 'tiny-st'}", "--model",
                           f"a={FIXTURES / 'tiny-e5'}", "--port", "0"], capture_output=True, text=True, timeout=120)
    assert same.returncode != 0 and 'two models are named "a"' in same.stderr + same.stdout
