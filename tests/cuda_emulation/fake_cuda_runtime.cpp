// A CUDA runtime and cuBLASLt for the CPU, enough for CudaReplica: one "device" whose
// memory is host memory (its free memory accounted exactly, so a stray allocation shows),
// streams and events that are synchronous, and a reference GEMM that follows cuBLASLt's
// documented semantics (column-major, op(A) m x k, op(B) k x n, D = alpha op(A) op(B) +
// beta C, then the BIAS epilogue adds bias[m]). With cuda_emulation.h running the
// kernels, the whole CUDA backend runs, slowly, on a machine without a GPU.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

namespace {

constexpr size_t kTotal = size_t{16} << 30;  // the fake device's memory
std::mutex g_mutex;
std::map<void*, size_t> g_device;  // live cudaMalloc blocks
size_t g_used = 0;

float load(cudaDataType type, const void* base, uint64_t index) {
  switch (type) {
    case CUDA_R_32F: return static_cast<const float*>(base)[index];
    case CUDA_R_16F: return __half2float(static_cast<const __half*>(base)[index]);
    case CUDA_R_16BF: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[index]);
    default: std::abort();
  }
}

void store(cudaDataType type, void* base, uint64_t index, float value) {
  switch (type) {
    case CUDA_R_32F: static_cast<float*>(base)[index] = value; break;
    case CUDA_R_16F: static_cast<__half*>(base)[index] = __float2half_rn(value); break;
    case CUDA_R_16BF: static_cast<__nv_bfloat16*>(base)[index] = __float2bfloat16_rn(value); break;
    default: std::abort();
  }
}

struct Layout {
  cudaDataType type;
  uint64_t rows, cols;
  int64_t ld;
};

struct Desc {
  cublasOperation_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
};

template <typename T, typename Opaque>
T* as(Opaque* p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int) {
  std::memset(prop, 0, sizeof(*prop));
  std::strcpy(prop->name, "m3embed CPU emulation");
  prop->major = 9;
  prop->totalGlobalMem = kTotal;
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  std::lock_guard lock(g_mutex);
  *free = kTotal - g_used;
  *total = kTotal;
  return cudaSuccess;
}
cudaError_t cudaMalloc(void** ptr, size_t size) {
  *ptr = std::aligned_alloc(256, (size + 255) / 256 * 256);
  if (!*ptr) return cudaErrorMemoryAllocation;
  std::lock_guard lock(g_mutex);
  g_device[*ptr] = size;
  g_used += size;
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  if (!ptr) return cudaSuccess;
  std::lock_guard lock(g_mutex);
  g_used -= g_device.at(ptr);
  g_device.erase(ptr);
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaHostAlloc(void** ptr, size_t size, unsigned int) {
  *ptr = std::aligned_alloc(256, (size + 255) / 256 * 256);
  return *ptr ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFreeHost(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  *stream = reinterpret_cast<cudaStream_t>(new int(0));
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  delete reinterpret_cast<int*>(stream);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  *event = reinterpret_cast<cudaEvent_t>(new int(0));
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete reinterpret_cast<int*>(event);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind, cudaStream_t) {
  std::memmove(dst, src, count);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t count, cudaStream_t) {
  std::memset(dst, value, count);
  return cudaSuccess;
}
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t) { return "emulated CUDA error"; }
const char* cudaGetErrorName(cudaError_t) { return "cudaErrorEmulated"; }
cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }

