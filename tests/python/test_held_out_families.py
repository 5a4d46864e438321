"""Held-out models of shapes the project has not seen, generated at test time by the real
transformers and sentence-transformers (tests/fixtures/make_held_out_model.py, goldens by the
real FlagEmbedding and sentence-transformers): a reranker scored through /rerank, /v1/rerank
and `m3embed rerank`, and a mean-pooling embedder in sentence-transformers 6's own file layout
through /embed and /v1/embeddings, all within 1e-4 of the references.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import httpx
import numpy as np
import pytest

from fixture_env import SOURCE_FIXTURES
from test_server_cli import BINARY, Server

pytestmark = pytest.mark.skipif(not BINARY, reason="M3_BINARY is not set (ctest sets it)")


def generate(tmp_path_factory, name, *args):
    out = tmp_path_factory.mktemp(name)
    model, golden = out / "model", out / "golden.json"
    subprocess.run([sys.executable, str(SOURCE_FIXTURES / "make_held_out_model.py"), str(model), *args,
                    "--golden", str(golden)], check=True, capture_output=True, timeout=600)
    return model, json.loads(golden.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    # Head size 32, an FFN width that is no power of two, 198 tokens.
    return generate(tmp_path_factory, "reranker", "--kind", "reranker", "--hidden", "96", "--layers", "3", "--heads", "3",
                    "--intermediate", "200", "--positions", "200", "--seed", "11")


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    # sentence-transformers 6's layout: its module paths, "pooling_mode": "mean", the limit (80)
    # in tokenizer_config.json's model_max_length.
    return generate(tmp_path_factory, "st6", "--kind", "st-mean", "--layout", "st6", "--hidden", "64", "--layers", "2",
                    "--heads", "2", "--intermediate", "136", "--positions", "120", "--max-seq-length", "80",
                    "--seed", "12")


def close(got, want, tol=1e-4):
    return abs(got - want) <= tol * max(1.0, abs(want))


def test_held_out_reranker_matches_flag_reranker(reranker, tmp_path):
    model, golden = reranker
    ref = golden["flag_reranker"]
    with Server("--max-seq-len", str(ref["max_length"]), "--auto-truncate", model=str(model)) as server:
        for i, (query, passage) in enumerate(golden["pairs"]):
            raw = httpx.post(server.url("/rerank"), json={"query": query, "texts": [passage], "raw_scores": True}).json()
            assert close(raw[0]["score"], ref["scores_ids_level"][i]), (i, raw, ref["scores_ids_level"][i])
            cohere = httpx.post(server.url("/v1/rerank"), json={"query": query, "documents": [passage]}).json()
            want = 1 / (1 + math.exp(-ref["scores_ids_level"][i]))
            assert close(cohere["results"][0]["relevance_score"], want, 1e-5)
        assert server.stop() == 0
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in golden["pairs"]), encoding="utf-8")
    out = tmp_path / "scores.jsonl"
    short = golden["flag_reranker_short"]
    result = subprocess.run([BINARY, "rerank", "--model", str(model), "--input", str(source), "--output", str(out),
                             "--max-length", str(short["max_length"]), "--query-max-length",
                             str(short["query_max_length"]), "-q"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    scores = [json.loads(line)["score"] for line in out.read_text().splitlines()]
    for i, score in enumerate(scores):
        assert close(score, short["scores_ids_level"][i]), (i, score)


def test_held_out_st6_mean_pooling_embedder_matches_sentence_transformers(embedder):
    model, golden = embedder
    with Server("--auto-truncate", model=str(model)) as server:  # an absolute path replaces the fixture dir
        info = httpx.get(server.url("/info")).json()
        assert info["max_input_length"] == golden["max_seq_length"] == 80
        assert info["model_type"] == {"embedding": {"pooling": "mean"}}
        texts, want = golden["texts"][1:], np.array(golden["embeddings"][1:])  # TEI refuses the empty text [0]
        assert golden["texts"][0] == ""
        got = np.array(httpx.post(server.url("/embed"), json={"inputs": texts}).json())
        assert np.abs(got - want).max() < 1e-4
        data = httpx.post(server.url("/v1/embeddings"), json={"input": texts, "model": "e5"}).json()["data"]
        assert np.abs(np.array([d["embedding"] for d in data]) - want).max() < 1e-4
        assert server.stop() == 0
