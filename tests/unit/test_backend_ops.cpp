// The op-parity suite (op_parity.h) on the CPU backend: fp32, and bf16 and int8 where this
// CPU computes them (AVX512-BF16/AMX, VNNI); elsewhere those cases skip, saying why,
// since the backend would compute them in float32 and prove nothing about bf16 or int8.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#include "m3/backend/cpu/cpu_backend.h"
#include "m3/backend/cpu/packed_linear_weights.h"
#include "op_parity.h"

namespace m3::test {
namespace {

std::shared_ptr<const Target> cpu_target() {
  auto t = std::make_shared<Target>();
  t->name = "cpu";
  t->device = DeviceKind::kCpu;
  t->make_backend = [](const MemoryPlan& plan) { return std::make_unique<CpuBackend>(plan, plan.inputs.threads); };
  t->allocate = [](uint64_t bytes) { return std::aligned_alloc(64, (bytes + 63) / 64 * 64); };
  t->release = [](void* p) { std::free(p); };
  t->upload = [](void* device, const void* host, uint64_t bytes) { std::memcpy(device, host, bytes); };
  t->download = [](void* host, const void* device, uint64_t bytes) { std::memcpy(host, device, bytes); };
  t->unavailable = [](DType precision) -> std::string {
    if (cpu_supports(precision)) return "";
    return "this CPU has no " + std::string(precision_name(precision)) + " instructions (" +
           (precision == DType::BF16 ? "AVX512-BF16 or AMX" : "AVX512-VNNI, AVX-VNNI or AMX") +
           "): the CPU backend would compute in float32, which tests nothing of " +
           std::string(precision_name(precision));
  };
  return t;
}

std::vector<OpCase> cpu_cases() {
  std::vector<OpCase> cases;
  const auto target = cpu_target();
  for (DType p : {DType::F32, DType::BF16, DType::I8}) {
    cases.push_back({target, p, tiny_shape()});
    cases.push_back({target, p, bge_m3_shape({37, 130})});
  }
  // Heads of 24, which the bf16 attention kernels do not take: there --dtype bf16 keeps
  // float32 activations (cpu_bf16_activations), and its GEMMs round their inputs themselves.
  cases.push_back({target, DType::BF16, {"head24", 48, 2, 64, {5, 17, 1}}});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cpu, OpParity, ::testing::ValuesIn(cpu_cases()), op_case_name);

// The suite's own float16 conversion (CUDA uploads use it): every finite half survives a
// round trip, and values between two halves round to the nearest, ties to even.
TEST(OpReference, Float16RoundsToNearestEven) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00) continue;  // inf and NaN
    ASSERT_EQ(reference::float_to_half(half_to_float(static_cast<uint16_t>(h))), h) << std::hex << h;
  }
  EXPECT_EQ(reference::float_to_half(1.f + 0.5f / 1024), 0x3c00);      // tie: down to even 1.0
  EXPECT_EQ(reference::float_to_half(1.f + 1.5f / 1024), 0x3c02);      // tie: up to even
  EXPECT_EQ(reference::float_to_half(1.f + 0.51f / 1024), 0x3c01);     // above the tie: up
  EXPECT_EQ(reference::float_to_half(65520.f), 0x7c00);                // rounds past the largest half
  EXPECT_EQ(reference::float_to_half(0x1p-25f), 0x0000);               // tie with 0: even
  EXPECT_EQ(reference::float_to_half(0x1.8p-25f), 0x0001);             // the smallest subnormal
  EXPECT_EQ(reference::float_to_bf16(1.f + 0x1p-8f), 0x3f80);          // tie: down to even
  EXPECT_EQ(reference::float_to_bf16(1.f + 0x3p-8f), 0x3f82);          // tie: up to even
}

}  // namespace
}  // namespace m3::test
