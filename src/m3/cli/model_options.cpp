#include "m3/cli/model_options.h"

#include <spdlog/spdlog.h>

#include "m3/core/error.h"
#include "m3/memory/memory_plan.h"
#include "m3/hub/hub.h"
#include "m3/runtime/device_selection.h"

namespace m3::cli {

void add_model_options(CLI::App& command, ModelOptions& o, bool several) {
  constexpr const char* kModelHelp =
      "Model: a local snapshot directory (config.json, weights, sentencepiece.bpe.model, and BGE-M3's "
      "colbert_linear.pt, sparse_linear.pt) or a Hugging Face hub id, looked up in the HF cache (HF_HUB_CACHE / "
      "HF_HOME) and downloaded there when missing (HF_ENDPOINT, HF_TOKEN)";
  if (several) {
    command
        .add_option("-m,--model", o.models,
                    std::string(kModelHelp) +
                        ". Give it again for more models in one process (an embedder and a reranker, say): "
                        "NAME=MODEL names one; requests pick a model by their \"model\" field, else the first of "
                        "the kind their route needs")
        ->envname("M3_MODEL")
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
        ->expected(1)
        ->default_str(o.model);
  } else {
    command.add_option("-m,--model", o.model, kModelHelp)->envname("M3_MODEL")->capture_default_str();
  }
  command.add_option("--fallback-model", o.fallback_model,
                     "Directory used instead when --model is a hub id, the hub cannot be reached and nothing is "
                     "cached (the README points it at the bundled demo model, which has random weights)")
      ->envname("M3_FALLBACK_MODEL");
  command.add_option("-t,--threads", o.threads, "CPU threads, shared by the replicas (0: the cores this process may use: OMP_NUM_THREADS, the CPU affinity mask and a container CPU quota all lower it)")
      ->envname("M3_THREADS")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  command.add_option("--replicas", o.replicas,
                     "Model replicas: each has its own planned arena and threads, all share one copy of the weights")
      ->envname("M3_REPLICAS")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  auto* batch = command
                    .add_option("--max-batch-tokens,--batch-tokens", o.max_batch_tokens,
                                "Tokens per forward pass: texts are packed, without padding, into batches of at "
                                "most this many tokens (at least the max length); sizes the memory plan")
                    ->envname("M3_MAX_BATCH_TOKENS")
                    ->check(CLI::PositiveNumber)
                    ->capture_default_str();
  command
      .add_option("--memory-limit", o.memory_limit,
                  "Memory for weights + all arenas (e.g. 6GiB, 800MB): picks the largest max batch tokens that "
                  "fits; refused at start, with the minimum, when one max-length sequence does not fit")
      ->envname("M3_MEMORY_LIMIT")
      ->excludes(batch);
  command.add_option("--output-memory", o.output_memory, kOutputMemoryHelp)->envname("M3_OUTPUT_MEMORY");
  command.add_option("--dtype", o.dtype, kDtypeHelp)
      ->envname("M3_DTYPE")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16", "int8"}))
      ->capture_default_str();
  auto* device = command
                     .add_option("--device", o.device,
                                 "Where to run: auto (the first GPU when one can be used, else the CPU), cpu, cuda "
                                 "or cuda:N (an error when that GPU is not there)")
                     ->envname("M3_DEVICE")
                     ->capture_default_str();
  command
      .add_option("--devices", o.devices,
                  "Several GPUs: cuda:0,cuda:1,... One replica on each, each with its own planned memory, all "
                  "fed by one scheduler (instead of --device)")
      ->envname("M3_DEVICES")
      ->excludes(device);
  command
      .add_option("--gpu-memory-fraction", o.gpu_memory_fraction,
                  "CUDA: the share (0-1] of each GPU's total memory the replica's one allocation may take (weights, "
                  "arena, cuBLASLt workspace); picks the largest max batch tokens that fits. With --memory-limit the "
                  "smaller bound wins. The CUDA context (about 0.5 GiB) comes on top")
      ->envname("M3_GPU_MEMORY_FRACTION")
      ->check(CLI::Range(0.0, 1.0));
}

EmbedderOptions embedder_options(const ModelOptions& o) {
  EmbedderOptions options;
  options.threads = o.threads;
  options.replicas = o.replicas;
  options.max_batch_tokens = o.max_batch_tokens;
  options.precision = parse_precision(o.dtype);
  if (!o.memory_limit.empty()) options.memory_limit = parse_bytes(o.memory_limit);
  if (!o.output_memory.empty()) options.output_memory = parse_bytes(o.output_memory);
  options.devices = select_devices(o.device, o.devices);
  options.gpu_memory_fraction = o.gpu_memory_fraction;
  return options;
}

std::filesystem::path resolve_model_dir(const ModelOptions& o) {
  if (std::filesystem::is_directory(o.model)) return o.model;
  if (!looks_like_hub_id(o.model)) {
    fail("--model {}: no such directory, and not a hub id like BAAI/bge-m3", o.model);
  }
  try {
    return resolve_model(o.model, hub_options_from_env());
  } catch (const HubUnreachable& e) {
    if (o.fallback_model.empty()) throw;
    spdlog::warn("{}", e.what());
    spdlog::warn("falling back to {}: a demo model with RANDOM weights, for trying the commands only; its "
                 "embeddings mean nothing", o.fallback_model);
    return o.fallback_model;
  }
}

std::unique_ptr<Embedder> load_embedder(const ModelOptions& o, int64_t max_length) {
  const auto dir = resolve_model_dir(o);
  const auto config = ModelConfig::load(dir);
  int64_t max_seq_len = default_max_seq_len(dir, config);
  if (max_length > 0 && max_length < max_seq_len) max_seq_len = max_length;
  if (max_length > config.max_tokens()) {
    spdlog::warn("max length {} is more than this model's {} positions allow; using {}", max_length,
                 config.max_position_embeddings, config.max_tokens());
  }
  EmbedderOptions options = embedder_options(o);
  options.max_seq_len = max_seq_len;
  return Embedder::load(dir, options);
}

int64_t effective_length(const Embedder& embedder, int64_t requested, const char* option) {
  if (requested <= 0) fail("{} must be positive", option);
  if (requested < 2) fail("{} must be at least 2 (<s> and </s>)", option);
  if (requested > embedder.max_seq_len()) {
    spdlog::warn("{} {} is more than this model's limit; using {}", option, requested, embedder.max_seq_len());
    return embedder.max_seq_len();
  }
  return requested;
}

}  // namespace m3::cli
