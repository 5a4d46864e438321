#!/usr/bin/env python3
"""Embed a corpus with Ray Data: a fixed pool of Ray actors, each holding one m3embed Engine.

Why this shape: an m3embed Engine plans and allocates all of its memory when it is built and
never grows, so the pool can be sized before anything runs. The driver builds one Engine with
the actors' settings (warm_up=False: weights loaded, nothing computed; with --device cuda the
driver needs a GPU too), reads its memory plan, frees it, and then asks Ray for that per actor:

    num_cpus = --threads (the engine's threads)    num_gpus = 1 with --device cuda
    memory   = the plan's total_bytes + --actor-overhead (Python, Ray and Arrow in the actor);
               with cuda the plan is on the actor's GPU, and memory is the overhead only

It prints the memory per actor and for the pool, and refuses to start when the pool would
exceed --memory-limit, or the Ray cluster's CPUs, GPUs or memory (rather than wait forever for
actors Ray cannot place). One Ray CPU is left to Ray Data's own tasks (listing, reading and
writing files each take one, and would wait forever behind actors holding them all); so the
local Ray this starts (without --address) has the machine's N cores + 1 CPUs, and N engine
threads in all fit.

Input: Parquet or JSON lines (a file or a directory of them) with a text column (--text-column,
default "text"); every other column (ids, metadata) is kept. Output: a directory of Parquet
files, rows in input order, with those columns plus
    dense    list<float32>               the L2-normalized dense vector (hidden size floats)
    sparse   map<int32, float32>         lexical weights: token id -> weight, in order of first
                                         occurrence (FlagEmbedding's lexical_weights, whose keys
                                         are the same ids as strings)
    colbert  list<list<float32>>         with --colbert: one vector per token but <s>

    python examples/ray_embed.py --model BAAI/bge-m3 --input corpus.jsonl --output out/ \\
        --actors 2 --threads 1 --colbert
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
SLACK_BYTES = 2**20
IO_CPUS = 1  # Ray Data's list/read/write tasks: a CPU each, never held by an actor
UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6,
         "gb": 10**9, "tb": 10**12}


def parse_bytes(text: str) -> int:
    """'6GiB', '800MB', '2147483648'."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 6GiB, 800MB, 2147483648)")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------------------
# Results as Arrow columns (shared with bench/ray_corpus.py's FlagEmbedding actors)
# ---------------------------------------------------------------------------------------


def _lists(values: np.ndarray, width: int) -> pa.ListArray:
    """Rows of `width` float32 values from a flat array."""
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, len(flat) + 1, width, dtype=np.int32)), flat)


def dense_column(dense: np.ndarray) -> pa.Array:
    return _lists(dense, dense.shape[1])


def sparse_column(lexical: list[dict]) -> pa.Array:
    """map<int32, float32> from dicts token id (int or str) -> weight, keeping their order."""
    offsets, keys, values = [0], [], []
    for weights in lexical:
        keys.extend(int(k) for k in weights)
        values.extend(float(v) for v in weights.values())
        offsets.append(len(keys))
    return pa.MapArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(keys, pa.int32()),
                                   pa.array(values, pa.float32()))


def colbert_column(colbert: list[np.ndarray], hidden: int) -> pa.Array:
    rows = [len(c) for c in colbert]
    if sum(rows) * hidden >= 2**31:  # list<> offsets are int32
        raise ValueError(f"one batch has {sum(rows)} ColBERT vectors, too many for one Arrow list; lower --batch-size")
    inner = _lists(np.concatenate(colbert) if colbert else np.zeros((0, hidden), np.float32), hidden)
    return pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(rows)]).astype(np.int32)), inner)


def texts_of(batch: pa.Table, column: str) -> list[str]:
    texts = batch.column(column).to_pylist()
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        row = batch.slice(bad[0], 1).drop_columns([column]).to_pylist()[0]
        raise ValueError(f"column {column!r}: a row has {texts[bad[0]]!r} instead of a text (its other columns: "
                         f"{row})")
    return texts


