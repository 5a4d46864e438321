// The fiber scheduler behind cuda_emulation.h. Fibers switch with a few instructions of
// x86-64 assembly (callee-saved registers and the stack pointer), not ucontext, whose
// every switch is a system call: the attention kernel alone switches millions of times.
#include "cuda_emulation.h"

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <vector>

extern "C" void m3emu_switch(void** save_sp, void* load_sp);
asm(R"(
.text
.globl m3emu_switch
.type m3emu_switch,@function
m3emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size m3emu_switch,.-m3emu_switch
)");

namespace m3emu {
namespace {

enum class State { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kDone };

struct Fiber {
  void* sp = nullptr;
  std::vector<char> stack;
  ThreadContext where;
  State state = State::kRunnable;
};

// One cp.async: lands when its group is waited for.
struct AsyncCopy {
  void* shared;
  const void* global;
  int bytes, src_bytes;
};

void land(const AsyncCopy& c) {
  std::memcpy(c.shared, c.global, static_cast<size_t>(c.src_bytes));
  std::memset(static_cast<char*>(c.shared) + c.src_bytes, 0, static_cast<size_t>(c.bytes - c.src_bytes));
}

// A thread's copies in flight: the open group and the committed ones, oldest first.
struct AsyncCopies {
  std::vector<AsyncCopy> open;
  std::deque<std::vector<AsyncCopy>> committed;
};

struct Grid {
  std::vector<Fiber> fibers;
  void* scheduler_sp = nullptr;
  int running = -1;
  std::vector<char> shared;
  std::vector<uint32_t> exchange[2];  // kGatherMax values per thread, alternate gathers
  std::vector<AsyncCopies> copies;    // per thread
  std::vector<uint8_t> parity;        // per thread: which exchange its next shuffle uses
  const std::function<void()>* body = nullptr;
};

thread_local Grid* g_grid = nullptr;
constexpr size_t kStack = 64 * 1024;

Fiber& me() { return g_grid->fibers[static_cast<size_t>(g_grid->running)]; }

void yield(State state) {
  Fiber& f = me();
  f.state = state;
  m3emu_switch(&f.sp, g_grid->scheduler_sp);
}

[[noreturn]] void fiber_main() {
  (*g_grid->body)();
  me().state = State::kDone;
  m3emu_switch(&me().sp, g_grid->scheduler_sp);
  std::abort();  // a finished fiber is never resumed
}

// A fresh stack whose first switch "returns" into fiber_main, 16-byte aligned as a call.
void* start_stack(std::vector<char>& stack) {
  auto top = reinterpret_cast<uintptr_t>(stack.data() + stack.size()) & ~uintptr_t{15};
  auto* slot = reinterpret_cast<void**>(top - 16);
  slot[0] = reinterpret_cast<void*>(&fiber_main);  // popped by ret
  slot[1] = nullptr;
  for (int r = 1; r <= 6; ++r) slot[-r] = nullptr;  // rbp, rbx, r12..r15
  return slot - 6;
}

// Runs the block's fibers until all are done, releasing barriers as they fill.
void run_block(Grid& grid) {
  const size_t n = grid.fibers.size();
  size_t done = 0;
  while (done < n) {
    for (size_t i = 0; i < n; ++i) {
      if (grid.fibers[i].state != State::kRunnable) continue;
      grid.running = static_cast<int>(i);
      m3emu_switch(&grid.scheduler_sp, grid.fibers[i].sp);
    }
    done = 0;
    size_t at_block = 0;
    for (const Fiber& f : grid.fibers) {
      done += f.state == State::kDone;
      at_block += f.state == State::kAtBlockBarrier;
    }
    bool released = false;
    if (at_block > 0 && at_block + done == n) {
      for (Fiber& f : grid.fibers) {
        if (f.state == State::kAtBlockBarrier) f.state = State::kRunnable;
      }
      released = true;
    }
    for (size_t warp = 0; warp * 32 < n; ++warp) {
      size_t waiting = 0, live = 0;
      for (size_t i = warp * 32; i < std::min(n, warp * 32 + 32); ++i) {
        live += grid.fibers[i].state != State::kDone;
        waiting += grid.fibers[i].state == State::kAtWarpBarrier;
      }
      if (waiting > 0 && waiting == live) {
        for (size_t i = warp * 32; i < std::min(n, warp * 32 + 32); ++i) {
          if (grid.fibers[i].state == State::kAtWarpBarrier) grid.fibers[i].state = State::kRunnable;
        }
        released = true;
      }
    }
    if (!released && done < n) {
      std::fprintf(stderr, "cuda emulation: deadlock (threads wait at barriers that cannot fill)\n");
      std::abort();
    }
  }
}

}  // namespace

const ThreadContext& current() { return me().where; }

void* dynamic_shared() { return g_grid->shared.data(); }

void sync_threads() { yield(State::kAtBlockBarrier); }

// One warp barrier per gather: gathers alternate between two exchange arrays, and a
// lane can only write an array again after the next barrier, which every lane reaches
// only once it has read its result.
const uint32_t* warp_gather(const uint32_t* values, int count) {
  const unsigned tid = me().where.thread.x;
  const unsigned warp_base = tid / 32 * 32;
  std::vector<uint32_t>& exchange = g_grid->exchange[g_grid->parity[tid]];
  g_grid->parity[tid] ^= 1;
  std::copy(values, values + count, exchange.begin() + tid * kGatherMax);
  yield(State::kAtWarpBarrier);  // every lane has written
  return exchange.data() + warp_base * kGatherMax;
}

uint32_t warp_exchange(uint32_t value, int source_lane) {
  return warp_gather(&value, 1)[static_cast<unsigned>(source_lane % 32) * kGatherMax];
}

void cp_async(void* shared, const void* global, int bytes, int src_bytes) {
  g_grid->copies[me().where.thread.x].open.push_back({shared, global, bytes, src_bytes});
}

void cp_async_commit() {
  AsyncCopies& c = g_grid->copies[me().where.thread.x];
  c.committed.push_back(std::move(c.open));
  c.open.clear();
}

void cp_async_wait(int pending) {
  AsyncCopies& c = g_grid->copies[me().where.thread.x];
  while (c.committed.size() > static_cast<size_t>(pending)) {
    for (const AsyncCopy& copy : c.committed.front()) land(copy);
    c.committed.pop_front();
  }
}

void run_grid(dim3 grid_dim, dim3 block_dim, size_t shared_bytes, const std::function<void()>& body) {
  if (block_dim.y != 1 || block_dim.z != 1 || grid_dim.z != 1) {
    std::fprintf(stderr, "cuda emulation: only 1-D blocks and 2-D grids\n");
    std::abort();
  }
  Grid grid;
  grid.body = &body;
  grid.fibers.resize(block_dim.x);
  grid.exchange[0].assign(block_dim.x * kGatherMax, 0);
  grid.exchange[1].assign(block_dim.x * kGatherMax, 0);
  for (Fiber& f : grid.fibers) f.stack.resize(kStack);
  Grid* outer = g_grid;
  g_grid = &grid;
  for (unsigned by = 0; by < grid_dim.y; ++by) {
    for (unsigned bx = 0; bx < grid_dim.x; ++bx) {
      grid.shared.assign(shared_bytes + 16, 0);
      grid.parity.assign(block_dim.x, 0);
      grid.copies.assign(block_dim.x, {});
      for (unsigned t = 0; t < block_dim.x; ++t) {
        Fiber& f = grid.fibers[t];
        f.state = State::kRunnable;
        f.where = {uint3{t, 0, 0}, uint3{bx, by, 0}, block_dim, grid_dim};
        f.sp = start_stack(f.stack);
      }
      run_block(grid);
    }
  }
  g_grid = outer;
}

}  // namespace m3emu
