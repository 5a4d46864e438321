"""`m3embed serve` through the embedding clients that RAG frameworks ship for TEI and OpenAI
servers, installed from PyPI (requirements-test.txt, "Real client libraries"): haystack
(`haystack-ai` and its Hugging Face API integration `huggingface-api-haystack`), llama-index's
embedding integrations (text-embeddings-inference, huggingface-api, openai, openai-like) and
pymilvus' embedding functions (`pymilvus-model`). Every vector must equal the engine's own output
for the text the client sends, as `m3embed encode` prints it (or, for the raw CLS state, as
`/embed` with `normalize: false` answers it), within 1e-6. Nothing here downloads anything.

What each client does to a text, and what it sends, is the client's; the tests follow it:
- llama-index strips every text (`f"{instruction} {text}".strip()`), and its OpenAI embedding
  also turns "\\n" into " ".
- haystack's HuggingFaceAPI embedders send `truncate: true, normalize: false` by default, so the
  answer is the raw CLS state (dense * its norm), as TEI answers it.
- Clients with no truncate flag (the OpenAI routes, pymilvus, llama-index's HF Inference API,
  haystack's sparse embedders) get a text over 128 tokens cut only under `--auto-truncate`.
- llama-index's HuggingFaceInferenceAPIEmbedding keeps one huggingface_hub AsyncInferenceClient
  whose pooled connections belong to the first event loop that used it; its sync methods run a
  new loop per call (`asyncio.run`), so a second sync call on one instance fails in the client
  with "Event loop is closed" (llama-index-embeddings-huggingface-api 0.6.0 with
  huggingface_hub 2.4.0, against any keep-alive server). The tests use one instance per loop.
"""
from __future__ import annotations

import asyncio
import os

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # before haystack is imported

import httpx
import numpy as np
import openai
import pytest
from haystack import Document
from haystack.components.embedders import OpenAIDocumentEmbedder, OpenAITextEmbedder
from haystack.utils import Secret
from haystack_integrations.components.embedders.huggingface_api import (
    HuggingFaceAPIDocumentEmbedder,
    HuggingFaceAPITextEmbedder,
    HuggingFaceTEISparseDocumentEmbedder,
    HuggingFaceTEISparseTextEmbedder,
)
from huggingface_hub.errors import HfHubHTTPError
from llama_index.embeddings.huggingface_api import HuggingFaceInferenceAPIEmbedding
from llama_index.embeddings.openai import OpenAIEmbedding
from llama_index.embeddings.openai_like import OpenAILikeEmbedding
from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference
from pymilvus.model.dense import OpenAIEmbeddingFunction, TEIEmbeddingFunction
from pymilvus.model.reranker import TEIRerankFunction

from test_server_cli import BINARY, HIDDEN, Server
from test_server_clients import close, encode_reference, renormalized

pytestmark = pytest.mark.skipif(not BINARY, reason="M3_BINARY is not set (ctest sets it)")

LONG = "The quick brown fox jumps over the lazy dog. " * 8  # over 128 tokens
TEXTS = ["hello world", "猫", "Straße", "我们在图书馆学习中文，老师很好。", "مرحبا، كيف حالك اليوم؟",
         "  leading and trailing spaces  ", "two\nlines", LONG]
KEY = "k3y"


@pytest.fixture(scope="module")
def server():
    """TEI's default: no --auto-truncate, so a client's own truncate flag decides."""
    with Server("--http-threads", "2") as s:
        yield s
        assert s.stop() == 0


@pytest.fixture(scope="module")
def auto():
    """For the clients that send no truncate flag."""
    with Server("--auto-truncate", "--http-threads", "2") as s:
        yield s
        assert s.stop() == 0


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """`m3embed encode`'s rows (dense_vecs, lexical_weights) for texts, cut at 128 tokens; each
    text is encoded once, on first use."""
    rows: dict[str, dict] = {}
    folder = tmp_path_factory.mktemp("engine")

    def lookup(texts):
        missing = list(dict.fromkeys(t for t in texts if t not in rows))
        if missing:
            rows.update(zip(missing, encode_reference(missing, folder, name=f"ref{len(rows)}")))
        return [rows[t] for t in texts]

    return lookup


def dense(engine, texts):
    return [row["dense_vecs"] for row in engine(texts)]


def assert_all_close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert close(g, w)


