"""`m3embed encode` streams inside its memory plan.

On a model shape no fixture has (hidden 384, 6 layers, 12 heads, 8194 positions, written at
test time by the real transformers with the fixture tokenizer), every output of a corpus
that makes more than 10x the output buffer's bound of results must run at a peak RSS within
5% of the memory plan plus the process's fixed baseline (what is resident outside the plan:
libraries, tokenizer, compiled kernels; encode measures and logs it). The peak is the larger
of wait4's ru_maxrss (from outside; the model is built in another process, so this one stays
small and its own size cannot leak into the child's figure) and the VmHWM encode reports. A
dense-only run of a few texts with the same plan peaks within the buffer's bound of it: the
peak does not grow with the corpus or the outputs. Also: input is read as a stream (results
for lines already sent come back while stdin is still open), and output order and bytes
do not depend on the buffer's size (beyond the last bits of a float: batches form from what
is queued at the time).
"""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fixture_env import BINARY, FIXTURES, SOURCE_FIXTURES

pytestmark = pytest.mark.skipif(not BINARY, reason="M3_BINARY is not set (ctest sets it)")

HELD_OUT = {"hidden": 384, "layers": 6, "heads": 12, "intermediate": 1536, "positions": 8194, "seed": 20261203}
OUTPUT_MEMORY = 14 << 20  # bytes; one 8192-token result of every output needs about 12.7 MB
THREADS = "2"
MARGIN = 1.05


@pytest.fixture(scope="module")
def held_out_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "held-out-h384-l6"
    args = [f"--{key}={value}" for key, value in HELD_OUT.items()]
    subprocess.run([sys.executable, str(SOURCE_FIXTURES / "make_held_out_model.py"), str(out), *args], check=True,
                   timeout=600)
    return out


def corpus_lines(count: int, seed: int, max_words: int, long_texts: int = 0) -> list[str]:
    """Texts of log-uniform length (1..max_words words, about 2 tokens each) from the
    tokenizer's training sentences, plus `long_texts` texts past 8192 tokens (truncated)."""
    words = " ".join((SOURCE_FIXTURES / "spm" / "train.txt").read_text().split()).split(" ")
    rng = random.Random(seed)
    lengths = [int(round(max_words ** rng.random())) for _ in range(count)] + [6000] * long_texts
    rng.shuffle(lengths)
    return [" ".join(rng.choice(words) for _ in range(n)) for n in lengths]


def run_encode(model: Path, texts: list[str], tmp: Path, *args: str) -> tuple[int, str]:
    """Runs encode to /dev/null; returns (peak RSS in bytes: wait4's or encode's own VmHWM, the larger;
    stderr)."""
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n")
    log = tmp / "encode.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([BINARY, "encode", "--model", str(model), "--input", str(corpus), "--output",
                                 "/dev/null", "--threads", THREADS, "-q", *args], stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    text = log.read_text()
    assert os.waitstatus_to_exitcode(status) == 0, text
    m = re.search(r"peak resident ([\d.]+) (MiB|GiB)", text)
    assert m, text
    own = float(m[1]) * {"MiB": 1 << 20, "GiB": 1 << 30}[m[2]]
    return max(usage.ru_maxrss * 1024, own), text


