// The precision the encoder's GEMMs compute in (`--dtype`). On the CPU bf16 also runs
// attention's products in bf16, and activations, layer norms, softmax and the heads stay
// float32; on CUDA, activations between GEMMs are stored in the GEMM precision too
// (docs/gpu.md).
#pragma once

#include <string>
#include <string_view>

namespace m3 {

enum class Precision {
  kFp32,  // float32 weights and inputs: the reference path
  kBf16,  // bfloat16 weights and GEMM inputs, float32 accumulation
  kInt8,  // int8 weights (per output channel scales), int8 inputs (per token scales); CPU only
  kFp16,  // float16 weights and GEMM inputs, float32 accumulation; CUDA only
};

// "fp32" | "bf16" | "fp16" | "int8" (also "float32", "bfloat16", "float16"); throws m3::Error otherwise.
Precision parse_precision(std::string_view text);
std::string_view precision_name(Precision p);

}  // namespace m3
