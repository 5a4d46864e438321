// The CUDA replica's plan (plan_cuda_memory), device selection and the CLI's answers
// when no GPU can be used: all of it runs on machines without a GPU.
#include <gtest/gtest.h>

#include <algorithm>

#include "m3/backend/cuda_devices.h"
#include "m3/core/error.h"
#include "m3/memory/memory_plan.h"
#include "m3/runtime/device_selection.h"
#include "test_support.h"

namespace m3 {
namespace {

PlanInputs cuda_inputs(DType precision, int64_t max_batch_tokens = 16384) {
  PlanInputs in;
  in.config = test::bge_m3_config();
  in.device = DeviceKind::kCuda;
  in.precision = precision;
  in.max_batch_tokens = max_batch_tokens;
  in.max_seq_len = std::min<int64_t>(8192, max_batch_tokens);
  return in;
}

uint64_t align256(uint64_t n) { return (n + 255) / 256 * 256; }

TEST(CudaPlan, WeightsCountEveryTensorInTheGemmType) {
  const MemoryPlan fp16 = plan_memory(cuda_inputs(DType::F16));
  // Worked by hand: embeddings and linear weights 2 bytes each, biases and norms f32.
  const uint64_t h = 1024, f = 4096, layers = 24;
  uint64_t want = align256(250002 * h * 2) + align256(8194 * h * 2) + 3 * align256(h * 4);
  want += layers * (align256(3 * h * h * 2) + align256(3 * h * 4) + align256(h * h * 2) + align256(h * 4) +
                    align256(f * h * 2) + align256(f * 4) + align256(h * f * 2) + align256(h * 4) + 4 * align256(h * 4));
  want += align256(h * h * 2) + align256(h * 4) + align256(h * 4) + align256(4);  // colbert, sparse
  EXPECT_EQ(fp16.weight_bytes, want);
  EXPECT_EQ(fp16.cuda.weight_bytes, want);
  const MemoryPlan fp32 = plan_memory(cuda_inputs(DType::F32));
  EXPECT_GT(fp32.weight_bytes, 2 * fp16.weight_bytes - 4 * layers * f * 4);  // about double
  EXPECT_EQ(plan_memory(cuda_inputs(DType::BF16)).weight_bytes, fp16.weight_bytes);
}

TEST(CudaPlan, ArenaBuffersAreAlignedDisjointAndTheOutputsHaveACopyPerSlot) {
  for (DType p : {DType::F32, DType::F16}) {
    const MemoryPlan plan = plan_memory(cuda_inputs(p, 4096));
    EXPECT_EQ(plan.device_bytes, plan.weight_bytes + plan.arena_bytes);
    EXPECT_EQ(plan.total_bytes, plan.device_bytes);
    std::vector<PlanItem> items = plan.arena;
    std::sort(items.begin(), items.end(), [](const auto& a, const auto& b) { return a.offset < b.offset; });
    for (size_t i = 0; i < items.size(); ++i) {
      EXPECT_EQ(items[i].offset % 256, 0u) << items[i].name;
      if (i + 1 < items.size()) EXPECT_LE(items[i].offset + items[i].bytes, items[i + 1].offset) << items[i].name;
    }
    EXPECT_LE(items.back().offset + items.back().bytes, plan.arena_bytes);
    const CudaLayout& l = plan.cuda;
    const uint64_t rows = 4096, h = 1024;
    auto item_at = [&](uint64_t offset) {
      const auto it = std::find_if(plan.arena.begin(), plan.arena.end(), [&](const auto& a) { return a.offset == offset; });
      EXPECT_NE(it, plan.arena.end());
      return *it;
    };
    // The outputs have memory of their own, one copy per pipeline slot, outside every
    // encoder buffer: the copy stream reads a slot's while the next batch's layers compute.
    // Buffers the plan keeps once serve every slot.
    EXPECT_EQ(l.max_sequences, 2048);
    const std::pair<const char*, uint64_t> outputs[] = {
        {"colbert", rows * h * 4}, {"sparse", rows * 4}, {"lexical", rows * 4}, {"dense", 2048 * h * 4},
        {"dense_norms", 2048 * 4}};
    uint64_t per_slot = 0;
    for (const auto& [name, bytes] : outputs) {
      const PlanItem item = item_at(plan.buffer(name, 0));
      EXPECT_EQ(plan.buffers.at(name).copies, kCudaPipelineSlots) << name;
      EXPECT_GE(plan.buffer(name, 1), plan.buffer(name, 0) + bytes) << name;
      EXPECT_EQ(plan.buffer(name, 1) % 256, 0u) << name;
      EXPECT_EQ(plan.buffer(name, 1) + bytes, item.offset + item.bytes) << name;
      EXPECT_NE(item.name.find("one per pipeline slot"), std::string::npos) << item.name;
      EXPECT_THROW(plan.buffer(name, 2), Error) << name;
      per_slot += bytes;
    }
    uint64_t in_slots = 0;
    for (const PlanItem& item : plan.arena) {
      if (item.name.find("one per pipeline slot") != std::string::npos) in_slots += item.bytes;
    }
    EXPECT_EQ(in_slots, kCudaPipelineSlots * per_slot);  // every size here is a multiple of 256
    EXPECT_EQ(plan.buffer("ffn", 1), plan.buffer("ffn"));
    // With the outputs gone, no encoder buffer grows for them.
    EXPECT_EQ(item_at(plan.buffer("context")).bytes, rows * h * dtype_size(p));
    EXPECT_EQ(item_at(plan.buffer("context")).name, p == DType::F32 ? "attention output" : "attention output (fp16)");
    EXPECT_EQ(l.workspace_bytes, 32u << 20);
    EXPECT_GE(plan.pinned_bytes, rows * h * 4 + 2048 * h * 4 + rows * 4 * 3);
    EXPECT_EQ(plan.host_bytes,
              plan.queue_bytes + plan.output_bytes + plan.result_buffer_bytes + plan.pinned_bytes);
  }
}

TEST(CudaPlan, MemoryLimitPicksTheLargestBatchThatFits) {
  PlanInputs in = cuda_inputs(DType::F16);
  const uint64_t limit = 3ull << 30;
  const int64_t t = max_batch_tokens_for_limit(in, limit);
  EXPECT_EQ(t % 64, 0);
  in.max_batch_tokens = t;
  EXPECT_LE(plan_memory(in).total_bytes, limit);
  in.max_batch_tokens = t + 64;
  EXPECT_GT(plan_memory(in).total_bytes, limit);
  // Too small for one 8192-token sequence: the error names the minimum.
  try {
    max_batch_tokens_for_limit(cuda_inputs(DType::F16), 1ull << 30);
    FAIL() << "a 1 GiB device limit was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("too small"), std::string::npos) << e.what();
  }
}

TEST(CudaPlan, Int8IsRefusedOnCuda) {
  EXPECT_THROW(plan_memory(cuda_inputs(DType::I8)), Error);
}

TEST(Devices, ParsesDeviceNamesAndLists) {
  EXPECT_EQ(parse_device("cpu"), (Device{DeviceKind::kCpu, 0}));
  EXPECT_EQ(parse_device("cuda"), (Device{DeviceKind::kCuda, 0}));
  EXPECT_EQ(parse_device("cuda:3"), (Device{DeviceKind::kCuda, 3}));
  EXPECT_EQ(parse_device("cuda:3").name(), "cuda:3");
  for (const char* bad : {"cuda:", "cuda:x", "cuda:-1", "tpu", "cuda:1a", ""}) {
    EXPECT_THROW(parse_device(bad), Error) << bad;
  }
  const auto list = parse_device_list("cuda:0,cuda:2");
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[1].index, 2);
  EXPECT_THROW(parse_device_list("cuda:0,cuda:0"), Error);
  EXPECT_THROW(parse_device_list("cuda:0,,cuda:1"), Error);
  EXPECT_THROW(parse_device_list("cpu,cuda:0"), Error);
}

TEST(Devices, AutoFallsBackToTheCpuAndCudaWithoutAGpuIsAClearError) {
  std::string why;
  if (cuda_device_count(&why) > 0) GTEST_SKIP() << "a GPU is present; this checks the machines without one";
  EXPECT_FALSE(why.empty());
  EXPECT_EQ(select_devices("auto", ""), std::vector<Device>{Device{}});
  EXPECT_EQ(select_devices("cpu", ""), std::vector<Device>{Device{}});
  try {
    select_devices("cuda", "");
    FAIL() << "--device cuda was accepted without a GPU";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no GPU can be used"), std::string::npos) << e.what();
  }
  EXPECT_THROW(select_devices("auto", "cuda:0,cuda:1"), Error);

  const auto model = (test::fixtures() / "tiny-st").string();
  const auto r = test::run_cli("encode -m '" + model + "' -i /dev/null --device cuda");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("cuda:0 was asked for, but no GPU can be used"), std::string::npos) << r.output;
  const auto fp16 = test::run_cli("encode -m '" + model + "' -i /dev/null --device cpu --dtype fp16");
  EXPECT_EQ(fp16.exit_code, 1) << fp16.output;
  EXPECT_NE(fp16.output.find("fp16 is for CUDA"), std::string::npos) << fp16.output;
  // Planning for CUDA needs no GPU.
  const auto plan = test::run_cli("plan -m '" + model + "' --device cuda --dtype fp16 --json");
  EXPECT_EQ(plan.exit_code, 0) << plan.output;
  EXPECT_NE(plan.output.find("\"device_bytes\""), std::string::npos) << plan.output;
  // A limit with a 16-bit CUDA type: the CPU's GEMM library is never asked about a type it
  // may not have (this aborted on CPUs without AVX512-BF16).
  for (const char* dtype : {"bf16", "fp16"}) {
    const auto limited = test::run_cli("plan -m '" + model + "' --device cuda --dtype " + dtype +
                                       " --memory-limit 64MiB --json");
    EXPECT_EQ(limited.exit_code, 0) << dtype << ": " << limited.output;
    EXPECT_NE(limited.output.find("\"minimum_bytes\""), std::string::npos) << limited.output;
  }
}

}  // namespace
}  // namespace m3
