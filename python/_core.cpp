// m3embed._core: the C++ engine (Embedder) as a Python class, Engine. Everything the
// FlagEmbedding-compatible layer (m3embed/flag_model.py) needs and nothing it computes: texts
// in, numpy arrays and dicts out. The GIL is released while replicas compute; work is cut
// into chunks so that Ctrl-C (checked between chunks) stops an encode and leaves the
// engine usable; engine errors become m3embed.M3Error with the engine's message.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "m3/core/error.h"
#include "m3/core/precision.h"
#include "m3/hub/hub.h"
#include "m3/memory/memory_plan.h"
#include "m3/runtime/device_selection.h"
#include "m3/runtime/embedder.h"

namespace py = pybind11;

namespace m3::python {
namespace {

std::filesystem::path resolve(const std::string& model) {
  if (std::filesystem::is_directory(model)) return model;
  if (!looks_like_hub_id(model)) fail("model {}: no such directory, and not a hub id like BAAI/bge-m3", model);
  return resolve_model(model, hub_options_from_env());
}

// A float32 array that owns `values` (moved, not copied), shaped [rows, cols] or [rows].
py::array_t<float> to_array(std::vector<float>&& values, std::vector<py::ssize_t> shape) {
  auto* owned = new std::vector<float>(std::move(values));
  py::capsule free_when_done(owned, [](void* p) { delete static_cast<std::vector<float>*>(p); });
  return py::array_t<float>(shape, owned->data(), free_when_done);
}

class Engine {
 public:
  Engine(const std::string& model, const std::string& device, const std::string& devices, const std::string& dtype,
         int threads, const py::object& memory_limit, int64_t max_batch_tokens, int64_t max_length, bool warm_up,
         const std::string& weight_rounding) {
    EmbedderOptions options;
    options.threads = threads;
    options.precision = parse_precision(dtype);
    options.weight_rounding = parse_precision(weight_rounding);
    if (options.weight_rounding == DType::I8) fail("weight_rounding is fp32, fp16 or bf16, not {}", weight_rounding);
    options.max_batch_tokens = max_batch_tokens;
    options.max_seq_len = max_length;
    options.warm_up = warm_up;
    if (!memory_limit.is_none()) {
      options.memory_limit = py::isinstance<py::str>(memory_limit) ? parse_bytes(memory_limit.cast<std::string>())
                                                                   : memory_limit.cast<uint64_t>();
    }
    options.devices = select_devices(devices.empty() ? device : "", devices);
    const std::filesystem::path dir = resolve(model);
    py::gil_scoped_release unlocked;
    embedder_ = Embedder::load(dir, options);
  }

  // Texts -> {"dense": [n, hidden] | None, "lexical": [dict id -> weight] | None,
  // "colbert": [array [rows, hidden]] | None, "tokens": [int], "truncated": [bool]}.
  py::dict encode(const std::vector<std::string>& texts, int64_t max_length, bool dense, bool sparse, bool colbert,
                  int64_t chunk_tokens, const py::object& progress) {
    const OutputRequest request{dense, sparse, colbert};
    embedder_->check(request);
    const int64_t hidden = embedder_->config().hidden_size;
    const auto n = static_cast<py::ssize_t>(texts.size());
    std::vector<float> dense_values(dense ? texts.size() * hidden : 0);
    py::list lexical, colbert_vecs, tokens, truncated;
    if (chunk_tokens <= 0) chunk_tokens = 4 * embedder_->max_batch_tokens();

    for (size_t begin = 0; begin < texts.size();) {
      // Tokenize and encode one chunk without the GIL; Ctrl-C is looked at between chunks.
      std::vector<M3Output> outputs;
      std::vector<char> cut;
      size_t end = begin;
      {
        py::gil_scoped_release unlocked;
        std::vector<std::vector<int32_t>> ids;
        int64_t chunk = 0;
        while (end < texts.size() && (ids.empty() || chunk < chunk_tokens)) {
          bool was_cut = false;
          ids.push_back(embedder_->tokenize(texts[end], max_length, &was_cut));
          cut.push_back(was_cut);
          chunk += static_cast<int64_t>(ids.back().size());
          ++end;
        }
        outputs = embedder_->encode(ids, request);
      }
      for (size_t i = 0; i < outputs.size(); ++i) {
        M3Output& o = outputs[i];
        if (dense) std::memcpy(dense_values.data() + (begin + i) * hidden, o.dense.data(), hidden * sizeof(float));
        if (sparse) {
          py::dict weights;  // insertion order = first occurrence, as FlagEmbedding's dicts
          for (const auto& [id, w] : o.lexical) weights[py::int_(id)] = py::float_(w);
          lexical.append(std::move(weights));
        }
        if (colbert) colbert_vecs.append(to_array(std::move(o.colbert), {o.colbert_rows, hidden}));
        tokens.append(o.tokens);
        truncated.append(static_cast<bool>(cut[i]));
      }
      begin = end;
      if (!progress.is_none()) progress(begin);
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }
    py::dict result;
    result["dense"] = dense ? py::object(to_array(std::move(dense_values), {n, hidden})) : py::none();
    result["lexical"] = sparse ? py::object(lexical) : py::none();
    result["colbert"] = colbert ? py::object(colbert_vecs) : py::none();
    result["tokens"] = tokens;
    result["truncated"] = truncated;
    return result;
  }

