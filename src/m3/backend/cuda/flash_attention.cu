// Packed varlen self-attention on the tensor cores (FlashAttention-2's forward pass) for
// fp16 and bf16. A block of 4 warps owns 64 query rows of one head of one sequence, 16
// rows per warp. The sequence's keys and values stream through shared memory in blocks of
// 64, double-buffered with cp.async, so loading block j+1 overlaps computing block j. Each
// warp computes S = Q K^T and O += P V with mma.sync m16n8k16 (fp32 accumulators): S and P
// never leave registers, the softmax is online (running max and sum per row, exp2 of
// pre-scaled scores), and P's accumulator layout is already mma's A layout. Shared memory
// only, (64 + 4 x 64) rows of head_dim + 8 values: nothing grows with the sequence length.
//
// The QKV bias, when the GEMM left it out, is folded in exactly: Q gets it as it is
// loaded; K's bias adds q . b_k to every score of a row, which the softmax cancels; V's
// bias adds b_v to every output row, since each row of P sums to one.
#include <cmath>

#include "m3/backend/cuda/cuda_kernels.h"
#include "m3/backend/cuda/cuda_types.cuh"
#include "m3/backend/cuda/tensor_core.cuh"

namespace m3::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kQueryRows = kAttentionQueryTile;  // 64: 16 per warp, one mma row tile
constexpr int kKeyBlock = 64;
// Shared rows are padded by 16 bytes: the 8 rows one ldmatrix tile reads then start in
// 8 different 16-byte bank groups (a row of 64 or 128 values would put them all in one).
constexpr int kPad = 8;
constexpr float kLog2e = 1.4426950408889634f;

template <int D>
constexpr int kRow = D + kPad;  // values per shared row

template <int D>
constexpr size_t shared_bytes() {
  return sizeof(uint16_t) * size_t(kQueryRows + 4 * kKeyBlock) * kRow<D>;
}

