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
