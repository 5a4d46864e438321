"""vLLM's Pooling API (POST /pooling) as vLLM serves BGE-M3 with
`--hf-overrides '{"architectures": ["BgeM3EmbeddingModel"]}'`, driven the way vLLM's own tests
and docs drive it: the JSON bodies of docs/models/pooling_models (curl), and vLLM's
tests/models/language/pooling/test_bge_m3.py, which posts "../pooling" through an openai client
and rebuilds lexical weights and ColBERT scores from the per-token answers.

What vLLM returns (vllm/model_executor/models/roberta.py BgeM3EmbeddingModel, pooler/special.py
BOSEOSFilter, pooler/tokwise/heads.py, entrypoints/pooling/pooling/protocol.py):
  token_classify: relu(sparse_linear(h)) per position, <s> and </s> dropped, a flat float list;
  token_embed: normalized colbert_linear(h) per position, <s> dropped, </s> kept;
  embed: the normalized CLS state.
Every number is checked against `m3embed encode` (dense, lexical weights, ColBERT rows) within
1e-6; the per-position sparse weights, which encode does not print, against transformers.
"""
from __future__ import annotations

import base64
import shutil
import time

import httpx
import numpy as np
import openai
import pytest
import requests

from test_server_cli import BINARY, FIXTURES, MAX_SEQ_LEN, Server
from test_server_clients import MODEL_DIR, close, encode_reference, token_ids

pytestmark = pytest.mark.skipif(not BINARY, reason="M3_BINARY is not set (ctest sets it)")

TEXTS = [
    "hello world", "the cat and the dog and the cat", "Straße ok 👍", "我们在图书馆学习中文。",
    "What is BGE M3?", "Definition of BM25", "a", "<s> literal specials </s> <mask> <pad>",
]
LONG = "The quick brown fox jumps over the lazy dog. " * 8  # more than 128 tokens
NOT_LEXICAL = {0, 1, 2, 3}  # <s>, <pad>, </s>, <unk>: FlagEmbedding drops them from lexical weights


@pytest.fixture(scope="module")
def server():
    with Server("--http-threads", "2") as s:
        yield s
        assert s.stop() == 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return encode_reference(TEXTS, tmp_path_factory.mktemp("ref"))


@pytest.fixture(scope="module")
def ids(tmp_path_factory):
    return token_ids(TEXTS + [LONG], tmp_path_factory.mktemp("ids"))


def pool(server, body, status=200):
    response = requests.post(server.url("/pooling"), json=body, timeout=60)
    assert response.status_code == status, response.text
    return response.json()


def items(answer):
    return [item["data"] for item in answer["data"]]


