#!/usr/bin/env python3
"""How far m3embed's bf16 and int8 paths move BGE-M3's outputs, on a full-size model.

Encodes W2-like texts (64 texts, 16..512 tokens, bench/workloads.py) with m3embed
(m3bench-workload --outputs) at each --dtypes and with FlagEmbedding fp32 (bench/peer_engines.py
--outputs), all from the same token ids (the snapshot's tokenizer applied to the texts), and
compares every candidate with every reference (m3embed fp32, FlagEmbedding fp32):

- dense: cosine per text (min, mean);
- lexical weights: texts whose top-10 token ids (by weight) are the same set, texts whose key
  sets are equal, max |weight difference| over the union of keys (a missing key counts 0);
- ColBERT: cosine per vector (min, mean) over all token vectors (row counts must agree).

Writes bench/results/<date>-fidelity-<label>.json and .md and the fidelity section of
docs/benchmarks.md (unless --no-docs; like peers.py it records each run's load average before
and after, waits for a quiet machine before each run, and refuses the docs, exit status 1,
when a run started on a loaded machine, unless --force-docs: bench/README.md, "Machine load").
With random weights (transformers' init) the outputs carry no meaning, but the arithmetic error
of a precision is what it is on these shapes.

    bench/.venv-bench/bin/python bench/fidelity.py --label L24
    bench/.venv-bench/bin/python bench/fidelity.py --model ~/.cache/m3embed/bench/bge-m3-random-L2 \\
        --texts 16 --label L2-quick --no-docs
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peer_engines as pe  # noqa: E402
import peers  # noqa: E402
import report_common as rc  # noqa: E402
import workloads as wl  # noqa: E402

REPO = HERE.parent
TOP_K = 10


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=peers.DEFAULT_MODEL, help="snapshot (default: %(default)s)")
    ap.add_argument("--dtypes", default="bf16,int8", help="m3embed precisions to check (default: %(default)s)")
    ap.add_argument("--extra-engines", default="", help="more candidates from bench/peer_engines.py, e.g. "
                    "torch-bf16,onnxruntime-fp32 (compared with the same references)")
    ap.add_argument("--texts", type=int, default=64, help="first N texts of W2 (default: all %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32, help="FlagEmbedding's batch size (default: %(default)s)")
    ap.add_argument("--budget-s", type=float, default=3600, help="kill an engine run after this (default: %(default)s)")
    ap.add_argument("--binary", type=Path, default=pe.DEFAULT_BINARY)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--label", default=None, help="default: the model directory name")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--out-dir", type=Path, default=peers.RESULTS)
    rc.add_load_args(ap)
    args = ap.parse_args(argv)
    args.model = args.model.expanduser()
    if not (args.model / "config.json").exists():
        ap.error(f"{args.model} is not a model snapshot")
    args.label = args.label or args.model.name
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    args.extra_engines = [e for e in args.extra_engines.split(",") if e]
    for e in args.extra_engines:
        if e not in pe.ENGINES or pe.ENGINES[e].kind == "binary":
            ap.error(f"--extra-engines: {e} is not a Python engine of bench/peer_engines.py")
    return args


def load_outputs(path: Path):
    import numpy as np

    j = json.loads(path.read_text())
    d = np.load(path.parent / j["dense_npy"])
    c = np.load(path.parent / j["colbert_npy"])
    rows = j["colbert_rows"]
    offs = np.cumsum([0] + rows)
    colbert = [c[offs[i]:offs[i + 1]] for i in range(len(rows))]
    return {"dense": d, "colbert": colbert, "lexical": j["lexical_weights"], "tokens": j.get("tokens")}


def compare(a: dict, b: dict) -> dict:
    """Candidate a against reference b."""
    import numpy as np

    def cos(x, y):
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        num = (x * y).sum(-1)
        den = np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1)
        return num / np.maximum(den, 1e-30)

    n = len(b["dense"])
    dense = cos(a["dense"], b["dense"])
    same_top = same_keys = 0
    lex_max = 0.0
    for la, lb in zip(a["lexical"], b["lexical"]):
        top = lambda lw: set(sorted(lw, key=lambda k: -lw[k])[:TOP_K])  # noqa: E731
        same_top += top(la) == top(lb)
        same_keys += set(la) == set(lb)
        for k in set(la) | set(lb):
            lex_max = max(lex_max, abs(la.get(k, 0.0) - lb.get(k, 0.0)))
    rows_ok = all(x.shape == y.shape for x, y in zip(a["colbert"], b["colbert"]))
    out = {"texts": n, "dense_cos_min": float(dense.min()), "dense_cos_mean": float(dense.mean()),
           "dense_max_abs_diff": float(np.abs(a["dense"] - b["dense"]).max()),
           "lexical_same_top10_texts": same_top, "lexical_same_keys_texts": same_keys,
           "lexical_max_abs_diff": lex_max, "colbert_rows_match": rows_ok}
    if rows_ok:
        cc = np.concatenate([cos(x, y) for x, y in zip(a["colbert"], b["colbert"])])
        out |= {"colbert_vectors": int(cc.size), "colbert_cos_min": float(cc.min()), "colbert_cos_mean": float(cc.mean())}
    return out


def run_list(result: dict) -> list[dict]:
    return [{"engine": e, **r} for e, r in result["runs"].items() if r.get("load_before")]


def markdown(result: dict) -> str:
    limit = result.get("max_load_per_core", rc.LOAD_LIMIT_PER_CORE)
    warn = rc.load_warning(run_list(result), limit)
    out = [f"## Fidelity of the low-precision paths: {result['label']}", "",
           f"Command (from the repository root, {result['date']}, git {result['git']}):", "",
           f"    {result['command']}", "", *([warn, ""] if warn else []),
           f"- Machine: {rc.machine_line(result['machine'])}",
           f"- Model: `{result['model']['path']}` ({result['model'].get('layers')} layers, random weights, seed "
           f"{result['model'].get('seed')})",
           f"- Texts: the first {result['texts']} of W2 ({result['tokens']} tokens, 16..512 per text), one set of "
           "token ids for every engine",
           "- Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()), "",
           "Cosines are per text (dense) and per token vector (ColBERT); lexical: texts (of all) whose top-10 "
           "token ids are the same set, texts whose whole key sets agree, and the largest weight difference "
           "(a key missing on one side counts as 0).", "",
           "| candidate | reference | dense cos min | dense cos mean | lexical same top-10 | lexical same keys | "
           "lexical max abs diff | ColBERT cos min | ColBERT cos mean |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in result["comparisons"]:
        m = c.get("metrics")
        if not m:
            out.append(f"| {c['candidate']} | {c['reference']} | {c.get('reason', 'unavailable')} | | | | | | |")
            continue
        col = (f"{m['colbert_cos_min']:.7f} | {m['colbert_cos_mean']:.7f}" if m.get("colbert_rows_match")
               else "rows differ | ")
        out.append(f"| {c['candidate']} | {c['reference']} | {m['dense_cos_min']:.7f} | {m['dense_cos_mean']:.7f} | "
                   f"{m['lexical_same_top10_texts']}/{m['texts']} | {m['lexical_same_keys_texts']}/{m['texts']} | "
                   f"{m['lexical_max_abs_diff']:.2e} | {col} |")
    backends = [f"{e}: {r.get('backend', '?')}" for e, r in result["runs"].items() if r.get("backend")]
    if backends:
        out += ["", "Backends as reported: " + ", ".join(backends) + "."]
    failed = [f"{e}: {r.get('reason')}" for e, r in result["runs"].items() if r.get("status") != "ok"]
    if failed:
        out += ["", "Runs without outputs: " + "; ".join(failed) + "."]
    if run_list(result):
        out += [""] + rc.load_section(run_list(result), result.get("load_at_start"), result.get("load_at_end"),
                                      limit, timeout_s=result.get("quiet_timeout_s"))
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    date = dt.date.today().isoformat()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"{date}-fidelity-{args.label}"
    logs = pe.CACHE / "logs" / stem.name  # per-run logs and reports (and outputs): not in the repository
    logs.mkdir(parents=True, exist_ok=True)
    env = peers.child_env(args.threads)
    from transformers import AutoTokenizer

    texts = wl.texts("W2")[:args.texts]
    tok = AutoTokenizer.from_pretrained(str(args.model), model_max_length=10**9)
    ids = tok(texts, add_special_tokens=True)["input_ids"]
    result = {"label": args.label, "date": date, "command": rc.command_line(), "git": rc.git_revision(),
              "machine": rc.machine(), "model": rc.model_facts(args.model), "versions": rc.versions(args.python),
              "texts": len(texts), "tokens": sum(len(x) for x in ids), "runs": {}, "comparisons": [],
              "max_load_per_core": args.max_load_per_core, "quiet_timeout_s": args.quiet_timeout_s,
              "load_at_start": rc.load_snapshot(), "load_at_end": None}
    m3 = [f"m3embed-{d}" for d in ["fp32", *[d for d in args.dtypes if d != "fp32"]]]
    engines = m3 + ["flagembedding-fp32"] + [e for e in args.extra_engines if e != "flagembedding-fp32"]
    outputs = {}
    if not args.binary.exists():
        print(f"fidelity: {args.binary} is missing; build it first:\n"
              "    cmake --build build -j2 --target m3bench-workload", file=sys.stderr)
    # A run's options: `args` as peer_engines/peers expect them.
    args.max_batch_tokens, args.repeat, args.warmup = 16384, 1, 0
    with tempfile.TemporaryDirectory(prefix="m3-fidelity-") as tmp:
        ids_file, inputs_file = Path(tmp) / "ids.json", Path(tmp) / "inputs.json"
        ids_file.write_text(json.dumps(ids))
        inputs_file.write_text(json.dumps({"ids": ids, "texts": texts}))
        for e in engines:
            eng = pe.ENGINES[e]
            out_json = logs / f"{e}.outputs.json"
            report = logs / f"{e}.json"
            st = peers.prepare_engine(eng, args, env, logs)
            if st["status"] != "ok":
                result["runs"][e] = {"status": "unavailable", "reason": st.get("reason")}
                print(f"fidelity: {e} ... unavailable: {st.get('reason')}", flush=True)
                continue
            if eng.kind == "binary":
                cmd = eng.command(args, str(ids_file), str(report), args.budget_s, outputs=str(out_json))
            else:
                cmd = [args.python, str(HERE / "peer_engines.py"), "run", "--engine", e, "--model", str(args.model),
                       "--threads", str(args.threads), "--batch-size", str(args.batch_size), "--inputs",
                       str(inputs_file), "--repeat", "1", "--warmup", "0", "--json", str(report),
                       "--outputs", str(out_json)]
            before = rc.wait_for_quiet(args.max_load_per_core, args.quiet_timeout_s, what=f"fidelity: {e}")
            print(f"fidelity: {e} ...", end=" ", flush=True)
            r = peers.run_child(cmd, env, logs / f"{e}.log", args.budget_s)
            loads = {"load_before": before, "load_after": rc.load_snapshot()}
            try:
                rep = json.loads(report.read_text())
                outputs[e] = load_outputs(out_json)
                result["runs"][e] = {"status": "ok", "backend": rep.get("backend"), "dtype": rep.get("dtype"),
                                     "seconds": rep.get("seconds"), "peak_rss_bytes": r["peak_rss_bytes"], **loads}
                print(f"ok ({r['wall_s']:.0f} s)", flush=True)
            except (OSError, ValueError, KeyError) as ex:
                reason = ("timed out" if r["timed_out"] else f"exit {r['exit']}: {peers.log_tail(logs / f'{e}.log')}"
                          if r["exit"] else f"no outputs ({ex})")
                result["runs"][e] = {"status": "failed", "reason": reason, **loads}
                print(f"failed: {reason}", flush=True)
    refs = ["m3embed-fp32", "flagembedding-fp32"]
    for c in engines:
        for ref in refs:
            if c == ref or (c == "flagembedding-fp32" and ref == "m3embed-fp32"):
                continue
            row = {"candidate": c, "reference": ref}
            if c in outputs and ref in outputs:
                if outputs[c]["tokens"] and outputs[ref]["tokens"] and outputs[c]["tokens"] != outputs[ref]["tokens"]:
                    row["reason"] = "token counts differ"
                else:
                    row["metrics"] = compare(outputs[c], outputs[ref])
            else:
                row["reason"] = "unavailable"
            result["comparisons"].append(row)
    result["load_at_end"] = rc.load_snapshot()
    Path(str(stem) + ".json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    Path(str(stem) + ".md").write_text(md)
    refused = not args.no_docs and rc.refuse_docs_if_loaded("fidelity", run_list(result), args.force_docs,
                                                            args.max_load_per_core)
    if not args.no_docs and not refused:
        rc.update_docs_section("fidelity", md)
        print("fidelity: docs/benchmarks.md updated")
    print(f"fidelity: wrote {os.path.relpath(stem, REPO)}.json and .md\n")
    print(md)
    if refused:
        print("fidelity: docs/benchmarks.md NOT updated: the machine was loaded (see above; --force-docs overrides)",
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
