#include "m3/backend/cpu/gemm_inputs.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace m3 {
namespace {

inline uint16_t to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest even (activations are finite)
  return static_cast<uint16_t>(bits >> 16);
}

// erf(x) for |x| <= 4 as p(x) / q(x) (the approximation Eigen and XLA use for float);
// beyond 4, erf is +-1 in float.
inline float fast_erf(float x) {
  x = std::clamp(x, -4.f, 4.f);
  const float z = x * x;
  float p = -2.72614225801306e-10f;
  p = p * z + 2.77068142495902e-08f;
  p = p * z + -2.10102402082508e-06f;
  p = p * z + -5.69250639462346e-05f;
  p = p * z + -7.34990630326855e-04f;
  p = p * z + -2.95459980854025e-03f;
  p = p * z + -1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * z + -2.13374055278905e-04f;
  q = q * z + -1.68282697438203e-03f;
  q = q * z + -7.37332916720468e-03f;
  q = q * z + -1.42647390514189e-02f;
  return x * p / q;
}

}  // namespace

float gelu_erf(float x) { return 0.5f * x * (1.f + fast_erf(x * 0.70710678118654752f)); }

void round_rows_to_bf16(const float* x, int64_t rows, int64_t cols, uint16_t* y) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * cols;
    uint16_t* out = y + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) out[c] = to_bf16(in[c]);
  }
}

void quantize_rows_to_int8(const float* x, int64_t rows, int64_t cols, int8_t* q, float* scales) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * cols;
    int8_t* out = q + r * cols;
    float most = 0.f;
#pragma omp simd reduction(max : most)
    for (int64_t c = 0; c < cols; ++c) most = std::max(most, std::fabs(in[c]));
    const float scale = most > 0.f ? most / 127.f : 1.f;
    const float inverse = 1.f / scale;
    scales[r] = scale;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) out[c] = static_cast<int8_t>(std::nearbyint(in[c] * inverse));
  }
}

void int8_epilogue(const float* acc, int64_t rows, int64_t cols, const float* row_scales,
                   const float* channel_scales, const float* bias, Epilogue epilogue, float* y) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = acc + r * cols;
    float* out = y + r * cols;
    const float s = row_scales[r];
    switch (epilogue) {
      case Epilogue::kStore:
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) out[c] = s * channel_scales[c] * a[c] + bias[c];
        break;
      case Epilogue::kGelu:
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) out[c] = gelu_erf(s * channel_scales[c] * a[c] + bias[c]);
        break;
      case Epilogue::kResidual:
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) out[c] += s * channel_scales[c] * a[c] + bias[c];
        break;
      case Epilogue::kRelu:
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) out[c] = std::max(s * channel_scales[c] * a[c] + bias[c], 0.f);
        break;
      case Epilogue::kTanh:
        for (int64_t c = 0; c < cols; ++c) out[c] = std::tanh(s * channel_scales[c] * a[c] + bias[c]);
        break;
    }
  }
}

}  // namespace m3
