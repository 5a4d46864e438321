// AVX-512 kernels for attention of one head: a tile of query rows against a sequence's
// keys, flash-style. oneDNN has no primitive for these shapes that is fast (its sgemm
// repacks the skinny operands on every call and reached ~55 GFLOP/s here), so they are
// register-blocked by hand: 6 query rows x 64 keys (scores) or 6 rows x head_dim (values)
// of accumulators, one broadcast and a few loads per FMA group.
//
// Each row group of 6 meets a key block start to end while both are in cache: scores, the
// running max and sum, e^(s - max) into P, then P V with the correction of the earlier
// blocks applied as the output rows load (the tile's rows accumulate in a block of their
// own on the stack, stored to `o` at the end). Three precisions of the same tile:
//   float32   (--dtype fp32)  Q K^T and P V in float32 FMAs
//   bfloat16  (--dtype bf16)  Q, K, V and P rounded to bfloat16
//   int8      (--dtype int8)  Q and K on symmetric int8 grids, one scale per head row;
//                             V and P rounded to bfloat16
// bfloat16 products run as pairs (vdpbf16ps), int8 ones as quads (vpdpbusd), each twice
// the rate of the one before, accumulating in float32 or exactly in int32. int8 Q K^T
// costs no fidelity that shows: on the 24-layer benchmark model the dense cosine to fp32
// stays 0.9992 (bench/results/2026-12-07-fidelity-L24-int8-qk.md); its error is ~8x
// bf16's per element but under the GEMMs' own, which quantize 1024-wide rows.
// On a CPU with AMX, attention_tile_bf16 and attention_tile_int8 hand head size 64 to the
// AMX tiles of attention_amx.h: the same layouts and roundings, 16-row tile products.
#pragma once

#include <cstdint>

namespace m3 {

// Whether the kernels run here: AVX-512 and a head_dim of 16, 32, 48 or 64.
bool attention_kernels_supported(int64_t head_dim);
// Whether the bf16 kernels do too: AVX512-BF16 as well.
bool bf16_attention_kernels_supported(int64_t head_dim);
// Whether the int8 scores do too: AVX512-VNNI and BW as well.
bool int8_attention_kernels_supported(int64_t head_dim);

inline constexpr int64_t kMaxTileRows = 64;
inline constexpr int64_t kMaxBlockKeys = 256;

// Layouts, for a block of `keys` keys (each block packed at k0 * head_dim of its buffer,
// k0 a multiple of the tile's block):
//   K float32: kt[d][j], keys rounded up to 16, zero-padded (transpose_keys)
//   K bf16:    kt2[d / 2][j][d % 2], keys rounded up to 16, zero-padded (pack_keys_bf16)
//   V bf16:    vt2[j / 2][d][j % 2], keys rounded up to 2, zero-padded (pack_values_bf16)
//   V float32: the rows as they are, v_stride apart.
//   K int8:    kt4[d / 4][j][d % 4], keys rounded up to 16, zero-padded, with a float
//              key_factor[j] and an int32 key_offset[j] per key (pack_keys_int8)
//   Q: float32 rows q_stride apart, bf16 rows of head_dim (round_row_to_bf16), or int8
//      rows of head_dim stored as q + 128, with a scale per row (quantize_query_int8).
void transpose_keys(const float* k, int64_t k_stride, int64_t keys, int64_t head_dim, float* kt, int64_t ld);
// K and V from float32 rows (rounded to nearest even) or from bf16 rows (copied).
void pack_keys_bf16(const float* k, int64_t k_stride, int64_t keys, int64_t head_dim, uint16_t* kt2);
void pack_keys_bf16(const uint16_t* k, int64_t k_stride, int64_t keys, int64_t head_dim, uint16_t* kt2);
void pack_values_bf16(const float* v, int64_t v_stride, int64_t keys, int64_t head_dim, uint16_t* vt2);
void pack_values_bf16(const uint16_t* v, int64_t v_stride, int64_t keys, int64_t head_dim, uint16_t* vt2);
// y = bf16(x), round to nearest even, on the calling thread (inside a parallel region).
void round_row_to_bf16(const float* x, int64_t n, uint16_t* y);
// int8 rows, symmetric: s = max |x| / 127 (1 for a row of zeros), q = round-to-nearest-even
// (x * (1 / s)) within -127..127. A query row (n <= 64) is written as q + 128 with its s; a
// key as q, with key_factor = s * scale (the softmax scale) and key_offset = -128 sum(q).
void quantize_query_int8(const float* x, int64_t n, uint8_t* q, float* scale);
void pack_keys_int8(const float* k, int64_t k_stride, int64_t keys, int64_t head_dim, float scale, int8_t* kt4,
                    float* key_factor, int32_t* key_offset);

// o = softmax(scale q k^T) v for `rows` query rows (1..kMaxTileRows) against `len` keys in
// blocks of `block` (a multiple of 16 up to kMaxBlockKeys), output rows o_stride apart.
void attention_tile_f32(const float* q, int64_t q_stride, int64_t rows, const float* kt, const float* v,
                        int64_t v_stride, int64_t len, int64_t block, int64_t head_dim, float scale, float* o,
                        int64_t o_stride);
void attention_tile_bf16(const uint16_t* q, int64_t rows, const uint16_t* kt2, const uint16_t* vt2, int64_t len,
                         int64_t block, int64_t head_dim, float scale, float* o, int64_t o_stride);
// The same, its output rows rounded to bf16 (head_dim <= 64).
void attention_tile_bf16(const uint16_t* q, int64_t rows, const uint16_t* kt2, const uint16_t* vt2, int64_t len,
                         int64_t block, int64_t head_dim, float scale, uint16_t* o, int64_t o_stride);
// Scores (float(q . k) * key_factor) * q_scale from int8 Q and K; P V as in the bf16 tile.
void attention_tile_int8(const uint8_t* q, const float* q_scale, int64_t rows, const int8_t* kt4,
                         const float* key_factor, const int32_t* key_offset, const uint16_t* vt2, int64_t len,
                         int64_t block, int64_t head_dim, float* o, int64_t o_stride);

}  // namespace m3
