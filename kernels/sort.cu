// The stable key-value sort of the deterministic mode (launch_fused_loss_reduce): CUB's device
// radix sort (stable: equal keys keep their input order, so a key's contributions are summed in
// term order on every run). Memory bound: about 4 passes of 8 B per pair for 32-bit keys.
#include <cub/device/device_radix_sort.cuh>

#include "device_support.h"

namespace painvrl::cuda {

cudaError_t sort_pairs_stable(void* temp, size_t& temp_bytes, const int32_t* keys_in,
                              int32_t* keys_out, const int32_t* vals_in, int32_t* vals_out,
                              int64_t n, cudaStream_t stream) {
  return cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, vals_in, vals_out,
                                         int(n), 0, 32, stream);
}

}  // namespace painvrl::cuda
