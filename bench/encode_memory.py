#!/usr/bin/env python3
"""Resident memory over time while `encode` writes a large corpus: m3embed and FlagEmbedding.

Both engines encode the same texts (dense + lexical weights + ColBERT vectors) into JSON lines
of at least --min-output-bytes (default 1 GiB; each ColBERT vector is 1024 floats, ~12 bytes
each as JSON text, so ~90k tokens give 1 GiB), each in its own process, while this script
samples the process's VmRSS from /proc/PID/status every --interval s (and the output file's
size), and reads the kernel's high-water mark for the process, ru_maxrss, from os.wait4. The
peak reported is the larger of the two: m3embed resets its high-water mark (/proc/self/clear_refs)
when its warm-up starts, so for it ru_maxrss is the peak from warm-up on and misses the model load.

  m3embed        build/m3embed encode --model MODEL --input texts.txt --output OUT.jsonl
                 --dense --sparse --colbert --threads N -q [--m3-args]; its "memory plan:" log
                 line(s) and, when it prints one, its "peak resident ... (plan ..., baseline ...)"
                 line are kept (stderr goes to a log file).
  flagembedding  `encode_memory.py flag-encode` (this file) in --python (the test venv, which has
                 FlagEmbedding 1.4.2 and torch): BGEM3FlagModel(MODEL, use_fp16=False,
                 devices="cpu").encode(texts, batch_size=--flag-batch-size, max_length=8192,
                 return_dense/sparse/colbert_vecs=True), one call over all texts (FlagEmbedding's
                 documented usage for a corpus), then the same JSON lines format as m3embed,
                 written one line at a time (floats as "%.9g", float32's round-trip precision,
                 about the bytes of m3embed's shortest form).

The corpus (bench/workloads.py, exact token lengths with the fixture tokenizer the random
models ship): --corpus mix (default: the `mix` workload's distribution, log-uniform lengths
capped at ~324 tokens like chunked documents, as many texts as the size needs) or soak (the
first texts of the soak distribution, log-uniform in 2..8192 uncapped: long documents, which
FlagEmbedding pads per batch of --flag-batch-size to the longest). Lengths are at least 3 (no
empty lines). Texts are written one per line to the run's log directory.

Before each run it waits for a quiet machine and records the load averages before and after
(bench/README.md, "Machine load"; the same rule as peers.py): only the load before a run is
judged; when a run started on a loaded machine the results say so and docs are not written
(exit status 1) unless --force-docs.

Writes bench/results/DATE-encode-memory-LABEL.json and .md, docs/encode-memory.png (with
matplotlib: this interpreter's, else bench/.venv-bench's; otherwise no plot) and the
encode-memory section of docs/benchmarks.md (unless --no-docs). The large outputs are deleted
once measured (--keep-outputs keeps them, under --work-dir).

    .venv/bin/python bench/encode_memory.py                       # the full run (1 GiB, 2-layer model)
    .venv/bin/python bench/encode_memory.py --min-output-bytes 20MB --label smoke --no-docs
    .venv/bin/python bench/encode_memory.py --m3-args='--output-memory 64MiB' --label L2-om64
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peer_engines as pe  # noqa: E402  (stdlib only at import time)
import report_common as rc  # noqa: E402
import workloads as wl  # noqa: E402

REPO = HERE.parent
RESULTS = HERE / "results"
DEFAULT_MODEL = pe.CACHE / "bge-m3-random-L2"
DEFAULT_BINARY = REPO / "build" / "m3embed"
DEFAULT_PYTHON = REPO / ".venv" / "bin" / "python"
BENCH_PYTHON = HERE / ".venv-bench" / "bin" / "python"
DOCS_PNG = REPO / "docs" / "encode-memory.png"
HIDDEN = 1024
# A slightly low estimate of the JSON bytes per ColBERT float ("-0.031234567," is 13; fmt's
# shortest form often needs fewer digits: m3embed measures ~12.5 on the random models, the
# FlagEmbedding writer's "%.9g" ~13.8): sizing the corpus with it gives at least the target.
# The real figure is measured and recorded (bytes_per_colbert_float).
BYTES_PER_FLOAT_ESTIMATE = 12.0
MIN_TEXT_LEN = 3  # no empty lines in the texts file
ENGINES = ("m3embed", "flagembedding")
TIMELINE_POINTS = 1000
MAX_EVENTS = 200  # log lines kept with the time they appeared
# m3embed log lines that mark a phase (for the plot): the text they start with / contain.
M3_PHASES = (("loaded", r"\] loaded "), ("warmed up", r"warm-up of replica"), ("encoded", r"\] encoded \d+ texts"))
PHASE = "encode_memory: phase"
REPORT = "encode_memory: report"


def parse_size(text: str) -> int:
    """'1GiB', '1.5GB', '20MB', '512MiB', '2e9', '1073741824' (K/M/G/T and KiB.. binary, KB.. decimal)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", text)
    units = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30,
             "t": 2**40, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
    if not m or m.group(2).lower() not in units:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 1GiB, 20MB, 1073741824)")
    return int(float(m.group(1)) * units[m.group(2).lower()])


