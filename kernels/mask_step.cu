// PaInvRL's mask-generation step on the device (include/painvrl/cuda/mask_kernels.h): the three
// passes of host/cpu/mask_step.cpp, in double, as kernels between dense products (DESIGN.md section
// 2, Eq. 10-19; the second-order IRM terms derived in include/painvrl/backend/mask_step.h):
//   gate      mu_e, open_e (E, d)                       math::mask_gate
//   rows      Pf_u, [Pt_u, Pf_u], <Pf_u, b>, w1u [Pt_u; Pf_u] per batch row
//   GEMM      item_pre_k = [T | F] w1i_k^T + b1_k;  q = Pf_rows W
//   pass 1    block per row, terms in order: alpha (attention MLPs), s, delta, delta2, the row's
//             sum_t delta_t h_t and g_E pieces; a term's h_t = (alpha_psi + (alpha_phi - alpha_psi)
//             mu) * f is never stored: s needs only sum q f and sum q mu f
//   GEMM      G_e = Pf_rows_e^T row_vec_e;   variance: V, L_IRM, R_e;   GEMM ru = Pf_rows_e R_e
//   pass 2    block per row: gamma_t = delta2_t <ru, h_t>, the IRM h-adjoint's sums, dJ/dalpha
//   columns   g_E, g_I; Pareto: one block, w_ERM, the mask direction and step (Eq. 17-19)
//   GEMM      dJ/dW = Pf_rows^T (wE row_vec_erm + wI row_vec) + 2 gamma_w W; dJ/db per column
//   attention dJ/d(pre-activation) per row, and per item over the terms sorted by item (no atomics:
//             every sum in a fixed order, so a step is the same on every run), then GEMMs for w1u,
//             w1i
// Bytes per step at the paper's MovieLens sizes (rows = E * 512 = 5,120, d = 2,276, TPR = 61):
// each pass streams its row's d-vectors (q, mu, and 2-3 accumulators, ~18 KB per row read and
// written per term in L1/L2) and every term's feature row f_j (18 KB, 61 per row): ~5.7 GB of
// feature reads per pass from L2 (items are shared across rows), ~0.6 GB of row vectors from
// HBM; FLOPs ~6 * rows * TPR * d = 4.3 GFLOP per pass, the GEMMs ~4 * 2 * rows * D * d = 6
// GFLOP, all FP64. The step is L2/memory bound; the lab (bench/mask_step_gpu.cpp) times it.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "painvrl/cuda/mask_kernels.h"
#include "painvrl/math/adam.h"
#include "painvrl/math/mask.h"
#include "painvrl/math/sampling.h"
#include "painvrl/math/ultragcn.h"

namespace painvrl::PAINVRL_KERNEL_NS {

int64_t MaskWorkspace::doubles(int64_t rows, int32_t tpr, int32_t E, int32_t D, int64_t d,
                               int32_t H, int32_t n_items) {
  return 2 * int64_t(E) * d + rows * (3 * int64_t(D) + 1 + 2 * int64_t(H)) +
         2 * int64_t(n_items) * H + 6 * rows * d + 3 * rows + rows * tpr * (5 + 2 + 4) +
         int64_t(E) * D * d + 2 * d + rows * (4 * int64_t(H) + 2) + 2 * int64_t(n_items) * H +
         2 * int64_t(kMaskColumnChunks) * d + 2 * rows * tpr;
}

MaskWorkspace MaskWorkspace::carve(double* p, int64_t rows, int32_t tpr, int32_t E, int32_t D,
                                   int64_t d, int32_t H, int32_t n_items) {
  MaskWorkspace w;
  auto take = [&p](int64_t n) {
    double* out = p;
    p += n;
    return out;
  };
  w.gate = take(int64_t(E) * d);
  w.open = take(int64_t(E) * d);
  w.pf_rows = take(rows * D);
  w.ptpf_rows = take(rows * 2 * D);
  w.base = take(rows);
  w.user_pre = take(rows * 2 * H);
  w.item_pre = take(2 * int64_t(n_items) * H);
  w.q = take(rows * d);
  w.row_vec = take(rows * d);
  w.row_vec_erm = take(rows * d);
  w.row_mask_e = take(rows * d);
  w.row_mask_i = take(rows * d);
  w.ru = take(rows * d);
  w.row_loss = take(rows);
  w.row_dsum = take(rows);
  w.row_gsum = take(rows);
  w.term_stats = take(rows * tpr * 5);
  w.term_sums = take(rows * tpr * 2);
  w.term_dalpha = take(rows * tpr * 4);
  w.radj = take(int64_t(E) * D * d);
  w.lirm_col = take(d);
  w.gi_direct = take(d);
  w.row_dpre = take(rows * 2 * H);
  w.row_dw2 = take(rows * 2 * H);
  w.row_db2 = take(rows * 2);
  w.item_dpre = take(2 * int64_t(n_items) * H);
  w.col_partial = take(2 * int64_t(kMaskColumnChunks) * d);
  w.term_sort = reinterpret_cast<int32_t*>(take(2 * rows * tpr));  // 4 * rows * tpr ints
  return w;
}

namespace {

// One block per batch row. The emulated-kernel tests run 64 threads (the fibers' switches cost
// what the device's barriers do not); every loop strides by blockDim, so the code is the same.
#ifdef PAINVRL_KERNEL_EMULATION
constexpr int kRowThreads = 64;
#else
constexpr int kRowThreads = 256;
#endif
constexpr int kRowWarps = kRowThreads / 32;
constexpr int kColumnChunks = kMaskColumnChunks;
constexpr int kFlatThreads = 256;

int64_t flat_blocks(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>((n + kFlatThreads - 1) / kFlatThreads, 4096));
}

// Sums v[0..NV) over the block; every thread gets the totals, identical bit for bit (a butterfly
// within each warp, then the warps' sums in a fixed order). scratch: (kRowWarps, NV) shared.
template <int NV>
__device__ __forceinline__ void block_sums(double (&v)[NV], double* scratch) {
  for (int i = 0; i < NV; ++i) {
    for (int lane_mask = 16; lane_mask > 0; lane_mask >>= 1) {
      v[i] += __shfl_xor_sync(0xffffffffu, v[i], lane_mask);
    }
  }
  const int warp = int(threadIdx.x) / 32;
  if (threadIdx.x % 32 == 0) {
    for (int i = 0; i < NV; ++i) scratch[warp * NV + i] = v[i];
  }
  __syncthreads();
  for (int i = 0; i < NV; ++i) {
    double s = 0;
    for (int w = 0; w < kRowWarps; ++w) s += scratch[w * NV + i];
    v[i] = s;
  }
  __syncthreads();  // scratch is free again
}

// A term's item, weight and label (host/cpu/mask_step.cpp term_identity).
struct TermId {
  int32_t item;
  double c;
  bool positive;
};
// neg_scale = neg_weight / N (computed once per kernel: a double division is a subroutine call).
__device__ __forceinline__ TermId term_identity(const MaskStepArgs& a, double neg_scale,
                                                int64_t row, int32_t slot) {
  const int32_t u = a.users[row], i = a.items[row];
  const MaskSettings& S = a.settings;
  const int32_t N = a.n_negatives;
  TermId t;
  if (slot == 0) {
    t.item = i;
    t.c = math::pair_weight(S.w1, S.w2, a.beta_user[u], a.beta_item[i]);
    t.positive = true;
  } else if (slot <= N) {
    t.item = a.negatives[row * N + slot - 1];
    t.c = neg_scale * math::pair_weight(S.w3, S.w4, a.beta_user[u], a.beta_item[t.item]);
    t.positive = false;
  } else {
    const int32_t k = slot - 1 - N;
    t.item = a.ii_neighbors[int64_t(i) * a.ii_k + k];
    t.c = S.kappa * a.ii_weights[int64_t(i) * a.ii_k + k];
    t.positive = true;
  }
  return t;
}

__device__ __forceinline__ int32_t env_of_row(const MaskStepArgs& a, int64_t row) {
  int32_t e = 0;
  while (e + 1 < a.envs && a.env_offsets[e + 1] <= row) ++e;
  return e;
}

__global__ void __launch_bounds__(kFlatThreads) gate_kernel(const MaskStepArgs a) {
  const int64_t n = int64_t(a.envs) * a.layout.d;
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < n;
       x += int64_t(gridDim.x) * blockDim.x) {
    a.ws.gate[x] = math::mask_gate(a.mask[x % a.layout.d], a.noise[x], a.ws.open[x]);
  }
}

