"""examples/ray_embed.py (corpus embedding on Ray Data with a pool of m3embed engines) on a
local Ray cluster of 3 CPUs (2 actors x 1 thread, and the one CPU the example leaves to Ray
Data's reading and writing), tiny-st fixture.

- 50 texts (short, long enough to be truncated, non-ASCII, empty) from JSON lines and from
  Parquet: the Parquet output matches `m3embed encode` (the binary) on the same texts, row by
  row and by id: dense and ColBERT within 1e-6, sparse maps with the same keys in the same
  order and weights within 1e-6; the other input columns are kept, the text column is not;
  the column types are the documented ones.
- Refusals, before anything runs: a missing input, an output directory that is not empty, a
  missing text column, an empty input, a pool over --memory-limit, more actors than CPUs; and
  a row without a text fails with the actor's error naming the row.
Nothing here depends on timing: every run is waited for.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fixture_env import BINARY, FIXTURES

try:
    import m3embed  # noqa: F401
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
except ImportError as e:  # a failure, not a skip: scripts/test.sh installs them
    raise AssertionError(f"ray, pyarrow or m3embed is not installed in this venv ({e}); run scripts/test.sh") from e

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples"))
import ray_embed  # noqa: E402

MODEL = str(FIXTURES / "tiny-st")
TOL = 1e-6


def corpus() -> list[dict]:
    words = "the quick brown fox jumps over the lazy dog while search engines rank documents".split()
    rows = []
    for i in range(50):
        text = " ".join(words[(i + k) % len(words)] for k in range(1 + (i * 7) % 23))
        if i % 10 == 3:
            text = (text + " ") * 20  # longer than the model's 128 tokens: truncated
        if i % 10 == 5:
            text = f"Größe {i}: 日本語のテキスト, naïve café — ünïcödé"
        rows.append({"id": f"doc-{i:02d}", "text": "" if i == 17 else text, "source": f"s{i % 3}"})
    return rows


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=3, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray-embed")
    rows = corpus()
    (d / "corpus.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), d / "corpus.parquet")
    return d


@pytest.fixture(scope="module")
def reference(inputs):
    """`m3embed encode` of the same texts: {id: record}."""
    binary = BINARY or str(REPO / "build" / "m3embed")
    assert Path(binary).exists(), f"{binary} does not exist (ctest sets M3_BINARY; or build it)"
    out = inputs / "reference.jsonl"
    subprocess.run([binary, "encode", "--model", MODEL, "--device", "cpu", "--input", str(inputs / "corpus.jsonl"),
                    "--output", str(out), "--dense", "--sparse", "--colbert", "--threads", "1", "-q"],
                   check=True, timeout=120)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 50
    return {r["id"]: rec for r, rec in zip(corpus(), records)}


def run(*args: str) -> int:
    return ray_embed.main(["--model", MODEL, "--actors", "2", "--threads", "1", "--batch-size", "7", *args])


def check_output(out: Path, reference: dict, colbert: bool) -> None:
    table = pq.read_table(out)
    assert table.num_rows == 50
    assert "text" not in table.column_names and table.column("source").to_pylist() == [r["source"] for r in corpus()]
    assert table.schema.field("dense").type == pa.list_(pa.float32())
    assert table.schema.field("sparse").type == pa.map_(pa.int32(), pa.float32())
    assert ("colbert" in table.column_names) == colbert
    if colbert:
        assert table.schema.field("colbert").type == pa.list_(pa.list_(pa.float32()))
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(reference)
    for i, row in enumerate(table.to_pylist()):
        want = reference[ids[i]]
        np.testing.assert_allclose(row["dense"], want["dense_vecs"], atol=TOL, err_msg=ids[i])
        got = dict(row["sparse"])  # [(token id, weight)] in the engine's order
        assert [str(k) for k in got] == list(want["lexical_weights"]), ids[i]
        np.testing.assert_allclose(list(got.values()), list(want["lexical_weights"].values()), atol=TOL,
                                   err_msg=ids[i])
        if colbert:
            assert len(row["colbert"]) == len(want["colbert_vecs"]), ids[i]
            np.testing.assert_allclose(np.array(row["colbert"]).reshape(-1, 64),
                                       np.array(want["colbert_vecs"]).reshape(-1, 64), atol=TOL, err_msg=ids[i])


def test_jsonl_with_colbert_matches_the_binary(cluster, inputs, reference):
    out = inputs / "out-jsonl"
    assert run("--input", str(inputs / "corpus.jsonl"), "--output", str(out), "--colbert") == 0
    check_output(out, reference, colbert=True)


def test_parquet_matches_the_binary(cluster, inputs, reference):
    out = inputs / "out-parquet"
    assert run("--input", str(inputs / "corpus.parquet"), "--output", str(out)) == 0
    check_output(out, reference, colbert=False)
    # Rows in input order (preserve_order), files in write order.
    files = sorted(out.glob("*.parquet"))
    assert [i for f in files for i in pq.read_table(f).column("id").to_pylist()] == [r["id"] for r in corpus()]


def test_refusals(cluster, inputs, tmp_path):
    jsonl = str(inputs / "corpus.jsonl")
    with pytest.raises(SystemExit, match="no such file"):
        run("--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o1"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(SystemExit, match="not an empty directory"):
        run("--input", jsonl, "--output", str(tmp_path / "full"))
    with pytest.raises(SystemExit, match="no column 'body'.*id, text, source"):
        run("--input", jsonl, "--output", str(tmp_path / "o2"), "--text-column", "body")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SystemExit, match="empty"):
        run("--input", str(tmp_path / "empty.jsonl"), "--output", str(tmp_path / "o3"))
    with pytest.raises(SystemExit, match="refusing to start.*--memory-limit"):
        run("--input", jsonl, "--output", str(tmp_path / "o4"), "--memory-limit", "100MiB")
    with pytest.raises(SystemExit, match="refusing to start.*need 4 CPUs; the Ray cluster has 3"):
        run("--input", jsonl, "--output", str(tmp_path / "o5"), "--actors", "3")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))
    # A row without a text: the actor's error, naming the row, not Ray's wrapper.
    (tmp_path / "null.jsonl").write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": null}\n')
    with pytest.raises(SystemExit, match=r"embedding failed: ValueError: column 'text': a row has None .*'id': 'b'"):
        run("--input", str(tmp_path / "null.jsonl"), "--output", str(tmp_path / "o6"))


def test_help_explains_the_sizing():
    out = subprocess.run([sys.executable, str(REPO / "examples" / "ray_embed.py"), "--help"], capture_output=True,
                         text=True, check=True, env={**os.environ, "COLUMNS": "120"}).stdout
    for words in ("--actors", "--threads", "--memory-limit", "map<int32, float32>", "num_gpus", "memory plan"):
        assert words in out, words
