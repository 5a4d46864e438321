// The cheap passes around a low-precision GEMM: float32 activations rounded to bfloat16
// or quantized to 8 bits with a scale and an offset per token (row), and, for int8, the
// epilogue that turns integer accumulators back into y = act(x W^T + b).
#pragma once

#include <cstdint>

#include "m3/backend/backend.h"

namespace m3 {

// y = bf16(x), round to nearest even, rows x cols.
void round_rows_to_bf16(const float* x, int64_t rows, int64_t cols, uint16_t* y);

// Asymmetric per row, over the row's own range: x[r, c] ~= minima[r] + scales[r] * q[r, c],
// q = round((x - min) / scale) in 0..255, scales[r] = (max - min) / 255. The range is the
// row's, not [-max|x|, max|x|]: a GELU output (>= -0.17) gets twice the resolution of a
// symmetric int8, and unsigned x signed bytes is what VNNI's vpdpbusd multiplies natively.
void quantize_rows_to_uint8(const float* x, int64_t rows, int64_t cols, uint8_t* q, float* scales, float* minima);

// The int8 weights' side of the epilogue, per output channel c: W[c, :] ~= scales[c] * qW[c, :],
// and sums[c] = scales[c] * sum_k qW[c, k] (what the row minima multiply).
struct Int8Channels {
  const float* scales;
  const float* sums;
  const float* bias;  // cols entries (zeros where the linear has none)
};

// y[r, c] (epilogue) row_scales[r] * scales[c] * acc[r, c] + row_minima[r] * sums[c] + bias[c],
// which is x W^T + b for x and W quantized as above. acc may equal y except for kResidual.
void int8_epilogue(const float* acc, int64_t rows, int64_t cols, const float* row_scales, const float* row_minima,
                   const Int8Channels& channels, Epilogue epilogue, float* y);

// GELU with erf, as PyTorch's default nn.GELU; erf from a rational approximation with
// |error| < 1e-7 that the compiler vectorizes (std::erf does not).
float gelu_erf(float x);

}  // namespace m3
