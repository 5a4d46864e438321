#include "m3/backend/cpu/attention_kernels.h"

#include <immintrin.h>

// gcc 12 warns about the undefined registers inside its own AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "m3/backend/cpu/attention_amx.h"
#include "m3/backend/cpu/attention_softmax.h"
#include "m3/core/error.h"

namespace m3 {
namespace {

// The register loops below (rows x vectors of accumulators) unrolled in full: without it gcc
// 12 keeps the 24 accumulators in a stack array, zeroed and spilled around every call
// (~10% of the scores kernel's time).
#define M3_UNROLL _Pragma("GCC unroll 32")

constexpr int kRows = 6;  // 6 rows x 4 vectors = 24 accumulators + 4 loads + 1 broadcast <= 32 zmm

// ---- float32 dot kernels --------------------------------------------------------------

template <int R, int J>
__attribute__((target("avx512f"))) inline void scores_block(const float* q, int64_t q_stride, const float* kt,
                                                             int64_t kt_ld, int64_t ld, int64_t head_dim, float scale,
                                                             float* out) {
  __m512 acc[R][J];
  M3_UNROLL for (int r = 0; r < R; ++r)
    M3_UNROLL for (int j = 0; j < J; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t d = 0; d < head_dim; ++d) {
    __m512 kv[J];
    M3_UNROLL for (int j = 0; j < J; ++j) kv[j] = _mm512_loadu_ps(kt + d * kt_ld + 16 * j);
    M3_UNROLL for (int r = 0; r < R; ++r) {
      const __m512 b = _mm512_set1_ps(q[r * q_stride + d]);
      M3_UNROLL for (int j = 0; j < J; ++j) acc[r][j] = _mm512_fmadd_ps(b, kv[j], acc[r][j]);
    }
  }
  const __m512 s = _mm512_set1_ps(scale);
  M3_UNROLL for (int r = 0; r < R; ++r)
    M3_UNROLL for (int j = 0; j < J; ++j) _mm512_storeu_ps(out + r * ld + 16 * j, _mm512_mul_ps(acc[r][j], s));
}

// out[r, j] = scale q[r, :] . kt[:, j] for j < keys16 (kt: head_dim rows of keys16 keys).
template <int R>
__attribute__((target("avx512f"))) void scores_rows(const float* q, int64_t q_stride, const float* kt, int64_t keys16,
                                                    int64_t head_dim, float scale, float* out) {
  int64_t j = 0;
  for (; j + 64 <= keys16; j += 64) scores_block<R, 4>(q, q_stride, kt + j, keys16, keys16, head_dim, scale, out + j);
  for (; j < keys16; j += 16) scores_block<R, 1>(q, q_stride, kt + j, keys16, keys16, head_dim, scale, out + j);
}

// o[r, :] = rescale[r] o[r, :] + sum_j p[r, j] v[j, :] (rescale null: o[r, :] = sum ...): the
// online softmax's correction of the rows so far is applied as the accumulators load.
template <int R, int DV>
__attribute__((target("avx512f"))) void values_rows(const float* p, int64_t p_ld, int64_t keys, const float* v,
                                                    int64_t v_stride, float* o, int64_t o_stride,
                                                    const float* rescale) {
  __m512 acc[R][DV];
  M3_UNROLL for (int r = 0; r < R; ++r)
    M3_UNROLL for (int d = 0; d < DV; ++d)
      acc[r][d] = rescale ? _mm512_mul_ps(_mm512_loadu_ps(o + r * o_stride + 16 * d), _mm512_set1_ps(rescale[r]))
                          : _mm512_setzero_ps();
  for (int64_t j = 0; j < keys; ++j) {
    __m512 vv[DV];
    M3_UNROLL for (int d = 0; d < DV; ++d) vv[d] = _mm512_loadu_ps(v + j * v_stride + 16 * d);
    M3_UNROLL for (int r = 0; r < R; ++r) {
      const __m512 b = _mm512_set1_ps(p[r * p_ld + j]);
      M3_UNROLL for (int d = 0; d < DV; ++d) acc[r][d] = _mm512_fmadd_ps(b, vv[d], acc[r][d]);
    }
  }
  M3_UNROLL for (int r = 0; r < R; ++r)
    M3_UNROLL for (int d = 0; d < DV; ++d) _mm512_storeu_ps(o + r * o_stride + 16 * d, acc[r][d]);
}

// ---- bfloat16 dot kernels (vdpbf16ps: pairs of bf16, float32 accumulators) ---------------

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
  M3_UNROLL for (int r = 0; r < R; ++r)
    M3_UNROLL for (int j = 0; j < J; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t dp = 0; dp < head_dim / 2; ++dp) {
    __m512bh kv[J];
    M3_UNROLL for (int j = 0; j < J; ++j) kv[j] = (__m512bh)_mm512_loadu_si512(kt2 + (dp * keys16 + 16 * j) * 2);
    M3_UNROLL for (int r = 0; r < R; ++r) {
      const __m512bh b = pair_broadcast(q + r * q_ld + 2 * dp);
      M3_UNROLL for (int j = 0; j < J; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], b, kv[j]);
    }
  }
  const __m512 s = _mm512_set1_ps(scale);
  M3_UNROLL for (int r = 0; r < R; ++r)
    M3_UNROLL for (int j = 0; j < J; ++j) _mm512_storeu_ps(out + r * ld + 16 * j, _mm512_mul_ps(acc[r][j], s));
}

