#!/usr/bin/env python3
"""Deterministic benchmark workloads: token-length mixes, as token ids and as texts.

A length is the number of ids the model sees, `<s>` and `</s>` included (so 2 is the
empty text, 8192 the model's maximum).

| name | what |
| --- | --- |
| W1 | 64 texts x 128 tokens (short, uniform: the throughput case) |
| W2 | 64 texts, lengths 16..512 evenly spaced, shuffled (padding waste) |
| W3 | 2 texts x 2048 tokens |
| W4 | 1 text x 8192 tokens (the longest input the model takes) |
| mix | 256 texts, soak-distributed lengths capped (at 324) so the total is <= 40960 tokens (corpus-like) |
| soak(n, seed) | n lengths, log-uniform in 1..8192, clipped to [2, 8192], grouped in requests of 1..8 texts |

W1..W4 and mix are one request each (all texts in one call); a soak is many small requests.

Reranker workloads (query/passage pairs, bench/rerank_peers.py): lengths there count the pieces
of a text alone, without special tokens, so a pair `<s> q </s></s> p </s>` is q + p + 4 ids.

| name | what |
| --- | --- |
| R1 | 1 query of 16 pieces x 100 passages of 256 pieces (27,600 ids in pairs of 276) |
| R2 | 32 queries of 16..32 pieces x 20 passages of 128..256 pieces each (640 pairs, 140,515 ids in pairs of 150..292) |

`pair_texts(w, seed)`: [(query, [passages])] whose pieces are exactly those lengths, and whose
pairs every engine tokenizes to the same ids (`pair_problems`).

Two renderings of the same lengths:
- `token_ids(w, seed)`: `[0, random ids in 4..1200, 2]`, for engines that take ids. 4..1200
  are the fixture tokenizer's ordinary pieces (1201 would be `<mask>`).
- `texts(w, seed)`: strings that the fixture tokenizer (tests/fixtures/tiny-st, which the
  random benchmark models ship) turns into exactly that many ids. They are made of words from
  the fixture's multilingual training sentences, whose token counts are measured once.
  The two renderings are independent: the ids of a text are not `token_ids(...)`.

    .venv/bin/python bench/workloads.py            # summary of every workload
    .venv/bin/python bench/workloads.py --check    # self-check: exact lengths, determinism
"""
from __future__ import annotations

import argparse
import functools
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
TOKENIZER_DIR = FIXTURES / "tiny-st"
MAX_LEN = 8192
MIN_LEN = 2
ID_LO, ID_HI = 4, 1200  # inclusive; the fixture tokenizer's ordinary pieces
CLS, EOS = 0, 2


@dataclass(frozen=True)
class Workload:
    name: str
    lengths: tuple[int, ...]        # ids per text, specials included
    request_sizes: tuple[int, ...]  # texts per request, in order; sums to len(lengths)

    def requests(self) -> list[range]:
        """Index ranges of the texts of each request."""
        out, start = [], 0
        for k in self.request_sizes:
            out.append(range(start, start + k))
            start += k
        return out

    @property
    def total_tokens(self) -> int:
        return sum(self.lengths)

    def padded_tokens(self) -> int:
        """Tokens a pad-to-longest engine processes when each request is one batch."""
        return sum(len(r) * max(self.lengths[i] for i in r) for r in self.requests())


def _fixed(name: str, lengths: list[int]) -> Workload:
    return Workload(name, tuple(lengths), (len(lengths),))


def _w2_lengths() -> list[int]:
    lengths = [round(16 + i * (512 - 16) / 63) for i in range(64)]
    random.Random(2).shuffle(lengths)
    return lengths


MIX_TEXTS, MIX_TOKENS = 256, 40960


def _mix_lengths(n: int = MIX_TEXTS, budget: int = MIX_TOKENS) -> list[int]:
    """n lengths from the soak distribution (log-uniform in 1..8192, clipped to [2, 8192]),
    each then capped at the largest cap that keeps the total within `budget` tokens: a
    corpus-like mix of mostly short texts and chunks at the cap, in random order."""
    rng = random.Random("mix-lengths-0")
    raw = [min(MAX_LEN, max(MIN_LEN, round(math.exp(rng.uniform(0.0, math.log(MAX_LEN))))))
           for _ in range(n)]
    lo, hi = MIN_LEN, MAX_LEN  # largest cap with sum(min(l, cap)) <= budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(x, mid) for x in raw) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return [min(x, lo) for x in raw]


FIXED = {
    "W1": _fixed("W1", [128] * 64),
    "W2": _fixed("W2", _w2_lengths()),
    "W3": _fixed("W3", [2048] * 2),
    "W4": _fixed("W4", [8192]),
    "mix": _fixed("mix", _mix_lengths()),
}


