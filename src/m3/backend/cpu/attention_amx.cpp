#include "m3/backend/cpu/attention_amx.h"

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

// gcc 12 warns about the undefined registers inside its own AVX-512 convert and reduce intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "m3/backend/cpu/attention_kernels.h"
#include "m3/backend/cpu/attention_softmax.h"
#include "m3/core/dtype.h"
#include "m3/core/error.h"

namespace m3 {
namespace {

constexpr int64_t kHeadDim = 64;
constexpr int64_t kGroup = 16;  // query rows per tile product: an AMX tile's rows

// Every tile is 16 rows x 64 bytes: 0-3 accumulate (16 x 16 float32 or int32), 4 holds A
// (16 rows of Q or P), 5 and 6 B (K or V), taken in turn so that consecutive products do
// not wait for one register.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16};
};
// A static object: gcc 12 does not see ldtilecfg read its operand, and dropped the stores
// that filled in a local one (every tile instruction then faulted as unconfigured).
const TileConfig kTileConfig;

__attribute__((target("amx-tile"))) void configure_tiles() { _tile_loadconfig(&kTileConfig); }

// Linux lends a thread the tile state only after the process asks (arch_prctl, 5.16+).
bool tile_state_permitted() {
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
}

// Asked on first use: the AVX-512 kernels' own flags are another file's statics.
bool have_amx_bf16() {
  static const bool have = __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
                           bf16_attention_kernels_supported(kHeadDim) && tile_state_permitted();
  return have;
}
bool have_amx_int8() {
  static const bool have =
      have_amx_bf16() && __builtin_cpu_supports("amx-int8") && int8_attention_kernels_supported(kHeadDim);
  return have;
}
std::atomic<bool> amx_allowed{true};

// Every function with tile instructions takes the three AMX extensions, so the helpers
// below inline into all of them; the int8 ones run only where AMX-INT8 is there.
#define M3_AMX __attribute__((target("amx-tile,amx-bf16,amx-int8")))
#define M3_AMX_ALWAYS_INLINE __attribute__((target("amx-tile,amx-bf16,amx-int8"), always_inline)) inline

// The four accumulator tiles: zeroed, loaded or stored as 16 x 64 columns from `at` on.
M3_AMX_ALWAYS_INLINE void zero_accumulators() {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}
M3_AMX_ALWAYS_INLINE void load_accumulators(const float* at, int64_t stride) {
  _tile_loadd(0, at, stride);
  _tile_loadd(1, at + 16, stride);
  _tile_loadd(2, at + 32, stride);
  _tile_loadd(3, at + 48, stride);
}
template <class T>
M3_AMX_ALWAYS_INLINE void store_accumulators(T* at, int64_t stride) {
  _tile_stored(0, at, stride);
  _tile_stored(1, at + 16, stride);
  _tile_stored(2, at + 32, stride);
  _tile_stored(3, at + 48, stride);
}
// Accumulator c += A (tile 4) x the B tile 64 c bytes on from b, for c = 0..3: bf16 pairs
// (tdpbf16ps) or u8 x s8 quads (tdpbusd).
template <bool kInt8>
M3_AMX_ALWAYS_INLINE void four_products(const void* b, int64_t stride) {
  const auto* at = static_cast<const char*>(b);
  if constexpr (kInt8) {
    _tile_loadd(5, at, stride);
    _tile_dpbusd(0, 4, 5);
    _tile_loadd(6, at + 64, stride);
    _tile_dpbusd(1, 4, 6);
    _tile_loadd(5, at + 128, stride);
    _tile_dpbusd(2, 4, 5);
    _tile_loadd(6, at + 192, stride);
    _tile_dpbusd(3, 4, 6);
  } else {
    _tile_loadd(5, at, stride);
    _tile_dpbf16ps(0, 4, 5);
    _tile_loadd(6, at + 64, stride);
    _tile_dpbf16ps(1, 4, 6);
    _tile_loadd(5, at + 128, stride);
    _tile_dpbf16ps(2, 4, 5);
    _tile_loadd(6, at + 192, stride);
    _tile_dpbf16ps(3, 4, 6);
  }
}

// s[r][j] = q[r] . k[j] for the group's 16 rows (bf16, 64 apart) against a block's keys16
// keys (kt2: pairs of d, keys16 keys a row), float32 rows keys16 apart.
M3_AMX void scores_bf16(const uint16_t* q, const uint16_t* kt2, int64_t keys16, float* s) {
  const int64_t b_stride = keys16 * 4, s_stride = keys16 * 4;  // bytes
  int64_t j = 0;
  for (; j + 64 <= keys16; j += 64) {
    zero_accumulators();
    for (int64_t half = 0; half < 2; ++half) {  // d 0..31, then 32..63
      _tile_loadd(4, q + 32 * half, kHeadDim * 2);
      four_products<false>(kt2 + (16 * half * keys16 + j) * 2, b_stride);
    }
    store_accumulators(s + j, s_stride);
  }
  for (; j < keys16; j += 16) {
    _tile_zero(0);
    _tile_loadd(4, q, kHeadDim * 2);
    _tile_loadd(5, kt2 + j * 2, b_stride);
    _tile_dpbf16ps(0, 4, 5);
    _tile_loadd(4, q + 32, kHeadDim * 2);
    _tile_loadd(6, kt2 + (16 * keys16 + j) * 2, b_stride);
    _tile_dpbf16ps(0, 4, 6);
    _tile_stored(0, s + j, s_stride);
  }
}

// s[r][j] = q[r] . k[j] in int32 for u8 rows (q + 128, 64 apart) against int8 keys (kt4:
// quads of d, keys16 keys a row): the integer dot before key_offset and the scales.
M3_AMX void scores_int8(const uint8_t* q, const int8_t* kt4, int64_t keys16, int32_t* s) {
  const int64_t b_stride = keys16 * 4, s_stride = keys16 * 4;
  _tile_loadd(4, q, kHeadDim);
  int64_t j = 0;
  for (; j + 64 <= keys16; j += 64) {
    zero_accumulators();
    four_products<true>(kt4 + j * 4, b_stride);
    store_accumulators(s + j, s_stride);
  }
  for (; j < keys16; j += 16) {
    _tile_zero(0);
    _tile_loadd(5, kt4 + j * 4, b_stride);
    _tile_dpbusd(0, 4, 5);
    _tile_stored(0, s + j, s_stride);
  }
}

// o[r] (+)= p[r] V for the group's 16 rows of float32 (64 apart): p bf16, keys32 a row, V
// in pairs of keys (vt2), 32 keys a product. The last product reads `tail` instead where
// the block's V ends before it: 32 keys of V whose missing ones are zero.
M3_AMX void values_bf16(const uint16_t* p, int64_t keys32, const uint16_t* vt2, int64_t whole,
                        const uint16_t* tail, bool accumulate, float* o) {
  constexpr int64_t v_stride = kHeadDim * 4, o_stride = kHeadDim * 4;  // bytes
  if (accumulate) {
    load_accumulators(o, o_stride);
  } else {
    zero_accumulators();
  }
  for (int64_t k = 0; k < keys32; k += 32) {
    _tile_loadd(4, p + k, keys32 * 2);
    four_products<false>(k + 32 <= whole ? vt2 + k * kHeadDim : tail, v_stride);
  }
  store_accumulators(o, o_stride);
}

__attribute__((target("amx-tile"))) void release_tiles() { _tile_release(); }

// y[0..n) *= scale, 16 floats at a time.
__attribute__((target("avx512f"))) void scale_row(float* y, int64_t n, float scale) {
  const __m512 s = _mm512_set1_ps(scale);
  for (int64_t j = 0; j < n; j += 16) _mm512_storeu_ps(y + j, _mm512_mul_ps(_mm512_loadu_ps(y + j), s));
}

bool is_power_of_two(float x) {
  int exponent;
  return x > 0 && std::frexp(x, &exponent) == 0.5f;
}

struct Bf16Queries {
  const uint16_t* q;
  float scale;
  // BGE-M3's 1/8 (any power of two) goes into Q: q/8 is exact in bf16 and so, term by term,
  // is every float32 sum of the dot, so the scores are the same bits without a pass over them.
  bool scale_in_q = is_power_of_two(scale);
  using Q = uint16_t;
  void load_rows(int64_t rows, uint16_t* dst) const {
    if (!scale_in_q) {
      std::memcpy(dst, q, rows * kHeadDim * sizeof(uint16_t));
      return;
    }
    for (int64_t r = 0; r < rows; ++r) {
      alignas(64) float row[kHeadDim];
      for (int64_t d = 0; d < kHeadDim; ++d) row[d] = bf16_to_float(q[r * kHeadDim + d]) * scale;
      round_row_to_bf16(row, kHeadDim, dst + r * kHeadDim);
    }
  }
  // The group's scores, scaled, float32 rows keys16 apart, and each row's maximum over its
  // first `keys`.
  void scores(const uint16_t* group_q, int64_t, int64_t k0, int64_t keys16, int64_t keys, int64_t valid,
              const void* kt, float* s, float* maxima) const {
    scores_bf16(group_q, static_cast<const uint16_t*>(kt) + k0 * kHeadDim, keys16, s);
    for (int64_t r = 0; r < valid; ++r) {
      if (!scale_in_q) scale_row(s + r * keys16, keys16, scale);
      maxima[r] = row_max(s + r * keys16, keys);
    }
  }
};

// One row of int8 dots turned into scores in place, (float(dot + key_offset) * key_factor) *
// row_scale as the AVX-512 int8 kernels compute them, and the maximum of the first `keys`
// taken on the way (a separate pass over the row cost as much as the conversion).
__attribute__((target("avx512f"))) float int8_scores_row(int32_t* row, const int32_t* key_offset,
                                                         const float* key_factor, float row_scale, int64_t keys16,
                                                         int64_t keys) {
  const __m512 scale = _mm512_set1_ps(row_scale);
  __m512 most = _mm512_set1_ps(-INFINITY);
  auto* out = reinterpret_cast<float*>(row);
  for (int64_t j = 0; j < keys16; j += 16) {
    const __m512i dot = _mm512_add_epi32(_mm512_load_si512(row + j), _mm512_loadu_si512(key_offset + j));
    const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_loadu_ps(key_factor + j)), scale);
    _mm512_store_ps(out + j, v);
    const auto live = keys - j >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (keys - j)) - 1);
    most = _mm512_mask_max_ps(most, live, most, v);
  }
  return _mm512_reduce_max_ps(most);
}

