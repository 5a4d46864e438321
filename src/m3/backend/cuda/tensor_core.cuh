// The warp-level instructions of the tensor-core kernels, one inline-PTX wrapper each
// (PTX ISA, "Warp-level matrix instructions" and "cp.async"):
//   mma.sync m16n8k16, row.col, fp16 or bf16 inputs, fp32 accumulators;
//   ldmatrix m8n8 x4 (.trans): four 8x8 16-bit tiles from shared memory into fragments;
//   cp.async 16 bytes global -> shared, zero-filled past the source, in commit groups.
// Fragment layouts, lane = 4 * group + quad (group = lane / 4, quad = lane % 4):
//   A 16x16: a[0] = (row group, cols 2quad, 2quad+1), a[1] = row group+8, a[2] = cols +8,
//            a[3] = row group+8 and cols +8, two 16-bit values per register, low half first;
//   B 16x8:  b[0] = (rows 2quad, 2quad+1, col group), b[1] = rows +8;
//   C 16x8:  c[0], c[1] = (row group, cols 2quad, 2quad+1), c[2], c[3] = row group+8.
// Under M3_CUDA_EMULATION (tests/cuda_emulation) each wrapper calls the emulation's
// version of the instruction, which follows the same layouts.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "m3/backend/cuda/cuda_types.cuh"

namespace m3::cuda {

// Two values of T in one 32-bit register, `lo` in the low half (the fragments' order).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const T pair[2] = {from_f32<T>(lo), from_f32<T>(hi)};
  uint32_t bits;
  memcpy(&bits, pair, sizeof bits);
  return bits;
}

// d += a b on the tensor cores (T = __half or __nv_bfloat16).
template <typename T>
__device__ __forceinline__ void mma_16x8x16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef M3_CUDA_EMULATION
  const uint32_t b[2] = {b0, b1};
  ::m3emu::mma_m16n8k16(d, a, b, std::is_same_v<T, __nv_bfloat16>);
#else
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

// Four 8x8 tiles of 16-bit values: lanes 8i..8i+7 give the addresses of tile i's rows
// (16 bytes each); register i gets tile i in the A/C layout, or transposed with kTranspose.
template <bool kTranspose>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#ifdef M3_CUDA_EMULATION
  ::m3emu::ldmatrix_x4(r, row, kTranspose);
#else
  const auto at = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  if constexpr (kTranspose) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(at));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(at));
  }
#endif
}

// 16 bytes from global to shared memory, asynchronously; zeros when !valid (src is then
// not read). Visible to this thread after cp_async_wait, to the block after a barrier.
__device__ __forceinline__ void cp_async_16(void* shared, const void* global, bool valid) {
#ifdef M3_CUDA_EMULATION
  ::m3emu::cp_async(shared, global, 16, valid ? 16 : 0);
#else
  const auto at = static_cast<uint32_t>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(at), "l"(global), "r"(valid ? 16 : 0));
#endif
}

// Closes the group of copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#ifdef M3_CUDA_EMULATION
  ::m3emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most kPending of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
#ifdef M3_CUDA_EMULATION
  ::m3emu::cp_async_wait(kPending);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}

}  // namespace m3::cuda
