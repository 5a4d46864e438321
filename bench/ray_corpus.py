#!/usr/bin/env python3
"""Corpus throughput on Ray Data: examples/ray_embed.py's pipeline with m3embed actors against
the same pipeline with FlagEmbedding actors, on the same cores.

Why: ray_embed.py is how a corpus gets embedded at scale; this measures what its engine buys
there, with everything else equal. Both engines run the example's own pipeline: read Parquet ->
blocks of --batch-size rows -> map_batches on a fixed pool of --actors actors of --threads CPUs
each -> write Parquet, with dense + sparse (+ ColBERT with --colbert) outputs in the same columns:

  m3embed        ray_embed.M3Embedder: one m3embed.Engine per actor (fp32, --threads threads)
  flagembedding  FlagEmbedding 1.4.2 BGEM3FlagModel(use_fp16=False, devices="cpu") per actor,
                 torch threads = --threads, encode(texts, batch_size=--flag-batch-size,
                 max_length=...) on each Ray batch (FlagEmbedding sorts each call by length and
                 pads each of its batches to its longest text; it also runs its first, longest
                 batch once more as a memory probe on every call)

Each engine gets a fresh local Ray of actors x threads + 1 CPUs (the one the example leaves to
reading and writing). Measured: the wall time from the start of the pipeline to the last file
written (actor start and model load included) -> texts/s and tokens/s; per actor (returned
with its results): load seconds, busy seconds (its batch calls), texts, RSS after load and peak
RSS (the larger of getrusage's ru_maxrss and /proc/self/status VmHWM after each batch; m3embed
resets the kernel's high-water mark when its warm-up starts, so for its actors the peak is from
warm-up on). The dense vectors of the two engines are compared (largest difference).

The corpus: --texts texts with the `mix` workload's length distribution (bench/workloads.py:
mostly short texts and chunks of up to ~324 tokens, exact lengths with the fixture tokenizer
the random models ship), truncated at --max-length (and the model's limit).

Machine load: before each engine's run it waits for a quiet machine and records the load
averages before and after (bench/README.md, "Machine load"); a run that started on a loaded
machine is marked so in the results (exit status 1).

Writes bench/results/DATE-ray-corpus[-LABEL].json and .md. Ray is in the test venv (.venv):

    .venv/bin/python bench/ray_corpus.py                          # 2 actors x 1 thread, 2048 texts
    .venv/bin/python bench/ray_corpus.py --model tests/fixtures/tiny-st --texts 64 --out-dir /tmp/rc
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "examples"))

import peer_engines as pe  # noqa: E402  (stdlib only at import time)
import ray_embed  # noqa: E402
import report_common as rc  # noqa: E402
import workloads as wl  # noqa: E402

RESULTS = HERE / "results"
DEFAULT_MODEL = pe.CACHE / "bge-m3-random-L2"
ENGINES = ("m3embed", "flagembedding")
MEASURED = ("_pid", "_rss_load", "_peak_rss", "_seconds", "_load_s")


# ---------------------------------------------------------------------------------------
# In the actors
# ---------------------------------------------------------------------------------------


def _status_bytes(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) * 1024 if m else 0


def measured(table, seconds: float, load_s: float, rss_load: int):
    """The batch's results plus this actor's figures (per row: seconds are shared out)."""
    import pyarrow as pa

    n = table.num_rows
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, _status_bytes("VmHWM"))
    for name, value, kind in (("_pid", os.getpid(), pa.int64()), ("_rss_load", rss_load, pa.int64()),
                              ("_peak_rss", peak, pa.int64()), ("_seconds", seconds / max(n, 1), pa.float64()),
                              ("_load_s", load_s, pa.float64())):
        table = table.append_column(name, pa.array([value] * n, kind))
    return table


class M3Measured(ray_embed.M3Embedder):
    def __init__(self, **kwargs):
        t0 = time.perf_counter()
        super().__init__(**kwargs)
        self.load_s, self.rss_load = time.perf_counter() - t0, _status_bytes("VmRSS")

    def __call__(self, batch):
        t0 = time.perf_counter()
        out = super().__call__(batch)
        return measured(out, time.perf_counter() - t0, self.load_s, self.rss_load)


class FlagMeasured:
    """FlagEmbedding's BGEM3FlagModel in a Ray actor, with ray_embed's output columns."""

    def __init__(self, bench_dir: str, model: str, threads: int, max_length: int, flag_batch_size: int,
                 text_column: str, colbert: bool):
        os.environ.setdefault("TQDM_DISABLE", "1")
        sys.path.insert(0, bench_dir)
        import peer_engines
        import torch

        t0 = time.perf_counter()
        torch.set_num_threads(threads)
        self.model = peer_engines.import_bge_m3()(model, use_fp16=False, devices="cpu")
        self.load_s, self.rss_load = time.perf_counter() - t0, _status_bytes("VmRSS")
        self.max_length, self.batch_size, self.text_column, self.colbert = max_length, flag_batch_size, \
            text_column, colbert

    def __call__(self, batch):
        t0 = time.perf_counter()
        out = self.model.encode(ray_embed.texts_of(batch, self.text_column), batch_size=self.batch_size,
                                max_length=self.max_length, return_dense=True, return_sparse=True,
                                return_colbert_vecs=self.colbert)
        table = ray_embed.with_embeddings(batch, self.text_column, False, out["dense_vecs"], out["lexical_weights"],
                                          out["colbert_vecs"] if self.colbert else None)
        return measured(table, time.perf_counter() - t0, self.load_s, self.rss_load)


# ---------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------


def model_limit(model: Path) -> int:
    cfg = json.loads((model / "config.json").read_text())
    return cfg["max_position_embeddings"] - 2  # XLM-R's positions start after the padding id


def make_corpus(n: int, max_length: int, path: Path) -> dict:
    lengths = wl._mix_lengths(n, max(n, n * wl.MIX_TOKENS // wl.MIX_TEXTS))
    texts = wl.texts(wl.Workload(f"ray-corpus-{n}", tuple(lengths), (n,)))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(n)), "text": texts}), path)
    seen = [min(x, max_length) for x in lengths]
    s = sorted(seen)
    return {"texts": n, "tokens": sum(seen), "tokens_before_truncation": sum(lengths), "max_length": max_length,
            "min": s[0], "median": s[n // 2], "max": s[-1], "file": str(path)}


def run_engine(engine: str, args, corpus: dict, work: Path) -> dict:
    import pyarrow.parquet as pq
    import ray

    out = work / f"out-{engine}"
    ea = ray_embed.parse_args(["--model", str(args.model), "--input", corpus["file"], "--output", str(out),
                               "--actors", str(args.actors), "--threads", str(args.threads),
                               "--batch-size", str(args.batch_size), "--max-length", str(corpus["max_length"])]
                              + (["--colbert"] if args.colbert else []))
    plan = ray_embed.make_plan(ea)
    load_before = rc.wait_for_quiet(args.max_load_per_core, args.quiet_timeout_s, what=engine)
    ray.init(num_cpus=args.actors * args.threads + ray_embed.IO_CPUS, include_dashboard=False,
             log_to_driver=False)
    try:
        pool = ray_embed.size_pool(ea, plan, ray.cluster_resources())
        if engine == "m3embed":
            udf, udf_args = M3Measured, None
        else:  # the same pool; no engine plan to reserve memory for
            pool = dict(pool, memory=None)
            udf, udf_args = FlagMeasured, {"bench_dir": str(HERE), "model": str(args.model), "threads": args.threads,
                                           "max_length": corpus["max_length"],
                                           "flag_batch_size": args.flag_batch_size, "text_column": "text",
                                           "colbert": args.colbert}
        t0 = time.monotonic()
        ds = ray_embed.read_input(ea)
        ray_embed.embed(ds, ea, plan, pool, udf=udf, udf_args=udf_args).write_parquet(str(out))
        wall = time.monotonic() - t0
    except Exception as e:  # noqa: BLE001  (recorded, the other engine still runs)
        return {"engine": engine, "status": "failed", "reason": ray_embed.first_error(e),
                "load_before": load_before, "load_after": rc.load_snapshot()}
    finally:
        ray.shutdown()
    load_after = rc.load_snapshot()
    t = pq.read_table(out, columns=["id", *MEASURED])
    actors = {}
    for row in t.to_pylist():
        a = actors.setdefault(row["_pid"], {"pid": row["_pid"], "texts": 0, "busy_s": 0.0, "peak_rss_bytes": 0,
                                            "rss_after_load_bytes": row["_rss_load"], "load_s": row["_load_s"]})
        a["texts"] += 1
        a["busy_s"] += row["_seconds"]
        a["peak_rss_bytes"] = max(a["peak_rss_bytes"], row["_peak_rss"])
    return {"engine": engine, "status": "ok", "rows": t.num_rows, "wall_s": round(wall, 3),
            "texts_per_second": t.num_rows / wall, "tokens_per_second": corpus["tokens"] / wall,
            "actors": sorted(actors.values(), key=lambda a: a["pid"]), "plan": plan if engine == "m3embed" else None,
            "load_before": load_before, "load_after": load_after, "output": str(out)}


def dense_difference(runs: list[dict]) -> dict | None:
    """Largest |m3embed - FlagEmbedding| over the dense vectors, and the texts above 1e-4."""
    import numpy as np
    import pyarrow.parquet as pq

    ok = [r for r in runs if r["status"] == "ok"]
    if len(ok) != 2:
        return None
    a, b = (pq.read_table(r["output"], columns=["id", "dense"]).sort_by("id") for r in ok)
    diff = np.abs(np.array(a.column("dense").to_pylist()) - np.array(b.column("dense").to_pylist())).max(axis=1)
    return {"max_abs": float(diff.max()), "texts_above_1e-4": int((diff > 1e-4).sum())}


def markdown(result: dict) -> str:
    c, args = result["corpus"], result["settings"]
    lines = [f"# Ray Data corpus throughput: m3embed vs FlagEmbedding actors ({result['date']})", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {rc.machine_line(result['machine'])}. Git: {result['git']}.", "",
             f"Model: `{result['model']['path']}` ({result['model'].get('layers')} layers, hidden "
             f"{result['model'].get('hidden')}). Versions: "
             + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".", "",
             f"Corpus: {c['texts']:,} texts, {c['tokens']:,} tokens (mix distribution; median {c['median']}, max "
             f"{c['max']}, truncated at {c['max_length']}), one Parquet file. Pipeline: examples/ray_embed.py, "
             f"{args['actors']} actors x {args['threads']} thread(s) (Ray: {args['actors'] * args['threads'] + 1} "
             f"CPUs), {args['batch_size']} texts per actor call, dense + sparse"
             + (" + ColBERT" if args["colbert"] else "") + f"; FlagEmbedding batch_size {args['flag_batch_size']}.",
             "", "Wall time: from the start of the pipeline to the last Parquet file written, actor start and model "
             "load included. Peak RSS per actor: ru_maxrss / VmHWM in the actor (m3embed's from its warm-up on).", "",
             "| engine | wall s | texts/s | tokens/s | per actor: texts, load s, busy s, RSS after load MiB, "
             "peak RSS MiB |", "| --- | ---: | ---: | ---: | --- |"]
    for r in result["runs"]:
        if r["status"] != "ok":
            lines.append(f"| {r['engine']} | failed: {r['reason']} | | | |")
            continue
        per = "; ".join(f"{a['texts']}, {a['load_s']:.1f}, {a['busy_s']:.1f}, {rc.mib(a['rss_after_load_bytes'])}, "
                        f"{rc.mib(a['peak_rss_bytes'])}" for a in r["actors"])
        lines.append(f"| {r['engine']} | {r['wall_s']:.1f} | {r['texts_per_second']:,.1f} | "
                     f"{r['tokens_per_second']:,.0f} | {per} |")
    ok = {r["engine"]: r for r in result["runs"] if r["status"] == "ok"}
    if len(ok) == 2:
        ratio = ok["m3embed"]["tokens_per_second"] / ok["flagembedding"]["tokens_per_second"]
        d = result["dense_difference"]
        lines += ["", f"m3embed / FlagEmbedding: {ratio:.2f}x tokens/s. Dense vectors: largest difference "
                  f"{d['max_abs']:.2e}; {d['texts_above_1e-4']} of {c['texts']} texts differ by more than 1e-4."]
    if "m3embed" in ok:
        p = ok["m3embed"]["plan"]
        lines += ["", f"m3embed's plan per actor: {rc.mib(p['total_bytes'])} MiB (weights "
                  f"{rc.mib(p['weight_bytes'])} MiB, arena {rc.mib(p['arena_bytes'])} MiB, max batch tokens "
                  f"{p['max_batch_tokens']})."]
    lines += [""] + rc.load_section(result["runs"], result["load_at_start"], result["load_at_end"],
                                    result["settings"]["max_load_per_core"], name=lambda r: r["engine"],
                                    timeout_s=result["settings"]["quiet_timeout_s"])
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="snapshot directory (default: %(default)s)")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated (default: %(default)s)")
    ap.add_argument("--texts", type=int, default=2048, help="texts in the corpus (default: %(default)s)")
    ap.add_argument("--actors", type=int, default=2, help="actors per engine (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="threads (CPUs) per actor (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=256, help="texts per actor call (default: %(default)s)")
    ap.add_argument("--flag-batch-size", type=int, default=32,
                    help="FlagEmbedding's encode batch_size (default: %(default)s, as bench/peers.py)")
    ap.add_argument("--max-length", type=int, default=8192, help="truncation, capped at the model's limit "
                    "(default: %(default)s)")
    ap.add_argument("--colbert", action="store_true", help="also compute and write ColBERT vectors")
    ap.add_argument("--label", default=None, help="results name: DATE-ray-corpus-LABEL (default: DATE-ray-corpus)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS, help="(default: bench/results)")
    ap.add_argument("--work-dir", type=Path, default=None, help="corpus and outputs (default: a temporary directory)")
    rc.add_load_args(ap, docs=False)
    args = ap.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not args.engines or set(args.engines) - set(ENGINES):
        ap.error(f"--engines: one or more of {', '.join(ENGINES)}")
    args.model = args.model.expanduser()
    if not (args.model / "config.json").exists():
        ap.error(f"{args.model} is not a model snapshot; make it with: .venv/bin/python bench/make_full_model.py "
                 "--layers 2")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    date = dt.date.today().isoformat()
    stem = args.out_dir / f"{date}-ray-corpus{'-' + args.label if args.label else ''}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    versions = rc.versions()
    for p in ("ray", "pyarrow", "m3embed"):
        try:
            versions[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            pass
    result = {"date": date, "command": rc.command_line(), "git": rc.git_revision(), "machine": rc.machine(),
              "model": rc.model_facts(args.model), "versions": versions,
              "settings": {k: getattr(args, k) for k in ("actors", "threads", "batch_size", "flag_batch_size",
                                                         "colbert", "max_load_per_core", "quiet_timeout_s")},
              "load_at_start": rc.load_snapshot(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="ray-corpus-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        result["corpus"] = make_corpus(args.texts, min(args.max_length, model_limit(args.model)),
                                       work / "corpus.parquet")
        print(f"ray_corpus: {result['corpus']['texts']:,} texts, {result['corpus']['tokens']:,} tokens", flush=True)
        for engine in args.engines:
            result["runs"].append(run_engine(engine, args, result["corpus"], work))
            r = result["runs"][-1]
            print(f"ray_corpus: {engine}: " + (f"{r['wall_s']:.1f} s, {r['texts_per_second']:.1f} texts/s, "
                  f"{r['tokens_per_second']:,.0f} tokens/s" if r["status"] == "ok" else f"failed: {r['reason']}"),
                  flush=True)
        result["dense_difference"] = dense_difference(result["runs"])
    result["load_at_end"] = rc.load_snapshot()
    for r in result["runs"]:
        r.pop("output", None)
    Path(str(stem) + ".json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result)
    Path(str(stem) + ".md").write_text(md)
    print(f"ray_corpus: wrote {stem}.json and .md\n\n{md}", flush=True)
    loaded = rc.loaded_runs(result["runs"], args.max_load_per_core, name=lambda r: r["engine"])
    return 1 if loaded or any(r["status"] != "ok" for r in result["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
