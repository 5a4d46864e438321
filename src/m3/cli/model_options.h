// Options every model-loading subcommand shares (--model, --threads, ...) and the
// resolution of --model to a local snapshot directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "m3/runtime/embedder.h"

namespace m3::cli {

struct ModelOptions {
  std::string model = "BAAI/bge-m3";
  std::vector<std::string> models;  // `serve`: every --model given (model is the first)
  std::string fallback_model;
  int threads = 0;
  int replicas = 1;
  int64_t max_batch_tokens = 16384;
  std::string memory_limit;  // e.g. "6GiB"; empty: use max_batch_tokens
  std::string dtype = "fp32";  // fp32 | bf16 | fp16 | int8
  std::string device = "auto";  // auto | cpu | cuda | cuda:N
  std::string devices;          // cuda:0,cuda:1,... (one replica each)
  double gpu_memory_fraction = 0;
  std::string output_memory;  // e.g. "256MiB"; empty: the plan's default
};

// Help text of --dtype, shared with `plan`.
inline constexpr const char* kDtypeHelp =
    "DType of the encoder's GEMMs: fp32 (reference), bf16 (bfloat16 weights and activations between ops, "
    "float32 accumulation and residual stream; on the CPU attention runs in bf16 too and needs AVX512-BF16 or AMX, else fp32 is used with a "
    "warning), fp16 (CUDA only: float16 weights and activations, float32 accumulation) or int8 (CPU only: int8 "
    "weights with per-channel scales, inputs quantized per token to unsigned bytes over their range; needs VNNI "
    "or AMX; attention scores from int8 Q and K, one scale per head and token, and P V in bf16 where AVX512-VNNI "
    "and AVX512-BF16 are there; bf16 attention where only AVX512-BF16 is). With AMX, GEMMs and (head size 64) "
    "attention's products run on its tiles, and int8 is then barely faster than bf16. Layer norms, softmax and the heads compute in float32";

inline constexpr const char* kOutputMemoryHelp =
    "Memory for results waiting to be written (e.g. 256MiB): encode's in-order output buffer, or the server's "
    "responses in flight with their JSON. Part of the memory plan and of --memory-limit; when it is full, encode "
    "waits for its writer and the server answers 429; one response larger than it gets 413. Default: two full "
    "batches of results per replica, and at least two max-length responses with every output as JSON";

// several: --model may be given more than once (`serve`), each "name=model" or "model".
void add_model_options(CLI::App& command, ModelOptions& options, bool several = false);

// A local directory as is; a hub id from the HF cache or downloaded. When the hub is
// unreachable and nothing is cached, --fallback-model is used (with a warning).
std::filesystem::path resolve_model_dir(const ModelOptions& options);

// The EmbedderOptions these options describe (devices selected: a missing GPU is an error).
EmbedderOptions embedder_options(const ModelOptions& options);

// Loads the model with sequences limited to `max_length` tokens (0: the model's
// limit); a longer request is reduced to the model's limit with a warning.
std::unique_ptr<Embedder> load_embedder(const ModelOptions& options, int64_t max_length);

// The length actually used for `requested` tokens on this embedder, warning when reduced.
int64_t effective_length(const Embedder& embedder, int64_t requested, const char* option);

}  // namespace m3::cli
