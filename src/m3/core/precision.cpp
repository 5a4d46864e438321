#include "m3/core/precision.h"

#include "m3/core/error.h"

namespace m3 {

DType parse_precision(std::string_view text) {
  if (text == "fp32" || text == "float32" || text == "f32") return DType::F32;
  if (text == "bf16" || text == "bfloat16") return DType::BF16;
  if (text == "int8" || text == "i8") return DType::I8;
  if (text == "fp16" || text == "float16" || text == "half") return DType::F16;
  fail("unknown --dtype \"{}\" (use fp32, bf16, fp16 or int8)", text);
}

std::string_view precision_name(DType p) {
  switch (p) {
    case DType::F32: return "fp32";
    case DType::BF16: return "bf16";
    case DType::I8: return "int8";
    case DType::F16: return "fp16";
    case DType::I32: return "int32";
  }
  return "?";
}

}  // namespace m3
