// AVX-512 kernels for one attention step of one head: a query tile against a key block.
// oneDNN has no primitive for these shapes that is fast (its sgemm repacks the skinny
// operands on every call and reached ~55 GFLOP/s here), so they are register-blocked
// by hand: 6 query rows x 64 keys (scores) or 6 rows x head_dim (values) of
// accumulators, one broadcast and a few loads per FMA group.
#pragma once

#include <cstdint>

namespace m3 {

// Whether these kernels run here: AVX-512 and a head_dim of 16, 32, 48 or 64.
bool attention_kernels_supported(int64_t head_dim);

// kt[d, j] = k[j, d] for j < keys, zeros up to keys rounded up to 16; kt is head_dim x ld.
void transpose_keys(const float* k, int64_t k_stride, int64_t keys, int64_t head_dim, float* kt, int64_t ld);

// scores[r, j] = scale * q[r, :] . k[j, :] for r < rows, j < keys, from kt (transpose_keys,
// row stride kt_ld); columns up to keys rounded up to 16 are written too.
void attention_scores(const float* q, int64_t q_stride, const float* kt, int64_t kt_ld, int64_t rows, int64_t keys,
                      int64_t head_dim, float scale, float* scores, int64_t ld);

// o[r, :] (+)= sum_j p[r, j] v[j, :] for r < rows, j < keys (accumulate: add to o).
void attention_values(const float* p, int64_t ld, int64_t rows, int64_t keys, const float* v, int64_t v_stride,
                      int64_t head_dim, float* o, int64_t o_stride, bool accumulate);

}  // namespace m3

namespace m3 {

// bfloat16 variants (--dtype bf16 on a CPU with AVX512-BF16): Q, K, V and the softmax
// numerators P are rounded to bfloat16 and multiplied in pairs (vdpbf16ps), accumulating
// in float32: twice the multiply rate of the float32 kernels. Layouts put the two values
// of each pair next to each other:
//   K block: kt2[d / 2][j][d % 2] (keys rounded up to 16, zero-padded)
//   V block: vt2[j / 2][d][j % 2] (keys rounded up to 2, zero-padded)
//   Q rows: plain bf16 rows of head_dim.
bool bf16_attention_kernels_supported(int64_t head_dim);
// y = bf16(x), round to nearest even, on the calling thread (inside a parallel region).
void round_row_to_bf16(const float* x, int64_t n, uint16_t* y);
void pack_keys_bf16(const float* k, int64_t k_stride, int64_t keys, int64_t head_dim, uint16_t* kt2);
void pack_values_bf16(const float* v, int64_t v_stride, int64_t keys, int64_t head_dim, uint16_t* vt2);
// One tile of `rows` query rows (bf16 rows of head_dim) of one head against `len` keys and
// values packed block by block (pack_keys_bf16 / pack_values_bf16 at k0 * head_dim for each
// k0, a multiple of `block`): o = softmax(scale q k^T) v, flash-style. Each row group of 6
// meets a key block start to end while both are in L1: scores, the running max and sum,
// e^(s - max) straight into bf16 P, then P V with the correction of the earlier blocks
// applied as the output rows load. Rows <= kMaxTileRows; block a multiple of 16 up to
// kMaxBlockKeys; head_dim as bf16_attention_kernels_supported.
inline constexpr int64_t kMaxTileRows = 64;
inline constexpr int64_t kMaxBlockKeys = 256;
void attention_tile_bf16(const uint16_t* q, int64_t rows, const uint16_t* kt2, const uint16_t* vt2, int64_t len,
                         int64_t block, int64_t head_dim, float scale, float* o, int64_t o_stride);

}  // namespace m3
