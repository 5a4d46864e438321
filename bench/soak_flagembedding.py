#!/usr/bin/env python3
"""Memory soak of the peer: FlagEmbedding's BGEM3FlagModel on CPU, fp32.

Loads `BGEM3FlagModel(model_dir, use_fp16=False, devices="cpu")` on a random BGE-M3-shaped
snapshot (bench/make_full_model.py), then sends the soak length mix (bench/workloads.py,
as texts) one request at a time: each request (1..8 texts) is one `encode(...)` call with
`max_length=8192` and all three heads. A background thread samples this process's RSS
every 0.2 s. Records RSS after model load, after the first (warm-up) request, the peak,
at the end, growth after warm-up, tokens/s and wall time, and writes them as JSON.

    .venv/bin/python bench/soak_flagembedding.py --layers 2 --requests 30 --json bench/results/x.json
    .venv/bin/python bench/soak_flagembedding.py --max-seconds 3600 --json ...   # full model

Stops cleanly when --requests are done, before a request that the speed seen so far
predicts would end past --max-seconds, or after the request in flight on SIGINT/SIGTERM
(on the 24-layer model one request can take many minutes), and reports how far it got.
More requests than the workload has wrap around to its start.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests" / "fixtures"))

import workloads  # noqa: E402
from make_full_model import FULL_LAYERS, default_dir  # noqa: E402

MB = 1024 * 1024


def proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_bytes() -> int:
    return proc_status_kb("VmRSS") * 1024


def rss_parts_mb() -> dict:
    """RSS split into anonymous (heap, tensors) and file-backed (mmapped weights, libraries)."""
    return {k: round(proc_status_kb(f) / 1024, 1)
            for k, f in (("anon", "RssAnon"), ("file", "RssFile"), ("shmem", "RssShmem"))}


def reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so it covers only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """Samples VmRSS every `interval` s; keeps the peak and a (t, rss) timeline."""

    def __init__(self, interval: float, t0: float):
        super().__init__(daemon=True)
        self.interval, self.t0 = interval, t0
        self.peak = 0
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            r = rss_bytes()
            self.peak = max(self.peak, r)
            self.samples.append((time.perf_counter() - self.t0, r))
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join()


def downsample(samples, max_points=1000):
    """Keep at most max_points (t, rss MB) points, each bucket's max (peaks survive)."""
    if len(samples) <= max_points:
        return [[round(t, 2), round(r / MB, 1)] for t, r in samples]
    step = len(samples) / max_points
    out = []
    for i in range(max_points):
        bucket = samples[int(i * step):int((i + 1) * step)] or [samples[-1]]
        t, r = max(bucket, key=lambda s: s[1])
        out.append([round(t, 2), round(r / MB, 1)])
    return out


def command_line(argv) -> str:
    """The command as typed from the repository root (interpreter path made relative)."""
    exe = Path(sys.executable)
    try:
        exe_s = str(exe.relative_to(Path.cwd())) if Path.cwd() == REPO else str(exe)
    except ValueError:
        exe_s = str(exe)
    script = sys.argv[0] if argv is None else "bench/soak_flagembedding.py"
    return shlex.join([exe_s, script, *(sys.argv[1:] if argv is None else argv)])


