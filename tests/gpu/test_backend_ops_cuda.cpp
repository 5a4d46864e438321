// The op-parity suite (unit/op_parity.h) on the CUDA backend, fp32, fp16 and bf16: on a
// GPU (label gpu; every case skips, saying why, where none can be used), and built again
// as test_backend_ops_emulated against tests/cuda_emulation, where the same host code and
// kernels run on the CPU. The emulation is slow (each CUDA thread is a fiber), so there
// the BGE-M3 batch is shorter (103 tokens) and the FFN-wide linears run 70 rows.
#include <gtest/gtest.h>

#include <stdexcept>

#include "m3/backend/cuda_devices.h"
#include "op_parity.h"

// Defined (tests/CMakeLists.txt) where this binary links a CUDA runtime, real or emulated.
#ifdef M3_TEST_CUDA_RUNTIME
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstring>
#include <initializer_list>
#include <random>

#include "m3/backend/cuda/cublaslt_linear.h"
#include "m3/backend/cuda/cuda_kernels.h"
#endif

namespace m3::test {
namespace {

#ifdef M3_TEST_CUDA_RUNTIME
void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

// Copies on the default stream, waited for at once: tensors are filled before an op is
// queued on the backend's stream, and read after finish().
void copy(void* to, const void* from, uint64_t bytes, cudaMemcpyKind kind) {
  check(cudaMemcpyAsync(to, from, bytes, kind, nullptr), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize");
}
#endif

std::shared_ptr<const Target> cuda_target() {
  auto t = std::make_shared<Target>();
  t->name = "cuda";
  t->device = DeviceKind::kCuda;
  t->make_backend = [](const MemoryPlan& plan) { return make_cuda_backend(plan, Device{DeviceKind::kCuda, 0}); };
#ifdef M3_TEST_CUDA_RUNTIME
  t->allocate = [](uint64_t bytes) {
    void* p = nullptr;
    check(cudaMalloc(&p, bytes), "cudaMalloc");
    return p;
  };
  t->release = [](void* p) { cudaFree(p); };
  t->upload = [](void* device, const void* host, uint64_t bytes) { copy(device, host, bytes, cudaMemcpyHostToDevice); };
  t->download = [](void* host, const void* device, uint64_t bytes) { copy(host, device, bytes, cudaMemcpyDeviceToHost); };
  t->unavailable = [](DType) -> std::string {
#ifdef M3_CUDA_EMULATED_TEST
    return "";  // the emulated device is always there
#else
    std::string why;
    return cuda_device_count(&why) == 0 ? "no GPU can be used: " + why : "";
#endif
  };
#else
  t->unavailable = [](DType) -> std::string { return "this build has no CUDA runtime (configure with -DM3_CUDA=ON)"; };
#endif
  return t;
}

std::vector<OpCase> cuda_cases() {
#ifdef M3_CUDA_EMULATED_TEST
  const Shape bge_m3 = bge_m3_shape({33, 70}, 70);  // two query tiles, three key blocks
#else
  const Shape bge_m3 = bge_m3_shape({37, 130});
#endif
  std::vector<OpCase> cases;
  const auto target = cuda_target();
  for (DType p : {DType::F32, DType::F16, DType::BF16}) {
    cases.push_back({target, p, tiny_shape()});
    cases.push_back({target, p, bge_m3});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cuda, OpParity, ::testing::ValuesIn(cuda_cases()), op_case_name);

#ifdef M3_TEST_CUDA_RUNTIME
// The tensor-core attention kernel over one sequence of 8192 tokens (BGE-M3's longest:
// 128 query tiles, each meeting 128 key blocks through the double buffer) at head size 64,
// with the QKV bias folded in, against the double-precision reference. Two heads: the
// kernel takes each head alone (a grid row), so BGE-M3's 16 would repeat the same work,
// eight times slower in the emulation.
class LongAttention : public ::testing::TestWithParam<DType> {};

std::vector<uint16_t> to_bits(DType type, const std::vector<float>& values) {
  std::vector<uint16_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    if (type == DType::F16) {
      const __half h = __float2half_rn(values[i]);
      std::memcpy(&bits[i], &h, 2);
    } else {
      const __nv_bfloat16 b = __float2bfloat16_rn(values[i]);
      std::memcpy(&bits[i], &b, 2);
    }
  }
  return bits;
}

float from_bits(DType type, uint16_t bits) {
  if (type == DType::F16) {
    __half h;
    std::memcpy(&h, &bits, 2);
    return __half2float(h);
  }
  __nv_bfloat16 b;
  std::memcpy(&b, &bits, 2);
  return __bfloat162float(b);
}

template <typename T>
T* device_copy(const std::vector<T>& host) {
  void* p = nullptr;
  check(cudaMalloc(&p, host.size() * sizeof(T)), "cudaMalloc");
  copy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  return static_cast<T*>(p);
}

TEST_P(LongAttention, An8192TokenSequenceMatchesTheReference) {
  const DType type = GetParam();
  if (const std::string why = cuda_target()->unavailable(type); !why.empty()) GTEST_SKIP() << why;
  constexpr int64_t kTokens = 8192, kHeads = 2, kHeadDim = 64, kHidden = kHeads * kHeadDim;
  ASSERT_TRUE(cuda::flash_attention_supported(type, kHeadDim));
  PackedBatch batch;
  batch.add(std::vector<int32_t>(kTokens, 5), 1);
  std::mt19937 rng(8192);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> qkv(kTokens * 3 * kHidden), bias(3 * kHidden);
  for (float& x : qkv) x = normal(rng);
  for (float& x : bias) x = 0.5f * normal(rng);
  qkv = reference::round_to(type, qkv);
  std::vector<int32_t> tiles;
  for (int32_t q0 = 0; q0 < kTokens; q0 += cuda::kAttentionQueryTile) tiles.insert(tiles.end(), {0, q0});

  uint16_t* qkv_d = device_copy(to_bits(type, qkv));
  float* bias_d = device_copy(bias);
  int32_t* cu_d = device_copy(batch.cu_seqlens);
  int32_t* tiles_d = device_copy(tiles);
  uint16_t* context_d = device_copy(std::vector<uint16_t>(kTokens * kHidden));
  cuda::attention(type, qkv_d, bias_d, cu_d, tiles_d, static_cast<int64_t>(tiles.size() / 2), kHeads, kHeadDim,
                  context_d, nullptr);
  check(cudaGetLastError(), "the attention kernel");
  std::vector<uint16_t> context_bits(kTokens * kHidden);
  copy(context_bits.data(), context_d, context_bits.size() * 2, cudaMemcpyDeviceToHost);
  for (void* p : std::initializer_list<void*>{qkv_d, bias_d, cu_d, tiles_d, context_d}) cudaFree(p);

  std::vector<float> got(context_bits.size());
  for (size_t i = 0; i < got.size(); ++i) got[i] = from_bits(type, context_bits[i]);
  std::vector<float> held = qkv;
  for (size_t i = 0; i < held.size(); ++i) held[i] += bias[i % bias.size()];
  const std::vector<double> want = reference::attention(batch, held, kHeads, kHeadDim);
  EXPECT_TRUE(close_to("attention over 8192 tokens", got, want, kHidden, type));
}

#ifdef M3_CUDA_EMULATED_TEST
// The emulated cuBLASLt refuses one row count to every algorithm not chosen for it (and
// fails the GEMM if asked anyway): the linear must find that at load and run the count.
extern "C" void m3_fake_cublaslt_refuse_rows(int64_t rows);

TEST(CublasLtAlgorithms, ARowCountTheBucketAlgorithmRefusesRunsWithItsOwn) {
  constexpr int64_t kOut = 8, kIn = 24, kMaxRows = 300, kRows = 100;  // buckets 64, 128, 256, 300
  std::vector<float> w(kOut * kIn), x(kMaxRows * kIn);
  for (size_t i = 0; i < w.size(); ++i) w[i] = float(i % 7) - 3.f;
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % 5) - 2.f;
  float* w_d = device_copy(w);
  float* x_d = device_copy(x);
  float* y_d = device_copy(std::vector<float>(kMaxRows * kOut));
  cublasLtHandle_t handle = nullptr;
  ASSERT_EQ(cublasLtCreate(&handle), CUBLAS_STATUS_SUCCESS);
  m3_fake_cublaslt_refuse_rows(kRows);
  try {
    cuda::CublasLtLinear linear(handle, kOut, kIn, kMaxRows, DType::F32, DType::F32, w_d, nullptr, false, nullptr, 0);
    linear.run(x_d, kRows, y_d, nullptr);
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
  }
  m3_fake_cublaslt_refuse_rows(0);
  check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize");
  std::vector<float> y(kRows * kOut);
  copy(y.data(), y_d, y.size() * 4, cudaMemcpyDeviceToHost);
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t o = 0; o < kOut; ++o) {
      float want = 0;
      for (int64_t i = 0; i < kIn; ++i) want += x[r * kIn + i] * w[o * kIn + i];
      ASSERT_EQ(y[r * kOut + o], want) << "row " << r << ", output " << o;
    }
  }
  cublasLtDestroy(handle);
  for (void* p : std::initializer_list<void*>{w_d, x_d, y_d}) cudaFree(p);
}
#endif

INSTANTIATE_TEST_SUITE_P(Cuda, LongAttention, ::testing::Values(DType::F16, DType::BF16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(precision_name(info.param));
                         });
#endif

}  // namespace
}  // namespace m3::test
