// The CUDA library's entry points: device queries on the CUDA runtime, and the backend
// factory, registered with cuda_devices.h when the library is linked in.
#include "m3/backend/cuda_devices.h"

#include <dlfcn.h>

#include <fmt/format.h>

#include "m3/backend/cuda/cuda_check.h"
#include "m3/memory/memory_plan.h"

namespace m3 {

std::unique_ptr<Backend> make_cuda_backend_on_device(const MemoryPlan& plan, Device device);  // cuda_backend.cpp

namespace {

int device_count(std::string* why) {
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

std::string describe(int device) {
  cudaDeviceProp prop{};
  cuda::check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  return fmt::format("{} (sm_{}{}, {})", prop.name, prop.major, prop.minor, format_bytes(prop.totalGlobalMem));
}

DeviceMemoryInfo memory(int device) {
  int current = 0;
  cuda::check(cudaGetDevice(&current), "cudaGetDevice");
  cuda::check(cudaSetDevice(device), "cudaSetDevice");
  size_t free = 0, total = 0;
  const cudaError_t status = cudaMemGetInfo(&free, &total);
  cudaSetDevice(current);
  cuda::check(status, "cudaMemGetInfo");
  return {free, total};
}

const bool registered = register_cuda_implementation({device_count, describe, memory, make_cuda_backend_on_device});

}  // namespace

}  // namespace m3
