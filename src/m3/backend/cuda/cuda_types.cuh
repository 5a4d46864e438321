// Storage types of the CUDA kernels: float, __half, __nv_bfloat16, converted to and from
// float32 for arithmetic, and the dispatch from DType to one of them.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "m3/backend/cuda/cuda_kernels.h"

// Kernel launch and dynamic shared memory, spelled so that tests/cuda_emulation can
// compile the same kernels as plain C++ and run them on the CPU (M3_CUDA_EMULATION).
#ifndef M3_CUDA_EMULATION
#define M3_LAUNCH(grid, block, shared_bytes, stream, ...) __VA_ARGS__<<<grid, block, shared_bytes, stream>>>
#define M3_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

namespace m3::cuda {

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Above 48 KiB of dynamic shared memory a kernel must opt in, on each device (a cheap host
// call); when that fails, the launch reports the error.
template <typename Kernel>
void allow_dynamic_shared(Kernel* kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(bytes));
  }
}

// Calls f(std::integral_constant<int, D>{}) for the attention kernels' head sizes D;
// false (f not called) for any other.
template <typename F>
bool dispatch_head_dim(int64_t head_dim, F&& f) {
  switch (head_dim) {
    case 8: f(std::integral_constant<int, 8>{}); return true;
    case 16: f(std::integral_constant<int, 16>{}); return true;
    case 32: f(std::integral_constant<int, 32>{}); return true;
    case 64: f(std::integral_constant<int, 64>{}); return true;
    case 80: f(std::integral_constant<int, 80>{}); return true;
    case 96: f(std::integral_constant<int, 96>{}); return true;
    case 128: f(std::integral_constant<int, 128>{}); return true;
    default: return false;
  }
}

// Calls f(T{}) with T the storage type of `type`.
template <typename F>
void dispatch(DType type, F&& f) {
  switch (type) {
    case DType::F32: f(float{}); break;
    case DType::F16: f(__half{}); break;
    case DType::BF16: f(__nv_bfloat16{}); break;
    default: break;  // integer types are never activations
  }
}

}  // namespace m3::cuda