template <int R>
void scores_rows_bf16(const uint16_t* q, int64_t q_ld, const uint16_t* kt2, int64_t keys16, int64_t head_dim,
                      float scale, float* out) {
  int64_t j = 0;
  for (; j + 64 <= keys16; j += 64) scores_block_bf16<R, 4>(q, q_ld, kt2 + 2 * j, keys16, head_dim, scale, out + j, keys16);
  for (; j < keys16; j += 16) scores_block_bf16<R, 1>(q, q_ld, kt2 + 2 * j, keys16, head_dim, scale, out + j, keys16);
}

// ---- int8 dot kernels (vpdpbusd: quads of u8 x s8, int32 accumulators) --------------------

// acc += the u8 x s8 quad products of u and s. gcc 12's intrinsic copied and spilled all 24
// accumulators every step (scores at bf16's speed); the tied asm operand keeps them in place.
__attribute__((target("avx512f,avx512vnni"))) inline __m512i dot_quads(__m512i acc, __m512i u, __m512i s) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
  return acc;
}

// out[r, j] = (float(q[r] . k[j]) * key_factor[j]) * q_scale[r] with q and k the int8 rows:
// Q is stored as q + 128 (vpdpbusd takes one operand unsigned), and each key's accumulator
// starts from its -128 sum(k) (key_offset), so the integer dot is exact before the scales.
template <int R, int J>
__attribute__((target("avx512f,avx512vnni"))) inline void scores_block_int8(
    const uint8_t* q, int64_t q_ld, const float* q_scale, const int8_t* kt4, const float* key_factor,
    const int32_t* key_offset, int64_t keys16, int64_t head_dim, float* out, int64_t ld) {
  __m512i acc[R][J];
  M3_UNROLL for (int j = 0; j < J; ++j) {
    const __m512i offset = _mm512_loadu_si512(key_offset + 16 * j);
    M3_UNROLL for (int r = 0; r < R; ++r) acc[r][j] = offset;
  }
  for (int64_t dq = 0; dq < head_dim / 4; ++dq) {
    __m512i kv[J];
    M3_UNROLL for (int j = 0; j < J; ++j) kv[j] = _mm512_loadu_si512(kt4 + (dq * keys16 + 16 * j) * 4);
    M3_UNROLL for (int r = 0; r < R; ++r) {
      uint32_t quad;
      std::memcpy(&quad, q + r * q_ld + 4 * dq, 4);
      const __m512i b = _mm512_set1_epi32(static_cast<int>(quad));
      M3_UNROLL for (int j = 0; j < J; ++j) acc[r][j] = dot_quads(acc[r][j], b, kv[j]);
    }
  }
  M3_UNROLL for (int j = 0; j < J; ++j) {
    const __m512 factor = _mm512_loadu_ps(key_factor + 16 * j);
    M3_UNROLL for (int r = 0; r < R; ++r) {
      const __m512 scaled = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][j]), factor);
      _mm512_storeu_ps(out + r * ld + 16 * j, _mm512_mul_ps(scaled, _mm512_set1_ps(q_scale[r])));
    }
  }
}

