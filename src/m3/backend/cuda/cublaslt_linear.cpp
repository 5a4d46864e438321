#include "m3/backend/cuda/cublaslt_linear.h"

#include <spdlog/spdlog.h>

#include "m3/backend/cuda/cuda_check.h"

namespace m3::cuda {
namespace {

cudaDataType data_type(DType type) {
  switch (type) {
    case DType::F32: return CUDA_R_32F;
    case DType::F16: return CUDA_R_16F;
    case DType::BF16: return CUDA_R_16BF;
    default: fail("internal: cuBLASLt linears take float32, float16 or bfloat16, not {}", dtype_name(type));
  }
  return CUDA_R_32F;
}

}  // namespace

CublasLtLinear::CublasLtLinear(cublasLtHandle_t handle, int64_t out, int64_t in, int64_t max_rows,
                               DType input_type, DType output_type, const void* weight, const float* bias,
                               bool want_bias_epilogue, void* workspace, uint64_t workspace_bytes)
    : handle_(handle), out_(out), in_(in), max_rows_(max_rows), input_type_(input_type), output_type_(output_type),
      weight_(weight), workspace_(workspace), workspace_bytes_(workspace_bytes) {
  // Row-major y[rows, out] = x[rows, in] W^T is, column-major, y^T[out, rows] = W'^T x^T
  // with W' = W read as [in, out]: A = W (transposed), B = x, D = y; m = out, n = rows, k = in.
  // float32 inputs compute in plain float32 (no TF32), the reference path.
  check(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const cublasOperation_t transpose = CUBLAS_OP_T, keep = CUBLAS_OP_N;
  check(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof(transpose)), "TRANSA");
  check(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &keep, sizeof(keep)), "TRANSB");
  const cudaDataType ab = data_type(input_type), d = data_type(output_type);
  check(cublasLtMatrixLayoutCreate(&w_layout_, ab, in, out, in), "weight layout");
  check(cublasLtMatrixLayoutCreate(&x_layout_, ab, in, max_rows, in), "input layout");
  check(cublasLtMatrixLayoutCreate(&y_layout_, d, out, max_rows, out), "output layout");
  for (int64_t rows = 64;; rows *= 2) {
    bucket_rows_[buckets_++] = std::min(rows, max_rows);
    if (rows >= max_rows || buckets_ == kMaxBuckets) break;
  }
  bucket_rows_[buckets_ - 1] = max_rows;
  if (want_bias_epilogue && bias) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    check(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)),
          "EPILOGUE");
    check(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)),
          "BIAS_POINTER");
    bias_fused_ = true;
    try {
      choose_algorithms();
      return;
    } catch (const Error& e) {
      spdlog::warn("cuBLASLt has no bias epilogue for the [{}, {}] linear ({}); adding the bias in a kernel", out, in,
                   e.what());
    }
    const cublasLtEpilogue_t plain = CUBLASLT_EPILOGUE_DEFAULT;
    check(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_EPILOGUE, &plain, sizeof(plain)), "EPILOGUE");
    bias_fused_ = false;
  }
  choose_algorithms();
}

CublasLtLinear::~CublasLtLinear() {
  if (y_layout_) cublasLtMatrixLayoutDestroy(y_layout_);
  if (x_layout_) cublasLtMatrixLayoutDestroy(x_layout_);
  if (w_layout_) cublasLtMatrixLayoutDestroy(w_layout_);
  if (desc_) cublasLtMatmulDescDestroy(desc_);
}

