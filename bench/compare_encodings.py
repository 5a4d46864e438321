#!/usr/bin/env python3
"""Compare two `m3embed encode` outputs (JSON lines) of the same texts: stdlib only.

Prints one JSON object: texts, least dense cosine, least ColBERT row cosine, the largest
lexical-weight difference over ids both kept, and how many ids only one side kept. Used by
scripts/gpu-check.sh (CUDA fp16/bf16 against CPU fp32).

    python3 bench/compare_encodings.py cpu-fp32.jsonl cuda-fp16.jsonl
"""
from __future__ import annotations

import json
import math
import sys


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.split("\n\n")[-1].strip(), file=sys.stderr)
        return 2
    with open(argv[1]) as f_ref, open(argv[2]) as f_got:
        ref, got = [json.loads(l) for l in f_ref], [json.loads(l) for l in f_got]
    if len(ref) != len(got):
        print(json.dumps({"error": f"{len(ref)} texts against {len(got)}"}))
        return 1
    dense, colbert, lexical, only_one = 1.0, 1.0, 0.0, 0
    for r, g in zip(ref, got):
        if "dense_vecs" in r:
            dense = min(dense, cosine(r["dense_vecs"], g["dense_vecs"]))
        for a, b in zip(r.get("colbert_vecs", []), g.get("colbert_vecs", [])):
            colbert = min(colbert, cosine(a, b))
        lr, lg = r.get("lexical_weights", {}), g.get("lexical_weights", {})
        for k in lr.keys() & lg.keys():
            lexical = max(lexical, abs(lr[k] - lg[k]))
        only_one += len(lr.keys() ^ lg.keys())
    print(json.dumps({"texts": len(ref), "least_dense_cosine": round(dense, 6),
                      "least_colbert_cosine": round(colbert, 6), "largest_lexical_difference": round(lexical, 6),
                      "lexical_ids_on_one_side_only": only_one}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