  // (query, passage) pairs -> a reranker's logits [n, labels], the pairs cut as
  // FlagReranker cuts them (Embedder::tokenize_pair).
  py::array_t<float> score_pairs(const std::vector<std::pair<std::string, std::string>>& pairs, int64_t max_length,
                                 int64_t query_max_length, int64_t chunk_tokens, const py::object& progress) {
    const OutputRequest request{.dense = false, .scores = true};
    embedder_->check(request);
    const int64_t labels = embedder_->config().num_labels;
    std::vector<float> logits;
    logits.reserve(pairs.size() * labels);
    if (chunk_tokens <= 0) chunk_tokens = 4 * embedder_->max_batch_tokens();
    for (size_t begin = 0; begin < pairs.size();) {
      size_t end = begin;
      {
        py::gil_scoped_release unlocked;
        std::vector<std::vector<int32_t>> ids;
        int64_t chunk = 0;
        while (end < pairs.size() && (ids.empty() || chunk < chunk_tokens)) {
          ids.push_back(embedder_->tokenize_pair(pairs[end].first, pairs[end].second, max_length, query_max_length));
          chunk += static_cast<int64_t>(ids.back().size());
          ++end;
        }
        for (const M3Output& o : embedder_->encode(ids, request)) logits.insert(logits.end(), o.scores.begin(), o.scores.end());
      }
      begin = end;
      if (!progress.is_none()) progress(begin);
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }
    return to_array(std::move(logits), {static_cast<py::ssize_t>(pairs.size()), labels});
  }

  std::vector<int32_t> tokenize(const std::string& text, int64_t max_length) const {
    return embedder_->tokenize(text, max_length);
  }
  std::string id_to_piece(int32_t id) const { return embedder_->tokenizer().id_to_piece(id); }

  py::dict plan() const {
    const MemoryPlan& p = embedder_->plan();
    py::dict d;
    d["total_bytes"] = p.total_bytes;
    d["weight_bytes"] = p.weight_bytes;
    d["arena_bytes"] = p.arena_bytes;
    d["device_bytes"] = p.device_bytes;
    d["max_batch_tokens"] = p.inputs.max_batch_tokens;
    d["max_seq_len"] = p.inputs.max_seq_len;
    d["replicas"] = p.inputs.replicas;
    d["threads"] = p.inputs.threads;
    d["dtype"] = std::string(precision_name(p.inputs.precision));
    d["device"] = embedder_->replica(0).device_name();
    return d;
  }
  int64_t hidden_size() const { return embedder_->config().hidden_size; }
  int64_t max_seq_len() const { return embedder_->max_seq_len(); }
  std::string model_dir() const { return embedder_->model_dir().string(); }

