"""FlagEmbedding's BGEM3FlagModel API over m3embed's engine: change the import, keep the code.

Same constructor arguments, methods, signatures and return types as FlagEmbedding 1.4's
M3Embedder (alias BGEM3FlagModel): dense vectors as one float32 numpy array, lexical
weights as dicts keyed by token-id strings in order of first occurrence, ColBERT vectors
as a list of [tokens - 1, hidden] arrays; a single string in gives single results out.
What differs, and why (docs/python.md):
  - precision as FlagEmbedding's: on the CPU it loads the weights in fp16 (use_fp16, the
    default) or bf16 and computes in float32, and so does this; on CUDA use_fp16 / use_bf16
    pick the engine's fp16 / bf16 compute;
  - batch_size is accepted and ignored: the engine packs batches by tokens, not by texts;
  - compute_score's ColBERT score uses each passage's real tokens only (FlagEmbedding's
    also lets a batch's padding rows win a query token's max when all its scores are
    negative, so its value depends on what the passage was batched with);
  - options the engine cannot honour (normalize_embeddings=False, pooling other than cls,
    colbert_dim, truncate_dim) raise ValueError instead of being ignored.
m3embed's own options ride in **kwargs: dtype, threads, memory_limit, max_batch_tokens.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ._core import Engine

_ENGINE_KWARGS = ("dtype", "threads", "memory_limit", "max_batch_tokens", "warm_up", "weight_rounding")


def _device_arguments(devices: Optional[Union[str, List[str]]]) -> Dict[str, str]:
    if devices is None:
        return {"device": "auto"}
    if isinstance(devices, str):
        return {"device": devices}
    if isinstance(devices, (list, tuple)) and devices and all(isinstance(d, str) for d in devices):
        if len(devices) == 1:
            return {"device": devices[0]}
        if all(d.startswith("cuda") for d in devices):
            return {"devices": ",".join(devices)}
        raise ValueError(f"devices={devices!r}: several devices must all be CUDA devices ('cuda:0', 'cuda:1', ...)")
    raise TypeError(f"devices must be a string or a list of strings, not {type(devices).__name__}")


def _make_engine(model_name_or_path: str, devices, half: str, cpu_weight_rounding: bool, cache_dir,
                 kwargs: Dict[str, Any]) -> Engine:
    """The Engine a FlagEmbedding-style class asks for: m3embed's own options from kwargs
    (anything else is a TypeError), devices, and use_fp16/use_bf16 as `half`: the compute
    type on CUDA; on the CPU float32, with the weights rounded to `half` when FlagEmbedding
    does that there (cpu_weight_rounding)."""
    if not isinstance(model_name_or_path, str):
        raise TypeError(f"model_name_or_path must be a string, not {type(model_name_or_path).__name__}")
    unknown = set(kwargs) - set(_ENGINE_KWARGS)
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))} "
                        f"(m3embed's own options: {', '.join(_ENGINE_KWARGS)})")
    engine_args = dict(kwargs)
    engine_args.update(_device_arguments(devices))
    on_cuda = "devices" in engine_args or engine_args["device"].startswith("cuda")
    if "dtype" not in engine_args:
        engine_args["dtype"] = half if on_cuda else "fp32"
        if not on_cuda and cpu_weight_rounding:
            engine_args["weight_rounding"] = half
    if cache_dir is not None:
        import os
        os.environ.setdefault("HF_HUB_CACHE", cache_dir)
    return Engine(model_name_or_path, **engine_args)


class BGEM3FlagModel:
    """BGE-M3 with FlagEmbedding's interface, computed by m3embed's engine."""

    def __init__(
        self,
        model_name_or_path: str,
        normalize_embeddings: bool = True,
        use_fp16: bool = True,
        use_bf16: bool = False,
        query_instruction_for_retrieval: Optional[str] = None,
        query_instruction_format: str = "{}{}",
        devices: Optional[Union[str, List[str]]] = None,
        pooling_method: str = "cls",
        trust_remote_code: bool = False,
        cache_dir: Optional[str] = None,
        colbert_dim: int = -1,
        batch_size: int = 256,
        query_max_length: int = 512,
        passage_max_length: int = 512,
        return_dense: bool = True,
        return_sparse: bool = False,
        return_colbert_vecs: bool = False,
        truncate_dim: Optional[int] = None,
        **kwargs: Any,
    ):
        if not normalize_embeddings:
            raise ValueError("normalize_embeddings=False is not supported: m3embed returns L2-normalized dense vectors")
        if pooling_method != "cls":
            raise ValueError(f"pooling_method={pooling_method!r}: BGE-M3 pools with 'cls', the only method m3embed has")
        if colbert_dim != -1:
            raise ValueError("colbert_dim is not supported: m3embed's ColBERT vectors have the model's hidden size")
        if truncate_dim is not None:
            raise ValueError("truncate_dim is not supported here; the server's `dimensions` option truncates")
        # On the CPU FlagEmbedding loads BGE-M3's weights in fp16/bf16 and casts the model
        # back to float32: the same here.
        half = "bf16" if use_bf16 else "fp16" if use_fp16 else "fp32"
        self.engine = _make_engine(model_name_or_path, devices, half, True, cache_dir, kwargs)
        self.model_name_or_path = model_name_or_path
        self.query_instruction_for_retrieval = query_instruction_for_retrieval
        self.query_instruction_format = query_instruction_format
        self.batch_size = batch_size
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.return_dense = return_dense
        self.return_sparse = return_sparse
        self.return_colbert_vecs = return_colbert_vecs

    # --- encoding
    def encode_queries(self, queries: Union[List[str], str], batch_size: Optional[int] = None,
                       max_length: Optional[int] = None, return_dense: Optional[bool] = None,
                       return_sparse: Optional[bool] = None, return_colbert_vecs: Optional[bool] = None,
                       **kwargs: Any) -> Dict[str, Any]:
        if self.query_instruction_for_retrieval is not None:
            wrap = lambda q: self.query_instruction_format.format(self.query_instruction_for_retrieval, q)  # noqa: E731
            queries = wrap(queries) if isinstance(queries, str) else [wrap(q) for q in queries]
        return self._encode(queries, self.query_max_length if max_length is None else max_length,
                            return_dense, return_sparse, return_colbert_vecs)

    def encode_corpus(self, corpus: Union[List[str], str], batch_size: Optional[int] = None,
                      max_length: Optional[int] = None, return_dense: Optional[bool] = None,
                      return_sparse: Optional[bool] = None, return_colbert_vecs: Optional[bool] = None,
                      **kwargs: Any) -> Dict[str, Any]:
        return self._encode(corpus, self.passage_max_length if max_length is None else max_length,
                            return_dense, return_sparse, return_colbert_vecs)

    def encode(self, sentences: Union[List[str], str], batch_size: Optional[int] = None,
               max_length: Optional[int] = None, return_dense: Optional[bool] = None,
               return_sparse: Optional[bool] = None, return_colbert_vecs: Optional[bool] = None,
               **kwargs: Any) -> Dict[str, Any]:
        return self._encode(sentences, self.passage_max_length if max_length is None else max_length,
                            return_dense, return_sparse, return_colbert_vecs)

    def _encode(self, sentences, max_length, return_dense, return_sparse, return_colbert_vecs) -> Dict[str, Any]:
        single = isinstance(sentences, str)
        texts = [sentences] if single else sentences
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise TypeError("sentences must be a string or a list of strings")
        if not isinstance(max_length, int) or max_length <= 0:
            raise ValueError(f"max_length must be a positive integer, not {max_length!r}")
        dense = self.return_dense if return_dense is None else return_dense
        sparse = self.return_sparse if return_sparse is None else return_sparse
        colbert = self.return_colbert_vecs if return_colbert_vecs is None else return_colbert_vecs
        out = self.engine.encode(list(texts), max_length=max_length, dense=dense, sparse=sparse, colbert=colbert)
        dense_vecs = out["dense"] if dense else None
        lexical = None
        if sparse:
            lexical = []
            for weights in out["lexical"]:
                d = defaultdict(int)  # as FlagEmbedding: str(token id) -> float32 weight
                for token_id, w in weights.items():
                    d[str(token_id)] = np.float32(w)
                lexical.append(d)
        colbert_vecs = out["colbert"] if colbert else None
        if single:
            dense_vecs = dense_vecs[0] if dense_vecs is not None else None
            lexical = lexical[0] if lexical is not None else None
            colbert_vecs = colbert_vecs[0] if colbert_vecs is not None else None
        return {"dense_vecs": dense_vecs, "lexical_weights": lexical, "colbert_vecs": colbert_vecs}

    # --- scores
    def convert_id_to_token(self, lexical_weights: Union[Dict, List[Dict]]):
        if isinstance(lexical_weights, dict):
            lexical_weights = [lexical_weights]
        converted = []
        for item in lexical_weights:
            converted.append({self._decode_one(int(token_id)): w for token_id, w in item.items()})
        return converted[0] if len(converted) == 1 else converted

    def _decode_one(self, token_id: int) -> str:
        # tokenizer.decode([id]) of an XLM-R piece: SentencePiece's word marker becomes a
        # space, and the decoded text has no leading space.
        return self.engine.id_to_piece(token_id).replace("\u2581", " ").strip()

    def compute_lexical_matching_score(self, lexical_weights_1, lexical_weights_2):
        def single(lw1, lw2):
            return sum(w * lw2[t] for t, w in lw1.items() if t in lw2) if lw1 else 0

        if isinstance(lexical_weights_1, dict) and isinstance(lexical_weights_2, dict):
            return single(lexical_weights_1, lexical_weights_2)
        if isinstance(lexical_weights_1, list) and isinstance(lexical_weights_2, list):
            return np.array([[single(a, b) for b in lexical_weights_2] for a in lexical_weights_1])
        raise ValueError("The input format of lexical_weights is not correct.")

    def colbert_score(self, q_reps, p_reps):
        q, p = np.asarray(q_reps, dtype=np.float32), np.asarray(p_reps, dtype=np.float32)
        return np.float32((q @ p.T).max(axis=-1).sum() / q.shape[0])

    def compute_score(self, sentence_pairs: Union[List[Tuple[str, str]], Tuple[str, str]],
                      batch_size: Optional[int] = None, max_query_length: Optional[int] = None,
                      max_passage_length: Optional[int] = None,
                      weights_for_different_modes: Optional[List[float]] = None,
                      **kwargs: Any) -> Dict[str, Any]:
        if isinstance(sentence_pairs, list) and len(sentence_pairs) == 0:
            return []
        one_pair = isinstance(sentence_pairs[0], str)
        pairs = [sentence_pairs] if one_pair else list(sentence_pairs)
        if any(len(p) != 2 or not all(isinstance(t, str) for t in p) for p in pairs):
            raise ValueError("sentence_pairs must be (query, passage) pairs of strings")
        w = [1.0, 1.0, 1.0] if weights_for_different_modes is None else list(weights_for_different_modes)
        if len(w) != 3:
            raise ValueError("weights_for_different_modes needs three weights (dense, sparse, colbert)")
        everything = dict(dense=True, sparse=True, colbert=True)
        query_length = self.query_max_length if max_query_length is None else max_query_length
        passage_length = self.passage_max_length if max_passage_length is None else max_passage_length
        q = self.engine.encode([p[0] for p in pairs], max_length=query_length, **everything)
        p = self.engine.encode([p[1] for p in pairs], max_length=passage_length, **everything)
        scores = {"colbert": [], "sparse": [], "dense": [], "sparse+dense": [], "colbert+sparse+dense": []}
        for i in range(len(pairs)):
            dense = float(np.dot(q["dense"][i], p["dense"][i]))
            ql, pl = q["lexical"][i], p["lexical"][i]
            sparse = float(sum(wt * pl[t] for t, wt in ql.items() if t in pl))
            colbert = float(self.colbert_score(q["colbert"][i], p["colbert"][i]))
            scores["dense"].append(dense)
            scores["sparse"].append(sparse)
            scores["colbert"].append(colbert)
            scores["sparse+dense"].append((sparse * w[1] + dense * w[0]) / (w[1] + w[0]))
            scores["colbert+sparse+dense"].append((colbert * w[2] + sparse * w[1] + dense * w[0]) / sum(w))
        return {k: v[0] for k, v in scores.items()} if one_pair else scores

    # FlagEmbedding's pool helpers: the engine runs its own replicas, so these do nothing.
    def start_multi_process_pool(self, *args, **kwargs):
        return None

    def stop_multi_process_pool(self, *args, **kwargs):
        return None
