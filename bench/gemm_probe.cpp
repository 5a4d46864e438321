// m3bench-gemm: what the GEMM library itself reaches on this machine, on the encoder's four
// GEMM shapes, called as the engine calls it (row-major input, weights in oneDNN's own
// packed format, a user scratchpad, 64-byte-aligned buffers). m3bench-peak gives the
// instruction's ceiling; this gives the library's, so a workload's share of the first
// splits into "the GEMMs are slow here" and "the rest of the pass is slow".
//
//   m3bench-gemm [--dtype bf16|int8|fp32] [--rows M] [--chunk C] [--hidden H] [--ffn F] [--repeat N] [--json PATH]
//
// --chunk C runs the M rows as consecutive calls of C rows each, over the same M-row buffers,
// as the engine runs a batch in row blocks (gemm_row_blocks.h). Timing C rows alone instead
// (--rows C) flatters small C: repeated runs then find their inputs and outputs in cache.
//
// Buffers matter: the same bf16 GEMM from a std::vector (16-byte aligned) ran at half the
// speed on an AMX machine, because every tile row load then straddles two cache lines.
#include <dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

using dnnl::memory;
using dt = memory::data_type;
using tag = memory::format_tag;

struct Free {
  void operator()(void* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<uint8_t, Free>;

// Page-aligned, every byte written (no page faults inside the timed runs).
Buffer aligned_buffer(size_t bytes, uint8_t fill) {
  const size_t rounded = (bytes + 4095) / 4096 * 4096;
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(4096, rounded));
  if (p == nullptr) {
    std::fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
    std::exit(1);
  }
  std::memset(p, fill, rounded);
  return Buffer(p);
}

struct Shape {
  const char* name;
  int64_t in, out;
};

struct Result {
  std::string impl;
  double seconds, gops;
};

// The median of `repeat` timed runs of one GEMM, after one untimed run (JIT, first touch).
Result run_gemm(const dnnl::engine& engine, dnnl::stream& stream, const std::string& dtype, int64_t rows,
                int64_t chunk, const Shape& s, int repeat) {
  const bool int8 = dtype == "int8", bf16 = dtype == "bf16";
  const dt src_type = int8 ? dt::u8 : bf16 ? dt::bf16 : dt::f32;
  const dt wei_type = int8 ? dt::s8 : bf16 ? dt::bf16 : dt::f32;
  const memory::desc src_md({chunk, s.in}, src_type, tag::ab);
  const memory::desc wei_md({s.in, s.out}, wei_type, tag::any);
  const memory::desc dst_md({chunk, s.out}, dt::f32, tag::ab);  // int8: raw accumulators, as the engine
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src_md, wei_md, dst_md), attr, engine);
  const size_t element = int8 ? 1 : bf16 ? 2 : 4;
  // Small values in every type (bf16 0x3c00.. is about 0.008; int8 1 and 2): no denormals.
  Buffer src = aligned_buffer(static_cast<size_t>(rows * s.in) * element, int8 ? 2 : 0x3c);
  Buffer wei = aligned_buffer(pd.weights_desc().get_size(), int8 ? 1 : 0x3c);
  Buffer dst = aligned_buffer(static_cast<size_t>(rows * s.out) * 4, 0);
  Buffer scratch = aligned_buffer(std::max<size_t>(pd.scratchpad_desc().get_size(), 64), 0);
  memory src_m(src_md, engine, src.get()), wei_m(pd.weights_desc(), engine, wei.get());
  memory dst_m(dst_md, engine, dst.get()), scratch_m(pd.scratchpad_desc(), engine, scratch.get());
  const dnnl::matmul gemm(pd);
  auto once = [&] {
    for (int64_t first = 0; first < rows; first += chunk) {
      src_m.set_data_handle(src.get() + static_cast<size_t>(first * s.in) * element);
      dst_m.set_data_handle(dst.get() + static_cast<size_t>(first * s.out) * 4);
      gemm.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, wei_m}, {DNNL_ARG_DST, dst_m},
                            {DNNL_ARG_SCRATCHPAD, scratch_m}});
    }
    stream.wait();
  };
  once();
  std::vector<double> times;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    once();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  return {pd.impl_info_str(), median, 2.0 * static_cast<double>(rows) * s.in * s.out / median / 1e9};
}

}  // namespace

