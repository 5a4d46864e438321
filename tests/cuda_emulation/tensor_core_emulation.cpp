// mma.sync m16n8k16 and ldmatrix m8n8 x4 on the CPU, lane by lane, with the fragment
// layouts of the PTX ISA ("Matrix fragments for mma.m16n8k16", "ldmatrix"): each lane
// publishes its registers to the warp, and computes or reads its own results from all of
// them. Products of 16-bit values are exact in float32; the sums run in float32 in k order
// (the hardware's order and rounding of the partial sums may differ in the last bit).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_emulation.h"

#include <cstdio>
#include <cstdlib>
#include <vector>

namespace m3emu {
namespace {

float half_value(uint32_t reg, int which, bool bf16) {
  const auto bits = static_cast<uint16_t>(which ? reg >> 16 : reg & 0xffffu);
  if (bf16) {
    const uint32_t wide = uint32_t{bits} << 16;
    float f;
    std::memcpy(&f, &wide, 4);
    return f;
  }
  __half h;
  std::memcpy(&h, &bits, 2);
  return __half2float(h);
}

int lane() { return static_cast<int>(current().thread.x % 32); }

// The warp's last product, 16x8: every lane of the warp asks for the same one, so the
// first computes it and the rest (finding the same inputs) read their four values.
struct WarpProduct {
  std::vector<uint32_t> inputs;  // the gathered registers, [lane][6]
  bool bf16 = false;
  float d[16][8] = {};
};

const WarpProduct& product_of(const uint32_t* all, bool bf16) {
  thread_local std::vector<WarpProduct> cache;
  const auto warp = current().thread.x / 32;
  if (cache.size() <= warp) cache.resize(warp + 1);
  WarpProduct& p = cache[warp];
  std::vector<uint32_t> inputs(32 * 6);
  for (int lane = 0; lane < 32; ++lane) std::copy(all + lane * kGatherMax, all + lane * kGatherMax + 6, &inputs[lane * 6]);
  if (p.bf16 == bf16 && p.inputs == inputs) return p;
  p.inputs = std::move(inputs);
  p.bf16 = bf16;
  // A[row][k]: lane 4 (row % 8) + (k % 8) / 2, register (row / 8) + 2 (k / 8), half k % 2.
  // B[k][col]: lane 4 col + (k % 8) / 2, register 4 + k / 8, half k % 2.
  float a[16][16], b[16][8];
  for (int row = 0; row < 16; ++row)
    for (int k = 0; k < 16; ++k)
      a[row][k] = half_value(p.inputs[(4 * (row % 8) + (k % 8) / 2) * 6 + row / 8 + 2 * (k / 8)], k % 2, bf16);
  for (int k = 0; k < 16; ++k)
    for (int col = 0; col < 8; ++col) b[k][col] = half_value(p.inputs[(4 * col + (k % 8) / 2) * 6 + 4 + k / 8], k % 2, bf16);
  for (int row = 0; row < 16; ++row) {
    for (int col = 0; col < 8; ++col) {
      float sum = 0.f;
      for (int k = 0; k < 16; ++k) sum += a[row][k] * b[k][col];
      p.d[row][col] = sum;
    }
  }
  return p;
}

}  // namespace

void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], bool bf16) {
  const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
  const WarpProduct& p = product_of(warp_gather(mine, 6), bf16);
  const int group = lane() / 4, quad = lane() % 4;
  for (int i = 0; i < 4; ++i) d[i] += p.d[group + 8 * (i / 2)][2 * quad + i % 2];
}

void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool transpose) {
  const auto address = reinterpret_cast<uintptr_t>(row);
  const uint32_t mine[2] = {static_cast<uint32_t>(address), static_cast<uint32_t>(address >> 32)};
  const uint32_t* all = warp_gather(mine, 2);
  auto row_of = [&](int tile, int r8) {  // tile `tile`'s row r8, as lane 8 tile + r8 gave it
    const uint32_t* a = all + (8 * tile + r8) * kGatherMax;
    const uintptr_t p = uintptr_t{a[0]} | uintptr_t{a[1]} << 32;
    if (p % 16 != 0) {
      std::fprintf(stderr, "cuda emulation: ldmatrix row address not 16-byte aligned\n");
      std::abort();
    }
    return reinterpret_cast<const uint16_t*>(p);
  };
  const int group = lane() / 4, quad = lane() % 4;
  for (int tile = 0; tile < 4; ++tile) {
    uint16_t lo, hi;
    if (transpose) {  // element [2 quad (+1)][group] of the tile
      lo = row_of(tile, 2 * quad)[group];
      hi = row_of(tile, 2 * quad + 1)[group];
    } else {  // element [group][2 quad (+1)]
      lo = row_of(tile, group)[2 * quad];
      hi = row_of(tile, group)[2 * quad + 1];
    }
    r[tile] = uint32_t{lo} | uint32_t{hi} << 16;
  }
}

}  // namespace m3emu
