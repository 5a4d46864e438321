// GEMM row blocks. GEMM kernels are compiled at start for a few row counts only, and a
// batch of M rows runs as consecutive chunks of those counts: powers of two from 2048
// rows up, then one multiple of 64 up to 1024 rows, or a power of two up to 64. So at
// most 63 rows are computed past the batch, and a model needs ~30 kernels per GEMM shape
// instead of one per row count (each compiled kernel costs resident memory).
#pragma once

#include <cstdint>
#include <vector>

namespace m3 {

constexpr int64_t kRowGranularity = 64;
constexpr int64_t kLargestSteppedBlock = 1024;

inline int64_t next_power_of_two(int64_t n) {
  int64_t p = 1;
  while (p < n) p *= 2;
  return p;
}

// The size of the chunk that starts a run of `rows` rows (rows > 0).
inline int64_t first_chunk(int64_t rows) {
  if (rows > kLargestSteppedBlock) {
    int64_t block = 2 * kLargestSteppedBlock;
    while (block * 2 <= rows) block *= 2;
    return rows >= block ? block : kLargestSteppedBlock;
  }
  if (rows > kRowGranularity) return (rows + kRowGranularity - 1) / kRowGranularity * kRowGranularity;
  return next_power_of_two(rows);
}

// Calls f(first_row, chunk_rows) over chunks covering `rows` rows; the last chunk may run
// up to 63 rows past the end.
template <typename F>
void for_each_gemm_chunk(int64_t rows, F&& f) {
  int64_t done = 0;
  while (done < rows) {
    const int64_t chunk = first_chunk(rows - done);
    f(done, chunk);
    done += chunk;
  }
}

// Rows the chunks of a `rows`-row batch cover.
inline int64_t padded_rows(int64_t rows) {
  int64_t covered = 0;
  for_each_gemm_chunk(rows, [&](int64_t, int64_t chunk) { covered += chunk; });
  return covered;
}

// Every chunk size a batch of up to max_rows rows can use, ascending.
inline std::vector<int64_t> gemm_block_sizes(int64_t max_rows) {
  std::vector<int64_t> sizes;
  for (int64_t b = 1; b <= kRowGranularity && b <= next_power_of_two(max_rows); b *= 2) sizes.push_back(b);
  for (int64_t b = 2 * kRowGranularity; b <= kLargestSteppedBlock && b < max_rows + kRowGranularity;
       b += kRowGranularity) {
    sizes.push_back(b);
  }
  for (int64_t b = 2 * kLargestSteppedBlock; b <= max_rows; b *= 2) sizes.push_back(b);
  return sizes;
}

}  // namespace m3