template <int R>
void scores_rows_int8(const uint8_t* q, int64_t q_ld, const float* q_scale, const int8_t* kt4, const float* key_factor,
                      const int32_t* key_offset, int64_t keys16, int64_t head_dim, float* out) {
  int64_t j = 0;
  for (; j + 64 <= keys16; j += 64) {
    scores_block_int8<R, 4>(q, q_ld, q_scale, kt4 + 4 * j, key_factor + j, key_offset + j, keys16, head_dim, out + j,
                            keys16);
  }
  for (; j < keys16; j += 16) {
    scores_block_int8<R, 1>(q, q_ld, q_scale, kt4 + 4 * j, key_factor + j, key_offset + j, keys16, head_dim, out + j,
                            keys16);
  }
}

// As values_rows, from P and V in bf16 pairs (`pairs` key pairs).
template <int R, int DV>
__attribute__((target("avx512f,avx512bf16"))) void values_rows_bf16(const uint16_t* p, int64_t p_ld, int64_t pairs,
                                                                    const uint16_t* vt2, int64_t head_dim, float* o,
                                                                    int64_t o_stride, const float* rescale) {
  __m512 acc[R][DV];
  M3_UNROLL for (int r = 0; r < R; ++r)
    M3_UNROLL for (int d = 0; d < DV; ++d)
      acc[r][d] = rescale ? _mm512_mul_ps(_mm512_loadu_ps(o + r * o_stride + 16 * d), _mm512_set1_ps(rescale[r]))
                          : _mm512_setzero_ps();
  for (int64_t jp = 0; jp < pairs; ++jp) {
    __m512bh vv[DV];
    M3_UNROLL for (int d = 0; d < DV; ++d) vv[d] = (__m512bh)_mm512_loadu_si512(vt2 + (jp * head_dim + 16 * d) * 2);
    M3_UNROLL for (int r = 0; r < R; ++r) {
      const __m512bh b = pair_broadcast(p + r * p_ld + 2 * jp);
      M3_UNROLL for (int d = 0; d < DV; ++d) acc[r][d] = _mm512_dpbf16_ps(acc[r][d], b, vv[d]);
    }
  }
  M3_UNROLL for (int r = 0; r < R; ++r)
    M3_UNROLL for (int d = 0; d < DV; ++d) _mm512_storeu_ps(o + r * o_stride + 16 * d, acc[r][d]);
}

// ---- the tile: row groups of 6 against key blocks, flash-style --------------------------

// Where a tile's scores come from: its R rows from row i against the key block at k0.
struct Fp32Scores {  // Q rows in float32, K transposed block by block (transpose_keys)
  const float* q;
  int64_t q_stride;
  const float* kt;
  int64_t head_dim;
  float scale;
  template <int R>
  void rows(int64_t i, int64_t k0, int64_t keys16, float* out) const {
    scores_rows<R>(q + i * q_stride, q_stride, kt + k0 * head_dim, keys16, head_dim, scale, out);
  }
};

struct Bf16Scores {  // Q rows and K blocks in bf16 (pack_keys_bf16)
  const uint16_t* q;
  const uint16_t* kt2;
  int64_t head_dim;
  float scale;
  template <int R>
  void rows(int64_t i, int64_t k0, int64_t keys16, float* out) const {
    scores_rows_bf16<R>(q + i * head_dim, head_dim, kt2 + k0 * head_dim, keys16, head_dim, scale, out);
  }
};

struct Int8Scores {  // Q rows and K blocks in int8 with their scales (quantize_query_int8, pack_keys_int8)
  const uint8_t* q;
  const float* q_scale;
  const int8_t* kt4;
  const float* key_factor;
  const int32_t* key_offset;
  int64_t head_dim;
  template <int R>
  void rows(int64_t i, int64_t k0, int64_t keys16, float* out) const {
    scores_rows_int8<R>(q + i * head_dim, head_dim, q_scale + i, kt4 + k0 * head_dim, key_factor + k0,
                        key_offset + k0, keys16, head_dim, out);
  }
};