def transformers_token_weights(sequences):
    """relu(sparse_linear(last_hidden_state)) at every position, as FlagEmbedding's
    _sparse_embedding computes it before taking the maximum per token id."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(MODEL_DIR).eval()
    head = torch.load(FIXTURES / "tiny-st" / "sparse_linear.pt")
    with torch.no_grad():
        hidden = [model(input_ids=torch.tensor([s])).last_hidden_state[0] for s in sequences]
        weight, bias = head["weight"].float(), head["bias"].float()  # stored as float16, loaded into fp32
        return [torch.relu(h @ weight.T + bias)[:, 0].numpy() for h in hidden]


def vllm_lexical_weights(sequence, weights):
    """vLLM's test_bge_m3.sparse_embeddings: drop <s> from the ids, pair them with the scores (the
    zip drops </s>), keep the largest score per id; then FlagEmbedding's rule (no specials, no
    zero weights) to compare with its lexical weights."""
    tokens = sequence[1:] if sequence[0] == 0 else sequence
    best: dict[int, float] = {}
    for token, value in zip(tokens, weights):
        best[token] = max(value, best.get(token, 0.0))
    return {t: w for t, w in best.items() if w > 0 and t not in NOT_LEXICAL}


def test_the_response_has_vllms_shape(server):
    before = int(time.time())
    answer = pool(server, {"model": "BAAI/bge-m3", "task": "token_classify", "input": ["What is BGE M3?", "a"]})
    assert list(answer) == ["id", "object", "created", "model", "data", "usage"]
    assert answer["id"].startswith("pooling-") and len(answer["id"]) == len("pooling-") + 32
    assert answer["object"] == "list" and answer["model"] == "BAAI/bge-m3"
    assert before <= answer["created"] <= int(time.time())
    assert [list(item) for item in answer["data"]] == [["index", "object", "data"]] * 2
    assert [(item["index"], item["object"]) for item in answer["data"]] == [(0, "pooling"), (1, "pooling")]
    assert answer["usage"] == {"prompt_tokens": answer["usage"]["prompt_tokens"],
                               "total_tokens": answer["usage"]["prompt_tokens"], "completion_tokens": 0,
                               "prompt_tokens_details": None}
    named = pool(server, {"input": "a", "task": "embed", "request_id": "abc"})
    assert named["id"] == "pooling-abc" and named["model"] == "tiny-st"  # the served name by default


def test_token_embed_is_encodes_colbert_rows(server, reference, ids):
    got = items(pool(server, {"model": "BAAI/bge-m3", "task": "token_embed", "input": TEXTS}))
    for text, g, ref, seq in zip(TEXTS, got, reference, ids):
        assert len(g) == len(seq) - 1, text  # <s> dropped, </s> kept
        assert close(g, ref["colbert_vecs"]), text
        assert np.allclose(np.linalg.norm(np.asarray(g, dtype=np.float64), axis=1), 1, atol=1e-6)


def test_embed_is_the_dense_vector_and_the_default_task(server, reference):
    got = items(pool(server, {"task": "embed", "input": TEXTS}))
    assert all(close(g, ref["dense_vecs"]) for g, ref in zip(got, reference))
    assert items(pool(server, {"input": TEXTS})) == got


def test_token_classify_is_relu_sparse_linear_at_every_position(server, reference, ids):
    sequences = ids[:len(TEXTS)]
    answer = pool(server, {"model": "BAAI/bge-m3", "task": "token_classify", "input": TEXTS})
    got = items(answer)
    assert answer["usage"]["prompt_tokens"] == sum(len(s) for s in sequences)
    want = transformers_token_weights(sequences)
    for text, g, w, seq, ref in zip(TEXTS, got, want, sequences, reference):
        assert len(g) == len(seq) - 2, text  # <s> and </s> dropped
        # Two fp32 implementations of the whole encoder (oneDNN vs PyTorch GEMMs, other summation
        # orders) on weights up to ~1: a few 1e-6 apart, as the oracle tests allow (they use 1e-4).
        assert close(g, w[1:-1], tol=1e-5), (text, np.max(np.abs(np.asarray(g) - w[1:-1])))
        lexical = {int(k): v for k, v in ref["lexical_weights"].items()}
        assert vllm_lexical_weights(seq, g) == pytest.approx(lexical, abs=1e-6), text
    # Per position, not per id: "the" and "cat" repeat in TEXTS[1] with different weights.
    repeated = [w for t, w in zip(sequences[1][1:-1], got[1]) if sequences[1].count(t) > 1]
    assert len(set(repeated)) > 1
    assert any(v > 0 for g in got for v in g)


def test_vllms_own_client_code(server, tmp_path):
    """test_bge_m3.py's flow with its openai client: lexical and ColBERT scores rebuilt from
    /pooling equal m3embed's /m3/score (FlagEmbedding's compute_score) for the same pairs. (Its
    token ids come from vLLM's /tokenize, whose shape m3embed does not serve: here, from the CLI.)"""
    q, p = ["What is BGE M3?", "Definition of BM25"], ["BGE M3 is an embedding model supporting dense retrieval.",
                                                          "BM25 is a bag-of-words retrieval function"]
    client = openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0)

    def post(sentences, task):
        response = client.post("../pooling", body={"model": "BAAI/bge-m3", "input": sentences, "task": task},
                               cast_to=httpx.Response)
        return [d["data"] for d in response.json()["data"]]

    def sparse(sentences):
        seqs = token_ids(sentences, tmp_path)
        return [vllm_lexical_weights(s, w) for s, w in zip(seqs, post(sentences, "token_classify"))]

    def colbert_score(q_reps, p_reps):  # test_bge_m3.colbert_score
        scores = np.asarray(q_reps, dtype=np.float64) @ np.asarray(p_reps, dtype=np.float64).T
        return scores.max(-1).sum() / len(q_reps)

    lexical_q, lexical_p = sparse(q), sparse(p)
    colbert_q, colbert_p = post(q, "token_embed"), post(p, "token_embed")
    scores = requests.post(server.url("/m3/score"), json={"pairs": [[a, b] for a in q for b in p]},
                           timeout=60).json()["data"]
    for k, (i, j) in enumerate((i, j) for i in range(2) for j in range(2)):
        lexical = sum(w * lexical_p[j][t] for t, w in lexical_q[i].items() if t in lexical_p[j])
        assert lexical == pytest.approx(scores[k]["sparse"], abs=1e-6)
        assert colbert_score(colbert_q[i], colbert_p[j]) == pytest.approx(scores[k]["colbert"], abs=1e-6)


def test_base64_is_the_float32_bytes(server):
    for task in ("token_classify", "token_embed", "embed"):
        floats = items(pool(server, {"task": task, "input": TEXTS[:3]}))
        for endianness, dtype in (("native", "<f4"), ("little", "<f4"), ("big", ">f4")):
            encoded = items(pool(server, {"task": task, "input": TEXTS[:3], "encoding_format": "base64",
                                          "endianness": endianness}))
            for f, e in zip(floats, encoded):
                decoded = np.frombuffer(base64.b64decode(e), dtype=dtype)
                assert np.array_equal(decoded, np.asarray(f, dtype=np.float32).reshape(-1)), (task, endianness)


