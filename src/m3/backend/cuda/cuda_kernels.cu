// Element-wise, layer-norm and row-wise kernels. Every reduction is in float32 whatever the
// storage type; one block of 256 threads per row for the row-wise ones.
#include <algorithm>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "m3/backend/cuda/cuda_kernels.h"
#include "m3/backend/cuda/cuda_types.cuh"

namespace m3::cuda {
namespace {

constexpr int kRowThreads = 256;

// Sum over the block; every thread gets the total. `scratch` holds 32 floats.
__device__ float block_sum(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by the previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x / 32) ? scratch[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Two-pass layer norm (as PyTorch) of the row in shared memory x[0, width).
template <typename T>
__device__ void layer_norm_row(const float* x, int width, const float* gamma, const float* beta, float eps,
                               float* scratch, float* out_f32, T* out_gemm) {
  float s = 0.f;
  for (int i = threadIdx.x; i < width; i += blockDim.x) s += x[i];
  const float mean = block_sum(s, scratch) / width;
  float v = 0.f;
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    const float d = x[i] - mean;
    v += d * d;
  }
  const float rstd = rsqrtf(block_sum(v, scratch) / width + eps);
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    const float y = (x[i] - mean) * rstd * gamma[i] + beta[i];
    out_f32[i] = y;
    out_gemm[i] = from_f32<T>(y);
  }
}

template <typename T, typename E>
__global__ void embed_layer_norm_kernel(const int32_t* ids, const int32_t* positions, const E* word,
                                        const E* position, const float* token_type, const float* gamma,
                                        const float* beta, float eps, int width, float* hidden_f32,
                                        T* hidden_gemm) {
  M3_DYNAMIC_SHARED(float, shared);
  float* scratch = shared;
  float* x = shared + 32;
  const int64_t t = blockIdx.x;
  const E* w = word + static_cast<int64_t>(ids[t]) * width;
  const E* p = position + static_cast<int64_t>(positions[t]) * width;
  for (int i = threadIdx.x; i < width; i += blockDim.x) x[i] = (to_f32(w[i]) + token_type[i]) + to_f32(p[i]);
  layer_norm_row(x, width, gamma, beta, eps, scratch, hidden_f32 + t * width, hidden_gemm + t * width);
}

template <typename T>
__global__ void residual_layer_norm_kernel(const float* projection, const float* bias, const float* gamma,
                                           const float* beta, float eps, int width, float* hidden_f32,
                                           T* hidden_gemm) {
  M3_DYNAMIC_SHARED(float, shared);
  float* scratch = shared;
  float* x = shared + 32;
  const int64_t t = blockIdx.x;
  const float* proj = projection ? projection + t * width : nullptr;
  float* h = hidden_f32 + t * width;
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    x[i] = projection ? (proj[i] + (bias ? bias[i] : 0.f)) + h[i] : h[i];
  }
  layer_norm_row(x, width, gamma, beta, eps, scratch, h, hidden_gemm + t * width);
}

template <typename T>
__global__ void bias_activation_kernel(T* y, const float* bias, int64_t count, int64_t width, Activation act) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    float x = to_f32(y[i]) + (bias ? bias[i % width] : 0.f);
    if (act == Activation::kGelu) x = 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    if (act == Activation::kRelu) x = fmaxf(x, 0.f);
    if (act == Activation::kTanh) x = tanhf(x);
    y[i] = from_f32<T>(x);
  }
}

// x / max(||x||, 1e-12), as torch.nn.functional.normalize; `in` may equal `out`. Returns
// the norm divided by (in every thread).
__device__ float normalize_row(const float* in, const float* bias, int width, float* scratch, float* out) {
  float s = 0.f;
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    const float v = in[i] + (bias ? bias[i] : 0.f);
    s += v * v;
  }
  const float norm = fmaxf(sqrtf(block_sum(s, scratch)), 1e-12f);
  for (int i = threadIdx.x; i < width; i += blockDim.x) out[i] = (in[i] + (bias ? bias[i] : 0.f)) / norm;
  return norm;
}

// One block per sequence; each thread sums its columns over the rows in order.
__global__ void pool_kernel(const float* x, const int32_t* cu_seqlens, int width, bool mean, float* out,
                            float* norms) {
  __shared__ float scratch[32];
  const int64_t s = blockIdx.x;
  const float* first = x + static_cast<int64_t>(cu_seqlens[s]) * width;
  float* row = out + s * width;
  const float* pooled = first;
  if (mean) {
    const int64_t len = cu_seqlens[s + 1] - cu_seqlens[s];
    const float count = static_cast<float>(len > 0 ? len : 1);
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
      float sum = 0.f;
      for (int64_t r = 0; r < len; ++r) sum += first[r * width + i];
      row[i] = sum / count;
    }
    __syncthreads();
    pooled = row;
  } else if (!norms) {
    for (int i = threadIdx.x; i < width; i += blockDim.x) row[i] = first[i];
  }
  if (!norms) return;
  const float norm = normalize_row(pooled, nullptr, width, scratch, row);
  if (threadIdx.x == 0) norms[s] = norm;
}

__global__ void normalize_rows_kernel(float* rows, const float* bias, int width) {
  __shared__ float scratch[32];
  float* row = rows + static_cast<int64_t>(blockIdx.x) * width;
  normalize_row(row, bias, width, scratch, row);
}

