"""m3embed --dtype bf16 / int8 against FlagEmbedding computing the same arithmetic.

The fixture models are deliberately chaotic (large random gains, see make_fixtures.py), so
any rounding grows from layer to layer and their float32 goldens cannot tell a correct
bf16 path from a subtly wrong one. Here the oracle is FlagEmbedding's BGEM3FlagModel with
every encoder Linear replaced by the rounding m3embed documents:

  bf16: y = bf16(x) bf16(W)^T + b, float32 accumulation; attention on bf16 Q, K, V, flash-
        style over blocks of 128 keys as the CPU kernels run it: each block's numerators
        e^(s - running max), computed as the kernels do (exp_for_bf16), rounded to bf16
        before P V, the rows so far rescaled when the max grows, and the float32 sum of
        the unrounded numerators divided out at the end
  int8: y = s_row * s_channel * (q(x) q(W)^T) + m_row * s_channel * sum(q(W_channel)) + b, with
        q(x) = round((x - m_row) / s_row) in 0..255, m_row = min(x_row), s_row = (max(x_row) - m_row) / 255
        (in float32, as quantize_rows_to_uint8), q(W) = round(W / s_channel), s_channel =
        max|W_channel| / 127 (round half to even); attention with each head's Q and K rows
        on a symmetric int8 grid, scores (float(q(Q) . q(K)) * (s_K * scale)) * s_Q, V
        rounded to bf16, the same blocked softmax and numerators as bf16

Everything else (embeddings, layer norms, heads) stays float32, as in m3embed.
Then m3embed must match that oracle several times more tightly than it matches float32
(not exactly: a value on a rounding boundary may round the other way after a float32
summation in another order, and these models amplify that too).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fixture_env import BINARY, FIXTURES, import_bge_m3

pytestmark = pytest.mark.skipif(not BINARY, reason="M3_BINARY is not set (ctest sets it)")


def _bf16(t):
    import torch
    return t.to(torch.bfloat16).to(torch.float32)


def _quantize(t, dim):
    import torch
    scale = t.abs().amax(dim=dim, keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(t / scale).clamp(-127, 127), scale


def _quantize_rows_uint8(x):
    """quantize_rows_to_uint8, step by step in float32: x ~= minimum + scale * q."""
    import torch
    lo, hi = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    scale = torch.where(hi > lo, (hi - lo) / 255.0, torch.ones_like(hi))
    inverse = 1.0 / scale
    return torch.round((x - lo) * inverse).clamp(max=255), scale, lo


def _quantize_head_rows(x):
    """quantize_query_int8 / pack_keys_int8, in float32: x ~= scale * q, q in -127..127."""
    import torch
    scale = x.abs().amax(dim=-1, keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    inverse = 1.0 / scale
    return torch.round(x * inverse).clamp(-127, 127), scale


def emulate(linear, dtype: str, attention_input: bool = False) -> None:
    """Replaces linear.forward by m3embed's rounding for `dtype`. With bf16, attention runs on
    bfloat16 Q, K and V: the query/key/value outputs are rounded too. With int8, the
    attention (blocked_attention) quantizes Q and K and rounds V itself."""
    import torch
    import torch.nn.functional as F

    weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()
    if dtype == "bf16":
        w = _bf16(weight)
        if attention_input:
            linear.forward = lambda x: _bf16(F.linear(_bf16(x), w, bias))
        else:
            linear.forward = lambda x: F.linear(_bf16(x), w, bias)
    else:
        qw, s_channel = _quantize(weight.double(), dim=1)  # [out, 1]
        # The weights' scaled sums, a float32 product as in pack_linear_weights.
        sums = (s_channel.float() * qw.sum(dim=1, keepdim=True).float()).double()

        def forward(x):
            qx, s_row, m_row = (t.double() for t in _quantize_rows_uint8(x.float()))  # [..., 1]
            acc = qx @ qw.T  # exact: byte products summed in double
            return (acc * s_row * s_channel.T + m_row * sums.T + bias.double()).to(torch.float32)

        linear.forward = forward


KEY_BLOCK = 128  # kBf16KeyBlock and kFp32KeyBlock in src/m3/backend/cpu/cpu_backend.h

# exp_for_bf16 in src/m3/backend/cpu/attention_softmax.cpp, step by step in float32: the
# numerators are rounded to bf16 next, so a value an ulp away from the kernels' may round
# to the other neighbour, and these chaotic models amplify that.
LOG2E = 1.44269504088896341
EXP2_POLY = (0.9999992847442627, 0.6931217908859253, 0.240247443318367, 0.05591785907745361,
             0.009570102207362652)  # kP0..kP4


def _f32(x: float) -> float:
    return float(np.float32(x))


def _fma(a, b, c):
    """float32 fma(a, b, c): the product is exact in double, one rounding after the sum (a
    second, to float32, differs from a true fma only on exact ties, about 2^-29 of the time)."""
    import torch
    return (a.double() * b + c).float()


def exp_for_bf16(x, shift):
    import torch
    shift_log2e = (shift * _f32(LOG2E)).float()  # a float32 product, as `shift * kLog2e`
    # Padding keys (a mask of float32's lowest) give -inf: clamped where 2^t is 0 anyway.
    t = _fma(x, _f32(LOG2E), -shift_log2e.double()).clamp(min=-300.0)
    r = torch.round(t)  # half to even, as roundscale and nearbyint
    f = t - r  # exact: |f| <= 1/2
    p = torch.full_like(f, _f32(EXP2_POLY[4]))
    for c in reversed(EXP2_POLY[:4]):
        p = _fma(p, f, _f32(c))
    return (p.double() * torch.exp2(r.double())).float()  # scalef: exact, or one rounding below 2^-126


def int8_scores(query, key):
    """The int8 kernels' scores (scores_block_int8): an exact integer dot of the heads' int8
    rows, then (float(dot) * key_factor) * q_scale in float32, key_factor = s_K * scale."""
    import torch
    qq, q_scale = _quantize_head_rows(query)
    qk, k_scale = _quantize_head_rows(key)
    scale = 1.0 / torch.sqrt(torch.tensor(float(query.size(-1)), dtype=torch.float32))  # 1.0f / sqrt(d)
    key_factor = (k_scale * scale).transpose(2, 3)  # [..., 1, keys]
    dot = torch.matmul(qq.double(), qk.double().transpose(2, 3)).float()  # exact integers
    return dot * key_factor * q_scale


def blocked_attention(dtype: str):
    """transformers' eager attention with m3embed's blocked online softmax and bf16 numerators,
    from bf16 Q, K, V (rounded by their Linears) or, with int8, int8 scores and bf16 V."""
    import torch

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if dtype == "int8":
            return _blocked_attention(int8_scores(query, key), _bf16(value), attention_mask)
        if scaling is None:
            scaling = query.size(-1) ** -0.5
        return _blocked_attention(torch.matmul(query, key.transpose(2, 3)) * scaling, value, attention_mask)
    return attention


def _blocked_attention(scores, value, attention_mask):
    import torch

    if attention_mask is not None:
        scores = scores + attention_mask
    out = running_max = running_sum = None
    for k0 in range(0, scores.size(-1), KEY_BLOCK):  # padding is on the right: block 0 has real keys
        block = scores[..., k0:k0 + KEY_BLOCK]
        block_max = block.amax(dim=-1, keepdim=True)
        new_max = block_max if out is None else torch.maximum(running_max, block_max)
        numerators = exp_for_bf16(block, new_max)
        pv = torch.matmul(_bf16(numerators), value[..., k0:k0 + KEY_BLOCK, :])
        if out is None:
            out, running_sum = pv, numerators.sum(dim=-1, keepdim=True)
        else:
            rescale = torch.exp(running_max - new_max)
            out = out * rescale + pv
            running_sum = running_sum * rescale + numerators.sum(dim=-1, keepdim=True)
        running_max = new_max
    out = out / running_sum
    return out.transpose(1, 2).contiguous(), None


def oracle_outputs(model: str, dtype: str, texts: list[str], max_len: int):
    import transformers.models.xlm_roberta.modeling_xlm_roberta as xlmr

    cls = import_bge_m3()
    m = cls(str(FIXTURES / model), use_fp16=False, devices="cpu")
    encoder = m.model.model if hasattr(m.model, "model") else m.model
    original = xlmr.eager_attention_forward
    encoder.config._attn_implementation = "eager"
    xlmr.eager_attention_forward = blocked_attention(dtype)
    try:
        for layer in encoder.encoder.layer:
            for lin in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
                emulate(lin, dtype, attention_input=True)
            for lin in (layer.attention.output.dense, layer.intermediate.dense, layer.output.dense):
                emulate(lin, dtype)
        return m.encode(texts, batch_size=4, max_length=max_len,
                        return_dense=True, return_sparse=True, return_colbert_vecs=True)
    finally:
        xlmr.eager_attention_forward = original


def m3embed_outputs(tmp_path: Path, model: str, dtype: str, texts: list[str], max_len: int) -> list[dict]:
    inp, out = tmp_path / "in.jsonl", tmp_path / f"out-{dtype}.jsonl"
    inp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    run = subprocess.run([BINARY, "encode", "--model", str(FIXTURES / model), "--input", str(inp), "--output",
                          str(out), "--dense", "--sparse", "--colbert", "--max-length", str(max_len), "--dtype", dtype],
                         check=True, capture_output=True, text=True, timeout=300)
    fallback = [line for line in run.stderr.splitlines() if "computing in fp32 instead" in line]
    if fallback:  # this CPU cannot run the dtype, and m3embed said so: nothing of it to check here
        pytest.skip(f"{dtype} cannot run on this CPU: {fallback[0]}")
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
@pytest.mark.parametrize("model", ["tiny-st", "tiny-bin"])
def test_matches_flagembedding_with_the_same_rounding(tmp_path, model, dtype):
    golden = json.loads((FIXTURES / "golden" / f"{model}.json").read_text(encoding="utf-8"))
    texts, max_len = golden["texts"], golden["max_length"]
    got = m3embed_outputs(tmp_path, model, dtype, texts, max_len)  # skips first where the CPU cannot
    want = oracle_outputs(model, dtype, texts, max_len)
    assert len(got) == len(texts)

    dense_want = np.asarray(want["dense_vecs"], dtype=np.float64)
    dense_got = np.asarray([g["dense_vecs"] for g in got], dtype=np.float64)
    dense_fp32 = np.asarray(golden["dense_vecs"], dtype=np.float64)
    err_oracle = np.abs(dense_got - dense_want).max()
    err_fp32 = np.abs(dense_got - dense_fp32).max()
    print(f"{model} {dtype}: dense max abs error vs same-rounding oracle {err_oracle:.2e}, vs fp32 {err_fp32:.2e}")
    # The rounding path ran (it is not float32) and is the documented one.
    assert err_fp32 > 1e-4
    # A text either stays on the oracle's path (most match it to ~1e-7, which no other
    # rounding gives) or, where a value on a rounding boundary went the other way after a
    # float32 sum in another order, drifts: these chaotic models amplify one such step to
    # ~1e-3, but never as far as float32 is. How many stay on the path depends on how many
    # roundings a text meets and how fine their steps are (an ulp of disagreement crosses a
    # step twice as often when steps are half as wide): on tiny-st nearly all; on tiny-bin
    # a third to a half, the short texts, with bf16 (every GEMM input, Q, K, V and P rounded) and
    # with int8 (255 steps over each row's range). Leave out one documented rounding (P
    # unrounded, or int8 rows quantized symmetrically) and no text stays on the path.
    per_text_oracle_all = np.abs(dense_got - dense_want).max(axis=1)
    per_text_fp32_all = np.abs(dense_got - dense_fp32).max(axis=1)
    print(f"  median per-text error: {np.median(per_text_oracle_all):.2e} vs oracle, "
          f"{np.median(per_text_fp32_all):.2e} vs fp32")
    # Which texts drift depends on the order of the GEMMs' float32 sums, which is the CPU's:
    # on one with AMX (oneDNN's bf16 GEMMs on tiles) tiny-bin bf16 kept 9 of its 28 texts on
    # the path, the worst drifted one 1/2.97 of float32's error; with AVX512-BF16, 11, 1/3.6.
    assert cosines(dense_got, dense_want).min() >= 0.99
    assert err_oracle < err_fp32 / 2
    assert (per_text_oracle_all < per_text_fp32_all).all(), "a text is nearer float32 than the same-rounding oracle"
    # On the path: 1000x nearer the oracle than float32. The two groups lie far apart (texts
    # on it are within ~1e-6 of the oracle, drifted ones ~1e-3 away, float32 ~1e-2).
    on_path = [i for i in range(len(texts)) if per_text_oracle_all[i] < per_text_fp32_all[i] / 1000]
    print(f"  {len(on_path)}/{len(texts)} texts on the oracle's path")
    assert len(on_path) >= len(texts) / 4
    # int8's per-row quantization amplifies a crossing most: one value on the other side of
    # a bf16 or int8 step can move a whole row's scale or minimum, and that text then drifts.
    # So its token-by-token checks take the texts still on the oracle's path.
    checked = on_path if dtype == "int8" else range(len(texts))

    colbert_cos, lexical_diff, lexical_diff_fp32 = [], [], []
    for i in checked:
        g = got[i]
        cw = np.asarray(want["colbert_vecs"][i], dtype=np.float64)
        cg = np.asarray(g["colbert_vecs"], dtype=np.float64)
        assert cg.shape == cw.shape, f"text {i}"
        colbert_cos.extend(cosines(cg, cw).tolist())
        lw = {str(k): float(v) for k, v in want["lexical_weights"][i].items()}
        lg = {str(k): float(v) for k, v in g["lexical_weights"].items()}
        shared = set(lw) & set(lg)
        # A weight near zero may land on either side of the ReLU: only those may be missing.
        for k in set(lw) ^ set(lg):
            assert max(lw.get(k, 0.0), lg.get(k, 0.0)) < 0.05, f"text {i} token {k}"
        lexical_diff.extend(abs(lw[k] - lg[k]) for k in shared)
        l32 = {str(k): float(v) for k, v in golden["lexical_weights"][i].items()}
        lexical_diff_fp32.extend(abs(l32[k] - lg[k]) for k in set(l32) & set(lg))
    colbert_cos = np.asarray(colbert_cos)
    assert colbert_cos.min() >= 0.98 and np.median(colbert_cos) >= 0.9999, \
        f"ColBERT cosine to the oracle: min {colbert_cos.min()}, median {np.median(colbert_cos)}"
    lexical_diff = np.asarray(lexical_diff)
    median_fp32 = np.median(lexical_diff_fp32)
    assert np.median(lexical_diff) < median_fp32 / 3 and lexical_diff.max() < 0.2, \
        f"lexical weight differences to the oracle: median {np.median(lexical_diff)} (to fp32: {median_fp32}), " \
        f"max {lexical_diff.max()}"