__global__ void __launch_bounds__(kFlatThreads) fill_kernel(double* out, int64_t n, double value) {
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < n;
       x += int64_t(gridDim.x) * blockDim.x) {
    out[x] = value;
  }
}

// out (n_rows, width)[r][c] = vec[c]
__global__ void __launch_bounds__(kFlatThreads)
    broadcast_kernel(const double* vec, int64_t width, int64_t n_rows, double* out) {
  const int64_t n = width * n_rows;
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < n;
       x += int64_t(gridDim.x) * blockDim.x) {
    out[x] = vec[x % width];
  }
}

// Per batch row: Pf_u, [Pt_u, Pf_u], <Pf_u, b>, and the user half of both MLPs' pre-activations.
__global__ void __launch_bounds__(kRowThreads) rows_kernel(const MaskStepArgs a) {
  __shared__ double scratch[kRowWarps];
  const int64_t r = blockIdx.x;
  const int32_t D = a.layout.D, H = a.layout.H, u = a.users[r];
  const double* pt = a.pt + int64_t(u) * D;
  const double* pf = a.pf + int64_t(u) * D;
  double part[1] = {0};
  for (int32_t c = threadIdx.x; c < D; c += blockDim.x) {
    a.ws.pf_rows[r * D + c] = pf[c];
    a.ws.ptpf_rows[r * 2 * D + c] = pt[c];
    a.ws.ptpf_rows[r * 2 * D + D + c] = pf[c];
    part[0] += pf[c] * a.params[a.layout.b + c];
  }
  block_sums<1>(part, scratch);
  if (threadIdx.x == 0) a.ws.base[r] = part[0];
  for (int32_t x = threadIdx.x; x < 2 * H; x += blockDim.x) {
    const int k = x / H, h = x % H;
    const double* w = a.params + a.layout.w1u[k] + int64_t(h) * 2 * D;
    double acc_t = 0, acc_f = 0;
    for (int32_t c = 0; c < D; ++c) acc_t += w[c] * pt[c];
    for (int32_t c = 0; c < D; ++c) acc_f += w[D + c] * pf[c];
    a.ws.user_pre[r * 2 * H + x] = acc_t + acc_f;
  }
}

