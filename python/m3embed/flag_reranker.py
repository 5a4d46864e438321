"""FlagEmbedding's FlagReranker API over m3embed's engine (a cross-encoder such as
bge-reranker-v2-m3): change the import, keep the code.

Same constructor arguments and compute_score signature and results as FlagEmbedding 1.4's
encoder-only reranker: a list of floats (a list of one for a single pair, as 1.4 returns), the
logits or their sigmoid with normalize=True. Pairs are cut as its transformers 4 path cuts them (the query to
query_max_length, default 3/4 of max_length, then the passage's end). What differs
(docs/python.md): batch_size is accepted and ignored (the engine packs pairs by tokens);
on the CPU FlagEmbedding ignores use_fp16 and so does this; on CUDA use_fp16 / use_bf16 pick
the engine's fp16 / bf16 compute. m3embed's own options ride in **kwargs: dtype, threads,
memory_limit, max_batch_tokens.
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Tuple, Union

from .flag_model import _make_engine


class FlagReranker:
    """A reranker with FlagEmbedding's interface, computed by m3embed's engine."""

    def __init__(
        self,
        model_name_or_path: str,
        use_fp16: bool = False,
        use_bf16: bool = False,
        query_instruction_for_rerank: Optional[str] = None,
        query_instruction_format: str = "{}{}",
        passage_instruction_for_rerank: Optional[str] = None,
        passage_instruction_format: str = "{}{}",
        trust_remote_code: bool = False,
        cache_dir: Optional[str] = None,
        devices: Optional[Union[str, List[str]]] = None,
        batch_size: int = 128,
        query_max_length: Optional[int] = None,
        max_length: int = 512,
        normalize: bool = False,
        **kwargs: Any,
    ):
        # FlagEmbedding's reranker ignores use_fp16 on the CPU: float32, weights as stored.
        half = "bf16" if use_bf16 else "fp16" if use_fp16 else "fp32"
        self.engine = _make_engine(model_name_or_path, devices, half, False, cache_dir, kwargs)
        self.model_name_or_path = model_name_or_path
        self.query_instruction_for_rerank = query_instruction_for_rerank
        self.query_instruction_format = query_instruction_format
        self.passage_instruction_for_rerank = passage_instruction_for_rerank
        self.passage_instruction_format = passage_instruction_format
        self.batch_size = batch_size
        self.query_max_length = query_max_length
        self.max_length = max_length
        self.normalize = normalize

    def compute_score(self, sentence_pairs: Union[List[Tuple[str, str]], Tuple[str, str]],
                      batch_size: Optional[int] = None, query_max_length: Optional[int] = None,
                      max_length: Optional[int] = None, normalize: Optional[bool] = None,
                      **kwargs: Any) -> List[float]:
        if kwargs:
            raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(kwargs))}")
        single = isinstance(sentence_pairs, tuple) or (
            isinstance(sentence_pairs, list) and len(sentence_pairs) == 2 and all(isinstance(s, str) for s in sentence_pairs))
        pairs = [tuple(sentence_pairs)] if single else [tuple(p) for p in sentence_pairs]
        for p in pairs:
            if len(p) != 2 or not all(isinstance(s, str) for s in p):
                raise TypeError("sentence_pairs must be (query, passage) pairs of strings")
        pairs = [(self._with(q, self.query_instruction_for_rerank, self.query_instruction_format),
                  self._with(p, self.passage_instruction_for_rerank, self.passage_instruction_format)) for q, p in pairs]
        max_length = max_length or self.max_length
        query_max_length = query_max_length or self.query_max_length or max_length * 3 // 4
        logits = self.engine.score_pairs(pairs, max_length=max_length, query_max_length=query_max_length)
        scores = [float(x) for x in logits[:, 0]]
        if self.normalize if normalize is None else normalize:
            scores = [1 / (1 + math.exp(-s)) for s in scores]
        return scores

    @staticmethod
    def _with(text: str, instruction: Optional[str], template: str) -> str:
        return template.format(instruction, text) if instruction is not None else text
