// cuBLASLt, loaded on first use instead of at process start. Merely linking
// libcublasLt.so makes every m3embed process ~150 MiB larger (its relocations and
// initializers), CPU-only runs included; so the backend's cuBLASLt calls land here and are
// forwarded to the library, dlopen'ed the first time a CUDA replica needs it.
#include <cublasLt.h>
#include <dlfcn.h>

#include <mutex>
#include <string>

#define M3_STR2(x) #x
#define M3_STR(x) M3_STR2(x)

namespace {

constexpr const char* kLibrary = "libcublasLt.so." M3_STR(CUBLAS_VER_MAJOR);

struct Library {
  void* handle = nullptr;
  std::string error;
};

const Library& library() {
  static Library lib = [] {
    Library l;
    // The loader's path first (LD_LIBRARY_PATH, ld.so.conf), then the toolkit this was built with.
    l.handle = dlopen(kLibrary, RTLD_NOW | RTLD_LOCAL);
#ifdef M3_CUDA_LIBRARY_DIR
    if (!l.handle) l.handle = dlopen((std::string(M3_CUDA_LIBRARY_DIR) + "/" + kLibrary).c_str(), RTLD_NOW | RTLD_LOCAL);
#endif
    if (!l.handle) l.error = std::string(kLibrary) + " could not be loaded: " + dlerror();
    return l;
  }();
  return lib;
}

template <typename F>
F* resolve(const char* name) {
  const Library& lib = library();
  return lib.handle ? reinterpret_cast<F*>(dlsym(lib.handle, name)) : nullptr;
}

}  // namespace

// Each forwarder resolves its symbol once; a missing library reads as "not initialized".
#define M3_FORWARD(name, params, args)                                   \
  extern "C" cublasStatus_t name params {                                \
    static auto* const target = resolve<decltype(::name)>(#name);        \
    return target ? target args : CUBLAS_STATUS_NOT_INITIALIZED;         \
  }

M3_FORWARD(cublasLtCreate, (cublasLtHandle_t* handle), (handle))
M3_FORWARD(cublasLtDestroy, (cublasLtHandle_t handle), (handle))
M3_FORWARD(cublasLtMatmul,
           (cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha, const void* A,
            cublasLtMatrixLayout_t Adesc, const void* B, cublasLtMatrixLayout_t Bdesc, const void* beta,
            const void* C, cublasLtMatrixLayout_t Cdesc, void* D, cublasLtMatrixLayout_t Ddesc,
            const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspaceSizeInBytes, cudaStream_t stream),
           (handle, desc, alpha, A, Adesc, B, Bdesc, beta, C, Cdesc, D, Ddesc, algo, workspace, workspaceSizeInBytes,
            stream))
M3_FORWARD(cublasLtMatmulAlgoGetHeuristic,
           (cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t Adesc,
            cublasLtMatrixLayout_t Bdesc, cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
            cublasLtMatmulPreference_t preference, int requestedAlgoCount,
            cublasLtMatmulHeuristicResult_t heuristicResultsArray[], int* returnAlgoCount),
           (handle, desc, Adesc, Bdesc, Cdesc, Ddesc, preference, requestedAlgoCount, heuristicResultsArray,
            returnAlgoCount))
M3_FORWARD(cublasLtMatmulAlgoCheck,
           (cublasLtHandle_t handle, cublasLtMatmulDesc_t operationDesc, cublasLtMatrixLayout_t Adesc,
            cublasLtMatrixLayout_t Bdesc, cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
            const cublasLtMatmulAlgo_t* algo, cublasLtMatmulHeuristicResult_t* result),
           (handle, operationDesc, Adesc, Bdesc, Cdesc, Ddesc, algo, result))
M3_FORWARD(cublasLtMatmulDescCreate,
           (cublasLtMatmulDesc_t * desc, cublasComputeType_t computeType, cudaDataType_t scaleType),
           (desc, computeType, scaleType))
M3_FORWARD(cublasLtMatmulDescDestroy, (cublasLtMatmulDesc_t desc), (desc))
M3_FORWARD(cublasLtMatmulDescSetAttribute,
           (cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const void* buf, size_t sizeInBytes),
           (desc, attr, buf, sizeInBytes))
M3_FORWARD(cublasLtMatmulPreferenceCreate, (cublasLtMatmulPreference_t * pref), (pref))
M3_FORWARD(cublasLtMatmulPreferenceDestroy, (cublasLtMatmulPreference_t pref), (pref))
M3_FORWARD(cublasLtMatmulPreferenceSetAttribute,
           (cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
            size_t sizeInBytes),
           (pref, attr, buf, sizeInBytes))
M3_FORWARD(cublasLtMatrixLayoutCreate,
           (cublasLtMatrixLayout_t * matLayout, cudaDataType type, uint64_t rows, uint64_t cols, int64_t ld),
           (matLayout, type, rows, cols, ld))
M3_FORWARD(cublasLtMatrixLayoutDestroy, (cublasLtMatrixLayout_t matLayout), (matLayout))
M3_FORWARD(cublasLtMatrixLayoutSetAttribute,
           (cublasLtMatrixLayout_t matLayout, cublasLtMatrixLayoutAttribute_t attr, const void* buf,
            size_t sizeInBytes),
           (matLayout, attr, buf, sizeInBytes))

extern "C" const char* cublasLtGetStatusString(cublasStatus_t status) {
  const Library& lib = library();
  if (!lib.handle) return lib.error.c_str();
  static auto* const target = resolve<decltype(::cublasLtGetStatusString)>("cublasLtGetStatusString");
  return target ? target(status) : "cublasLtGetStatusString is missing from the cuBLASLt library";
}