# ---------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------


def colbert_rows(lengths) -> int:
    """ColBERT vectors per text: every token but <s> (FlagEmbedding's colbert_vecs[:, 1:])."""
    return sum(n - 1 for n in lengths)


def corpus_lengths(kind: str, rows_needed: int) -> list[int]:
    """Deterministic token lengths whose ColBERT rows reach rows_needed (see the module doc)."""
    rows_needed = max(1, rows_needed)
    if kind == "soak":
        n = 2000
        while True:
            out, rows = [], 0
            for x in wl.soak(n, 0).lengths:  # the same rng stream for any n: a prefix of the soak
                x = max(MIN_TEXT_LEN, x)
                out.append(x)
                rows += x - 1
                if rows >= rows_needed:
                    return out
            n *= 2
    # mix: the mix workload's recipe (bench/workloads.py) with as many texts as the size needs:
    # n soak-distributed lengths capped so the total stays within a budget.
    n = max(1, math.ceil(wl.MIX_TEXTS * rows_needed / wl.MIX_TOKENS))
    budget = rows_needed + n
    prev = None
    while True:
        out = [max(MIN_TEXT_LEN, x) for x in wl._mix_lengths(n, budget)]
        if colbert_rows(out) >= rows_needed:
            return out
        if out == prev:  # the cap reached every raw length: more texts
            n += max(1, n // 8)
        budget += max(1, budget // 100)
        prev = out


def make_corpus(kind: str, rows_needed: int, path: Path) -> dict:
    lengths = corpus_lengths(kind, rows_needed)
    w = wl.Workload(f"encode-memory-{kind}-{len(lengths)}-{sum(lengths)}", tuple(lengths), (len(lengths),))
    texts = wl.texts(w)
    bad = [i for i, t in enumerate(texts) if "\n" in t or "\r" in t]
    if bad:
        raise SystemExit(f"encode_memory: texts {bad[:5]} contain a line break")
    got = wl.text_lengths(texts)
    if got != lengths:
        wrong = [(i, a, b) for i, (a, b) in enumerate(zip(lengths, got)) if a != b]
        raise SystemExit(f"encode_memory: {len(wrong)} texts tokenize to the wrong length, e.g. {wrong[:3]}")
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    s = sorted(lengths)
    return {"kind": kind, "name": w.name, "texts": len(lengths), "tokens": sum(lengths),
            "colbert_rows": colbert_rows(lengths), "min": s[0], "median": s[len(s) // 2], "max": s[-1],
            "texts_file": str(path), "texts_file_bytes": path.stat().st_size}


# ---------------------------------------------------------------------------------------
# One measured process
# ---------------------------------------------------------------------------------------


def _proc_status(path: str) -> tuple[int, int] | None:
    """(VmRSS, RssAnon) in bytes, or None once the process is gone (or a zombie)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    rss = re.search(r"^VmRSS:\s+(\d+)", text, re.M)
    anon = re.search(r"^RssAnon:\s+(\d+)", text, re.M)
    if not rss:
        return None
    return int(rss.group(1)) * 1024, (int(anon.group(1)) * 1024 if anon else None)


def run_sampled(cmd: list[str], env: dict, log: Path, output: Path, interval: float, timeout_s: float) -> dict:
    """Run cmd (its own process group), sampling its RSS and the output's size every `interval` s,
    and noting when each of its log lines appeared (`events`: [t, line], the first MAX_EVENTS)."""
    samples = []  # (t, rss, anon, output bytes)
    events, partial = [], ""
    t0 = time.monotonic()
    epoch0 = time.time()
    with open(log, "w") as lf:
        p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    reader = open(log, errors="replace")
    status_path = f"/proc/{p.pid}/status"
    timed_out = False
    next_t = t0
    try:
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                break
            now = time.monotonic()
            chunk = reader.read()
            if chunk and len(events) < MAX_EVENTS:
                *lines, partial = (partial + chunk).split("\n")
                events += [[round(now - t0, 2), ln.strip()[:300]] for ln in lines
                           if ln.strip()][:MAX_EVENTS - len(events)]
            st = _proc_status(status_path)
            if st:
                try:
                    out_b = output.stat().st_size
                except OSError:
                    out_b = 0
                samples.append((round(now - t0, 3), st[0], st[1], out_b))
            if now - t0 > timeout_s:
                timed_out = True
                os.killpg(p.pid, signal.SIGKILL)
                pid, status, ru = os.wait4(p.pid, 0)
                break
            next_t += interval
            time.sleep(max(0.0, next_t - time.monotonic()))
    except BaseException:  # Ctrl-C here: the child is in its own session, so stop it too
        os.killpg(p.pid, signal.SIGKILL)
        os.wait4(p.pid, 0)
        raise
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = round(time.monotonic() - t0, 2)
    rest = partial + reader.read()
    reader.close()
    events += [[wall, ln.strip()[:300]] for ln in rest.split("\n") if ln.strip()][:max(0, MAX_EVENTS - len(events))]
    return {"wall_s": wall, "exit": p.returncode, "timed_out": timed_out,
            "peak_rss_bytes": ru.ru_maxrss * 1024, "epoch0": epoch0, "samples": samples, "events": events}


def downsample(samples: list, points: int = TIMELINE_POINTS) -> list:
    """At most `points` samples: per bucket the first time, the largest RSS and anon, the last size."""
    if len(samples) <= points:
        return [list(s) for s in samples]
    k = math.ceil(len(samples) / points)
    out = []
    for i in range(0, len(samples), k):
        b = samples[i:i + k]
        out.append([b[0][0], max(s[1] for s in b), max((s[2] or 0) for s in b), b[-1][3]])
    return out


def timeline_stats(samples: list, wall_s: float) -> dict:
    if not samples:
        return {}
    rss = [s[1] for s in samples]
    half = [s[1] for s in samples if s[0] >= wall_s / 2] or rss[-1:]
    first = [s[1] for s in samples if s[0] < wall_s / 2] or rss[:1]
    return {"samples": len(samples), "sampled_peak_rss_bytes": max(rss), "rss_last_sample_bytes": rss[-1],
            "max_rss_first_half_bytes": max(first), "max_rss_second_half_bytes": max(half),
            "sampled_peak_at_s": samples[rss.index(max(rss))][0]}


SIZE = r"([0-9]+(?:\.[0-9]+)?)\s*(TiB|GiB|MiB|KiB|TB|GB|MB|KB|bytes|B)\b"
UNIT = {"B": 1, "bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
        "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def _size(m) -> int | None:
    return int(float(m.group(1)) * UNIT[m.group(2)]) if m else None


def parse_m3_log(text: str) -> dict:
    """m3embed's memory lines: 'memory plan: ... = TOTAL (...)' and, when present, a line like
    'peak resident X (plan Y, baseline Z)' (matched loosely; absent in older builds)."""
    lines = text.splitlines()
    plan_lines = [ln for ln in lines if "memory plan:" in ln]
    peak_lines = [ln for ln in lines if re.search(r"peak\s+resident", ln, re.I)]
    memory_lines = [ln for ln in lines if re.search(r"memory plan:|resident|baseline|rss", ln, re.I)]
    out = {"plan_lines": plan_lines, "peak_resident_lines": peak_lines, "memory_lines": memory_lines[:40]}
    for ln in plan_lines:
        m = re.search(r"=\s*" + SIZE, ln)
        if m:
            out["plan_total_bytes"] = _size(m)
    if peak_lines:
        ln = peak_lines[-1]
        out["peak_resident_bytes"] = _size(re.search(r"peak\s+resident\D{0,24}?" + SIZE, ln, re.I))
        plan = _size(re.search(r"plan\D{0,24}?" + SIZE, ln, re.I))
        if plan is not None:
            out["plan_total_bytes"] = plan
        out["baseline_bytes"] = _size(re.search(r"baseline\D{0,24}?" + SIZE, ln, re.I))
    if out.get("plan_total_bytes") is not None and out.get("baseline_bytes") is not None:
        out["plan_plus_baseline_bytes"] = out["plan_total_bytes"] + out["baseline_bytes"]
    return out


def parse_child_log(text: str, epoch0: float) -> dict:
    phases, report = [], None
    for ln in text.splitlines():
        if ln.startswith(PHASE):
            _, _, rest = ln.partition(PHASE)
            name, t = rest.split()
            phases.append([name, round(float(t) - epoch0, 3)])
        elif ln.startswith(REPORT):
            try:
                report = json.loads(ln[len(REPORT):])
            except ValueError:
                pass
    return {"phases": phases, "child_report": report}


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            n += chunk.count(b"\n")
    return n


def first_record(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.readline())
    except (OSError, ValueError):
        return None


def pretty(cmd: list[str]) -> str:
    """A command for the markdown: paths in the repository relative to it, the home as ~."""
    home = str(Path.home())
    out = []
    for a in cmd:
        if a.startswith(str(REPO) + os.sep):
            a = os.path.relpath(a, REPO)
        elif a.startswith(home + os.sep):
            a = "~" + a[len(home):]
        out.append(a if a.startswith("~") else shlex.quote(a))
    return " ".join(out)


def log_tail(log: Path, n: int = 5) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-600:]


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env["TQDM_DISABLE"] = "1"
    env["M3_LOG_LEVEL"] = "info"  # the memory plan line is info; --m3-args='--log-level ...' overrides
    return env


FIRST: dict[str, dict] = {}  # engine -> its first output record


def measure(engine: str, args, corpus: dict, texts: Path, logs: Path) -> dict:
    output = args.work_dir / f"{args.label}-{engine}.jsonl"
    output.unlink(missing_ok=True)
    log = logs / f"{engine}.log"
    if engine == "m3embed":
        cmd = [str(args.binary), "encode", "--model", str(args.model), "--input", str(texts), "--output",
               str(output), "--dense", "--sparse", "--colbert", "--threads", str(args.threads), "-q", *args.m3_args]
    else:
        cmd = [str(args.python), str(Path(__file__).resolve()), "flag-encode", "--model", str(args.model),
               "--input", str(texts), "--output", str(output), "--batch-size", str(args.flag_batch_size),
               "--threads", str(args.threads)]
    before = rc.wait_for_quiet(args.max_load_per_core, args.quiet_timeout_s, what=f"encode_memory: {engine}")
    print(f"encode_memory: {engine} ...", end=" ", flush=True)
    r = run_sampled(cmd, child_env(args.threads), log, output, args.interval, args.timeout_s)
    after = rc.load_snapshot()
    text = log.read_text(errors="replace")
    row = {"engine": engine, "command": cmd, "command_line": " ".join(shlex.quote(c) for c in cmd),
           "log": str(log), "wall_s": r["wall_s"], "exit": r["exit"], "timed_out": r["timed_out"],
           "ru_maxrss_bytes": r["peak_rss_bytes"], **timeline_stats(r["samples"], r["wall_s"]),
           "load_before": before, "load_after": after}
    # ru_maxrss is the kernel's high-water mark, but a process may reset it (m3embed writes
    # /proc/self/clear_refs when its warm-up starts, so whatever came before, the model load, is
    # not in it): the peak is the larger of it and the sampled peak.
    row["peak_rss_bytes"] = max(r["peak_rss_bytes"], row.get("sampled_peak_rss_bytes") or 0)
    row["log_events"] = r["events"]
    if engine == "m3embed":
        row["m3embed_log"] = parse_m3_log(text)
        row["phases"] = [[name, next(t for t, ln in r["events"] if re.search(rx, ln))] for name, rx in M3_PHASES
                         if any(re.search(rx, ln) for _, ln in r["events"])]
    else:
        row |= parse_child_log(text, r["epoch0"])
    try:
        row["output_bytes"] = output.stat().st_size
    except OSError:
        row["output_bytes"] = None
    ok = not r["timed_out"] and r["exit"] == 0 and row["output_bytes"]
    if ok:
        row["output_lines"] = count_lines(output)
        first = first_record(output)
        if first is not None:
            row["first_record"] = {"keys": list(first), "dense_dim": len(first.get("dense_vecs", [])),
                                   "lexical_keys": len(first.get("lexical_weights", {})),
                                   "colbert_rows": len(first.get("colbert_vecs", [])),
                                   "colbert_dim": len((first.get("colbert_vecs") or [[]])[0])}
            FIRST[engine] = first  # compared across engines (compare_first), never saved
        floats = corpus["colbert_rows"] * HIDDEN
        row["bytes_per_colbert_float"] = round(row["output_bytes"] / floats, 3)
        if row["output_lines"] != corpus["texts"]:
            ok = False
            row["reason"] = f"{row['output_lines']} output lines for {corpus['texts']} texts"
    row["status"] = "ok" if ok else ("timeout" if r["timed_out"] else "failed")
    if not ok and "reason" not in row:
        row["reason"] = (f"killed after {r['wall_s']:.0f} s" if r["timed_out"] else
                         f"exit {r['exit']}: {log_tail(log)}")
    row["timeline"] = downsample(r["samples"])
    row["timeline_columns"] = ["t_s", "rss_bytes", "rss_anon_bytes", "output_bytes"]
    # The full-rate timeline stays beside the log (not in the repository).
    (logs / f"{engine}.timeline.json").write_text(json.dumps(r["samples"]))
    if output.exists() and not args.keep_outputs:
        output.unlink()
    elif output.exists():
        row["output_path"] = str(output)
    if row["status"] == "ok":
        print(f"{r['wall_s']:.1f} s, peak RSS {rc.mib(row['peak_rss_bytes'])} MiB, output "
              f"{row['output_bytes'] / 1e9:.3f} GB (1-min load {before['load1']:.2f} before, {after['load1']:.2f} "
              "after)", flush=True)
    else:
        print(f"{row['status']}: {row['reason']}", flush=True)
    return row


def compare_first() -> dict | None:
    """The first text's outputs of the two engines: a cheap check that both wrote the same thing."""
    if len(FIRST) < 2:
        return None
    a, b = FIRST["m3embed"], FIRST["flagembedding"]

    def cos(x, y):
        num = sum(p * q for p, q in zip(x, y))
        den = math.sqrt(sum(p * p for p in x) * sum(q * q for q in y)) or 1e-30
        return num / den

    out = {"dense_cos": cos(a.get("dense_vecs", []), b.get("dense_vecs", [])),
           "lexical_same_keys": set(a.get("lexical_weights", {})) == set(b.get("lexical_weights", {})),
           "colbert_rows": [len(a.get("colbert_vecs", [])), len(b.get("colbert_vecs", []))]}
    if out["colbert_rows"][0] == out["colbert_rows"][1] and out["colbert_rows"][0]:
        out["colbert_cos_min"] = min(cos(x, y) for x, y in zip(a["colbert_vecs"], b["colbert_vecs"]))
    return out


# ---------------------------------------------------------------------------------------
# The FlagEmbedding child (`encode_memory.py flag-encode`, run in --python)
# ---------------------------------------------------------------------------------------


def _phase(name: str) -> None:
    print(f"{PHASE} {name} {time.time():.3f}", file=sys.stderr, flush=True)


def _self_kb(field: str) -> int | None:
    m = re.search(rf"^{field}:\s+(\d+)", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) * 1024 if m else None


def cmd_flag_encode(argv) -> int:
    ap = argparse.ArgumentParser(prog="encode_memory.py flag-encode",
                                 description="FlagEmbedding's BGEM3FlagModel.encode over a texts file, one call, "
                                             "written as m3embed's JSON lines (run by encode_memory.py)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True, help="one text per line")
    ap.add_argument("--output", required=True)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    _phase("start")
    import torch

    torch.set_num_threads(args.threads)
    BGEM3FlagModel = pe.import_bge_m3()  # tests/fixtures/make_fixtures.py's reranker stubs
    model = BGEM3FlagModel(args.model, use_fp16=False, devices="cpu")
    rss_loaded = _self_kb("VmRSS")
    _phase("loaded")
    with open(args.input, encoding="utf-8") as f:
        texts = f.read().split("\n")
    if texts and texts[-1] == "":
        texts.pop()
    _phase("read")
    t0 = time.perf_counter()
    out = model.encode(texts, batch_size=args.batch_size, max_length=args.max_length, return_dense=True,
                       return_sparse=True, return_colbert_vecs=True)
    encode_s = time.perf_counter() - t0
    rss_encoded = _self_kb("VmRSS")
    _phase("encoded")
    t0 = time.perf_counter()
    vec = None
    rows = 0
    with open(args.output, "w", encoding="utf-8") as f:
        for dense, lexical, colbert in zip(out["dense_vecs"], out["lexical_weights"], out["colbert_vecs"]):
            if vec is None:
                vec = "[" + ",".join(["%.9g"] * len(dense)) + "]"
            lw = ",".join(f'"{k}":{float(v):.9g}' for k, v in lexical.items())
            cv = ",".join(vec % tuple(r) for r in colbert.tolist())
            rows += len(colbert)
            dv = vec % tuple(dense.tolist())
            f.write(f'{{"dense_vecs":{dv},"lexical_weights":{{{lw}}},"colbert_vecs":[{cv}]}}\n')
    write_s = time.perf_counter() - t0
    _phase("written")
    import FlagEmbedding
    import transformers

    report = {"texts": len(texts), "colbert_rows": rows, "encode_s": round(encode_s, 3), "write_s": round(write_s, 3),
              "rss_after_load_bytes": rss_loaded, "rss_after_encode_bytes": rss_encoded,
              "rss_after_write_bytes": _self_kb("VmRSS"), "vmhwm_bytes": _self_kb("VmHWM"),
              "torch": torch.__version__, "transformers": transformers.__version__,
              "flagembedding": getattr(FlagEmbedding, "__version__", None), "torch_threads": torch.get_num_threads()}
    print(REPORT + " " + json.dumps(report), file=sys.stderr, flush=True)
    return 0


# ---------------------------------------------------------------------------------------
# Report and plot
# ---------------------------------------------------------------------------------------


def gb(b) -> str:
    return "-" if b is None else f"{b / 1e9:.3f}"


def markdown(result: dict, png: str | None) -> str:
    c = result["corpus"]
    limit = result["max_load_per_core"]
    runs = result["runs"]
    warn = rc.load_warning(runs, limit, name=lambda r: r["engine"])
    m3 = next((r for r in runs if r["engine"] == "m3embed"), None)
    out = [f"## Resident memory while `encode` writes a large corpus: {result['label']}", "",
           f"Command (from the repository root, {result['date']}, git {result['git']}):", "",
           f"    {result['command']}", "", *([warn, ""] if warn else []),
           f"- Machine: {rc.machine_line(result['machine'])}",
           f"- Model: `{result['model']['path']}` ({result['model'].get('layers')} layers, full width, random "
           f"weights, seed {result['model'].get('seed')})",
           f"- Corpus ({c['kind']}, bench/workloads.py texts of exact lengths): {c['texts']:,} texts, "
           f"{c['tokens']:,} tokens (min {c['min']}, median {c['median']}, max {c['max']}), {c['colbert_rows']:,} "
           f"ColBERT vectors; dense + lexical weights + ColBERT to JSON lines; {result['threads']} threads each",
           "- Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()), "",
           "Each engine is its own process; RSS (VmRSS) is sampled every "
           f"{result['interval_s']} s from /proc; `ru_maxrss` is the kernel's high-water mark for the process "
           "(os.wait4), which m3embed resets when its warm-up starts (so it misses the model load); peak RSS is "
           "the larger of the two. FlagEmbedding encodes all texts in one `encode` call, as its docs show for a "
           "corpus, and holds every output until it returns; then the lines are written.", "",
           "| engine | wall s | peak RSS MiB | ru_maxrss MiB | sampled peak MiB (at s) | max RSS, 2nd half of "
           "the run, MiB | output GB | bytes / ColBERT float |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in runs:
        if r["status"] != "ok":
            out.append(f"| {r['engine']} | {r['status']}: {r.get('reason', '')} | | | | | | |")
            continue
        at = r.get("sampled_peak_at_s")
        out.append(f"| {r['engine']} | {r['wall_s']:.1f} | {rc.mib(r['peak_rss_bytes'])} | "
                   f"{rc.mib(r.get('ru_maxrss_bytes'))} | {rc.mib(r.get('sampled_peak_rss_bytes'))}"
                   + (f" ({at:.1f})" if at is not None else "") + f" | {rc.mib(r.get('max_rss_second_half_bytes'))} | "
                   f"{gb(r.get('output_bytes'))} | {r.get('bytes_per_colbert_float', '-')} |")
    if m3 and m3.get("m3embed_log"):
        ml = m3["m3embed_log"]
        out += [""]
        plan, base = ml.get("plan_total_bytes"), ml.get("baseline_bytes")
        if plan is not None:
            out.append(f"m3embed's plan: {rc.mib(plan)} MiB" + (f"; baseline {rc.mib(base)} MiB; plan + baseline "
                                                                 f"{rc.mib(plan + base)} MiB" if base is not None else
                                                                 " (no baseline line in its log)")
                       + (f"; peak RSS {m3['peak_rss_bytes'] / (plan + base):.3f}x plan + baseline"
                          if base is not None and m3["status"] == "ok" else "") + ". Its log:")
        out += [""] + [f"    {ln.strip()}" for ln in ml.get("plan_lines", []) + ml.get("peak_resident_lines", [])]
    fl = next((r for r in runs if r["engine"] == "flagembedding" and r.get("child_report")), None)
    if fl:
        cr = fl["child_report"]
        out += ["", f"FlagEmbedding: `encode` {cr['encode_s']:.1f} s, writing {cr['write_s']:.1f} s; RSS after load "
                    f"{rc.mib(cr.get('rss_after_load_bytes'))} MiB, after `encode` "
                    f"{rc.mib(cr.get('rss_after_encode_bytes'))} MiB (batch size {result['flag_batch_size']}, "
                    "texts sorted by length and padded per batch, first batch run twice by its batch-size probe)."]
    if result.get("first_text_check"):
        f = result["first_text_check"]
        out += ["", f"First text, m3embed vs FlagEmbedding: dense cosine {f['dense_cos']:.6f}, ColBERT rows "
                    f"{f['colbert_rows'][0]} / {f['colbert_rows'][1]}"
                + (f", ColBERT cosine min {f['colbert_cos_min']:.6f}" if "colbert_cos_min" in f else "") + "."]
    if png:
        out += ["", f"![RSS over time while encode writes the corpus]({png})"]
    out += ["", "Commands:", ""] + [f"    {pretty(r['command'])}" for r in runs]
    out += [""] + rc.load_section(runs, result.get("load_at_start"), result.get("load_at_end"), limit,
                                  name=lambda r: r["engine"], timeout_s=result.get("quiet_timeout_s"))
    return "\n".join(out) + "\n"


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(11, 5.8))
    colors = {"m3embed": "tab:blue", "flagembedding": "tab:orange"}
    for r in result["runs"]:
        tl = r.get("timeline") or []
        if not tl:
            continue
        ax.plot([p[0] for p in tl], [p[1] / 2**20 for p in tl], color=colors.get(r["engine"]), linewidth=1.3,
                label=f"{r['engine']} (peak {rc.mib(r['peak_rss_bytes'])} MiB, {r['wall_s']:.0f} s)")
        for name, t in r.get("phases", []):
            if name in ("loaded", "warmed up", "encoded"):
                ax.axvline(t, color=colors.get(r["engine"]), linestyle=":", linewidth=0.8)
                ax.annotate(f"{r['engine']}: {name}", (t, 0), xytext=(3, 3), textcoords="offset points",
                            fontsize=7, rotation=90, color=colors.get(r["engine"]), va="bottom")
    m3 = next((r for r in result["runs"] if r["engine"] == "m3embed"), {})
    ml = m3.get("m3embed_log") or {}
    plan, base = ml.get("plan_total_bytes"), ml.get("baseline_bytes")
    if plan is not None:
        ax.axhline(plan / 2**20, color="tab:green", linestyle="--", linewidth=1,
                   label=f"m3embed plan ({rc.mib(plan)} MiB)")
    if plan is not None and base is not None:
        ax.axhline((plan + base) / 2**20, color="tab:red", linestyle="--", linewidth=1,
                   label=f"m3embed plan + baseline ({rc.mib(plan + base)} MiB)")
    c = result["corpus"]
    sizes = {r["engine"]: r.get("output_bytes") or 0 for r in result["runs"]}
    out_b = sizes.get("m3embed") or max(sizes.values(), default=0)
    ax.set_title(f"{Path(result['model']['path']).name} ({result['model'].get('layers')} layers, random weights): "
                 f"encode {c['texts']:,} texts, {c['tokens']:,} tokens, {out_b / 1e9:.2f} GB of JSON lines "
                 f"(dense + sparse + ColBERT), {result['threads']} threads", fontsize=9)
    ax.set_xlabel("seconds since the process started")
    ax.set_ylabel("resident memory (VmRSS), MiB")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


def make_plot(result: dict, json_path: Path, path: Path) -> bool:
    """Plot here if matplotlib imports, else in bench/.venv-bench's Python; False (said) if neither."""
    if plot(result, path):
        return True
    # (venvs share the base interpreter: compare the environments, not the executables)
    if BENCH_PYTHON.exists() and Path(sys.prefix).resolve() != BENCH_PYTHON.parent.parent.resolve():
        r = subprocess.run([str(BENCH_PYTHON), str(Path(__file__).resolve()), "plot", str(json_path), str(path)],
                           capture_output=True, text=True)
        if r.returncode == 0:
            return True
        print(f"encode_memory: plotting in {BENCH_PYTHON} failed: {r.stderr.strip()[-400:]}", file=sys.stderr)
        return False
    print("encode_memory: no matplotlib here and no bench/.venv-bench (bench/setup.sh): no plot", file=sys.stderr)
    return False


def cmd_plot(argv) -> int:
    ap = argparse.ArgumentParser(prog="encode_memory.py plot", description="draw the RSS plot of a results JSON")
    ap.add_argument("json", type=Path)
    ap.add_argument("png", type=Path)
    a = ap.parse_args(argv)
    if not plot(json.loads(a.json.read_text()), a.png):
        print("encode_memory plot: matplotlib is not installed", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Machine load: " + rc.LOAD_RULE + "\n\nInternal subcommands: `encode_memory.py flag-encode --help` "
               "(the FlagEmbedding child) and `encode_memory.py plot RESULT.json OUT.png`.")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                    help="snapshot (default: %(default)s, from `bench/make_full_model.py --layers 2`)")
    ap.add_argument("--binary", type=Path, default=DEFAULT_BINARY, help="m3embed (default: %(default)s)")
    ap.add_argument("--python", type=Path, default=DEFAULT_PYTHON,
                    help="interpreter with FlagEmbedding 1.4.2 + torch for the FlagEmbedding run "
                         "(default: %(default)s)")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated (default: %(default)s)")
    ap.add_argument("--corpus", choices=("mix", "soak"), default="mix",
                    help="length distribution (default: %(default)s; see above)")
    ap.add_argument("--min-output-bytes", type=parse_size, default=2**30,
                    help="size the corpus so that its JSON lines are at least this (estimated at "
                         f"{BYTES_PER_FLOAT_ESTIMATE} bytes per ColBERT float; the real size is measured); e.g. 1GiB "
                         "(default), 20MB for a smoke run")
    ap.add_argument("--tokens", type=int, default=None,
                    help="size the corpus by ColBERT vectors (about tokens) instead of --min-output-bytes")
    ap.add_argument("--threads", type=int, default=2, help="m3embed --threads and torch threads (default: %(default)s)")
    ap.add_argument("--m3-args", default="",
                    help="extra m3embed encode options, one string: --m3-args='--output-memory 64MiB' "
                         "(use the = form: the value starts with --)")
    ap.add_argument("--flag-batch-size", type=int, default=32,
                    help="FlagEmbedding's encode batch_size (default: %(default)s; its own default is 256)")
    ap.add_argument("--interval", type=float, default=0.1, help="RSS sampling interval, s (default: %(default)s)")
    ap.add_argument("--timeout-s", type=float, default=7200, help="kill a run after this (default: %(default)s)")
    ap.add_argument("--label", default=None, help="results name DATE-encode-memory-LABEL (default: MODEL-CORPUS)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS, help="(default: bench/results)")
    ap.add_argument("--work-dir", type=Path, default=pe.CACHE / "encode-memory",
                    help="where the outputs are written, then deleted (default: %(default)s)")
    ap.add_argument("--keep-outputs", action="store_true", help="keep the output JSONL files (in --work-dir)")
    ap.add_argument("--no-docs", action="store_true",
                    help="do not write docs/encode-memory.png or the encode-memory section of docs/benchmarks.md "
                         "(the plot then goes beside the logs)")
    rc.add_load_args(ap)
    args = ap.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [e for e in args.engines if e not in ENGINES]
    if bad or not args.engines:
        ap.error(f"--engines: unknown {bad}; known: {', '.join(ENGINES)}")
    args.model = args.model.expanduser()
    if not (args.model / "config.json").exists():
        ap.error(f"{args.model} is not a model snapshot; make it with: .venv/bin/python bench/make_full_model.py "
                 "--layers 2")
    if "m3embed" in args.engines and not args.binary.exists():
        ap.error(f"{args.binary} does not exist (build it: cmake --build build -j2 --target m3embed)")
    if "flagembedding" in args.engines and not Path(args.python).exists():
        ap.error(f"--python {args.python} does not exist (scripts/setup.sh makes .venv)")
    args.m3_args = shlex.split(args.m3_args)
    args.work_dir = args.work_dir.expanduser()
    args.label = args.label or f"{args.model.name}-{args.corpus}"
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "flag-encode":
        return cmd_flag_encode(argv[1:])
    if argv and argv[0] == "plot":
        return cmd_plot(argv[1:])
    args = parse_args(argv)
    date = dt.date.today().isoformat()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"{date}-encode-memory-{args.label}"
    logs = pe.CACHE / "logs" / stem.name
    logs.mkdir(parents=True, exist_ok=True)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    load_at_start = rc.load_snapshot()

    rows_needed = (args.tokens if args.tokens is not None
                   else math.ceil(args.min_output_bytes / (HIDDEN * BYTES_PER_FLOAT_ESTIMATE)))
    texts = logs / "texts.txt"
    t0 = time.time()
    corpus = make_corpus(args.corpus, rows_needed, texts)
    print(f"encode_memory: corpus {corpus['kind']}: {corpus['texts']:,} texts, {corpus['tokens']:,} tokens, "
          f"{corpus['colbert_rows']:,} ColBERT vectors (~{corpus['colbert_rows'] * HIDDEN * 12.5 / 1e9:.2f} GB of "
          f"JSON lines) in {texts} ({time.time() - t0:.1f} s)", flush=True)
    try:
        version = subprocess.run([str(args.binary), "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        version = None
    result = {"label": args.label, "date": date, "command": rc.command_line(), "git": rc.git_revision(),
              "machine": rc.machine(), "model": rc.model_facts(args.model), "m3embed_version": version,
              "versions": rc.versions(str(args.python)), "threads": args.threads, "interval_s": args.interval,
              "flag_batch_size": args.flag_batch_size, "m3_args": args.m3_args,
              "min_output_bytes": args.min_output_bytes if args.tokens is None else None, "corpus": corpus,
              "max_load_per_core": args.max_load_per_core, "quiet_timeout_s": args.quiet_timeout_s,
              "load_at_start": load_at_start, "load_at_end": None, "logs": str(logs), "runs": []}
    json_path = Path(str(stem) + ".json")

    def save():
        # Indented, but every list of numbers (the timelines) on one line.
        text = json.dumps(result, indent=1)
        text = re.sub(r"\[([^\[\]{}\"]*)\]", lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", text)
        json_path.write_text(text + "\n")

    for e in args.engines:
        result["runs"].append(measure(e, args, corpus, texts, logs))
        save()
    result["first_text_check"] = compare_first()
    result["load_at_end"] = rc.load_snapshot()
    target = result["min_output_bytes"]
    for r in result["runs"]:
        if r["status"] == "ok" and target and r["output_bytes"] < target:
            print(f"encode_memory: warning: {r['engine']}'s output is {r['output_bytes']:,} bytes, below "
                  f"--min-output-bytes {target:,} (the corpus estimate was low)", file=sys.stderr)
            r["output_below_target"] = True
    save()

    failed = [r for r in result["runs"] if r["status"] != "ok"]
    refused = not args.no_docs and rc.refuse_docs_if_loaded("encode_memory", result["runs"], args.force_docs,
                                                            args.max_load_per_core, name=lambda r: r["engine"])
    write_docs = not args.no_docs and not refused and not failed
    if failed and not args.no_docs:
        print("encode_memory: not writing the docs: a run did not finish", file=sys.stderr)
    png_path = DOCS_PNG if write_docs else logs / "encode-memory.png"
    have_png = make_plot(result, json_path, png_path)
    if have_png:
        print(f"encode_memory: plot {png_path}", flush=True)
    md = markdown(result, "encode-memory.png" if have_png and write_docs else None)
    res_md = md.replace("](encode-memory.png)", "](../../docs/encode-memory.png)")
    if have_png and not write_docs:
        res_md += f"\nPlot (not in the repository): `{png_path}`\n"
    Path(str(stem) + ".md").write_text(res_md)
    if write_docs:
        rc.update_docs_section("encode-memory", md, begin_word="start")
        print("encode_memory: docs/benchmarks.md (encode-memory section) and docs/encode-memory.png updated")
    print(f"encode_memory: wrote {os.path.relpath(stem, REPO)}.json and .md\n", flush=True)
    print(md)
    if failed:
        return 1
    if refused:
        print("encode_memory: docs NOT updated: the machine was loaded (see above; --force-docs overrides)",
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