def test_the_four_input_shapes(server, ids):
    text = items(pool(server, {"task": "token_embed", "input": TEXTS[:2]}))
    assert items(pool(server, {"task": "token_embed", "input": ids[:2]})) == text
    assert items(pool(server, {"task": "token_embed", "input": ids[0]})) == text[:1]
    assert items(pool(server, {"task": "token_embed", "input": TEXTS[0]})) == text[:1]


def test_truncate_prompt_tokens(server, ids):
    long_ids = ids[-1]
    assert len(long_ids) > MAX_SEQ_LEN
    refused = pool(server, {"task": "token_classify", "input": LONG}, status=413)
    assert refused["error"]["code"] == "input_too_long"
    for keep, side, want in ((10, None, long_ids[:9] + [2]), (10, "right", long_ids[:9] + [2]),
                             (10, "left", [0] + long_ids[-9:]), (-1, None, long_ids[:MAX_SEQ_LEN - 1] + [2])):
        body = {"task": "token_classify", "input": LONG, "truncate_prompt_tokens": keep}
        if side:
            body["truncation_side"] = side
        answer = pool(server, body)
        assert answer["usage"]["prompt_tokens"] == len(want)
        assert items(answer) == items(pool(server, {"task": "token_classify", "input": want}))
    # A short input is left as it is.
    short = pool(server, {"task": "token_classify", "input": TEXTS[0], "truncate_prompt_tokens": 100})
    assert items(short) == items(pool(server, {"task": "token_classify", "input": TEXTS[0]}))


def test_use_activation_false_gives_the_raw_cls_state_for_embed(server, ids):
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(MODEL_DIR).eval()
    with torch.no_grad():
        want = [model(input_ids=torch.tensor([s])).last_hidden_state[0, 0].numpy() for s in ids[:3]]
    unit = items(pool(server, {"task": "embed", "input": TEXTS[:3]}))
    for field in ("use_activation", "normalize"):  # vLLM's name, and its older one
        raw = items(pool(server, {"task": "embed", "input": TEXTS[:3], field: False}))
        for r, u, w in zip(raw, unit, want):
            # the unit vector times the CLS norm, computed once on the device
            assert close(np.asarray(r) / np.linalg.norm(r), u)
            # against transformers: values of size ~1-3 in float32, rounded differently
            assert close(r, w, tol=1e-5), np.max(np.abs(np.asarray(r) - w))
    assert items(pool(server, {"task": "embed", "input": TEXTS[:3], "use_activation": True})) == unit


@pytest.mark.parametrize("body, param", [
    ({"input": "a", "task": "classify"}, "task"),
    ({"input": "a", "task": "embed&token_classify"}, "task"),
    ({"input": "a", "task": "plugin"}, "task"),
    ({"input": "a", "task": 3}, "task"),
    ({"input": "a", "task": "token_classify", "encoding_format": "bytes"}, "encoding_format"),
    ({"input": "a", "task": "token_embed", "embed_dtype": "float16"}, "embed_dtype"),
    ({"input": "a", "endianness": "middle"}, "endianness"),
    ({"input": "a", "dimensions": 8}, "dimensions"),
    ({"input": "a", "task": "token_classify", "use_activation": False}, "use_activation"),
    ({"input": "a", "task": "token_embed", "normalize": False}, "normalize"),
    ({"input": "a", "truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
    ({"input": "a", "truncate_prompt_tokens": -2}, "truncate_prompt_tokens"),
    ({"input": "a", "truncate_prompt_tokens": MAX_SEQ_LEN + 1}, "truncate_prompt_tokens"),
    ({"input": "a", "truncation_side": "middle"}, "truncation_side"),
    ({"input": "a", "add_special_tokens": False}, "add_special_tokens"),
    ({"messages": [{"role": "user", "content": "a"}]}, "messages"),
    ({"task": "embed"}, "input"),
    ({"input": ""}, "input"),
    ({"input": [5, 6, 7]}, "input"),
])
def test_refusals_are_422_in_openais_error_format(server, body, param):
    error = pool(server, body, status=422)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["type"] == "invalid_request_error", error


def test_other_errors(server):
    assert requests.post(server.url("/pooling"), data="{", timeout=30).status_code == 400
    got = requests.get(server.url("/pooling"), timeout=30)
    assert got.status_code == 405 and got.json()["error"]["code"] == "method_not_allowed"
    too_many = pool(server, {"input": ["a"] * 300}, status=413)
    assert too_many["error"]["code"] == "too_many_inputs"


def test_a_task_without_its_head_file_is_422(tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(FIXTURES / "tiny-st", bare)
    (bare / "sparse_linear.pt").unlink()
    (bare / "colbert_linear.pt").unlink()
    with Server(model=str(bare)) as s:
        for task, file in (("token_classify", "sparse_linear.pt"), ("token_embed", "colbert_linear.pt")):
            error = pool(s, {"input": "a", "task": task}, status=422)["error"]
            assert error["code"] == "output_unavailable" and file in error["message"]
        assert len(items(pool(s, {"input": "a", "task": "embed"}))[0]) == 64
        assert s.stop() == 0
