// CUDA runtime and cuBLASLt status codes turned into m3::Error with the call that failed.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "m3/core/error.h"

namespace m3::cuda {

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) fail("CUDA: {} failed: {} ({})", what, cudaGetErrorString(status), cudaGetErrorName(status));
}

inline void check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) fail("cuBLASLt: {} failed: {}", what, cublasLtGetStatusString(status));
}

}  // namespace m3::cuda
