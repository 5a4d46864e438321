// What the CUDA runtime says about the machine, callable from code built without CUDA
// (then every query answers "no CUDA": cuda_unavailable.cpp).
#pragma once

#include <cstdint>
#include <string>

namespace m3 {

// True when this binary was built with -DM3_CUDA=ON.
bool cuda_built();
// Visible CUDA devices; 0 with the reason in `why` (no driver, no device, not built...).
int cuda_device_count(std::string* why = nullptr);
// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)".
std::string cuda_device_description(int device);

struct DeviceMemoryInfo {
  uint64_t free = 0;
  uint64_t total = 0;
};
// cudaMemGetInfo on `device` (creates its context when none exists yet).
DeviceMemoryInfo cuda_memory_info(int device);

}  // namespace m3