struct Int8Queries {
  const uint8_t* q;
  const float* q_scale;
  const float* key_factor;
  const int32_t* key_offset;
  using Q = uint8_t;
  void load_rows(int64_t rows, uint8_t* dst) const { std::memcpy(dst, q, rows * kHeadDim); }
  // (float(q . k + key_offset) * key_factor) * q_scale, as the AVX-512 int8 scores, and
  // each row's maximum over its first `keys`.
  void scores(const uint8_t* group_q, int64_t i, int64_t k0, int64_t keys16, int64_t keys, int64_t valid,
              const void* kt, float* s, float* maxima) const {
    auto* dots = reinterpret_cast<int32_t*>(s);
    scores_int8(group_q, static_cast<const int8_t*>(kt) + k0 * kHeadDim, keys16, dots);
    for (int64_t r = 0; r < valid; ++r) {
      maxima[r] = int8_scores_row(dots + r * keys16, key_offset + k0, key_factor + k0, q_scale[i + r], keys16, keys);
    }
  }
};

// The tile: key blocks outside (a block's K and V stay in cache while every group of rows
// meets it), groups of 16 rows inside, an online softmax per row across blocks; the output
// rows accumulate in `acc` (64 floats a row) and are divided by their sums at the end.
template <class Queries>
void amx_tile(const Queries& queries, int64_t rows, const void* kt, const uint16_t* vt2, int64_t len, int64_t block,
              float* acc) {
  using Q = typename Queries::Q;
  if (rows < 1 || rows > kMaxTileRows) fail("attention tile of {} rows: 1..{} are supported", rows, kMaxTileRows);
  if (block < 16 || block > kMaxBlockKeys || block % 16 != 0) fail("attention key block of {} keys", block);
  alignas(64) float s[kGroup * kMaxBlockKeys];
  alignas(64) uint16_t p[kGroup * kMaxBlockKeys];
  alignas(64) uint16_t tail[16 * kHeadDim * 2];  // 32 keys of V in pairs
  alignas(64) Q tile_q[kMaxTileRows * kHeadDim];  // the rows, zero-padded to whole groups of 16
  float max[kMaxTileRows], sum[kMaxTileRows];
  queries.load_rows(rows, tile_q);
  const int64_t padded = (rows + kGroup - 1) / kGroup * kGroup;
  std::fill(tile_q + rows * kHeadDim, tile_q + padded * kHeadDim, Q{0});
  configure_tiles();
  for (int64_t k0 = 0; k0 < len; k0 += block) {
    const int64_t keys = std::min(block, len - k0);
    const int64_t keys16 = (keys + 15) / 16 * 16, keys32 = (keys + 31) / 32 * 32;
    const bool first = k0 == 0;
    // P V reads V 32 keys at a time; the block holds its keys rounded up to 2, zero-padded.
    const uint16_t* block_v = vt2 + k0 * kHeadDim;
    const int64_t whole = (keys + 1) / 2 * 2;
    if (whole < keys32) {
      const int64_t from = keys32 - 32;
      std::memset(tail, 0, sizeof tail);
      std::memcpy(tail, block_v + from * kHeadDim, (whole - from) * kHeadDim * sizeof(uint16_t));
    }
    for (int64_t i = 0; i < rows; i += kGroup) {
      const int64_t valid = std::min(kGroup, rows - i);
      float block_max[kGroup];
      queries.scores(tile_q + i * kHeadDim, i, k0, keys16, keys, valid, kt, s, block_max);
      float* o = acc + i * kHeadDim;
      for (int64_t r = 0; r < valid; ++r) {
        const float* row = s + r * keys16;
        const float new_max = first ? block_max[r] : std::max(max[i + r], block_max[r]);
        const float block_sum = exp_row_to_bf16(row, keys, new_max, p + r * keys32);  // zeros up to keys16
        std::fill(p + r * keys32 + keys16, p + (r + 1) * keys32, uint16_t{0});
        if (first) {
          sum[i + r] = block_sum;
        } else {
          // The max settles early in a long row: most blocks leave it, and the rows so far, as they are.
          const float rescale = new_max == max[i + r] ? 1.f : exp_nonpositive(max[i + r] - new_max);
          sum[i + r] = sum[i + r] * rescale + block_sum;
          if (rescale != 1.f) {
            for (int64_t d = 0; d < kHeadDim; ++d) o[r * kHeadDim + d] *= rescale;
          }
        }
        max[i + r] = new_max;
      }
      if (valid < kGroup) std::fill(p + valid * keys32, p + kGroup * keys32, uint16_t{0});
      values_bf16(p, keys32, block_v, whole, tail, !first, o);
    }
  }
  release_tiles();
  for (int64_t r = 0; r < rows; ++r) {
    const float inverse = 1.0f / sum[r];
    for (int64_t d = 0; d < kHeadDim; ++d) acc[r * kHeadDim + d] *= inverse;
  }
}

