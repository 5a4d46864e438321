// Built instead of the CUDA backend when -DM3_CUDA=OFF: every CUDA query says why not.
#include "m3/backend/cuda/cuda_replica.h"
#include "m3/backend/cuda/cuda_runtime_info.h"
#include "m3/core/error.h"

namespace m3 {

namespace {
constexpr const char* kNotBuilt = "this m3embed was built without CUDA (configure with -DM3_CUDA=ON)";
}

bool cuda_built() { return false; }

int cuda_device_count(std::string* why) {
  if (why) *why = kNotBuilt;
  return 0;
}

std::string cuda_device_description(int) { return kNotBuilt; }

DeviceMemoryInfo cuda_memory_info(int) { fail("{}", kNotBuilt); }

std::unique_ptr<Replica> make_cuda_replica(int, const SharedModel&, const MemoryPlan&, Device) {
  fail("{}", kNotBuilt);
}

}  // namespace m3
