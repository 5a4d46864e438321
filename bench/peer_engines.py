#!/usr/bin/env python3
"""The engines bench/peers.py compares, one adapter class each, and the worker that runs one.

Every (engine, workload) run is its own process, so its peak RSS is its own:
- m3embed-*: the C++ binary build/m3bench-workload (token ids in, JSON report out);
- the Python peers: `peer_engines.py run --engine NAME ...` (this file), which loads the
  engine, encodes the workload `--warmup` times untimed and up to `--repeat` times timed
  (dense + lexical weights + ColBERT vectors, as FlagEmbedding's encode with all three),
  and writes the same report fields as m3bench-workload.
Slow one-off preparation (ONNX export, CTranslate2 / GGUF conversion) runs before, in a
separate process (`peer_engines.py prepare --engine NAME`), cached under
~/.cache/m3embed/bench/, so it never counts in a run's time or memory.

Inputs of a run: a JSON file {"ids": [[...], ...], "texts": [...]}: the same lengths rendered
as token ids (what m3embed, ONNX Runtime, CTranslate2 and llama.cpp get) and as texts
(FlagEmbedding's encode takes strings; it tokenizes inside the timed call).

`--outputs FILE.json` dumps the last run's outputs the way m3bench-workload does
(FILE.json: lexical weights, ColBERT row counts; FILE.dense.npy, FILE.colbert.npy), for
bench/fidelity.py.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # FlagEmbedding's progress bars
REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
CACHE = Path(os.environ.get("M3_BENCH_CACHE", Path.home() / ".cache" / "m3embed" / "bench"))
DEFAULT_BINARY = REPO / "build" / "m3bench-workload"
SPECIAL_IDS = (0, 1, 2, 3)  # <s>, <pad>, </s>, <unk>: dropped from lexical weights, as FlagEmbedding does
PAD_ID = 1
MAX_LENGTH = 8192


# ---------------------------------------------------------------------------------------
# Process memory
# ---------------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def hwm_bytes() -> int:
    return _status_kb("VmHWM") * 1024


def reset_hwm() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# ---------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------


def import_bge_m3():
    """FlagEmbedding's BGEM3FlagModel, importable on transformers 5 (see make_fixtures.py)."""
    fixtures = str(REPO / "tests" / "fixtures")
    if fixtures not in sys.path:
        sys.path.insert(0, fixtures)
    from make_fixtures import import_bge_m3 as _imp

    return _imp()


def model_key(model_dir: Path, *extra: str) -> str:
    """A cache key for a converted model: the snapshot's path, weight files and the tools."""
    h = hashlib.sha256(str(model_dir.resolve()).encode())
    for name in ("config.json", "model.safetensors", "pytorch_model.bin", "colbert_linear.pt", "sparse_linear.pt"):
        p = model_dir / name
        if p.exists():
            st = p.stat()
            h.update(f"{name}:{st.st_size}:{int(st.st_mtime)}".encode())
    for e in extra:
        h.update(e.encode())
    return f"{model_dir.resolve().name}-{h.hexdigest()[:12]}"


def load_heads(model_dir: Path):
    """(colbert W [1024,1024], b [1024], sparse w [1024], b scalar) as float32 numpy."""
    import torch

    c = torch.load(model_dir / "colbert_linear.pt", map_location="cpu", weights_only=True)
    s = torch.load(model_dir / "sparse_linear.pt", map_location="cpu", weights_only=True)
    return (c["weight"].float().numpy(), c["bias"].float().numpy(),
            s["weight"].float().numpy().reshape(-1), float(s["bias"].float().reshape(-1)[0]))


def lexical_dict(weights, ids) -> dict[str, float]:
    """FlagEmbedding's _process_token_weights: max relu weight per token id, specials dropped."""
    out: dict[str, float] = {}
    for w, i in zip(weights, ids):
        if i in SPECIAL_IDS or w <= 0:
            continue
        k = str(i)
        w = float(w)
        if w > out.get(k, 0.0):
            out[k] = w
    return out


