// A CUDA runtime and cuBLASLt for the CPU, enough for CudaReplica: one "device" whose
// memory is host memory (its free memory accounted exactly, so a stray allocation shows),
// streams and events, and a reference GEMM that follows cuBLASLt's documented semantics
// (column-major, op(A) m x k, op(B) k x n, D = alpha op(A) op(B) + beta C, then the BIAS
// epilogue adds bias[m]). With cuda_emulation.h running the kernels, the whole CUDA
// backend runs, slowly, on a machine without a GPU.
//
// Streams are queues, and what is queued runs only when CUDA's rules force it: a host
// sync (stream, event, cudaFree), or a stream reaching cudaStreamWaitEvent, which runs the
// event's stream up to the record. So work on two streams interleaves in the worst order
// those rules allow, and a missing wait reads data too early or too late, as it could on
// a GPU. Two orders (m3_fake_cuda_stream_order, TEST ONLY):
//   0 (default): a stream that runs kernels or GEMMs runs everything as it is queued;
//      other streams (copies) run as late as allowed. Catches a copy that reads memory
//      the next kernels overwrite.
//   1: every stream runs as late as allowed, so an unordered copy runs before the
//      kernels it should have waited for. Catches a copy that does not wait for its data.
// TEST ONLY too: m3_fake_cuda_fault_next_copy makes the next device-to-host copy that runs
// fail with a sticky error (cudaErrorIllegalAddress), which every later call returns until
// m3_fake_cuda_clear_fault (a real context stays broken; the test process goes on).
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>

#include "cuda_emulation.h"

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

// ---- streams and events -------------------------------------------------------------

struct Stream {
  std::deque<std::function<void()>> pending;
  uint64_t queued = 0, done = 0;  // operations ever queued, and run
  bool kernels = false;           // has had a kernel or a GEMM queued
};
using StreamPtr = std::shared_ptr<Stream>;

// A record: complete once its stream has run `seq` operations. Unrecorded: complete.
struct Event {
  StreamPtr stream;
  uint64_t seq = 0;
};

std::mutex g_streams_mutex;  // the streams, the events and everything they run
int g_order = 0;             // m3_fake_cuda_stream_order
cudaError_t g_sticky = cudaSuccess;
bool g_fault_next_copy = false;
std::map<cudaStream_t, StreamPtr> g_streams;  // the live ones by handle; nullptr: stream 0

StreamPtr stream_of(cudaStream_t handle) {
  auto it = g_streams.find(handle);
  if (it == g_streams.end() && handle) std::abort();  // not a stream (destroyed?)
  if (it == g_streams.end()) it = g_streams.emplace(nullptr, std::make_shared<Stream>()).first;
  return it->second;
}

// Runs `stream`'s operations until it has run `seq` of them. After a sticky error nothing
// more runs (the device stopped), though the operations count as done.
void run_until(const StreamPtr& stream, uint64_t seq) {
  while (stream->done < seq) {
    std::function<void()> op = std::move(stream->pending.front());
    stream->pending.pop_front();
    ++stream->done;
    if (g_sticky == cudaSuccess) op();
  }
}

void drain_all() {
  for (auto& [handle, stream] : g_streams) run_until(stream, stream->queued);
}

cudaError_t queue(cudaStream_t handle, std::function<void()> op, bool kernel) {
  std::lock_guard lock(g_streams_mutex);
  if (g_sticky != cudaSuccess) return g_sticky;
  StreamPtr s = stream_of(handle);
  s->kernels = s->kernels || kernel;
  s->pending.push_back(std::move(op));
  ++s->queued;
  if (g_order == 0 && s->kernels) run_until(s, s->queued);
  return cudaSuccess;
}

}  // namespace

namespace m3emu {
void queue_kernel(cudaStream_t stream, std::function<void()> kernel) { queue(stream, std::move(kernel), true); }
}  // namespace m3emu