// What P V multiplies: float32 V rows with P the exps written over the scores, or V
// blocks in bf16 pairs (pack_values_bf16) with P rounded to bf16 as the exps are taken.
struct Fp32Values {
  const float* v;
  int64_t v_stride;
  using P = float;
  static float exponentiate(float* row, int64_t keys, float max, float*) { return exp_row_minus(row, keys, max); }
  template <int R, int DV>
  void rows(const float* p, int64_t p_ld, int64_t k0, int64_t keys, float* o, int64_t o_stride,
            const float* rescale) const {
    values_rows<R, DV>(p, p_ld, keys, v + k0 * v_stride, v_stride, o, o_stride, rescale);
  }
};

struct Bf16Values {
  const uint16_t* vt2;
  int64_t head_dim;
  using P = uint16_t;
  static float exponentiate(const float* row, int64_t keys, float max, uint16_t* p) {
    return exp_row_to_bf16(row, keys, max, p);
  }
  template <int R, int DV>
  void rows(const uint16_t* p, int64_t p_ld, int64_t k0, int64_t keys, float* o, int64_t o_stride,
            const float* rescale) const {
    values_rows_bf16<R, DV>(p, p_ld, (keys + 1) / 2, vt2 + k0 * head_dim, head_dim, o, o_stride, rescale);
  }
};

// The running softmax state of a query tile's rows across key blocks.
struct OnlineSoftmax {
  float max[kMaxTileRows];
  float sum[kMaxTileRows];
};

// Rows i..i+R of the tile against one key block, start to end in L1: scores, the online
// softmax into P, then P V into the output rows.
template <int R, int DV, class Scores, class Values>
void row_group_block(const Scores& scores_of, const Values& values, int64_t i, int64_t k0, int64_t keys, bool first,
                     float* o, int64_t o_stride, OnlineSoftmax& state) {
  using P = typename Values::P;
  const int64_t keys16 = (keys + 15) / 16 * 16;
  alignas(64) float scores[R * kMaxBlockKeys];
  alignas(64) P packed[std::is_same_v<P, float> ? 1 : R * kMaxBlockKeys];
  P* p;
  if constexpr (std::is_same_v<P, float>) {
    p = scores;
  } else {
    p = packed;
  }
  scores_of.template rows<R>(i, k0, keys16, scores);
  float rescale[R];
  for (int r = 0; r < R; ++r) {
    float* row = scores + r * keys16;
    float& max = state.max[i + r];
    float& sum = state.sum[i + r];
    const float block_max = row_max(row, keys);
    const float new_max = first ? block_max : std::max(max, block_max);
    // The max settles early in a long row: most blocks leave it, and the rows so far, as they are.
    rescale[r] = first ? 0.f : new_max == max ? 1.f : exp_nonpositive(max - new_max);
    const float block_sum = Values::exponentiate(row, keys, new_max, p + r * keys16);
    sum = first ? block_sum : sum * rescale[r] + block_sum;
    max = new_max;
  }
  values.template rows<R, DV>(p, keys16, k0, keys, o, o_stride, first ? nullptr : rescale);
}

template <int DV, class Scores, class Values>
void tile(const Scores& scores_of, const Values& values, int64_t rows, int64_t len, int64_t block, int64_t head_dim,
          float* o, int64_t o_stride) {
  OnlineSoftmax state;
  // Key blocks outside, row groups inside: a block's K and V stay in cache while every row
  // group of the tile meets them.
  for (int64_t k0 = 0; k0 < len; k0 += block) {
    const int64_t keys = std::min(block, len - k0);
    const bool first = k0 == 0;
    int64_t i = 0;
    for (; i + kRows <= rows; i += kRows) {
      row_group_block<kRows, DV>(scores_of, values, i, k0, keys, first, o + i * o_stride, o_stride, state);
    }
    float* ot = o + i * o_stride;
    switch (rows - i) {
      case 5: row_group_block<5, DV>(scores_of, values, i, k0, keys, first, ot, o_stride, state); break;
      case 4: row_group_block<4, DV>(scores_of, values, i, k0, keys, first, ot, o_stride, state); break;
      case 3: row_group_block<3, DV>(scores_of, values, i, k0, keys, first, ot, o_stride, state); break;
      case 2: row_group_block<2, DV>(scores_of, values, i, k0, keys, first, ot, o_stride, state); break;
      case 1: row_group_block<1, DV>(scores_of, values, i, k0, keys, first, ot, o_stride, state); break;
      default: break;
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float inverse = 1.0f / state.sum[r];
    for (int64_t d = 0; d < head_dim; ++d) o[r * o_stride + d] *= inverse;
  }
}

// The finished rows, from the tile's block to the output: copied, or rounded to bf16.
void store_rows(const float* rows_f32, int64_t rows, int64_t head_dim, float* o, int64_t o_stride) {
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(o + r * o_stride, rows_f32 + r * head_dim, static_cast<size_t>(head_dim) * sizeof(float));
  }
}
void store_rows(const float* rows_f32, int64_t rows, int64_t head_dim, uint16_t* o, int64_t o_stride) {
  for (int64_t r = 0; r < rows; ++r) round_row_to_bf16(rows_f32 + r * head_dim, head_dim, o + r * o_stride);
}

