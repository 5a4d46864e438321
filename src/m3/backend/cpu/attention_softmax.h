// The softmax steps of tiled attention over one block of score rows: the running max,
// then e^(s - max) written back with its sum, in AVX-512 where the CPU has it (a
// vectorized exp: libm's expf is scalar and was a quarter of the time on long inputs).
// The 1/sum is not applied here: the caller scales the (head_dim-wide) output rows of
// P V instead of the (L-wide) rows of P.
#pragma once

#include <cstdint>

namespace m3 {

float row_max(const float* row, int64_t n);
// row[j] = exp(row[j] - shift) for j < n (shift >= every row[j]); returns their sum.
float exp_row_minus(float* row, int64_t n, float shift);
// p[j] = bfloat16(exp_for_bf16(row[j], shift)) (round to nearest even) for j < n and 0 up to n
// rounded up to 16, in one pass that never stores the float32 exps; returns their float32 sum.
// Only on a CPU with AVX512-BF16 (bf16_attention_kernels_supported).
float exp_row_to_bf16(const float* row, int64_t n, float shift, uint16_t* p);

// One row's step of the online softmax over a block of n scores, with P in bf16 as
// exp_row_to_bf16 writes it; the same numbers as taking the block's max, then its exps
// against max(running max, block max). The first block does just that (two passes). A later
// block's exps are taken against the running max in one pass that also finds the block's
// max, and only a block that raises the max is taken again: once the max settles, a block
// costs one pass, not two (the max pass was 5% of an 8192-token bf16 pass on AMX). Shifting
// by the exact max matters: the largest numerator is then exactly 1, not a rounded bf16, and
// in a peaked row it weighs most (a shift a little off the max made P V 3x less accurate).
// Updates max and sum; returns what the row's output so far must be multiplied by (1:
// nothing to do; unused after the first block). Only on a CPU with AVX512-BF16.
float online_softmax_block_bf16(const float* row, int64_t n, bool first, float& max, float& sum, uint16_t* p);

// exp_row_minus(row, n, row_max(row, n)).
float exp_shifted_row(float* row, int64_t n);

// e^(x - shift) as the numerators rounded to bf16 take it, x <= shift: 2^t with t = x log2e -
// shift log2e (one FMA), a degree-4 polynomial for 2^(t - round(t)); relative error under
// 3e-6 + 1.5e-7 |x - shift|, and far below the shift it underflows to 0. The tests and the
// Python oracle (test_low_precision_emulation.py) compute it the same way.
float exp_for_bf16(float x, float shift);

// exp(x) for x <= 0 as the AVX-512 path computes it (range reduction to |g| <= ln2/2 with a two-part ln2,
// degree-6 polynomial, relative error < 2e-7); the scalar fallback and the tests use it.
float exp_nonpositive(float x);

}  // namespace m3