// Pass 1 (block per row): every term's alpha, s, delta, delta2 and loss; the row's
// sum_t delta_t h_t and sum_t delta_t q (alpha_phi - alpha_psi) f_t (the g_E piece).
// F: the feature rows' type (double: a.features, v1; float: a.features_f32, v2, half the bytes).
template <class F>
__global__ void __launch_bounds__(kRowThreads)
    pass1_kernel(const MaskStepArgs a, int32_t tpr, const F* __restrict__ features) {
  const double neg_scale = a.settings.neg_weight / double(a.n_negatives);
  __shared__ double scratch[kRowWarps * 5];
  const int64_t r = blockIdx.x;
  const int32_t D = a.layout.D, H = a.layout.H, u = a.users[r], e = env_of_row(a, r);
  const int64_t d = a.layout.d;
  const double* q = a.ws.q + r * d;
  const double* mu = a.ws.gate + int64_t(e) * d;
  double* acc = a.ws.row_vec + r * d;
  double* me = a.ws.row_mask_e + r * d;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) acc[j] = me[j] = 0;
  double loss = 0;
  for (int32_t slot = 0; slot < tpr; ++slot) {
    const TermId t = term_identity(a, neg_scale, r, slot);
    double* stats = a.ws.term_stats + (r * tpr + slot) * 5;
    double* sums = a.ws.term_sums + (r * tpr + slot) * 2;
    if (t.c == 0) {  // the same branch in every thread
      if (threadIdx.x == 0) {
        for (int i = 0; i < 5; ++i) stats[i] = 0;
        sums[0] = sums[1] = 0;
      }
      continue;
    }
    const F* f = features + int64_t(t.item) * d;
    // v: logit partials of the two MLPs, <T_j, Pt_u>, sum q f, sum q mu f
    double v[5] = {0, 0, 0, 0, 0};
    for (int32_t x = threadIdx.x; x < 2 * H; x += blockDim.x) {
      const int k = x / H, h = x % H;
      const double pre =
          a.ws.user_pre[r * 2 * H + x] + a.ws.item_pre[(int64_t(k) * a.n_items + t.item) * H + h];
      const double term = a.params[a.layout.w2[k] + h] * (pre > 0 ? pre : 0.0);
      if (k == 0) {
        v[0] += term;
      } else {
        v[1] += term;
      }
    }
    for (int32_t c = threadIdx.x; c < D; c += blockDim.x) {
      v[2] += a.ti[int64_t(t.item) * D + c] * a.pt[int64_t(u) * D + c];
    }
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const double qf = q[j] * f[j];
      v[3] += qf;
      v[4] += qf * mu[j];
    }
    block_sums<5>(v, scratch);
    double alpha_phi = 1, alpha_psi = 0;
    if (a.layout.attention) {
      alpha_phi = math::sigmoid(a.params[a.layout.b2[0]] + v[0]);
      alpha_psi = math::sigmoid(a.params[a.layout.b2[1]] + v[1]);
    }
    const double diff = alpha_phi - alpha_psi;
    const double s = a.ws.base[r] + v[2] + alpha_psi * v[3] + diff * v[4];
    const math::MaskTermLoss<double> b = math::mask_term_loss(s, t.c, t.positive);
    loss += b.loss;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const double fj = f[j];
      acc[j] += b.delta * (alpha_psi + diff * mu[j]) * fj;
      me[j] += b.delta * q[j] * diff * fj;
    }
    if (threadIdx.x == 0) {
      stats[0] = t.c;
      stats[1] = alpha_phi;
      stats[2] = alpha_psi;
      stats[3] = b.delta;
      stats[4] = b.delta2;
      sums[0] = v[3];
      sums[1] = v[4];
    }
  }
  if (threadIdx.x == 0) a.ws.row_loss[r] = loss;
}

// L^e (rows in order) and L_ERM = (1/E) sum_e L^e; one block.
__global__ void __launch_bounds__(kFlatThreads) env_loss_kernel(const MaskStepArgs a) {
  for (int32_t e = threadIdx.x; e < a.envs; e += blockDim.x) {
    double s = 0;
    for (int64_t r = a.env_offsets[e]; r < a.env_offsets[e + 1]; ++r) s += a.ws.row_loss[r];
    a.loss_env[e] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double l = 0;
    for (int32_t e = 0; e < a.envs; ++e) l += a.loss_env[e] / double(a.envs);
    a.scalars[0] = l;
  }
}

// Per column j: Gbar, V = (1/E) sum_e (G_e - Gbar)^2, R_e = (4/E) m^2 V (G_e - Gbar), and the
// column's share of L_IRM = sum (V m)^2 and of g_I's direct part 2 m V^2.
__global__ void __launch_bounds__(kFlatThreads) variance_kernel(const MaskStepArgs a) {
  const int32_t E = a.envs, D = a.layout.D;
  const int64_t d = a.layout.d, plane = int64_t(D) * d;
  const double inv_E = 1.0 / double(E);
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < d;
       j += int64_t(gridDim.x) * blockDim.x) {
    const double m = a.mask[j];
    double lirm = 0, gi = 0;
    for (int32_t k = 0; k < D; ++k) {
      const int64_t x = int64_t(k) * d + j;
      double gbar = 0;
      for (int32_t e = 0; e < E; ++e) gbar += a.G[e * plane + x] * inv_E;
      double v = 0;
      for (int32_t e = 0; e < E; ++e) {
        const double dev = a.G[e * plane + x] - gbar;
        v += dev * dev * inv_E;
      }
      a.V[x] = v;
      lirm += (v * m) * (v * m);
      gi += 2.0 * m * v * v;
      for (int32_t e = 0; e < E; ++e) {
        a.ws.radj[e * plane + x] = 4.0 * inv_E * m * m * v * (a.G[e * plane + x] - gbar);
      }
    }
    a.ws.lirm_col[j] = lirm;
    a.ws.gi_direct[j] = gi;
  }
}