def batches_by_length(ids: list[list[int]], batch_size: int):
    """Index lists of batches: longest first, `batch_size` texts each (FlagEmbedding's order)."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


def pad_batch(ids: list[list[int]], idx: list[int]):
    import numpy as np

    longest = max(len(ids[i]) for i in idx)
    input_ids = np.full((len(idx), longest), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(idx), longest), dtype=np.int64)
    for r, i in enumerate(idx):
        input_ids[r, :len(ids[i])] = ids[i]
        mask[r, :len(ids[i])] = 1
    return input_ids, mask


class NumpyHeads:
    """BGE-M3's three heads on a padded batch of last hidden states, in numpy (float32)."""

    def __init__(self, model_dir: Path):
        self.cw, self.cb, self.sw, self.sb = load_heads(model_dir)
        self.cwt = self.cw.T.copy()

    def __call__(self, hidden, ids: list[list[int]], idx: list[int], results: dict):
        import numpy as np

        for r, i in enumerate(idx):
            n = len(ids[i])
            h = hidden[r, :n]
            d = h[0]
            results["dense"][i] = d / max(float(np.linalg.norm(d)), 1e-12)
            sw = np.maximum(h @ self.sw + self.sb, 0.0)
            results["lexical"][i] = lexical_dict(sw, ids[i])
            c = h[1:] @ self.cwt + self.cb
            c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
            results["colbert"][i] = c


def write_outputs(path: str, dense, lexical, colbert, tokens) -> None:
    """The m3bench-workload --outputs format: FILE.json + FILE.dense.npy + FILE.colbert.npy."""
    import numpy as np

    stem = path[:-5] if path.endswith(".json") else path
    d = np.asarray(np.stack([np.asarray(x, dtype=np.float32) for x in dense]), dtype=np.float32)
    c = np.concatenate([np.asarray(x, dtype=np.float32).reshape(-1, d.shape[1]) for x in colbert], axis=0)
    np.save(stem + ".dense.npy", d)
    np.save(stem + ".colbert.npy", c)
    with open(path, "w") as f:
        json.dump({"texts": len(dense), "hidden": int(d.shape[1]),
                   "dense_npy": Path(stem + ".dense.npy").name, "colbert_npy": Path(stem + ".colbert.npy").name,
                   "colbert_rows": [int(np.asarray(x).reshape(-1, d.shape[1]).shape[0]) for x in colbert],
                   "tokens": tokens,
                   "lexical_weights": [{k: float(v) for k, v in lw.items()} for lw in lexical]}, f)


# ---------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------


class Unavailable(Exception):
    """The engine cannot run here (not installed, cannot load this model): the reason."""


class Engine:
    name = ""
    kind = "python"        # "binary": runs the m3bench-workload binary; "python": this file's worker
    dtype = "fp32"
    inputs = "ids"         # what encode() takes: "ids" or "texts"
    describe = ""          # one line for the docs: batching, threads, dtype

    def check(self, args) -> None:
        """Raise Unavailable when the engine is not installed; cheap (no model load)."""

    def prepare(self, args) -> dict:
        """One-off, cached conversion, in its own process; returns facts for the report."""
        return {}

    def load(self, args) -> None:
        raise NotImplementedError

    def encode(self, ids: list[list[int]], texts: list[str], args):
        """-> (dense list, lexical list, colbert list), in input order."""
        raise NotImplementedError

    def info(self) -> dict:
        return {}


class M3Embed(Engine):
    kind = "binary"

    def __init__(self, dtype: str):
        self.dtype = dtype
        self.name = f"m3embed-{dtype}"
        self.describe = (f"build/m3bench-workload --dtype {dtype}: token ids packed without padding into passes of "
                         f"--max-batch-tokens (16384) tokens; --threads; load and warm-up excluded")

    def check(self, args) -> None:
        b = Path(args.binary)
        if not b.exists():
            raise Unavailable(f"{b} is missing: build it first with "
                              "`cmake --build build -j2 --target m3bench-workload`")

    def command(self, args, ids_file: str, report: str, budget_s: float, outputs: str | None = None) -> list[str]:
        cmd = [str(args.binary), "--model", str(args.model), "--ids", ids_file, "--dtype", self.dtype,
               "--threads", str(args.threads), "--max-batch-tokens", str(args.max_batch_tokens),
               "--repeat", str(args.repeat), "--warmup", str(args.warmup), "--budget-s", f"{budget_s:.0f}",
               "--json", report]
        if outputs:
            cmd += ["--outputs", outputs]
        return cmd