// The tile's output rows accumulate in a block of their own, head_dim floats apart: P V
// loads and stores them for every key block, and rows a context row apart (4 KiB with
// BGE-M3) would all share the same few L1 sets. They are stored once, at the end.
template <class Scores, class Values, class Out>
void run_tile(const Scores& scores_of, const Values& values, int64_t rows, int64_t len, int64_t block,
              int64_t head_dim, Out* o, int64_t o_stride) {
  if (rows < 1 || rows > kMaxTileRows) fail("attention tile of {} rows: 1..{} are supported", rows, kMaxTileRows);
  if (block < 16 || block > kMaxBlockKeys || block % 16 != 0) fail("attention key block of {} keys", block);
  alignas(64) float rows_f32[kMaxTileRows * 64];
  switch (head_dim / 16) {
    case 1: tile<1>(scores_of, values, rows, len, block, head_dim, rows_f32, head_dim); break;
    case 2: tile<2>(scores_of, values, rows, len, block, head_dim, rows_f32, head_dim); break;
    case 3: tile<3>(scores_of, values, rows, len, block, head_dim, rows_f32, head_dim); break;
    case 4: tile<4>(scores_of, values, rows, len, block, head_dim, rows_f32, head_dim); break;
    default: fail("attention kernels take head_dim 16, 32, 48 or 64, not {}", head_dim);
  }
  store_rows(rows_f32, rows, head_dim, o, o_stride);
}

// ---- packing: 16 x 16 transposes of 32-bit words ----------------------------------------

// x[i][j] -> x[j][i]: 32-bit unpacks, 64-bit unpacks, then two rounds of 128-bit lane shuffles.
__attribute__((target("avx512f"))) inline void transpose_16x16(__m512i x[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(x[i], x[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(x[i], x[i + 1]);
  }
  // u[4g + c], lane l: column 4l + c of rows 4g..4g+3.
  for (int g = 0; g < 16; g += 4) {
    u[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
    u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
    u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
    u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44);
    const __m512i v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44);
    const __m512i v3 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xEE);
    x[c] = _mm512_shuffle_i32x4(v0, v2, 0x88);
    x[4 + c] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
    x[8 + c] = _mm512_shuffle_i32x4(v1, v3, 0x88);
    x[12 + c] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
  }
}

__attribute__((target("avx512f"))) void transpose_keys_avx512(const float* k, int64_t k_stride, int64_t keys,
                                                              int64_t head_dim, float* kt, int64_t ld) {
  for (int64_t j0 = 0; j0 < keys; j0 += 16) {
    const int64_t n = std::min<int64_t>(16, keys - j0);
    for (int64_t d0 = 0; d0 < head_dim; d0 += 16) {
      __m512i x[16];
      for (int64_t i = 0; i < 16; ++i) {
        x[i] = i < n ? _mm512_loadu_si512(k + (j0 + i) * k_stride + d0) : _mm512_setzero_si512();
      }
      transpose_16x16(x);
      for (int64_t d = 0; d < 16; ++d) _mm512_storeu_si512(kt + (d0 + d) * ld + j0, x[d]);
    }
  }
}

