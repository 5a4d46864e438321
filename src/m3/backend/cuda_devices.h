// CUDA devices as the layers above the backend see them: how many, their memory, and a
// backend on one. The CUDA library (src/m3/backend/cuda/) is linked into an executable as
// an object library that registers its implementation at start; without it (a build with
// -DM3_CUDA=OFF) every query says so. Nothing below the executable names the
// implementation, which is how the tests swap in the CUDA emulation.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "m3/backend/backend.h"
#include "m3/core/device.h"
#include "m3/memory/memory_plan.h"

namespace m3 {

struct DeviceMemoryInfo {
  uint64_t free = 0;
  uint64_t total = 0;
};

// What the CUDA library registers.
struct CudaImplementation {
  int (*device_count)(std::string* why) = nullptr;
  std::string (*describe)(int device) = nullptr;
  DeviceMemoryInfo (*memory)(int device) = nullptr;
  std::unique_ptr<Backend> (*make_backend)(const MemoryPlan& plan, Device device) = nullptr;
};
// Called once, from a static initializer of the CUDA library; returns true.
bool register_cuda_implementation(const CudaImplementation& implementation);

bool cuda_built();
// 0 with the reason in `why` when no GPU can be used.
int cuda_device_count(std::string* why = nullptr);
std::string cuda_device_description(int device);
DeviceMemoryInfo cuda_memory_info(int device);
// The backend of one replica on `device`: one cudaMalloc of plan.device_bytes (the
// weights, placed by place_weights, then the arena with the cuBLASLt workspace) and
// plan.pinned_bytes of pinned host staging in two slots.
std::unique_ptr<Backend> make_cuda_backend(const MemoryPlan& plan, Device device);

}  // namespace m3
