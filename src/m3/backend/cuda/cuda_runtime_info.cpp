#include "m3/backend/cuda/cuda_runtime_info.h"

#include <dlfcn.h>

#include <fmt/format.h>

#include "m3/backend/cuda/cuda_check.h"
#include "m3/memory/memory_plan.h"

namespace m3 {

bool cuda_built() { return true; }

int cuda_device_count(std::string* why) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    if (why) *why = fmt::format("{} ({})", cudaGetErrorString(status), cudaGetErrorName(status));
    if (why && status == cudaErrorInsufficientDriver) {
      void* driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
      if (driver == nullptr) *why = "no NVIDIA driver is installed (libcuda.so.1 cannot be loaded)";
      else dlclose(driver);
    }
    cudaGetLastError();  // clear it: asking is not an error of the process
    return 0;
  }
  if (count == 0 && why) *why = "the CUDA runtime reports no device";
  return count;
}

std::string cuda_device_description(int device) {
  cudaDeviceProp prop{};
  cuda::check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  return fmt::format("{} (sm_{}{}, {})", prop.name, prop.major, prop.minor, format_bytes(prop.totalGlobalMem));
}

DeviceMemoryInfo cuda_memory_info(int device) {
  int current = 0;
  cuda::check(cudaGetDevice(&current), "cudaGetDevice");
  cuda::check(cudaSetDevice(device), "cudaSetDevice");
  size_t free = 0, total = 0;
  const cudaError_t status = cudaMemGetInfo(&free, &total);
  cudaSetDevice(current);
  cuda::check(status, "cudaMemGetInfo");
  return {free, total};
}

}  // namespace m3