// Pass 2 (block per row): gamma_t = delta2_t <ru, h_t>; the row's sum_t gamma_t h_t, sum_t
// delta_t h_t / E, the g_I piece sum_t a_t (alpha_phi - alpha_psi) f_t with the IRM h-adjoint
// a_t = gamma_t q + delta_t ru, and each term's dJ/dalpha pieces (ERM and IRM apart).
template <class F>
__global__ void __launch_bounds__(kRowThreads)
    pass2_kernel(const MaskStepArgs a, int32_t tpr, const F* __restrict__ features) {
  const double neg_scale = a.settings.neg_weight / double(a.n_negatives);
  __shared__ double scratch[kRowWarps * 2];
  const int64_t r = blockIdx.x;
  const int32_t e = env_of_row(a, r);
  const int64_t d = a.layout.d;
  const double inv_E = 1.0 / double(a.envs);
  const double* q = a.ws.q + r * d;
  const double* ru = a.ws.ru + r * d;
  const double* mu = a.ws.gate + int64_t(e) * d;
  double* kg = a.ws.row_vec + r * d;
  double* ke = a.ws.row_vec_erm + r * d;
  double* mi = a.ws.row_mask_i + r * d;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) kg[j] = ke[j] = mi[j] = 0;
  double gsum = 0, dsum = 0;
  for (int32_t slot = 0; slot < tpr; ++slot) {
    const double* stats = a.ws.term_stats + (r * tpr + slot) * 5;
    double* da = a.ws.term_dalpha + (r * tpr + slot) * 4;
    if (stats[0] == 0) {
      if (threadIdx.x == 0) da[0] = da[1] = da[2] = da[3] = 0;
      continue;
    }
    const int32_t item = term_identity(a, neg_scale, r, slot).item;
    const F* f = features + int64_t(item) * d;
    const double alpha_phi = stats[1], alpha_psi = stats[2], delta = stats[3];
    const double diff = alpha_phi - alpha_psi;
    double v[2] = {0, 0};  // sum ru f, sum ru mu f
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const double rf = ru[j] * f[j];
      v[0] += rf;
      v[1] += rf * mu[j];
    }
    block_sums<2>(v, scratch);
    const double gamma = stats[4] * (alpha_psi * v[0] + diff * v[1]);
    gsum += gamma;
    dsum += delta * inv_E;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const double fj = f[j];
      const double h = (alpha_psi + diff * mu[j]) * fj;
      kg[j] += gamma * h;
      ke[j] += delta * inv_E * h;
      mi[j] += (gamma * q[j] + delta * ru[j]) * diff * fj;
    }
    if (threadIdx.x == 0) {
      const double* sums = a.ws.term_sums + (r * tpr + slot) * 2;
      const double qf = sums[0], qmf = sums[1];
      da[0] = delta * inv_E * qmf;                         // dL_ERM / dalpha_phi
      da[1] = delta * inv_E * (qf - qmf);                  // dL_ERM / dalpha_psi
      da[2] = gamma * qmf + delta * v[1];                  // dL_IRM / dalpha_phi
      da[3] = gamma * (qf - qmf) + delta * (v[0] - v[1]);  // dL_IRM / dalpha_psi
    }
  }
  if (threadIdx.x == 0) {
    a.ws.row_gsum[r] = gsum;
    a.ws.row_dsum[r] = dsum;
  }
}

// g_E, g_I per column, in two steps: block (column block, row chunk) sums its chunk's rows in
// order, each gated by its environment's open mask, into col_partial; then per column the chunks
// in order (plus g_I's direct part). Enough blocks to fill the GPU at any d.
__global__ void __launch_bounds__(kFlatThreads) columns_partial_kernel(const MaskStepArgs a) {
  const int64_t d = a.layout.d;
  const int64_t col_blocks = (d + blockDim.x - 1) / blockDim.x;
  const int64_t chunk = blockIdx.x / col_blocks;
  const int64_t j = (blockIdx.x % col_blocks) * blockDim.x + threadIdx.x;
  if (j >= d) return;
  const double inv_E = 1.0 / double(a.envs);
  const int64_t r0 = a.rows * chunk / kColumnChunks, r1 = a.rows * (chunk + 1) / kColumnChunks;
  double gE = 0, gI = 0;
  int32_t e = r0 < r1 ? env_of_row(a, r0) : 0;
  for (int64_t r = r0; r < r1; ++r) {
    while (a.env_offsets[e + 1] <= r) ++e;
    const double op = a.ws.open[int64_t(e) * d + j];
    gE += op * a.ws.row_mask_e[r * d + j] * inv_E;
    gI += op * a.ws.row_mask_i[r * d + j];
  }
  a.ws.col_partial[(chunk * 2) * d + j] = gE;
  a.ws.col_partial[(chunk * 2 + 1) * d + j] = gI;
}

__global__ void __launch_bounds__(kFlatThreads) columns_kernel(const MaskStepArgs a) {
  const int64_t d = a.layout.d;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < d;
       j += int64_t(gridDim.x) * blockDim.x) {
    double gE = 0, gI = a.ws.gi_direct[j];
    for (int c = 0; c < kColumnChunks; ++c) {
      gE += a.ws.col_partial[(c * 2) * d + j];
      gI += a.ws.col_partial[(c * 2 + 1) * d + j];
    }
    a.g_E[j] = gE;
    a.g_I[j] = gI;
  }
}

// One block: L_IRM, the normalisation, w_ERM (Eq. 17-18), the mask direction and step (Eq. 19).
__global__ void __launch_bounds__(kRowThreads) pareto_kernel(const MaskStepArgs a) {
  __shared__ double scratch[kRowWarps * 3];
  const int64_t d = a.layout.d;
  const MaskSettings& S = a.settings;
  double v[3] = {0, 0, 0};  // L_IRM, |g_E|^2, |g_I|^2
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    v[0] += a.ws.lirm_col[j];
    v[1] += a.g_E[j] * a.g_E[j];
    v[2] += a.g_I[j] * a.g_I[j];
  }
  block_sums<3>(v, scratch);
  const double L_ERM = a.scalars[0], L_IRM = v[0];
  double sE = 1, sI = 1;  // the directions are g / s
  // The normalisation state: the run's (updated here) or, for a single step, the settings'.
  math::ParetoScale scale = S.scale;
  if (a.pareto_state) {
    scale.rms_E = a.pareto_state[0];
    scale.rms_I = a.pareto_state[1];
    scale.steps = int64_t(a.pareto_state[2]);
  }
  math::pareto_scales(S.normalize, v[1], v[2], L_ERM, L_IRM, d, scale, sE, sI);
  double wE = 1, wI = 0;
  if (S.objective == MaskObjective::kPareto) {
    double w[2] = {0, 0};  // num, den
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const double gE = a.g_E[j] / sE, gI = a.g_I[j] / sI;
      w[0] += (gI - gE) * gI;
      w[1] += (gE - gI) * (gE - gI);
    }
    block_sums<2>(w, scratch);
    wE = math::pareto_weight_from_sums(w[0], w[1]);
    wI = 1 - wE;
  } else if (S.objective == MaskObjective::kIrm) {
    wE = 0;
    wI = 1;
  } else if (S.objective == MaskObjective::kFixed) {
    wI = S.fixed_alpha;
  }
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const double g =
        math::mask_direction(wE, a.g_E[j] / sE, wI, a.g_I[j] / sI, S.lambda, a.mask[j], S.center);
    a.mask_grad[j] = g;
    a.mask_new[j] = math::mask_sgd(a.mask[j], S.step, g);
  }
  if (threadIdx.x == 0) {
    a.scalars[1] = L_IRM;
    a.scalars[2] = wE;
    a.scalars[3] = wI;
    a.scalars[4] = scale.rms_E;
    a.scalars[5] = scale.rms_I;
    a.scalars[6] = double(scale.steps);
    if (a.pareto_state) {
      a.pareto_state[0] = scale.rms_E;
      a.pareto_state[1] = scale.rms_I;
      a.pareto_state[2] = double(scale.steps);
    }
  }
}

