#!/usr/bin/env python3
"""Side-by-side CPU benchmark of m3embed and its peers: every engine on every workload.

Each (engine, workload) is a fresh process (so its peak RSS, from wait4's ru_maxrss, is its
own), under a time budget; the engine's own report adds load time, RSS after load and the
peak during the timed runs. Engines (bench/peer_engines.py, one adapter class each):

  m3embed-fp32, m3embed-bf16, m3embed-int8   build/m3bench-workload --dtype ...
  flagembedding-fp32                         FlagEmbedding BGEM3FlagModel.encode (torch fp32)
  torch-bf16                                 the same, model cast to torch.bfloat16
  onnxruntime-fp32                           torch.onnx export, ONNX Runtime CPU EP
  ctranslate2                                ctranslate2.Encoder (float32)
  llama.cpp                                  llama-cpp-python, GGUF f32, embeddings mode

An engine that is not installed or cannot load the model is reported "unavailable: <reason>".
Workloads (bench/workloads.py): W1 64x128, W2 64 x 16..512, W3 2x2048, W4 1x8192, mix (256
texts, corpus-like, ~40k tokens); each is one request (all texts in one encode call).

Writes bench/results/<date>-peers-<label>.json and .md and regenerates the peers section of
docs/benchmarks.md and docs/benchmarks.png. Setup once: bench/setup.sh (the venv), and
`cmake --build build -j2 --target m3bench-workload`.

Machine load: before each (engine, workload) run it waits (at most --quiet-timeout-s, default
180 s) until the 1-minute load average is at most --max-load-per-core (default 0.5) x the CPUs,
and records that as the run's load_before (1/5/15-min averages, CPUs); load_after is taken when
the run ends. Only load_before is judged (load_after includes the run's own threads: a 2-thread
run on 2 cores ends near 2). If any run started above the limit, the results are still written,
marked "taken on a loaded machine", but docs/benchmarks.md / .png are not (exit status 1)
unless --force-docs.

    bench/.venv-bench/bin/python bench/peers.py --threads 2 --repeat 3 --label L24
    bench/.venv-bench/bin/python bench/peers.py --model ~/.cache/m3embed/bench/bge-m3-random-L2 \\
        --workloads W1,W3 --repeat 1 --label L2-quick --no-docs
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peer_engines as pe  # noqa: E402
import report_common as rc  # noqa: E402
import model_flops as mflops  # noqa: E402
import workloads as wl  # noqa: E402

REPO = HERE.parent
RESULTS = HERE / "results"
DEFAULT_MODEL = Path.home() / ".cache" / "m3embed" / "bench" / "bge-m3-random"
ALL_WORKLOADS = ["W1", "W2", "W3", "W4", "mix"]
REFERENCE = "flagembedding-fp32"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Engines: " + ", ".join(pe.ENGINES) + "\n\n" + "\n".join(
            f"  {e.name}: {e.describe}" for e in pe.ENGINES.values()) + "\n\n"
        "Outputs: bench/results/DATE-peers-LABEL.json and .md (each run's log and report:\n"
        "~/.cache/m3embed/bench/logs/DATE-peers-LABEL/), "
        "docs/benchmarks.md (peers section) and docs/benchmarks.png unless --no-docs.")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                    help="snapshot directory (default: %(default)s; bge-m3-random-L2 is the 2-layer quick variant)")
    ap.add_argument("--engines", default=",".join(pe.ENGINES), help="comma-separated (default: all)")
    ap.add_argument("--workloads", default=",".join(ALL_WORKLOADS), help="comma-separated (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="threads for every engine (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per (engine, workload); tokens/s is their "
                    "median (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before them (default: %(default)s)")
    ap.add_argument("--budget-s", type=float, default=1800, help="time budget per (engine, workload) process, "
                    "load included: no timed run starts that would pass it, and the process is killed at 1.5x "
                    "plus 120 s (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=32, help="texts per padded batch for the Python peers "
                    "(default: %(default)s; FlagEmbedding's own default of 256 pads the mix to its longest text)")
    ap.add_argument("--max-batch-tokens", type=int, default=16384, help="m3embed's tokens per pass (default: %(default)s)")
    ap.add_argument("--label", default=None, help="results name: DATE-peers-LABEL (default: the model directory name)")
    ap.add_argument("--binary", type=Path, default=pe.DEFAULT_BINARY, help="m3bench-workload (default: %(default)s)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the Python peers (default: this one)")
    ap.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md / .png")
    ap.add_argument("--out-dir", type=Path, default=RESULTS, help="(default: bench/results)")
    rc.add_load_args(ap)
    args = ap.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = [e for e in args.engines if e not in pe.ENGINES]
    if bad:
        ap.error(f"unknown engine(s) {bad}; known: {', '.join(pe.ENGINES)}")
    for w in args.workloads:
        try:
            wl.resolve(w)
        except ValueError as e:
            ap.error(str(e))
    args.model = args.model.expanduser()
    if not (args.model / "config.json").exists():
        ap.error(f"{args.model} is not a model snapshot (no config.json); build it with bench/make_full_model.py")
    args.label = args.label or args.model.name
    return args


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env["TQDM_DISABLE"] = "1"
    env.setdefault("M3_LOG_LEVEL", "warn")
    return env


def run_child(cmd: list[str], env: dict, log: Path, kill_after_s: float, line_times: list | None = None) -> dict:
    """Run cmd in its own process group; wall time, exit status and its own peak RSS (wait4).
    With line_times (a list), its output goes through a pipe and each line is appended to it
    as (time.time() when read, line), as well as to the log."""
    t0 = time.time()
    with open(log, "w") as lf:
        piped = line_times is not None
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE if piped else lf, stderr=subprocess.STDOUT, env=env,
                             cwd=REPO, start_new_session=True)
        reader = None
        if piped:
            def read_lines():
                for raw in p.stdout:
                    line_times.append((time.time(), raw.decode(errors="replace").rstrip("\n")))
                    lf.write(raw.decode(errors="replace"))
                    lf.flush()

            reader = threading.Thread(target=read_lines, daemon=True)
            reader.start()
        timed_out = False
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                break
            if time.time() - t0 > kill_after_s:
                timed_out = True
                os.killpg(p.pid, signal.SIGKILL)
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.1)
        p.returncode = os.waitstatus_to_exitcode(status)
        if reader is not None:
            reader.join(timeout=10)
    return {"wall_s": time.time() - t0, "exit": p.returncode, "timed_out": timed_out,
            "peak_rss_bytes": ru.ru_maxrss * 1024}


def log_tail(log: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-400:]


def prepare_engine(eng, args, env, logs: Path) -> dict:
    """Availability and one-off conversion, in its own process (not measured)."""
    if eng.kind == "binary":
        try:
            eng.check(args)
            return {"status": "ok"}
        except pe.Unavailable as e:
            return {"status": "unavailable", "reason": str(e)}
    out = logs / f"prepare-{eng.name}.json"
    cmd = [args.python, str(HERE / "peer_engines.py"), "prepare", "--engine", eng.name, "--model", str(args.model),
           "--threads", str(args.threads), "--batch-size", str(args.batch_size), "--json", str(out)]
    r = run_child(cmd, env, logs / f"prepare-{eng.name}.log", max(args.budget_s, 1800))
    try:
        return json.loads(out.read_text())
    except (OSError, ValueError):
        return {"status": "unavailable", "reason": f"prepare step failed (exit {r['exit']}): "
                f"{log_tail(logs / f'prepare-{eng.name}.log')}"}


def run_one(eng, workload: str, files: dict, args, env, logs: Path) -> dict:
    report = logs / f"{eng.name}-{workload}.json"
    log = logs / f"{eng.name}-{workload}.log"
    report.unlink(missing_ok=True)
    budget = args.budget_s
    if eng.kind == "binary":
        cmd = eng.command(args, files["ids"], str(report), budget)
    else:
        cmd = [args.python, str(HERE / "peer_engines.py"), "run", "--engine", eng.name, "--model", str(args.model),
               "--threads", str(args.threads), "--batch-size", str(args.batch_size), "--inputs", files["inputs"],
               "--repeat", str(args.repeat), "--warmup", str(args.warmup), "--budget-s", f"{budget:.0f}",
               "--json", str(report)]
    r = run_child(cmd, env, log, 1.5 * budget + 120)
    row = {"engine": eng.name, "workload": workload, "command": cmd, "wall_s": r["wall_s"],
           "process_peak_rss_bytes": r["peak_rss_bytes"], "log": str(log)}
    if r["timed_out"]:
        return {**row, "status": "timeout", "reason": f"killed after {r['wall_s']:.0f} s (budget {budget:.0f} s)"}
    try:
        rep = json.loads(report.read_text())
    except (OSError, ValueError):
        return {**row, "status": "failed", "reason": f"exit {r['exit']}: {log_tail(log)}"}
    if rep.get("status", "ok") != "ok":
        return {**row, "status": rep["status"], "reason": rep.get("reason", "")}
    return {**row, "status": "ok", "tokens": rep["tokens"], "texts": rep["texts"],
            "tokens_per_second": rep["tokens_per_second"], "seconds": rep["seconds"],
            "peak_rss_bytes": max(r["peak_rss_bytes"], rep.get("peak_rss_bytes", 0)),
            "rss_after_load_bytes": rep.get("rss_after_load_bytes"), "load_seconds": rep.get("load_seconds"),
            "report": rep}


def add_ratios(rows: list[dict]) -> None:
    by_w: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r["status"] == "ok":
            by_w.setdefault(r["workload"], {})[r["engine"]] = r
    for w, engines in by_w.items():
        peers = [r["tokens_per_second"] for e, r in engines.items() if not e.startswith("m3embed")]
        best = max(peers) if peers else None
        ref = engines.get(REFERENCE, {}).get("tokens_per_second")
        for r in engines.values():
            r["ratio_best_peer"] = r["tokens_per_second"] / best if best else None
            r["ratio_flagembedding"] = r["tokens_per_second"] / ref if ref else None


def fmt_ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def add_shares(result: dict) -> None:
    """Each m3embed run's FLOP/s as a share of its dtype's ceiling (bench/model_flops.py)."""
    ceiling = result.get("ceiling") or {}
    try:
        cfg = json.loads((Path(result["model"]["path"]) / "config.json").read_text())
    except (OSError, ValueError):
        return
    if not any(k.endswith("_gops") and v for k, v in ceiling.items()):
        return
    for r in result["runs"]:
        if r["status"] != "ok" or not r["engine"].startswith("m3embed"):
            continue
        lengths = wl.lengths(r["workload"])
        flops = mflops.encoder_flops(cfg, lengths)
        dtype = r["engine"].split("-", 1)[1]
        r["flops_per_token"] = flops / sum(lengths)
        r["gflops_per_second"] = r["tokens_per_second"] * r["flops_per_token"] / 1e9
        r["share_of_ceiling"] = mflops.share_of_ceiling(r["tokens_per_second"], flops, sum(lengths), dtype, ceiling)


def ceiling_section(result: dict, m3: list[dict]) -> list[str]:
    ceiling = result.get("ceiling") or {}
    if not any(r.get("share_of_ceiling") for r in m3):
        return []
    out = ["", "### Share of the machine's ceiling", "",
           f"The ceiling is `build/m3bench-peak` on {ceiling.get('threads')} threads (registers only, best of 3): "
           + ", ".join(f"{k.replace('_gops', '')} {v:,.0f} G/s" for k, v in ceiling.items() if k.endswith("_gops") and v)
           + ". A run's FLOP/s = tokens/s x the model's FLOPs per token on that workload (bench/model_flops.py: "
             "the encoder's GEMMs and attention products, BGE-M3's heads); share = that / the ceiling of the fastest "
             "instruction its dtype's GEMMs can use (fp32 FMA; bf16 dot or AMX bf16; int8 dot or AMX int8).", "",
           "| engine | workload | GFLOP per token | GFLOP/s | share of ceiling | ceiling |",
           "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in m3:
        if r.get("share_of_ceiling") is None:
            continue
        out.append(f"| {r['engine']} | {r['workload']} | {r['flops_per_token'] / 1e9:.3f} | "
                   f"{r['gflops_per_second']:,.0f} | {100 * r['share_of_ceiling']:.0f}% | "
                   f"{(mflops.ceiling_key(r['engine'].split('-', 1)[1], ceiling) or '').replace('_gops', '')} |")
    return out


def markdown(result: dict, png: str | None) -> str:
    rows, engines, workloads = result["runs"], result["engines"], result["workloads"]
    cell = {(r["engine"], r["workload"]): r for r in rows}
    status = result["engine_status"]
    warn = rc.load_warning(rows, result.get("max_load_per_core", rc.LOAD_LIMIT_PER_CORE))
    out = [f"## Speed and memory: {result['label']}", "",
           f"Command (from the repository root, {result['date']}, git {result['git']}):", "",
           f"    {result['command']}", "", *([warn, ""] if warn else []),
           f"- Machine: {rc.machine_line(result['machine'])}",
           f"- Model: `{result['model']['path']}` ({result['model'].get('layers')} layers, random weights, seed "
           f"{result['model'].get('seed')})",
           f"- Threads {result['threads']}; {result['repeat']} timed run(s) after {result['warmup']} warm-up "
           f"run(s), median; budget {result['budget_s']:.0f} s per run; Python peers' batch size "
           f"{result['batch_size']}, m3embed's max batch tokens {result['max_batch_tokens']}",
           "- Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()), "",
           "Tokens/s counts real tokens (`<s>`, `</s>` included, no padding) over the time of the encode "
           "call(s) that return dense + lexical weights + ColBERT vectors; load and warm-up are excluded. "
           "Peak RSS is the whole process's high-water mark (load included), each run in its own process. "
           f"Ratios: tokens/s over the best non-m3embed engine, and over {REFERENCE}.", ""]
    def na(e, w):
        s = status.get(e, {})
        if s.get("status") != "ok":
            return "unavailable" if w == workloads[0] else ""
        r = cell.get((e, w))
        if r is None:
            return "-"
        if r["status"] != "ok":
            return r["status"]
        return None

    def table(title: str, format_cell) -> list[str]:
        return rc.grid_table(title, engines, workloads,
                             lambda e, w: format_cell(cell[(e, w)]) if na(e, w) is None else na(e, w))

    out += table("### Tokens/s (x best peer, x FlagEmbedding fp32)",
                 lambda r: f"{r['tokens_per_second']:,.0f} ({fmt_ratio(r.get('ratio_best_peer'))}, "
                           f"{fmt_ratio(r.get('ratio_flagembedding'))})")
    out += [""] + table("### Peak RSS, MiB (RSS after load)",
                        lambda r: f"{rc.mib(r['peak_rss_bytes'])} ({rc.mib(r.get('rss_after_load_bytes'))})")
    if png:
        out += ["", f"![tokens/s and peak RSS per engine and workload]({png})"]
    out += ["", "### Engines", ""]
    for e in engines:
        s = status.get(e, {})
        desc = pe.ENGINES[e].describe
        if s.get("status") != "ok":
            out.append(f"- **{e}**: unavailable: {s.get('reason', '?')}")
        else:
            out.append(f"- **{e}**: {desc}")
    problems = [r for r in rows if r["status"] not in ("ok",) and status.get(r["engine"], {}).get("status") == "ok"]
    if problems:
        out += ["", "Runs that did not finish:", ""]
        out += [f"- {r['engine']} x {r['workload']}: {r['status']}: {r.get('reason', '')}" for r in problems]
    wdesc = []
    for w in workloads:
        W = wl.resolve(w)
        s = sorted(W.lengths)
        wdesc.append(f"{w}: {len(s)} texts, {W.total_tokens} tokens (min {s[0]}, median {s[len(s) // 2]}, "
                     f"max {s[-1]})")
    out += ["", "Workloads: " + "; ".join(wdesc) + "."]
    m3 = [r for r in rows if r["status"] == "ok" and r["engine"].startswith("m3embed")]
    out += ceiling_section(result, m3)
    if m3:
        out += ["", "m3embed's own numbers (load includes its warm-up; plan = its memory plan total):", "",
                "| engine | workload | backend | load s | RSS after load MiB | plan MiB | peak RSS MiB |",
                "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
        for r in m3:
            rep = r["report"]
            out.append(f"| {r['engine']} | {r['workload']} | {rep.get('backend')} | {rep.get('load_seconds', 0):.1f} | "
                       f"{rc.mib(rep.get('rss_after_load_bytes'))} | {rc.mib(rep.get('plan_total_bytes'))} | "
                       f"{rc.mib(r['peak_rss_bytes'])} |")
    if any(r.get("load_before") for r in rows):
        out += [""] + rc.load_section(rows, result.get("load_at_start"), result.get("load_at_end"),
                                      result.get("max_load_per_core", rc.LOAD_LIMIT_PER_CORE),
                                      timeout_s=result.get("quiet_timeout_s"))
    return "\n".join(out) + "\n"


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("peers: matplotlib is not installed (bench/setup.sh): no plot", file=sys.stderr)
        return False
    rows = [r for r in result["runs"] if r["status"] == "ok"]
    if not rows:
        return False
    engines = [e for e in result["engines"] if any(r["engine"] == e for r in rows)]
    workloads = result["workloads"]
    cell = {(r["engine"], r["workload"]): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(1, len(engines))
    # Speed relative to FlagEmbedding fp32 (the tables have tokens/s): workloads differ by
    # orders of magnitude in tokens/s, ratios share one linear axis.
    key = "ratio_flagembedding" if any(r.get("ratio_flagembedding") for r in rows) else "ratio_best_peer"
    if not any(r.get(key) for r in rows):
        key = "tokens_per_second"
    for k, e in enumerate(engines):
        xs = [i + (k - (len(engines) - 1) / 2) * width for i in range(len(workloads))]
        nan = float("nan")
        tps = [(cell[(e, w)].get(key) or nan) if (e, w) in cell else nan for w in workloads]
        rss = [cell[(e, w)]["peak_rss_bytes"] / 2**30 if (e, w) in cell else nan for w in workloads]
        axes[0].bar(xs, tps, width, label=e)
        axes[1].bar(xs, rss, width, label=e)
    speed_title = {"ratio_flagembedding": "tokens/s relative to flagembedding-fp32 (higher is better)",
                   "ratio_best_peer": "tokens/s relative to the best peer (higher is better)",
                   "tokens_per_second": "tokens/s (higher is better)"}[key]
    for ax, title in zip(axes, [speed_title, "peak RSS, GiB (lower is better)"]):
        ax.set_xticks(range(len(workloads)), workloads)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    if key != "tokens_per_second":
        axes[0].axhline(1.0, color="black", linewidth=0.8)
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"{result['label']}: {result['model'].get('layers')}-layer BGE-M3 (random weights), "
                 f"{result['threads']} threads, {result['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    date = dt.date.today().isoformat()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"{date}-peers-{args.label}"
    logs = pe.CACHE / "logs" / stem.name  # per-run logs and reports (and outputs): not in the repository
    logs.mkdir(parents=True, exist_ok=True)
    env = child_env(args.threads)
    if any(pe.ENGINES[e].kind == "binary" for e in args.engines) and not args.binary.exists():
        print(f"peers: {args.binary} is missing, so the m3embed engines will be reported unavailable. Build it "
              "first:\n    cmake --build build -j2 --target m3bench-workload", file=sys.stderr)

    result = {"label": args.label, "date": date, "command": rc.command_line(), "git": rc.git_revision(),
              "machine": rc.machine(), "model": rc.model_facts(args.model), "versions": rc.versions(args.python),
              "threads": args.threads, "repeat": args.repeat, "warmup": args.warmup, "budget_s": args.budget_s,
              "batch_size": args.batch_size, "max_batch_tokens": args.max_batch_tokens,
              "engines": args.engines, "workloads": args.workloads, "engine_status": {}, "runs": [],
              "max_load_per_core": args.max_load_per_core, "quiet_timeout_s": args.quiet_timeout_s,
              "load_at_start": rc.load_snapshot(), "load_at_end": None}

    def save():
        add_ratios(result["runs"])
        add_shares(result)
        Path(str(stem) + ".json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"peers: {len(args.engines)} engines x {len(args.workloads)} workloads on {args.model} "
          f"({result['model'].get('layers')} layers), threads {args.threads}, repeat {args.repeat}; "
          f"results -> {os.path.relpath(stem, REPO)}.json", flush=True)
    for e in args.engines:
        t0 = time.time()
        st = prepare_engine(pe.ENGINES[e], args, env, logs)
        result["engine_status"][e] = st
        msg = "ok" if st["status"] == "ok" else f"unavailable: {st.get('reason')}"
        print(f"peers: prepare {e}: {msg} ({time.time() - t0:.1f} s)", flush=True)
    save()

    # The machine's own ceiling (bench/peak_flops.cpp), measured quietly like the runs.
    def ceiling():
        c = mflops.measure_ceiling(args.threads)
        return {**c, "status": "ok"} if c else {"status": "unavailable", "reason": f"{mflops.PEAK_BINARY} is not built"}
    result["ceiling"] = rc.run_when_quiet("peers", "ceiling (m3bench-peak)", ceiling,
                                          lambda c: ", ".join(f"{k} {v:,.0f}" for k, v in c.items()
                                                              if k.endswith("_gops") and v), args)
    save()

    with tempfile.TemporaryDirectory(prefix="m3-peers-") as tmp:
        total = sum(1 for e in args.engines if result["engine_status"][e]["status"] == "ok") * len(args.workloads)
        k = 0
        for w in args.workloads:
            ids = wl.token_ids(w)
            files = {"ids": str(Path(tmp) / f"{w}.ids.json"), "inputs": str(Path(tmp) / f"{w}.inputs.json")}
            Path(files["ids"]).write_text(json.dumps(ids))
            need_texts = any(pe.ENGINES[e].inputs == "texts" for e in args.engines)
            Path(files["inputs"]).write_text(json.dumps({"ids": ids, "texts": wl.texts(w) if need_texts else []}))
            for e in args.engines:
                if result["engine_status"][e]["status"] != "ok":
                    continue
                k += 1
                row = rc.run_when_quiet(
                    "peers", f"[{k}/{total}] {e} x {w}", lambda: run_one(pe.ENGINES[e], w, files, args, env, logs),
                    lambda r: f"{r['tokens_per_second']:,.0f} tokens/s, peak RSS {rc.mib(r['peak_rss_bytes'])} MiB, "
                              f"load {r.get('load_seconds') or 0:.1f} s, {r['wall_s']:.0f} s in all", args)
                result["runs"].append(row)
                save()

    result["load_at_end"] = rc.load_snapshot()
    save()
    refused = not args.no_docs and rc.refuse_docs_if_loaded("peers", result["runs"], args.force_docs,
                                                            args.max_load_per_core)
    write_docs = not args.no_docs and not refused
    png = None
    if write_docs:
        png_path = REPO / "docs" / "benchmarks.png"
        if plot(result, png_path):
            png = "benchmarks.png"
    md = markdown(result, png)
    Path(str(stem) + ".md").write_text(md.replace("](benchmarks.png)", "](../../docs/benchmarks.png)"))
    if write_docs:
        rc.update_docs_section("peers", md)
        print(f"peers: docs/benchmarks.md and docs/benchmarks.png updated", flush=True)
    print(f"peers: wrote {os.path.relpath(stem, REPO)}.json and .md", flush=True)
    print(md)
    if refused:
        print("peers: docs/benchmarks.md and .png NOT updated: the machine was loaded (see above; --force-docs "
              "overrides)", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
