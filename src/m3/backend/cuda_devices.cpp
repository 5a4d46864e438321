#include "m3/backend/cuda_devices.h"

#include "m3/core/error.h"

namespace m3 {
namespace {

constexpr const char* kNotBuilt = "this m3embed was built without CUDA (configure with -DM3_CUDA=ON)";

CudaImplementation& implementation() {
  static CudaImplementation registered;
  return registered;
}

}  // namespace

bool register_cuda_implementation(const CudaImplementation& i) {
  implementation() = i;
  return true;
}

bool cuda_built() { return implementation().device_count != nullptr; }

int cuda_device_count(std::string* why) {
  if (!cuda_built()) {
    if (why) *why = kNotBuilt;
    return 0;
  }
  return implementation().device_count(why);
}

std::string cuda_device_description(int device) {
  return cuda_built() ? implementation().describe(device) : std::string(kNotBuilt);
}

DeviceMemoryInfo cuda_memory_info(int device) {
  if (!cuda_built()) fail("{}", kNotBuilt);
  return implementation().memory(device);
}

std::unique_ptr<Backend> make_cuda_backend(const MemoryPlan& plan, Device device) {
  if (!cuda_built()) fail("{}", kNotBuilt);
  return implementation().make_backend(plan, device);
}

}  // namespace m3