// combined (rows, d) = wE row_vec_erm + wI row_vec (into row_mask_e, free after the columns);
// dJ/dW starts at 2 gamma_w W (the GEMM adds the rest).
__global__ void __launch_bounds__(kFlatThreads) combine_kernel(const MaskStepArgs a) {
  const double wE = a.scalars[2], wI = a.scalars[3];
  const int64_t d = a.layout.d, n = a.rows * d, nW = int64_t(a.layout.D) * d;
  const double l2 = 2 * a.settings.gamma_w;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t x = first; x < n; x += stride) {
    a.ws.row_mask_e[x] = wE * a.ws.row_vec_erm[x] + wI * a.ws.row_vec[x];
  }
  for (int64_t x = first; x < nW; x += stride) {
    a.grad[a.layout.W + x] = l2 * a.params[a.layout.W + x];
  }
}

// dJ/db_k (block k): sum_r (wE dsum_r + wI gsum_r) Pf_{u_r, k} + 2 gamma_w b_k, the rows
// strided over the block and summed in a fixed order.
__global__ void __launch_bounds__(kRowThreads) bias_grad_kernel(const MaskStepArgs a) {
  __shared__ double scratch[kRowWarps];
  const int32_t k = blockIdx.x, D = a.layout.D;
  const double wE = a.scalars[2], wI = a.scalars[3];
  double v[1] = {0};
  for (int64_t r = threadIdx.x; r < a.rows; r += blockDim.x) {
    v[0] += (wE * a.ws.row_dsum[r] + wI * a.ws.row_gsum[r]) * a.pf[int64_t(a.users[r]) * D + k];
  }
  block_sums<1>(v, scratch);
  if (threadIdx.x == 0) {
    a.grad[a.layout.b + k] = v[0] + 2 * a.settings.gamma_w * a.params[a.layout.b + k];
  }
}

// The attention MLPs' backward per row (thread per hidden unit of both MLPs): dlogit_k =
// dJ/dalpha_k alpha_k (1 - alpha_k); the row's dJ/dw2, dJ/db2, dJ/d(pre) of the user half, and
// the item half's dJ/d(pre) is summed per item by attention_item_kernel.
__global__ void __launch_bounds__(kRowThreads)
    attention_backward_kernel(const MaskStepArgs a, int32_t tpr) {
  const double neg_scale = a.settings.neg_weight / double(a.n_negatives);
  const int64_t r = blockIdx.x;
  const int32_t H = a.layout.H;
  const double wE = a.scalars[2], wI = a.scalars[3];
  for (int32_t x = threadIdx.x; x < 2 * H + 2; x += blockDim.x) {
    if (x >= 2 * H) {  // dJ/db2_k
      const int k = x - 2 * H;
      double db2 = 0;
      for (int32_t slot = 0; slot < tpr; ++slot) {
        const double* stats = a.ws.term_stats + (r * tpr + slot) * 5;
        if (stats[0] == 0) continue;
        const double* da = a.ws.term_dalpha + (r * tpr + slot) * 4;
        const double al = stats[1 + k];
        db2 += (wE * da[k] + wI * da[2 + k]) * al * (1 - al);
      }
      a.ws.row_db2[r * 2 + k] = db2;
      continue;
    }
    const int k = x / H, h = x % H;
    const double w2 = a.params[a.layout.w2[k] + h];
    const double up = a.ws.user_pre[r * 2 * H + x];
    double dw2 = 0, dpre_row = 0;
    for (int32_t slot = 0; slot < tpr; ++slot) {
      const double* stats = a.ws.term_stats + (r * tpr + slot) * 5;
      if (stats[0] == 0) continue;
      const double* da = a.ws.term_dalpha + (r * tpr + slot) * 4;
      const double al = stats[1 + k];
      const double dlogit = (wE * da[k] + wI * da[2 + k]) * al * (1 - al);
      const int32_t item = term_identity(a, neg_scale, r, slot).item;
      const double pre = up + a.ws.item_pre[(int64_t(k) * a.n_items + item) * H + h];
      const double hid = pre > 0 ? pre : 0.0;
      dw2 += dlogit * hid;
      dpre_row += hid > 0 ? dlogit * w2 : 0.0;
    }
    a.ws.row_dw2[r * 2 * H + x] = dw2;
    a.ws.row_dpre[r * 2 * H + x] = dpre_row;
  }
}