def plan_json(model: Path, *args: str) -> dict:
    result = subprocess.run([BINARY, "plan", "--model", str(model), "--threads", THREADS, "--json", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def reported(log: str) -> tuple[float, float]:
    """(plan, baseline) in bytes from encode's closing log line."""
    m = re.search(r"memory plan ([\d.]+) (MiB|GiB) \+ baseline ([\d.]+) (MiB|GiB)", log)
    assert m, log
    scale = {"MiB": 1 << 20, "GiB": 1 << 30}
    return float(m[1]) * scale[m[2]], float(m[3]) * scale[m[4]]


def test_encode_peak_rss_stays_within_plan_plus_baseline(held_out_model, tmp_path):
    options = ("--output-memory", f"{OUTPUT_MEMORY}")
    plan = plan_json(held_out_model, *options)
    assert plan["result_buffer_bytes"] == OUTPUT_MEMORY
    hidden = HELD_OUT["hidden"]

    # Every output, a corpus whose results (ColBERT rows of `hidden` floats) pass 10x the buffer.
    texts = corpus_lines(250, seed=1, max_words=800, long_texts=2)
    big_dir = tmp_path / "big"
    big_dir.mkdir()
    peak, log = run_encode(held_out_model, texts, big_dir, "--dense", "--sparse", "--colbert", *options)
    tokens = int(re.search(r"encoded \d+ texts \((\d+) tokens\)", log)[1])
    assert tokens * hidden * 4 >= 10 * OUTPUT_MEMORY, f"corpus too small: {tokens} tokens"
    plan_bytes, baseline = reported(log)
    assert abs(plan_bytes - plan["total_bytes"]) <= plan["total_bytes"] * 1e-3  # the plan encode used is `plan`'s
    assert peak <= MARGIN * (plan["total_bytes"] + baseline), (
        f"peak {peak / 2**20:.1f} MiB > {MARGIN} x (plan {plan['total_bytes'] / 2**20:.1f} MiB + baseline "
        f"{baseline / 2**20:.1f} MiB)\n{log}")

    # A few short texts, dense only, same plan: the big run's peak is no more than the
    # output buffer (which the small run never fills) plus the margin above it.
    small_dir = tmp_path / "small"
    small_dir.mkdir()
    small_peak, small_log = run_encode(held_out_model, corpus_lines(5, seed=2, max_words=20), small_dir, *options)
    _, small_baseline = reported(small_log)
    assert small_peak <= MARGIN * (plan["total_bytes"] + small_baseline), small_log
    slack = (MARGIN - 1) * (plan["total_bytes"] + baseline)
    assert peak <= small_peak + OUTPUT_MEMORY + slack, (
        f"peak {peak / 2**20:.1f} MiB with every output on {tokens} tokens vs {small_peak / 2**20:.1f} MiB dense-only "
        f"on 5 short texts: it grows with the corpus or the outputs")


def test_results_do_not_depend_on_the_buffer_size(tmp_path):
    model = FIXTURES / "tiny-st"
    texts = corpus_lines(300, seed=3, max_words=80)
    corpus = tmp_path / "in.txt"
    corpus.write_text("\n".join(texts) + "\n")
    outputs = []
    for memory in ("40KiB", "64MiB"):  # 40 KiB: about one 128-token result at a time
        out = tmp_path / f"out-{memory}.jsonl"
        result = subprocess.run([BINARY, "encode", "--model", str(model), "--input", str(corpus), "--output",
                                 str(out), "--dense", "--sparse", "--colbert", "--threads", "1", "-q",
                                 "--output-memory", memory], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        outputs.append(out.read_bytes())
    # Batches form from what is queued at the time, so the last bits of a float may differ.
    small, large = ([json.loads(line) for line in out.splitlines()] for out in outputs)
    assert len(small) == len(large) == len(texts)
    for a, b in zip(small, large):
        assert np.allclose(a["dense_vecs"], b["dense_vecs"], atol=1e-5)
        assert np.allclose(a["colbert_vecs"], b["colbert_vecs"], atol=1e-5)
        assert a["lexical_weights"].keys() == b["lexical_weights"].keys()
        assert np.allclose(list(a["lexical_weights"].values()), list(b["lexical_weights"].values()), atol=1e-5)


def test_an_output_memory_below_one_result_is_refused(tmp_path):
    corpus = tmp_path / "in.txt"
    corpus.write_text("hello\n")
    result = subprocess.run([BINARY, "encode", "--model", str(FIXTURES / "tiny-st"), "--input", str(corpus),
                             "--output-memory", "4KiB"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "--output-memory" in result.stderr and "128-token" in result.stderr


def test_stdin_is_read_as_a_stream(tmp_path):
    """Results for the lines sent so far come back while standard input is still open."""
    proc = subprocess.Popen([BINARY, "encode", "--model", str(FIXTURES / "tiny-st"), "--input", "-", "--output",
                             "-", "--threads", "1", "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, proc.kill)  # a hang (waiting for EOF) becomes a failure, not a stuck suite
    watchdog.start()
    try:
        for round_ in range(3):
            proc.stdin.write(f"first text of round {round_}\nsecond text of round {round_}\n")
            proc.stdin.flush()
            for _ in range(2):  # blocks until encode has written them: it has not seen EOF
                line = proc.stdout.readline()
                assert len(json.loads(line)["dense_vecs"]) == 64
        proc.stdin.close()
        assert proc.stdout.read() == ""
        assert proc.wait(120) == 0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