def soak(n: int = 2000, seed: int = 0, max_request: int = 8) -> Workload:
    """n lengths log-uniform in 1..8192 (clipped to [2, 8192]), in requests of 1..max_request."""
    rng = random.Random(f"soak-lengths-{seed}")
    lengths = [min(MAX_LEN, max(MIN_LEN, round(math.exp(rng.uniform(0.0, math.log(MAX_LEN))))))
               for _ in range(n)]
    rng = random.Random(f"soak-requests-{seed}")
    sizes, left = [], n
    while left > 0:
        k = min(left, rng.randint(1, max_request))
        sizes.append(k)
        left -= k
    return Workload(f"soak-n{n}-s{seed}", tuple(lengths), tuple(sizes))


def resolve(workload) -> Workload:
    """A Workload, or a name: W1..W4, 'soak' (n=2000, seed=0) or 'soak:N' / 'soak:N:SEED'."""
    if isinstance(workload, Workload):
        return workload
    name = str(workload)
    if name in FIXED:
        return FIXED[name]
    if name == "soak" or name.startswith("soak:"):
        parts = name.split(":")[1:]
        n = int(parts[0]) if parts else 2000
        seed = int(parts[1]) if len(parts) > 1 else 0
        return soak(n, seed)
    raise ValueError(f"unknown workload {name!r}: W1, W2, W3, W4, mix, soak[:N[:SEED]]")


def lengths(workload) -> list[int]:
    return list(resolve(workload).lengths)


def token_ids(workload, seed: int = 0) -> list[list[int]]:
    """One id list per text: <s>, random ordinary piece ids, </s>; exactly the workload lengths."""
    w = resolve(workload)
    rng = random.Random(f"ids-{w.name}-{seed}")
    return [[CLS] + [rng.randint(ID_LO, ID_HI) for _ in range(n - 2)] + [EOS] for n in w.lengths]


# ---------------------------------------------------------------------------------------
# Texts of exact token lengths
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def tokenizer():
    """The fixture tokenizer (what the random benchmark models ship), via AutoTokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR), model_max_length=10**9)


@functools.lru_cache(maxsize=1)
def _word_table() -> tuple[tuple[str, ...], ...]:
    """table[k] = words that tokenize to exactly k pieces (k = 1..8), no <unk>, sorted.

    The XLM-R tokenizer splits on whitespace before SentencePiece, so the pieces of
    "w1 w2 ..." are the pieces of each word: a text's length is 2 + the sum of its words'.
    """
    if str(FIXTURES) not in sys.path:
        sys.path.insert(0, str(FIXTURES))
    from make_fixtures import TRAIN  # the sentences the fixture tokenizer was trained on

    words = sorted({w for sents in TRAIN.values() for s in sents for w in s.split() if w})
    tok = tokenizer()
    enc = tok(words, add_special_tokens=False)["input_ids"]
    table: list[list[str]] = [[] for _ in range(9)]
    for w, ids in zip(words, enc):
        if 1 <= len(ids) <= 8 and tok.unk_token_id not in ids:
            table[len(ids)].append(w)
    if not table[1]:
        raise RuntimeError("no one-piece words: cannot build exact lengths")
    return tuple(tuple(ws) for ws in table)


def _tied_segmentation(piece_str: str, scores: dict[str, float], tol: float = 1e-4) -> bool:
    """Whether the Unigram model has two best segmentations of piece_str (within tol): a tie
    that tokenizers may break differently (m3embed's tokenizer does, depending on the text
    before the word: "+1-555-0123" is '5' '55' or '55' '5')."""
    n = len(piece_str)
    best = [0.0] + [-math.inf] * n     # best[i]: best score of piece_str[:i]
    ways = [1] + [0] * n               # segmentations within tol of best[i]
    longest = max(map(len, scores))
    for i in range(1, n + 1):
        cands = [(best[j] + scores[piece_str[j:i]], ways[j]) for j in range(max(0, i - longest), i)
                 if ways[j] and piece_str[j:i] in scores]
        if cands:
            best[i] = max(c for c, _ in cands)
            ways[i] = sum(w for c, w in cands if c >= best[i] - tol)
    return ways[n] > 1


@functools.lru_cache(maxsize=1)
def _pair_word_table() -> tuple[tuple[str, ...], ...]:
    """_word_table without the words whose best segmentation is tied (_tied_segmentation), so
    that every engine's tokenizer gives the reranker pairs the same ids."""
    import json

    vocab = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    scores = {piece: score for piece, score in vocab[4:]}  # not <s> <pad> </s> <unk>
    tok = tokenizer()
    table = _word_table()
    out = []
    for words in table:
        ids = tok(list(words), add_special_tokens=False)["input_ids"] if words else []
        pieces = [tok.convert_ids_to_tokens(x) for x in ids]
        out.append(tuple(w for w, ps in zip(words, pieces) if not _tied_segmentation("".join(ps), scores)))
    return tuple(out)


