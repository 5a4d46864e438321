"""Arithmetic a model does for a workload, and the machine's ceiling for it.

FLOPs of an XLM-R encoder pass over packed sequences (no padding), with BGE-M3's heads:
per layer and token, the four attention projections (4 h^2) and the FFN (2 h f) as
multiply-adds, 2 FLOPs each; per layer and sequence of L tokens, attention's two L x L x h
products (Q K^T and P V, 2 L^2 h FLOPs each); then the ColBERT head (2 h^2 per token) and
the sparse head (2 h per token). The softmax, layer norms and GELU are left out (a few
percent). For BGE-M3 this is about 0.62 GFLOP a token at 128 tokens and 1.41 at 8192.

The ceiling is bench/peak_flops.cpp's (m3bench-peak): fp32 FMA, bf16 and int8 dot products
on every core with registers only, and AMX's tile products where the CPU has them. A dtype's
share = its FLOP/s / the fastest instruction its GEMMs can run on (oneDNN takes AMX for bf16
and int8 where it is there, so on such a CPU the AMX figure is the ceiling).
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEAK_BINARY = REPO / "build" / "m3bench-peak"
CEILING_KEYS = {"fp32": ("fp32_fma_gops",), "bf16": ("bf16_dot_gops", "amx_bf16_gops"),
                "int8": ("int8_dot_gops", "amx_int8_gops")}


def encoder_flops(config: dict, lengths: list[int], colbert: bool = True, sparse: bool = True) -> float:
    """FLOPs of one pass over sequences of these lengths (config: a config.json dict)."""
    h, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    tokens = sum(lengths)
    per_token = layers * 2 * (4 * h * h + 2 * h * f) + (2 * h * h if colbert else 0) + (2 * h if sparse else 0)
    attention = layers * sum(4 * L * L * h for L in lengths)
    return float(per_token * tokens + attention)


def measure_ceiling(threads: int, seconds: float = 1.0, repeat: int = 3, binary: Path = PEAK_BINARY) -> dict | None:
    """m3bench-peak's figures (G ops/s over `threads` threads), or None when it is not built."""
    if not binary.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "peak.json"
        subprocess.run([str(binary), "--threads", str(threads), "--seconds", str(seconds), "--repeat", str(repeat),
                        "--json", str(path)], capture_output=True, text=True, check=True)
        return json.loads(path.read_text())


def ceiling_key(dtype: str, ceiling: dict) -> str | None:
    """The key of the fastest instruction measured for this dtype (None when none was)."""
    measured = [k for k in CEILING_KEYS.get(dtype, ()) if ceiling.get(k)]
    return max(measured, key=lambda k: ceiling[k]) if measured else None


def ceiling_gops(dtype: str, ceiling: dict) -> float | None:
    key = ceiling_key(dtype, ceiling)
    return ceiling[key] if key else None


def share_of_ceiling(tokens_per_second: float, flops: float, tokens: int, dtype: str, ceiling: dict) -> float | None:
    """The fraction of the dtype's ceiling that `tokens_per_second` on this workload reaches."""
    peak = ceiling_gops(dtype, ceiling)
    if not peak:
        return None
    return tokens_per_second * (flops / tokens) / (peak * 1e9)