void store(const float* acc, int64_t rows, float* o, int64_t o_stride) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(o + r * o_stride, acc + r * kHeadDim, kHeadDim * sizeof(float));
}
void store(const float* acc, int64_t rows, uint16_t* o, int64_t o_stride) {
  for (int64_t r = 0; r < rows; ++r) round_row_to_bf16(acc + r * kHeadDim, kHeadDim, o + r * o_stride);
}

template <class Queries, class Out>
void run(const Queries& queries, int64_t rows, const void* kt, const uint16_t* vt2, int64_t len, int64_t block,
         Out* o, int64_t o_stride) {
  // Whole groups of 16 rows: the tile products write 16 rows whatever `rows` is.
  alignas(64) float acc[kMaxTileRows * kHeadDim];
  amx_tile(queries, rows, kt, vt2, len, block, acc);
  store(acc, rows, o, o_stride);
}

}  // namespace

void allow_amx_attention(bool allowed) { amx_allowed = allowed; }
bool amx_attention_allowed() { return amx_allowed; }

bool amx_attention_supported(int64_t head_dim) { return head_dim == kHeadDim && have_amx_bf16(); }

bool amx_int8_attention_supported(int64_t head_dim) { return head_dim == kHeadDim && have_amx_int8(); }

void attention_tile_bf16_amx(const uint16_t* q, int64_t rows, const uint16_t* kt2, const uint16_t* vt2, int64_t len,
                             int64_t block, float scale, float* o, int64_t o_stride) {
  run(Bf16Queries{q, scale}, rows, kt2, vt2, len, block, o, o_stride);
}

void attention_tile_bf16_amx(const uint16_t* q, int64_t rows, const uint16_t* kt2, const uint16_t* vt2, int64_t len,
                             int64_t block, float scale, uint16_t* o, int64_t o_stride) {
  run(Bf16Queries{q, scale}, rows, kt2, vt2, len, block, o, o_stride);
}

void attention_tile_int8_amx(const uint8_t* q, const float* q_scale, int64_t rows, const int8_t* kt4,
                             const float* key_factor, const int32_t* key_offset, const uint16_t* vt2, int64_t len,
                             int64_t block, float* o, int64_t o_stride) {
  run(Int8Queries{q, q_scale, key_factor, key_offset}, rows, kt4, vt2, len, block, o, o_stride);
}

}  // namespace m3
