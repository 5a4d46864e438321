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
