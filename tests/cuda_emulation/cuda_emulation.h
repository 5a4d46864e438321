// Runs m3embed's CUDA kernels on the CPU, for tests on machines without a GPU: the .cu
// files compile as C++ with this header first. A launch is queued on its stream like any
// other operation (fake_cuda_runtime.cpp decides when it runs); each block then runs as
// blockDim fibers on the thread that made it run; __syncthreads and warp shuffles switch
// between them, so barriers and shuffles keep their CUDA meaning. Slow, and exact: it
// checks the kernels' indexing, masking and arithmetic, not their speed.
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
// Every lane of the warp gives `count` (<= kGatherMax) values and gets back all of them,
// lane-major ([lane][count]); the pointer is good until this lane's next-but-one gather.
constexpr int kGatherMax = 8;
const uint32_t* warp_gather(const uint32_t* values, int count);

// The tensor-core instructions (tensor_core_emulation.cpp), with the PTX ISA's fragment
// layouts (see src/m3/backend/cuda/tensor_core.cuh): whole-warp operations, like the real ones.
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], bool bf16);
void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool transpose);
// cp.async: copies wait in this thread's open group until committed, and land only when
// cp_async_wait lets them, so a kernel that reads before it waits reads stale data.
void cp_async(void* shared, const void* global, int bytes, int src_bytes);
void cp_async_commit();
void cp_async_wait(int pending);
void run_grid(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body);
// Queues a kernel (or a GEMM) on `stream` (fake_cuda_runtime.cpp).
void queue_kernel(cudaStream_t stream, std::function<void()> kernel);

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
  cudaStream_t stream;
  void (*kernel)(Params...);
  // The arguments are bound by value now, as a launch takes them; the kernel runs later.
  template <typename... Args>
  void operator()(Args&&... args) const {
    auto k = kernel;
    std::tuple<Params...> bound(static_cast<Params>(args)...);
    queue_kernel(stream, [k, bound, g = grid, b = block, s = shared_bytes] {
      run_grid(g, b, s, [&] { std::apply(k, bound); });
    });
  }
};

template <typename... Params>
Launch<Params...> launch(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream, void (*kernel)(Params...)) {
  return {grid, block, shared_bytes, stream, kernel};
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
  ::m3emu::launch(dim3(grid), dim3(block), shared_bytes, stream, &__VA_ARGS__)
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
