// Matryoshka-style `dimensions`: the first d components of the dense vector, L2-normalized
// again (x / max(||x||, 1e-12), as the reference normalizes), so they stay unit vectors.
#pragma once

#include <cstdint>
#include <vector>

#include "m3/model/m3_output.h"

namespace m3::server {

// d == 0 or d >= the vector's size: the vector as the model returned it.
std::vector<float> dense_with_dimensions(const M3Output& output, int64_t dimensions);

}  // namespace m3::server
