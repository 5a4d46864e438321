#include "m3/core/precision.h"

#include "m3/core/error.h"

namespace m3 {

Precision parse_precision(std::string_view text) {
  if (text == "fp32" || text == "float32" || text == "f32") return Precision::kFp32;
  if (text == "bf16" || text == "bfloat16") return Precision::kBf16;
  if (text == "int8" || text == "i8") return Precision::kInt8;
  if (text == "fp16" || text == "float16" || text == "half") return Precision::kFp16;
  fail("unknown --dtype \"{}\" (use fp32, bf16, fp16 or int8)", text);
}

std::string_view precision_name(Precision p) {
  switch (p) {
    case Precision::kFp32: return "fp32";
    case Precision::kBf16: return "bf16";
    case Precision::kInt8: return "int8";
    case Precision::kFp16: return "fp16";
  }
  return "?";
}

}  // namespace m3