// Each bucket's algorithm is the heuristic's choice at the bucket's largest row count, and
// runs every count down to the previous bucket's. cuBLASLt is asked at load
// (cublasLtMatmulAlgoCheck) whether it runs each of those counts; where it refuses one, the
// bucket takes the heuristic's choice at that count instead, checked the same way, and
// when that too is refused somewhere the linear fails at load, naming the count. The
// answers depend only on the shape, types, epilogue and device, so they are kept for the
// process: a model's layers share a handful of shapes.
void CublasLtLinear::choose_algorithms() {
  int device = 0;
  cudaGetDevice(&device);
  const AlgorithmKey key{device, out_, in_, max_rows_, input_type_, output_type_, bias_fused_, workspace_bytes_};
  {
    std::lock_guard lock(chosen_mutex());
    if (auto it = chosen().find(key); it != chosen().end()) {
      algorithms_ = it->second;
      return;
    }
  }
  cublasLtMatmulPreference_t preference = nullptr;
  check(cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate");
  const uint64_t workspace = workspace_bytes_;
  cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                       sizeof(workspace));
  auto set_rows = [&](int64_t rows) {
    check(cublasLtMatrixLayoutSetAttribute(x_layout_, CUBLASLT_MATRIX_LAYOUT_COLS, &rows, sizeof(rows)), "cols");
    check(cublasLtMatrixLayoutSetAttribute(y_layout_, CUBLASLT_MATRIX_LAYOUT_COLS, &rows, sizeof(rows)), "cols");
  };
  auto heuristic = [&](int64_t rows) {
    set_rows(rows);
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    check(cublasLtMatmulAlgoGetHeuristic(handle_, desc_, w_layout_, x_layout_, y_layout_, y_layout_, preference, 1,
                                         &result, &found),
          "cublasLtMatmulAlgoGetHeuristic");
    if (found == 0) fail("cuBLASLt has no algorithm for the [{}, {}] linear at {} rows", out_, in_, rows);
    return result.algo;
  };
  auto first_refused = [&](const cublasLtMatmulAlgo_t& algo, int64_t from, int64_t to) -> int64_t {
    for (int64_t rows = from; rows <= to; ++rows) {
      set_rows(rows);
      cublasLtMatmulHeuristicResult_t result{};
      if (cublasLtMatmulAlgoCheck(handle_, desc_, w_layout_, x_layout_, y_layout_, y_layout_, &algo, &result) !=
              CUBLAS_STATUS_SUCCESS ||
          result.workspaceSize > workspace_bytes_) {
        return rows;
      }
    }
    return 0;
  };
  try {
    for (int b = 0; b < buckets_; ++b) {
      const int64_t from = b == 0 ? 1 : bucket_rows_[b - 1] + 1, to = bucket_rows_[b];
      algorithms_[b] = heuristic(to);
      if (const int64_t refused = first_refused(algorithms_[b], from, to)) {
        algorithms_[b] = heuristic(refused);
        if (const int64_t again = first_refused(algorithms_[b], from, to)) {
          fail("cuBLASLt cannot run the [{}, {}] linear at {} rows with the algorithm it chose for {} rows, nor at "
               "{} rows with the one it chose for {}",
               out_, in_, refused, to, again, refused);
        }
        spdlog::info("cuBLASLt: the [{}, {}] linear takes, for {} to {} rows, its algorithm for {} rows (the one "
                     "for {} rows does not run {})",
                     out_, in_, from, to, refused, to, refused);
      }
    }
  } catch (...) {
    cublasLtMatmulPreferenceDestroy(preference);
    throw;
  }
  cublasLtMatmulPreferenceDestroy(preference);
  std::lock_guard lock(chosen_mutex());
  chosen().emplace(key, algorithms_);
}

std::map<CublasLtLinear::AlgorithmKey, CublasLtLinear::Algorithms>& CublasLtLinear::chosen() {
  static std::map<AlgorithmKey, Algorithms> chosen;
  return chosen;
}

std::mutex& CublasLtLinear::chosen_mutex() {
  static std::mutex mutex;
  return mutex;
}

int CublasLtLinear::bucket_for(int64_t rows) const {
  int b = 0;
  while (b + 1 < buckets_ && bucket_rows_[b] < rows) ++b;
  return b;
}

void CublasLtLinear::run(const void* x, int64_t rows, void* y, cudaStream_t stream, bool accumulate) {
  if (rows == 0) return;
  if (rows > max_rows_) fail("linear of {} rows exceeds the planned {}", rows, max_rows_);
  check(cublasLtMatrixLayoutSetAttribute(x_layout_, CUBLASLT_MATRIX_LAYOUT_COLS, &rows, sizeof(rows)), "cols");
  check(cublasLtMatrixLayoutSetAttribute(y_layout_, CUBLASLT_MATRIX_LAYOUT_COLS, &rows, sizeof(rows)), "cols");
  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  check(cublasLtMatmul(handle_, desc_, &alpha, weight_, w_layout_, x, x_layout_, &beta, y, y_layout_, y, y_layout_,
                       &algorithms_[bucket_for(rows)], workspace_, workspace_bytes_, stream),
        "cublasLtMatmul");
}

void CublasLtLinear::warm_up(const void* x, void* y, cudaStream_t stream, bool accumulate) {
  for (int b = 0; b < buckets_; ++b) run(x, bucket_rows_[b], y, stream, accumulate);
}

}  // namespace m3::cuda
