#!/usr/bin/env python3
"""GPU benchmark: m3embed (CUDA) against transformers on PyTorch fp16 with SDPA attention.

On one NVIDIA GPU, every engine on every workload (bench/workloads.py: W1 64x128, W2 64 x
16..512, W3 2x2048, W4 1x8192, mix 256 texts ~40k tokens; each one request, token ids in),
each (engine, workload) in its own process:

  m3embed-fp16 (and m3embed-bf16 with --m3-dtypes fp16,bf16)
      build/m3bench-workload --device cuda --dtype ...: ids packed without padding into
      passes of --max-batch-tokens; one device allocation per replica (weights + arena +
      cuBLASLt workspace), reported against cudaMemGetInfo before the allocation, after
      warm-up and after the timed runs.
  transformers-fp16-sdpa
      `gpu_peers.py run-torch` (this file, in a child process): XLMRobertaModel in
      torch.float16 with attn_implementation="sdpa", plus BGE-M3's colbert/sparse heads in
      fp16, computing the three outputs the way FlagEmbedding's BGEM3FlagModel does (sort by
      length, batches of --batch-size padded to their longest, outputs copied to the host
      inside the timed region); peak device memory from torch's allocator and cudaMemGetInfo.

Tokens/s counts real tokens (no padding) over the median of --repeat timed runs after
--warmup untimed ones; model load and warm-up are excluded. `--soak` adds build/m3bench-soak
on CUDA (2,000 mixed requests of 1..8 texts): device memory growth after warm-up (goal: 0
bytes) and the most used against the plan plus the CUDA context (goal: within 2%).

Before any run it checks that there is a usable GPU for both engines (a tiny m3bench-workload
run with --device cuda, and torch.cuda.is_available() in --python) and stops with one line
saying why when there is not. Writes bench/results/DATE-gpu-peers-LABEL.json and .md (per-run
logs and reports: ~/.cache/m3embed/bench/logs/DATE-gpu-peers-LABEL/). Like peers.py, it waits
before each run (at most --quiet-timeout-s) for the host's 1-minute load average to be at most
--max-load-per-core x the CPUs and records each run's load before and after (the .md says
"taken on a loaded machine" when a run started above it; bench/README.md, "Machine load").

On the GPU machine, from the repository root (CUDA build, torch with CUDA + transformers in
the Python that runs it, the full-size model from bench/make_full_model.py):

    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DM3_CUDA=ON && cmake --build build -j --target m3bench-workload m3bench-soak
    python3 bench/make_full_model.py          # once: ~/.cache/m3embed/bench/bge-m3-random
    python3 bench/gpu_peers.py --label H100 --soak
    python3 bench/gpu_peers.py --label H100-bf16 --m3-dtypes fp16,bf16 --workloads W1,W4
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peer_engines as pe  # noqa: E402  (stdlib only at import time; torch stays lazy)
import peers  # noqa: E402
import report_common as rc  # noqa: E402
import workloads as wl  # noqa: E402

REPO = HERE.parent
TORCH_ENGINE = "transformers-fp16-sdpa"
ENGINE_GROUPS = ("m3embed", "transformers")
M3_DTYPES = ("fp16", "bf16", "fp32")
SOAK_PLAN_TOLERANCE_PERCENT = 2.0
CHILD_COMMANDS = ("run-torch", "check-torch")


# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Internal subcommands (run by this script in child processes): `gpu_peers.py run-torch --help` "
               "(one transformers run) and `gpu_peers.py check-torch` (is there a CUDA GPU for torch?).")
    ap.add_argument("--model", type=Path, default=peers.DEFAULT_MODEL,
                    help="model snapshot directory (default: %(default)s, made by bench/make_full_model.py)")
    ap.add_argument("--workloads", default=",".join(peers.ALL_WORKLOADS),
                    help="comma-separated workloads from bench/workloads.py (default: %(default)s); "
                         "empty ('') with --soak runs only the soak")
    ap.add_argument("--engines", default=",".join(ENGINE_GROUPS),
                    help="comma-separated: m3embed, transformers (default: %(default)s)")
    ap.add_argument("--m3-dtypes", default="fp16",
                    help="m3embed precisions to run, each its own engine: fp16, bf16, fp32 (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="timed runs per (engine, workload); tokens/s is their median (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed runs before them, after load (default: %(default)s)")
    ap.add_argument("--budget-s", type=float, default=600,
                    help="time budget per (engine, workload) process, load included: no timed run starts that "
                         "would pass it, and the process is killed at 1.5x plus 120 s (default: %(default)s); "
                         "also the soak's --max-seconds")
    ap.add_argument("--batch-size", type=int, default=32,
                    help="transformers: texts per padded batch, sorted longest first as FlagEmbedding does "
                         "(default: %(default)s)")
    ap.add_argument("--max-batch-tokens", type=int, default=16384,
                    help="m3embed: tokens per forward pass, which sizes its planned arena (default: %(default)s)")
    ap.add_argument("--binary", type=Path, default=pe.DEFAULT_BINARY,
                    help="the m3bench-workload binary, built with CUDA (default: %(default)s)")
    ap.add_argument("--soak-binary", type=Path, default=None,
                    help="the m3bench-soak binary (default: m3bench-soak next to --binary)")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter with torch (CUDA) and transformers for the transformers runs "
                         "(default: this one, %(default)s)")
    ap.add_argument("--soak", action="store_true",
                    help="also run m3bench-soak --device cuda --dtype fp16 --texts-per-request 8 and report its "
                         "device memory growth after warm-up and its use against plan + context")
    ap.add_argument("--soak-requests", type=int, default=2000, help="requests in the soak (default: %(default)s)")
    ap.add_argument("--label", default=None,
                    help="results name: DATE-gpu-peers-LABEL (default: the model directory name)")
    ap.add_argument("--out-dir", type=Path, default=peers.RESULTS, help="where results go (default: bench/results)")
    rc.add_load_args(ap, docs=False)
    args = ap.parse_args(argv)

    args.workloads = split_list(args.workloads)
    args.engines = split_list(args.engines)
    args.m3_dtypes = split_list(args.m3_dtypes)
    for bad, known, what in [([e for e in args.engines if e not in ENGINE_GROUPS], ENGINE_GROUPS, "engine"),
                             ([d for d in args.m3_dtypes if d not in M3_DTYPES], M3_DTYPES, "m3 dtype")]:
        if bad:
            ap.error(f"unknown {what}(s) {bad}; known: {', '.join(known)}")
    for w in args.workloads:
        try:
            wl.resolve(w)
        except ValueError as e:
            ap.error(str(e))
    if not args.workloads and not args.soak:
        ap.error("nothing to run: no --workloads and no --soak")
    if "m3embed" in args.engines and not args.m3_dtypes:
        ap.error("--m3-dtypes is empty")
    if args.repeat < 1 or args.warmup < 0 or args.batch_size < 1:
        ap.error("--repeat must be >= 1, --warmup >= 0, --batch-size >= 1")
    args.model = args.model.expanduser()
    if not (args.model / "config.json").exists():
        ap.error(f"{args.model} is not a model snapshot (no config.json); make the full-size random BGE-M3 with "
                 "`python3 bench/make_full_model.py` (or pass --model DIR)")
    args.soak_binary = args.soak_binary or args.binary.parent / "m3bench-soak"
    args.label = args.label or args.model.name
    return args


def split_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def m3_engines(args) -> list[str]:
    return [f"m3embed-{d}" for d in args.m3_dtypes] if "m3embed" in args.engines else []


def engine_names(args) -> list[str]:
    return m3_engines(args) + ([TORCH_ENGINE] if "transformers" in args.engines else [])


# ---------------------------------------------------------------------------------------
# Preflight: is there a GPU for each engine? (fails in about a second on a machine without one)
# ---------------------------------------------------------------------------------------


class NoGpu(Exception):
    """No usable GPU (or a missing binary / package) for an engine: the one-line reason."""


def check_binaries(args) -> None:
    need = ([args.binary] if "m3embed" in args.engines else []) + ([args.soak_binary] if args.soak else [])
    for b in need:
        if not Path(b).exists():
            raise NoGpu(f"{b} is missing; build the bench binaries with CUDA: cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DM3_CUDA=ON && "
                        "cmake --build build -j --target m3bench-workload m3bench-soak")


def check_m3_gpu(args, env: dict, logs: Path) -> dict:
    """A one-text m3bench-workload run with --device cuda: the binary says why it cannot use a GPU."""
    ids = logs / "preflight.ids.json"
    ids.write_text(json.dumps([[0, 5, 6, 2]]))
    report, log = logs / "preflight-m3.json", logs / "preflight-m3.log"
    report.unlink(missing_ok=True)
    cmd = [str(args.binary), "--model", str(args.model), "--ids", str(ids), "--device", "cuda", "--dtype", "fp16",
           "--max-batch-tokens", "64", "--max-seq-len", "64", "--repeat", "1", "--warmup", "0", "--json", str(report)]
    r = peers.run_child(cmd, env, log, 600)
    try:
        rep = json.loads(report.read_text())
    except (OSError, ValueError):
        why = peers.log_tail(log, 1) or f"exit {r['exit']}"
        raise NoGpu(f"m3embed cannot run on the GPU: {why}") from None
    if not rep.get("device_memory"):
        raise NoGpu(f"m3bench-workload --device cuda ran on {rep.get('device')}, not on a GPU")
    return {"device": rep.get("device"), "total_bytes": rep["device_memory"][0].get("total_bytes")}


def check_torch_gpu(args, env: dict, logs: Path) -> dict:
    """`gpu_peers.py check-torch` in --python: torch importable, CUDA available, transformers importable."""
    out, log = logs / "preflight-torch.json", logs / "preflight-torch.log"
    out.unlink(missing_ok=True)
    r = peers.run_child([args.python, str(Path(__file__).resolve()), "check-torch", "--json", str(out)], env, log, 300)
    try:
        info = json.loads(out.read_text())
    except (OSError, ValueError):
        why = peers.log_tail(log, 1) or f"exit {r['exit']}"
        raise NoGpu(f"{args.python} could not check torch: {why}") from None
    if not info.get("ok"):
        raise NoGpu(f"transformers cannot run on the GPU with {args.python}: {info.get('reason')}")
    return info


def preflight(args, env: dict, logs: Path) -> dict:
    """GPU facts for the report, or NoGpu. The m3 check goes first: it fails fastest without a GPU."""
    check_binaries(args)
    gpu = {}
    if "m3embed" in args.engines or args.soak:
        gpu["m3embed"] = check_m3_gpu(args, env, logs)
    if "transformers" in args.engines:
        gpu["torch"] = check_torch_gpu(args, env, logs)
    return gpu


# ---------------------------------------------------------------------------------------
# The transformers peer (child process; torch is imported only here)
# ---------------------------------------------------------------------------------------


def cmd_check_torch(argv) -> int:
    ap = argparse.ArgumentParser(prog="gpu_peers.py check-torch",
                                 description="Write {ok, reason, torch, transformers, cuda, device} as JSON.")
    ap.add_argument("--json", required=True, help="write the result here")
    args = ap.parse_args(argv)
    info: dict = {"ok": False}
    try:
        import torch

        info.update(torch=torch.__version__, cuda=torch.version.cuda)
        if not torch.cuda.is_available():
            why = ("this torch is built without CUDA" if torch.version.cuda is None
                   else f"torch.cuda.is_available() is False ({torch.cuda.device_count()} devices visible; "
                        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
            raise RuntimeError(f"no CUDA GPU for torch {torch.__version__}: {why}")
        import transformers

        props = torch.cuda.get_device_properties(0)
        info.update(ok=True, transformers=transformers.__version__, device=props.name,
                    total_bytes=props.total_memory, capability=f"{props.major}.{props.minor}")
    except Exception as e:  # noqa: BLE001  (ImportError, RuntimeError, driver errors: all mean "cannot run")
        info["reason"] = f"{type(e).__name__}: {e}" if not isinstance(e, RuntimeError) else str(e)
    Path(args.json).write_text(json.dumps(info, indent=2) + "\n")
    return 0


def dtype_kwarg(transformers) -> str:
    """transformers >= 4.56 takes `dtype=`; older ones only `torch_dtype=` (5.x still accepts it, with a warning)."""
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class TorchM3:
    """XLMRobertaModel (fp16, SDPA) + BGE-M3's heads, with FlagEmbedding's batching and output formulas.

    FlagEmbedding 1.4.2 (inference/embedder/encoder_only/m3.py, encode_single_device, and
    finetune/embedder/encoder_only/m3/modeling.py, EncoderOnlyEmbedderM3ModelForInference):
    - dense = normalize(last_hidden[:, 0]) (pooling "cls", normalize_embeddings=True);
    - sparse: token weights relu(sparse_linear(last_hidden)), then per text the largest weight
      of each token id, ids of <s>, </s>, <pad>, <unk> (0, 2, 1, 3) and weights <= 0 dropped;
    - colbert = normalize(colbert_linear(last_hidden[:, 1:]) * mask[:, 1:, None].float()),
      per text its first (tokens - 1) rows.
    Inputs are sorted longest first, cut into batches of batch_size and padded (right, id 1)
    to each batch's longest, with an attention mask. Two differences in where, not what: the
    lexical max runs on the GPU (a sort + scatter-max over the batch's tokens) and only the
    ColBERT rows of real tokens are gathered before the copy, instead of FlagEmbedding's
    copy of the padded tensors and Python loop on the host. The outputs per text are numpy
    arrays: dense [1024] fp16, lexical (ids, weights), colbert [tokens - 1, 1024] float32.
    """

    def __init__(self, model_dir: Path, device: str = "cuda", dtype: str = "float16"):
        import torch
        import transformers

        self.torch, self.device = torch, device
        self.dtype = getattr(torch, dtype)  # float16 here; float32 only to check the formulas on a CPU
        model = transformers.XLMRobertaModel.from_pretrained(
            str(model_dir), attn_implementation="sdpa", **{dtype_kwarg(transformers): self.dtype})
        self.model = model.to(device).eval()  # .cuda().eval()
        self.colbert = self._linear(model_dir / "colbert_linear.pt")
        self.sparse = self._linear(model_dir / "sparse_linear.pt")
        self.special = torch.tensor(pe.SPECIAL_IDS, device=device)
        self.attn = getattr(self.model.config, "_attn_implementation", "?")
        self.param_dtype = str(next(self.model.parameters()).dtype)
        if self.param_dtype != str(self.dtype):
            raise RuntimeError(f"model loaded as {self.param_dtype}, not {self.dtype}")

    def _linear(self, path: Path):
        torch = self.torch
        state = torch.load(path, map_location=self.device, weights_only=True)
        out_features, in_features = state["weight"].shape
        lin = torch.nn.Linear(in_features, out_features, device=self.device, dtype=self.dtype)
        lin.load_state_dict(state)
        return lin.eval()

    def encode(self, ids: list[list[int]], batch_size: int):
        """-> (dense, lexical, colbert) lists in input order, on the host."""
        n = len(ids)
        dense, lexical, colbert = [None] * n, [None] * n, [None] * n
        for idx in pe.batches_by_length(ids, batch_size):
            d, lx, cb = self._batch(ids, idx)
            for k, i in enumerate(idx):
                dense[i], lexical[i], colbert[i] = d[k], lx[k], cb[k]
        return dense, lexical, colbert

    def _batch(self, ids, idx):
        torch, F = self.torch, self.torch.nn.functional
        input_ids, mask = pe.pad_batch(ids, idx)
        input_ids = torch.from_numpy(input_ids).to(self.device)
        mask = torch.from_numpy(mask).to(self.device)
        h = self.model(input_ids=input_ids, attention_mask=mask, return_dict=True).last_hidden_state
        dense = F.normalize(h[:, 0], dim=-1)
        weights = torch.relu(self.sparse(h)).squeeze(-1)
        col = F.normalize(self.colbert(h[:, 1:]) * mask[:, 1:][:, :, None].float(), dim=-1)
        col = col[mask[:, 1:].bool()]  # the real tokens' rows, text after text
        lex = self._lexical(input_ids, mask, weights)
        counts = [len(ids[i]) - 1 for i in idx]
        col_host = col.cpu().numpy()
        offsets = [0]
        for c in counts:
            offsets.append(offsets[-1] + c)
        return (dense.cpu().numpy(), lex,
                [col_host[offsets[k]:offsets[k + 1]] for k in range(len(idx))])

    def _lexical(self, input_ids, mask, weights):
        """Per row: (token ids, max weight) over its real, non-special tokens with weight > 0, ids ascending."""
        torch = self.torch
        vocab = int(self.model.config.vocab_size)
        rows = torch.arange(input_ids.shape[0], device=self.device)[:, None].expand_as(input_ids)
        keep = mask.bool() & ~torch.isin(input_ids, self.special)
        keys = (rows * vocab + input_ids)[keep]
        uniq, inverse = torch.unique(keys, return_inverse=True)
        best = torch.zeros(uniq.shape[0], device=self.device, dtype=torch.float32)
        best.scatter_reduce_(0, inverse, weights[keep].float(), reduce="amax", include_self=True)
        pos = best > 0
        uniq, best = uniq[pos].cpu().numpy(), best[pos].to(weights.dtype).cpu().numpy()
        row_of = uniq // vocab
        bounds = row_of.searchsorted(range(input_ids.shape[0] + 1))
        return [(uniq[a:b] % vocab, best[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def device_used(torch) -> int:
    free, total = torch.cuda.mem_get_info()
    return total - free


def cmd_run_torch(argv) -> int:
    ap = argparse.ArgumentParser(prog="gpu_peers.py run-torch",
                                 description="One transformers fp16/SDPA run on one workload (used by gpu_peers.py).")
    ap.add_argument("--model", type=Path, required=True, help="model snapshot directory")
    ap.add_argument("--ids", required=True, help="JSON list of token-id lists, one request")
    ap.add_argument("--batch-size", type=int, default=32, help="texts per padded batch (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first (default: %(default)s)")
    ap.add_argument("--budget-s", type=float, default=0, help="no timed run starts that would pass this (0: none)")
    ap.add_argument("--json", required=True, help="write the report here")
    args = ap.parse_args(argv)
    try:
        report = run_torch(args)
    except Exception as e:  # noqa: BLE001  (OOM, load errors: reported, not raised)
        status = "oom" if type(e).__name__ == "OutOfMemoryError" else "failed"
        report = {"status": status, "reason": f"{type(e).__name__}: {e}"[:600]}
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if report["status"] == "ok":
        print(f"{TORCH_ENGINE}: {report['texts']} texts, {report['tokens']} tokens, "
              f"{report['tokens_per_second']:.0f} tokens/s, peak allocated "
              f"{rc.mib(report['peak_allocated_bytes'])} MiB", file=sys.stderr)
    return 0 if report["status"] == "ok" else 1


def run_torch(args) -> dict:
    import torch
    import transformers

    t_start = time.time()
    ids = json.loads(Path(args.ids).read_text())
    tokens = sum(len(x) for x in ids)
    used_before = device_used(torch)  # the CUDA context (mem_get_info creates it)
    t0 = time.time()
    m = TorchM3(args.model)
    load_s = time.time() - t0
    used_load = device_used(torch)
    out = None
    with torch.inference_mode():
        t0 = time.time()
        for _ in range(args.warmup):
            out = m.encode(ids, args.batch_size)
        torch.cuda.synchronize()
        warm_s = time.time() - t0
        used_warm = device_used(torch)
        peak_alloc_warm, peak_res_warm = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
        torch.cuda.reset_peak_memory_stats()
        seconds: list[float] = []
        for r in range(args.repeat):
            if r > 0 and args.budget_s > 0 and (time.time() - t_start) + seconds[-1] > args.budget_s:
                print(f"{TORCH_ENGINE}: budget of {args.budget_s:.0f} s reached after {r} timed runs", file=sys.stderr)
                break
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = m.encode(ids, args.batch_size)
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - t0)
    used_end = device_used(torch)
    dense, lexical, colbert = out
    med = statistics.median(seconds)
    props = torch.cuda.get_device_properties(0)
    return {
        "status": "ok", "engine": TORCH_ENGINE, "dtype": "fp16", "param_dtype": m.param_dtype,
        "attn_implementation": m.attn, "batch_size": args.batch_size,
        "texts": len(ids), "tokens": tokens,
        "padded_tokens": sum(len(b) * max(len(ids[i]) for i in b) for b in pe.batches_by_length(ids, args.batch_size)),
        "repeat": args.repeat, "runs": len(seconds), "warmup": args.warmup,
        "seconds": seconds, "median_seconds": med, "tokens_per_second": tokens / med,
        "tokens_per_second_runs": [tokens / s for s in seconds],
        "load_seconds": load_s, "warmup_seconds": warm_s,
        "device": f"cuda:0 ({props.name})", "device_total_bytes": props.total_memory,
        "device_used_before_load_bytes": used_before, "device_used_after_load_bytes": used_load,
        "device_used_after_warmup_bytes": used_warm, "device_used_after_runs_bytes": used_end,
        "peak_allocated_load_warmup_bytes": peak_alloc_warm, "peak_reserved_load_warmup_bytes": peak_res_warm,
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
        "outputs": {"dense": len(dense), "lexical_entries": int(sum(len(t) for t, _ in lexical)),
                    "colbert_rows": int(sum(c.shape[0] for c in colbert))},
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
    }


# ---------------------------------------------------------------------------------------
# Runs (parent)
# ---------------------------------------------------------------------------------------


def child_env() -> dict:
    env = dict(os.environ)
    env["TQDM_DISABLE"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")  # a local snapshot; the GPU machine has no network
    env.setdefault("M3_LOG_LEVEL", "warn")
    return env


def engine_command(engine: str, ids_file: str, report: str, args) -> list[str]:
    if engine == TORCH_ENGINE:
        return [args.python, str(Path(__file__).resolve()), "run-torch", "--model", str(args.model), "--ids", ids_file,
                "--batch-size", str(args.batch_size), "--repeat", str(args.repeat), "--warmup", str(args.warmup),
                "--budget-s", f"{args.budget_s:.0f}", "--json", report]
    dtype = engine.removeprefix("m3embed-")
    return [str(args.binary), "--model", str(args.model), "--ids", ids_file, "--device", "cuda", "--dtype", dtype,
            "--max-batch-tokens", str(args.max_batch_tokens), "--repeat", str(args.repeat),
            "--warmup", str(args.warmup), "--budget-s", f"{args.budget_s:.0f}", "--json", report]


def m3_device_memory(rep: dict) -> dict:
    """m3bench-workload's device_memory (first CUDA replica) as the table's figures."""
    dm = (rep.get("device_memory") or [{}])[0]
    if "used_now_bytes" not in dm:
        return {}
    return {"planned_bytes": dm.get("planned_bytes", rep.get("plan_total_bytes")),
            "context_bytes": dm["used_before_replica_bytes"],
            "replica_used_bytes": dm["used_now_bytes"] - dm["used_before_replica_bytes"],
            "used_incl_context_bytes": dm["used_now_bytes"],
            "growth_after_warmup_bytes": dm["used_now_bytes"] - dm["used_after_warmup_bytes"],
            "device_total_bytes": dm.get("total_bytes")}


def torch_device_memory(rep: dict) -> dict:
    return {"peak_allocated_bytes": rep["peak_allocated_bytes"], "peak_reserved_bytes": rep["peak_reserved_bytes"],
            "context_bytes": rep["device_used_before_load_bytes"],
            "used_incl_context_bytes": rep["device_used_after_runs_bytes"],
            "growth_after_warmup_bytes": rep["device_used_after_runs_bytes"] - rep["device_used_after_warmup_bytes"],
            "device_total_bytes": rep["device_total_bytes"]}


def run_one(engine: str, workload: str, ids_file: str, args, env: dict, logs: Path) -> dict:
    report, log = logs / f"{engine}-{workload}.json", logs / f"{engine}-{workload}.log"
    report.unlink(missing_ok=True)
    cmd = engine_command(engine, ids_file, str(report), args)
    r = peers.run_child(cmd, env, log, 1.5 * args.budget_s + 120)
    row = {"engine": engine, "workload": workload, "command": cmd, "wall_s": r["wall_s"],
           "host_peak_rss_bytes": r["peak_rss_bytes"], "log": str(log)}
    if r["timed_out"]:
        return {**row, "status": "timeout", "reason": f"killed after {r['wall_s']:.0f} s (budget {args.budget_s:.0f} s)"}
    try:
        rep = json.loads(report.read_text())
    except (OSError, ValueError):
        return {**row, "status": "failed", "reason": f"exit {r['exit']}: {peers.log_tail(log)}"}
    if rep.get("status", "ok") != "ok":
        return {**row, "status": rep["status"], "reason": rep.get("reason", "")}
    memory = torch_device_memory(rep) if engine == TORCH_ENGINE else m3_device_memory(rep)
    return {**row, "status": "ok", "tokens": rep["tokens"], "texts": rep["texts"],
            "tokens_per_second": rep["tokens_per_second"], "seconds": rep["seconds"],
            "load_seconds": rep.get("load_seconds"), "device_memory": memory, "report": rep}


def run_soak(args, env: dict, logs: Path) -> dict:
    report, log = logs / "m3bench-soak.json", logs / "m3bench-soak.log"
    report.unlink(missing_ok=True)
    cmd = [str(args.soak_binary), "--model", str(args.model), "--device", "cuda", "--dtype", "fp16",
           "--requests", str(args.soak_requests), "--texts-per-request", "8",
           "--max-batch-tokens", str(args.max_batch_tokens), "--max-seconds", f"{args.budget_s:.0f}",
           "--json", str(report)]
    r = peers.run_child(cmd, env, log, 1.5 * args.budget_s + 120)
    row = {"command": cmd, "wall_s": r["wall_s"], "log": str(log)}
    try:
        rep = json.loads(report.read_text())
    except (OSError, ValueError):
        why = "timeout" if r["timed_out"] else f"exit {r['exit']}"
        return {**row, "status": "failed", "reason": f"{why}: {peers.log_tail(log)}"}
    return {**row, "status": "ok", "requests_asked": args.soak_requests, **soak_summary(rep), "report": rep}


def soak_summary(rep: dict) -> dict:
    """The soak's device figures and the two goals: 0 bytes of growth, max use within 2% of plan + context."""
    dm = (rep.get("device_memory") or [{}])[0]
    keys = ("requests", "tokens", "tokens_per_second", "plan_total_bytes", "plan_weight_bytes", "plan_arena_bytes",
            "device_used_after_warmup_bytes", "device_used_max_after_warmup_bytes",
            "device_growth_after_warmup_bytes", "device_used_end_bytes")
    out = {k: rep.get(k) for k in keys}
    planned = dm.get("planned_bytes", rep.get("plan_total_bytes"))
    context = dm.get("used_before_replica_bytes")
    out.update(device_planned_bytes=planned, device_context_bytes=context)
    if planned is not None and context is not None and out["device_used_max_after_warmup_bytes"] is not None:
        expected = planned + context
        out["device_plan_plus_context_bytes"] = expected
        out["device_max_vs_plan_plus_context_percent"] = (
            100.0 * (out["device_used_max_after_warmup_bytes"] - expected) / expected)
        out["goal_no_growth"] = out["device_growth_after_warmup_bytes"] == 0
        out["goal_within_plan"] = abs(out["device_max_vs_plan_plus_context_percent"]) <= SOAK_PLAN_TOLERANCE_PERCENT
    return out


def write_ids(workload: str, tmp: str) -> str:
    """The workload's token ids (bench/workloads.py, seed 0, as peers.py) as m3bench-workload's --ids file."""
    path = Path(tmp) / f"{workload}.ids.json"
    path.write_text(json.dumps(wl.token_ids(workload)))
    return str(path)


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def add_ratios(result: dict) -> None:
    """tokens/s of each m3embed engine over transformers', per workload."""
    tps = {(r["engine"], r["workload"]): r["tokens_per_second"] for r in result["runs"] if r["status"] == "ok"}
    result["ratios"] = {
        e: {w: (tps[(e, w)] / tps[(TORCH_ENGINE, w)] if (e, w) in tps and (TORCH_ENGINE, w) in tps else None)
            for w in result["workloads"]}
        for e in result["engines"] if e != TORCH_ENGINE}


def gpu_line(gpu: dict) -> str:
    t, m = gpu.get("torch", {}), gpu.get("m3embed", {})
    name = t.get("device") or m.get("device") or "?"
    total = t.get("total_bytes") or m.get("total_bytes")
    extra = f", torch CUDA {t['cuda']}, compute capability {t.get('capability')}" if t.get("cuda") else ""
    return f"{name}, {rc.mib(total)} MiB{extra}"


def cell_text(r: dict | None, fmt) -> str:
    if r is None:
        return "-"
    return fmt(r) if r["status"] == "ok" else r["status"]


def tokens_table(result: dict) -> list[str]:
    workloads, cell = result["workloads"], {(r["engine"], r["workload"]): r for r in result["runs"]}
    lines = ["### Tokens/s (median)", "", "| engine | " + " | ".join(workloads) + " |",
             "| --- |" + " ---: |" * len(workloads)]
    for e in result["engines"]:
        vals = [cell_text(cell.get((e, w)), lambda r: f"{r['tokens_per_second']:,.0f}") for w in workloads]
        lines.append(f"| {e} | " + " | ".join(vals) + " |")
    if TORCH_ENGINE in result["engines"]:
        for e, by_w in result["ratios"].items():
            vals = ["-" if by_w[w] is None else f"{by_w[w]:.2f}x" for w in workloads]
            lines.append(f"| **{e} / transformers** | " + " | ".join(vals) + " |")
    return lines


M3_MEMORY_ROWS = [("planned allocation (weights + arena + cuBLASLt workspace), MiB", "planned_bytes", "mib"),
                  ("used by the replica (now - before its allocation), MiB", "replica_used_bytes", "mib"),
                  ("used incl. CUDA context (device total - free), MiB", "used_incl_context_bytes", "mib"),
                  ("growth after warm-up, bytes", "growth_after_warmup_bytes", "bytes")]
TORCH_MEMORY_ROWS = [("peak allocated (torch.cuda.max_memory_allocated), MiB", "peak_allocated_bytes", "mib"),
                     ("peak reserved (torch.cuda.max_memory_reserved), MiB", "peak_reserved_bytes", "mib"),
                     ("used incl. CUDA context after the runs, MiB", "used_incl_context_bytes", "mib"),
                     ("growth after warm-up, bytes", "growth_after_warmup_bytes", "bytes")]


def memory_table(result: dict) -> list[str]:
    workloads, cell = result["workloads"], {(r["engine"], r["workload"]): r for r in result["runs"]}
    lines = ["### Device memory", "", "| engine | measure | " + " | ".join(workloads) + " |",
             "| --- | --- |" + " ---: |" * len(workloads)]
    for e in result["engines"]:
        for label, key, unit in (TORCH_MEMORY_ROWS if e == TORCH_ENGINE else M3_MEMORY_ROWS):
            def fmt(r, key=key, unit=unit):
                v = r["device_memory"].get(key)
                return "-" if v is None else (rc.mib(v) if unit == "mib" else f"{v:,}")
            vals = [cell_text(cell.get((e, w)), fmt) for w in workloads]
            lines.append(f"| {e} | {label} | " + " | ".join(vals) + " |")
    contexts = sorted({r["device_memory"].get("context_bytes") for r in result["runs"]
                       if r["status"] == "ok" and r["device_memory"].get("context_bytes") is not None})
    if contexts:
        lines += ["", f"CUDA context (device used before the model, each run its own process): "
                      f"{rc.mib(contexts[0])} to {rc.mib(contexts[-1])} MiB."]
    return lines


def soak_section(soak: dict) -> list[str]:
    lines = ["### Soak: m3bench-soak --device cuda --dtype fp16", "", "    " + " ".join(soak["command"]), ""]
    if soak["status"] != "ok":
        return lines + [f"Did not finish: {soak.get('reason')}"]
    pct = soak.get("device_max_vs_plan_plus_context_percent")
    met = {True: "met", False: "**not met**", None: "?"}
    lines += [
        f"- {soak['requests']} of {soak['requests_asked']} requests (1..8 texts each), {soak['tokens']:,} tokens, "
        f"{soak['tokens_per_second']:,.0f} tokens/s",
        f"- plan: total {rc.mib(soak['plan_total_bytes'])} MiB (weights {rc.mib(soak['plan_weight_bytes'])}, arena "
        f"{rc.mib(soak['plan_arena_bytes'])}); device allocation {rc.mib(soak['device_planned_bytes'])} MiB; "
        f"CUDA context {rc.mib(soak['device_context_bytes'])} MiB",
        f"- device used after warm-up {rc.mib(soak['device_used_after_warmup_bytes'])} MiB, at most "
        f"{rc.mib(soak['device_used_max_after_warmup_bytes'])} MiB during the run, "
        f"{rc.mib(soak['device_used_end_bytes'])} MiB at the end",
        f"- growth after warm-up: {soak['device_growth_after_warmup_bytes']:,} bytes (goal 0: "
        f"{met[soak.get('goal_no_growth')]})",
        f"- most used vs plan + context: " + ("?" if pct is None else f"{pct:+.2f}%")
        + f" (goal within {SOAK_PLAN_TOLERANCE_PERCENT:.0f}%: {met[soak.get('goal_within_plan')]})"]
    return lines


def measured_runs(result: dict) -> list[dict]:
    """The runs with load snapshots, the soak included (named "soak")."""
    runs = [r for r in result["runs"] if r.get("load_before")]
    if result.get("soak") and result["soak"].get("load_before"):
        runs.append({"engine": "m3bench-soak", "workload": "soak", **result["soak"]})
    return runs


def markdown(result: dict) -> str:
    limit = result.get("max_load_per_core", rc.LOAD_LIMIT_PER_CORE)
    warn = rc.load_warning(measured_runs(result), limit)
    out = [f"## GPU: m3embed and transformers (PyTorch fp16, SDPA): {result['label']}", "",
           f"Command (from the repository root, {result['date']}, git {result['git']}):", "",
           f"    {result['command']}", "", *([warn, ""] if warn else []),
           f"- GPU: {gpu_line(result['gpu'])}",
           f"- Host: {rc.machine_line(result['machine'])}",
           f"- Model: `{result['model']['path']}` ({result['model'].get('layers')} layers, random weights, seed "
           f"{result['model'].get('seed')})",
           f"- {result['repeat']} timed run(s) after {result['warmup']} warm-up run(s), median; budget "
           f"{result['budget_s']:.0f} s per run; transformers' batch size {result['batch_size']}; m3embed's max "
           f"batch tokens {result['max_batch_tokens']}",
           "- Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()), "",
           "Tokens/s counts real tokens (`<s>`, `</s>` included, no padding) over the encode calls that return "
           "dense + lexical weights + ColBERT vectors on the host; load and warm-up are excluded. Each "
           "(engine, workload) is its own process. m3embed's device figures are cudaMemGetInfo before its one "
           "allocation, after warm-up and after the timed runs; transformers' peaks are torch's allocator "
           "during the timed runs (reset after warm-up).", ""]
    if result["workloads"]:
        out += tokens_table(result) + [""] + memory_table(result) + [""]
    problems = [r for r in result["runs"] if r["status"] != "ok"]
    if problems:
        out += ["Runs that did not finish:", ""]
        out += [f"- {r['engine']} x {r['workload']}: {r['status']}: {r.get('reason', '')}" for r in problems] + [""]
    if result.get("soak"):
        out += soak_section(result["soak"]) + [""]
    out += ["### Engines", "",
            "- **m3embed-DTYPE**: `build/m3bench-workload --device cuda --dtype DTYPE`: token ids packed without "
            "padding into passes of --max-batch-tokens; one device allocation per replica, nothing after warm-up.",
            f"- **{TORCH_ENGINE}**: `transformers.XLMRobertaModel` (float16, attn_implementation=\"sdpa\") + BGE-M3's "
            "colbert/sparse heads in float16 under torch.inference_mode(); FlagEmbedding's batching (sorted longest "
            "first, batches of --batch-size padded to their longest) and output formulas (bench/gpu_peers.py, "
            "TorchM3); token ids in, outputs copied to the host inside the timed region."]
    wdesc = []
    for w in result["workloads"]:
        s = sorted(wl.resolve(w).lengths)
        wdesc.append(f"{w}: {len(s)} texts, {sum(s)} tokens (min {s[0]}, median {s[len(s) // 2]}, max {s[-1]})")
    if wdesc:
        out += ["", "Workloads: " + "; ".join(wdesc) + "."]
    if measured_runs(result):
        out += [""] + rc.load_section(measured_runs(result), result.get("load_at_start"), result.get("load_at_end"),
                                      limit, timeout_s=result.get("quiet_timeout_s"))
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def describe(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row.get('reason', '')}"
    mem = row["device_memory"]
    if row["engine"] == TORCH_ENGINE:
        m = f"peak allocated {rc.mib(mem['peak_allocated_bytes'])} MiB, reserved {rc.mib(mem['peak_reserved_bytes'])} MiB"
    else:
        m = (f"replica {rc.mib(mem.get('replica_used_bytes'))} MiB (plan {rc.mib(mem.get('planned_bytes'))}), growth "
             f"{mem.get('growth_after_warmup_bytes')} bytes")
    return f"{row['tokens_per_second']:,.0f} tokens/s, {m} ({row['wall_s']:.0f} s)"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in CHILD_COMMANDS:
        return (cmd_run_torch if argv[0] == "run-torch" else cmd_check_torch)(argv[1:])
    args = parse_args(argv)
    date = dt.date.today().isoformat()
    stem = args.out_dir / f"{date}-gpu-peers-{args.label}"
    logs = pe.CACHE / "logs" / stem.name
    logs.mkdir(parents=True, exist_ok=True)
    env = child_env()
    try:
        gpu = preflight(args, env, logs)
    except NoGpu as e:
        print(f"gpu_peers: error: {e}", file=sys.stderr)
        return 2

    args.out_dir.mkdir(parents=True, exist_ok=True)
    engines = engine_names(args)
    result = {"label": args.label, "date": date, "command": rc.command_line(), "git": rc.git_revision(),
              "machine": rc.machine(), "gpu": gpu, "model": rc.model_facts(args.model),
              "versions": rc.versions(args.python), "repeat": args.repeat, "warmup": args.warmup,
              "budget_s": args.budget_s, "batch_size": args.batch_size, "max_batch_tokens": args.max_batch_tokens,
              "engines": engines, "workloads": args.workloads, "runs": [], "soak": None,
              "max_load_per_core": args.max_load_per_core, "quiet_timeout_s": args.quiet_timeout_s,
              "load_at_start": rc.load_snapshot(), "load_at_end": None}

    def save():
        add_ratios(result)
        Path(str(stem) + ".json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"gpu_peers: {len(engines)} engines x {len(args.workloads)} workloads on {gpu_line(gpu)}, model "
          f"{args.model}; results -> {os.path.relpath(stem, REPO)}.json", flush=True)
    with tempfile.TemporaryDirectory(prefix="m3-gpu-peers-") as tmp:
        k, total = 0, len(engines) * len(args.workloads)
        for w in args.workloads:
            ids_file = write_ids(w, tmp)
            for e in engines:
                k += 1
                before = rc.wait_for_quiet(args.max_load_per_core, args.quiet_timeout_s, what=f"gpu_peers: {e} x {w}")
                print(f"[{k}/{total}] {e} x {w} ...", end=" ", flush=True)
                row = run_one(e, w, ids_file, args, env, logs)
                row["load_before"], row["load_after"] = before, rc.load_snapshot()
                result["runs"].append(row)
                save()
                print(describe(row), flush=True)
    if args.soak:
        before = rc.wait_for_quiet(args.max_load_per_core, args.quiet_timeout_s, what="gpu_peers: soak")
        print(f"gpu_peers: soak, {args.soak_requests} requests ...", end=" ", flush=True)
        result["soak"] = run_soak(args, env, logs)
        result["soak"]["load_before"], result["soak"]["load_after"] = before, rc.load_snapshot()
        s = result["soak"]
        print(f"growth {s.get('device_growth_after_warmup_bytes')} bytes, max vs plan + context "
              f"{s.get('device_max_vs_plan_plus_context_percent')}%" if s["status"] == "ok" else s.get("reason"),
              flush=True)
    result["load_at_end"] = rc.load_snapshot()
    save()
    md = markdown(result)
    Path(str(stem) + ".md").write_text(md)
    print(f"gpu_peers: wrote {os.path.relpath(stem, REPO)}.json and .md", flush=True)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
