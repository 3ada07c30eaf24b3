// The fused UltraGCN loss forward and backward (paper Eq. 3-8, 15; DESIGN.md section 2), the
// kernel the CPU backend's ultragcn_loss_grad (host/cpu/cpu_loss.cpp) is held equal to by the `gpu`
// tests and, through the host emulation, by the CPU tests. One warp per batch row, or per chunk of
// a row's terms (term_chunks): lane l holds columns l, l + 32, ... of the user rows Pt_u, Pf_u in
// registers; for each of its terms the warp reads the item rows T_j (and X_j = W f_j + b),
// reduces the dot products by shuffles, evaluates the term's loss and dL/ds with math::bce_term,
// adds dL/ds * T_j into the user gradient in registers and dL/ds * Pt_u into dT_j by atomics
// (likewise the content branch into dX_j). The user gradient is added once per warp. HIM's E
// environment models run in the same launch: row r reads and writes block row_env[r] of X and
// dX, which hold the models side by side (E * D wide), with the frozen tables' gradients off.
// Bytes per row (float32, C = 1 with the ID-only model, 2 with content, terms = 1 + N + K):
//   read  4 D C (user) + terms 4 D C (item rows),
//   atomics terms 4 D C (each a read-modify-write in L2) + 4 D C (user),
//   plus 4 (1 + N) + 8 K of indices and weights.
// FLOPs per row: terms (2 D C dot + 2 D C user grad + D C atomics). At B = 512, N = 50, K = 10,
// D = 64 with content: 31,232 terms, 16 MB of item rows read and 16 MB of atomic updates.
#include <algorithm>
#include <cstdint>

#include "painvrl/cuda/kernels.h"
#include "painvrl/math/ultragcn.h"

