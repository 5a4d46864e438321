// The cheap passes around a low-precision GEMM: float32 activations rounded to bfloat16
// or quantized to int8 with one scale per token (row), and, for int8, the epilogue that
// turns integer accumulators back into y = act(s_row * s_channel * acc + b).
#pragma once

#include <cstdint>

#include "m3/backend/backend.h"

namespace m3 {

// y = bf16(x), round to nearest even, rows x cols.
void round_rows_to_bf16(const float* x, int64_t rows, int64_t cols, uint16_t* y);

// Symmetric per row: scales[r] = max|x[r, :]| / 127, q = round(x / scales[r]).
void quantize_rows_to_int8(const float* x, int64_t rows, int64_t cols, int8_t* q, float* scales);

// y[r, c] (epilogue) row_scales[r] * channel_scales[c] * acc[r, c] + bias[c].
// acc may equal y except for kResidual. `bias` has cols entries.
void int8_epilogue(const float* acc, int64_t rows, int64_t cols, const float* row_scales,
                   const float* channel_scales, const float* bias, Epilogue epilogue, float* y);

// GELU with erf, as PyTorch's default nn.GELU; erf from a rational approximation with
// |error| < 1e-7 that the compiler vectorizes (std::erf does not).
float gelu_erf(float x);

}  // namespace m3