// Issues the copies of keys and values [k0, k0 + 64) of one head into k_s and v_s (zeros
// past the sequence, so masked keys meet finite values).
template <typename T, int D>
__device__ __forceinline__ void load_key_block(const T* key_base, const T* value_base, int64_t stride, int k0, int len,
                                               T* k_s, T* v_s) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  for (int i = threadIdx.x; i < kKeyBlock * kChunks; i += kWarps * 32) {
    const int r = i / kChunks, c = i % kChunks;
    const bool valid = k0 + r < len;
    const int64_t at = int64_t(valid ? k0 + r : 0) * stride + c * 8;
    cp_async_16(k_s + r * kRow<D> + c * 8, key_base + at, valid);
    cp_async_16(v_s + r * kRow<D> + c * 8, value_base + at, valid);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32)
    flash_attention_kernel(const T* qkv, const float* bias, const int32_t* cu_seqlens, const int32_t* tiles,
                           int heads, T* context) {
  static_assert(D % 16 == 0 && (D / 8) % 2 == 0, "head_dim must be a multiple of 16");
  M3_DYNAMIC_SHARED(uint4, shared_raw);  // uint4: 16-byte aligned for ldmatrix and cp.async
  T* q_s = reinterpret_cast<T*>(shared_raw);  // [64][kRow]
  T* k_s = q_s + kQueryRows * kRow<D>;         // [2][64][kRow]
  T* v_s = k_s + 2 * kKeyBlock * kRow<D>;      // [2][64][kRow]

  const int seq = tiles[2 * blockIdx.x], q0 = tiles[2 * blockIdx.x + 1];
  const int head = blockIdx.y;
  const int begin = cu_seqlens[seq], len = cu_seqlens[seq + 1] - begin;
  const int hidden = heads * D;
  const int64_t stride = 3 * int64_t(hidden);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, quad = lane % 4;
  const T* q_base = qkv + int64_t(begin) * stride + head * D;
  const T* k_base = q_base + hidden;
  const T* v_base = q_base + 2 * hidden;

  // Keys and values of block 0 start loading while the Q tile goes through registers
  // (for its bias); rows past the sequence are zeros.
  load_key_block<T, D>(k_base, v_base, stride, 0, len, k_s, v_s);
  cp_async_commit();
  const float* q_bias = bias ? bias + head * D : nullptr;
  for (int i = threadIdx.x; i < kQueryRows * D; i += kWarps * 32) {
    const int r = i / D, d = i % D;
    const bool valid = q0 + r < len;
    const float q = valid ? to_f32(q_base[int64_t(q0 + r) * stride + d]) + (q_bias ? q_bias[d] : 0.f) : 0.f;
    q_s[r * kRow<D> + d] = from_f32<T>(q);
  }
  __syncthreads();
  uint32_t q_frag[D / 16][4];  // this warp's 16 rows as A fragments, one per 16 dims
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    ldmatrix_x4<false>(q_frag[kk], q_s + (warp * 16 + lane % 16) * kRow<D> + kk * 16 + (lane / 16) * 8);
  }

  float o[D / 8][4];  // output accumulators: rows group and group + 8, dims 8n + 2quad (+1)
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY};  // in log2 units, rows group and group + 8
  float row_sum[2] = {0.f, 0.f};              // this lane's share; the quad's lanes sum at the end
  const float scale_log2 = rsqrtf(static_cast<float>(D)) * kLog2e;

  const int blocks = (len + kKeyBlock - 1) / kKeyBlock;
  for (int j = 0; j < blocks; ++j) {
    const int buffer = j & 1;
    if (j + 1 < blocks) {
      const int next = buffer ^ 1;
      load_key_block<T, D>(k_base, v_base, stride, (j + 1) * kKeyBlock, len, k_s + next * kKeyBlock * kRow<D>,
                           v_s + next * kKeyBlock * kRow<D>);
    }
    cp_async_commit();  // possibly empty: the wait below then always leaves one group
    cp_async_wait<1>();  // block j has landed (for this thread)...
    __syncthreads();     // ...and for every thread
    const T* k_tile = k_s + buffer * kKeyBlock * kRow<D>;
    const T* v_tile = v_s + buffer * kKeyBlock * kRow<D>;

    // S = Q K^T: 16 rows x 64 keys, eight 8-key accumulators.
    float s[kKeyBlock / 8][4];
#pragma unroll
    for (int n = 0; n < kKeyBlock / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int n = 0; n < kKeyBlock / 8; n += 2) {
        // Tiles: keys 8n..8n+7 at dims 16kk + (0, 8), then keys 8n+8.. at the same dims.
        uint32_t b[4];
        ldmatrix_x4<false>(b, k_tile + (n * 8 + lane % 8 + 8 * (lane / 16)) * kRow<D> + kk * 16 + 8 * ((lane / 8) % 2));
        mma_16x8x16<T>(s[n], q_frag[kk], b[0], b[1]);
        mma_16x8x16<T>(s[n + 1], q_frag[kk], b[2], b[3]);
      }
    }

    // Online softmax over the block, per row; a row's 64 scores are spread over its quad.
    const int k0 = j * kKeyBlock;
    float block_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kKeyBlock / 8; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const bool valid = k0 + n * 8 + 2 * quad + (i & 1) < len;
        s[n][i] = valid ? s[n][i] * scale_log2 : -INFINITY;
        block_max[i / 2] = fmaxf(block_max[i / 2], s[n][i]);
      }
    }
    float correction[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      block_max[h] = fmaxf(block_max[h], __shfl_xor_sync(0xffffffffu, block_max[h], 1));
      block_max[h] = fmaxf(block_max[h], __shfl_xor_sync(0xffffffffu, block_max[h], 2));
      const float new_max = fmaxf(row_max[h], block_max[h]);  // finite: key 0 is in every row's first block
      correction[h] = exp2f(row_max[h] - new_max);            // 0 on the first block
      row_max[h] = new_max;
      row_sum[h] *= correction[h];
    }
