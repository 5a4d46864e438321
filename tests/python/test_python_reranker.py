"""m3embed.FlagReranker: FlagEmbedding's FlagReranker API over the engine, against the goldens
of the real FlagReranker on tiny-reranker (its id-level rule) and against the real class live.
"""
from __future__ import annotations

import json
import math
import sys

import pytest

from fixture_env import FIXTURES, SOURCE_FIXTURES

m3embed = pytest.importorskip("m3embed", reason="the m3embed module is installed by scripts/test.sh")

GOLDEN = json.loads((FIXTURES / "golden" / "tiny-reranker.json").read_text(encoding="utf-8"))
MODEL = str(FIXTURES / "tiny-reranker")


def close(got, want, tol=1e-4):
    return abs(got - want) <= tol * max(1.0, abs(want))


@pytest.fixture(scope="module")
def reranker():
    return m3embed.FlagReranker(MODEL, threads=1)


@pytest.mark.parametrize("run", ["flag_reranker", "flag_reranker_short"])
def test_compute_score_equals_flag_reranker(reranker, run):
    ref = GOLDEN[run]
    pairs = [tuple(p) for p in GOLDEN["pairs"]]
    scores = reranker.compute_score(pairs, max_length=ref["max_length"])
    assert isinstance(scores, list) and all(isinstance(s, float) for s in scores)
    for got, want in zip(scores, ref["scores_ids_level"]):
        assert close(got, want)
    normalized = reranker.compute_score(pairs, max_length=ref["max_length"], normalize=True)
    for got, want in zip(normalized, ref["scores_ids_level"]):
        assert close(got, 1 / (1 + math.exp(-want)), 1e-5)


def test_readme_snippet_with_the_real_flag_reranker(reranker):
    """FlagEmbedding's README calls, with FlagEmbedding and with m3embed: same types, same numbers."""
    sys.path.insert(0, str(SOURCE_FIXTURES))
    import make_fixtures as mf  # noqa: E402
    sys.path.pop(0)
    real = mf.import_flag_reranker()(MODEL, use_fp16=False, devices="cpu")
    one = ["query", "a passage about the query"]
    several = [["what is panda?", "hi"], ["what is panda?", "The giant panda is a bear species endemic to China."]]
    for kwargs in ({}, {"normalize": True}):
        want, got = real.compute_score(one, **kwargs), reranker.compute_score(one, **kwargs)
        assert isinstance(want, list) and isinstance(got, list) and len(got) == len(want) == 1  # 1.4: a list of one
        assert close(got[0], float(want[0]))
        want, got = real.compute_score(several, **kwargs), reranker.compute_score(several, **kwargs)
        assert len(got) == len(want) and all(close(g, float(w)) for g, w in zip(got, want))


def test_wrong_model_and_arguments(reranker):
    with pytest.raises(m3embed.M3Error, match="is an embedder"):
        m3embed.FlagReranker(str(FIXTURES / "tiny-st"), threads=1).compute_score(["q", "p"])
    with pytest.raises(TypeError):
        reranker.compute_score([("q",)])
    with pytest.raises(TypeError):
        m3embed.FlagReranker(MODEL, not_an_option=1)