def cost_units(lens: list[int]) -> float:
    """Relative cost of one padded request: rows x (linear part + attention part). Per token
    and layer the linear layers cost ~24 h^2 FLOPs and attention ~4 L h, so L/(6 h) more."""
    n, L = len(lens), max(lens)
    return n * L * (1.0 + L / 6144.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="FlagEmbedding memory soak (see the module doc).")
    ap.add_argument("--model", type=Path, default=None,
                    help="snapshot dir (default: make_full_model.py's dir for --layers)")
    ap.add_argument("--layers", type=int, default=FULL_LAYERS,
                    help="pick the default snapshot with this many layers (default 24)")
    ap.add_argument("--requests", type=int, default=None,
                    help="requests to send (default: all of the soak workload)")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="soak budget: start no request predicted (from the speed so far) "
                         "to end after it; the first request always runs")
    ap.add_argument("--soak-n", type=int, default=2000, help="texts in the soak workload")
    ap.add_argument("--seed", type=int, default=0, help="soak workload seed (lengths and texts)")
    ap.add_argument("--max-length", type=int, default=8192)
    ap.add_argument("--heads", default="dense,sparse,colbert",
                    help="comma list of dense, sparse, colbert (default all three)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--interval", type=float, default=0.2, help="RSS sampling period, s")
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    ap.add_argument("--quiet", action="store_true", help="no per-request lines")
    args = ap.parse_args(argv)

    heads = {h.strip() for h in args.heads.split(",") if h.strip()}
    if not heads or heads - {"dense", "sparse", "colbert"}:
        ap.error("--heads takes dense, sparse, colbert")
    model_dir = (args.model or default_dir(args.layers)).expanduser().resolve()
    if not (model_dir / "config.json").exists():
        ap.error(f"no model at {model_dir}: run bench/make_full_model.py"
                 + ("" if args.layers == FULL_LAYERS else f" --layers {args.layers}"))

    stop = {"why": None}

    def on_signal(signum, _frame):
        stop["why"] = signal.Signals(signum).name
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    t_start = time.perf_counter()
    rss_start = rss_bytes()
    sampler = RssSampler(args.interval, t_start)
    sampler.start()

    # Workload first (tokenizer work is not the peer's memory, but it is in this process:
    # do it before the load so it lands in the baseline).
    w = workloads.soak(args.soak_n, args.seed)
    all_texts = workloads.texts(w, seed=args.seed)
    reqs = w.requests()
    n_req = args.requests if args.requests is not None else len(reqs)

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from make_fixtures import import_bge_m3

    BGEM3FlagModel = import_bge_m3()
    t0 = time.perf_counter()
    model = BGEM3FlagModel(str(model_dir), use_fp16=False, devices="cpu")
    load_s = time.perf_counter() - t0
    rss_load = rss_bytes()
    parts = {"after_load": rss_parts_mb()}
    hwm_reset = reset_hwm()

    per_req = []
    tokens = padded = 0
    t_soak = time.perf_counter()
    encode_s = 0.0
    units = s_per_unit = 0.0
    rss_warm = None
    stopped_by = "requests"
    for i in range(n_req):
        if stop["why"]:
            stopped_by = stop["why"]
            break
        r = reqs[i % len(reqs)]
        batch = [all_texts[j] for j in r]
        lens = [w.lengths[j] for j in r]
        if args.max_seconds is not None:
            elapsed = time.perf_counter() - t_soak
            predicted = cost_units(lens) * s_per_unit if per_req else 0.0
            if elapsed + predicted > args.max_seconds:
                stopped_by = "max_seconds"
                break
        hwm_ok = reset_hwm()
        t1 = time.perf_counter()
        out = model.encode(batch, batch_size=256, max_length=args.max_length,
                           return_dense="dense" in heads, return_sparse="sparse" in heads,
                           return_colbert_vecs="colbert" in heads)
        dt = time.perf_counter() - t1
        del out
        encode_s += dt
        units += cost_units(lens)
        s_per_unit = encode_s / units
        rss = rss_bytes()
        req_peak = proc_status_kb("VmHWM") * 1024 if hwm_ok else None
        if i == 0:
            rss_warm = rss
            parts["after_warmup"] = rss_parts_mb()
        tokens += sum(lens)
        padded += len(lens) * max(lens)
        per_req.append({"i": i, "texts": len(lens), "tokens": sum(lens), "max_len": max(lens),
                        "seconds": round(dt, 3), "rss_mb": round(rss / MB, 1),
                        "peak_mb": None if req_peak is None else round(req_peak / MB, 1)})
        if not args.quiet:
            print(f"req {i + 1}/{n_req}: {len(lens)} texts, {sum(lens)} tokens (max {max(lens)}), "
                  f"{dt:.2f} s, RSS after {rss / MB:.0f} MB, peak in request "
                  f"{(req_peak or 0) / MB:.0f} MB, overall {max(sampler.peak, rss) / MB:.0f} MB",
                  flush=True)
    soak_s = time.perf_counter() - t_soak
    rss_end = rss_bytes()
    parts["end"] = rss_parts_mb()
    sampler.stop()
    peaks = [p["peak_mb"] for p in per_req if p["peak_mb"] is not None]
    hwm = max([rss_load / MB, *peaks]) * MB if hwm_reset and peaks else None
    done = len(per_req)

    def mb(x):
        return None if x is None else round(x / MB, 1)

    growth = None if rss_warm is None else rss_end - rss_warm
    after_warm = [p["rss_mb"] for p in per_req[1:]]
    import transformers
    result = {
        "what": "FlagEmbedding BGEM3FlagModel memory soak, CPU fp32",
        "command": command_line(argv),
        "model": str(model_dir),
        "model_manifest": _read_json(model_dir / "m3embed-bench.json"),
        "workload": {"name": w.name, "texts": len(w.lengths), "requests": len(reqs),
                     "max_length": args.max_length, "heads": sorted(heads)},
        "requests_asked": n_req,
        "requests_done": done,
        "stopped_by": stopped_by,
        "max_seconds": args.max_seconds,
        "tokens": tokens,
        "padded_tokens": padded,
        "wall_s": round(time.perf_counter() - t_start, 2),
        "load_s": round(load_s, 2),
        "soak_s": round(soak_s, 2),
        "encode_s": round(encode_s, 2),
        "tokens_per_s": round(tokens / encode_s, 1) if encode_s else None,
        "padded_tokens_per_s": round(padded / encode_s, 1) if encode_s else None,
        "rss_start_mb": mb(rss_start),
        "rss_after_load_mb": mb(rss_load),
        "rss_after_warmup_mb": mb(rss_warm),
        "rss_peak_mb": mb(sampler.peak),
        "rss_hwm_since_load_mb": mb(hwm),
        "rss_end_mb": mb(rss_end),
        "growth_after_warmup_mb": mb(growth),
        "growth_after_warmup_pct": None if growth is None else round(100 * growth / rss_warm, 1),
        "rss_after_request_max_after_warmup_mb": max(after_warm) if after_warm else None,
        "rss_parts_mb": parts,
        "sample_interval_s": args.interval,
        "env": {"python": platform.python_version(), "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(), "transformers": transformers.__version__,
                "FlagEmbedding": importlib.metadata.version("FlagEmbedding"),
                "cpus": os.cpu_count(), "machine": platform.machine()},
        "per_request": per_req,
        "rss_timeline_mb": downsample(sampler.samples),
    }
    line = (f"flagembedding soak: {done}/{n_req} requests ({stopped_by}), {tokens} tokens in "
            f"{encode_s:.1f} s = {result['tokens_per_s']} tok/s; RSS load {mb(rss_load)} MB, "
            f"warm {mb(rss_warm)} MB, peak {mb(max(sampler.peak, hwm or 0))} MB, end {mb(rss_end)} MB, "
            f"growth after warm-up {mb(growth)} MB ({result['growth_after_warmup_pct']}%)")
    print(line, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        args.json.with_suffix(".md").write_text(markdown(result, args.json.name))
    return 0


def markdown(r: dict, json_name: str) -> str:
    """A short human summary of one run, written beside its JSON."""
    man = r.get("model_manifest") or {}
    env = r["env"]
    rows = [
        ("requests done / asked", f"{r['requests_done']} / {r['requests_asked']} (stopped by {r['stopped_by']})"),
        ("tokens (padded)", f"{r['tokens']} ({r['padded_tokens']})"),
        ("tokens/s (padded/s)", f"{r['tokens_per_s']} ({r['padded_tokens_per_s']})"),
        ("wall / load / encode s", f"{r['wall_s']} / {r['load_s']} / {r['encode_s']}"),
        ("RSS after load MB", r["rss_after_load_mb"]),
        ("RSS after warm-up MB", r["rss_after_warmup_mb"]),
        ("RSS peak MB (sampled / kernel HWM since load)", f"{r['rss_peak_mb']} / {r['rss_hwm_since_load_mb']}"),
        ("RSS end MB", r["rss_end_mb"]),
        ("growth after warm-up", f"{r['growth_after_warmup_mb']} MB ({r['growth_after_warmup_pct']}%)"),
        ("max RSS after a request, after warm-up MB", r["rss_after_request_max_after_warmup_mb"]),
        *[(f"RSS anon / file MB {k.replace('_', ' ')}", f"{v['anon']} / {v['file']}")
          for k, v in r["rss_parts_mb"].items()],
    ]
    lines = [
        f"# FlagEmbedding memory soak: {r['workload']['name']}, {man.get('layers', '?')}-layer random model",
        "",
        "```",
        r["command"],
        "```",
        "",
        f"Model `{r['model']}` (seed {man.get('seed')}); heads {', '.join(r['workload']['heads'])}; "
        f"max_length {r['workload']['max_length']}; one `encode` call per request.",
        f"torch {env['torch']} ({env['torch_threads']} threads), transformers {env['transformers']}, "
        f"FlagEmbedding {env['FlagEmbedding']}, {env['cpus']} CPUs. Data: `{json_name}`.",
        "",
        "| metric | value |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
    ]
    return "\n".join(lines)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())