// 16 bf16 pairs of a key or value row: float32 rounded to nearest even, or bf16 as stored.
__attribute__((target("avx512f,avx512bf16"))) inline __m512i bf16_pairs(const float* row, bool half) {
  const __m512 high = half ? _mm512_setzero_ps() : _mm512_loadu_ps(row + 16);
  return (__m512i)_mm512_cvtne2ps_pbh(high, _mm512_loadu_ps(row));
}
__attribute__((target("avx512f"))) inline __m512i bf16_pairs(const uint16_t* row, bool half) {
  return half ? _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row)))
              : _mm512_loadu_si512(row);
}
// 16 bf16 values of a row, each widened to the low half of a 32-bit word.
__attribute__((target("avx512f,avx512bf16"))) inline __m512i bf16_words(const float* row) {
  return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(row)));
}
__attribute__((target("avx512f"))) inline __m512i bf16_words(const uint16_t* row) {
  return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row)));
}

template <class T>
__attribute__((target("avx512f,avx512bf16"))) void pack_keys_bf16_avx512(const T* k, int64_t k_stride, int64_t keys,
                                                                         int64_t head_dim, uint16_t* kt2) {
  const int64_t keys16 = (keys + 15) / 16 * 16;
  auto* words = reinterpret_cast<uint32_t*>(kt2);  // words[dp][j]: the bf16 pair (k[j][2dp], k[j][2dp + 1])
  for (int64_t j0 = 0; j0 < keys; j0 += 16) {
    const int64_t n = std::min<int64_t>(16, keys - j0);
    // 32 dims (16 pairs) at a time; head_dim 16 or 48 ends on a half chunk of 8 pairs.
    for (int64_t d0 = 0; d0 < head_dim; d0 += 32) {
      const bool half = head_dim - d0 == 16;
      __m512i x[16];
      for (int64_t i = 0; i < 16; ++i) {
        x[i] = i < n ? bf16_pairs(k + (j0 + i) * k_stride + d0, half) : _mm512_setzero_si512();
      }
      transpose_16x16(x);
      for (int64_t dp = 0; dp < (half ? 8 : 16); ++dp) {
        _mm512_storeu_si512(words + (d0 / 2 + dp) * keys16 + j0, x[dp]);
      }
    }
  }
}

template <class T>
__attribute__((target("avx512f,avx512bf16"))) void pack_values_bf16_avx512(const T* v, int64_t v_stride, int64_t keys,
                                                                           int64_t head_dim, uint16_t* vt2) {
  auto* words = reinterpret_cast<uint32_t*>(vt2);  // words[jp][d]: the bf16 pair (v[2jp][d], v[2jp + 1][d])
  for (int64_t jp = 0; jp < (keys + 1) / 2; ++jp) {
    const T* even = v + 2 * jp * v_stride;
    const bool odd_exists = 2 * jp + 1 < keys;
    for (int64_t d0 = 0; d0 < head_dim; d0 += 16) {
      const __m512i low = bf16_words(even + d0);
      const __m512i high = odd_exists ? bf16_words(even + v_stride + d0) : _mm512_setzero_si512();
      _mm512_storeu_si512(words + jp * head_dim + d0, _mm512_or_si512(low, _mm512_slli_epi32(high, 16)));
    }
  }
}

// cvtps rounds to nearest even (the default mode); |x| * inverse is 127 at most up to an ulp,
// and the saturating narrow keeps it within -128..127, the max within -127.
__attribute__((target("avx512f"))) inline __m128i int8_of(__m512 x, __m512 inverse) {
  const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(x, inverse));
  return _mm512_cvtsepi32_epi8(_mm512_max_epi32(q, _mm512_set1_epi32(-127)));
}

// The symmetric int8 grid of one row of n <= 64 floats: scale = max |x| / 127 (1 for a zero
// row), q = round-to-nearest-even(x * (1 / scale)), within -127..127. Written as 64 bytes,
// zero past n.
__attribute__((target("avx512f,avx512bw"))) inline __m512i int8_row_avx512(const float* x, int64_t n, float* scale) {
  __m512 v[4];
  __m512 most = _mm512_setzero_ps();
  for (int c = 0; c < 4; ++c) {
    const int64_t left = std::clamp<int64_t>(n - 16 * c, 0, 16);
    const auto valid = static_cast<__mmask16>((1u << left) - 1);
    v[c] = _mm512_maskz_loadu_ps(valid, x + 16 * c);
    most = _mm512_max_ps(most, _mm512_abs_ps(v[c]));
  }
  const float absmax = _mm512_reduce_max_ps(most);
  *scale = absmax > 0.f ? absmax / 127.f : 1.f;
  const __m512 inverse = _mm512_set1_ps(1.f / *scale);
  const __m256i low = _mm256_inserti128_si256(_mm256_castsi128_si256(int8_of(v[0], inverse)), int8_of(v[1], inverse), 1);
  const __m256i high = _mm256_inserti128_si256(_mm256_castsi128_si256(int8_of(v[2], inverse)), int8_of(v[3], inverse), 1);
  return _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
}