namespace painvrl::PAINVRL_KERNEL_NS {
namespace {

constexpr int kWarp = 32;
constexpr int kColsPerLane = kFusedLossMaxDim / kWarp;  // registers per user row per lane
constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;  // every lane holds the sum
}

// kContent: the content branch (Pf, X) is present. Template so that the ID-only model keeps no
// registers for it.
template <bool kContent>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarp)
    fused_ultragcn_loss_kernel(const FusedLossArgs a) {
  const int64_t warp = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int64_t row = warp / a.term_chunks;
  const int32_t chunk = int32_t(warp % a.term_chunks);
  const int lane = int(threadIdx.x % kWarp);
  if (row >= a.rows) return;
  if (a.halt && *a.halt) return;
  const int32_t D = a.dim;
  const int32_t N = a.n_negatives;
  const int32_t terms = 1 + N + a.k_used;
  const int32_t first_term = int32_t(int64_t(terms) * chunk / a.term_chunks);
  const int32_t end_term = int32_t(int64_t(terms) * (chunk + 1) / a.term_chunks);
  const int32_t u = a.users[row];
  const int32_t i = a.items[row];
  const bool grads = a.grad_pt || a.grad_pf || a.grad_t || a.grad_x;
  const bool deterministic = a.term_coef != nullptr;  // coefficients out, no atomics
  const int64_t key_block = a.row_env ? a.row_env[row] : 0;
  // HIM's batched environment models: row r scores with the content block of its environment,
  // X[j][e * D .. e * D + D) of rows x_stride wide.
  const int64_t x_stride = a.x_stride > 0 ? a.x_stride : D;
  const int64_t x_offset = a.row_env ? int64_t(a.row_env[row]) * D : 0;

  float pt[kColsPerLane], pf[kColsPerLane];            // this lane's columns of Pt_u, Pf_u
  float grad_pt[kColsPerLane], grad_pf[kColsPerLane];  // of dL/dPt_u, dL/dPf_u
#pragma unroll
  for (int k = 0; k < kColsPerLane; ++k) {
    const int32_t c = lane + k * kWarp;
    pt[k] = c < D ? a.pt[int64_t(u) * D + c] : 0.f;
    pf[k] = kContent && c < D ? a.pf[int64_t(u) * D + c] : 0.f;
    grad_pt[k] = 0.f;
    grad_pf[k] = 0.f;
  }
  const float beta_u = a.beta_user[u];
  float main = 0.f, item_item = 0.f;  // lane 0's sums are written
  for (int32_t term = first_term; term < end_term; ++term) {
    // The term's item and weight (the same in every lane: the branches below do not diverge).
    int32_t j;
    float w;
    if (term == 0) {
      j = i;
      w = math::pair_weight(a.w1, a.w2, beta_u, a.beta_item[i]);
    } else if (term <= N) {
      j = a.negatives[row * N + (term - 1)];
      w = a.neg_scale * math::pair_weight(a.w3, a.w4, beta_u, a.beta_item[j]);
    } else {
      const int64_t slot = int64_t(i) * a.ii_k + (term - 1 - N);
      j = a.ii_neighbors[slot];
      w = a.ii_weights[slot];
      if (w == 0.f) {  // padding: no loss, no gradient (as on the CPU)
        if (deterministic && lane == 0) {
          a.term_coef[row * terms + term] = 0.f;
          a.term_key[row * terms + term] = INT32_MAX;
        }
        continue;
      }
    }
    float t_row[kColsPerLane], x_row[kColsPerLane];
    float partial = 0.f;
#pragma unroll
    for (int k = 0; k < kColsPerLane; ++k) {
      const int32_t c = lane + k * kWarp;
      t_row[k] = c < D ? a.t[int64_t(j) * D + c] : 0.f;
      x_row[k] = kContent && c < D ? a.x[int64_t(j) * x_stride + x_offset + c] : 0.f;
      partial += pt[k] * t_row[k];
      if (kContent) partial += pf[k] * x_row[k];
    }
    const float score = warp_sum(partial);
    const bool label_one = term == 0 || term > N;
    const math::TermLoss<float> tl = math::bce_term(score, w, label_one);
    const float coef = term > N ? a.kappa * tl.dlds : tl.dlds;
    if (term <= N) {
      main += tl.loss;
    } else {
      item_item += tl.loss;
    }
    if (deterministic && lane == 0) {
      a.term_coef[row * terms + term] = coef;
      a.term_key[row * terms + term] = int32_t(int64_t(j) * (x_stride / D) + key_block);
    }
    if (!grads || coef == 0.f) continue;
#pragma unroll
    for (int k = 0; k < kColsPerLane; ++k) {
      const int32_t c = lane + k * kWarp;
      if (c >= D) break;
      grad_pt[k] += coef * t_row[k];
      if (kContent) grad_pf[k] += coef * x_row[k];
      if (deterministic) continue;
      if (a.grad_t) atomicAdd(a.grad_t + int64_t(j) * D + c, coef * pt[k]);
      if (kContent && a.grad_x) {
        atomicAdd(a.grad_x + int64_t(j) * x_stride + x_offset + c, coef * pf[k]);
      }
    }
  }
  if (deterministic) {  // this warp's user gradient, for the fixed-order sum
#pragma unroll
    for (int k = 0; k < kColsPerLane; ++k) {
      const int32_t c = lane + k * kWarp;
      if (c >= D) break;
      a.warp_user_grad[warp * 2 * D + c] = grad_pt[k];
      a.warp_user_grad[warp * 2 * D + D + c] = grad_pf[k];
    }
  } else if (grads) {
#pragma unroll
    for (int k = 0; k < kColsPerLane; ++k) {
      const int32_t c = lane + k * kWarp;
      if (c >= D) break;
      if (a.grad_pt) atomicAdd(a.grad_pt + int64_t(u) * D + c, grad_pt[k]);
      if (kContent && a.grad_pf) atomicAdd(a.grad_pf + int64_t(u) * D + c, grad_pf[k]);
    }
  }
  if (lane == 0) {
    a.row_loss[2 * warp] = main;
    a.row_loss[2 * warp + 1] = item_item;
  }
}

// Deterministic mode. iota: out[k] = k; keys of the warps: the row's user.
__global__ void iota_kernel(int64_t n, int32_t* __restrict__ out) {
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < n) out[k] = int32_t(k);
}
__global__ void warp_user_keys_kernel(const int32_t* __restrict__ users, int32_t term_chunks,
                                      int64_t warps, int32_t* __restrict__ keys) {
  const int64_t w = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (w < warps) keys[w] = users[w / term_chunks];
}

