// The attention tiles of attention_kernels.h with their two products on AMX, the matrix
// unit of Intel Xeons from Sapphire Rapids on: Q K^T and P V as 16 x 16 tile products
// (tdpbf16ps, tdpbusd for int8 scores), the online softmax between them in AVX-512 as
// before. oneDNN already runs the model's GEMMs on AMX there, so without these attention
// would be the slow part of a long input by far. Same arguments, same layouts (the bf16 K
// and V layouts are AMX's pair layout, the int8 K layout its quad layout), same rounding
// of P; only the order of the float32 sums differs. head_dim 64 (BGE-M3's) only: other
// sizes stay on the AVX-512 tiles, which attention_tile_bf16 and attention_tile_int8 pick.
#pragma once

#include <cstdint>

namespace m3 {

// Whether the AMX tiles run here: AMX-BF16 (and for the int8 scores AMX-INT8), the
// AVX-512 kernels besides, Linux's permission for the tile state, and head_dim 64.
bool amx_attention_supported(int64_t head_dim);
bool amx_int8_attention_supported(int64_t head_dim);
// Whether attention_tile_bf16 and attention_tile_int8 take the AMX tiles where supported
// (the default); off, they run the AVX-512 ones: for tests that compare the two.
void allow_amx_attention(bool allowed);
bool amx_attention_allowed();

// As attention_tile_bf16 and attention_tile_int8 (attention_kernels.h): rows 1..64, a key
// block a multiple of 16 up to 256.
void attention_tile_bf16_amx(const uint16_t* q, int64_t rows, const uint16_t* kt2, const uint16_t* vt2, int64_t len,
                             int64_t block, float scale, float* o, int64_t o_stride);
void attention_tile_bf16_amx(const uint16_t* q, int64_t rows, const uint16_t* kt2, const uint16_t* vt2, int64_t len,
                             int64_t block, float scale, uint16_t* o, int64_t o_stride);
void attention_tile_int8_amx(const uint8_t* q, const float* q_scale, int64_t rows, const int8_t* kt4,
                             const float* key_factor, const int32_t* key_offset, const uint16_t* vt2, int64_t len,
                             int64_t block, float* o, int64_t o_stride);

}  // namespace m3
