#!/usr/bin/env python3
"""Hybrid search with m3embed and a real vector database (qdrant-client in local mode).

What a retrieval team does with BGE-M3, end to end, against a running `m3embed serve`:

1. Index: one `POST /m3/encode` per batch of passages returns the dense vector and the
   lexical weights together (one forward pass); both go into one Qdrant point, as the named
   vectors "dense" (cosine) and "sparse" (Qdrant's sparse vector: token id -> weight).
2. Query: the query's dense and sparse vectors each fetch candidates, fused by reciprocal
   rank (Qdrant's `Fusion.RRF`).
3. Rerank: the fused top-k goes through `POST /m3/score`, and is reordered by the ColBERT
   score (BGE-M3's multi-vector interaction), or by `--rerank-mode` another of its scores.

Qdrant runs in this process (`QdrantClient(":memory:")`, or `--qdrant-path DIR` to keep it),
so nothing but m3embed needs to run. Passages come from a text file (one per line) or JSONL
with a "text" field; without --passages a small built-in corpus is used.

    m3embed serve --model BAAI/bge-m3 --port 8080 &
    python examples/hybrid_search.py --url http://127.0.0.1:8080 --query "What is BGE M3?"
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx
from qdrant_client import QdrantClient, models

CORPUS = [
    "BGE M3 is an embedding model supporting dense retrieval, lexical matching and multi-vector interaction.",
    "BM25 is a bag-of-words retrieval function that ranks documents by the query terms appearing in each.",
    "ColBERT scores a query against a passage by matching every query token with its best passage token.",
    "Reciprocal rank fusion combines several rankings by summing one over each document's rank.",
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "A sparse vector stores only its non-zero entries, as pairs of index and value.",
    "XLM-RoBERTa is a multilingual transformer encoder trained on one hundred languages.",
]


def read_passages(path: str | None) -> list[str]:
    if path is None:
        return list(CORPUS)
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"hybrid_search: --passages {path}: no such file")
    lines = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if p.suffix == ".jsonl":
        return [json.loads(line)["text"] for line in lines]
    return lines


class M3Client:
    """The two m3embed routes this example needs."""

    def __init__(self, url: str, api_key: str | None):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=120)

    def _post(self, path: str, body: dict) -> dict:
        r = self.http.post(path, json=body)
        if r.status_code != 200:
            raise SystemExit(f"hybrid_search: {path} answered {r.status_code}: {r.text}")
        return r.json()

    def encode(self, texts: list[str]) -> list[dict]:
        """Dense vectors and lexical weights of texts, from one forward pass."""
        out = self._post("/m3/encode", {"input": texts, "return_dense": True, "return_sparse": True,
                                        "truncate": True})
        return sorted(out["data"], key=lambda d: d["index"])

    def score(self, query: str, passages: list[str]) -> list[dict]:
        out = self._post("/m3/score", {"pairs": [[query, p] for p in passages]})
        return sorted(out["data"], key=lambda d: d["index"])


def sparse_vector(lexical_weights: dict[str, float]) -> models.SparseVector:
    ids = sorted(int(k) for k in lexical_weights)
    return models.SparseVector(indices=ids, values=[float(lexical_weights[str(i)]) for i in ids])


def build_index(db: QdrantClient, m3: M3Client, passages: list[str], batch_size: int, collection: str) -> None:
    first = m3.encode(passages[:1])[0]
    db.create_collection(
        collection,
        vectors_config={"dense": models.VectorParams(size=len(first["dense_vecs"]), distance=models.Distance.COSINE)},
        sparse_vectors_config={"sparse": models.SparseVectorParams()},
    )
    for start in range(0, len(passages), batch_size):
        batch = passages[start:start + batch_size]
        points = [
            models.PointStruct(id=start + i, payload={"text": text},
                               vector={"dense": e["dense_vecs"], "sparse": sparse_vector(e["lexical_weights"])})
            for i, (text, e) in enumerate(zip(batch, m3.encode(batch)))
        ]
        db.upsert(collection, points=points)


def search(db: QdrantClient, m3: M3Client, query: str, top_k: int, rerank_mode: str, collection: str) -> list[dict]:
    """Dense + sparse candidates fused by RRF, then reranked by m3embed's scores."""
    q = m3.encode([query])[0]
    fused = db.query_points(
        collection,
        prefetch=[models.Prefetch(query=q["dense_vecs"], using="dense", limit=4 * top_k),
                  models.Prefetch(query=sparse_vector(q["lexical_weights"]), using="sparse", limit=4 * top_k)],
        query=models.FusionQuery(fusion=models.Fusion.RRF),
        limit=top_k,
        with_payload=True,
    ).points
    texts = [p.payload["text"] for p in fused]
    scores = m3.score(query, texts) if texts else []
    hits = [{"id": p.id, "text": t, "fused_rank": r + 1, "rrf": p.score, **{k: s[k] for k in
            ("dense", "sparse", "colbert", "colbert+sparse+dense")}}
            for r, (p, t, s) in enumerate(zip(fused, texts, scores))]
    return sorted(hits, key=lambda h: -h[rerank_mode])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="the m3embed server (default: %(default)s)")
    ap.add_argument("--api-key", default=None, help="the server's API key, if it has one")
    ap.add_argument("--passages", default=None, help="a text file (one passage a line) or JSONL with \"text\"")
    ap.add_argument("--query", action="append", required=True, help="a query (repeat for several)")
    ap.add_argument("--top-k", type=int, default=3, help="hits kept after fusion and reranked (default: %(default)s)")
    ap.add_argument("--rerank-mode", default="colbert", choices=("colbert", "dense", "sparse", "colbert+sparse+dense"),
                    help="the /m3/score score the hits are reordered by (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=64, help="passages per /m3/encode call (default: %(default)s)")
    ap.add_argument("--qdrant-path", default=None, help="keep the Qdrant collection here (default: in memory)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = ap.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        ap.error("--top-k and --batch-size must be at least 1")

    passages = read_passages(args.passages)
    if not passages:
        raise SystemExit("hybrid_search: no passages")
    m3 = M3Client(args.url, args.api_key)
    db = QdrantClient(path=args.qdrant_path) if args.qdrant_path else QdrantClient(":memory:")
    collection = "passages"
    if db.collection_exists(collection):
        db.delete_collection(collection)
    build_index(db, m3, passages, args.batch_size, collection)
    results = {query: search(db, m3, query, args.top_k, args.rerank_mode, collection) for query in args.query}
    if args.json:
        print(json.dumps(results, indent=1, ensure_ascii=False))
    else:
        for query, hits in results.items():
            print(f"\n{query}")
            for h in hits:
                print(f"  {h[args.rerank_mode]:.4f}  (fused #{h['fused_rank']})  {h['text']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
