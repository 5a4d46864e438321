// m3bench-peak: the machine's own arithmetic ceiling, measured the way a GEMM kernel could
// at best use it: one thread per core, each running independent accumulators in registers
// (no memory traffic) for fp32 FMA (vfmadd231ps), bf16 dot products (vdpbf16ps) and int8
// dot products (vpdpbusd), all 512 bits wide, and where the CPU has AMX (Intel Sapphire
// Rapids and later) its tile products too (tdpbf16ps, tdpbusd): oneDNN runs the bf16 and
// int8 GEMMs on AMX where it can, so there the AMX figure is the one to be measured against.
// bench/peers.py reports m3embed's figures as a share of these (issue: "CPU: from 2-5x the
// peers to close to the machine's limit").
//
//   m3bench-peak [--seconds S] [--repeat N (best of)] [--threads T] [--json PATH]
#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

constexpr int kAccumulators = 16;  // independent chains: more than latency x pipes for each instruction (registers: 32)
constexpr long kInner = 1 << 16;   // iterations between clock reads

// Each kernel runs `rounds` x kInner iterations of kAccumulators instructions and returns
// a value depending on every accumulator (so nothing is optimized away).
__attribute__((target("avx512f"))) float fp32_fma(long rounds) {
  __m512 acc[kAccumulators];
  for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm512_set1_ps(0.001f * i);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (long r = 0; r < rounds * kInner; ++r) {
    for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  float sum = 0;
  for (int i = 0; i < kAccumulators; ++i) sum += _mm512_reduce_add_ps(acc[i]);
  return sum;
}

__attribute__((target("avx512f,avx512bf16"))) float bf16_dot(long rounds) {
  __m512 acc[kAccumulators];
  for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm512_setzero_ps();
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(2e-3f));
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
  for (long r = 0; r < rounds * kInner; ++r) {
    for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
  }
  float sum = 0;
  for (int i = 0; i < kAccumulators; ++i) sum += _mm512_reduce_add_ps(acc[i]);
  return sum;
}

__attribute__((target("avx512f,avx512vnni"))) float int8_dot(long rounds) {
  __m512i acc[kAccumulators];
  for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm512_setzero_si512();
  const __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(1);
  for (long r = 0; r < rounds * kInner; ++r) {
    for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
  }
  long sum = 0;
  for (int i = 0; i < kAccumulators; ++i) sum += _mm512_reduce_add_epi32(acc[i]);
  return static_cast<float>(sum);
}

// AMX: 2 x 2 tiles of 16 x 16 float32 (or int32) accumulators, fed by two A and two B tiles
// loaded once (16 rows x 64 bytes each), so every instruction is an independent product.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};
// A static object: gcc 12 does not see ldtilecfg read its operand and may drop the stores
// that fill in a local one (src/m3/backend/cpu/attention_amx.cpp met that).
const TileConfig kTileConfig;

// Linux hands out the AMX tile state only on request (arch_prctl, kernel 5.16+).
bool amx_permitted() {
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
}

template <bool kInt8>
__attribute__((target("amx-tile,amx-bf16,amx-int8"))) float amx_dot(long rounds) {
  _tile_loadconfig(&kTileConfig);
  alignas(64) static thread_local uint8_t operand[16 * 64];
  for (int i = 0; i < 16 * 64; ++i) operand[i] = kInt8 ? 1 : (i % 2 ? 0x3a : 0x83);  // bf16 ~1e-3 or int8 1
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  _tile_loadd(4, operand, 64); _tile_loadd(5, operand, 64); _tile_loadd(6, operand, 64); _tile_loadd(7, operand, 64);
  for (long r = 0; r < rounds * kInner; ++r) {
    if constexpr (kInt8) {
      _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
    } else {
      _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
    }
  }
  alignas(64) float out[16 * 16];
  _tile_stored(0, out, 64);
  _tile_release();
  return out[0];
}
float amx_bf16(long rounds) { return amx_dot<false>(rounds); }
float amx_int8(long rounds) { return amx_dot<true>(rounds); }
const bool kHaveAmx = __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
                      __builtin_cpu_supports("amx-int8") && amx_permitted();

// Operations of one instruction: fp32 FMA 16 lanes x 2; vdpbf16ps 16 lanes x 2 products x 2;
// vpdpbusd 16 lanes x 4 products x 2. An AMX kernel's round is 4 tile products, each 16 x 16
// outputs x 32 (bf16) or 64 (int8) products x 2: kAccumulators x ops must equal that.
struct Kind {
  const char* name;
  bool supported;
  double ops_per_instruction;
  float (*run)(long);
};
const Kind kKinds[] = {{"fp32_fma", __builtin_cpu_supports("avx512f") != 0, 32, fp32_fma},
                       {"bf16_dot", __builtin_cpu_supports("avx512bf16") != 0, 64, bf16_dot},
                       {"int8_dot", __builtin_cpu_supports("avx512vnni") != 0, 128, int8_dot},
                       {"amx_bf16", kHaveAmx, 4.0 * 16 * 16 * 32 * 2 / kAccumulators, amx_bf16},
                       {"amx_int8", kHaveAmx, 4.0 * 16 * 16 * 64 * 2 / kAccumulators, amx_int8}};

// Ops per second over all threads, each running for about `seconds`.
double measure(const Kind& kind, int threads, double seconds) {
  // Calibrate the rounds on one thread, then run them on every thread at once.
  long rounds = 1;
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    volatile float sink = kind.run(rounds);
    (void)sink;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s > seconds / 8) {
      rounds = static_cast<long>(rounds * seconds / s) + 1;
      break;
    }
    rounds *= 2;
  }
  double total_ops = 0;
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : total_ops)
  {
    volatile float sink = kind.run(rounds);
    (void)sink;
    total_ops += static_cast<double>(rounds) * kInner * kAccumulators * kind.ops_per_instruction;
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return total_ops / s;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 1.0;
  int threads = omp_get_max_threads(), repeat = 3;
  std::string json;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--seconds" && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else if (arg == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (arg == "--repeat" && i + 1 < argc) {
      repeat = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--json" && i + 1 < argc) {
      json = argv[++i];
    } else {
      std::fprintf(stderr, "usage: m3bench-peak [--seconds S] [--repeat N] [--threads T] [--json PATH]\n");
      return 2;
    }
  }
  std::string out = "{\"threads\":" + std::to_string(threads);
  for (const Kind& kind : kKinds) {
    const bool supported = kind.supported;
    // The best of a few runs: a ceiling is what the cores can do, not what a noisy second gave.
    double ops = 0;
    for (int r = 0; supported && r < repeat; ++r) ops = std::max(ops, measure(kind, threads, seconds));
    std::printf("%-9s %s\n", kind.name,
                supported ? (std::to_string(ops / 1e9) + " G/s").c_str() : "(not supported by this CPU)");
    out += ",\"" + std::string(kind.name) + "_gops\":" + (supported ? std::to_string(ops / 1e9) : "null");
  }
  out += "}\n";
  if (!json.empty()) {
    FILE* f = std::fopen(json.c_str(), "w");
    if (!f) {
      std::perror(json.c_str());
      return 1;
    }
    std::fputs(out.c_str(), f);
    std::fclose(f);
  }
  return 0;
}
