"""The committed reranker and mean-pooling fixtures (tests/fixtures/tiny-reranker, tiny-e5) and
their goldens are what the reference libraries compute now: FlagEmbedding's FlagReranker and
sentence-transformers' CrossEncoder on tiny-reranker, SentenceTransformer on tiny-e5, run live
on CPU through the generator's own golden functions (tests/fixtures/xlmr_families.py).

Ids and texts must match exactly; floats within 1e-5, relative above 1 (the goldens keep 8
significant digits; scores reach about 11).
"""
from __future__ import annotations

import json
import math
import sys

import pytest

from fixture_env import FIXTURES, SOURCE_FIXTURES

sys.path.insert(0, str(SOURCE_FIXTURES))
import make_fixtures as mf  # noqa: E402
import xlmr_families as xf  # noqa: E402

sys.path.pop(0)

TOL = 1e-5
RERANKER = FIXTURES / "tiny-reranker"
E5 = FIXTURES / "tiny-e5"


def golden(name: str) -> dict:
    return json.loads((FIXTURES / "golden" / f"{name}.json").read_text(encoding="utf-8"))


def assert_matches(live, want, where: str = "") -> None:
    """Same structure; equal ints, strings and bools; floats within TOL * max(1, |want|)."""
    if isinstance(want, dict):
        assert isinstance(live, dict) and sorted(live) == sorted(want), where
        for key in want:
            assert_matches(live[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(live, list) and len(live) == len(want), where
        for i, (a, b) in enumerate(zip(live, want)):
            assert_matches(a, b, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(live, bool):
        assert abs(live - want) <= TOL * max(1.0, abs(want)), f"{where}: {live} != {want}"
    else:
        assert live == want and type(live) is type(want), f"{where}: {live!r} != {want!r}"


@pytest.fixture(scope="module")
def reranker_golden() -> dict:
    return golden("tiny-reranker")


@pytest.fixture(scope="module")
def flag_reranker():
    return mf.import_flag_reranker()(str(RERANKER), use_fp16=False, devices="cpu")


def test_reranker_pairs_are_the_generators(reranker_golden):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(RERANKER))
    assert reranker_golden["pairs"] == xf.reranker_pairs(tok, mf.max_tokens(xf.RERANKERS["tiny-reranker"]))


@pytest.mark.parametrize("key", ["flag_reranker", "flag_reranker_short"])
def test_flag_reranker_live(reranker_golden, flag_reranker, key):
    want = reranker_golden[key]
    live = xf.flag_reranker_golden(flag_reranker, reranker_golden["pairs"], want["max_length"])
    assert_matches(live, want, key)
    assert want["scores_normalized"] == pytest.approx([1 / (1 + math.exp(-s)) for s in want["scores"]], abs=1e-7)


@pytest.mark.parametrize("key", ["flag_reranker", "flag_reranker_short"])
def test_ids_level_rule_is_flagembeddings_legacy_truncation(reranker_golden, flag_reranker, key):
    """The id-level rule equals FlagEmbedding's own re-implementation of the legacy
    only_second truncation (tokenizer_compat._truncate_second_sequence)."""
    from FlagEmbedding.utils.tokenizer_compat import _truncate_second_sequence

    tok = flag_reranker.tokenizer
    want = reranker_golden[key]
    max_len, qml = want["max_length"], want["query_max_length"]
    assert qml == max_len * 3 // 4
    for (q, p), ids in zip(reranker_golden["pairs"], want["input_ids_ids_level"]):
        q_ids = tok(q, add_special_tokens=False, truncation=True, max_length=qml)["input_ids"]
        p_ids = tok(p, add_special_tokens=False, truncation=True, max_length=max_len)["input_ids"]
        p_ids = _truncate_second_sequence(tok, q_ids, p_ids, max_len - tok.num_special_tokens_to_add(pair=True),
                                          "only_second")
        assert ids == [tok.cls_token_id, *q_ids, tok.sep_token_id, tok.sep_token_id, *p_ids, tok.sep_token_id]
    # Where both rules feed the same ids, the scores agree (to batch-padding noise).
    for same, a, b in zip([not d for d in want["ids_level_differs"]], want["scores"], want["scores_ids_level"]):
        if same:
            assert abs(a - b) <= 1e-4 * max(1.0, abs(a))


@pytest.mark.parametrize("key", ["cross_encoder", "cross_encoder_short"])
def test_cross_encoder_live(reranker_golden, key):
    want = reranker_golden[key]
    max_len = None if key == "cross_encoder" else want["max_length"]
    live = xf.cross_encoder_golden(RERANKER, reranker_golden["pairs"], max_len)
    assert_matches(live, want, key)
    assert want["default_activation_fn"] == "Sigmoid"
    assert want["predict"] == pytest.approx([1 / (1 + math.exp(-s)) for s in want["logits"]], abs=1e-7)


def test_cross_encoder_tokenizes_the_pair_with_longest_first(reranker_golden):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(RERANKER))
    for key in ("cross_encoder", "cross_encoder_short"):
        want = reranker_golden[key]
        for (q, p), ids in zip(reranker_golden["pairs"], want["input_ids"]):
            # Batched, as CrossEncoder calls it: unbatched, transformers 5 drops an empty text_pair.
            assert ids == tok([q], [p], truncation="longest_first", max_length=want["max_length"])["input_ids"][0]


def test_reranker_scores_take_both_signs(reranker_golden):
    scores = reranker_golden["flag_reranker"]["scores"]
    assert min(scores) < -1 and max(scores) > 1


def test_e5_live():
    want = golden("tiny-e5")
    live = xf.st_embedder_golden(E5, "tiny-e5", xf.ST_EMBEDDERS["tiny-e5"])
    assert_matches(live, want, "tiny-e5")
    assert want["max_seq_length"] == 96 and max(len(ids) for ids in want["input_ids"]) == 96


def test_e5_hub_layout_loads_as_sentence_transformers_6_saves_it(tmp_path):
    """tiny-e5 holds the Hub's (sentence-transformers 2/3) files; sentence-transformers 6 reads
    them to the same model that its own save layout gives."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    texts = golden("tiny-e5")["texts"]
    hub = SentenceTransformer(str(E5), device="cpu")
    hub.save(str(tmp_path / "st6"), create_model_card=False)
    st6 = SentenceTransformer(str(tmp_path / "st6"), device="cpu")
    assert json.loads((tmp_path / "st6" / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "mean"
    assert st6.max_seq_length == hub.max_seq_length == 96
    assert np.array_equal(hub.encode(texts), st6.encode(texts))