#pragma unroll
    for (int n = 0; n < kKeyBlock / 8; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        s[n][i] = exp2f(s[n][i] - row_max[i / 2]);  // masked scores: exp2(-inf) = 0
        row_sum[i / 2] += s[n][i];
      }
    }
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      o[n][0] *= correction[0];
      o[n][1] *= correction[0];
      o[n][2] *= correction[1];
      o[n][3] *= correction[1];
    }

    // O += P V, 16 keys at a time: two S accumulators make one A fragment.
#pragma unroll
    for (int kk = 0; kk < kKeyBlock / 16; ++kk) {
      const uint32_t p[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                             pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int n = 0; n < D / 8; n += 2) {
        // Transposed tiles: keys 16kk + (0, 8) at dims 8n, then the same keys at dims 8n + 8.
        uint32_t b[4];
        ldmatrix_x4<true>(b, v_tile + (kk * 16 + lane % 16) * kRow<D> + n * 8 + 8 * (lane / 16));
        mma_16x8x16<T>(o[n], p, b[0], b[1]);
        mma_16x8x16<T>(o[n + 1], p, b[2], b[3]);
      }
    }
    __syncthreads();  // every warp is done with this buffer before it is loaded again
  }

  // Normalise, add V's bias, write this warp's rows that lie in the sequence.
  const float* v_bias = bias ? bias + 2 * hidden + head * D : nullptr;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 1);
    row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 2);
    const int row = q0 + warp * 16 + group + 8 * h;
    if (row >= len) continue;
    const float inv = 1.f / row_sum[h];
    T* out = context + int64_t(begin + row) * hidden + head * D;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int d = n * 8 + 2 * quad;
      const float lo = o[n][2 * h] * inv + (v_bias ? v_bias[d] : 0.f);
      const float hi = o[n][2 * h + 1] * inv + (v_bias ? v_bias[d + 1] : 0.f);
      *reinterpret_cast<uint32_t*>(out + d) = pack2<T>(lo, hi);
    }
  }
}

template <typename T, int D>
void launch(const void* qkv, const float* bias, const int32_t* cu_seqlens, const int32_t* tiles, int64_t tile_count,
            int64_t heads, void* context, cudaStream_t stream) {
  constexpr size_t bytes = shared_bytes<D>();
  allow_dynamic_shared(&flash_attention_kernel<T, D>, bytes);
  const dim3 grid(static_cast<unsigned>(tile_count), static_cast<unsigned>(heads));
  M3_LAUNCH(grid, kWarps * 32, bytes, stream, flash_attention_kernel<T, D>)(
      static_cast<const T*>(qkv), bias, cu_seqlens, tiles, static_cast<int>(heads), static_cast<T*>(context));
}

}  // namespace

bool flash_attention_supported(DType type, int64_t head_dim) {
  const bool sixteen_bit = type == DType::F16 || type == DType::BF16;
  return sixteen_bit && head_dim % 16 == 0 && dispatch_head_dim(head_dim, [](auto) {});
}

void flash_attention(DType type, const void* qkv, const float* qkv_bias, const int32_t* cu_seqlens,
                     const int32_t* tiles, int64_t tile_count, int64_t heads, int64_t head_dim, void* context,
                     cudaStream_t stream) {
  if (!flash_attention_supported(type, head_dim)) return;  // attention() checks first
  dispatch(type, [&](auto zero) {
    using T = decltype(zero);
    dispatch_head_dim(head_dim, [&](auto d) {
      if constexpr (!std::is_same_v<T, float> && decltype(d)::value % 16 == 0) {
        launch<T, decltype(d)::value>(qkv, qkv_bias, cu_seqlens, tiles, tile_count, heads, context, stream);
      }
    });
  });
}

}  // namespace m3::cuda