// ---- cuBLASLt ----------------------------------------------------------------------

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  *handle = reinterpret_cast<cublasLtHandle_t>(new int(0));
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  delete reinterpret_cast<int*>(handle);
  return CUBLAS_STATUS_SUCCESS;
}
const char* cublasLtGetStatusString(cublasStatus_t) { return "emulated cuBLASLt status"; }

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
  *layout = reinterpret_cast<cublasLtMatrixLayout_t>(new Layout{type, rows, cols, ld});
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete as<Layout>(layout);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t layout, cublasLtMatrixLayoutAttribute_t attr,
                                                const void* buf, size_t size) {
  if (size != 8) return CUBLAS_STATUS_INVALID_VALUE;
  if (attr == CUBLASLT_MATRIX_LAYOUT_ROWS) std::memcpy(&as<Layout>(layout)->rows, buf, 8);
  else if (attr == CUBLASLT_MATRIX_LAYOUT_COLS) std::memcpy(&as<Layout>(layout)->cols, buf, 8);
  else return CUBLAS_STATUS_NOT_SUPPORTED;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute, cudaDataType_t scale) {
  if (compute != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  *desc = reinterpret_cast<cublasLtMatmulDesc_t>(new Desc);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete as<Desc>(desc);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t size) {
  Desc* d = as<Desc>(desc);
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA: std::memcpy(&d->transa, buf, size); break;
    case CUBLASLT_MATMUL_DESC_TRANSB: std::memcpy(&d->transb, buf, size); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: std::memcpy(&d->epilogue, buf, size); break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: std::memcpy(&d->bias, buf, size); break;
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  *pref = reinterpret_cast<cublasLtMatmulPreference_t>(new int(0));
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete reinterpret_cast<int*>(pref);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t,
                                                    const void*, size_t) {
  return CUBLAS_STATUS_SUCCESS;
}

// TEST ONLY: the row count (n) that only an algorithm chosen for it may run; 0 for none.
int64_t g_refused_rows = 0;
extern "C" void m3_fake_cublaslt_refuse_rows(int64_t rows) { g_refused_rows = rows; }

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a,
                                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                              cublasLtMatrixLayout_t d, cublasLtMatmulPreference_t, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int* found) {
  const Desc* o = as<Desc>(desc);
  const Layout *A = as<Layout>(a), *B = as<Layout>(b), *C = as<Layout>(c), *D = as<Layout>(d);
  const uint64_t m = o->transa == CUBLAS_OP_N ? A->rows : A->cols;
  const uint64_t k = o->transa == CUBLAS_OP_N ? A->cols : A->rows;
  const uint64_t kb = o->transb == CUBLAS_OP_N ? B->rows : B->cols;
  const uint64_t n = o->transb == CUBLAS_OP_N ? B->cols : B->rows;
  if (requested < 1 || k != kb || D->rows != m || D->cols != n || C->rows != m || C->cols != n || A->type != B->type) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  std::memset(&results[0], 0, sizeof(results[0]));
  results[0].algo.data[0] = n;  // the row count it was chosen for (see cublasLtMatmulAlgoCheck)
  results[0].state = CUBLAS_STATUS_SUCCESS;
  *found = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulAlgoCheck(cublasLtHandle_t, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a,
                                       cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t d,
                                       const cublasLtMatmulAlgo_t* algo, cublasLtMatmulHeuristicResult_t* result) {
  const Desc* o = as<Desc>(desc);
  const Layout *A = as<Layout>(a), *B = as<Layout>(b), *D = as<Layout>(d);
  const uint64_t k = o->transa == CUBLAS_OP_N ? A->cols : A->rows;
  const uint64_t kb = o->transb == CUBLAS_OP_N ? B->rows : B->cols;
  const uint64_t n = o->transb == CUBLAS_OP_N ? B->cols : B->rows;
  if (!algo || k != kb || D->cols != n) return CUBLAS_STATUS_INVALID_VALUE;
  if (g_refused_rows > 0 && n == static_cast<uint64_t>(g_refused_rows) && algo->data[0] != n) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (result) {
    std::memset(result, 0, sizeof(*result));
    result->algo = *algo;
    result->state = CUBLAS_STATUS_SUCCESS;
  }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t desc, const void* alpha, const void* a_data,
                              cublasLtMatrixLayout_t a, const void* b_data, cublasLtMatrixLayout_t b, const void* beta,
                              const void* c_data, cublasLtMatrixLayout_t c, void* d_data, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t* algo, void*, size_t, cudaStream_t) {
  if (!algo) return CUBLAS_STATUS_INVALID_VALUE;
  const Desc* o = as<Desc>(desc);
  const Layout *A = as<Layout>(a), *B = as<Layout>(b), *C = as<Layout>(c), *D = as<Layout>(d);
  const bool ta = o->transa != CUBLAS_OP_N, tb = o->transb != CUBLAS_OP_N;
  const uint64_t m = ta ? A->cols : A->rows, k = ta ? A->rows : A->cols, n = tb ? B->rows : B->cols;
  if (D->rows != m || D->cols != n) return CUBLAS_STATUS_INVALID_VALUE;
  if (g_refused_rows > 0 && n == static_cast<uint64_t>(g_refused_rows) && algo->data[0] != n) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  const bool bias = o->epilogue == CUBLASLT_EPILOGUE_BIAS;
  if (!bias && o->epilogue != CUBLASLT_EPILOGUE_DEFAULT) return CUBLAS_STATUS_NOT_SUPPORTED;
  for (uint64_t j = 0; j < n; ++j) {
    for (uint64_t i = 0; i < m; ++i) {
      float acc = 0.f;
      for (uint64_t p = 0; p < k; ++p) {
        const float x = load(A->type, a_data, ta ? i * A->ld + p : p * A->ld + i);  // op(A)[i, p]
        const float y = load(B->type, b_data, tb ? p * B->ld + j : j * B->ld + p);  // op(B)[p, j]
        acc += x * y;
      }
      float v = al * acc + (be != 0.f ? be * load(C->type, c_data, j * C->ld + i) : 0.f);
      if (bias) v += load(D->type, o->bias, i);
      store(D->type, d_data, j * D->ld + i, v);
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
