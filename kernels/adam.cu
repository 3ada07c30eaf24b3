// The optimiser pass and the end of a training step on the device, and the small scoring kernels.
// Adam (math::adam_update, PyTorch's order) with the L2 gradient 2 gamma theta fused in, the
// gradient zeroed for the next step, and the sums of squares of the parameters before the update
// (the full-table L2 value, DESIGN.md section 2) in one pass: 16 B read and 12 B written per
// parameter (p, m, v, g in; p, m, v out; g zeroed: 16 B), memory bound; 3.7 M parameters at the
// paper's MovieLens sizes are 118 MB a step. The step end sums B + kAdamBlocks pairs of floats
// in a fixed order (one block), so the loss is the same on every run.
#ifndef PAINVRL_KERNEL_EMULATION
#include <cub/block/block_reduce.cuh>
#endif

#include <algorithm>
#include <cmath>

#include "painvrl/cuda/kernels.h"

namespace painvrl::PAINVRL_KERNEL_NS {
namespace {

constexpr int kAdamThreads = 256;
constexpr int kStepEndThreads = 256;

__global__ void __launch_bounds__(kAdamThreads) adam_kernel(const AdamArgs a) {
  if (a.halt && *a.halt) return;
  const int64_t n = a.bounds[4];
  float sum_emb = 0.f, sum_w = 0.f;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int tensor = k < a.bounds[1] ? 0 : k < a.bounds[2] ? 1 : k < a.bounds[3] ? 2 : 3;
    const bool embedding = tensor < 3;
    float p = a.params[k];
    (embedding ? sum_emb : sum_w) += p * p;
    const float g = a.grad[k];
    a.grad[k] = 0.f;
    if ((a.frozen >> tensor) & 1u) continue;
    float m = a.m[k], v = a.v[k];
    math::adam_update(p, m, v, g, embedding ? a.emb_l2_coef : a.w_l2_coef, a.step);
    a.params[k] = p;
    a.m[k] = m;
    a.v[k] = v;
  }
  using Reduce = cub::BlockReduce<float, kAdamThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const float block_emb = Reduce(storage).Sum(sum_emb);
  __syncthreads();
  const float block_w = Reduce(storage).Sum(sum_w);
  if (threadIdx.x == 0) {
    a.block_sums[2 * blockIdx.x] = block_emb;
    a.block_sums[2 * blockIdx.x + 1] = block_w;
  }
}

__global__ void __launch_bounds__(kStepEndThreads) step_end_kernel(const StepEndArgs a) {
  if (*a.halt) return;
  double main = 0, item_item = 0, l2_emb = 0, l2_w = 0;
  for (int64_t r = threadIdx.x; r < a.entries; r += blockDim.x) {
    main += a.row_loss[2 * r];
    item_item += a.row_loss[2 * r + 1];
  }
  for (int b = threadIdx.x; b < kAdamBlocks; b += blockDim.x) {
    l2_emb += a.block_sums[2 * b];
    l2_w += a.block_sums[2 * b + 1];
  }
  using Reduce = cub::BlockReduce<double, kStepEndThreads>;
  __shared__ typename Reduce::TempStorage storage;
  main = Reduce(storage).Sum(main);
  __syncthreads();
  item_item = Reduce(storage).Sum(item_item);
  __syncthreads();
  l2_emb = Reduce(storage).Sum(l2_emb);
  __syncthreads();
  l2_w = Reduce(storage).Sum(l2_w);
  if (threadIdx.x != 0) return;
  const double ii = double(a.kappa) * item_item;
  const double l2 = double(a.gamma_emb) * l2_emb + double(a.gamma_w) * l2_w;
  const double total = main + ii + l2;
  if (!isfinite(total)) {
    *a.halt = 1;  // the following steps' kernels return at once; the host sees it at epoch end
    return;
  }
  EpochAccumulators& acc = *a.acc;
  acc.total += total;
  acc.main += main;
  acc.item_item += ii;
  acc.l2 += l2;
  acc.steps += 1;
  acc.pairs += a.pairs;
}

__global__ void __launch_bounds__(kAdamThreads) env_adam_kernel(const EnvAdamArgs a) {
  if (a.halt && *a.halt) return;
  const int64_t w_total = int64_t(a.envs) * a.w_size;
  const int64_t n = w_total + int64_t(a.envs) * a.dim;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int e = int(k < w_total ? k / a.w_size : (k - w_total) / a.dim);
    const float g = a.grad[k];
    a.grad[k] = 0.f;
    if (!a.active[e]) continue;
    float p = a.params[k], m = a.m[k], v = a.v[k];
    math::adam_update(p, m, v, g, a.l2_coef, a.steps[e]);
    a.params[k] = p;
    a.m[k] = m;
    a.v[k] = v;
  }
}

__global__ void __launch_bounds__(kStepEndThreads) env_step_end_kernel(const EnvStepEndArgs a) {
  if (*a.halt) return;
  double sum = 0;
  for (int64_t r = threadIdx.x; r < a.entries; r += blockDim.x) {
    sum += double(a.row_loss[2 * r]) + double(a.kappa) * double(a.row_loss[2 * r + 1]);
  }
  using Reduce = cub::BlockReduce<double, kStepEndThreads>;
  __shared__ typename Reduce::TempStorage storage;
  sum = Reduce(storage).Sum(sum);
  if (threadIdx.x != 0) return;
  const double total = *a.epoch_loss + sum;
  if (!isfinite(total)) {
    *a.halt = 1;
    *a.halt_step = a.step;
    return;
  }
  *a.epoch_loss = total;
}

