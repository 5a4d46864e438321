"""examples/hybrid_search.py against a served fixture model and Qdrant in local mode:
indexing (dense + sparse from one /m3/encode per batch), RRF fusion and the ColBERT rerank
through /m3/score. The fixture's weights are random, so the asserted answer is one that holds
for any weights: a query equal to a passage finds it first (dense cosine 1, the largest
lexical overlap, ColBERT score 1), and every reranked score is what /m3/score gives."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from test_server_cli import BINARY, Server

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hybrid_search.py"

pytestmark = pytest.mark.skipif(not BINARY, reason="M3_BINARY is not set (ctest sets it)")


def test_hybrid_search_finds_the_passage_and_reranks_with_colbert(tmp_path):
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import hybrid_search
    finally:
        sys.path.pop(0)
    passages = hybrid_search.CORPUS
    with Server("--auto-truncate") as server:
        result = subprocess.run(
            [sys.executable, str(EXAMPLE), "--url", server.base, "--top-k", "3", "--batch-size", "3", "--json",
             "--query", passages[2], "--query", passages[5]],
            capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        results = json.loads(result.stdout)
        with httpx.Client(base_url=server.base, timeout=60) as client:
            for query, hits in results.items():
                assert len(hits) == 3
                assert hits[0]["text"] == query, hits
                assert hits[0]["colbert"] == pytest.approx(1.0, abs=1e-5)
                assert [h["colbert"] for h in hits] == sorted((h["colbert"] for h in hits), reverse=True)
                scored = client.post("/m3/score", json={"pairs": [[query, h["text"]] for h in hits]}).json()["data"]
                for h, s in zip(hits, sorted(scored, key=lambda d: d["index"])):
                    assert h["colbert"] == s["colbert"] and h["dense"] == s["dense"]
        assert server.stop() == 0
