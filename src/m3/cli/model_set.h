// Several models in one process (`serve --model A --model B`): their names, and loading
// them so that they share one --threads and one --memory-limit.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "m3/cli/model_options.h"

namespace m3::cli {

struct ModelSpec {
  std::string name;    // what requests route by ("model"); the hub id or directory name by default
  std::string source;  // a directory or a hub id
};

// "name=source" or "source".
ModelSpec parse_model_spec(const std::string& text);

// A model about to be planned or loaded: where it is, its config, its options.
struct PlannedModel {
  std::filesystem::path dir;
  ModelConfig config;
  EmbedderOptions options;
};

// The largest max batch tokens (a multiple of 64, at least every model's longest input)
// at which the models' plans fit `limit` together; fails naming the least they need.
int64_t shared_batch_tokens(const std::vector<PlannedModel>& models, uint64_t limit);
// Their plans' bytes together at `batch_tokens` tokens per batch each.
uint64_t planned_total(const std::vector<PlannedModel>& models, int64_t batch_tokens);

// Loads each model in order. With several: the CPU threads are split evenly between them
// (models computing at once must not oversubscribe the cores), and --memory-limit bounds
// their plans together: the largest max batch tokens, the same for all, whose plans fit it
// side by side. `adjust` sets per-command options on each model's EmbedderOptions.
std::vector<std::unique_ptr<Embedder>> load_model_set(
    const std::vector<ModelSpec>& specs, const ModelOptions& options,
    const std::function<void(EmbedderOptions&, const ModelConfig&)>& adjust);

}  // namespace m3::cli
