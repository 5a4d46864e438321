#!/usr/bin/env python3
"""Load benchmark of `m3embed serve`: a load generator that keeps N requests in flight, either
`wrk` (Debian package; bench/serve_wrk.lua) or an asyncio httpx client (--generator).

Two phases against POST /v1/embeddings (encoding_format "float"):
  short: --clients concurrent clients, one --short-tokens query per request: requests/s and
         latency percentiles (p50/p90/p99/max);
  long:  --long-clients concurrent clients, --long-batch documents of --long-tokens each per
         request: tokens/s (from usage.prompt_tokens) and latency percentiles.
Texts come from bench/workloads.py, exact token lengths with the fixture tokenizer (which the
random benchmark models ship too). The server is started here (`--binary serve --model ...`,
loopback, free port) unless --url names a running one. Results: --json (full record, with the
command) and a markdown summary beside it. Before each phase it waits (at most --quiet-timeout-s,
default 180 s) until the 1-minute load average is at most --max-load-per-core (0.5) x the CPUs,
and records the load averages before and after each phase; the summary says "taken on a loaded
machine" when a phase started above that (bench/README.md, "Machine load").

    .venv/bin/python bench/serve_load.py --binary build/m3embed --model tests/fixtures/tiny-st \
        --json bench/results/$(date +%F)-serve-load-tiny.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report_common as rc  # noqa: E402
import workloads  # noqa: E402


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def texts_of(length: int, count: int, seed: str) -> list[str]:
    w = workloads.Workload(f"serve-{seed}-{length}", (length,) * count, (count,))
    return workloads.texts(w)


class ServerProcess:
    def __init__(self, binary: str, model: str, extra: list[str]):
        self.command = [binary, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0", *extra]
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.port = None
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.lines.append(line.rstrip())
                match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
                if match:
                    self.port = int(match.group(1))
                if line.rstrip().endswith("] ready"):
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(1800) or self.proc.poll() is not None:
            raise SystemExit("server did not start:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


async def phase(url: str, bodies: list[dict], clients: int, duration: float, warmup: float) -> dict:
    """`clients` loops posting bodies round-robin for `duration` s after `warmup` s."""
    latencies: list[float] = []
    tokens = 0
    errors: dict[str, int] = {}
    counter = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def client_loop(client: httpx.AsyncClient):
        nonlocal tokens, counter
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            body = bodies[counter % len(bodies)]
            counter += 1
            t0 = time.perf_counter()
            try:
                response = await client.post("/v1/embeddings", json=body)
                status = response.status_code
                used = response.json()["usage"]["prompt_tokens"] if status == 200 else 0
            except httpx.HTTPError as error:
                status, used = type(error).__name__, 0
            t1 = time.perf_counter()
            if t0 >= measure_from and t1 <= stop_at:
                if status == 200:
                    latencies.append(t1 - t0)
                    tokens += used
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    latencies.sort()
    return {
        "generator": "httpx", "clients": clients, "seconds": duration, "requests": len(latencies), "errors": errors,
        "requests_per_s": len(latencies) / duration, "tokens": tokens, "tokens_per_s": tokens / duration,
        "latency_ms": {name: 1000 * percentile(latencies, p) for name, p in
                       (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
    }


def wait_idle(url: str, timeout: float = 600) -> None:
    """Until the scheduler has nothing queued or running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = 0.0
        for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
            if line.startswith(("m3_queue_sequences ", "m3_in_flight_sequences ")):
                busy += float(line.split()[1])
        if busy == 0:
            return
        time.sleep(0.1)


def phase_wrk(url: str, bodies: list[dict], clients: int, duration: float, warmup: float,
              tokens_per_request: int) -> dict:
    """The same phase driven by wrk (one thread: the machine is small and the server shares it)."""
    script = Path(__file__).resolve().parent / "serve_wrk.lua"
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("".join(json.dumps(b, ensure_ascii=False) + "\n" for b in bodies))
    try:
        def run(seconds):
            command = ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "600s", "-s",
                       str(script), url, "--", f.name]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
        if warmup > 0:
            run(warmup)
            wait_idle(url)  # what wrk abandoned at the end of the warm-up must not overlap the run
        r = run(duration)
    finally:
        os.unlink(f.name)
    seconds = r["duration_us"] / 1e6
    ok = r["requests"] - r["errors"]["status"]
    errors = {k: v for k, v in r["errors"].items() if v}
    return {
        "generator": "wrk", "clients": clients, "seconds": seconds, "requests": ok, "errors": errors,
        "requests_per_s": ok / seconds, "tokens": ok * tokens_per_request,
        "tokens_per_s": ok * tokens_per_request / seconds,
        "latency_ms": {k: v / 1000 for k, v in r["latency_us"].items()},
    }


