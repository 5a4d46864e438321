#include "m3/backend/cpu/attention_kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "m3/backend/cpu/attention_softmax.h"
#include "m3/core/error.h"

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

// o[r, :] = rescale[r] o[r, :] + sum_j p[r, j] v[j, :] (rescale null: o[r, :] = sum ...): the
// online softmax's correction of the rows so far is applied as the accumulators load.
template <int R, int DV>
__attribute__((target("avx512f,avx512bf16"))) void values_rows_bf16(const uint16_t* p, int64_t p_ld, int64_t pairs,
                                                                    const uint16_t* vt2, int64_t head_dim, float* o,
                                                                    int64_t o_stride, const float* rescale) {
  __m512 acc[R][DV];
  for (int r = 0; r < R; ++r)
    for (int d = 0; d < DV; ++d)
      acc[r][d] = rescale ? _mm512_mul_ps(_mm512_loadu_ps(o + r * o_stride + 16 * d), _mm512_set1_ps(rescale[r]))
                          : _mm512_setzero_ps();
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

// The running softmax state of a query tile's rows across key blocks.
struct OnlineSoftmax {
  float max[kMaxTileRows];
  float sum[kMaxTileRows];
};

// R query rows against one key block, start to end in L1: scores, the online softmax into
// bf16 P, then P V into the output rows.
template <int R, int DV>
void row_group_block_bf16(const uint16_t* q, int64_t keys, const uint16_t* kt2, const uint16_t* vt2,
                          int64_t head_dim, float scale, bool first, float* o, int64_t o_stride, float* row_max_io,
                          float* row_sum_io) {
  const int64_t keys16 = (keys + 15) / 16 * 16;
  alignas(64) float scores[R * kMaxBlockKeys];
  alignas(64) uint16_t p[R * kMaxBlockKeys];
  scores_rows_bf16<R>(q, head_dim, kt2, keys16, head_dim, scale, scores, keys16);
  float rescale[R];
  for (int r = 0; r < R; ++r) {
    float* row = scores + r * keys16;
    const float block_max = row_max(row, keys);
    const float new_max = first ? block_max : std::max(row_max_io[r], block_max);
    // The max settles early in a long row: most blocks leave it, and the rows so far, as they are.
    rescale[r] = first ? 0.f : new_max == row_max_io[r] ? 1.f : exp_nonpositive(row_max_io[r] - new_max);
    const float block_sum = exp_row_to_bf16(row, keys, new_max, p + r * keys16);
    row_sum_io[r] = first ? block_sum : row_sum_io[r] * rescale[r] + block_sum;
    row_max_io[r] = new_max;
  }
  values_rows_bf16<R, DV>(p, keys16, (keys + 1) / 2, vt2, head_dim, o, o_stride, first ? nullptr : rescale);
}

template <int DV>
void tile_bf16(const uint16_t* q, int64_t rows, const uint16_t* kt2, const uint16_t* vt2, int64_t len, int64_t block,
               int64_t head_dim, float scale, float* o, int64_t o_stride) {
  OnlineSoftmax state;
  // Key blocks outside, row groups inside: a block's K and V (2 x block x head_dim bf16)
  // stay in L1 while every row group of the tile meets them.
  for (int64_t k0 = 0; k0 < len; k0 += block) {
    const int64_t keys = std::min(block, len - k0);
    const uint16_t* kb = kt2 + k0 * head_dim;
    const uint16_t* vb = vt2 + k0 * head_dim;
    const bool first = k0 == 0;
    int64_t i = 0;
    for (; i + kRows <= rows; i += kRows) {
      row_group_block_bf16<kRows, DV>(q + i * head_dim, keys, kb, vb, head_dim, scale, first, o + i * o_stride,
                                      o_stride, state.max + i, state.sum + i);
    }
    const uint16_t* qt = q + i * head_dim;
    float* ot = o + i * o_stride;
    float* m = state.max + i;
    float* s = state.sum + i;
    switch (rows - i) {
      case 5: row_group_block_bf16<5, DV>(qt, keys, kb, vb, head_dim, scale, first, ot, o_stride, m, s); break;
      case 4: row_group_block_bf16<4, DV>(qt, keys, kb, vb, head_dim, scale, first, ot, o_stride, m, s); break;
      case 3: row_group_block_bf16<3, DV>(qt, keys, kb, vb, head_dim, scale, first, ot, o_stride, m, s); break;
      case 2: row_group_block_bf16<2, DV>(qt, keys, kb, vb, head_dim, scale, first, ot, o_stride, m, s); break;
      case 1: row_group_block_bf16<1, DV>(qt, keys, kb, vb, head_dim, scale, first, ot, o_stride, m, s); break;
      default: break;
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float inverse = 1.0f / state.sum[r];
    for (int64_t d = 0; d < head_dim; ++d) o[r * o_stride + d] *= inverse;
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

void attention_tile_bf16(const uint16_t* q, int64_t rows, const uint16_t* kt2, const uint16_t* vt2, int64_t len,
                         int64_t block, int64_t head_dim, float scale, float* o, int64_t o_stride) {
  if (rows < 1 || rows > kMaxTileRows) fail("attention tile of {} rows: 1..{} are supported", rows, kMaxTileRows);
  if (block < 16 || block > kMaxBlockKeys || block % 16 != 0) fail("attention key block of {} keys", block);
  switch (head_dim / 16) {
    case 1: tile_bf16<1>(q, rows, kt2, vt2, len, block, head_dim, scale, o, o_stride); break;
    case 2: tile_bf16<2>(q, rows, kt2, vt2, len, block, head_dim, scale, o, o_stride); break;
    case 3: tile_bf16<3>(q, rows, kt2, vt2, len, block, head_dim, scale, o, o_stride); break;
    case 4: tile_bf16<4>(q, rows, kt2, vt2, len, block, head_dim, scale, o, o_stride); break;
    default: break;
  }
}

}  // namespace m3
