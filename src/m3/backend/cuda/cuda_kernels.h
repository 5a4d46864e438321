// Launchers of m3embed's CUDA kernels (cuda_kernels.cu, cuda_attention.cu). Plain C++
// declarations, so the host code that calls them needs no CUDA compiler; buffers of the
// GEMM type are void* with their DType. All launch on `stream` and return at once;
// the caller checks cudaGetLastError.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "m3/core/dtype.h"

namespace m3::cuda {

// hidden[t] = LayerNorm(word[ids[t]] + token_type + position[positions[t]]), written as
// float32 (the residual stream) and as the GEMM type (hidden_gemm may equal hidden for f32).
// The embedding tables are stored as `embedding_type`.
void embed_layer_norm(DType type, DType embedding_type, const int32_t* ids, const int32_t* positions,
                      int64_t tokens, const void* word, const void* position, const float* token_type,
                      const float* gamma, const float* beta, float eps, int64_t hidden, float* hidden_f32,
                      void* hidden_gemm, cudaStream_t stream);

// hidden = LayerNorm(hidden (+ projection (+ bias)) when projection is not null), float32
// in place and as `type` into hidden_gemm (which may equal hidden for float32).
void residual_layer_norm(DType type, const float* projection, const float* bias, int64_t tokens,
                         const float* gamma, const float* beta, float eps, int64_t hidden, float* hidden_f32,
                         void* hidden_gemm, cudaStream_t stream);

// y = act(y + bias) in place over [rows, width] of `type`; bias may be null.
enum class Activation { kNone, kGelu, kRelu, kTanh };
void bias_activation(DType type, void* y, const float* bias, int64_t rows, int64_t width, Activation act,
                     cudaStream_t stream);

// Self-attention of each packed sequence over itself, flash-style: 64-query tiles stream
// key blocks through shared memory with an online softmax, so no score matrix is stored
// anywhere. qkv: [tokens, 3 * heads * head_dim] without its bias (added here when not
// null); tiles: (sequence, first query row) pairs; context: [tokens, heads * head_dim].
// head_dim must be one of supported_attention_head_dim. fp16 and bf16 run on the tensor
// cores (flash_attention.cu) wherever flash_attention_supported; the rest (float32, head
// size 8) on the CUDA cores (cuda_attention.cu).
bool supported_attention_head_dim(int64_t head_dim);
constexpr int kAttentionQueryTile = 64;
void attention(DType type, const void* qkv, const float* qkv_bias, const int32_t* cu_seqlens,
               const int32_t* tiles, int64_t tile_count, int64_t heads, int64_t head_dim, void* context,
               cudaStream_t stream);
bool flash_attention_supported(DType type, int64_t head_dim);
void flash_attention(DType type, const void* qkv, const float* qkv_bias, const int32_t* cu_seqlens,
                     const int32_t* tiles, int64_t tile_count, int64_t heads, int64_t head_dim, void* context,
                     cudaStream_t stream);

// out[s] = each sequence's first row (mean: the mean of its rows), then, when norms is not
// null, normalized, with norms[s] = the norm divided by.
void pool(const float* x, const int32_t* cu_seqlens, int64_t sequences, int64_t width, bool mean, float* out,
          float* norms, cudaStream_t stream);
// rows[t] = normalize(rows[t] (+ bias when not null)) in place, each row of `width`.
void normalize_rows(float* rows, const float* bias, int64_t count, int64_t width, cudaStream_t stream);
// y[t] = relu(x[t] . w + b) for each row t of x (b may be null).
void dot_relu_rows(const float* x, const float* w, const float* b, int64_t rows, int64_t width, float* y,
                   cudaStream_t stream);
// out[t] = the largest weight of token ids[t] in its sequence when t is that id's first
// occurrence with a positive weight and the id is not one of `skip_ids` (4 ids, -1 for
// none); else 0.
struct SkipIds {
  int32_t id[4];
};
void max_per_token_id(const float* weights, const int32_t* ids, const int32_t* cu_seqlens, int64_t sequences,
                        int64_t tokens, SkipIds skip_ids, float* out, cudaStream_t stream);

}  // namespace m3::cuda
