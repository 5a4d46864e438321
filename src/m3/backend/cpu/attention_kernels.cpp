#include "m3/backend/cpu/attention_kernels.h"

#include <immintrin.h>

#include <cstring>

namespace m3 {
namespace {

constexpr int kRows = 6;  // 6 rows x 4 vectors = 24 accumulators + 4 loads + 1 broadcast <= 32 zmm

template <int R, int J>
__attribute__((target("avx512f"))) inline void scores_block(const float* q, int64_t q_stride, const float* kt,
                                                             int64_t kt_ld, int64_t ld, int64_t head_dim, float scale,
                                                             float* out) {
  __m512 acc[R][J];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t d = 0; d < head_dim; ++d) {
    __m512 kv[J];
    for (int j = 0; j < J; ++j) kv[j] = _mm512_loadu_ps(kt + d * kt_ld + 16 * j);
    for (int r = 0; r < R; ++r) {
      const __m512 b = _mm512_set1_ps(q[r * q_stride + d]);
      for (int j = 0; j < J; ++j) acc[r][j] = _mm512_fmadd_ps(b, kv[j], acc[r][j]);
    }
  }
  const __m512 s = _mm512_set1_ps(scale);
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) _mm512_storeu_ps(out + r * ld + 16 * j, _mm512_mul_ps(acc[r][j], s));
}

template <int R>
__attribute__((target("avx512f"))) void scores_rows(const float* q, int64_t q_stride, const float* kt, int64_t kt_ld,
                                                    int64_t ld, int64_t keys16, int64_t head_dim, float scale,
                                                    float* out) {
  int64_t j = 0;
  for (; j + 64 <= keys16; j += 64) scores_block<R, 4>(q, q_stride, kt + j, kt_ld, ld, head_dim, scale, out + j);
  for (; j < keys16; j += 16) scores_block<R, 1>(q, q_stride, kt + j, kt_ld, ld, head_dim, scale, out + j);
}

