// MemoryPlan arithmetic for the full BGE-M3 config, worked out by hand, and the size
// parser used by --memory-limit.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "m3/core/error.h"
#include "m3/memory/gemm_row_blocks.h"
#include "m3/memory/memory_plan.h"
#include "m3/memory/plan_rules.h"
#include "test_support.h"

namespace m3 {
namespace {

// BGE-M3 at 16384 batch tokens, 8192 per sequence, 2 threads.
PlanInputs bge_m3_inputs(DType precision = DType::F32) {
  PlanInputs in;
  in.config = test::bge_m3_config();
  in.max_batch_tokens = 16384;
  in.max_seq_len = 8192;
  in.threads = 2;
  in.precision = precision;
  return in;
}

TEST(MemoryPlan, BgeM3ByHand) {
  PlanInputs in = bge_m3_inputs();
  const auto plan = plan_memory(in);
  // word 250002x1024 + position 8194x1024 + type 1024 + LN 2048
  // + 24 x (QKV 3x(1024x1024+1024) + out 1024x1024+1024 + FFN 4096x1024+4096 + 1024x4096+1024 + LN 4x1024)
  // + colbert 1024x1024+1024 + sparse 1024+1 parameters, 4 bytes each.
  EXPECT_EQ(plan.weight_bytes, 2271023108u);
  // hidden + qkv + context + FFN: 16384 x (1024 + 3072 + 1024 + 4096) x 4 = 576 MiB
  EXPECT_EQ(plan.bytes_per_batch_token, 36864u);
  EXPECT_EQ(plan.rows, 16384);
  EXPECT_EQ(plan.buffer("hidden"), 0u);
  EXPECT_EQ(plan.buffer("hidden_in"), plan.buffer("hidden"));  // the CPU's GEMMs read the float32 residual stream
  EXPECT_EQ(plan.buffer("qkv"), 16384u * 1024 * 4);
  EXPECT_EQ(plan.buffer("context"), 16384u * 4096 * 4);
  EXPECT_EQ(plan.buffer("ffn"), 16384u * 5120 * 4);
  // After the last layer the heads reuse dead encoder buffers.
  EXPECT_EQ(plan.buffer("colbert"), plan.buffer("ffn"));
  EXPECT_EQ(plan.buffer("sparse"), plan.buffer("ffn") + 16384u * 1024 * 4);
  EXPECT_EQ(plan.buffer("lexical"), plan.buffer("qkv"));
  EXPECT_EQ(plan.buffer("dense"), plan.buffer("context"));
  EXPECT_EQ(plan.attention_scratch_offset, 16384u * 9216 * 4);
  // attention scores: 2 threads x 64 rows x 8192 keys x 4 bytes = 4 MiB; no library workspace given
  EXPECT_EQ(plan.arena_bytes, 16384u * 9216 * 4 + 2 * 64 * 8192 * 4);
  EXPECT_LT(plan.arena_bytes, 1536ull << 20);  // the goal: under 1.5 GiB
  EXPECT_EQ(plan.queue_bytes, 16u * 16384 * 4);
  EXPECT_EQ(plan.output_bytes, 2u * 16384 * 1027 * 4);
  // Results waiting to be written: two max-length responses as JSON (20 bytes a float) beat two batches.
  EXPECT_EQ(plan.result_buffer_bytes, 2u * 8192 * 1026 * 20);
  EXPECT_EQ(plan.total_bytes, plan.weight_bytes + plan.arena_bytes + plan.queue_bytes + plan.output_bytes +
                                  plan.result_buffer_bytes);

  in.replicas = 3;
  const auto three = plan_memory(in);
  EXPECT_EQ(three.weight_bytes, plan.weight_bytes);  // shared
  EXPECT_EQ(three.result_buffer_bytes, 3u * 2 * 16384 * 1027 * 4);  // now two batches per replica win
  EXPECT_EQ(three.total_bytes, plan.weight_bytes + 3 * plan.arena_bytes + plan.queue_bytes + 3 * plan.output_bytes +
                                   three.result_buffer_bytes);
}

// CPU bf16: the FFN intermediate (written by one GEMM, read by the next only) is stored in
// bf16, and the rounded GEMM inputs need only hidden's width.
TEST(MemoryPlan, CpuBf16StoresTheActivationsAndTheFfnIntermediateInBf16) {
  PlanInputs in = bge_m3_inputs(DType::BF16);
  const auto plan = plan_memory(in);
  EXPECT_EQ(plan.activation, DType::BF16);
  EXPECT_EQ(plan.gemm_operand, DType::BF16);
  // hidden in float32; its GEMM copy, qkv, context and the FFN intermediate in bf16; context
  // grows by the dense vectors' norms it hosts after the last layer (4 bytes a sequence, at
  // most t / 2 of them). Every GEMM input arrives in bf16: no rounded-input buffer.
  const uint64_t context = 16384u * 1024 * 2 + 8192u * 4;
  EXPECT_EQ(plan.bytes_per_batch_token, 4u * 1024 + 2u * (1024 + 3072) + context / 16384 + 2u * 4096);
  EXPECT_NE(plan.buffer("hidden_in"), plan.buffer("hidden"));
  EXPECT_EQ(plan.buffer("ffn"), 16384u * (4 * 1024 + 2 * 4096) + context);
  EXPECT_EQ(plan.buffer("colbert"), plan.buffer("ffn"));  // the heads' float32 outputs still fit in it
  EXPECT_EQ(plan.attention_scratch_offset, plan.buffer("ffn") + 16384u * 4096 * 2);
  EXPECT_EQ(plan.gemm_input_bytes, 0u);
  // The bf16 kernels hold K and V of any sequence up to the max, rounded up to 16 keys.
  in.max_seq_len = 8190;
  EXPECT_EQ(cpu_attention_scratch_floats(in), 64 * 8192);
  in.config.num_heads = 64;  // heads of 16: the query tile's rows are more
  EXPECT_EQ(cpu_attention_scratch_floats(in), 64 * 8190);
  in.config.num_heads = 32;
  in.config.hidden_size = 768;  // heads of 24, which the kernels do not take: float32 activations
  EXPECT_FALSE(cpu_bf16_activations(in));
  EXPECT_EQ(plan_memory(in).activation, DType::F32);
  EXPECT_EQ(plan_memory(in).gemm_input_bytes, (16384u + 64) * 768 * 2);
  in = bge_m3_inputs(DType::I8);  // int8 quantizes every input itself, the FFN's included
  const auto int8 = plan_memory(in);
  EXPECT_EQ(int8.gemm_operand, DType::F32);
  EXPECT_EQ(int8.gemm_input_bytes, (16384u + 64) * 4096);
}

TEST(MemoryPlan, OutputMemoryIsCountedAndMustHoldOneLongestResult) {
  PlanInputs in;
  in.config = test::bge_m3_config();
  in.max_seq_len = 8192;
  const auto defaults = plan_memory(in);
  in.output_memory = 64ull << 20;
  const auto given = plan_memory(in);
  EXPECT_EQ(given.result_buffer_bytes, 64ull << 20);
  EXPECT_EQ(defaults.total_bytes - given.total_bytes, defaults.result_buffer_bytes - (64ull << 20));
  in.output_memory = 8192ull * 1026 * 4;  // one 8192-token result needs a little more (its dense vector)
  EXPECT_THAT([&] { plan_memory(in); }, testing::ThrowsMessage<Error>(testing::HasSubstr("--output-memory")));
  in.max_seq_len = 4096;  // shorter texts: it fits
  EXPECT_EQ(plan_memory(in).result_buffer_bytes, 8192ull * 1026 * 4);
}

TEST(MemoryPlan, MemoryLimitCountsTheOutputMemory) {
  PlanInputs in;
  in.config = test::bge_m3_config();
  in.max_seq_len = 8192;
  in.output_memory = 256ull << 20;
  const uint64_t limit = 4ull << 30;
  in.max_batch_tokens = max_batch_tokens_for_limit(in, limit);
  EXPECT_LE(plan_memory(in).total_bytes, limit);
  in.max_batch_tokens += 64;
  EXPECT_GT(plan_memory(in).total_bytes, limit);  // the largest multiple of 64 that fits
}

TEST(MemoryPlan, RowsCoverEveryGemmChunk) {
  for (int64_t max_tokens : {1, 7, 64, 65, 100, 1000, 1025, 3000, 16384, 16383}) {
    PlanInputs in;
    in.config = test::bge_m3_config();
    in.max_seq_len = std::min<int64_t>(max_tokens, 8192);
    in.max_seq_len = std::max<int64_t>(in.max_seq_len, 2);
    in.max_batch_tokens = std::max(max_tokens, in.max_seq_len);
    const auto plan = plan_memory(in);
    for (int64_t rows = 1; rows <= in.max_batch_tokens; ++rows) {
      ASSERT_LE(padded_rows(rows), plan.rows) << rows;
      ASSERT_LE(padded_rows(rows) - rows, 63) << rows;
      const auto sizes = gemm_block_sizes(in.max_batch_tokens);
      for_each_gemm_chunk(rows, [&](int64_t, int64_t chunk) {
        ASSERT_TRUE(std::find(sizes.begin(), sizes.end(), chunk) != sizes.end()) << rows << " " << chunk;
      });
    }
  }
}

TEST(MemoryPlan, LimitPicksTheLargestBudgetOrNamesTheMinimum) {
  PlanInputs in;
  in.config = test::bge_m3_config();
  in.max_seq_len = 8192;
  const uint64_t limit = 6ull << 30;
  const int64_t t = max_batch_tokens_for_limit(in, limit);
  in.max_batch_tokens = t;
  EXPECT_LE(plan_memory(in).total_bytes, limit);
  in.max_batch_tokens = t + 64;
  EXPECT_GT(plan_memory(in).total_bytes, limit);
  try {
    max_batch_tokens_for_limit(in, 2ull << 30);
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("too small: one 8192-token sequence needs"));
  }
}

TEST(MemoryPlan, ParsesAndFormatsSizes) {
  EXPECT_EQ(parse_bytes("2147483648"), 2147483648u);
  EXPECT_EQ(parse_bytes("512MiB"), 512ull << 20);
  EXPECT_EQ(parse_bytes("1.5GiB"), 3ull << 29);
  EXPECT_EQ(parse_bytes("2G"), 2ull << 30);
  EXPECT_EQ(parse_bytes("800MB"), 800000000u);
  EXPECT_EQ(parse_bytes("4 kib"), 4096u);
  EXPECT_THROW(parse_bytes("lots"), Error);
  EXPECT_THROW(parse_bytes("12XB"), Error);
  EXPECT_THROW(parse_bytes("-5GiB"), Error);
  EXPECT_EQ(format_bytes(1536ull << 20), "1.50 GiB");
  EXPECT_EQ(format_bytes(4096), "4.00 KiB");
  EXPECT_EQ(format_bytes(17), "17 B");
}

}  // namespace
}  // namespace m3