class FlagEmbeddingEngine(Engine):
    inputs = "texts"

    def __init__(self, bf16: bool = False):
        self.bf16 = bf16
        self.dtype = "bf16" if bf16 else "fp32"
        self.name = "torch-bf16" if bf16 else "flagembedding-fp32"
        self.describe = ("FlagEmbedding 1.4.2 BGEM3FlagModel(use_fp16=False, devices='cpu').encode(texts, "
                         "batch_size=--batch-size, max_length=8192, dense+sparse+colbert): tokenizes inside the "
                         "timed call, sorts by length, pads each batch to its longest text, runs its first batch "
                         "twice (batch-size probe); torch threads = --threads"
                         + ("; model and heads cast to torch.bfloat16 (FlagEmbedding's per-call .float() on CPU "
                            "disabled, outputs upcast to float32)" if bf16 else ""))

    def check(self, args) -> None:
        try:
            import torch  # noqa: F401
            import_bge_m3()
        except Exception as e:  # noqa: BLE001
            raise Unavailable(f"FlagEmbedding does not import: {type(e).__name__}: {e}") from e

    def load(self, args) -> None:
        import torch

        torch.set_num_threads(args.threads)
        BGEM3FlagModel = import_bge_m3()
        self.m = BGEM3FlagModel(str(args.model), use_fp16=False, devices="cpu")
        if self.bf16:
            inner = self.m.model
            inner.to(torch.bfloat16)
            # encode_single_device calls self.model.float() on CPU before every call, which
            # would undo the cast; and numpy has no bfloat16 for the outputs.
            inner.float = lambda *a, **k: inner
            self.m._convert_to_numpy = lambda e, device=None: (
                e.float() if e.dtype == torch.bfloat16 else e).cpu().numpy()
            self.param_dtype = str(next(inner.parameters()).dtype)
        else:
            self.param_dtype = str(next(self.m.model.parameters()).dtype)

    def encode(self, ids, texts, args):
        out = self.m.encode(texts, batch_size=args.batch_size, max_length=MAX_LENGTH, return_dense=True,
                            return_sparse=True, return_colbert_vecs=True)
        return list(out["dense_vecs"]), list(out["lexical_weights"]), list(out["colbert_vecs"])

    def info(self) -> dict:
        import FlagEmbedding
        import torch
        import transformers

        return {"param_dtype": self.param_dtype, "torch": torch.__version__,
                "transformers": transformers.__version__,
                "flagembedding": getattr(FlagEmbedding, "__version__", "1.4.2")}


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime-fp32"
    describe = ("XLM-R encoder + BGE-M3 heads exported with torch.onnx.export (dynamic batch and sequence "
                "axes, external data) and run by ONNX Runtime's CPUExecutionProvider (graph optimizations on, "
                "intra-op threads = --threads, inter-op 1) on length-sorted batches of --batch-size texts "
                "padded to their longest, with an attention mask; lexical dicts in Python")

    def check(self, args) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise Unavailable(f"onnxruntime is not installed ({e}); run bench/setup.sh") from e

    def path(self, args) -> Path:
        import torch

        return CACHE / "onnx" / model_key(Path(args.model), "onnx-v1", torch.__version__) / "model.onnx"

    def prepare(self, args) -> dict:
        out = self.path(args)
        if out.exists():
            return {"onnx": str(out), "cached": True}
        import torch
        import torch.nn.functional as F
        from transformers import XLMRobertaModel

        torch.set_num_threads(args.threads)
        cw, cb, sw, sb = load_heads(Path(args.model))

        class M3Onnx(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.enc = XLMRobertaModel.from_pretrained(str(args.model), add_pooling_layer=False,
                                                           attn_implementation="eager")
                self.colbert = torch.nn.Linear(cw.shape[1], cw.shape[0])
                self.sparse = torch.nn.Linear(sw.shape[0], 1)
                with torch.no_grad():
                    self.colbert.weight.copy_(torch.from_numpy(cw))
                    self.colbert.bias.copy_(torch.from_numpy(cb))
                    self.sparse.weight.copy_(torch.from_numpy(sw).reshape(1, -1))
                    self.sparse.bias.fill_(sb)

            def forward(self, input_ids, attention_mask):
                h = self.enc(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                dense = F.normalize(h[:, 0], dim=-1)
                sparse = torch.relu(self.sparse(h)).squeeze(-1)
                col = self.colbert(h[:, 1:]) * attention_mask[:, 1:, None].to(h.dtype)
                return dense, sparse, F.normalize(col, dim=-1)

        m = M3Onnx().eval()
        tmp = out.parent.with_name(out.parent.name + ".partial")
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        ids = torch.tensor([[0, 5, 6, 7, 8, 2], [0, 9, 10, 2, 1, 1]])
        mask = (ids != PAD_ID).long()
        t0 = time.time()
        with torch.no_grad():
            torch.onnx.export(m, (ids, mask), str(tmp / "model.onnx"), dynamo=False, opset_version=17,
                              input_names=["input_ids", "attention_mask"],
                              output_names=["dense", "sparse", "colbert"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                            "attention_mask": {0: "batch", 1: "seq"},
                                            "dense": {0: "batch"}, "sparse": {0: "batch", 1: "seq"},
                                            "colbert": {0: "batch", 1: "seq1"}})
        import onnx

        # One external data file whatever the size (protobuf stops at 2 GB).
        model = onnx.load(str(tmp / "model.onnx"), load_external_data=True)
        for f in tmp.iterdir():
            f.unlink()
        onnx.save_model(model, str(tmp / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=1024)
        del model
        shutil.rmtree(out.parent, ignore_errors=True)
        tmp.rename(out.parent)
        return {"onnx": str(out), "cached": False, "export_seconds": time.time() - t0}

    def load(self, args) -> None:
        import onnxruntime as ort

        p = self.path(args)
        if not p.exists():
            raise Unavailable(f"{p} missing (prepare step did not run)")
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        self.ort_version = ort.__version__

    def encode(self, ids, texts, args):
        n = len(ids)
        dense, lexical, colbert = [None] * n, [None] * n, [None] * n
        for idx in batches_by_length(ids, args.batch_size):
            input_ids, mask = pad_batch(ids, idx)
            d, s, c = self.sess.run(None, {"input_ids": input_ids, "attention_mask": mask})
            for r, i in enumerate(idx):
                L = len(ids[i])
                dense[i] = d[r]
                lexical[i] = lexical_dict(s[r, :L], ids[i])
                colbert[i] = c[r, :L - 1]
        return dense, lexical, colbert

    def info(self) -> dict:
        return {"onnxruntime": self.ort_version, "providers": self.sess.get_providers()}


class CTranslate2Engine(Engine):
    name = "ctranslate2"
    describe = ("transformers checkpoint converted by ctranslate2's TransformersConverter (float32), run by "
                "ctranslate2.Encoder.forward_batch (compute_type float32, intra_threads = --threads) on "
                "length-sorted batches of --batch-size id lists (it pads inside); BGE-M3 heads in numpy "
                "(for the converter: XLMRobertaConfig.position_embedding_type, gone in transformers 5, set to "
                "'absolute'; the fixture tokenizer's vocabulary padded with placeholders to the embedding rows)")

    def check(self, args) -> None:
        try:
            import ctranslate2  # noqa: F401
        except ImportError as e:
            raise Unavailable(f"ctranslate2 is not installed ({e}); run bench/setup.sh") from e

    def path(self, args) -> Path:
        import ctranslate2

        return CACHE / "ct2" / model_key(Path(args.model), "ct2-v1", ctranslate2.__version__)

    def prepare(self, args) -> dict:
        out = self.path(args)
        if (out / "model.bin").exists():
            return {"ct2": str(out), "cached": True}
        fail = out.with_name(out.name + ".unavailable")
        if fail.exists():
            raise Unavailable(fail.read_text().strip())
        import shutil

        import ctranslate2
        from ctranslate2.converters import TransformersConverter

        import transformers

        # transformers 5 dropped XLMRobertaConfig.position_embedding_type (XLM-R only has
        # absolute positions now); ctranslate2 4.8's loader still asserts it is "absolute".
        if not hasattr(transformers.XLMRobertaConfig(), "position_embedding_type"):
            transformers.XLMRobertaConfig.position_embedding_type = "absolute"
        # The benchmark snapshots ship a 1202-piece fixture tokenizer for a 250002-row
        # embedding table (bench/README.md); the converter wants one token string per row.
        # We feed ids, so pad the vocabulary with placeholder strings (no-op on the real model).
        from ctranslate2.converters import transformers as ct2t

        loader = ct2t._MODEL_LOADERS["XLMRobertaConfig"]
        if not getattr(loader, "_m3_padded", False):
            base = type(loader).get_vocabulary

            def padded(self, model, tokenizer, _base=base):
                tokens = _base(self, model, tokenizer)
                n = model.config.vocab_size
                return tokens + [f"<m3bench-unused-{i}>" for i in range(len(tokens), n)]

            type(loader).get_vocabulary = padded
            loader._m3_padded = True
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.time()
        try:
            TransformersConverter(str(args.model)).convert(str(tmp), quantization="float32", force=True)
        except Exception as e:  # noqa: BLE001
            reason = f"ctranslate2 {ctranslate2.__version__} TransformersConverter failed: {type(e).__name__}: {e}"
            fail.parent.mkdir(parents=True, exist_ok=True)
            fail.write_text(reason[:500])
            raise Unavailable(reason) from e
        tmp.rename(out)
        return {"ct2": str(out), "cached": False, "convert_seconds": time.time() - t0}

    def load(self, args) -> None:
        import ctranslate2

        p = self.path(args)
        if not (p / "model.bin").exists():
            raise Unavailable(f"{p} missing (prepare step did not run)")
        self.enc = ctranslate2.Encoder(str(p), device="cpu", compute_type="float32",
                                       intra_threads=args.threads, inter_threads=1)
        self.heads = NumpyHeads(Path(args.model))
        self.version = ctranslate2.__version__

    def encode(self, ids, texts, args):
        import numpy as np

        n = len(ids)
        res = {"dense": [None] * n, "lexical": [None] * n, "colbert": [None] * n}
        for idx in batches_by_length(ids, args.batch_size):
            out = self.enc.forward_batch([ids[i] for i in idx])
            hidden = np.asarray(out.last_hidden_state, dtype=np.float32)
            self.heads(hidden, ids, idx, res)
        return res["dense"], res["lexical"], res["colbert"]

    def info(self) -> dict:
        return {"ctranslate2": self.version}


def llama_sources() -> Path | None:
    """The llama.cpp sources bench/setup.sh unpacked next to the bench virtualenv."""
    venv = Path(sys.prefix)
    hits = sorted(glob.glob(str(venv / "llama-src" / "llama_cpp_python-*" / "vendor" / "llama.cpp")))
    return Path(hits[-1]) if hits else None


class LlamaCppEngine(Engine):
    name = "llama.cpp"
    describe = ("snapshot converted to GGUF (f32) by llama.cpp's convert_hf_to_gguf.py (XLMRobertaModel -> BERT "
                "arch), run by llama-cpp-python's low-level API in embeddings mode with pooling NONE (per-token "
                "last hidden states), n_threads = --threads; length-sorted sequences packed without padding into "
                "llama_encode batches of <= 2048 tokens (llama-server's n_batch; a longer text goes alone) and <= 64 "
                "sequences, one seq_id each (n_ctx = n_batch = n_ubatch = 8192); BGE-M3 heads in numpy")

    def check(self, args) -> None:
        try:
            import llama_cpp  # noqa: F401
        except Exception as e:  # noqa: BLE001
            raise Unavailable("llama-cpp-python is not installed (M3_BENCH_LLAMA=1 bench/setup.sh builds it): "
                              f"{type(e).__name__}: {e}") from e

    def path(self, args) -> Path:
        import llama_cpp

        return CACHE / "gguf" / model_key(Path(args.model), "gguf-v1", llama_cpp.__version__) / "model-f32.gguf"

    def prepare(self, args) -> dict:
        out = self.path(args)
        if out.exists():
            return {"gguf": str(out), "cached": True}
        fail = out.with_name("unavailable.txt")
        if fail.exists():
            raise Unavailable(fail.read_text().strip())
        src = llama_sources()
        if src is None:
            raise Unavailable("llama.cpp sources (convert_hf_to_gguf.py) not found next to the venv; "
                              "run M3_BENCH_LLAMA=1 bench/setup.sh")
        out.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(src / "gguf-py") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        t0 = time.time()
        p = subprocess.run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(args.model), "--outtype", "f32",
                            "--outfile", str(out) + ".partial"], env=env, capture_output=True, text=True)
        if p.returncode != 0:
            tail = " | ".join((p.stderr or p.stdout).strip().splitlines()[-3:])
            reason = f"convert_hf_to_gguf.py failed (exit {p.returncode}): {tail}"
            fail.write_text(reason[:600])
            raise Unavailable(reason)
        os.rename(str(out) + ".partial", out)
        return {"gguf": str(out), "cached": False, "convert_seconds": time.time() - t0}

    def load(self, args) -> None:
        import llama_cpp as lc

        p = self.path(args)
        if not p.exists():
            raise Unavailable(f"{p} missing (prepare step did not run)")
        # llama.cpp logs every tensor and vocabulary piece to stderr (some pieces of the fixture
        # tokenizer are not UTF-8 and make llama-cpp-python's own logger raise): silence it.
        self._log_cb = lc.llama_log_callback(lambda level, text, user_data: None)
        lc.llama_log_set(self._log_cb, ctypes.c_void_p(0))
        lc.llama_backend_init()
        mp = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(str(p).encode(), mp)
        if not self.model:
            raise Unavailable(f"llama.cpp could not load {p}")
        cp = lc.llama_context_default_params()
        cp.n_ctx = MAX_LENGTH
        cp.n_batch = MAX_LENGTH
        cp.n_ubatch = MAX_LENGTH
        cp.n_seq_max = self.MAX_SEQS
        cp.kv_unified = True
        cp.n_threads = args.threads
        cp.n_threads_batch = args.threads
        cp.embeddings = True
        cp.pooling_type = lc.LLAMA_POOLING_TYPE_NONE
        self.ctx = lc.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise Unavailable("llama.cpp could not create a context for this model")
        self.n_embd = lc.llama_model_n_embd(self.model)
        self.heads = NumpyHeads(Path(args.model))
        self.lc = lc
        self.version = lc.__version__

    MAX_SEQS = 64  # sequences per llama_encode call (each its own seq_id: no padding)
    # Tokens per llama_encode call: llama-server's default n_batch. A pack attends over all
    # its tokens with a mask across sequences, so bigger packs cost quadratically more;
    # a longer sequence goes alone (n_ubatch = 8192 lets one 8192-token text through).
    PACK_TOKENS = int(os.environ.get("M3_BENCH_LLAMA_PACK_TOKENS", "2048"))

    def encode(self, ids, texts, args):
        import numpy as np

        lc = self.lc
        n = len(ids)
        res = {"dense": [None] * n, "lexical": [None] * n, "colbert": [None] * n}
        # Pack length-sorted sequences into batches of <= 8192 tokens and <= MAX_SEQS sequences.
        groups, cur, cur_tokens = [], [], 0
        for i in sorted(range(n), key=lambda k: -len(ids[k])):
            if cur and (cur_tokens + len(ids[i]) > self.PACK_TOKENS or len(cur) == self.MAX_SEQS):
                groups.append(cur)
                cur, cur_tokens = [], 0
            cur.append(i)
            cur_tokens += len(ids[i])
        if cur:
            groups.append(cur)
        for group in groups:
            total = sum(len(ids[i]) for i in group)
            batch = lc.llama_batch_init(total, 0, 1)
            try:
                batch.n_tokens = total
                j = 0
                for s, i in enumerate(group):
                    for p, t in enumerate(ids[i]):
                        batch.token[j] = t
                        batch.pos[j] = p
                        batch.n_seq_id[j] = 1
                        batch.seq_id[j][0] = s
                        batch.logits[j] = 1
                        j += 1
                mem = lc.llama_get_memory(self.ctx)
                if mem:
                    lc.llama_memory_clear(mem, True)
                rc = lc.llama_encode(self.ctx, batch)
                if rc != 0:
                    raise RuntimeError(f"llama_encode returned {rc}")
                ptr = lc.llama_get_embeddings(self.ctx)
                flat = np.ctypeslib.as_array(ptr, shape=(total * self.n_embd,)).reshape(total, self.n_embd)
            finally:
                lc.llama_batch_free(batch)
            off = 0
            for i in group:
                L = len(ids[i])
                self.heads(flat[None, off:off + L], ids, [i], res)
                off += L
        return res["dense"], res["lexical"], res["colbert"]

    def info(self) -> dict:
        return {"llama_cpp_python": self.version}


ENGINES: dict[str, Engine] = {e.name: e for e in [
    M3Embed("fp32"), M3Embed("bf16"), M3Embed("int8"),
    FlagEmbeddingEngine(False), FlagEmbeddingEngine(True),
    OnnxRuntimeEngine(), CTranslate2Engine(), LlamaCppEngine(),
]}


# ---------------------------------------------------------------------------------------
# Worker
# ---------------------------------------------------------------------------------------


def cmd_prepare(args) -> int:
    eng = ENGINES[args.engine]
    try:
        eng.check(args)
        info = eng.prepare(args)
        result = {"status": "ok", **info}
    except Unavailable as e:
        result = {"status": "unavailable", "reason": str(e)}
    except Exception as e:  # noqa: BLE001
        result = {"status": "unavailable", "reason": f"prepare failed: {type(e).__name__}: {e}"[:600]}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_run(args) -> int:
    t_start = time.time()
    eng = ENGINES[args.engine]
    data = json.loads(Path(args.inputs).read_text())
    ids, texts = data["ids"], data.get("texts") or []
    tokens = sum(len(x) for x in ids)
    rss_start = rss_bytes()
    try:
        eng.check(args)
        t0 = time.time()
        eng.load(args)
        load_s = time.time() - t0
    except Unavailable as e:
        Path(args.json).write_text(json.dumps({"status": "unavailable", "reason": str(e)}) + "\n")
        return 0
    rss_load, peak_load = rss_bytes(), hwm_bytes()
    t0 = time.time()
    out = None
    for _ in range(args.warmup):
        out = eng.encode(ids, texts, args)
    warm_s = time.time() - t0
    rss_warm = rss_bytes()
    reset_hwm()
    seconds: list[float] = []
    for r in range(args.repeat):
        if r > 0 and args.budget_s > 0 and (time.time() - t_start) + seconds[-1] > args.budget_s:
            print(f"{eng.name}: budget of {args.budget_s:.0f} s reached after {r} timed runs", file=sys.stderr)
            break
        t0 = time.time()
        out = eng.encode(ids, texts, args)
        seconds.append(time.time() - t0)
    peak_runs = hwm_bytes()
    med = statistics.median(seconds)
    if args.outputs:
        dense, lexical, colbert = out
        write_outputs(args.outputs, dense, lexical, colbert, [len(x) for x in ids])
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report = {
        "status": "ok", "engine": eng.name, "dtype": eng.dtype, "backend": eng.name, "threads": args.threads,
        "batch_size": args.batch_size, "inputs": eng.inputs,
        "outputs": {"dense": True, "sparse": True, "colbert": True},
        "texts": len(ids), "tokens": tokens,
        "padded_tokens": sum(len(b) * max(len(ids[i]) for i in b) for b in batches_by_length(ids, args.batch_size)),
        "repeat": args.repeat, "runs": len(seconds), "warmup": args.warmup,
        "seconds": seconds, "median_seconds": med, "tokens_per_second": tokens / med,
        "tokens_per_second_runs": [tokens / s for s in seconds],
        "load_seconds": load_s, "warmup_seconds": warm_s,
        "rss_before_load_bytes": rss_start, "rss_after_load_bytes": rss_load, "rss_after_warmup_bytes": rss_warm,
        "peak_rss_load_bytes": peak_load, "peak_rss_runs_bytes": peak_runs,
        "peak_rss_bytes": max(ru, peak_load, peak_runs), "ru_maxrss_bytes": ru,
        **eng.info(),
    }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{eng.name}: {len(ids)} texts, {tokens} tokens, {tokens / med:.0f} tokens/s (median of {len(seconds)}), "
          f"load {load_s:.1f} s, peak RSS {report['peak_rss_bytes'] / 2**20:.0f} MiB", file=sys.stderr)
    return 0


def add_common(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--engine", required=True, choices=sorted(ENGINES))
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", required=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="One benchmark engine run (used by bench/peers.py; see the module doc).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="one-off conversion (ONNX export, CT2/GGUF conversion), cached")
    add_common(p)
    r = sub.add_parser("run", help="load the engine and time the workload")
    add_common(r)
    r.add_argument("--inputs", required=True, help='JSON {"ids": [[...]], "texts": [...]}')
    r.add_argument("--repeat", type=int, default=3)
    r.add_argument("--warmup", type=int, default=1)
    r.add_argument("--budget-s", type=float, default=0)
    r.add_argument("--outputs", help="dump the last run's outputs (FILE.json + .dense.npy + .colbert.npy)")
    args = ap.parse_args(argv)
    return cmd_prepare(args) if args.cmd == "prepare" else cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
