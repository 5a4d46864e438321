// After warm-up, a forward pass (encoder + head GEMMs) allocates no heap memory of its
// own: this binary interposes malloc and operator new, counts every allocation made while
// forward passes run, and attributes each to the shared object that asked for it.
// m3embed's code must make none; oneDNN's execute and sgemm calls still allocate small
// bookkeeping and packing buffers, all freed before they return (counted and bounded here).
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <string>

#include "m3/backend/cpu/cpu_backend.h"
#include "m3/runtime/model_replica.h"
#include "m3/runtime/embedder.h"
#include "test_support.h"

extern "C" void* __libc_malloc(size_t);
extern "C" void* __libc_calloc(size_t, size_t);
extern "C" void* __libc_realloc(void*, size_t);
extern "C" void* __libc_memalign(size_t, size_t);
extern "C" void __libc_free(void*);

namespace {

std::atomic<bool> counting{false};
std::atomic<long> own_allocations{0}, library_allocations{0}, largest_library_allocation{0};
thread_local bool inside = false;
const void* own_base = nullptr;  // load address of this executable (m3 is linked into it)

void record(size_t bytes, const void* caller) {
  if (!counting.load(std::memory_order_relaxed) || inside) return;
  inside = true;
  Dl_info info{};
  const bool ours = dladdr(caller, &info) != 0 && info.dli_fbase == own_base;
  if (ours) {
    ++own_allocations;
  } else {
    ++library_allocations;
    long seen = largest_library_allocation.load();
    while (static_cast<long>(bytes) > seen && !largest_library_allocation.compare_exchange_weak(seen, bytes)) {
    }
  }
  inside = false;
}

}  // namespace

extern "C" void* malloc(size_t n) {
  record(n, __builtin_return_address(0));
  return __libc_malloc(n);
}
extern "C" void* calloc(size_t a, size_t b) {
  record(a * b, __builtin_return_address(0));
  return __libc_calloc(a, b);
}
extern "C" void* realloc(void* p, size_t n) {
  record(n, __builtin_return_address(0));
  return __libc_realloc(p, n);
}
extern "C" int posix_memalign(void** out, size_t alignment, size_t n) {
  record(n, __builtin_return_address(0));
  *out = __libc_memalign(alignment, n);
  return *out ? 0 : ENOMEM;
}
extern "C" void* aligned_alloc(size_t alignment, size_t n) {
  record(n, __builtin_return_address(0));
  return __libc_memalign(alignment, n);
}
void* operator new(size_t n) {
  record(n, __builtin_return_address(0));
  if (void* p = __libc_malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) {
  record(n, __builtin_return_address(0));
  if (void* p = __libc_malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { __libc_free(p); }
void operator delete[](void* p) noexcept { __libc_free(p); }
void operator delete(void* p, size_t) noexcept { __libc_free(p); }
void operator delete[](void* p, size_t) noexcept { __libc_free(p); }

namespace m3 {
namespace {

PackedBatch make_batch(std::initializer_list<int64_t> lengths) {
  PackedBatch batch;
  int32_t id = 10;
  for (int64_t len : lengths) {
    std::vector<int32_t> ids{0};
    for (int64_t i = 0; i < len - 2; ++i) ids.push_back(4 + (id++ % 1000));
    ids.push_back(2);
    batch.add(ids, 1);
  }
  return batch;
}

TEST(ForwardAllocations, NoneFromM3AfterWarmUp) {
  Dl_info self{};
  ASSERT_NE(dladdr(reinterpret_cast<void*>(&make_batch), &self), 0);
  own_base = self.dli_fbase;

  // A replica on its own (no scheduler threads running beside the count).
  SharedModel model;
  model.model_dir = test::fixtures() / "tiny-st";
  model.config = ModelConfig::load(model.model_dir);
  EmbedderOptions options;
  options.max_batch_tokens = 512;
  const MemoryPlan plan = Embedder::plan_for(model.model_dir, model.config, options);
  model.weights = load_weights(model.model_dir, model.config, plan.table);
  ModelReplica replica(0, model, plan, std::make_unique<CpuBackend>(plan, plan.inputs.threads));
  replica.warm_up();
  const OutputRequest all{true, true, true};
  // Batches of several shapes, built before counting starts.
  const PackedBatch batches[] = {make_batch({128}), make_batch({2, 17, 128, 64, 3}), make_batch({40, 40, 40, 40}),
                                 make_batch({128, 128, 128, 128}), make_batch({5})};

  // The outputs are copied out into vectors the caller keeps: sized by one warm pass first.
  std::vector<M3Output> outputs;
  for (const auto& batch : batches) replica.run(batch, all, outputs);
  own_allocations = library_allocations = largest_library_allocation = 0;
  for (int round = 0; round < 3; ++round) {
    for (const auto& batch : batches) {
      counting = true;  // the graph and its ops (begin); extraction copies into the caller's vectors
      replica.begin(batch, all, 0);
      counting = false;
      replica.end(batch, all, outputs, 0);
    }
  }

  EXPECT_EQ(own_allocations.load(), 0) << "m3embed's forward path allocated";
  // oneDNN's per-call allocations: bookkeeping and GEMM packing, freed on return.
  EXPECT_LT(largest_library_allocation.load(), 4L << 20);
  std::printf("oneDNN allocations during 15 forward passes: %ld (largest %ld bytes)\n", library_allocations.load(),
              largest_library_allocation.load());
}

// The counter itself works: an allocation made by this binary's code is seen as ours.
TEST(ForwardAllocations, CounterSeesOwnAllocations) {
  Dl_info self{};
  ASSERT_NE(dladdr(reinterpret_cast<void*>(&make_batch), &self), 0);
  own_base = self.dli_fbase;
  own_allocations = 0;
  counting = true;
  auto* v = new std::vector<int>(1000);
  counting = false;
  delete v;
  EXPECT_GE(own_allocations.load(), 1);
}

}  // namespace
}  // namespace m3
