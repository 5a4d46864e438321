// The CUDA replica's factory, callable from code built without CUDA (which fails with a
// clear message: cuda_unavailable.cpp).
#pragma once

#include <memory>

#include "m3/core/device.h"
#include "m3/memory/memory_plan.h"
#include "m3/runtime/replica.h"

namespace m3 {

// One replica on `device`: one cudaMalloc of plan.device_bytes holding the weights
// (converted to plan.inputs.precision and uploaded here), the arena and the cuBLASLt
// workspace, plus plan.pinned_bytes of pinned host staging. `model` must outlive it;
// its host weights are no longer read once this returns.
std::unique_ptr<Replica> make_cuda_replica(int index, const SharedModel& model, const MemoryPlan& plan,
                                           Device device);

}  // namespace m3