// One warp per row.
__global__ void dot_relu_rows_kernel(const float* x, const float* w, const float* b, int64_t rows, int width,
                                     float* y) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (t >= rows) return;
  const int lane = threadIdx.x % 32;
  const float* row = x + t * width;
  float s = 0.f;
  for (int i = lane; i < width; i += 32) s += row[i] * w[i];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) y[t] = fmaxf(s + (b ? b[0] : 0.f), 0.f);
}

// One thread per token; O(len) per token, so O(len^2) per sequence (67M compares at 8192).
__global__ void max_per_token_id_kernel(const float* weights, const int32_t* ids, const int32_t* cu_seqlens,
                                          int sequences, int64_t tokens, SkipIds skip_ids, float* out) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  int lo = 0, hi = sequences;  // the sequence s with cu_seqlens[s] <= t < cu_seqlens[s + 1]
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (cu_seqlens[mid] <= t) lo = mid;
    else hi = mid;
  }
  const int32_t begin = cu_seqlens[lo], end = cu_seqlens[lo + 1];
  const int32_t id = ids[t];
  const float w = weights[t];
  bool keep = w > 0.f;
  for (int k = 0; k < 4; ++k) keep = keep && id != skip_ids.id[k];
  for (int32_t j = begin; keep && j < t; ++j) keep = !(ids[j] == id && weights[j] > 0.f);
  float best = w;
  for (int32_t j = static_cast<int32_t>(t) + 1; keep && j < end; ++j) {
    if (ids[j] == id) best = fmaxf(best, weights[j]);
  }
  out[t] = keep ? best : 0.f;
}

unsigned blocks_for(int64_t count, int threads) {
  return static_cast<unsigned>(std::min<int64_t>((count + threads - 1) / threads, int64_t{1} << 16));
}

size_t row_shared_bytes(int64_t width) { return (32 + static_cast<size_t>(width)) * sizeof(float); }

}  // namespace

void embed_layer_norm(DType type, DType embedding_type, const int32_t* ids, const int32_t* positions,
                      int64_t tokens, const void* word, const void* position, const float* token_type,
                      const float* gamma, const float* beta, float eps, int64_t hidden, float* hidden_f32,
                      void* hidden_gemm, cudaStream_t stream) {
  if (tokens == 0) return;
  dispatch(type, [&](auto zero) {
    using T = decltype(zero);
    dispatch(embedding_type, [&](auto embedding_zero) {
      using E = decltype(embedding_zero);
      M3_LAUNCH(static_cast<unsigned>(tokens), kRowThreads, row_shared_bytes(hidden), stream,
                embed_layer_norm_kernel<T, E>)(ids, positions, static_cast<const E*>(word),
                                               static_cast<const E*>(position), token_type, gamma, beta, eps,
                                               static_cast<int>(hidden), hidden_f32, static_cast<T*>(hidden_gemm));
    });
  });
}

void residual_layer_norm(DType type, const float* projection, const float* bias, int64_t tokens,
                         const float* gamma, const float* beta, float eps, int64_t hidden, float* hidden_f32,
                         void* hidden_gemm, cudaStream_t stream) {
  if (tokens == 0) return;
  dispatch(type, [&](auto zero) {
    using T = decltype(zero);
    M3_LAUNCH(static_cast<unsigned>(tokens), kRowThreads, row_shared_bytes(hidden), stream, residual_layer_norm_kernel<T>)(
        projection, bias, gamma, beta, eps, static_cast<int>(hidden), hidden_f32, static_cast<T*>(hidden_gemm));
  });
}

void bias_activation(DType type, void* y, const float* bias, int64_t rows, int64_t width, Activation act,
                     cudaStream_t stream) {
  const int64_t count = rows * width;
  if (count == 0) return;
  dispatch(type, [&](auto zero) {
    using T = decltype(zero);
    M3_LAUNCH(blocks_for(count, 256), 256, 0, stream, bias_activation_kernel<T>)(static_cast<T*>(y), bias, count,
                                                                                   width, act);
  });
}

void pool(const float* x, const int32_t* cu_seqlens, int64_t sequences, int64_t width, bool mean, float* out,
          float* norms, cudaStream_t stream) {
  if (sequences == 0) return;
  M3_LAUNCH(static_cast<unsigned>(sequences), kRowThreads, 0, stream, pool_kernel)(
      x, cu_seqlens, static_cast<int>(width), mean, out, norms);
}

void normalize_rows(float* rows, const float* bias, int64_t count, int64_t width, cudaStream_t stream) {
  if (count == 0) return;
  M3_LAUNCH(static_cast<unsigned>(count), kRowThreads, 0, stream, normalize_rows_kernel)(rows, bias, static_cast<int>(width));
}

void dot_relu_rows(const float* x, const float* w, const float* b, int64_t rows, int64_t width, float* y,
                   cudaStream_t stream) {
  if (rows == 0) return;
  constexpr int kWarps = 8;
  M3_LAUNCH(static_cast<unsigned>((rows + kWarps - 1) / kWarps), kWarps * 32, 0, stream, dot_relu_rows_kernel)(
      x, w, b, rows, static_cast<int>(width), y);
}

void max_per_token_id(const float* weights, const int32_t* ids, const int32_t* cu_seqlens, int64_t sequences,
                        int64_t tokens, SkipIds skip_ids, float* out, cudaStream_t stream) {
  if (tokens == 0) return;
  M3_LAUNCH(static_cast<unsigned>((tokens + 255) / 256), 256, 0, stream, max_per_token_id_kernel)(
      weights, ids, cu_seqlens, static_cast<int>(sequences), tokens, skip_ids, out);
}

}  // namespace m3::cuda
