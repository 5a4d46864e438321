"""The Python module (`pip install .`, scripts/test.sh installs it into the test venv):
FlagEmbedding's BGEM3FlagModel API over the engine, against FlagEmbedding itself.

- FlagEmbedding's README snippets for BGE-M3, run twice on a fixture model: once with
  `from FlagEmbedding import BGEM3FlagModel`, once with `from m3embed import ...`; every
  number agrees within 1e-5 and every result has FlagEmbedding's type.
- The fixtures' FlagEmbedding goldens (dense, lexical, ColBERT) within 1e-5.
- Several threads encoding at once get what one thread gets.
- Ctrl-C during a long encode raises KeyboardInterrupt and leaves the engine usable (the
  interrupt is raised from the progress callback after the first chunk: no timing).
- Wrong arguments raise TypeError/ValueError; engine errors raise m3embed.M3Error with
  the engine's message.
"""
from __future__ import annotations

import json
import signal
import threading

import numpy as np
import pytest

from fixture_env import FIXTURES, import_bge_m3

try:
    import m3embed
except ImportError as e:  # a failure, not a skip: scripts/test.sh installs it
    raise AssertionError(f"the m3embed module is not installed in this venv ({e}); run scripts/test.sh") from e

TOL = 1e-5
MODEL = str(FIXTURES / "tiny-st")


@pytest.fixture(scope="module")
def ours():
    return m3embed.BGEM3FlagModel(MODEL, use_fp16=True, devices="cpu", threads=2)


@pytest.fixture(scope="module")
def theirs():
    return import_bge_m3()(MODEL, use_fp16=True, devices="cpu")


