// MemoryPlan: the bytes one replica needs, computed before anything is allocated, as a
// pure function of the model config and the limits: the weights of the model's weight
// table and the buffers its graph declares, laid out by the rules of the backend that
// will run them (plan_rules.h), plus the host's queue and output buffers. The arena
// offsets the graph and the backends use come from here: what is planned is what is used.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "m3/core/device.h"
#include "m3/core/precision.h"
#include "m3/memory/gemm_row_blocks.h"
#include "m3/model/model_config.h"
#include "m3/model/weight_table.h"

namespace m3 {

struct PlanInputs {
  ModelConfig config;
  int64_t max_batch_tokens = 16384;  // rows of every activation buffer
  int64_t max_seq_len = 8192;        // longest sequence (attention scratch)
  int threads = 1;                   // attention scratch is per thread
  int64_t query_tile = 64;           // attention rows per tile
  bool sparse_head = true;           // sparse_linear.pt present
  bool colbert_head = true;          // colbert_linear.pt present
  int replicas = 1;                  // replicas share the weights; each has its own arena
  // Encoder linears are stored and computed in this precision (the heads stay float32).
  DType precision = DType::F32;
  // GEMM library workspace (oneDNN scratchpads), as the backend reports it for these
  // shapes (CpuBackend::library_workspace_bytes); one per replica, in its arena.
  uint64_t library_workspace_bytes = 0;
  // Tokens the request queue may hold (0: 16 x max_batch_tokens); host memory for their ids.
  int64_t max_queue_tokens = 0;
  // --output-memory: results waiting to be written, in bytes: encode's in-order output
  // buffer, or the server's responses in flight (JSON included). 0: default_output_memory.
  uint64_t output_memory = 0;
  // Whose rules lay the plan out (plan_rules.h): CPU replicas, or one replica per CUDA device.
  DeviceKind device = DeviceKind::kCpu;
  uint64_t cublas_workspace_bytes = 32ull << 20;  // cuBLASLt workspace per replica (CUDA)
};

// Batches a CUDA replica has in flight: one is staged (and its outputs copied out) while
// the other computes. Its pinned staging and the graph's outputs have one copy per slot.
inline constexpr int kCudaPipelineSlots = 2;

// Byte offsets inside a CUDA replica's single device allocation (weights first, then the
// arena, then the cuBLASLt workspace) and inside its pinned host staging block.
struct CudaLayout {
  uint64_t weights_offset = 0, weight_bytes = 0;
  // Arena (beside the graph's buffers): the batch inputs and the attention tiles.
  uint64_t token_ids = 0, positions = 0, cu_seqlens = 0, attention_tiles = 0;
  uint64_t workspace = 0, workspace_bytes = 0;
  int64_t max_sequences = 0;        // a batch holds at most rows / 2 sequences (>= 2 tokens each)
  int64_t max_attention_tiles = 0;  // (query tile, sequence) pairs of one batch, at most
  // Pinned host staging: batch inputs up, outputs down. kCudaPipelineSlots slots of
  // staging_slot_bytes (offsets below are within a slot), so one batch is staged while the
  // other computes.
  uint64_t staging_slot_bytes = 0;
  uint64_t staging_ids = 0, staging_positions = 0, staging_cu_seqlens = 0, staging_tiles = 0;
  uint64_t staging_outputs = 0;  // the batch's fetched outputs from here to the slot's end
};

struct PlanItem {
  std::string name;   // e.g. "hidden", "encoder.layer.*.intermediate.dense"
  std::string shape;  // e.g. "[16384, 1024] f32"
  uint64_t bytes = 0;
  uint64_t offset = 0;  // arena items: byte offset in the arena (64-byte aligned)
};

struct MemoryPlan {
  PlanInputs inputs;
  WeightTable table;              // every weight tensor (the loader and the backends iterate it too)
  DType activation = DType::F32;  // the type of the graph's activation buffers (the backend's rule)
  DType gemm_operand = DType::F32;  // of its buffers between two GEMMs (BufferType::kGemmOperand)
  // Where a buffer the graph declares (model/graph_buffers.h) lies in the arena: one copy
  // every pipeline slot shares, or (outputs under CUDA's rules) `copies` of them, slot s's
  // at offset + s * slot_stride.
  struct PlacedBuffer {
    uint64_t offset = 0;
    uint64_t slot_stride = 0;
    int copies = 1;
  };
  std::map<std::string, PlacedBuffer, std::less<>> buffers;
  // The offset of graph buffer `name` for pipeline slot `slot`; throws m3::Error when the
  // plan has no such buffer or copy.
  uint64_t buffer(std::string_view name, int slot = 0) const;
  std::vector<PlanItem> weights;  // shared by all replicas
  std::vector<PlanItem> arena;    // per replica: activations, head outputs, attention scratch
  uint64_t weight_bytes = 0;
  uint64_t arena_bytes = 0;       // one replica's arena
  int64_t queue_tokens = 0;       // the request queue's bound
  uint64_t queue_bytes = 0;       // its token ids
  // Outputs copied out of the arena for callers (ColBERT vectors are tokens x hidden
  // floats): two batches per replica, the one being extracted and the one being delivered.
  uint64_t output_bytes = 0;
  // Results waiting to be written (PlanInputs::output_memory, or its default): a hard
  // bound that encode's writer and the server's responses are held to.
  uint64_t result_buffer_bytes = 0;
  uint64_t total_bytes = 0;       // weights + replicas * arena + queue + outputs + result buffer