__attribute__((target("avx512f,avx512bw"))) void quantize_query_int8_avx512(const float* x, int64_t n, uint8_t* q,
                                                                            float* scale) {
  const __m512i bytes = _mm512_xor_si512(int8_row_avx512(x, n, scale), _mm512_set1_epi8(static_cast<char>(0x80)));
  _mm512_mask_storeu_epi8(q, n >= 64 ? ~0ull : (1ull << n) - 1, bytes);  // q + 128: flipping the sign bit
}

__attribute__((target("avx512f,avx512bw"))) void pack_keys_int8_avx512(const float* k, int64_t k_stride, int64_t keys,
                                                                       int64_t head_dim, float scale, int8_t* kt4,
                                                                       float* key_factor, int32_t* key_offset) {
  const int64_t keys16 = (keys + 15) / 16 * 16;
  auto* words = reinterpret_cast<uint32_t*>(kt4);  // words[dq][j]: k[j][4dq .. 4dq + 3]
  for (int64_t j0 = 0; j0 < keys16; j0 += 16) {
    __m512i x[16];
    for (int64_t i = 0; i < 16; ++i) {
      const int64_t j = j0 + i;
      if (j >= keys) {  // padding: a zero key, scores of 0 that the softmax never reads
        x[i] = _mm512_setzero_si512();
        key_factor[j] = 0.f;
        key_offset[j] = 0;
        continue;
      }
      float key_scale;
      x[i] = int8_row_avx512(k + j * k_stride, head_dim, &key_scale);
      key_factor[j] = key_scale * scale;
      // -128 sum(k): the sum of bytes is taken on k + 128 (sad against 0), then unbiased.
      const __m512i sums = _mm512_sad_epu8(_mm512_xor_si512(x[i], _mm512_set1_epi8(static_cast<char>(0x80))),
                                           _mm512_setzero_si512());
      const int64_t biased = _mm512_reduce_add_epi64(sums);
      key_offset[j] = static_cast<int32_t>(-128 * (biased - 128 * 64));
    }
    transpose_16x16(x);
    for (int64_t dq = 0; dq < head_dim / 4; ++dq) _mm512_storeu_si512(words + dq * keys16 + j0, x[dq]);
  }
}

const bool kHaveAvx512 = __builtin_cpu_supports("avx512f");
const bool kHaveAvx512Bf16 = __builtin_cpu_supports("avx512bf16");
const bool kHaveAvx512Vnni = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");

inline uint16_t bf16_of(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

}  // namespace

bool attention_kernels_supported(int64_t head_dim) {
  return kHaveAvx512 && head_dim > 0 && head_dim <= 64 && head_dim % 16 == 0;
}

bool bf16_attention_kernels_supported(int64_t head_dim) {
  return kHaveAvx512Bf16 && attention_kernels_supported(head_dim);
}

bool int8_attention_kernels_supported(int64_t head_dim) {
  return kHaveAvx512Vnni && bf16_attention_kernels_supported(head_dim);
}

void transpose_keys(const float* k, int64_t k_stride, int64_t keys, int64_t head_dim, float* kt, int64_t ld) {
  transpose_keys_avx512(k, k_stride, keys, head_dim, kt, ld);
}

namespace {

// bf16_of on 16 lanes: the same integer rounding, so the two agree bit for bit (the AVX2
// loop the baseline build makes of the scalar one was 2.5% of a bf16 pass on short texts).
__attribute__((target("avx512f"))) void round_row_to_bf16_avx512(const float* x, int64_t n, uint16_t* y) {
  const __m512i half = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i bits = _mm512_castps_si512(_mm512_loadu_ps(x + i));
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), one);
    const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(half, odd));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16)));
  }
  for (; i < n; ++i) y[i] = bf16_of(x[i]);
}

}  // namespace

