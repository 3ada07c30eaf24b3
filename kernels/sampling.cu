// Negative sampling on the device, from the counter-based generator shared with the CPU backend
// (include/painvrl/math/sampling.h): integer arithmetic only, so a seed gives the CPU's negatives
// bit for bit. (The initial weights go through logf and cosf, whose CUDA and glibc versions may
// differ in the last bit: the CUDA backend draws them on the host and uploads them.)
// One thread per four slots of a row, one Philox call each; writes 4 B per negative, reads
// nothing (for B = 512, N = 50: 100 KB, bound by launch latency).
#include <algorithm>

#include "painvrl/cuda/kernels.h"
#include "painvrl/math/sampling.h"

namespace painvrl::PAINVRL_KERNEL_NS {
namespace {

// Row r's negatives: drawn with `key` as row r of one batch, or, where row_key is given (several
// models' batches in one, HIM), with keys[row_key[r]] as row row_index[r] of that model's batch.
__global__ void sample_negatives_kernel(math::PhiloxKey key,
                                        const math::PhiloxKey* __restrict__ keys,
                                        const int32_t* __restrict__ row_key,
                                        const int32_t* __restrict__ row_index, uint32_t epoch,
                                        uint32_t step, int64_t rows, int32_t n_negatives,
                                        uint32_t n_items,
                                        int32_t* __restrict__ negatives /* (rows, N) */) {
  const int32_t groups = (n_negatives + 3) / 4;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * groups) return;
  const int64_t row = idx / groups;
  const uint32_t group = uint32_t(idx % groups);
  const math::PhiloxKey k = row_key ? keys[row_key[row]] : key;
  const uint32_t index = row_key ? uint32_t(row_index[row]) : uint32_t(row);
  const math::U32x4 r = math::philox(k, group, index, step, epoch);
  int32_t* out = negatives + row * n_negatives;
  for (uint32_t q = 0; q < 4u && group * 4u + q < uint32_t(n_negatives); ++q) {
    out[group * 4u + q] = int32_t(math::uniform_below(r.v[q], n_items));
  }
}

cudaError_t launch_negatives(math::PhiloxKey key, const math::PhiloxKey* keys,
                             const int32_t* row_key, const int32_t* row_index, uint32_t epoch,
                             uint32_t step, int64_t rows, int32_t n_negatives, uint32_t n_items,
                             int32_t* negatives, cudaStream_t stream) {
  if (rows <= 0 || n_negatives <= 0) return cudaSuccess;
  if (n_items == 0) return cudaErrorInvalidValue;
  const int64_t threads = rows * ((n_negatives + 3) / 4);
  const int block = 256;
  PAINVRL_LAUNCH(sample_negatives_kernel, unsigned((threads + block - 1) / block), block, stream,
                 key, keys, row_key, row_index, epoch, step, rows, n_negatives, n_items, negatives);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_sample_negatives(math::PhiloxKey key, uint32_t epoch, uint32_t step,
                                    int64_t rows, int32_t n_negatives, uint32_t n_items,
                                    int32_t* negatives, cudaStream_t stream) {
  return launch_negatives(key, nullptr, nullptr, nullptr, epoch, step, rows, n_negatives, n_items,
                          negatives, stream);
}

cudaError_t launch_sample_negatives_rows(const math::PhiloxKey* keys, const int32_t* row_key,
                                         const int32_t* row_index, uint32_t epoch, uint32_t step,
                                         int64_t rows, int32_t n_negatives, uint32_t n_items,
                                         int32_t* negatives, cudaStream_t stream) {
  if (!keys || !row_key || !row_index) return cudaErrorInvalidValue;
  return launch_negatives(math::PhiloxKey{}, keys, row_key, row_index, epoch, step, rows,
                          n_negatives, n_items, negatives, stream);
}

}  // namespace painvrl::PAINVRL_KERNEL_NS