def with_embeddings(batch: pa.Table, text_column: str, keep_text: bool, dense, lexical, colbert) -> pa.Table:
    """The batch's other columns plus dense, sparse and (when given) colbert."""
    out = batch if keep_text else batch.drop_columns([text_column])
    out = out.append_column("dense", dense_column(dense))
    if lexical is not None:
        out = out.append_column("sparse", sparse_column(lexical))
    if colbert is not None:
        out = out.append_column("colbert", colbert_column(colbert, dense.shape[1]))
    return out


# ---------------------------------------------------------------------------------------
# The actor
# ---------------------------------------------------------------------------------------


class M3Embedder:
    """One Ray actor: one m3embed Engine, built with the driver's settings, and checked to plan
    no more memory than the driver reserved for it."""

    def __init__(self, model: str, engine_args: dict, planned_bytes: int, text_column: str, max_length: int,
                 sparse: bool, colbert: bool, keep_text: bool):
        import m3embed

        self.engine = m3embed.Engine(model, **engine_args)
        got = self.engine.plan["total_bytes"]
        if got > planned_bytes + SLACK_BYTES:  # (oneDNN's GEMM workspace may differ by a few KiB)
            raise RuntimeError(f"this actor's engine planned {got} bytes, more than the {planned_bytes} the driver "
                               "reserved: the actor and the driver see different devices or libraries")
        self.text_column, self.max_length = text_column, max_length
        self.sparse, self.colbert, self.keep_text = sparse, colbert, keep_text

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = self.engine.encode(texts_of(batch, self.text_column), max_length=self.max_length, dense=True,
                                 sparse=self.sparse, colbert=self.colbert)
        return with_embeddings(batch, self.text_column, self.keep_text, out["dense"], out["lexical"],
                               out["colbert"])


