#!/usr/bin/env python3
"""Side-by-side CPU benchmark of rerankers: `m3embed rerank` against FlagEmbedding's FlagReranker
and sentence-transformers' CrossEncoder on the same query/passage pairs.

Engines (each (engine, workload) run is its own process, so its peak RSS is its own):

  m3embed-fp32, m3embed-bf16, m3embed-int8   build/m3embed rerank --dtype ... on a JSONL file
  flagreranker-fp32                          FlagReranker(use_fp16=False, devices="cpu").compute_score
  crossencoder-fp32                          CrossEncoder(device="cpu").predict

Workloads (bench/workloads.py, lengths in pieces without special tokens; a pair is q + p + 4 ids):
R1 = 1 query of 16 pieces x 100 passages of 256; R2 = 32 queries of 16..32 pieces x 20 passages
of 128..256 each (640 pairs). The texts are chosen so that every engine feeds the model the same
ids (nothing is cut, decoding round-trips: workloads.pair_problems, checked before running).

Measured: pairs/s and ids/s over the wall time of scoring (model load and warm-up excluded,
reported separately), the process's peak RSS (wait4's ru_maxrss, load included), RSS after load,
and how far each engine's logits are from FlagReranker fp32's on the same pairs (max and mean
|difference|, the same best passage per query).

- m3embed: `m3embed rerank --model M --input W.jsonl --output S.jsonl --dtype D --threads T
  --device cpu -q` (one line per query, `{"query", "passages"}`), M3_LOG_LEVEL=info; this script
  timestamps its log lines as they come: load = process start to the "warm-up of replica" line
  (the model load and m3embed's own warm-up), scoring = from there to the "scored N pairs" line
  (tokenizing, the forward passes, writing the scores). Each timed run is a fresh process.
- Python peers: `rerank_peers.py run-peer` (this file) loads the library, scores the first
  --warmup-pairs pairs untimed, then times --repeat calls over all the pairs, each one call with
  the workload's pairs as a flat list and the library's defaults (FlagReranker: batch_size 128,
  max_length 512, normalize False; CrossEncoder: batch_size 32, activation Identity for the raw
  logits); torch threads = --threads.

pairs/s is the median run. Writes bench/results/DATE-rerank-LABEL.json and .md and the rerank
section of docs/benchmarks.md (not on a loaded machine, see bench/README.md "Machine load").

    .venv/bin/python bench/make_full_model.py --kind reranker        # once: the 24-layer model
    bench/.venv-bench/bin/python bench/rerank_peers.py --label L24
    bench/.venv-bench/bin/python bench/rerank_peers.py \\
        --model ~/.cache/m3embed/bench/bge-reranker-v2-m3-random-L2 --repeat 1 --label L2-smoke --no-docs
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import encode_memory as em  # noqa: E402  (stdlib only at import time)
import peer_engines as pe  # noqa: E402
import peers  # noqa: E402
import report_common as rc  # noqa: E402
import workloads as wl  # noqa: E402

REPO = HERE.parent
RESULTS = HERE / "results"
DEFAULT_MODEL = pe.CACHE / "bge-reranker-v2-m3-random"
DEFAULT_BINARY = REPO / "build" / "m3embed"
REFERENCE = "flagreranker-fp32"
ALL_WORKLOADS = list(wl.PAIR_WORKLOADS)
PACKAGES = ("torch", "transformers", "FlagEmbedding", "sentence-transformers", "tokenizers", "numpy")
READY = "warm-up of replica"   # m3embed's info line when the model is loaded and warmed up
DONE = "scored "               # ... and when the scores are written


# ---------------------------------------------------------------------------------------
# Engines
# ---------------------------------------------------------------------------------------


class M3Rerank:
    kind = "binary"

    def __init__(self, dtype: str):
        self.dtype = dtype
        self.name = f"m3embed-{dtype}"
        self.describe = (f"build/m3embed rerank --dtype {dtype} --threads T --device cpu -q on a JSONL file (one line "
                         "per query with its passages; the pairs of consecutive lines encoded together, packed without padding into "
                         "passes of --max-batch-tokens 16384); max length 512 as FlagReranker; a fresh process per "
                         "timed run; load (with m3embed's own warm-up) and scoring timed from its log lines")

    def command(self, args, jsonl: str, scores: str) -> list[str]:
        return [str(args.binary), "rerank", "--model", str(args.model), "--input", jsonl, "--output", scores,
                "--dtype", self.dtype, "--threads", str(args.threads), "--device", "cpu", "-q"]


class FlagRerankerEngine:
    kind = "python"
    name = "flagreranker-fp32"
    dtype = "fp32"
    describe = ("FlagEmbedding 1.4.2 FlagReranker(model, use_fp16=False, devices='cpu').compute_score(pairs) with "
                "its defaults (batch_size 128, max_length 512, query_max_length 384, normalize False): tokenizes "
                "inside the call (on transformers 5 it decodes query and passage ids and tokenizes the pair again), "
                "sorts by length, pads each batch to its longest pair, runs its first batch twice (batch-size "
                "probe); torch threads = --threads")

    def load(self, args) -> None:
        import torch

        torch.set_num_threads(args.threads)
        fixtures = str(REPO / "tests" / "fixtures")
        if fixtures not in sys.path:
            sys.path.insert(0, fixtures)
        from make_fixtures import import_flag_reranker

        self.m = import_flag_reranker()(str(args.model), use_fp16=False, devices="cpu")

    def score(self, pairs: list[list[str]]) -> list[float]:
        return [float(x) for x in self.m.compute_score(pairs)]


class CrossEncoderEngine:
    kind = "python"
    name = "crossencoder-fp32"
    dtype = "fp32"
    describe = ("sentence-transformers 6.3.0 CrossEncoder(model, device='cpu').predict(pairs, "
                "activation_fn=Identity()) with its defaults otherwise (batch_size 32, max length the model's "
                "8192, longest_first truncation): sorts by length, tokenizes and pads each batch to its longest "
                "pair; raw logits instead of its default Sigmoid (the same cost); torch threads = --threads")

    def load(self, args) -> None:
        import torch
        from sentence_transformers import CrossEncoder

        torch.set_num_threads(args.threads)
        self.identity = torch.nn.Identity()
        self.m = CrossEncoder(str(args.model), device="cpu")

    def score(self, pairs: list[list[str]]) -> list[float]:
        out = self.m.predict(pairs, activation_fn=self.identity, show_progress_bar=False)
        return [float(x) for x in out]


ENGINES = {e.name: e for e in [M3Rerank("fp32"), M3Rerank("bf16"), M3Rerank("int8"),
                                FlagRerankerEngine(), CrossEncoderEngine()]}


# ---------------------------------------------------------------------------------------
# The Python peers' worker (one process per (engine, workload))
# ---------------------------------------------------------------------------------------


def cmd_run_peer(argv) -> int:
    ap = argparse.ArgumentParser(prog="rerank_peers.py run-peer")
    ap.add_argument("--engine", required=True, choices=[e.name for e in ENGINES.values() if e.kind == "python"])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--inputs", required=True, help='JSON {"groups": [[query, [passage, ...]], ...]}')
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup-pairs", type=int, default=8)
    ap.add_argument("--budget-s", type=float, default=0)
    ap.add_argument("--json", required=True)
    ap.add_argument("--scores", required=True)
    args = ap.parse_args(argv)
    t_start = time.time()
    eng = ENGINES[args.engine]
    groups = json.loads(Path(args.inputs).read_text())["groups"]
    pairs = [[q, p] for q, passages in groups for p in passages]
    rss_start = pe.rss_bytes()
    try:
        t0 = time.perf_counter()
        eng.load(args)
        load_s = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001
        Path(args.json).write_text(json.dumps({"status": "unavailable", "reason": f"{type(e).__name__}: {e}"[:600]}))
        return 0
    rss_load, peak_load = pe.rss_bytes(), pe.hwm_bytes()
    t0 = time.perf_counter()
    if args.warmup_pairs > 0:
        eng.score(pairs[:args.warmup_pairs])
    warm_s = time.perf_counter() - t0
    pe.reset_hwm()
    seconds: list[float] = []
    scores = None
    for r in range(args.repeat):
        if r > 0 and args.budget_s > 0 and (time.time() - t_start) + seconds[-1] > args.budget_s:
            print(f"{eng.name}: budget of {args.budget_s:.0f} s reached after {r} timed runs", file=sys.stderr)
            break
        t0 = time.perf_counter()
        scores = eng.score(pairs)
        seconds.append(time.perf_counter() - t0)
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(args.scores).write_text(json.dumps(scores))
    report = {"status": "ok", "engine": eng.name, "seconds": seconds, "load_seconds": load_s,
              "warmup_seconds": warm_s, "warmup_pairs": min(args.warmup_pairs, len(pairs)),
              "rss_before_load_bytes": rss_start, "rss_after_load_bytes": rss_load,
              "peak_rss_load_bytes": peak_load, "peak_rss_runs_bytes": pe.hwm_bytes(), "ru_maxrss_bytes": ru}
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{eng.name}: {len(pairs)} pairs, runs {[round(s, 2) for s in seconds]} s, load {load_s:.1f} s",
          file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------


def m3_env(threads: int) -> dict:
    env = peers.child_env(threads)
    env["M3_LOG_LEVEL"] = "info"  # the READY and DONE lines
    return env


def run_m3_once(eng, cmd: list[str], env: dict, log: Path, kill_after_s: float) -> dict:
    """One `m3embed rerank` process: load and scoring seconds from its timestamped log lines."""
    lines: list[tuple[float, str]] = []
    t0 = time.time()
    r = peers.run_child(cmd, env, log, kill_after_s, line_times=lines)
    out = {"wall_s": r["wall_s"], "exit": r["exit"], "peak_rss_bytes": r["peak_rss_bytes"]}
    if r["timed_out"]:
        return {**out, "status": "timeout", "reason": f"killed after {r['wall_s']:.0f} s"}
    ready = [t for t, ln in lines if READY in ln]
    done = [t for t, ln in lines if DONE in ln]
    if r["exit"] != 0 or not ready or not done:
        why = f"exit {r['exit']}" if r["exit"] != 0 else f"no '{READY}' and '{DONE}' lines in its log"
        return {**out, "status": "failed", "reason": f"{why}: {peers.log_tail(log)}"}
    text = "\n".join(ln for _, ln in lines)
    mem = em.parse_m3_log(text)
    resident = list(re.finditer(r"process resident\s+" + em.SIZE, text))  # on the READY line
    return {**out, "status": "ok", "load_seconds": ready[-1] - t0, "seconds": done[-1] - ready[-1],
            "rss_after_load_bytes": em._size(resident[-1]) if resident else None,
            "plan_total_bytes": mem.get("plan_total_bytes"), "plan_lines": mem.get("plan_lines")}


def m3_tokenize_mismatches(args, groups: dict[str, list]) -> list[str]:
    """Texts whose ids from `m3embed tokenize` differ from the transformers tokenizer's (what the
    peers use): with any, the engines would not score the same ids."""
    import subprocess

    texts = list(dict.fromkeys(t for g in groups.values() for q, ps in g for t in [q, *ps]))
    inp = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
    r = subprocess.run([str(args.binary), "tokenize", "--model", str(args.model), "--input", "-", "--format", "jsonl"],
                       input=inp.encode(), capture_output=True, env=peers.child_env(args.threads))
    got = [json.loads(ln)["input_ids"] for ln in r.stdout.decode().splitlines() if ln.strip()]
    if r.returncode != 0 or len(got) != len(texts):
        return [f"m3embed tokenize failed (exit {r.returncode}): {r.stderr.decode(errors='replace')[-300:]}"]
    want = wl.tokenizer()(texts)["input_ids"]
    return [f"{t[:60]!r}..." for t, a, b in zip(texts, got, want) if a != b]


def read_m3_scores(path: Path) -> list[float]:
    out: list[float] = []
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out.extend(rec["scores"] if "scores" in rec else [rec["score"]])
    return out


def run_one(eng, w: str, files: dict, args, logs: Path) -> dict:
    stem = logs / f"{eng.name}-{w}"
    scores = Path(f"{stem}.scores.json")
    scores.unlink(missing_ok=True)
    kill = 1.5 * args.budget_s + 120
    row = {"engine": eng.name, "workload": w, "log": f"{stem}.log"}
    if eng.kind == "binary":
        runs, t_start = [], time.time()
        out = Path(f"{stem}.out.jsonl")
        cmd = eng.command(args, files["jsonl"], str(out))
        row["command"] = cmd
        for k in range(args.repeat):
            if k > 0 and (time.time() - t_start) + runs[-1]["wall_s"] > args.budget_s:
                print(f"{eng.name} x {w}: budget of {args.budget_s:.0f} s reached after {k} runs", end=" ")
                break
            run = run_m3_once(eng, cmd, m3_env(args.threads), Path(f"{stem}.run{k}.log"), kill)
            runs.append(run)
            if run["status"] != "ok":
                return {**row, "status": run["status"], "reason": run["reason"], "runs": runs}
            got = read_m3_scores(out)
            if k == 0:
                scores.write_text(json.dumps(got))
            elif got != json.loads(scores.read_text()):
                row["scores_differ_between_runs"] = True
        rep = {"seconds": [r["seconds"] for r in runs], "load_seconds": statistics.median(r["load_seconds"] for r in runs),
               "rss_after_load_bytes": runs[0]["rss_after_load_bytes"], "plan_total_bytes": runs[0]["plan_total_bytes"],
               "plan_lines": runs[0]["plan_lines"]}
        peak = max(r["peak_rss_bytes"] for r in runs)
        row |= {"m3_runs": runs, "wall_s": sum(r["wall_s"] for r in runs)}
    else:
        report = Path(f"{stem}.json")
        report.unlink(missing_ok=True)
        cmd = [args.python, str(Path(__file__).resolve()), "run-peer", "--engine", eng.name, "--model",
               str(args.model), "--inputs", files["inputs"], "--threads", str(args.threads), "--repeat",
               str(args.repeat), "--warmup-pairs", str(args.warmup_pairs), "--budget-s", f"{args.budget_s:.0f}",
               "--json", str(report), "--scores", str(scores)]
        row["command"] = cmd
        r = peers.run_child(cmd, peers.child_env(args.threads), Path(row["log"]), kill)
        row["wall_s"] = r["wall_s"]
        if r["timed_out"]:
            return {**row, "status": "timeout", "reason": f"killed after {r['wall_s']:.0f} s"}
        try:
            rep = json.loads(report.read_text())
        except (OSError, ValueError):
            return {**row, "status": "failed", "reason": f"exit {r['exit']}: {peers.log_tail(Path(row['log']))}"}
        if rep.get("status") != "ok":
            return {**row, "status": rep.get("status", "failed"), "reason": rep.get("reason", "")}
        peak = max(r["peak_rss_bytes"], rep["ru_maxrss_bytes"])
        row["report"] = rep
    W = wl.resolve_pairs(w)
    med = statistics.median(rep["seconds"])
    return {**row, "status": "ok", "pairs": W.pairs, "tokens": W.total_tokens, "runs": len(rep["seconds"]),
            "seconds": rep["seconds"], "median_seconds": med, "pairs_per_second": W.pairs / med,
            "tokens_per_second": W.total_tokens / med, "load_seconds": rep["load_seconds"],
            "rss_after_load_bytes": rep.get("rss_after_load_bytes"), "peak_rss_bytes": peak,
            "plan_total_bytes": rep.get("plan_total_bytes"), "scores_file": str(scores)}


# ---------------------------------------------------------------------------------------
# Agreement of the scores
# ---------------------------------------------------------------------------------------


def agreement(rows: list[dict], groups: dict[str, list]) -> list[dict]:
    """Each engine's logits against FlagReranker fp32's (and bf16/int8 against m3embed fp32)."""
    out = []
    for w, g in groups.items():
        sizes = [len(ps) for _, ps in g]
        got = {}
        for r in rows:
            if r["workload"] == w and r["status"] == "ok":
                try:
                    got[r["engine"]] = json.loads(Path(r["scores_file"]).read_text())
                except (OSError, ValueError):
                    pass
        pairs = [(e, REFERENCE) for e in got if e != REFERENCE]
        pairs += [(e, "m3embed-fp32") for e in got if e in ("m3embed-bf16", "m3embed-int8")]
        for e, ref in pairs:
            if ref not in got or len(got[e]) != len(got[ref]):
                continue
            a, b = got[e], got[ref]
            diff = [abs(x - y) for x, y in zip(a, b)]
            same_top, k = 0, 0
            for n in sizes:
                qa, qb = a[k:k + n], b[k:k + n]
                same_top += qa.index(max(qa)) == qb.index(max(qb))
                k += n
            out.append({"workload": w, "engine": e, "reference": ref, "max_abs_diff": max(diff),
                        "mean_abs_diff": sum(diff) / len(diff), "same_top1": same_top, "queries": len(sizes),
                        "reference_min": min(b), "reference_max": max(b),
                        "reference_std": statistics.pstdev(b)})
    return out


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def fmt_ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def add_ratios(rows: list[dict]) -> None:
    ref = {r["workload"]: r["pairs_per_second"] for r in rows if r["engine"] == REFERENCE and r["status"] == "ok"}
    for r in rows:
        if r["status"] == "ok":
            r["ratio_flagreranker"] = r["pairs_per_second"] / ref[r["workload"]] if r["workload"] in ref else None


def markdown(result: dict) -> str:
    rows, engines, workloads = result["runs"], result["engines"], result["workloads"]
    cell = {(r["engine"], r["workload"]): r for r in rows}
    warn = rc.load_warning(rows, result.get("max_load_per_core", rc.LOAD_LIMIT_PER_CORE))
    m = result["model"]
    out = [f"## Rerankers: {result['label']}", "",
           f"Command (from the repository root, {result['date']}, git {result['git']}):", "",
           f"    {result['command']}", "", *([warn, ""] if warn else []),
           f"- Machine: {rc.machine_line(result['machine'])}",
           f"- Model: `{m['path']}` ({m.get('layers')} layers of bge-reranker-v2-m3's shape, random weights, seed "
           f"{m.get('seed')}; `bench/make_full_model.py --kind reranker`)",
           f"- Threads {result['threads']}; {result['repeat']} timed run(s), median; the Python peers first score "
           f"{result['warmup_pairs']} pairs untimed, m3embed warms up while loading; budget {result['budget_s']:.0f} s "
           "per (engine, workload)",
           "- Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()), "",
           "Pairs/s (and ids/s: `<s> q </s></s> p </s>`, no padding) over the wall time of scoring all the "
           "workload's pairs, tokenization included; model load and warm-up excluded (load s below). Peak RSS is the "
           "whole process's high-water mark, load included, each run in its own process. Ratios: pairs/s over "
           f"{REFERENCE}.", ""]
    def table(title: str, fmt) -> list[str]:
        def text(e, w):
            r = cell.get((e, w))
            return "-" if r is None else (fmt(r) if r["status"] == "ok" else r["status"])

        return rc.grid_table(title, engines, workloads, text)

    out += table("### Pairs/s (ids/s; x FlagReranker fp32)",
                 lambda r: f"{r['pairs_per_second']:,.1f} ({r['tokens_per_second']:,.0f}; "
                           f"{fmt_ratio(r.get('ratio_flagreranker'))})")
    out += [""] + table("### Peak RSS, MiB (RSS after load)",
                        lambda r: f"{rc.mib(r['peak_rss_bytes'])} ({rc.mib(r.get('rss_after_load_bytes'))})")
    out += [""] + table("### Load, s", lambda r: f"{r['load_seconds']:.1f}")
    agree = result.get("agreement") or []
    if agree:
        out += ["", "### Agreement of the logits", "",
                "The same pairs (the same ids for every engine); logits, not sigmoids. Same top-1: queries whose "
                "best-scored passage is the same. With random weights the bf16/int8 rows say little about the real "
                "model's fidelity (the calibrated head scales small differences of the `<s>` state up to logits "
                "of standard deviation 3).", "",
                "| workload | engine | against | max abs diff | mean abs diff | same top-1 | reference logits (min, max, std) |",
                "| --- | --- | --- | ---: | ---: | ---: | --- |"]
        for a in agree:
            out.append(f"| {a['workload']} | {a['engine']} | {a['reference']} | {a['max_abs_diff']:.2e} | "
                       f"{a['mean_abs_diff']:.2e} | {a['same_top1']}/{a['queries']} | {a['reference_min']:.2f}, "
                       f"{a['reference_max']:.2f}, {a['reference_std']:.2f} |")
    if result.get("m3embed_tokenize_mismatches"):
        bad = result["m3embed_tokenize_mismatches"]
        out += ["", f"**m3embed tokenized {len(bad)} text(s) differently from transformers** (e.g. {bad[0]}): the "
                "engines did not all score the same ids."]
    out += ["", "### Engines", ""]
    out += [f"- **{e}**: {ENGINES[e].describe}" for e in engines]
    problems = [r for r in rows if r["status"] != "ok"]
    if problems:
        out += ["", "Runs that did not finish:", ""]
        out += [f"- {r['engine']} x {r['workload']}: {r['status']}: {r.get('reason', '')}" for r in problems]
    differ = [r for r in rows if r.get("scores_differ_between_runs")]
    if differ:
        out += ["", "m3embed's scores differed between its runs: "
                + ", ".join(f"{r['engine']} x {r['workload']}" for r in differ) + "."]
    out += ["", "Workloads (bench/workloads.py; pieces exclude the special tokens): "
            + "; ".join(f"{w}: {wl.resolve_pairs(w).describe()}" for w in workloads) + "."]
    plans = [r for r in rows if r["status"] == "ok" and r.get("plan_total_bytes")]
    if plans:
        out += ["", "m3embed's memory plan (weights + arena), MiB: "
                + ", ".join(f"{r['engine']} x {r['workload']} {rc.mib(r['plan_total_bytes'])}" for r in plans) + "."]
    if any(r.get("load_before") for r in rows):
        out += [""] + rc.load_section(rows, result.get("load_at_start"), result.get("load_at_end"),
                                      result.get("max_load_per_core", rc.LOAD_LIMIT_PER_CORE),
                                      timeout_s=result.get("quiet_timeout_s"))
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Engines:\n" + "\n".join(f"  {e.name}: {e.describe}" for e in ENGINES.values()))
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                    help="reranker snapshot (default: %(default)s; bench/make_full_model.py --kind reranker "
                         "[--layers N] writes it)")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated (default: all)")
    ap.add_argument("--workloads", default=",".join(ALL_WORKLOADS), help="comma-separated (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="threads for every engine (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per (engine, workload); pairs/s is their "
                    "median (default: %(default)s)")
    ap.add_argument("--warmup-pairs", type=int, default=8, help="pairs the Python peers score untimed after "
                    "loading (default: %(default)s; m3embed warms up while loading)")
    ap.add_argument("--budget-s", type=float, default=1800, help="time budget per (engine, workload), load included: "
                    "no timed run starts that would pass it, and a process is killed at 1.5x plus 120 s "
                    "(default: %(default)s)")
    ap.add_argument("--label", default=None, help="results name: DATE-rerank-LABEL (default: the model directory name)")
    ap.add_argument("--binary", type=Path, default=DEFAULT_BINARY, help="m3embed (default: %(default)s)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the Python peers (default: this one)")
    ap.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    ap.add_argument("--out-dir", type=Path, default=RESULTS, help="(default: bench/results)")
    rc.add_load_args(ap)
    args = ap.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = [e for e in args.engines if e not in ENGINES] + [w for w in args.workloads if w not in wl.PAIR_WORKLOADS]
    if bad:
        ap.error(f"unknown engine(s) or workload(s) {bad}; engines: {', '.join(ENGINES)}; workloads: "
                 f"{', '.join(wl.PAIR_WORKLOADS)}")
    args.model = args.model.expanduser()
    try:
        arch = json.loads((args.model / "config.json").read_text()).get("architectures")
    except (OSError, ValueError):
        arch = None
    if arch != ["XLMRobertaForSequenceClassification"]:
        ap.error(f"{args.model} is not a reranker snapshot (config.json architectures {arch}); build it with "
                 "bench/make_full_model.py --kind reranker [--layers N]")
    if any(ENGINES[e].kind == "binary" for e in args.engines) and not args.binary.exists():
        ap.error(f"{args.binary} is missing: build it first (cmake --build build -j2 --target m3embed)")
    args.label = args.label or args.model.name
    return args


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["run-peer"]:
        return cmd_run_peer(argv[1:])
    args = parse_args(argv)
    date = dt.date.today().isoformat()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"{date}-rerank-{args.label}"
    logs = pe.CACHE / "logs" / stem.name  # per-run logs, reports and scores: not in the repository
    logs.mkdir(parents=True, exist_ok=True)

    groups = {w: wl.pair_texts(w) for w in args.workloads}
    for w, g in groups.items():
        bad = wl.pair_problems(g)
        if bad:
            print(f"rerank_peers: {w}: {len(bad)} pairs would not be fed alike by every engine, e.g. {bad[:3]}",
                  file=sys.stderr)
            return 2

    mismatches = m3_tokenize_mismatches(args, groups) if any(ENGINES[e].kind == "binary" for e in args.engines) else []
    if mismatches:
        print(f"rerank_peers: warning: m3embed tokenizes {len(mismatches)} text(s) differently from transformers, "
              f"e.g. {mismatches[:2]}: their scores will differ", file=sys.stderr)

    result = {"label": args.label, "date": date, "command": rc.command_line(), "git": rc.git_revision(),
              "machine": rc.machine(), "model": rc.model_facts(args.model),
              "versions": rc.versions(args.python, PACKAGES), "threads": args.threads, "repeat": args.repeat,
              "warmup_pairs": args.warmup_pairs, "budget_s": args.budget_s, "engines": args.engines,
              "workloads": args.workloads, "m3embed_tokenize_mismatches": mismatches, "runs": [], "agreement": [],
              "max_load_per_core": args.max_load_per_core, "quiet_timeout_s": args.quiet_timeout_s,
              "load_at_start": rc.load_snapshot(), "load_at_end": None}

    def save():
        add_ratios(result["runs"])
        result["agreement"] = agreement(result["runs"], groups)
        Path(str(stem) + ".json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"rerank_peers: {len(args.engines)} engines x {len(args.workloads)} workloads on {args.model} "
          f"({result['model'].get('layers')} layers), threads {args.threads}, repeat {args.repeat}; "
          f"results -> {os.path.relpath(stem, REPO)}.json", flush=True)
    with tempfile.TemporaryDirectory(prefix="m3-rerank-") as tmp:
        total, k = len(args.engines) * len(args.workloads), 0
        for w in args.workloads:
            files = {"jsonl": str(Path(tmp) / f"{w}.jsonl"), "inputs": str(Path(tmp) / f"{w}.inputs.json")}
            Path(files["jsonl"]).write_text("".join(json.dumps({"query": q, "passages": ps}, ensure_ascii=False) + "\n"
                                                    for q, ps in groups[w]))
            Path(files["inputs"]).write_text(json.dumps({"groups": groups[w]}, ensure_ascii=False))
            for e in args.engines:
                k += 1
                row = rc.run_when_quiet(
                    "rerank_peers", f"[{k}/{total}] {e} x {w}", lambda: run_one(ENGINES[e], w, files, args, logs),
                    lambda r: f"{r['pairs_per_second']:,.1f} pairs/s ({r['tokens_per_second']:,.0f} ids/s), peak RSS "
                              f"{rc.mib(r['peak_rss_bytes'])} MiB, load {r['load_seconds']:.1f} s", args)
                result["runs"].append(row)
                save()

    result["load_at_end"] = rc.load_snapshot()
    save()
    failed = [f"{r['engine']} x {r['workload']}" for r in result["runs"] if r["status"] != "ok"]
    refused = not args.no_docs and rc.refuse_docs_if_loaded("rerank_peers", result["runs"], args.force_docs,
                                                            args.max_load_per_core)
    if not args.no_docs and failed and not args.force_docs:
        print(f"rerank_peers: not writing the docs: {', '.join(failed)} did not finish (--force-docs overrides)",
              file=sys.stderr, flush=True)
        refused = True
    md = markdown(result)
    Path(str(stem) + ".md").write_text(md)
    if not args.no_docs and not refused:
        rc.update_docs_section("rerank", md)
        print("rerank_peers: docs/benchmarks.md updated", flush=True)
    print(f"rerank_peers: wrote {os.path.relpath(stem, REPO)}.json and .md", flush=True)
    print(md)
    return 1 if refused or failed else 0


if __name__ == "__main__":
    sys.exit(main())
