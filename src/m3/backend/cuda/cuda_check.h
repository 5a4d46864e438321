// CUDA runtime and cuBLASLt status codes turned into m3::Error with the call that failed.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <string>

#include "m3/core/error.h"

namespace m3::cuda {

// The errors after which the CUDA context is unusable: every later call returns them
// (CUDA runtime API, cudaError_t: "the process must be terminated and relaunched").
inline bool sticky(cudaError_t status) {
  switch (status) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorLaunchTimeout:
    case cudaErrorECCUncorrectable:
      return true;
    default:
      return false;
  }
}

// Throws DeviceFault for a sticky error (the replica leaves service), m3::Error otherwise.
inline void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  const std::string message =
      fmt::format("CUDA: {} failed: {} ({})", what, cudaGetErrorString(status), cudaGetErrorName(status));
  if (sticky(status)) throw DeviceFault(message);
  throw Error(message);
}

inline void check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) fail("cuBLASLt: {} failed: {}", what, cublasLtGetStatusString(status));
}

}  // namespace m3::cuda