def _text_of_length(rng: random.Random, n: int, table) -> str:
    budget = n - 2
    words = []
    counts = [k for k in range(1, len(table)) if table[k]]
    while budget > 0:
        k = rng.choice([c for c in counts if c <= budget])
        words.append(rng.choice(table[k]))
        budget -= k
    return " ".join(words)


def texts(workload, seed: int = 0) -> list[str]:
    """One text per length; the fixture tokenizer gives each exactly its length in ids."""
    w = resolve(workload)
    table = _word_table()
    rng = random.Random(f"texts-{w.name}-{seed}")
    return [_text_of_length(rng, n, table) for n in w.lengths]


# ---------------------------------------------------------------------------------------
# Reranker workloads: query/passage pairs
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairWorkload:
    name: str
    query_lengths: tuple[int, ...]                 # pieces per query, no special tokens
    passage_lengths: tuple[tuple[int, ...], ...]   # per query: pieces per passage

    @property
    def pairs(self) -> int:
        return sum(len(p) for p in self.passage_lengths)

    def pair_lengths(self) -> list[int]:
        """Ids per pair, `<s> q </s></s> p </s>`, in order (query by query)."""
        return [q + p + 4 for q, ps in zip(self.query_lengths, self.passage_lengths) for p in ps]

    @property
    def total_tokens(self) -> int:
        return sum(self.pair_lengths())

    def describe(self) -> str:
        def span(xs) -> str:
            s = sorted(xs)
            return f"{s[0]}" if s[0] == s[-1] else f"{s[0]}..{s[-1]}"

        n = len(self.query_lengths)
        return (f"{n} quer{'y' if n == 1 else 'ies'} of {span(self.query_lengths)} pieces x "
                f"{span(map(len, self.passage_lengths))} passages of "
                f"{span(x for ps in self.passage_lengths for x in ps)} pieces: {self.pairs} pairs, "
                f"{self.total_tokens:,} ids (pairs of {span(self.pair_lengths())})")


def _r2() -> PairWorkload:
    rng = random.Random("R2-lengths")
    queries = tuple(rng.randint(16, 32) for _ in range(32))
    passages = tuple(tuple(rng.randint(128, 256) for _ in range(20)) for _ in queries)
    return PairWorkload("R2", queries, passages)


PAIR_WORKLOADS = {
    "R1": PairWorkload("R1", (16,), ((256,) * 100,)),
    "R2": _r2(),
}


def resolve_pairs(workload) -> PairWorkload:
    if isinstance(workload, PairWorkload):
        return workload
    if workload in PAIR_WORKLOADS:
        return PAIR_WORKLOADS[workload]
    raise ValueError(f"unknown pair workload {workload!r}: {', '.join(PAIR_WORKLOADS)}")


def pair_texts(workload, seed: int = 0) -> list[tuple[str, list[str]]]:
    """[(query, [passage, ...])]: texts whose fixture-tokenizer pieces are exactly the lengths."""
    w = resolve_pairs(workload)
    table = _pair_word_table()
    rng = random.Random(f"pairs-{w.name}-{seed}")
    return [(_text_of_length(rng, q + 2, table), [_text_of_length(rng, p + 2, table) for p in ps])
            for q, ps in zip(w.query_lengths, w.passage_lengths)]