// Warp per sorted position; the first of each key's run sums the run in order (term order: the
// sort is stable) and adds to the key's gradient rows: item rows dT_j (+= coef Pt_u) and
// dX_j block (+= coef Pf_u), each owned by one warp.
template <bool kContent>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarp)
    reduce_item_rows_kernel(const FusedLossArgs a, int32_t terms, int64_t n,
                            const int32_t* __restrict__ keys, const int32_t* __restrict__ idx) {
  const int64_t p = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = int(threadIdx.x % kWarp);
  if (p >= n || (a.halt && *a.halt)) return;  // a halted step's fused launch wrote nothing
  const int32_t key = keys[p];
  if (key == INT32_MAX || (p > 0 && keys[p - 1] == key)) return;
  const int32_t D = a.dim;
  const int64_t x_stride = a.x_stride > 0 ? a.x_stride : D;
  const int32_t blocks = int32_t(x_stride / D);  // 32-bit division: no subroutine call
  const int64_t j = key / blocks, block = key % blocks;
  float gt[kColsPerLane], gx[kColsPerLane];
#pragma unroll
  for (int k = 0; k < kColsPerLane; ++k) gt[k] = gx[k] = 0.f;
  for (int64_t q = p; q < n && keys[q] == key; ++q) {
    const int32_t t = idx[q];
    const float coef = a.term_coef[t];
    if (coef == 0.f) continue;  // as the atomic path: no 0 * Inf after a divergence
    const int64_t u = a.users[t / terms];
#pragma unroll
    for (int k = 0; k < kColsPerLane; ++k) {
      const int32_t c = lane + k * kWarp;
      if (c >= D) break;
      gt[k] += coef * a.pt[u * D + c];
      if (kContent) gx[k] += coef * a.pf[u * D + c];
    }
  }
#pragma unroll
  for (int k = 0; k < kColsPerLane; ++k) {
    const int32_t c = lane + k * kWarp;
    if (c >= D) break;
    if (a.grad_t) a.grad_t[j * D + c] += gt[k];
    if (kContent && a.grad_x) a.grad_x[j * x_stride + block * D + c] += gx[k];
  }
}

// The same for user rows: the warps' user gradients summed in warp order per user.
__global__ void __launch_bounds__(kWarpsPerBlock* kWarp)
    reduce_user_rows_kernel(const FusedLossArgs a, int64_t n, const int32_t* __restrict__ keys,
                            const int32_t* __restrict__ idx) {
  const int64_t p = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = int(threadIdx.x % kWarp);
  if (p >= n || (a.halt && *a.halt)) return;
  const int32_t u = keys[p];
  if (p > 0 && keys[p - 1] == u) return;
  const int32_t D = a.dim;
  for (int32_t c = lane; c < D; c += kWarp) {
    float g_pt = 0.f, g_pf = 0.f;
    for (int64_t q = p; q < n && keys[q] == u; ++q) {
      g_pt += a.warp_user_grad[int64_t(idx[q]) * 2 * D + c];
      g_pf += a.warp_user_grad[int64_t(idx[q]) * 2 * D + D + c];
    }
    if (a.grad_pt) a.grad_pt[int64_t(u) * D + c] += g_pt;
    if (a.grad_pf) a.grad_pf[int64_t(u) * D + c] += g_pf;
  }
}

__global__ void broadcast_rows_kernel(const float* __restrict__ vec /* (D,) */, int32_t dim,
                                      int64_t n_rows, int64_t width,
                                      float* __restrict__ rows /* (n_rows, width) */) {
  const int64_t n = n_rows * dim;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = k / dim;
    const int32_t c = int32_t(k % dim);
    rows[r * width + c] = vec[c];
  }
}

}  // namespace