def scrape(url: str) -> dict:
    out = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            if name.startswith(("m3_batch_tokens_sum", "m3_batch_tokens_count", "m3_memory_", "m3_tokens_total")):
                out[name] = float(value)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="build/m3embed")
    ap.add_argument("--model", default="tests/fixtures/tiny-st")
    ap.add_argument("--url", help="benchmark a running server instead of starting one")
    ap.add_argument("--server-args", default="", help="extra `serve` options, e.g. '--threads 2 --http-threads 1'")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--short-tokens", type=int, default=16)
    ap.add_argument("--long-clients", type=int, default=4)
    ap.add_argument("--long-tokens", type=int, default=128)
    ap.add_argument("--long-batch", type=int, default=8)
    ap.add_argument("--duration", type=float, default=10, help="measured seconds per phase")
    ap.add_argument("--long-duration", type=float, help="measured seconds of the long phase (default: --duration)")
    ap.add_argument("--warmup", type=float, default=2, help="unmeasured seconds before each phase")
    ap.add_argument("--generator", choices=["wrk", "httpx"], default="wrk")
    ap.add_argument("--json", help="write the record here (and a .md summary beside it)")
    rc.add_load_args(ap, docs=False)
    args = ap.parse_args(argv)

    short_bodies = [{"input": t, "encoding_format": "float"} for t in texts_of(args.short_tokens, 256, "short")]
    docs = texts_of(args.long_tokens, 8 * args.long_batch, "long")
    long_bodies = [{"input": docs[i:i + args.long_batch], "encoding_format": "float"}
                   for i in range(0, len(docs), args.long_batch)]

    load_at_start = rc.load_snapshot()
    server = None
    url = args.url
    if not url:
        server = ServerProcess(args.binary, args.model, shlex.split(args.server_args))
        url = f"http://127.0.0.1:{server.port}"
    load_before = os.getloadavg()
    loads = {}

    def quiet(name: str) -> None:
        loads[name] = {"load_before": rc.wait_for_quiet(args.max_load_per_core, args.quiet_timeout_s,
                                                        what=f"serve_load: {name} phase")}

    try:
        if args.generator == "wrk":
            quiet("short")
            short = phase_wrk(url, short_bodies, args.clients, args.duration, args.warmup, args.short_tokens)
            loads["short"]["load_after"] = rc.load_snapshot()
            quiet("long")
            long = phase_wrk(url, long_bodies, args.long_clients, args.long_duration or args.duration, args.warmup,
                             args.long_tokens * args.long_batch)
            loads["long"]["load_after"] = rc.load_snapshot()
        else:
            quiet("short")
            short = asyncio.run(phase(url, short_bodies, args.clients, args.duration, args.warmup))
            loads["short"]["load_after"] = rc.load_snapshot()
            quiet("long")
            long = asyncio.run(phase(url, long_bodies, args.long_clients, args.long_duration or args.duration,
                                     args.warmup))
            loads["long"]["load_after"] = rc.load_snapshot()
        info = httpx.get(url + "/info", timeout=30).json()
        metrics = scrape(url)
    finally:
        exit_code = server.stop() if server else None
    record = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "server_command": " ".join(server.command) if server else None,
        "server_exit_code": exit_code,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "model": info.get("model_dir"), "max_input_length": info.get("max_input_length"),
        "max_batch_tokens": info.get("max_batch_tokens"),
        "threads_per_replica": info["memory"]["plan"]["threads_per_replica"],
        "replicas": info["memory"]["plan"]["replicas"],
        "short": {**short, "tokens_per_input": args.short_tokens, **loads["short"]},
        "long": {**long, "tokens_per_input": args.long_tokens, "inputs_per_request": args.long_batch,
                 **loads["long"]},
        "server_metrics": metrics,
        "max_load_per_core": args.max_load_per_core, "quiet_timeout_s": args.quiet_timeout_s,
        "load_at_start": load_at_start, "load_at_end": rc.load_snapshot(),
    }
    text = json.dumps(record, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
        s, l = record["short"], record["long"]
        phases = [{"phase": "short", **s}, {"phase": "long", **l}]
        warn = rc.load_warning(phases, args.max_load_per_core, name=lambda r: r["phase"])
        Path(args.json).with_suffix(".md").write_text(
            f"# serve load: {Path(str(record['model'])).name}\n\n"
            f"`{record['command']}`\n\nserver: `{record['server_command']}` (exit {exit_code})\n\n"
            + (f"{warn}\n\n" if warn else "") +
            f"{record['machine']['cpus']} CPUs; 1/5/15-min load averages before the short phase "
            f"{rc.load_text(s['load_before'])} (waited {s['load_before']['waited_s']:.0f} s), after it "
            f"{rc.load_text(s['load_after'])}; before the long phase {rc.load_text(l['load_before'])} (waited "
            f"{l['load_before']['waited_s']:.0f} s), after it {rc.load_text(l['load_after'])} (the server and the "
            "load generator share the machine)\n\n"
            f"generator: {s['generator']}\n\n"
            "| phase | clients | input | req/s | tokens/s | p50 ms | p90 ms | p99 ms | errors |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
            f"| short queries | {s['clients']} | 1 x {args.short_tokens} tok | {s['requests_per_s']:.1f} | "
            f"{s['tokens_per_s']:.0f} | {s['latency_ms']['p50']:.1f} | {s['latency_ms']['p90']:.1f} | "
            f"{s['latency_ms']['p99']:.1f} | {s['errors'] or 0} |\n"
            f"| long documents | {l['clients']} | {args.long_batch} x {args.long_tokens} tok | "
            f"{l['requests_per_s']:.2f} | {l['tokens_per_s']:.0f} | {l['latency_ms']['p50']:.1f} | "
            f"{l['latency_ms']['p90']:.1f} | {l['latency_ms']['p99']:.1f} | {l['errors'] or 0} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