def readme_snippets(BGEM3FlagModel, model_path):
    """FlagEmbedding's README for BGE-M3 (Usage: dense, sparse, multi-vector, all three), with
    the model path swapped for the fixture's; returns everything the snippets print or keep."""
    model = BGEM3FlagModel(model_path, use_fp16=True, devices="cpu")
    sentences_1 = ["What is BGE M3?", "Defination of BM25"]
    sentences_2 = ["BGE M3 is an embedding model supporting dense retrieval, lexical matching and multi-vector interaction.",
                   "BM25 is a bag-of-words retrieval function that ranks a set of documents based on the query terms appearing in each document"]
    kept = {}
    embeddings_1 = model.encode(sentences_1, batch_size=12, max_length=8192)['dense_vecs']
    embeddings_2 = model.encode(sentences_2)['dense_vecs']
    kept["dense_similarity"] = embeddings_1 @ embeddings_2.T

    output_1 = model.encode(sentences_1, return_dense=True, return_sparse=True, return_colbert_vecs=False)
    output_2 = model.encode(sentences_2, return_dense=True, return_sparse=True, return_colbert_vecs=False)
    kept["tokens"] = model.convert_id_to_token(output_1['lexical_weights'])
    kept["lexical_scores"] = model.compute_lexical_matching_score(output_1['lexical_weights'][0], output_2['lexical_weights'][0])
    kept["lexical_scores_other"] = model.compute_lexical_matching_score(output_1['lexical_weights'][0], output_1['lexical_weights'][1])

    output_1 = model.encode(sentences_1, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    output_2 = model.encode(sentences_2, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    kept["colbert_0"] = model.colbert_score(output_1['colbert_vecs'][0], output_2['colbert_vecs'][0])
    kept["colbert_1"] = model.colbert_score(output_1['colbert_vecs'][0], output_2['colbert_vecs'][1])

    sentence_pairs = [[i, j] for i in sentences_1 for j in sentences_2]
    kept["compute_score"] = model.compute_score(sentence_pairs, max_passage_length=128,
                                                weights_for_different_modes=[0.4, 0.2, 0.4])
    kept["outputs"] = output_1
    return kept


@pytest.mark.parametrize("fixture", ["tiny-st", "tiny-bin", "tiny-h64"])
def test_readme_snippets_give_flagembeddings_numbers(fixture):
    want = readme_snippets(import_bge_m3(), str(FIXTURES / fixture))
    got = readme_snippets(m3embed.BGEM3FlagModel, str(FIXTURES / fixture))
    np.testing.assert_allclose(got["dense_similarity"], want["dense_similarity"], atol=TOL)
    assert [list(d) for d in got["tokens"]] == [list(d) for d in want["tokens"]]  # decoded tokens, in order
    for g, w in zip(got["tokens"], want["tokens"]):
        assert dict(g) == pytest.approx(dict(w), abs=TOL)
    for key in ("lexical_scores", "lexical_scores_other", "colbert_0", "colbert_1"):
        assert float(got[key]) == pytest.approx(float(want[key]), abs=TOL), key
    for mode, values in want["compute_score"].items():
        np.testing.assert_allclose(got["compute_score"][mode], values, atol=TOL, err_msg=mode)
    # The same types as FlagEmbedding's, so code downstream cannot tell.
    g, w = got["outputs"], want["outputs"]
    assert type(g["dense_vecs"]) is type(w["dense_vecs"]) and g["dense_vecs"].dtype == w["dense_vecs"].dtype
    assert g["dense_vecs"].shape == w["dense_vecs"].shape
    assert all(isinstance(k, str) for d in g["lexical_weights"] for k in d)
    assert [list(d) for d in g["lexical_weights"]] == [list(d) for d in w["lexical_weights"]]
    assert all(type(v) is type(wv) for gd, wd in zip(g["lexical_weights"], w["lexical_weights"])
               for v, wv in zip(gd.values(), wd.values()))
    assert [c.shape for c in g["colbert_vecs"]] == [c.shape for c in w["colbert_vecs"]]


@pytest.mark.parametrize("fixture", ["tiny-st", "tiny-bin", "tiny-h64"])
def test_fixture_goldens(fixture):
    golden = json.loads((FIXTURES / "golden" / f"{fixture}.json").read_text())
    model = m3embed.BGEM3FlagModel(str(FIXTURES / fixture), use_fp16=False, devices="cpu", threads=2)
    out = model.encode(golden["texts"], max_length=golden["max_length"], return_dense=True, return_sparse=True,
                       return_colbert_vecs=True)
    np.testing.assert_allclose(out["dense_vecs"], np.array(golden["dense_vecs"]), atol=TOL)
    for got, want in zip(out["lexical_weights"], golden["lexical_weights"]):
        assert list(got) == list(want)
        np.testing.assert_allclose([got[k] for k in want], [want[k] for k in want], atol=TOL)
    for got, want in zip(out["colbert_vecs"], golden["colbert_vecs"]):
        np.testing.assert_allclose(got, np.array(want), atol=TOL)


def test_single_string_gives_single_results(ours):
    one = ours.encode("What is BGE M3?", return_sparse=True, return_colbert_vecs=True)
    many = ours.encode(["What is BGE M3?"], return_sparse=True, return_colbert_vecs=True)
    assert one["dense_vecs"].ndim == 1
    np.testing.assert_array_equal(one["dense_vecs"], many["dense_vecs"][0])
    assert dict(one["lexical_weights"]) == dict(many["lexical_weights"][0])
    np.testing.assert_array_equal(one["colbert_vecs"], many["colbert_vecs"][0])


def test_query_instruction_is_prepended():
    plain = m3embed.BGEM3FlagModel(MODEL, devices="cpu", threads=1)
    instructed = m3embed.BGEM3FlagModel(MODEL, devices="cpu", threads=1, query_instruction_for_retrieval="query: ")
    np.testing.assert_array_equal(instructed.encode_queries(["fox"])["dense_vecs"],
                                  plain.encode(["query: fox"])["dense_vecs"])
    np.testing.assert_array_equal(instructed.encode_corpus(["fox"])["dense_vecs"], plain.encode(["fox"])["dense_vecs"])


def test_threads_encoding_at_once_get_what_one_gets(ours):
    texts = [f"text number {i} " + "word " * (i % 37) for i in range(120)]
    want = ours.encode(texts, return_sparse=True)
    results, errors = {}, []

    def work(k):
        try:
            results[k] = ours.encode(texts, return_sparse=True)
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got in results.values():
        np.testing.assert_array_equal(got["dense_vecs"], want["dense_vecs"])
        assert [dict(d) for d in got["lexical_weights"]] == [dict(d) for d in want["lexical_weights"]]


def test_ctrl_c_stops_an_encode_and_leaves_the_engine_usable(ours):
    engine = ours.engine
    texts = [f"sentence {i} " + "more words here " * 5 for i in range(200)]
    want = engine.encode(texts[:3])["dense"]
    seen = []

    def progress(done):  # after the first chunk: as if the user pressed Ctrl-C then
        seen.append(done)
        if len(seen) == 1:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        engine.encode(texts, chunk_tokens=64, progress=progress)
    assert len(seen) == 1 and 0 < seen[0] < len(texts), seen
    np.testing.assert_array_equal(engine.encode(texts[:3])["dense"], want)


def test_wrong_arguments_raise_clear_errors(ours):
    with pytest.raises(TypeError):
        m3embed.BGEM3FlagModel(123)
    with pytest.raises(TypeError):
        ours.encode(123)
    with pytest.raises(TypeError):
        ours.encode(["fine", 7])
    with pytest.raises(ValueError):
        ours.encode(["x"], max_length=0)
    with pytest.raises(ValueError, match="normalize_embeddings"):
        m3embed.BGEM3FlagModel(MODEL, normalize_embeddings=False)
    with pytest.raises(TypeError, match="unexpected keyword"):
        m3embed.BGEM3FlagModel(MODEL, devices="cpu", no_such_option=1)
    with pytest.raises(m3embed.M3Error, match="no such directory"):
        m3embed.BGEM3FlagModel("/no/such/model", devices="cpu")
    with pytest.raises(m3embed.M3Error, match="dtype"):
        m3embed.Engine(MODEL, dtype="fp7")
    assert issubclass(m3embed.M3Error, RuntimeError)


def test_engine_exposes_its_plan():
    engine = m3embed.Engine(MODEL, device="cpu", dtype="fp32", threads=1, memory_limit="512MiB", warm_up=False)
    plan = engine.plan
    assert plan["device"] == "cpu" and plan["dtype"] == "fp32" and plan["threads"] == 1
    assert 0 < plan["total_bytes"] <= 512 * 2**20
    assert plan["max_batch_tokens"] >= plan["max_seq_len"] > 0
    assert engine.encode(["x"])["dense"].shape == (1, engine.hidden_size)