extern "C" void m3_fake_cuda_stream_order(int order) {
  std::lock_guard lock(g_streams_mutex);
  drain_all();
  g_order = order;
}
extern "C" void m3_fake_cuda_fault_next_copy() {
  std::lock_guard lock(g_streams_mutex);
  g_fault_next_copy = true;
}
extern "C" void m3_fake_cuda_clear_fault() {
  std::lock_guard lock(g_streams_mutex);
  g_sticky = cudaSuccess;
  g_fault_next_copy = false;
}

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
// cudaFree and cudaFreeHost wait for the device first, as CUDA's do.
cudaError_t cudaFree(void* ptr) {
  if (!ptr) return cudaSuccess;
  std::lock_guard streams(g_streams_mutex);
  drain_all();
  std::lock_guard lock(g_mutex);
  g_used -= g_device.at(ptr);
  g_device.erase(ptr);
  std::free(ptr);
  return g_sticky;
}
cudaError_t cudaHostAlloc(void** ptr, size_t size, unsigned int) {
  *ptr = std::aligned_alloc(256, (size + 255) / 256 * 256);
  return *ptr ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFreeHost(void* ptr) {
  std::lock_guard streams(g_streams_mutex);
  drain_all();
  std::free(ptr);
  return g_sticky;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  std::lock_guard lock(g_streams_mutex);
  auto s = std::make_shared<Stream>();
  *stream = reinterpret_cast<cudaStream_t>(s.get());  // unique while it lives (events may keep it)
  g_streams.emplace(*stream, std::move(s));
  return cudaSuccess;
}
// Its queued work still runs (now, here), as CUDA completes it after the call.
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  std::lock_guard lock(g_streams_mutex);
  StreamPtr s = stream_of(stream);
  run_until(s, s->queued);
  g_streams.erase(stream);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  std::lock_guard lock(g_streams_mutex);
  StreamPtr s = stream_of(stream);
  run_until(s, s->queued);
  return g_sticky;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  *event = reinterpret_cast<cudaEvent_t>(new Event);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  std::lock_guard lock(g_streams_mutex);
  delete reinterpret_cast<Event*>(event);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  std::lock_guard lock(g_streams_mutex);
  if (g_sticky != cudaSuccess) return g_sticky;
  StreamPtr s = stream_of(stream);
  *reinterpret_cast<Event*>(event) = {s, s->queued};
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  std::lock_guard lock(g_streams_mutex);
  const Event e = *reinterpret_cast<const Event*>(event);
  if (e.stream) run_until(e.stream, e.seq);
  return g_sticky;
}
// The stream's later work waits for the event's record as it is now: that record's
// stream runs up to it when this stream gets there.
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  const Event e = [&] {
    std::lock_guard lock(g_streams_mutex);
    return *reinterpret_cast<const Event*>(event);
  }();
  if (!e.stream) return queue(stream, [] {}, false);
  return queue(stream, [e] { run_until(e.stream, e.seq); }, false);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  return queue(stream, [=] {
    if (kind == cudaMemcpyDeviceToHost && g_fault_next_copy) {
      g_fault_next_copy = false;
      g_sticky = cudaErrorIllegalAddress;
      return;
    }
    std::memmove(dst, src, count);
  }, false);
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t count, cudaStream_t stream) {
  return queue(stream, [=] { std::memset(dst, value, count); }, false);
}
cudaError_t cudaGetLastError(void) {
  std::lock_guard lock(g_streams_mutex);
  return g_sticky;
}
const char* cudaGetErrorString(cudaError_t status) {
  return status == cudaErrorIllegalAddress ? "an illegal memory access was encountered" : "emulated CUDA error";
}
const char* cudaGetErrorName(cudaError_t status) {
  return status == cudaErrorIllegalAddress ? "cudaErrorIllegalAddress" : "cudaErrorEmulated";
}
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

// Checked now; computed when its stream runs it, from the descriptors and scalars as they
// are now (cuBLASLt reads host scalars at the call; the caller may change the rest after).
cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t desc, const void* alpha, const void* a_data,
                              cublasLtMatrixLayout_t a, const void* b_data, cublasLtMatrixLayout_t b, const void* beta,
                              const void* c_data, cublasLtMatrixLayout_t c, void* d_data, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t* algo, void*, size_t, cudaStream_t stream) {
  if (!algo) return CUBLAS_STATUS_INVALID_VALUE;
  const Desc o = *as<Desc>(desc);
  const Layout A = *as<Layout>(a), B = *as<Layout>(b), C = *as<Layout>(c), D = *as<Layout>(d);
  const bool ta = o.transa != CUBLAS_OP_N, tb = o.transb != CUBLAS_OP_N;
  const uint64_t m = ta ? A.cols : A.rows, k = ta ? A.rows : A.cols, n = tb ? B.rows : B.cols;
  if (D.rows != m || D.cols != n) return CUBLAS_STATUS_INVALID_VALUE;
  if (g_refused_rows > 0 && n == static_cast<uint64_t>(g_refused_rows) && algo->data[0] != n) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  const bool bias = o.epilogue == CUBLASLT_EPILOGUE_BIAS;
  if (!bias && o.epilogue != CUBLASLT_EPILOGUE_DEFAULT) return CUBLAS_STATUS_NOT_SUPPORTED;
  const cudaError_t queued = queue(stream, [=] {
    for (uint64_t j = 0; j < n; ++j) {
      for (uint64_t i = 0; i < m; ++i) {
        float acc = 0.f;
        for (uint64_t p = 0; p < k; ++p) {
          const float x = load(A.type, a_data, ta ? i * A.ld + p : p * A.ld + i);  // op(A)[i, p]
          const float y = load(B.type, b_data, tb ? p * B.ld + j : j * B.ld + p);  // op(B)[p, j]
          acc += x * y;
        }
        float v = al * acc + (be != 0.f ? be * load(C.type, c_data, j * C.ld + i) : 0.f);
        if (bias) v += load(D.type, o.bias, i);
        store(D.type, d_data, j * D.ld + i, v);
      }
    }
  }, true);
  return queued == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

}  // extern "C"
