// GPU memory figures of an Embedder's CUDA replicas for the bench reports (empty on CPU).
#pragma once

#include <nlohmann/json.hpp>

#include "m3/backend/cuda_devices.h"
#include "m3/runtime/embedder.h"

namespace m3::bench {

// Used bytes of `device` now, by every process (total - free).
inline uint64_t device_used_now(int device) {
  const DeviceMemoryInfo m = cuda_memory_info(device);
  return m.total - m.free;
}

// One entry per CUDA replica: device total, used before its allocation (the context),
// after warm-up, now, and the planned allocation.
inline nlohmann::json device_memory_json(const Embedder& embedder) {
  nlohmann::json out = nlohmann::json::array();
  for (const WarmupReport& w : embedder.warmup_reports()) {
    if (!w.device) continue;
    out.push_back({{"device", "cuda:" + std::to_string(w.device_index)},
                   {"total_bytes", w.device_total},
                   {"used_before_replica_bytes", w.device_total - w.device_free_before},
                   {"used_after_warmup_bytes", w.device_total - w.device_free_after},
                   {"used_now_bytes", device_used_now(w.device_index)},
                   {"planned_bytes", w.device_planned}});
  }
  return out;
}

}  // namespace m3::bench
