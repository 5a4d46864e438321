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
__attribute__((target("avx512f"))) void int8_epilogue_row_avx512(const float* a, int64_t cols, float s, float m,
                                                                 const Int8Channels& ch, Epilogue epilogue,
                                                                 float* out) {
  const __m512 row_scale = _mm512_set1_ps(s), row_min = _mm512_set1_ps(m);
  for (int64_t c = 0; c < cols; c += 16) {
    const __mmask16 k = cols - c >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (cols - c)) - 1);
    const __m512 offset =
        _mm512_fmadd_ps(row_min, _mm512_maskz_loadu_ps(k, ch.sums + c), _mm512_maskz_loadu_ps(k, ch.bias + c));
    const __m512 v = _mm512_fmadd_ps(_mm512_mul_ps(row_scale, _mm512_maskz_loadu_ps(k, ch.scales + c)),
                                     _mm512_maskz_loadu_ps(k, a + c), offset);
    __m512 y = v;
    if (epilogue == Epilogue::kGelu) y = gelu_erf_avx512(v);
    if (epilogue == Epilogue::kRelu) y = _mm512_max_ps(v, _mm512_setzero_ps());
    if (epilogue == Epilogue::kResidual) y = _mm512_add_ps(_mm512_maskz_loadu_ps(k, out + c), v);
    _mm512_mask_storeu_ps(out + c, k, y);
  }
}

// One row of quantize_rows_to_uint8 in AVX-512 (gcc leaves the float-to-byte conversion
// scalar, which made the pass 4x slower than symmetric int8's): the same arithmetic, so
// the two agree bit for bit. Returns the row's scale and writes its minimum.
__attribute__((target("avx512f,avx512bw,avx512vl"))) float quantize_row_to_uint8_avx512(const float* in, int64_t cols,
                                                                                        uint8_t* out, float* minimum) {
  const __m512 first = _mm512_set1_ps(in[0]);
  __m512 lo = first, hi = first;
  for (int64_t c = 0; c < cols; c += 16) {
    const __mmask16 k = cols - c >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (cols - c)) - 1);
    const __m512 x = _mm512_mask_loadu_ps(first, k, in + c);  // a tail's empty lanes hold in[0]
    lo = _mm512_min_ps(lo, x);
    hi = _mm512_max_ps(hi, x);
  }
  const float low = _mm512_reduce_min_ps(lo), high = _mm512_reduce_max_ps(hi);
  const float scale = high > low ? (high - low) / 255.f : 1.f;
  const __m512 inverse = _mm512_set1_ps(1.f / scale), shift = _mm512_set1_ps(low);
  for (int64_t c = 0; c < cols; c += 16) {
    const __mmask16 k = cols - c >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (cols - c)) - 1);
    const __m512 t = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, in + c), shift), inverse);
    // Round to nearest even (the default mode, as nearbyint), then saturate to 0..255.
    _mm_mask_storeu_epi8(out + c, k, _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(t)));
  }
  *minimum = low;
  return scale;
}

const bool kHaveAvx512 = __builtin_cpu_supports("avx512f");
const bool kHaveAvx512Bw = kHaveAvx512 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");

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

void quantize_rows_to_uint8(const float* x, int64_t rows, int64_t cols, uint8_t* q, float* scales, float* minima) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * cols;
    uint8_t* out = q + r * cols;
    if (kHaveAvx512Bw) {
      scales[r] = quantize_row_to_uint8_avx512(in, cols, out, minima + r);
      continue;
    }
    float lo = in[0], hi = in[0];
#pragma omp simd reduction(min : lo) reduction(max : hi)
    for (int64_t c = 0; c < cols; ++c) {
      lo = std::min(lo, in[c]);
      hi = std::max(hi, in[c]);
    }
    const float scale = hi > lo ? (hi - lo) / 255.f : 1.f;  // a constant row is all offset
    const float inverse = 1.f / scale;
    scales[r] = scale;
    minima[r] = lo;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      out[c] = static_cast<uint8_t>(std::min(std::nearbyint((in[c] - lo) * inverse), 255.f));
    }
  }
}

// One output, y = act(s_r * s_c * acc + m_r * sum_c + b_c), for the scalar path.
static inline float int8_output(float acc, float s, float m, const Int8Channels& ch, int64_t c) {
  return s * ch.scales[c] * acc + (m * ch.sums[c] + ch.bias[c]);
}

void int8_epilogue(const float* acc, int64_t rows, int64_t cols, const float* row_scales, const float* row_minima,
                   const Int8Channels& ch, Epilogue epilogue, float* y) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = acc + r * cols;
    float* out = y + r * cols;
    const float s = row_scales[r], m = row_minima[r];
    if (kHaveAvx512 && epilogue != Epilogue::kTanh) {
      int8_epilogue_row_avx512(a, cols, s, m, ch, epilogue, out);
      continue;
    }
    switch (epilogue) {
      case Epilogue::kStore:
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) out[c] = int8_output(a[c], s, m, ch, c);
        break;
      case Epilogue::kGelu:
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) out[c] = gelu_erf(int8_output(a[c], s, m, ch, c));
        break;
      case Epilogue::kResidual:
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) out[c] += int8_output(a[c], s, m, ch, c);
        break;
      case Epilogue::kRelu:
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) out[c] = std::max(int8_output(a[c], s, m, ch, c), 0.f);
        break;
      case Epilogue::kTanh:
        for (int64_t c = 0; c < cols; ++c) out[c] = std::tanh(int8_output(a[c], s, m, ch, c));
        break;
    }
  }
}

}  // namespace m3
