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
//   Q and P rows: plain bf16 rows (head_dim and keys rounded up to 2, zero-padded).
bool bf16_attention_kernels_supported(int64_t head_dim);
// y = bf16(x), round to nearest even, on the calling thread (inside a parallel region).
void round_row_to_bf16(const float* x, int64_t n, uint16_t* y);
void pack_keys_bf16(const float* k, int64_t k_stride, int64_t keys, int64_t head_dim, uint16_t* kt2);
void pack_values_bf16(const float* v, int64_t v_stride, int64_t keys, int64_t head_dim, uint16_t* vt2);
void attention_scores_bf16(const uint16_t* q, int64_t q_ld, const uint16_t* kt2, int64_t rows, int64_t keys,
                           int64_t head_dim, float scale, float* scores, int64_t ld);
void attention_values_bf16(const uint16_t* p, int64_t p_ld, int64_t rows, int64_t keys, const uint16_t* vt2,
                           int64_t head_dim, float* o, int64_t o_stride, bool accumulate);

}  // namespace m3
