#include "m3/model/weights.h"

#include <immintrin.h>

#include <cstring>
#include <map>

#include "m3/core/error.h"
#include "m3/checkpoint/checkpoint.h"

namespace m3 {
namespace {

namespace fs = std::filesystem;

fs::path encoder_file(const fs::path& model_dir) {
  for (const char* name : {"model.safetensors", "pytorch_model.bin"}) {
    if (fs::exists(model_dir / name)) return model_dir / name;
  }
  fail("{}: no encoder weights (expected model.safetensors or pytorch_model.bin)", model_dir.string());
}

std::string encoder_prefix(const Checkpoint& checkpoint, const fs::path& file) {
  for (const char* candidate : {"", "roberta.", "model."}) {
    if (checkpoint.has(std::string(candidate) + "embeddings.word_embeddings.weight")) return candidate;
  }
  fail("{}: tensor \"embeddings.word_embeddings.weight\" not found (is this an XLM-RoBERTa checkpoint?)",
       file.string());
}

}  // namespace

void round_weight_values(std::vector<float>& values, DType type) {
  if (type == DType::F16) {
    for (float& v : values) v = _cvtsh_ss(_cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT));
  } else if (type == DType::BF16) {
    for (float& v : values) {
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      if ((bits & 0x7fffffffu) <= 0x7f800000u) bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;  // not NaN
      std::memcpy(&v, &bits, 4);
    }
  }
}

void HostWeights::release_host_copies() {
  for (auto& d : data) std::vector<float>().swap(d);
}

HostWeights load_weights(const fs::path& model_dir, const ModelConfig& c, WeightTable table,
                         const WeightLoadedHook& on_linear) {
  const fs::path encoder = encoder_file(model_dir);
  std::map<std::string, std::unique_ptr<Checkpoint>> open;  // by file name ("" = encoder)
  open[""] = open_checkpoint(encoder);
  const std::string prefix = encoder_prefix(*open[""], encoder);

  HostWeights w;
  w.source = encoder.string();
  w.table = std::move(table);
  w.data.resize(w.table.specs.size());
  w.packed.resize(w.table.specs.size());
  for (size_t i = 0; i < w.table.specs.size(); ++i) {
    const WeightSpec& spec = w.table.specs[i];
    auto& checkpoint = open[spec.file];
    if (!checkpoint) checkpoint = open_checkpoint(model_dir / spec.file);
    const std::string& from = spec.file.empty() && !spec.beside_encoder ? prefix : std::string();
    std::vector<float>& out = w.data[i];
    out.reserve(spec.elements());
    for (const auto& source : spec.sources) {
      const auto values = checkpoint->read_f32(from + source, spec.source_shape);
      const size_t keep = spec.take_rows > 0 ? static_cast<size_t>(spec.take_rows * spec.cols) : values.size();
      out.insert(out.end(), values.begin(), values.begin() + static_cast<std::ptrdiff_t>(keep));
    }
    if (out.size() != spec.elements()) {
      fail("internal: {} read {} values, the table says {}", spec.name, out.size(), spec.elements());
    }
    if (on_linear && spec.role == WeightRole::kEncoderLinear) on_linear(spec, out, w.packed[i]);
    if (!spec.file.empty() && i + 1 < w.table.specs.size() && w.table.specs[i + 1].file != spec.file) {
      open.erase(spec.file);  // a head file is read whole; close it
    }
  }
  if (open[""]->has(prefix + "encoder.layer." + std::to_string(c.num_layers) + ".attention.self.query.weight")) {
    fail("{}: has more layers than num_hidden_layers = {} in config.json", encoder.string(), c.num_layers);
  }
  return w;
}

}  // namespace m3