int main(int argc, char** argv) {
  std::string dtype = "bf16", json;
  int64_t rows = 8192, chunk = 0, hidden = 1024, ffn = 4096;
  int repeat = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--dtype" && has_value) {
      dtype = argv[++i];
    } else if (arg == "--rows" && has_value) {
      rows = std::atol(argv[++i]);
    } else if (arg == "--chunk" && has_value) {
      chunk = std::atol(argv[++i]);
    } else if (arg == "--hidden" && has_value) {
      hidden = std::atol(argv[++i]);
    } else if (arg == "--ffn" && has_value) {
      ffn = std::atol(argv[++i]);
    } else if (arg == "--repeat" && has_value) {
      repeat = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--json" && has_value) {
      json = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: m3bench-gemm [--dtype bf16|int8|fp32] [--rows M] [--chunk C] [--hidden H] [--ffn F] [--repeat N] "
                   "[--json PATH]\n");
      return 2;
    }
  }
  if (chunk == 0) chunk = rows;
  if ((dtype != "bf16" && dtype != "int8" && dtype != "fp32") || rows < 1 || hidden < 1 || ffn < 1 || chunk < 1 ||
      rows % chunk != 0) {
    std::fprintf(stderr, "m3bench-gemm: --dtype is bf16, int8 or fp32; sizes are positive; --chunk divides --rows\n");
    return 2;
  }
  const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  // The encoder layer's GEMMs (BGE-M3: hidden 1024, FFN 4096) in the order they run.
  const Shape shapes[] = {
      {"qkv", hidden, 3 * hidden}, {"attention_out", hidden, hidden}, {"ffn_up", hidden, ffn}, {"ffn_down", ffn, hidden}};
  double total_ops = 0, total_seconds = 0;
  std::string out = "{\"dtype\":\"" + dtype + "\",\"rows\":" + std::to_string(rows) + ",\"chunk\":" + std::to_string(chunk) +
                    ",\"gemms\":[";
  std::printf("%-14s %6s %6s  %10s  %9s  %s\n", "gemm", "in", "out", "ms", "G ops/s", "oneDNN implementation");
  for (const Shape& s : shapes) {
    const Result r = run_gemm(engine, stream, dtype, rows, chunk, s, repeat);
    std::printf("%-14s %6ld %6ld  %10.2f  %9.0f  %s\n", s.name, static_cast<long>(s.in), static_cast<long>(s.out),
                r.seconds * 1e3, r.gops, r.impl.c_str());
    total_ops += 2.0 * static_cast<double>(rows) * s.in * s.out;
    total_seconds += r.seconds;
    out += std::string(&s == shapes ? "" : ",") + "{\"name\":\"" + s.name + "\",\"in\":" + std::to_string(s.in) +
           ",\"out\":" + std::to_string(s.out) + ",\"seconds\":" + std::to_string(r.seconds) +
           ",\"gops\":" + std::to_string(r.gops) + ",\"impl\":\"" + r.impl + "\"}";
  }
  const double layer_gops = total_ops / total_seconds / 1e9;
  std::printf("%-14s %6s %6s  %10.2f  %9.0f  (the four in a layer's proportions)\n", "layer", "", "",
              total_seconds * 1e3, layer_gops);
  out += "],\"layer_gops\":" + std::to_string(layer_gops) + "}\n";
  if (!json.empty()) {
    FILE* f = std::fopen(json.c_str(), "w");
    if (f == nullptr) {
      std::perror(json.c_str());
      return 1;
    }
    std::fputs(out.c_str(), f);
    std::fclose(f);
  }
  return 0;
}