template <int R, int DV>
__attribute__((target("avx512f"))) void values_rows(const float* p, int64_t ld, int64_t keys, const float* v,
                                                    int64_t v_stride, float* o, int64_t o_stride, bool accumulate) {
  __m512 acc[R][DV];
  for (int r = 0; r < R; ++r)
    for (int d = 0; d < DV; ++d) acc[r][d] = accumulate ? _mm512_loadu_ps(o + r * o_stride + 16 * d) : _mm512_setzero_ps();
  for (int64_t j = 0; j < keys; ++j) {
    __m512 vv[DV];
    for (int d = 0; d < DV; ++d) vv[d] = _mm512_loadu_ps(v + j * v_stride + 16 * d);
    for (int r = 0; r < R; ++r) {
      const __m512 b = _mm512_set1_ps(p[r * ld + j]);
      for (int d = 0; d < DV; ++d) acc[r][d] = _mm512_fmadd_ps(b, vv[d], acc[r][d]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int d = 0; d < DV; ++d) _mm512_storeu_ps(o + r * o_stride + 16 * d, acc[r][d]);
}

template <int DV>
void values_all_rows(const float* p, int64_t ld, int64_t rows, int64_t keys, const float* v, int64_t v_stride,
                     float* o, int64_t o_stride, bool accumulate) {
  int64_t i = 0;
  for (; i + kRows <= rows; i += kRows) {
    values_rows<kRows, DV>(p + i * ld, ld, keys, v, v_stride, o + i * o_stride, o_stride, accumulate);
  }
  const float* pt = p + i * ld;
  float* ot = o + i * o_stride;
  switch (rows - i) {
    case 5: values_rows<5, DV>(pt, ld, keys, v, v_stride, ot, o_stride, accumulate); break;
    case 4: values_rows<4, DV>(pt, ld, keys, v, v_stride, ot, o_stride, accumulate); break;
    case 3: values_rows<3, DV>(pt, ld, keys, v, v_stride, ot, o_stride, accumulate); break;
    case 2: values_rows<2, DV>(pt, ld, keys, v, v_stride, ot, o_stride, accumulate); break;
    case 1: values_rows<1, DV>(pt, ld, keys, v, v_stride, ot, o_stride, accumulate); break;
    default: break;
  }
}

const bool kHaveAvx512 = __builtin_cpu_supports("avx512f");

}  // namespace

bool attention_kernels_supported(int64_t head_dim) {
  return kHaveAvx512 && head_dim > 0 && head_dim <= 64 && head_dim % 16 == 0;
}

void transpose_keys(const float* k, int64_t k_stride, int64_t keys, int64_t head_dim, float* kt, int64_t ld) {
  const int64_t keys16 = (keys + 15) / 16 * 16;
  for (int64_t d = 0; d < head_dim; ++d) {
    float* row = kt + d * ld;
    for (int64_t j = 0; j < keys; ++j) row[j] = k[j * k_stride + d];
    for (int64_t j = keys; j < keys16; ++j) row[j] = 0.f;
  }
}

void attention_scores(const float* q, int64_t q_stride, const float* kt, int64_t kt_ld, int64_t rows, int64_t keys,
                      int64_t head_dim, float scale, float* scores, int64_t ld) {
  const int64_t keys16 = (keys + 15) / 16 * 16;
  int64_t i = 0;
  for (; i + kRows <= rows; i += kRows) {
    scores_rows<kRows>(q + i * q_stride, q_stride, kt, kt_ld, ld, keys16, head_dim, scale, scores + i * ld);
  }
  const float* qt = q + i * q_stride;
  float* st = scores + i * ld;
  switch (rows - i) {
    case 5: scores_rows<5>(qt, q_stride, kt, kt_ld, ld, keys16, head_dim, scale, st); break;
    case 4: scores_rows<4>(qt, q_stride, kt, kt_ld, ld, keys16, head_dim, scale, st); break;
    case 3: scores_rows<3>(qt, q_stride, kt, kt_ld, ld, keys16, head_dim, scale, st); break;
    case 2: scores_rows<2>(qt, q_stride, kt, kt_ld, ld, keys16, head_dim, scale, st); break;
    case 1: scores_rows<1>(qt, q_stride, kt, kt_ld, ld, keys16, head_dim, scale, st); break;
    default: break;
  }
}

void attention_values(const float* p, int64_t ld, int64_t rows, int64_t keys, const float* v, int64_t v_stride,
                      int64_t head_dim, float* o, int64_t o_stride, bool accumulate) {
  switch (head_dim / 16) {
    case 1: values_all_rows<1>(p, ld, rows, keys, v, v_stride, o, o_stride, accumulate); break;
    case 2: values_all_rows<2>(p, ld, rows, keys, v, v_stride, o, o_stride, accumulate); break;
    case 3: values_all_rows<3>(p, ld, rows, keys, v, v_stride, o, o_stride, accumulate); break;
    case 4: values_all_rows<4>(p, ld, rows, keys, v, v_stride, o, o_stride, accumulate); break;
    default: break;
  }
}

}  // namespace m3

namespace m3 {
namespace {

}  // namespace

void round_row_to_bf16(const float* x, int64_t n, uint16_t* y);

namespace {

inline uint16_t bf16_of(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

inline __attribute__((target("avx512f,avx512bf16"))) __m512bh pair_broadcast(const uint16_t* pair) {
  uint32_t bits;
  std::memcpy(&bits, pair, 4);
  return (__m512bh)_mm512_set1_epi32(static_cast<int>(bits));
}

template <int R, int J>
__attribute__((target("avx512f,avx512bf16"))) inline void scores_block_bf16(const uint16_t* q, int64_t q_ld,
                                                                             const uint16_t* kt2, int64_t keys16,
                                                                             int64_t head_dim, float scale, float* out,
                                                                             int64_t ld) {
  __m512 acc[R][J];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t dp = 0; dp < head_dim / 2; ++dp) {
    __m512bh kv[J];
    for (int j = 0; j < J; ++j) kv[j] = (__m512bh)_mm512_loadu_si512(kt2 + (dp * keys16 + 16 * j) * 2);
    for (int r = 0; r < R; ++r) {
      const __m512bh b = pair_broadcast(q + r * q_ld + 2 * dp);
      for (int j = 0; j < J; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], b, kv[j]);
    }
  }
  const __m512 s = _mm512_set1_ps(scale);
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) _mm512_storeu_ps(out + r * ld + 16 * j, _mm512_mul_ps(acc[r][j], s));
}

