#include "m3/backend/cpu/gemm_inputs.h"

#include <immintrin.h>

// gcc 12 warns about the undefined registers inside its own AVX-512 masked-load intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

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

// gelu_erf on 16 lanes: the same clamp, polynomials and division, so the two agree to an ulp.
__attribute__((target("avx512f"))) inline __m512 gelu_erf_avx512(__m512 v) {
  const __m512 x = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752f)),
                                               _mm512_set1_ps(-4.f)),
                                 _mm512_set1_ps(4.f));
  const __m512 z = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(-2.72614225801306e-10f);
  for (float c : {2.77068142495902e-08f, -2.10102402082508e-06f, -5.69250639462346e-05f, -7.34990630326855e-04f,
                  -2.95459980854025e-03f, -1.60960333262415e-02f}) {
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(c));
  }
  __m512 q = _mm512_set1_ps(-1.45660718464996e-05f);
  for (float c : {-2.13374055278905e-04f, -1.68282697438203e-03f, -7.37332916720468e-03f, -1.42647390514189e-02f}) {
    q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(c));
  }
  const __m512 erf = _mm512_div_ps(_mm512_mul_ps(x, p), q);
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(_mm512_set1_ps(1.f), erf));
}

// One row of int8_epilogue in AVX-512 (the GELU loop did not vectorize, and was an eighth
// of int8's time on short texts). Tails are masked; kTanh stays on the scalar path.
__attribute__((target("avx512f"))) void int8_epilogue_row_avx512(const float* a, int64_t cols, float s,
                                                                 const float* channel_scales, const float* bias,
                                                                 Epilogue epilogue, float* out) {
  const __m512 row_scale = _mm512_set1_ps(s);
  for (int64_t c = 0; c < cols; c += 16) {
    const __mmask16 m = cols - c >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (cols - c)) - 1);
    const __m512 v = _mm512_fmadd_ps(_mm512_mul_ps(row_scale, _mm512_maskz_loadu_ps(m, channel_scales + c)),
                                     _mm512_maskz_loadu_ps(m, a + c), _mm512_maskz_loadu_ps(m, bias + c));
    __m512 y = v;
    if (epilogue == Epilogue::kGelu) y = gelu_erf_avx512(v);
    if (epilogue == Epilogue::kRelu) y = _mm512_max_ps(v, _mm512_setzero_ps());
    if (epilogue == Epilogue::kResidual) y = _mm512_add_ps(_mm512_maskz_loadu_ps(m, out + c), v);
    _mm512_mask_storeu_ps(out + c, m, y);
  }
}

const bool kHaveAvx512 = __builtin_cpu_supports("avx512f");

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
    if (kHaveAvx512 && epilogue != Epilogue::kTanh) {
      int8_epilogue_row_avx512(a, cols, s, channel_scales, bias, epilogue, out);
      continue;
    }
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
