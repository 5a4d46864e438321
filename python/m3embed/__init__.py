"""m3embed: BGE-M3 (dense, sparse and ColBERT outputs) on m3embed's C++ engine.

    from m3embed import BGEM3FlagModel          # instead of: from FlagEmbedding import BGEM3FlagModel
    model = BGEM3FlagModel("BAAI/bge-m3")
    out = model.encode(["What is BGE-M3?"], return_dense=True, return_sparse=True, return_colbert_vecs=True)

`Engine` is the engine itself (memory plan, dtype, device, threads); `BGEM3FlagModel` and
`FlagReranker` are FlagEmbedding's APIs over it (docs/python.md).
"""
from ._core import Engine, M3Error, set_log_level
from .flag_model import BGEM3FlagModel
from .flag_reranker import FlagReranker

__all__ = ["BGEM3FlagModel", "Engine", "FlagReranker", "M3Error", "set_log_level"]
__version__ = "0.1.0"
