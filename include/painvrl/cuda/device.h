// CUDA device discovery. The GPU is optional at run time: any error from the runtime (no driver,
// no device, insufficient driver) counts as "no usable device".
#pragma once
#include <cstdlib>
#include <string>

namespace painvrl::cuda {

// Number of usable CUDA devices (0 on any runtime error or in a build without CUDA).
int usable_device_count();
// One line naming device 0 (name, compute capability, memory), or why there is none (the CUDA
// runtime's error name and text).
std::string describe_device();

// PAINVRL_REQUIRE_GPU=1 (tools/device-check sets it): no usable device is a failure of the gpu
// tests and the GPU labs, never a skip.
inline bool gpu_required() {
  const char* v = std::getenv("PAINVRL_REQUIRE_GPU");
  return v != nullptr && v[0] != '\0' && v[0] != '0';
}

// Evaluates the shared math headers on the device for `n` inputs (tests compare with the host):
// out (n, 4): softplus(z), sigmoid(z), the philox negative for slot i, init_normal element i.
// Returns a CUDA error string, empty on success.
std::string math_probe(const float* z, int n, unsigned long long seed, unsigned n_items,
                       float* out);

}  // namespace painvrl::cuda