template <int R>
void scores_rows_bf16(const uint16_t* q, int64_t q_ld, const uint16_t* kt2, int64_t keys16, int64_t head_dim,
                      float scale, float* out, int64_t ld) {
  int64_t j = 0;
  for (; j + 64 <= keys16; j += 64) scores_block_bf16<R, 4>(q, q_ld, kt2 + 2 * j, keys16, head_dim, scale, out + j, ld);
  for (; j < keys16; j += 16) scores_block_bf16<R, 1>(q, q_ld, kt2 + 2 * j, keys16, head_dim, scale, out + j, ld);
}

template <int R, int DV>
__attribute__((target("avx512f,avx512bf16"))) void values_rows_bf16(const uint16_t* p, int64_t p_ld, int64_t pairs,
                                                                    const uint16_t* vt2, int64_t head_dim, float* o,
                                                                    int64_t o_stride, bool accumulate) {
  __m512 acc[R][DV];
  for (int r = 0; r < R; ++r)
    for (int d = 0; d < DV; ++d) acc[r][d] = accumulate ? _mm512_loadu_ps(o + r * o_stride + 16 * d) : _mm512_setzero_ps();
  for (int64_t jp = 0; jp < pairs; ++jp) {
    __m512bh vv[DV];
    for (int d = 0; d < DV; ++d) vv[d] = (__m512bh)_mm512_loadu_si512(vt2 + (jp * head_dim + 16 * d) * 2);
    for (int r = 0; r < R; ++r) {
      const __m512bh b = pair_broadcast(p + r * p_ld + 2 * jp);
      for (int d = 0; d < DV; ++d) acc[r][d] = _mm512_dpbf16_ps(acc[r][d], b, vv[d]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int d = 0; d < DV; ++d) _mm512_storeu_ps(o + r * o_stride + 16 * d, acc[r][d]);
}

template <int DV>
void values_all_rows_bf16(const uint16_t* p, int64_t p_ld, int64_t rows, int64_t pairs, const uint16_t* vt2,
                          int64_t head_dim, float* o, int64_t o_stride, bool accumulate) {
  int64_t i = 0;
  for (; i + kRows <= rows; i += kRows) {
    values_rows_bf16<kRows, DV>(p + i * p_ld, p_ld, pairs, vt2, head_dim, o + i * o_stride, o_stride, accumulate);
  }
  const uint16_t* pt = p + i * p_ld;
  float* ot = o + i * o_stride;
  switch (rows - i) {
    case 5: values_rows_bf16<5, DV>(pt, p_ld, pairs, vt2, head_dim, ot, o_stride, accumulate); break;
    case 4: values_rows_bf16<4, DV>(pt, p_ld, pairs, vt2, head_dim, ot, o_stride, accumulate); break;
    case 3: values_rows_bf16<3, DV>(pt, p_ld, pairs, vt2, head_dim, ot, o_stride, accumulate); break;
    case 2: values_rows_bf16<2, DV>(pt, p_ld, pairs, vt2, head_dim, ot, o_stride, accumulate); break;
    case 1: values_rows_bf16<1, DV>(pt, p_ld, pairs, vt2, head_dim, ot, o_stride, accumulate); break;
    default: break;
  }
}

const bool kHaveAvx512Bf16 = __builtin_cpu_supports("avx512bf16");

}  // namespace

void round_row_to_bf16(const float* x, int64_t n, uint16_t* y) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_of(x[i]);
}