  // CPU workspaces (bytes into the arena): attention scratch, oneDNN scratchpads.
  uint64_t attention_scratch_offset = 0, library_workspace_offset = 0;
  // bf16/int8 only: GEMM inputs in that precision, int8 row scales and minima, int8
  // accumulators of the residual linears (these alias the qkv buffer, which is dead by then).
  uint64_t gemm_input_offset = 0, gemm_input_bytes = 0, row_scales_offset = 0, row_minima_offset = 0;
  uint64_t int8_accumulator_offset = 0;
  // Rows of every activation buffer: the most rows GEMM chunks of any batch up to
  // max_batch_tokens cover (gemm_row_blocks.h): at most 63 more than max_batch_tokens.
  int64_t rows = 0;
  uint64_t bytes_per_batch_token = 0;  // arena growth per unit of max_batch_tokens

  // CUDA plans only (inputs.device == kCuda). There `weights` and `arena` list what each
  // device holds, total_bytes is one device's allocation (what --memory-limit bounds),
  // and host memory (queue, outputs, pinned staging) is counted in host_bytes.
  CudaLayout cuda;
  uint64_t device_bytes = 0;  // one replica's single cudaMalloc: weights + arena + workspace
  uint64_t pinned_bytes = 0;  // one replica's pinned host staging (kCudaPipelineSlots slots)
  uint64_t host_bytes = 0;    // queue + outputs + result buffer + replicas x pinned staging
};

// Pure: same inputs, same plan. Throws m3::Error on inconsistent inputs. The rules are
// the CPU's or CUDA's by inputs.device.
MemoryPlan plan_memory(const PlanInputs& inputs);
// Throws m3::Error when the limits are inconsistent with each other or the model.
void check_plan_inputs(const PlanInputs& inputs);

// Bytes of JSON text the server's responses take per float (a generous bound: the
// shortest round-trip form of a float is at most 15 characters, with its comma).
inline constexpr uint64_t kJsonBytesPerFloat = 16;
// Bytes one response of `floats` numbers holds while it is encoded: the floats and their JSON.
constexpr uint64_t response_bytes_for_floats(uint64_t floats) { return floats * (kJsonBytesPerFloat + 4); }

// --output-memory's default: two full batches of results per replica (every output), and
// at least two max-length responses with every output as JSON, so one longest text always fits.
uint64_t default_output_memory(const PlanInputs& inputs, int64_t rows);
// The output memory these inputs give (theirs, or the default), checked to hold one
// max-length result with every output (else m3::Error naming --output-memory).
uint64_t output_memory_for(const PlanInputs& inputs, int64_t rows);

// The largest max_batch_tokens (a multiple of 64, at least max_seq_len) whose total fits
// `limit_bytes` (for CUDA: one device's allocation); throws m3::Error giving the minimum limit when even max_seq_len does not fit.
int64_t max_batch_tokens_for_limit(PlanInputs inputs, uint64_t limit_bytes);

// "1.50 GiB", "640.00 MiB", "4096 B".
std::string format_bytes(uint64_t bytes);
// Parses "2147483648", "512MiB", "1.5GiB", "800MB", "2G" (K/M/G/T are binary, KB/MB/GB
// decimal). Throws m3::Error on anything else.
uint64_t parse_bytes(const std::string& text);

}  // namespace m3
