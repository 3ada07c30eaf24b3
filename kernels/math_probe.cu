// Evaluates the __host__ __device__ formulas of include/painvrl/math on the GPU so that a `gpu`
// test can prove the device computes what the CPU backend computes (same softplus, sigmoid,
// negatives and initial weights). Bytes: 4 B in, 16 B out per element; trivial FLOPs.
#include <cuda_runtime.h>

#include "painvrl/cuda/device.h"
#include "painvrl/math/activations.h"
#include "painvrl/math/sampling.h"

namespace painvrl::cuda {
namespace {

__global__ void math_probe_kernel(const float* __restrict__ z, int n, math::PhiloxKey key,
                                  unsigned n_items, float* __restrict__ out /* (n, 4) */) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out[4 * i + 0] = math::softplus(z[i]);
  out[4 * i + 1] = math::sigmoid(z[i]);
  out[4 * i + 2] = float(math::negative_item(key, 3u, 5u, unsigned(i), unsigned(i) % 7u, n_items));
  out[4 * i + 3] = math::init_normal<float>(key, 1u, unsigned(i), 1.0f);
}

// Launcher: stream last, returns the launch error, never synchronises.
cudaError_t launch_math_probe(const float* d_z, int n, math::PhiloxKey key, unsigned n_items,
                              float* d_out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const int block = 256;
  math_probe_kernel<<<(n + block - 1) / block, block, 0, stream>>>(d_z, n, key, n_items, d_out);
  return cudaGetLastError();
}

}  // namespace

std::string math_probe(const float* z, int n, unsigned long long seed, unsigned n_items,
                       float* out) {
  float* d_z = nullptr;
  float* d_out = nullptr;
  cudaError_t err = cudaMalloc(&d_z, sizeof(float) * n);
  if (err == cudaSuccess) err = cudaMalloc(&d_out, sizeof(float) * 4 * n);
  if (err == cudaSuccess) err = cudaMemcpy(d_z, z, sizeof(float) * n, cudaMemcpyHostToDevice);
  if (err == cudaSuccess) {
    const math::PhiloxKey key =
        math::make_key(seed, math::stream_id(math::RngStream::kNegative, 0));
    err = launch_math_probe(d_z, n, key, n_items, d_out, 0);
  }
  if (err == cudaSuccess)
    err = cudaMemcpy(out, d_out, sizeof(float) * 4 * n, cudaMemcpyDeviceToHost);
  cudaFree(d_z);
  cudaFree(d_out);
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace painvrl::cuda
