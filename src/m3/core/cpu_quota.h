// The CPUs this process may really use: a container's CPU quota (cgroup v2 cpu.max,
// or v1 cfs_quota/period) can be far below the cores the scheduler shows, and running
// one thread per visible core under a 2-CPU quota makes every GEMM wait on throttling.
#pragma once

namespace m3 {

// ceil(quota / period) of the first cgroup limit found, or 0 when there is none.
int cgroup_cpu_limit();

}  // namespace m3