def raw_states(server, texts):
    """/embed's raw CLS states (normalize: false), cut at 128 tokens."""
    response = httpx.post(server.url("/embed"), json={"inputs": texts, "normalize": False, "truncate": True},
                          timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def assert_raw(got, raw, want_dense):
    """got is the raw CLS state: /embed's, and along the engine's dense vector."""
    assert close(got, raw)
    got = np.asarray(got, dtype=np.float64)
    assert close(got / np.linalg.norm(got), want_dense)


def assert_sparse(embedding, weights):
    """A haystack SparseEmbedding equals encode's lexical_weights ({"token id": weight})."""
    assert embedding.indices == sorted(int(k) for k in weights)
    assert close(embedding.values, [weights[str(i)] for i in embedding.indices])


# --------------------------------------------------------------------------- haystack


def test_haystack_hf_api_text_embedder_returns_the_raw_cls_state(server, engine):
    embedder = HuggingFaceAPITextEmbedder(api_type="text_embeddings_inference", api_params={"url": server.base},
                                          token=None)  # truncate=True, normalize=False
    raws, dens = raw_states(server, TEXTS), dense(engine, TEXTS)
    for text, raw, want in zip(TEXTS, raws, dens):
        assert_raw(embedder.run(text)["embedding"], raw, want)

    async def run_async():
        return [(await embedder.run_async(text))["embedding"] for text in TEXTS]

    for got, raw, want in zip(asyncio.run(run_async()), raws, dens):
        assert_raw(got, raw, want)

    normalized = HuggingFaceAPITextEmbedder(api_type="text_embeddings_inference", api_params={"url": server.base},
                                            token=None, normalize=True, prefix="query: ")
    assert close(normalized.run("hello world")["embedding"], dense(engine, ["query: hello world"])[0])


def test_haystack_hf_api_truncate_false_is_refused_with_the_fix_named(server):
    embedder = HuggingFaceAPITextEmbedder(api_type="text_embeddings_inference", api_params={"url": server.base},
                                          token=None, truncate=False)
    with pytest.raises(HfHubHTTPError) as refused:
        embedder.run(LONG)
    assert refused.value.response.status_code == 413
    assert '"truncate": true' in str(refused.value)
    assert len(embedder.run("short")["embedding"]) == HIDDEN


def test_haystack_hf_api_document_embedder(server, engine):
    documents = [Document(content=text, meta={"title": f"T{i}"}) for i, text in enumerate(TEXTS)]
    sent = [f"T{i}\n{text}" for i, text in enumerate(TEXTS)]  # meta_fields_to_embed, joined by "\n"
    embedder = HuggingFaceAPIDocumentEmbedder(api_type="text_embeddings_inference", api_params={"url": server.base},
                                              token=None, batch_size=3, progress_bar=False,
                                              meta_fields_to_embed=["title"])
    raws, dens = raw_states(server, sent), dense(engine, sent)
    for doc, raw, want in zip(embedder.run(documents)["documents"], raws, dens):
        assert_raw(doc.embedding, raw, want)
    normalized = HuggingFaceAPIDocumentEmbedder(api_type="text_embeddings_inference",
                                                api_params={"url": server.base}, token=None, normalize=True,
                                                batch_size=3, progress_bar=False, meta_fields_to_embed=["title"])
    out = asyncio.run(normalized.run_async(documents))["documents"]
    assert_all_close([doc.embedding for doc in out], dens)


def test_haystack_tei_sparse_embedders(auto, server, engine):
    weights = [row["lexical_weights"] for row in engine(TEXTS)]
    text_embedder = HuggingFaceTEISparseTextEmbedder(api_base_url=auto.base, token=None)
    for text, want in zip(TEXTS, weights):
        assert_sparse(text_embedder.run(text)["sparse_embedding"], want)
    documents = [Document(content=text) for text in TEXTS]
    doc_embedder = HuggingFaceTEISparseDocumentEmbedder(api_base_url=auto.base, token=None, batch_size=3,
                                                        progress_bar=False)
    for doc, want in zip(doc_embedder.run(documents)["documents"], weights):
        assert_sparse(doc.sparse_embedding, want)
    out = asyncio.run(doc_embedder.run_async(documents))["documents"]
    for doc, want in zip(out, weights):
        assert_sparse(doc.sparse_embedding, want)
    # They send no truncate flag: without --auto-truncate a long text is a 413.
    plain = HuggingFaceTEISparseTextEmbedder(api_base_url=server.base, token=None)
    with pytest.raises(httpx.HTTPStatusError) as refused:
        plain.run(LONG)
    assert refused.value.response.status_code == 413


def test_haystack_openai_embedders(auto, server, engine):
    base, secret = auto.url("/v1"), Secret.from_token("x")
    dens = dense(engine, TEXTS)
    embedder = OpenAITextEmbedder(api_base_url=base, api_key=secret, model="bge-m3")  # encoding_format float
    for text, want in zip(TEXTS, dens):
        result = embedder.run(text)
        assert close(result["embedding"], want)
        assert result["meta"]["model"] == "bge-m3"

    async def run_async():
        return [(await embedder.run_async(text))["embedding"] for text in TEXTS]

    assert_all_close(asyncio.run(run_async()), dens)
    cut = OpenAITextEmbedder(api_base_url=base, api_key=secret, model="bge-m3", dimensions=16)
    assert close(cut.run(TEXTS[0])["embedding"], renormalized(dens[0], 16))

    documents = [Document(content=text) for text in TEXTS]
    doc_embedder = OpenAIDocumentEmbedder(api_base_url=base, api_key=secret, model="bge-m3", batch_size=3,
                                          progress_bar=False)
    result = doc_embedder.run(documents)
    assert_all_close([doc.embedding for doc in result["documents"]], dens)
    assert result["meta"]["model"] == "bge-m3"
    out = asyncio.run(doc_embedder.run_async(documents))["documents"]
    assert_all_close([doc.embedding for doc in out], dens)
    # /v1/embeddings has no truncate field: without --auto-truncate a long text is a 413.
    strict = OpenAIDocumentEmbedder(api_base_url=server.url("/v1"), api_key=secret, model="bge-m3",
                                    progress_bar=False, raise_on_failure=True, max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        strict.run([Document(content=LONG)])
    assert refused.value.status_code == 413


# --------------------------------------------------------------------------- llama-index


def assert_llama_index_embeds(make, want):
    """A llama-index embedding's sync and async methods (text, query, batch) all give `want` for
    TEXTS. make() returns the model each sync call uses; the async calls share one, in one loop."""
    assert_all_close([make().get_text_embedding(text) for text in TEXTS], want)
    assert_all_close([make().get_query_embedding(text) for text in TEXTS], want)
    assert_all_close(make().get_text_embedding_batch(TEXTS), want)
    model = make()

    async def run_async():
        return ([await model.aget_text_embedding(text) for text in TEXTS],
                [await model.aget_query_embedding(text) for text in TEXTS],
                await model.aget_text_embedding_batch(TEXTS))

    for got in asyncio.run(run_async()):
        assert_all_close(got, want)


def test_llama_index_text_embeddings_inference(server, engine):
    model = TextEmbeddingsInference(model_name="BAAI/bge-m3", base_url=server.base, embed_batch_size=3)
    sent = [text.strip() for text in TEXTS]  # truncate_text=True cuts LONG
    assert_llama_index_embeds(lambda: model, dense(engine, sent))
    instructed = TextEmbeddingsInference(model_name="BAAI/bge-m3", base_url=server.base, query_instruction="query:")
    assert close(instructed.get_query_embedding("hello world"), dense(engine, ["query: hello world"])[0])


def test_llama_index_tei_truncate_text_false(server):
    """truncate_text=False sends "truncate": false; the server answers 413, and the client, which
    reads the body without looking at the status, fails on the error object (KeyError 0)."""
    model = TextEmbeddingsInference(model_name="BAAI/bge-m3", base_url=server.base, truncate_text=False)
    with pytest.raises(KeyError):
        model.get_text_embedding(LONG)
    direct = httpx.post(server.url("/embed"), json={"inputs": [LONG], "truncate": False}, timeout=60)
    assert direct.status_code == 413 and '"truncate": true' in direct.json()["error"]
    assert len(model.get_text_embedding("short")) == HIDDEN


def test_llama_index_hf_inference_api(auto, engine):
    # A fresh instance for each sync call: one instance works in one event loop only (see the
    # module docstring).
    assert_llama_index_embeds(lambda: HuggingFaceInferenceAPIEmbedding(model_name=auto.base),
                              dense(engine, [text.strip() for text in TEXTS]))


def test_llama_index_openai_embeddings(auto, engine):
    sent = [text.replace("\n", " ").strip() for text in TEXTS]
    dens = dense(engine, sent)
    # An OpenAI model name, as OpenAIEmbedding's users write it (0.6.0 passes any other name through too).
    model = OpenAIEmbedding(model_name="text-embedding-3-small", api_base=auto.url("/v1"), api_key="x",
                            embed_batch_size=3)
    assert_llama_index_embeds(lambda: model, dens)
    like = OpenAILikeEmbedding(model_name="bge-m3", api_base=auto.url("/v1"), api_key="x", embed_batch_size=3)
    assert_llama_index_embeds(lambda: like, dens)
    cut = OpenAILikeEmbedding(model_name="bge-m3", api_base=auto.url("/v1"), api_key="x", dimensions=16)
    assert_all_close(cut.get_text_embedding_batch(TEXTS), [renormalized(d, 16) for d in dens])


# --------------------------------------------------------------------------- pymilvus


def test_pymilvus_openai_embedding_function(auto, engine):
    dens = dense(engine, TEXTS)
    function = OpenAIEmbeddingFunction(model_name="bge-m3", base_url=auto.url("/v1"), api_key="x")
    assert_all_close(function.encode_documents(TEXTS), dens)
    assert_all_close(function.encode_queries(TEXTS), dens)
    assert_all_close(function(TEXTS), dens)
    # Its `dim` is a table of OpenAI's models (a KeyError for any other name) unless dimensions is given.
    cut = OpenAIEmbeddingFunction(model_name="bge-m3", base_url=auto.url("/v1"), api_key="x", dimensions=16)
    assert cut.dim == 16
    assert_all_close(cut.encode_queries(TEXTS), [renormalized(d, 16) for d in dens])


def test_pymilvus_tei_embedding_function(auto, server, engine):
    """pymilvus-model's TEIEmbeddingFunction posts {"input": texts} (no model) to /v1/embeddings."""
    dens = dense(engine, TEXTS)
    function = TEIEmbeddingFunction(api_url=auto.base)
    assert function.dim == HIDDEN  # it embeds "get dim" to learn it
    assert_all_close(function.encode_documents(TEXTS), dens)
    assert_all_close(function.encode_queries(TEXTS), dens)
    assert_all_close(function(TEXTS), dens)
    # Without --auto-truncate the long text is a 413; the function expects TEI's {"message"} and
    # fails on the OpenAI-style {"error": {...}} body the /v1 route answers.
    with pytest.raises(KeyError):
        TEIEmbeddingFunction(api_url=server.base)([LONG])


def test_pymilvus_tei_rerank_function_on_an_embedder_is_refused(server):
    """BGE-M3 is not a cross-encoder: /rerank answers TEI's "model is not a re-ranker model" (424),
    and the client raises it (tests/python/test_rerank_server.py serves a reranker to it)."""
    with pytest.raises(RuntimeError, match="model is not a re-ranker model"):
        TEIRerankFunction(api_url=server.base)("query", ["a", "b"])


# --------------------------------------------------------------------------- API key


def test_clients_send_the_api_key(engine):
    want = dense(engine, ["hello world"])[0]
    with Server("--api-key", KEY) as keyed:
        tei = TextEmbeddingsInference(model_name="BAAI/bge-m3", base_url=keyed.base, auth_token=KEY)
        assert close(tei.get_text_embedding("hello world"), want)
        hf = HuggingFaceAPITextEmbedder(api_type="text_embeddings_inference", api_params={"url": keyed.base},
                                        token=Secret.from_token(KEY), normalize=True)
        assert close(hf.run("hello world")["embedding"], want)
        sparse = HuggingFaceTEISparseTextEmbedder(api_base_url=keyed.base, token=Secret.from_token(KEY))
        assert_sparse(sparse.run("hello world")["sparse_embedding"], engine(["hello world"])[0]["lexical_weights"])
        oai = OpenAITextEmbedder(api_base_url=keyed.url("/v1"), api_key=Secret.from_token(KEY), model="m")
        assert close(oai.run("hello world")["embedding"], want)
        like = OpenAILikeEmbedding(model_name="m", api_base=keyed.url("/v1"), api_key=KEY)
        assert close(like.get_text_embedding("hello world"), want)
        milvus = OpenAIEmbeddingFunction(model_name="m", base_url=keyed.url("/v1"), api_key=KEY)
        assert close(milvus(["hello world"])[0], want)

        wrong = HuggingFaceAPITextEmbedder(api_type="text_embeddings_inference", api_params={"url": keyed.base},
                                           token=Secret.from_token("wrong"))
        with pytest.raises(HfHubHTTPError) as refused:
            wrong.run("hello world")
        assert refused.value.response.status_code == 401
        assert keyed.stop() == 0