# ---------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model: a snapshot directory or a hub id (BAAI/bge-m3)")
    ap.add_argument("--input", required=True, help="a Parquet or JSONL file, or a directory of them")
    ap.add_argument("--output", required=True, help="output directory of Parquet files (must not exist, or be empty)")
    ap.add_argument("--format", choices=("auto", "jsonl", "parquet"), default="auto",
                    help="input format (default: auto, from the file names: .jsonl/.json/.ndjson, .parquet/.pq)")
    ap.add_argument("--text-column", default="text", help="the column holding the texts (default: %(default)s)")
    ap.add_argument("--keep-text", action="store_true", help="keep the text column in the output")
    ap.add_argument("--colbert", action="store_true", help="also write ColBERT vectors (large: hidden floats a token)")
    ap.add_argument("--no-sparse", action="store_true", help="no sparse column (for models without sparse_linear.pt)")
    ap.add_argument("--actors", type=int, default=0,
                    help="engines, one per Ray actor (default: (the Ray cluster's CPUs - 1) // --threads; its GPUs "
                         "with cuda)")
    ap.add_argument("--threads", type=int, default=1, help="threads of each engine = CPUs per actor (default: 1)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per actor; default: cpu)")
    ap.add_argument("--dtype", default="fp32", help="fp32, bf16, int8 (CPU) or fp16 (CUDA) (default: fp32)")
    ap.add_argument("--max-length", type=int, default=0,
                    help="longest input in tokens; longer texts are truncated (default: the model's limit)")
    ap.add_argument("--max-batch-tokens", type=int, default=16384,
                    help="each engine's tokens per forward pass: sizes its plan (default: %(default)s)")
    ap.add_argument("--engine-memory-limit", type=parse_bytes, default=None,
                    help="each engine's memory limit (e.g. 2GiB): picks its max batch tokens instead")
    ap.add_argument("--actor-overhead", type=parse_bytes, default=parse_bytes("384MiB"),
                    help="memory an actor uses beyond its engine's plan: Python, Ray, Arrow and one batch's "
                         "results (default: 384MiB; with --colbert, a batch's results are about "
                         "tokens x hidden x 4 bytes)")
    ap.add_argument("--memory-limit", type=parse_bytes, default=None,
                    help="memory for the whole pool (e.g. 12GiB): refuse to start when actors x (plan + "
                         "overhead) exceed it")
    ap.add_argument("--batch-size", type=int, default=256, help="texts per actor call (default: %(default)s)")
    ap.add_argument("--address", default=None,
                    help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray of this machine's cores + 1 "
                         "CPUs, started for this run)")
    args = ap.parse_args(argv)
    for name in ("threads", "batch_size", "max_batch_tokens"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.actors < 0 or args.max_length < 0:
        ap.error("--actors and --max-length cannot be negative")
    if args.device not in ("cpu", "cuda"):
        ap.error("--device: cpu or cuda (Ray gives each actor its own GPU, which it sees as cuda)")
    return args


def input_format(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    p = Path(path)
    names = [p] if p.is_file() else sorted(q for q in p.iterdir() if q.is_file())
    found = {FORMATS[q.suffix.lower()] for q in names if q.suffix.lower() in FORMATS}
    if len(found) != 1:
        raise SystemExit(f"ray_embed: cannot tell the format of {path} from its file names "
                         f"({'both' if found else 'no'} .jsonl / .parquet); pass --format")
    return found.pop()


def check_paths(args) -> None:
    if "://" not in args.input and not Path(args.input).exists():
        raise SystemExit(f"ray_embed: --input {args.input}: no such file or directory")
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SystemExit(f"ray_embed: --output {args.output} exists and is not an empty directory")
    if not out.parent.exists():
        raise SystemExit(f"ray_embed: --output {args.output}: {out.parent} does not exist")


def engine_args(args) -> dict:
    kw = {"device": args.device, "dtype": args.dtype, "threads": args.threads, "max_length": args.max_length,
          "warm_up": True}
    if args.engine_memory_limit is not None:
        kw["memory_limit"] = args.engine_memory_limit
    else:
        kw["max_batch_tokens"] = args.max_batch_tokens
    return kw


def make_plan(args) -> dict:
    """The plan of one actor's engine, from an engine built here with the same settings."""
    import m3embed

    engine = m3embed.Engine(args.model, **{**engine_args(args), "warm_up": False})
    plan = dict(engine.plan, hidden_size=engine.hidden_size, model_dir=engine.model_dir)
    del engine
    return plan


def size_pool(args, plan: dict, resources: dict) -> dict:
    """Actors and their Ray resources; SystemExit when the pool cannot fit."""
    per_actor = plan["total_bytes"] + args.actor_overhead
    if args.device == "cuda":  # the engine's memory is on its GPU; the actor's own is host memory
        per_actor = args.actor_overhead
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    actors = args.actors or max(1, gpus if args.device == "cuda" else (cpus - IO_CPUS) // args.threads)
    pool = {"actors": actors, "num_cpus": args.threads, "num_gpus": 1 if args.device == "cuda" else 0,
            "memory": per_actor, "memory_total": actors * per_actor}
    print(f"ray_embed: each engine's plan: {gib(plan['total_bytes'])} (weights {gib(plan['weight_bytes'])}, "
          f"arena {gib(plan['arena_bytes'])}; max batch tokens {plan['max_batch_tokens']}, max length "
          f"{plan['max_seq_len']}, {plan['threads']} thread(s), {plan['dtype']} on {plan['device']})", flush=True)
    print(f"ray_embed: {actors} actor(s) x ({args.threads} CPU, {pool['num_gpus']} GPU, {gib(per_actor)} = plan"
          f"{' on the GPU' if args.device == 'cuda' else ''} + {gib(args.actor_overhead)} overhead) = "
          f"{actors * args.threads} CPUs (+ {IO_CPUS} for reading and writing), {gib(pool['memory_total'])}",
          flush=True)
    problems = []
    if args.memory_limit is not None and pool["memory_total"] > args.memory_limit:
        problems.append(f"{actors} actor(s) need {gib(pool['memory_total'])}, more than --memory-limit "
                        f"{gib(args.memory_limit)} (fewer --actors, or a smaller --max-batch-tokens)")
    if actors * args.threads + IO_CPUS > cpus:
        problems.append(f"{actors} actor(s) x {args.threads} thread(s) + {IO_CPUS} for reading and writing need "
                        f"{actors * args.threads + IO_CPUS} CPUs; the Ray cluster has {cpus}")
    if pool["num_gpus"] and actors > gpus:
        problems.append(f"{actors} actor(s) need a GPU each; the Ray cluster has {gpus}")
    if pool["memory_total"] > resources.get("memory", 0):
        problems.append(f"{actors} actor(s) need {gib(pool['memory_total'])}; Ray may place "
                        f"{gib(int(resources.get('memory', 0)))} of tasks and actors")
    if problems:
        raise SystemExit("ray_embed: refusing to start: " + "; ".join(problems))
    return pool


def read_input(args):
    import ray

    fmt = input_format(args.input, args.format) if "://" not in args.input else args.format
    if fmt == "auto":
        raise SystemExit("ray_embed: pass --format for a remote --input")
    ds = ray.data.read_parquet(args.input) if fmt == "parquet" else ray.data.read_json(args.input)
    schema = ds.schema()
    if schema is None:
        raise SystemExit(f"ray_embed: --input {args.input} is empty: no rows")
    if args.text_column not in schema.names:
        raise SystemExit(f"ray_embed: --input {args.input} has no column {args.text_column!r} (its columns: "
                         f"{', '.join(schema.names)}); pass --text-column")
    kind = dict(zip(schema.names, schema.types))[args.text_column]
    if kind not in (str, pa.string(), pa.large_string()):
        raise SystemExit(f"ray_embed: column {args.text_column!r} holds {kind}, not text")
    return ds


def embed(ds, args, plan: dict, pool: dict, udf=M3Embedder, udf_args: dict | None = None):
    """ds -> ds with the embedding columns, computed by a fixed pool of `udf` actors."""
    import ray

    if __name__ != "__main__":  # imported (the tests, the benchmark): ship this module to the actors
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # Rows come out in input order. A Dataset keeps the DataContext it was created with, so
    # the flag goes on this one's (setting only the current context missed datasets read
    # before: under load, rows of different actors came out interleaved).
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds.context.execution_options.preserve_order = True
    if udf_args is None:
        udf_args = {"model": plan["model_dir"], "engine_args": engine_args(args),
                    "planned_bytes": plan["total_bytes"], "text_column": args.text_column,
                    "max_length": args.max_length or plan["max_seq_len"], "sparse": not args.no_sparse,
                    "colbert": args.colbert, "keep_text": args.keep_text}
    # Blocks of one batch each, so that every actor gets work even from one small file (a
    # Parquet file is read as one block); streaming, no shuffle.
    ds = ds.repartition(target_num_rows_per_block=args.batch_size)
    return ds.map_batches(udf, fn_constructor_kwargs=udf_args, batch_format="pyarrow", batch_size=args.batch_size,
                          compute=ray.data.ActorPoolStrategy(size=pool["actors"]), num_cpus=pool["num_cpus"],
                          num_gpus=pool["num_gpus"] or None, memory=pool["memory"])


def rows_written(output: str) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in Path(output).glob("*.parquet"))


def first_error(e: Exception) -> str:
    """The actor's own error line from a Ray error (whose text carries the actor's traceback)."""
    lines = [ln for ln in str(e).splitlines() if re.match(r"[\w.]*(Error|Exception): ", ln)
             and not ln.startswith("ray.")]
    return lines[0] if lines else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def start_ray(args) -> None:
    """Join --address / RAY_ADDRESS, or start a local Ray with this machine's CPUs for the engines
    plus the logical one for Ray Data's reading and writing (light work, no core of its own)."""
    import ray

    if ray.is_initialized():
        return
    if args.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=args.address, include_dashboard=False)
    else:
        ray.init(num_cpus=len(os.sched_getaffinity(0)) + IO_CPUS, include_dashboard=False)


def main(argv=None) -> int:
    args = parse_args(argv)
    check_paths(args)
    import ray  # noqa: F401  (a clear ImportError before the model is loaded)

    plan = make_plan(args)
    start_ray(args)
    pool = size_pool(args, plan, ray.cluster_resources())
    ds = read_input(args)
    t0 = time.monotonic()
    try:
        embed(ds, args, plan, pool).write_parquet(args.output)
    except Exception as e:  # noqa: BLE001  (Ray wraps an actor's error in its own; show the first)
        raise SystemExit(f"ray_embed: embedding failed: {first_error(e)}") from None
    seconds = time.monotonic() - t0
    rows = rows_written(args.output)
    if rows == 0:
        raise SystemExit(f"ray_embed: --input {args.input} is empty: no rows")
    print(f"ray_embed: {rows} texts embedded into {args.output} in {seconds:.1f} s ({rows / seconds:.1f} texts/s)",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