// The item half of dJ/d(pre-activation), summed per item in a fixed order (no atomics): every
// term's key is its item (INT32_MAX when skipped); after a stable sort by key, block p, when it
// starts a run of equal keys, sums the run's terms in term order for each hidden unit of both
// MLPs (recomputing each term's hidden activation) into item_dpre.
__global__ void __launch_bounds__(kFlatThreads)
    term_item_keys_kernel(const MaskStepArgs a, int32_t tpr, int32_t* keys, int32_t* idx) {
  const double neg_scale = a.settings.neg_weight / double(a.n_negatives);
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= a.rows * tpr) return;
  const int64_t r = t / tpr;
  const int32_t slot = int32_t(t % tpr);
  keys[t] = a.ws.term_stats[t * 5] == 0 ? INT32_MAX : term_identity(a, neg_scale, r, slot).item;
  idx[t] = int32_t(t);
}

__global__ void __launch_bounds__(kRowThreads)
    attention_item_kernel(const MaskStepArgs a, int32_t tpr, const int32_t* keys,
                          const int32_t* idx) {
  const int64_t p = blockIdx.x, n = a.rows * tpr;
  const int32_t item = keys[p];
  if (item == INT32_MAX || (p > 0 && keys[p - 1] == item)) return;  // the same in every thread
  const int32_t H = a.layout.H;
  const double wE = a.scalars[2], wI = a.scalars[3];
  for (int32_t x = threadIdx.x; x < 2 * H; x += blockDim.x) {
    const int k = x / H, h = x % H;
    const double w2 = a.params[a.layout.w2[k] + h];
    const double ip = a.ws.item_pre[(int64_t(k) * a.n_items + item) * H + h];
    double acc = 0;
    for (int64_t q = p; q < n && keys[q] == item; ++q) {
      const int64_t t = idx[q], r = t / tpr;
      const double* stats = a.ws.term_stats + t * 5;
      const double* da = a.ws.term_dalpha + t * 4;
      const double al = stats[1 + k];
      const double dlogit = (wE * da[k] + wI * da[2 + k]) * al * (1 - al);
      const double pre = a.ws.user_pre[r * 2 * H + x] + ip;
      if (pre > 0) acc += dlogit * w2;
    }
    a.ws.item_dpre[(int64_t(k) * a.n_items + item) * H + h] = acc;
  }
}

// dJ/db1, dJ/dw2 (block x < 2H: hidden unit x of both MLPs) and dJ/db2 (blocks 2H, 2H + 1):
// the rows' pieces strided over the block, summed in a fixed order.
__global__ void __launch_bounds__(kRowThreads) attention_sums_kernel(const MaskStepArgs a) {
  __shared__ double scratch[kRowWarps * 2];
  const int32_t H = a.layout.H, x = blockIdx.x;
  double v[2] = {0, 0};
  if (x >= 2 * H) {
    for (int64_t r = threadIdx.x; r < a.rows; r += blockDim.x)
      v[0] += a.ws.row_db2[r * 2 + x - 2 * H];
  } else {
    for (int64_t r = threadIdx.x; r < a.rows; r += blockDim.x) {
      v[0] += a.ws.row_dpre[r * 2 * H + x];
      v[1] += a.ws.row_dw2[r * 2 * H + x];
    }
  }
  block_sums<2>(v, scratch);
  if (threadIdx.x != 0) return;
  if (x >= 2 * H) {
    a.grad[a.layout.b2[x - 2 * H]] = v[0];
  } else {
    const int k = x / H, h = x % H;
    a.grad[a.layout.b1[k] + h] = v[0];
    a.grad[a.layout.w2[k] + h] = v[1];
  }
}

cudaError_t fill(double* out, int64_t n, double value, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  PAINVRL_LAUNCH(fill_kernel, flat_blocks(n), kFlatThreads, stream, out, n, value);
  return cudaGetLastError();
}

}  // namespace

namespace {
thread_local const char* failed_launch = "";  // what the last failing call launched
}  // namespace

const char* mask_step_failed_launch() { return failed_launch; }

// Returns a failing call's error, recording what it launched (the kernel's name, or the call).
#define PAINVRL_STEP_NAMED(name, call)      \
  do {                                      \
    const cudaError_t step_error_ = (call); \
    if (step_error_ != cudaSuccess) {       \
      failed_launch = name;                 \
      return step_error_;                   \
    }                                       \
  } while (0)
