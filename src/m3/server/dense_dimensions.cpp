#include "m3/server/dense_dimensions.h"

#include <algorithm>
#include <cmath>

namespace m3::server {

std::vector<float> dense_with_dimensions(const M3Output& output, int64_t dimensions) {
  const auto size = static_cast<int64_t>(output.dense.size());
  if (dimensions <= 0 || dimensions >= size) return output.dense;
  std::vector<float> v(output.dense.begin(), output.dense.begin() + dimensions);
  double squares = 0;
  for (float x : v) squares += double(x) * x;
  const double norm = std::max(std::sqrt(squares), 1e-12);
  for (float& x : v) x = static_cast<float>(x / norm);
  return v;
}

}  // namespace m3::server