__global__ void gather_user_rows_kernel(const float* __restrict__ pt, const float* __restrict__ pf,
                                        int32_t dim, const int32_t* __restrict__ users,
                                        int64_t count, float* __restrict__ out /* (count, W) */) {
  const int32_t width = pf ? 2 * dim : dim;
  const int64_t n = count * width;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = k / width;
    const int32_t c = int32_t(k % width);
    const int64_t u = users[p];
    out[k] = c < dim ? pt[u * dim + c] : pf[u * dim + (c - dim)];
  }
}

__global__ void score_pairs_kernel(const float* __restrict__ pt, const float* __restrict__ pf,
                                   int32_t dim, const float* __restrict__ item_rows,
                                   const int32_t* __restrict__ users,
                                   const int32_t* __restrict__ items, int64_t count,
                                   float* __restrict__ out /* (count,) */) {
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= count) return;
  const int32_t width = pf ? 2 * dim : dim;
  const float* item = item_rows + int64_t(items[p]) * width;
  const int64_t u = users[p];
  float s = 0.f;
  for (int32_t c = 0; c < dim; ++c) s += pt[u * dim + c] * item[c];
  if (pf) {
    for (int32_t c = 0; c < dim; ++c) s += pf[u * dim + c] * item[dim + c];
  }
  out[p] = s;
}

// HIM's reassignment (Eq. 9): pair p goes to the environment whose model scores it highest,
// s_e = <Pt_u, T_j> + <Pf_u, X_j,e>, ties to the smaller e (thread per pair; each dot product
// summed in column order, while the CPU's vectorised dot uses several accumulators, so a pair
// whose best scores nearly tie may go elsewhere than on the CPU).
__global__ void assign_environments_kernel(
    const float* __restrict__ pt, const float* __restrict__ pf, const float* __restrict__ t,
    int32_t dim, int32_t envs, const float* __restrict__ x_all, const int32_t* __restrict__ users,
    const int32_t* __restrict__ items, int64_t count, int32_t* __restrict__ env_out) {
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= count) return;
  const int64_t u = users[p], j = items[p];
  float id_part = 0.f;
  for (int32_t c = 0; c < dim; ++c) id_part += pt[u * dim + c] * t[j * dim + c];
  float best = -INFINITY;
  int32_t best_e = 0;
  for (int32_t e = 0; e < envs; ++e) {
    const float* x = x_all + (j * envs + e) * dim;
    float s = 0.f;
    for (int32_t c = 0; c < dim; ++c) s += pf[u * dim + c] * x[c];
    s += id_part;
    if (s > best) {
      best = s;
      best_e = e;
    }
  }
  env_out[p] = best_e;
}

}  // namespace

cudaError_t launch_assign_environments(const float* pt, const float* pf, const float* t,
                                       int32_t dim, int32_t envs, const float* x_all,
                                       const int32_t* users, const int32_t* items, int64_t count,
                                       int32_t* env_out, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  const int block = 256;
  PAINVRL_LAUNCH(assign_environments_kernel, unsigned((count + block - 1) / block), block, stream,
                 pt, pf, t, dim, envs, x_all, users, items, count, env_out);
  return cudaGetLastError();
}

cudaError_t launch_adam(const AdamArgs& a, cudaStream_t stream) {
  if (!a.block_sums) return cudaErrorInvalidValue;
  PAINVRL_LAUNCH(adam_kernel, kAdamBlocks, kAdamThreads, stream, a);
  return cudaGetLastError();
}

cudaError_t launch_step_end(const StepEndArgs& a, cudaStream_t stream) {
  if (!a.acc || !a.halt || !a.row_loss || !a.block_sums) return cudaErrorInvalidValue;
  PAINVRL_LAUNCH(step_end_kernel, 1, kStepEndThreads, stream, a);
  return cudaGetLastError();
}

cudaError_t launch_env_adam(const EnvAdamArgs& a, cudaStream_t stream) {
  if (!a.steps || !a.active || a.envs <= 0 || a.dim <= 0) return cudaErrorInvalidValue;
  PAINVRL_LAUNCH(env_adam_kernel, kAdamBlocks, kAdamThreads, stream, a);
  return cudaGetLastError();
}

cudaError_t launch_env_step_end(const EnvStepEndArgs& a, cudaStream_t stream) {
  if (!a.row_loss || !a.epoch_loss || !a.halt || !a.halt_step) return cudaErrorInvalidValue;
  PAINVRL_LAUNCH(env_step_end_kernel, 1, kStepEndThreads, stream, a);
  return cudaGetLastError();
}

cudaError_t launch_gather_user_rows(const float* pt, const float* pf, int32_t dim,
                                    const int32_t* users, int64_t count, float* out,
                                    cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  const int block = 256;
  const int64_t n = count * (pf ? 2 * dim : dim);
  const int64_t blocks = std::min<int64_t>((n + block - 1) / block, 65536);
  PAINVRL_LAUNCH(gather_user_rows_kernel, unsigned(blocks), block, stream, pt, pf, dim, users,
                 count, out);
  return cudaGetLastError();
}

cudaError_t launch_score_pairs(const float* pt, const float* pf, int32_t dim,
                               const float* item_rows, const int32_t* users, const int32_t* items,
                               int64_t count, float* out, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  const int block = 256;
  PAINVRL_LAUNCH(score_pairs_kernel, unsigned((count + block - 1) / block), block, stream, pt, pf,
                 dim, item_rows, users, items, count, out);
  return cudaGetLastError();
}

}  // namespace painvrl::PAINVRL_KERNEL_NS
