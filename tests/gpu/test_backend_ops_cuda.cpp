// The op-parity suite (unit/op_parity.h) on the CUDA backend, fp32, fp16 and bf16: on a
// GPU (label gpu; every case skips, saying why, where none can be used), and built again
// as test_backend_ops_emulated against tests/cuda_emulation, where the same host code and
// kernels run on the CPU. The emulation is slow (each CUDA thread is a fiber), so there
// the BGE-M3 batch is shorter (103 tokens) and the FFN-wide linears run 70 rows.
#include <gtest/gtest.h>

#include <stdexcept>

#include "m3/backend/cuda_devices.h"
#include "op_parity.h"

// Defined (tests/CMakeLists.txt) where this binary links a CUDA runtime, real or emulated.
#ifdef M3_TEST_CUDA_RUNTIME
#include <cuda_runtime.h>
#endif

namespace m3::test {
namespace {

#ifdef M3_TEST_CUDA_RUNTIME
void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

// Copies on the default stream, waited for at once: tensors are filled before an op is
// queued on the backend's stream, and read after finish().
void copy(void* to, const void* from, uint64_t bytes, cudaMemcpyKind kind) {
  check(cudaMemcpyAsync(to, from, bytes, kind, nullptr), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize");
}
#endif

std::shared_ptr<const Target> cuda_target() {
  auto t = std::make_shared<Target>();
  t->name = "cuda";
  t->device = DeviceKind::kCuda;
  t->make_backend = [](const MemoryPlan& plan) { return make_cuda_backend(plan, Device{DeviceKind::kCuda, 0}); };
#ifdef M3_TEST_CUDA_RUNTIME
  t->allocate = [](uint64_t bytes) {
    void* p = nullptr;
    check(cudaMalloc(&p, bytes), "cudaMalloc");
    return p;
  };
  t->release = [](void* p) { cudaFree(p); };
  t->upload = [](void* device, const void* host, uint64_t bytes) { copy(device, host, bytes, cudaMemcpyHostToDevice); };
  t->download = [](void* host, const void* device, uint64_t bytes) { copy(host, device, bytes, cudaMemcpyDeviceToHost); };
  t->unavailable = [](DType) -> std::string {
#ifdef M3_CUDA_EMULATED_TEST
    return "";  // the emulated device is always there
#else
    std::string why;
    return cuda_device_count(&why) == 0 ? "no GPU can be used: " + why : "";
#endif
  };
#else
  t->unavailable = [](DType) -> std::string { return "this build has no CUDA runtime (configure with -DM3_CUDA=ON)"; };
#endif
  return t;
}

std::vector<OpCase> cuda_cases() {
#ifdef M3_CUDA_EMULATED_TEST
  const Shape bge_m3 = bge_m3_shape({33, 70}, 70);  // two query tiles, three key blocks
#else
  const Shape bge_m3 = bge_m3_shape({37, 130});
#endif
  std::vector<OpCase> cases;
  const auto target = cuda_target();
  for (DType p : {DType::F32, DType::F16, DType::BF16}) {
    cases.push_back({target, p, tiny_shape()});
    cases.push_back({target, p, bge_m3});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cuda, OpParity, ::testing::ValuesIn(cuda_cases()), op_case_name);

}  // namespace
}  // namespace m3::test