void round_row_to_bf16(const float* x, int64_t n, uint16_t* y) {
  if (kHaveAvx512) {
    round_row_to_bf16_avx512(x, n, y);
    return;
  }
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_of(x[i]);
}

void pack_keys_bf16(const float* k, int64_t k_stride, int64_t keys, int64_t head_dim, uint16_t* kt2) {
  pack_keys_bf16_avx512(k, k_stride, keys, head_dim, kt2);
}

void pack_keys_bf16(const uint16_t* k, int64_t k_stride, int64_t keys, int64_t head_dim, uint16_t* kt2) {
  pack_keys_bf16_avx512(k, k_stride, keys, head_dim, kt2);
}

void pack_values_bf16(const float* v, int64_t v_stride, int64_t keys, int64_t head_dim, uint16_t* vt2) {
  pack_values_bf16_avx512(v, v_stride, keys, head_dim, vt2);
}

void pack_values_bf16(const uint16_t* v, int64_t v_stride, int64_t keys, int64_t head_dim, uint16_t* vt2) {
  pack_values_bf16_avx512(v, v_stride, keys, head_dim, vt2);
}

void attention_tile_f32(const float* q, int64_t q_stride, int64_t rows, const float* kt, const float* v,
                        int64_t v_stride, int64_t len, int64_t block, int64_t head_dim, float scale, float* o,
                        int64_t o_stride) {
  run_tile(Fp32Scores{q, q_stride, kt, head_dim, scale}, Fp32Values{v, v_stride}, rows, len, block, head_dim, o,
           o_stride);
}

void attention_tile_bf16(const uint16_t* q, int64_t rows, const uint16_t* kt2, const uint16_t* vt2, int64_t len,
                         int64_t block, int64_t head_dim, float scale, float* o, int64_t o_stride) {
  if (amx_attention_allowed() && amx_attention_supported(head_dim)) {
    return attention_tile_bf16_amx(q, rows, kt2, vt2, len, block, scale, o, o_stride);
  }
  run_tile(Bf16Scores{q, kt2, head_dim, scale}, Bf16Values{vt2, head_dim}, rows, len, block, head_dim, o, o_stride);
}

void attention_tile_bf16(const uint16_t* q, int64_t rows, const uint16_t* kt2, const uint16_t* vt2, int64_t len,
                         int64_t block, int64_t head_dim, float scale, uint16_t* o, int64_t o_stride) {
  if (amx_attention_allowed() && amx_attention_supported(head_dim)) {
    return attention_tile_bf16_amx(q, rows, kt2, vt2, len, block, scale, o, o_stride);
  }
  // Rounded once, from float32 rows, as the GEMM reading a float32 output would round it.
  run_tile(Bf16Scores{q, kt2, head_dim, scale}, Bf16Values{vt2, head_dim}, rows, len, block, head_dim, o, o_stride);
}

void quantize_query_int8(const float* x, int64_t n, uint8_t* q, float* scale) {
  quantize_query_int8_avx512(x, n, q, scale);
}

void pack_keys_int8(const float* k, int64_t k_stride, int64_t keys, int64_t head_dim, float scale, int8_t* kt4,
                    float* key_factor, int32_t* key_offset) {
  pack_keys_int8_avx512(k, k_stride, keys, head_dim, scale, kt4, key_factor, key_offset);
}

void attention_tile_int8(const uint8_t* q, const float* q_scale, int64_t rows, const int8_t* kt4,
                         const float* key_factor, const int32_t* key_offset, const uint16_t* vt2, int64_t len,
                         int64_t block, int64_t head_dim, float* o, int64_t o_stride) {
  if (amx_attention_allowed() && amx_int8_attention_supported(head_dim)) {
    return attention_tile_int8_amx(q, q_scale, rows, kt4, key_factor, key_offset, vt2, len, block, o, o_stride);
  }
  run_tile(Int8Scores{q, q_scale, kt4, key_factor, key_offset, head_dim}, Bf16Values{vt2, head_dim}, rows, len, block,
           head_dim, o, o_stride);
}

}  // namespace m3