cudaError_t launch_fused_ultragcn_loss(const FusedLossArgs& a, cudaStream_t stream) {
  if (a.rows <= 0) return cudaSuccess;
  if (a.dim <= 0 || a.dim > kFusedLossMaxDim) return cudaErrorInvalidValue;
  if ((a.grad_pf || a.grad_x) && !a.x) return cudaErrorInvalidValue;  // content gradients only
  if (a.x_stride != 0 && a.x_stride < a.dim) return cudaErrorInvalidValue;
  if (a.row_env && (!a.x || a.x_stride == 0)) return cudaErrorInvalidValue;
  if (!a.row_loss || a.term_chunks < 1) return cudaErrorInvalidValue;
  const int64_t warps = a.rows * a.term_chunks;
  const int64_t blocks = (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (a.x != nullptr) {
    PAINVRL_LAUNCH(fused_ultragcn_loss_kernel<true>, unsigned(blocks), kWarpsPerBlock * kWarp,
                   stream, a);
  } else {
    PAINVRL_LAUNCH(fused_ultragcn_loss_kernel<false>, unsigned(blocks), kWarpsPerBlock * kWarp,
                   stream, a);
  }
  return cudaGetLastError();
}

cudaError_t launch_fused_loss_reduce(const FusedLossArgs& a, int32_t* scratch,
                                     const DeviceSortPairs& sort, cudaStream_t stream) {
  if (a.rows <= 0) return cudaSuccess;
  if (!a.term_coef || !a.term_key || !a.warp_user_grad || !scratch) return cudaErrorInvalidValue;
  // With several environment blocks an item row T_j would be keyed once per block: its runs
  // would race. (HIM's models freeze T; the atomic path allows it.)
  if (a.row_env && a.grad_t) return cudaErrorInvalidValue;
  const int32_t terms = 1 + a.n_negatives + a.k_used;
  const int64_t n_terms = a.rows * terms, warps = a.rows * a.term_chunks;
  const int64_t n = n_terms > warps ? n_terms : warps;
  int32_t *iota = scratch, *keys_in = scratch + n, *keys = scratch + 2 * n, *idx = scratch + 3 * n;
  const int block = 256;
  PAINVRL_LAUNCH(iota_kernel, unsigned((n + block - 1) / block), block, stream, n, iota);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  if (a.grad_t || a.grad_x) {
    if ((e = sort(a.term_key, keys, iota, idx, n_terms)) != cudaSuccess) return e;
    const unsigned blocks = unsigned((n_terms + kWarpsPerBlock - 1) / kWarpsPerBlock);
    if (a.x != nullptr) {
      PAINVRL_LAUNCH(reduce_item_rows_kernel<true>, blocks, kWarpsPerBlock * kWarp, stream, a,
                     terms, n_terms, keys, idx);
    } else {
      PAINVRL_LAUNCH(reduce_item_rows_kernel<false>, blocks, kWarpsPerBlock * kWarp, stream, a,
                     terms, n_terms, keys, idx);
    }
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
  }
  if (a.grad_pt || a.grad_pf) {
    PAINVRL_LAUNCH(warp_user_keys_kernel, unsigned((warps + block - 1) / block), block, stream,
                   a.users, a.term_chunks, warps, keys_in);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
    if ((e = sort(keys_in, keys, iota, idx, warps)) != cudaSuccess) return e;
    PAINVRL_LAUNCH(reduce_user_rows_kernel, unsigned((warps + kWarpsPerBlock - 1) / kWarpsPerBlock),
                   kWarpsPerBlock * kWarp, stream, a, warps, keys, idx);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
  }
  return cudaSuccess;
}

cudaError_t launch_broadcast_rows(const float* vec, int32_t dim, int64_t n_rows, int64_t width,
                                  float* rows, cudaStream_t stream) {
  if (n_rows <= 0 || dim <= 0) return cudaSuccess;
  const int block = 256;
  const int64_t blocks = std::min<int64_t>((n_rows * dim + block - 1) / block, 65536);
  PAINVRL_LAUNCH(broadcast_rows_kernel, unsigned(blocks), block, stream, vec, dim, n_rows, width,
                 rows);
  return cudaGetLastError();
}

}  // namespace painvrl::PAINVRL_KERNEL_NS