#define PAINVRL_STEP(call) PAINVRL_STEP_NAMED(#call, call)
#define PAINVRL_STEP_LAUNCH(kernel, grid, block, stream, ...) \
  do {                                                        \
    PAINVRL_LAUNCH(kernel, grid, block, stream, __VA_ARGS__); \
    PAINVRL_STEP_NAMED(#kernel, cudaGetLastError());          \
  } while (0)

cudaError_t run_mask_step(const MaskStepArgs& a, const DeviceGemm& gemm,
                          const DeviceSortPairs& sort, cudaStream_t stream) {
  const MaskLayout& L = a.layout;
  const int32_t E = a.envs, D = L.D, H = L.H, tpr = mask_terms_per_row(a);
  const int64_t d = L.d, rows = a.rows;
  if (rows <= 0 || E <= 0 || D <= 0 || d <= 0 || (L.attention && H <= 0)) {
    return cudaErrorInvalidValue;
  }
  const MaskWorkspace& w = a.ws;
  PAINVRL_STEP_LAUNCH(gate_kernel, flat_blocks(int64_t(E) * d), kFlatThreads, stream, a);
  PAINVRL_STEP_LAUNCH(rows_kernel, rows, kRowThreads, stream, a);
  if (L.attention) {  // item_pre_k (I, H) = b1_k + T w1i_k[:, :D]^T + F w1i_k[:, D:]^T
    for (int k = 0; k < 2; ++k) {
      double* out = w.item_pre + int64_t(k) * a.n_items * H;
      PAINVRL_STEP_LAUNCH(broadcast_kernel, flat_blocks(int64_t(a.n_items) * H), kFlatThreads,
                          stream, a.params + L.b1[k], int64_t(H), int64_t(a.n_items), out);
      const double* w1i = a.params + L.w1i[k];
      PAINVRL_STEP(gemm({false, true, a.n_items, H, D, 1.0, a.ti, D, w1i, D + d, 1.0, out, H}));
      PAINVRL_STEP(
          gemm({false, true, a.n_items, H, d, 1.0, a.features, d, w1i + D, D + d, 1.0, out, H}));
    }
  }
  // q (rows, d) = Pf_rows (rows, D) W (D, d)
  PAINVRL_STEP(gemm({false, false, rows, d, D, 1.0, w.pf_rows, D, a.params + L.W, d, 0.0, w.q, d}));
  if (a.features_f32) {
    PAINVRL_STEP_LAUNCH(pass1_kernel<float>, rows, kRowThreads, stream, a, tpr, a.features_f32);
  } else {
    PAINVRL_STEP_LAUNCH(pass1_kernel<double>, rows, kRowThreads, stream, a, tpr, a.features);
  }
  PAINVRL_STEP_LAUNCH(env_loss_kernel, 1, kFlatThreads, stream, a);
  const int64_t plane = int64_t(D) * d;
  for (int32_t e = 0; e < E; ++e) {  // G_e (D, d) = Pf_rows_e^T row_vec_e
    const int64_t r0 = a.env_offsets_host[e], n = a.env_offsets_host[e + 1] - r0;
    if (n == 0) {
      PAINVRL_STEP(fill(a.G + e * plane, plane, 0.0, stream));
      continue;
    }
    PAINVRL_STEP(gemm({true, false, D, d, n, 1.0, w.pf_rows + r0 * D, D, w.row_vec + r0 * d, d, 0.0,
                       a.G + e * plane, d}));
  }
  PAINVRL_STEP_LAUNCH(variance_kernel, flat_blocks(d), kFlatThreads, stream, a);
  for (int32_t e = 0; e < E; ++e) {  // ru_e (n, d) = Pf_rows_e R_e
    const int64_t r0 = a.env_offsets_host[e], n = a.env_offsets_host[e + 1] - r0;
    if (n == 0) continue;
    PAINVRL_STEP(gemm({false, false, n, d, D, 1.0, w.pf_rows + r0 * D, D, w.radj + e * plane, d,
                       0.0, w.ru + r0 * d, d}));
  }
  if (a.features_f32) {
    PAINVRL_STEP_LAUNCH(pass2_kernel<float>, rows, kRowThreads, stream, a, tpr, a.features_f32);
  } else {
    PAINVRL_STEP_LAUNCH(pass2_kernel<double>, rows, kRowThreads, stream, a, tpr, a.features);
  }
  PAINVRL_STEP_LAUNCH(columns_partial_kernel,
                      ((d + kFlatThreads - 1) / kFlatThreads) * kColumnChunks, kFlatThreads, stream,
                      a);
  PAINVRL_STEP_LAUNCH(columns_kernel, flat_blocks(d), kFlatThreads, stream, a);
  PAINVRL_STEP_LAUNCH(pareto_kernel, 1, kRowThreads, stream, a);
  PAINVRL_STEP_LAUNCH(combine_kernel, flat_blocks(rows * d), kFlatThreads, stream, a);
  PAINVRL_STEP_LAUNCH(bias_grad_kernel, D, kRowThreads, stream, a);
  // dJ/dW (D, d) += Pf_rows^T (D, rows) combined (rows, d)
  PAINVRL_STEP(
      gemm({true, false, D, d, rows, 1.0, w.pf_rows, D, w.row_mask_e, d, 1.0, a.grad + L.W, d}));
  if (L.attention) {
    PAINVRL_STEP(fill(w.item_dpre, 2 * int64_t(a.n_items) * H, 0.0, stream));
    PAINVRL_STEP_LAUNCH(attention_backward_kernel, rows, kRowThreads, stream, a, tpr);
    const int64_t n_terms = rows * tpr;
    int32_t *keys_in = w.term_sort, *idx_in = keys_in + n_terms, *keys = idx_in + n_terms,
            *idx = keys + n_terms;
    PAINVRL_STEP_LAUNCH(term_item_keys_kernel, (n_terms + kFlatThreads - 1) / kFlatThreads,
                        kFlatThreads, stream, a, tpr, keys_in, idx_in);
    PAINVRL_STEP(sort(keys_in, keys, idx_in, idx, n_terms));
    PAINVRL_STEP_LAUNCH(attention_item_kernel, n_terms, kRowThreads, stream, a, tpr, keys, idx);
    PAINVRL_STEP_LAUNCH(attention_sums_kernel, 2 * H + 2, kRowThreads, stream, a);
    for (int k = 0; k < 2; ++k) {
      // dJ/dw1u_k (H, 2D) = row_dpre_k^T (H, rows) [Pt_u, Pf_u] (rows, 2D)
      PAINVRL_STEP(gemm({true, false, H, 2 * D, rows, 1.0, w.row_dpre + int64_t(k) * H, 2 * H,
                         w.ptpf_rows, 2 * D, 0.0, a.grad + L.w1u[k], 2 * D}));
      // dJ/dw1i_k (H, D + d) = item_dpre_k^T (H, I) [T | F] (I, D + d), in two column blocks
      const double* idp = w.item_dpre + int64_t(k) * a.n_items * H;
      PAINVRL_STEP(gemm(
          {true, false, H, D, a.n_items, 1.0, idp, H, a.ti, D, 0.0, a.grad + L.w1i[k], D + d}));
      PAINVRL_STEP(gemm({true, false, H, d, a.n_items, 1.0, idp, H, a.features, d, 0.0,
                         a.grad + L.w1i[k] + D, D + d}));
    }
  }
  return cudaSuccess;
}

namespace {

// Sets *halt when a scalar, a gradient or the mask step is not finite (before the update, which
// then does nothing, as the CPU loop stops before it applies the step).
__global__ void __launch_bounds__(kFlatThreads) mask_check_kernel(const MaskUpdateArgs a) {
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  bool bad = false;
  if (first < 2) bad = !isfinite(a.scalars[first]);
  for (int64_t k = first; k < a.n_params; k += stride) bad |= !isfinite(a.grad[k]);
  for (int64_t j = first; j < a.d; j += stride) {
    bad |= !isfinite(a.mask_grad[j]) || !isfinite(a.mask_new[j]);
  }
  if (bad && *a.halt == 0) {  // every writer stores the same values
    *a.halt = 1;
    if (a.halt_step) *a.halt_step = a.step;
  }
}

__global__ void __launch_bounds__(kFlatThreads) mask_update_kernel(const MaskUpdateArgs a) {
  if (*a.halt) return;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t k = first; k < a.n_params; k += stride) {
    math::adam_update(a.params[k], a.adam_m[k], a.adam_v[k], a.grad[k], 0.0, a.param_step);
  }
  for (int64_t j = first; j < a.d; j += stride) {
    if (a.mask_adam) {
      double m = a.mask[j];
      math::adam_update(m, a.mask_m[j], a.mask_v[j], a.mask_grad[j], 0.0, a.mask_adam_step);
      a.mask[j] = m < 0 ? 0.0 : (m > 1 ? 1.0 : m);
    } else {
      a.mask[j] = a.mask_new[j];
    }
  }
}

// The step's trace record: w_ERM, L_ERM, L_IRM and the mask's mean after the update (one block).
__global__ void __launch_bounds__(kRowThreads) mask_trace_kernel(const MaskUpdateArgs a) {
  __shared__ double scratch[kRowWarps];
  double v[1] = {0};
  for (int64_t j = threadIdx.x; j < a.d; j += blockDim.x) v[0] += a.mask[j];
  block_sums<1>(v, scratch);
  if (threadIdx.x == 0) {
    a.trace_row[0] = a.scalars[2];
    a.trace_row[1] = a.scalars[0];
    a.trace_row[2] = a.scalars[1];
    a.trace_row[3] = v[0] / double(a.d > 0 ? a.d : 1);
  }
}

__global__ void __launch_bounds__(kFlatThreads) mask_batch_kernel(const MaskBatchArgs a) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= a.rows) return;
  int32_t e = 0;
  while (e + 1 < a.envs && a.batch_offsets[e + 1] <= r) ++e;
  const int64_t i = r - a.batch_offsets[e];
  const int64_t n = a.pair_offsets[e + 1] - a.pair_offsets[e];
  const int32_t p = a.env_pairs[a.pair_offsets[e] + (a.step * a.mask_batch + i) % n];
  a.users[r] = a.train_user[p];
  a.items[r] = a.train_item[p];
}

