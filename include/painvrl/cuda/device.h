// CUDA device discovery. The GPU is optional at run time: any error from the runtime (no driver,
// no device, insufficient driver) counts as "no usable device".
#pragma once
#include <string>

namespace painvrl::cuda {

// Number of usable CUDA devices (0 on any runtime error or in a build without CUDA).
int usable_device_count();
// One line naming device 0 (name, compute capability, memory), or why there is none.
std::string describe_device();

// Evaluates the shared math headers on the device for `n` inputs (tests compare with the host):
// out (n, 4): softplus(z), sigmoid(z), the philox negative for slot i, init_normal element i.
// Returns a CUDA error string, empty on success.
std::string math_probe(const float* z, int n, unsigned long long seed, unsigned n_items,
                       float* out);

}  // namespace painvrl::cuda
