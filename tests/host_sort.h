// A stable host sort of (key, value) pairs with the signature of DeviceSortPairs
// (include/painvrl/cuda/kernels.h), standing in for CUB's radix sort when the emulated-kernel
// tests run the deterministic reductions on the CPU.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

namespace painvrl::test {

inline int host_sort_pairs(const int32_t* keys_in, int32_t* keys_out, const int32_t* vals_in,
                           int32_t* vals_out, int64_t n) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t q = 0; q < n; ++q) order[size_t(q)] = q;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return keys_in[a] < keys_in[b]; });
  for (int64_t q = 0; q < n; ++q) {
    keys_out[q] = keys_in[order[size_t(q)]];
    vals_out[q] = vals_in[order[size_t(q)]];
  }
  return 0;  // cudaSuccess
}

}  // namespace painvrl::test