__global__ void __launch_bounds__(kFlatThreads)
    mask_noise_kernel(math::PhiloxKey key, uint32_t epoch, uint32_t step, int32_t envs, int64_t d,
                      float sigma, double* noise) {
  const int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (x >= int64_t(envs) * d) return;
  noise[x] = math::mask_noise(key, epoch, step, uint32_t(x / d), uint64_t(x % d), sigma);
}

}  // namespace

cudaError_t launch_mask_batch(const MaskBatchArgs& a, cudaStream_t stream) {
  if (a.rows <= 0) return cudaSuccess;
  PAINVRL_LAUNCH(mask_batch_kernel, (a.rows + kFlatThreads - 1) / kFlatThreads, kFlatThreads,
                 stream, a);
  return cudaGetLastError();
}

cudaError_t launch_mask_noise(math::PhiloxKey key, uint32_t epoch, uint32_t step, int32_t envs,
                              int64_t d, float sigma, double* noise, cudaStream_t stream) {
  const int64_t n = int64_t(envs) * d;
  if (n <= 0) return cudaSuccess;
  PAINVRL_LAUNCH(mask_noise_kernel, (n + kFlatThreads - 1) / kFlatThreads, kFlatThreads, stream,
                 key, epoch, step, envs, d, sigma, noise);
  return cudaGetLastError();
}

cudaError_t launch_mask_update(const MaskUpdateArgs& a, cudaStream_t stream) {
  PAINVRL_STEP_LAUNCH(mask_check_kernel, flat_blocks(std::max(a.n_params, a.d)), kFlatThreads,
                      stream, a);
  PAINVRL_STEP_LAUNCH(mask_update_kernel, flat_blocks(std::max(a.n_params, a.d)), kFlatThreads,
                      stream, a);
  PAINVRL_STEP_LAUNCH(mask_trace_kernel, 1, kRowThreads, stream, a);
  return cudaSuccess;
}

cudaError_t run_mask_train_step(const MaskStepArgs& a, MaskTrainStep& t, const DeviceGemm& gemm,
                                const DeviceSortPairs& sort, cudaStream_t stream) {
  const uint32_t step = uint32_t(t.update.step);
  t.batch.step = t.update.step;
  PAINVRL_STEP(launch_mask_batch(t.batch, stream));
  PAINVRL_STEP(launch_sample_negatives(t.neg_key, t.epoch, step, a.rows, a.n_negatives,
                                       uint32_t(a.n_items), t.negatives, stream));
  PAINVRL_STEP(
      launch_mask_noise(t.noise_key, t.epoch, step, a.envs, a.layout.d, t.sigma, t.noise, stream));
  PAINVRL_STEP(run_mask_step(a, gemm, sort, stream));
  t.update.grad = a.grad;
  t.update.mask_grad = a.mask_grad;
  t.update.mask_new = a.mask_new;
  t.update.scalars = a.scalars;
  return launch_mask_update(t.update, stream);
}

#undef PAINVRL_STEP_LAUNCH
#undef PAINVRL_STEP
#undef PAINVRL_STEP_NAMED

}  // namespace painvrl::PAINVRL_KERNEL_NS
