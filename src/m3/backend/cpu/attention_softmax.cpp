#include "m3/backend/cpu/attention_softmax.h"

#include <immintrin.h>

// gcc 12 warns about the undefined registers inside its own AVX-512 reduce intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace m3 {
namespace {

constexpr float kLog2e = 1.44269504088896341f;
// ln 2 split in two (Cody and Waite) so x - r ln2 stays exact for |r| up to 126.
constexpr float kLn2High = 0.693145751953125f;
constexpr float kLn2Low = 1.42860682030941723e-6f;
constexpr float kLowest = -87.0f;  // exp(-87) ~ 1.6e-38: the smallest normal float is near

// Taylor coefficients of e^g, 1/k!, k = 2..6.
constexpr float kC2 = 0.5f, kC3 = 1.0f / 6, kC4 = 1.0f / 24, kC5 = 1.0f / 120, kC6 = 1.0f / 720;

__attribute__((target("avx512f"))) inline __m512 exp_avx512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(kLowest));
  const __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 g = _mm512_fnmadd_ps(r, _mm512_set1_ps(kLn2High), x);  // x - r ln2, |g| <= ln2 / 2
  g = _mm512_fnmadd_ps(r, _mm512_set1_ps(kLn2Low), g);
  __m512 p = _mm512_set1_ps(kC6);
  p = _mm512_fmadd_ps(p, g, _mm512_set1_ps(kC5));
  p = _mm512_fmadd_ps(p, g, _mm512_set1_ps(kC4));
  p = _mm512_fmadd_ps(p, g, _mm512_set1_ps(kC3));
  p = _mm512_fmadd_ps(p, g, _mm512_set1_ps(kC2));
  p = _mm512_fmadd_ps(p, g, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, g, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, r);  // p * 2^r
}

// 2^f for |f| <= 1/2, degree 4, fitted for relative error (2.7e-6 at most in float32 Horner):
// numerators that are rounded to bf16 next (relative step 2^-8) need no more. With the shift
// folded into the first FMA and no clamp, it is 6 arithmetic operations per 16 scores where
// exp_avx512 after a subtraction takes 11 (+3-4% on 8192-token inputs, which are ~10% exp).
constexpr float kP0 = 0.9999992847442627f, kP1 = 0.6931217908859253f, kP2 = 0.240247443318367f,
                kP3 = 0.05591785907745361f, kP4 = 0.009570102207362652f;

// e^(x - shift) as 2^t, t = x log2e - shift log2e in one FMA, t = r + f with r = round(t).
// Far below the max, 2^r underflows to 0 in scalef: no clamp is needed.
__attribute__((target("avx512f"))) inline __m512 exp_for_bf16_avx512(__m512 x, __m512 shift_log2e) {
  const __m512 t = _mm512_fmsub_ps(x, _mm512_set1_ps(kLog2e), shift_log2e);
  const __m512 r = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, r);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(kP4), f, _mm512_set1_ps(kP3));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kP2));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kP1));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kP0));
  return _mm512_scalef_ps(p, r);
}

__attribute__((target("avx512f"))) float row_max_avx512(const float* row, int64_t n) {
  __m512 most = _mm512_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) most = _mm512_max_ps(most, _mm512_loadu_ps(row + j));
  const __mmask16 tail = static_cast<__mmask16>((1u << (n - j)) - 1);
  most = _mm512_mask_max_ps(most, tail, most, _mm512_maskz_loadu_ps(tail, row + j));
  return _mm512_reduce_max_ps(most);
}

__attribute__((target("avx512f"))) float exp_row_minus_avx512(float* row, int64_t n, float shift) {
  const __m512 max = _mm512_set1_ps(shift);
  __m512 sum = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(row + j), max));
    _mm512_storeu_ps(row + j, e);
    sum = _mm512_add_ps(sum, e);
  }
  const __mmask16 tail = static_cast<__mmask16>((1u << (n - j)) - 1);
  if (tail != 0) {
    const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, row + j), max));
    _mm512_mask_storeu_ps(row + j, tail, e);
    sum = _mm512_mask_add_ps(sum, tail, sum, e);
  }
  return _mm512_reduce_add_ps(sum);
}

const bool kHaveAvx512 = __builtin_cpu_supports("avx512f");

}  // namespace

__attribute__((target("avx512f,avx512bf16"))) float exp_row_to_bf16(const float* row, int64_t n, float shift,
                                                                    uint16_t* p) {
  const __m512 shift_log2e = _mm512_set1_ps(shift * kLog2e);
  __m512 sum = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 e = exp_for_bf16_avx512(_mm512_loadu_ps(row + j), shift_log2e);
    sum = _mm512_add_ps(sum, e);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), (__m256i)_mm512_cvtneps_pbh(e));
  }
  if (j < n) {  // the tail, and zeros up to the next 16
    const auto valid = static_cast<__mmask16>((1u << (n - j)) - 1);
    const __m512 e = _mm512_maskz_mov_ps(valid, exp_for_bf16_avx512(_mm512_maskz_loadu_ps(valid, row + j), shift_log2e));
    sum = _mm512_add_ps(sum, e);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), (__m256i)_mm512_cvtneps_pbh(e));
  }
  return _mm512_reduce_add_ps(sum);
}

float exp_for_bf16(float x, float shift) {
  const float t = std::fma(x, kLog2e, -(shift * kLog2e));
  const float r = std::nearbyint(t);
  const float f = t - r;
  float p = kP4;
  for (float c : {kP3, kP2, kP1, kP0}) p = std::fma(p, f, c);
  return std::ldexp(p, static_cast<int>(std::max(r, -300.f)));
}

float exp_nonpositive(float x) {
  x = std::max(x, kLowest);
  const float r = std::nearbyint(x * kLog2e);
  const float g = std::fma(-r, kLn2Low, std::fma(-r, kLn2High, x));
  float p = kC6;
  for (float c : {kC5, kC4, kC3, kC2, 1.0f, 1.0f}) p = std::fma(p, g, c);
  // p * 2^r with r in [-126, 0] (x >= kLowest): the power of two built from its bits, not
  // libm's ldexp (a call into scalbnf per row and block was 3% of a long input's time).
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(r) + 127) << 23;
  float two_r;
  std::memcpy(&two_r, &bits, 4);
  return p * two_r;
}

float row_max(const float* row, int64_t n) {
  if (kHaveAvx512) return row_max_avx512(row, n);
  float most = row[0];
  for (int64_t j = 1; j < n; ++j) most = std::max(most, row[j]);
  return most;
}

float exp_row_minus(float* row, int64_t n, float shift) {
  if (kHaveAvx512) return exp_row_minus_avx512(row, n, shift);
  float sum = 0.f;
  for (int64_t j = 0; j < n; ++j) sum += row[j] = exp_nonpositive(row[j] - shift);
  return sum;
}

float exp_shifted_row(float* row, int64_t n) { return exp_row_minus(row, n, row_max(row, n)); }

}  // namespace m3
