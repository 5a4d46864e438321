// RestrictedUnpickler: reads the `data.pkl` of a torch.save archive into a flat list of
// tensor records, accepting only the opcodes and globals a state dict uses. It is a
// stack machine over untrusted bytes: nothing is imported or executed, sizes are capped.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "m3/core/dtype.h"

namespace m3 {

// One tensor as `torch._utils._rebuild_tensor_v2` describes it: a strided view into a
// storage record `data/<storage_key>` holding `storage_numel` elements of `dtype`.
struct PickledTensor {
  std::string storage_key;
  DType dtype = DType::F32;
  int64_t storage_numel = 0;
  int64_t storage_offset = 0;  // in elements
  std::vector<int64_t> size;
  std::vector<int64_t> stride;  // in elements, one per dimension
  // Set (e.g. "torch.LongStorage") when the storage type is one m3embed does not read;
  // such tensors (like transformers' `embeddings.position_ids` buffer) are listed, and
  // only reading them is an error.
  std::string unsupported_dtype;
};

struct RestrictedUnpicklerLimits {
  size_t max_stack = 1 << 20;         // values on the stack at once
  size_t max_memo = 1 << 20;          // memo entries
  size_t max_objects = 4 << 20;       // containers/values created in total
  size_t max_depth = 32;              // nesting of dicts when flattening
  size_t max_dims = 64;               // tensor rank
};

// Unpickles `bytes` (pickle protocol 2..5) and returns the tensors of the top-level dict
// in pickle order. Nested dicts are flattened with dotted names ({"model": {"w": t}} ->
// "model.w"; integer keys become decimal names); values that are neither tensors nor
// dicts (numbers, strings, lists, None) are skipped. Throws m3::Error naming `source`
// and the offending opcode, global or key on anything else.
std::vector<std::pair<std::string, PickledTensor>> unpickle_state_dict(
    std::span<const unsigned char> bytes, std::string_view source,
    const RestrictedUnpicklerLimits& limits = {});

}  // namespace m3
