// Runs m3embed's CUDA kernels on the CPU, for tests on machines without a GPU: the .cu
// files compile as C++ with this header first. Each block runs as blockDim fibers
// (ucontext) on the calling thread; __syncthreads and warp shuffles switch between them,
// so barriers and shuffles keep their CUDA meaning. Slow, and exact: it checks the
// kernels' indexing, masking and arithmetic, not their speed.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>

#define M3_CUDA_EMULATION 1

namespace m3emu {

struct ThreadContext {
  uint3 thread, block;
  dim3 block_dim, grid_dim;
};

const ThreadContext& current();
void* dynamic_shared();
void sync_threads();
// Exchanges 32-bit values within the warp: returns lane `source(lane)`'s value.
uint32_t warp_exchange(uint32_t value, int source_lane);
void run_grid(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body);

template <typename T>
T shuffle(T value, int source_lane) {
  static_assert(sizeof(T) == 4);
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  bits = warp_exchange(bits, source_lane);
  std::memcpy(&value, &bits, 4);
  return value;
}

template <typename... Params>
struct Launch {
  dim3 grid, block;
  size_t shared_bytes;
  void (*kernel)(Params...);
  template <typename... Args>
  void operator()(Args&&... args) const {
    auto k = kernel;
    std::tuple<Params...> bound(static_cast<Params>(args)...);
    run_grid(grid, block, shared_bytes, [&] { std::apply(k, bound); });
  }
};

template <typename... Params>
Launch<Params...> launch(dim3 grid, dim3 block, size_t shared_bytes, void (*kernel)(Params...)) {
  return {grid, block, shared_bytes, kernel};
}

}  // namespace m3emu

#define threadIdx (::m3emu::current().thread)
#define blockIdx (::m3emu::current().block)
#define blockDim (::m3emu::current().block_dim)
#define gridDim (::m3emu::current().grid_dim)
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#undef __shared__
#define __shared__ static thread_local
#define M3_LAUNCH(grid, block, shared_bytes, stream, ...) \
  ::m3emu::launch(dim3(grid), dim3(block), shared_bytes, &__VA_ARGS__)
#define M3_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::m3emu::dynamic_shared())

inline void __syncthreads() { ::m3emu::sync_threads(); }
template <typename T>
T __shfl_xor_sync(unsigned, T value, int mask) {
  return ::m3emu::shuffle(value, static_cast<int>((::m3emu::current().thread.x % 32) ^ static_cast<unsigned>(mask)));
}
template <typename T>
T __shfl_sync(unsigned, T value, int lane) {
  return ::m3emu::shuffle(value, lane);
}
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline int min(int a, int b) { return a < b ? a : b; }