def pair_problems(groups: list[tuple[str, list[str]]], max_length: int = 512) -> list[str]:
    """Why the engines might not feed the same ids for these pairs (empty: they all do).

    m3embed and FlagReranker's id-level rule build `<s> q </s></s> p </s>` from the two texts'
    pieces, FlagReranker on transformers 5 decodes those pieces and tokenizes the two strings
    again as a pair, and CrossEncoder tokenizes the pair once (tests/fixtures/README.md,
    "Reranker goldens"). They agree when nothing is cut (the pair within max_length, the query
    within 3/4 of it) and decoding round-trips, which this checks pair by pair."""
    tok = tokenizer()
    out: list[str] = []
    for qi, (q, passages) in enumerate(groups):
        q_ids = tok(q, add_special_tokens=False)["input_ids"]
        if len(q_ids) > max_length * 3 // 4:
            out.append(f"query {qi}: {len(q_ids)} pieces, over FlagReranker's query_max_length")
        for pi, p in enumerate(passages):
            p_ids = tok(p, add_special_tokens=False)["input_ids"]
            want = [CLS] + q_ids + [EOS, EOS] + p_ids + [EOS]
            where = f"query {qi} passage {pi}"
            if len(want) > max_length:
                out.append(f"{where}: {len(want)} ids, over max_length {max_length}")
            if tok(q, p)["input_ids"] != want:
                out.append(f"{where}: the pair tokenizes differently from its two texts")
            dq = tok.decode(q_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            dp = tok.decode(p_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if tok(dq, dp)["input_ids"] != want:
                out.append(f"{where}: decoding and tokenizing again (FlagReranker on transformers 5) changes the ids")
    return out


def text_lengths(strings: list[str]) -> list[int]:
    """Ids per text with the fixture tokenizer, specials included, no truncation."""
    return [len(ids) for ids in tokenizer()(strings, add_special_tokens=True)["input_ids"]]


# ---------------------------------------------------------------------------------------
# Self-check and summary
# ---------------------------------------------------------------------------------------


def self_check(soak_n: int = 2000, verbose: bool = True) -> None:
    """Raise AssertionError unless every workload's ids and texts have exactly its lengths,
    ids are framed and in range, and everything is deterministic."""
    names = list(FIXED) + [soak(soak_n, 0), soak(200, 1)]
    for spec in names:
        w = resolve(spec)
        assert len(w.lengths) == sum(w.request_sizes), w.name
        assert all(MIN_LEN <= n <= MAX_LEN for n in w.lengths), w.name
        ids = token_ids(w, seed=0)
        assert [len(x) for x in ids] == list(w.lengths), f"{w.name}: id lengths"
        assert all(x[0] == CLS and x[-1] == EOS and all(ID_LO <= t <= ID_HI for t in x[1:-1])
                   for x in ids), f"{w.name}: id framing/range"
        assert ids == token_ids(w, seed=0) and (len(w.lengths) < 2 or ids != token_ids(w, seed=1)), \
            f"{w.name}: id determinism"
        t = texts(w, seed=0)
        got = text_lengths(t)
        bad = [(i, n, g) for i, (n, g) in enumerate(zip(w.lengths, got)) if n != g]
        assert not bad, f"{w.name}: {len(bad)} texts of the wrong length, e.g. (index, want, got) {bad[:3]}"
        assert t == texts(w, seed=0) and t != texts(w, seed=1), f"{w.name}: text determinism"
        if verbose:
            print(f"ok {w.name}: {len(w.lengths)} texts, {w.total_tokens} tokens, "
                  f"{len(w.request_sizes)} requests")
    for w in PAIR_WORKLOADS.values():
        groups = pair_texts(w, seed=0)
        tok = tokenizer()
        got_q = [len(tok(q, add_special_tokens=False)["input_ids"]) for q, _ in groups]
        got_p = [tuple(len(x) for x in tok(ps, add_special_tokens=False)["input_ids"]) for _, ps in groups]
        assert got_q == list(w.query_lengths) and got_p == list(w.passage_lengths), f"{w.name}: piece counts"
        assert groups == pair_texts(w, seed=0) and groups != pair_texts(w, seed=1), f"{w.name}: determinism"
        bad = pair_problems(groups)
        assert not bad, f"{w.name}: {len(bad)} pairs the engines would not all feed alike, e.g. {bad[:3]}"
        if verbose:
            print(f"ok {w.name}: {w.describe()}; the same ids for every engine")
    assert soak(50, 3) == soak(50, 3) and soak(50, 3) != soak(50, 4)
    big = soak(soak_n, 0).lengths
    assert soak_n < 1000 or (min(big) == MIN_LEN and max(big) > MAX_LEN // 2), "soak does not span the range"
    if verbose:
        print("workloads self-check passed")


def summary(w: Workload) -> str:
    s = sorted(w.lengths)
    med = s[len(s) // 2]
    return (f"{w.name:>14}: {len(s):5d} texts, {len(w.request_sizes):4d} requests, tokens {w.total_tokens:8d} "
            f"(min {s[0]}, median {med}, max {s[-1]}), padded per request {w.padded_tokens():8d}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark workloads (see the module doc).")
    ap.add_argument("--check", action="store_true", help="run the self-check")
    ap.add_argument("--soak-n", type=int, default=2000)
    args = ap.parse_args(argv)
    if args.check:
        self_check(args.soak_n)
        return 0
    for w in [*FIXED.values(), soak(args.soak_n, 0)]:
        print(summary(w))
    for w in PAIR_WORKLOADS.values():
        print(f"{w.name:>14}: {w.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
