// Flash-style attention over packed variable-length sequences on the CUDA cores, in
// float32 arithmetic: the path for float32 activations and head sizes the tensor-core
// kernel (flash_attention.cu) does not take; attention() below picks. A block of 4 warps owns a
// tile of 64 query rows of one head of one sequence (16 rows per warp) and streams the
// sequence's keys and values through shared memory 32 at a time, keeping a running max
// and sum per row (online softmax). The only memory is shared: Q tile + one key/value
// block, (64 + 2 x 32) x head_dim floats; nothing grows with the sequence length.
#include <cmath>

#include "m3/backend/cuda/cuda_kernels.h"
#include "m3/backend/cuda/cuda_types.cuh"

namespace m3::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = kAttentionQueryTile / kWarps;  // 16
constexpr int kKeyBlock = 32;                               // one key per lane

template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32)
    attention_kernel(const T* qkv, const float* bias, const int32_t* cu_seqlens, const int32_t* tiles, int heads,
                     T* context) {
  M3_DYNAMIC_SHARED(float, shared);
  float* q_tile = shared;                                 // [64][D], pre-scaled
  float* k_block = q_tile + kAttentionQueryTile * D;      // [32][D + 1] (padded: no bank conflicts)
  float* v_block = k_block + kKeyBlock * (D + 1);         // [32][D]

  const int seq = tiles[2 * blockIdx.x], q0 = tiles[2 * blockIdx.x + 1];
  const int head = blockIdx.y;
  const int begin = cu_seqlens[seq], len = cu_seqlens[seq + 1] - begin;
  const int hidden = heads * D, stride = 3 * hidden;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float scale = rsqrtf(static_cast<float>(D));

  // bias is null when the QKV GEMM added it already (a uniform branch: every thread takes the same side).
  const float* q_bias = bias ? bias + head * D : nullptr;
  const float* k_bias = bias ? bias + hidden + head * D : nullptr;
  const float* v_bias = bias ? bias + 2 * hidden + head * D : nullptr;
  for (int i = threadIdx.x; i < kAttentionQueryTile * D; i += blockDim.x) {
    const int r = i / D, d = i % D;
    const int row = q0 + r;
    q_tile[i] = row < len ? (to_f32(qkv[int64_t(begin + row) * stride + head * D + d]) + (q_bias ? q_bias[d] : 0.f)) * scale : 0.f;
  }

  constexpr int kDims = (D + 31) / 32;  // output dims per lane
  float acc[kRowsPerWarp][kDims];
  float row_max[kRowsPerWarp], row_sum[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    row_max[r] = -INFINITY;
    row_sum[r] = 0.f;
#pragma unroll
    for (int j = 0; j < kDims; ++j) acc[r][j] = 0.f;
  }
  const int rows_here = min(kAttentionQueryTile, len - q0);  // valid query rows in this tile

  for (int k0 = 0; k0 < len; k0 += kKeyBlock) {
    __syncthreads();  // the previous block is consumed (and the Q tile is written)
    for (int i = threadIdx.x; i < kKeyBlock * D; i += blockDim.x) {
      const int r = i / D, d = i % D;
      const int key = k0 + r;
      const int64_t at = int64_t(begin + key) * stride + head * D + d;
      const bool valid = key < len;
      k_block[r * (D + 1) + d] = valid ? to_f32(qkv[at + hidden]) + (k_bias ? k_bias[d] : 0.f) : 0.f;
      v_block[r * D + d] = valid ? to_f32(qkv[at + 2 * hidden]) + (v_bias ? v_bias[d] : 0.f) : 0.f;
    }
    __syncthreads();
    const bool key_valid = k0 + lane < len;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r;
      if (row >= rows_here) break;  // uniform across the warp
      const float* q = q_tile + row * D;
      const float* k = k_block + lane * (D + 1);
      float score = 0.f;
#pragma unroll 16
      for (int d = 0; d < D; ++d) score += q[d] * k[d];
      score = key_valid ? score : -INFINITY;
      float block_max = score;
      for (int o = 16; o > 0; o >>= 1) block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, o));
      const float new_max = fmaxf(row_max[r], block_max);  // finite: key k0 is always valid
      const float p = key_valid ? expf(score - new_max) : 0.f;
      float p_sum = p;
      for (int o = 16; o > 0; o >>= 1) p_sum += __shfl_xor_sync(0xffffffffu, p_sum, o);
      const float correction = expf(row_max[r] - new_max);  // 0 on the first block
      row_sum[r] = row_sum[r] * correction + p_sum;
      row_max[r] = new_max;
#pragma unroll
      for (int j = 0; j < kDims; ++j) acc[r][j] *= correction;
      for (int key = 0; key < kKeyBlock; ++key) {
        const float pk = __shfl_sync(0xffffffffu, p, key);
#pragma unroll
        for (int j = 0; j < kDims; ++j) {
          const int d = lane + 32 * j;
          if (d < D) acc[r][j] += pk * v_block[key * D + d];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = warp * kRowsPerWarp + r;
    if (row >= rows_here) break;
    T* out = context + int64_t(begin + q0 + row) * hidden + head * D;
    const float inv = 1.f / row_sum[r];
#pragma unroll
    for (int j = 0; j < kDims; ++j) {
      const int d = lane + 32 * j;
      if (d < D) out[d] = from_f32<T>(acc[r][j] * inv);
    }
  }
}

template <int D>
constexpr size_t shared_bytes() {
  return sizeof(float) * (kAttentionQueryTile * D + kKeyBlock * (D + 1) + kKeyBlock * D);
}

template <typename T, int D>
void launch(const void* qkv, const float* bias, const int32_t* cu_seqlens, const int32_t* tiles, int64_t tile_count,
            int64_t heads, void* context, cudaStream_t stream) {
  constexpr size_t bytes = shared_bytes<D>();
  allow_dynamic_shared(&attention_kernel<T, D>, bytes);
  const dim3 grid(static_cast<unsigned>(tile_count), static_cast<unsigned>(heads));
  M3_LAUNCH(grid, kWarps * 32, bytes, stream, attention_kernel<T, D>)(static_cast<const T*>(qkv), bias, cu_seqlens, tiles,
                                                               static_cast<int>(heads), static_cast<T*>(context));
}

}  // namespace

bool supported_attention_head_dim(int64_t head_dim) {
  return dispatch_head_dim(head_dim, [](auto) {});
}

void attention(DType type, const void* qkv, const float* qkv_bias, const int32_t* cu_seqlens,
               const int32_t* tiles, int64_t tile_count, int64_t heads, int64_t head_dim, void* context,
               cudaStream_t stream) {
  if (tile_count == 0) return;
  if (flash_attention_supported(type, head_dim)) {
    flash_attention(type, qkv, qkv_bias, cu_seqlens, tiles, tile_count, heads, head_dim, context, stream);
    return;
  }
  dispatch(type, [&](auto zero) {
    using T = decltype(zero);
    // callers check supported_attention_head_dim first
    dispatch_head_dim(head_dim, [&](auto d) {
      launch<T, decltype(d)::value>(qkv, qkv_bias, cu_seqlens, tiles, tile_count, heads, context, stream);
    });
  });
}

}  // namespace m3::cuda
