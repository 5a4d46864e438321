// The precision the encoder's GEMMs compute in (`--dtype`), as a DType: F32 (the
// reference path), BF16 and F16 (16-bit weights and GEMM inputs, float32 accumulation;
// F16 is CUDA only) and I8 (int8 weights per output channel, int8 inputs per token; CPU
// only). Activations, layer norms, softmax and the heads' arithmetic stay float32 on the
// CPU; on CUDA activations between GEMMs are stored in the GEMM precision (docs/gpu.md).
#pragma once

#include <string>
#include <string_view>

#include "m3/core/dtype.h"

namespace m3 {

// "fp32" | "bf16" | "fp16" | "int8" (also "float32", "bfloat16", "float16"); throws m3::Error otherwise.
DType parse_precision(std::string_view text);
// "fp32", "bf16", "fp16", "int8" (the --dtype spelling).
std::string_view precision_name(DType p);

}  // namespace m3