bool bf16_attention_kernels_supported(int64_t head_dim) {
  return kHaveAvx512Bf16 && attention_kernels_supported(head_dim);
}

void pack_keys_bf16(const float* k, int64_t k_stride, int64_t keys, int64_t head_dim, uint16_t* kt2) {
  const int64_t keys16 = (keys + 15) / 16 * 16;
  for (int64_t dp = 0; dp < head_dim / 2; ++dp) {
    uint16_t* row = kt2 + dp * keys16 * 2;
    for (int64_t j = 0; j < keys; ++j) {
      row[2 * j] = bf16_of(k[j * k_stride + 2 * dp]);
      row[2 * j + 1] = bf16_of(k[j * k_stride + 2 * dp + 1]);
    }
    for (int64_t j = keys; j < keys16; ++j) row[2 * j] = row[2 * j + 1] = 0;
  }
}

void pack_values_bf16(const float* v, int64_t v_stride, int64_t keys, int64_t head_dim, uint16_t* vt2) {
  for (int64_t j = 0; j < keys; ++j) {
    uint16_t* pair = vt2 + (j / 2) * head_dim * 2 + (j % 2);
    for (int64_t d = 0; d < head_dim; ++d) pair[2 * d] = bf16_of(v[j * v_stride + d]);
  }
  if (keys % 2 != 0) {
    uint16_t* pair = vt2 + (keys / 2) * head_dim * 2 + 1;
    for (int64_t d = 0; d < head_dim; ++d) pair[2 * d] = 0;
  }
}

void attention_scores_bf16(const uint16_t* q, int64_t q_ld, const uint16_t* kt2, int64_t rows, int64_t keys,
                           int64_t head_dim, float scale, float* scores, int64_t ld) {
  const int64_t keys16 = (keys + 15) / 16 * 16;
  int64_t i = 0;
  for (; i + kRows <= rows; i += kRows) {
    scores_rows_bf16<kRows>(q + i * q_ld, q_ld, kt2, keys16, head_dim, scale, scores + i * ld, ld);
  }
  const uint16_t* qt = q + i * q_ld;
  float* st = scores + i * ld;
  switch (rows - i) {
    case 5: scores_rows_bf16<5>(qt, q_ld, kt2, keys16, head_dim, scale, st, ld); break;
    case 4: scores_rows_bf16<4>(qt, q_ld, kt2, keys16, head_dim, scale, st, ld); break;
    case 3: scores_rows_bf16<3>(qt, q_ld, kt2, keys16, head_dim, scale, st, ld); break;
    case 2: scores_rows_bf16<2>(qt, q_ld, kt2, keys16, head_dim, scale, st, ld); break;
    case 1: scores_rows_bf16<1>(qt, q_ld, kt2, keys16, head_dim, scale, st, ld); break;
    default: break;
  }
}

void attention_values_bf16(const uint16_t* p, int64_t p_ld, int64_t rows, int64_t keys, const uint16_t* vt2,
                           int64_t head_dim, float* o, int64_t o_stride, bool accumulate) {
  const int64_t pairs = (keys + 1) / 2;
  switch (head_dim / 16) {
    case 1: values_all_rows_bf16<1>(p, p_ld, rows, pairs, vt2, head_dim, o, o_stride, accumulate); break;
    case 2: values_all_rows_bf16<2>(p, p_ld, rows, pairs, vt2, head_dim, o, o_stride, accumulate); break;
    case 3: values_all_rows_bf16<3>(p, p_ld, rows, pairs, vt2, head_dim, o, o_stride, accumulate); break;
    case 4: values_all_rows_bf16<4>(p, p_ld, rows, pairs, vt2, head_dim, o, o_stride, accumulate); break;
    default: break;
  }
}

}  // namespace m3