 private:
  std::unique_ptr<Embedder> embedder_;
};

}  // namespace
}  // namespace m3::python

PYBIND11_MODULE(_core, m) {
  using m3::python::Engine;
  m.doc() = "m3embed's C++ engine (see m3embed.Engine and m3embed.BGEM3FlagModel)";
  // A library speaks when something is wrong; the server's load and plan lines are for
  // whoever asks: m3embed.set_log_level("info").
  spdlog::set_level(spdlog::level::warn);
  m.def(
      "set_log_level",
      [](const std::string& level) {
        const auto parsed = spdlog::level::from_str(level);
        if (parsed == spdlog::level::off && level != "off") {
          throw py::value_error("log level must be trace, debug, info, warning, error, critical or off");
        }
        spdlog::set_level(parsed);
      },
      py::arg("level"), "The engine's log level (default warning): trace, debug, info, warning, error, off.");
  static py::exception<m3::Error> error(m, "M3Error", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const m3::Error& e) {
      PyErr_SetString(error.ptr(), e.what());
    }
  });
  py::class_<Engine>(m, "Engine", "One loaded BGE-M3 model with its memory plan, replicas and scheduler.")
      .def(py::init<const std::string&, const std::string&, const std::string&, const std::string&, int,
                    const py::object&, int64_t, int64_t, bool, const std::string&>(),
           py::arg("model"), py::kw_only(), py::arg("device") = "cpu", py::arg("devices") = "", py::arg("dtype") = "fp32",
           py::arg("threads") = 0, py::arg("memory_limit") = py::none(), py::arg("max_batch_tokens") = 16384,
           py::arg("max_length") = 0, py::arg("warm_up") = true, py::arg("weight_rounding") = "fp32",
           "model: a snapshot directory or a hub id (BAAI/bge-m3); device: cpu, auto, cuda, cuda:N; devices: "
           "'cuda:0,cuda:1' (one replica per GPU, instead of device); dtype: fp32, "
           "bf16, int8 (CPU), fp16 (CUDA); threads: 0 = all cores; memory_limit: bytes or '6GiB' (picks "
           "max_batch_tokens); max_length: the longest input in tokens (0: the model's limit); weight_rounding: fp16 or "
           "bf16 rounds every weight to that type at load (FlagEmbedding's use_fp16/use_bf16 on the CPU).")
      .def("encode", &Engine::encode, py::arg("texts"), py::kw_only(), py::arg("max_length") = 8192,
           py::arg("dense") = true, py::arg("sparse") = false, py::arg("colbert") = false,
           py::arg("chunk_tokens") = 0, py::arg("progress") = py::none(),
           "Encodes texts (truncated to max_length tokens); returns a dict of dense [n, hidden] float32, lexical "
           "(dicts token id -> weight), colbert (arrays [rows, hidden]), tokens and truncated. Work goes in chunks "
           "of about chunk_tokens tokens (0: 4 x max_batch_tokens); after each, progress(texts done) is called "
           "when given, and Ctrl-C is honoured (the engine stays usable).")
      .def("score_pairs", &Engine::score_pairs, py::arg("pairs"), py::kw_only(), py::arg("max_length") = 512,
           py::arg("query_max_length") = 0, py::arg("chunk_tokens") = 0, py::arg("progress") = py::none(),
           "A reranker's logits [n, labels] for (query, passage) pairs, cut as FlagReranker cuts them "
           "(query_max_length 0: 3/4 of max_length). The GIL is released while computing.")
      .def("tokenize", &Engine::tokenize, py::arg("text"), py::arg("max_length") = 0)
      .def("id_to_piece", &Engine::id_to_piece, py::arg("id"))
      .def_property_readonly("plan", &Engine::plan, "The memory plan: bytes, max_batch_tokens, device, dtype, ...")
      .def_property_readonly("hidden_size", &Engine::hidden_size)
      .def_property_readonly("max_seq_len", &Engine::max_seq_len)
      .def_property_readonly("model_dir", &Engine::model_dir);
}
