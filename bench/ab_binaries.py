"""Two m3bench-workload binaries (a base and a change) on the same workloads, alternating.

On a VM whose speed drifts by +-5% from one minute to the next, a base run in the morning and a
new one in the afternoon compare the hours, not the code. So this runs base, new, base, new, ...
on each workload and dtype, each run after the machine is quiet (report_common.wait_for_quiet),
and writes every figure, not only a median, with the load before and after each run:

    .venv/bin/python bench/ab_binaries.py --base /tmp/base/build/m3bench-workload \
        --new build/m3bench-workload --model ~/.cache/m3embed/bench/bge-m3-random \
        --workloads W4 --dtypes bf16,int8 --rounds 2 --json bench/results/<date>-ab-<what>.json

Build the base from a worktree of the base commit: `git worktree add /tmp/base <commit>`, then
cmake with -DM3_CUDA=OFF -DM3_BUILD_TESTS=OFF and `--target m3bench-workload`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report_common  # noqa: E402
import workloads  # noqa: E402


def run_once(binary: str, model: str, ids: Path, dtype: str, args) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([binary, "--model", model, "--ids", str(ids), "--dtype", dtype, "--threads", str(args.threads),
                        "--repeat", str(args.repeat), "--warmup", str(args.warmup), "--json", out.name],
                       check=True, capture_output=True, text=True)
        return json.loads(Path(out.name).read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the base m3bench-workload binary")
    ap.add_argument("--new", required=True, help="the changed m3bench-workload binary")
    ap.add_argument("--model", required=True)
    ap.add_argument("--workloads", default="W4", help="comma-separated workloads.py names")
    ap.add_argument("--dtypes", default="bf16", help="comma-separated --dtype values")
    ap.add_argument("--rounds", type=int, default=2, help="base-then-new pairs per workload and dtype")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="where to write every run's figures")
    ap.add_argument("--max-load-per-core", type=float, default=report_common.LOAD_LIMIT_PER_CORE)
    args = ap.parse_args()

    results = {"command": report_common.command_line(), "machine": report_common.machine(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads.split(","):
            ids = Path(tmp) / f"{name}.json"
            ids.write_text(json.dumps(workloads.token_ids(name)))
            for dtype in args.dtypes.split(","):
                figures = {"base": [], "new": []}
                for _ in range(args.rounds):
                    for side in ("base", "new"):
                        before = report_common.wait_for_quiet(args.max_load_per_core, what=f"{name} {dtype} {side}")
                        run = run_once(getattr(args, side), args.model, ids, dtype, args)
                        after = report_common.load_snapshot()
                        figures[side].append(run["tokens_per_second"])
                        results["runs"].append({"workload": name, "dtype": dtype, "side": side,
                                                "tokens_per_second": run["tokens_per_second"],
                                                "tokens_per_second_runs": run["tokens_per_second_runs"],
                                                "peak_rss_bytes": run.get("peak_rss_bytes"),
                                                "plan_arena_bytes": run.get("plan_arena_bytes"),
                                                "load_before": before["load1"], "load_after": after["load1"]})
                        print(f"{name} {dtype} {side}: {run['tokens_per_second']:.0f} tokens/s, peak RSS "
                              f"{report_common.mib(run.get('peak_rss_bytes', 0))} MiB "
                              f"(load {before['load1']:.2f} -> {after['load1']:.2f})", flush=True)
                base, new = statistics.median(figures["base"]), statistics.median(figures["new"])
                print(f"{name} {dtype}: base {base:.0f}, new {new:.0f} tokens/s (medians): {new / base:.3f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
