// Launchers of the CUDA backend's kernels (kernels/*.cu). Each takes device pointers, its stream
// last, returns the launch error and never synchronises (the CUB convention). Shapes are in the
// comments; all tables are row-major float32 and all indices int32.
#pragma once
// Under PAINVRL_KERNEL_EMULATION (tests/kernel_emulation_test.cpp) the kernels compile with g++
// against the host emulation, in their own namespace so that they never stand in for the real
// ones at link time.
#ifdef PAINVRL_KERNEL_EMULATION
#include "painvrl/cuda/emulation.h"
#define PAINVRL_KERNEL_NS cuda_emulated
#else
#include <cuda_runtime.h>
#define PAINVRL_KERNEL_NS cuda
#define PAINVRL_LAUNCH(kernel, grid, block, stream, ...) \
  kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif

#include <cstdint>
#include <functional>

#include "painvrl/backend/model.h"
#include "painvrl/math/adam.h"
#include "painvrl/math/philox.h"

namespace painvrl::PAINVRL_KERNEL_NS {

// negatives (rows, N)[r][n] = math::negative_item(key, epoch, step, r, n, n_items): exactly the
// CPU backend's draws for the same seed (kernels/sampling.cu).
cudaError_t launch_sample_negatives(math::PhiloxKey key, uint32_t epoch, uint32_t step,
                                    int64_t rows, int32_t n_negatives, uint32_t n_items,
                                    int32_t* negatives, cudaStream_t stream);

// The same for rows of several models in one batch (HIM's environment models): row r draws with
// keys[row_key[r]] as row row_index[r] of that model's own batch (kernels/sampling.cu).
cudaError_t launch_sample_negatives_rows(const math::PhiloxKey* keys, const int32_t* row_key,
                                         const int32_t* row_index, uint32_t epoch, uint32_t step,
                                         int64_t rows, int32_t n_negatives, uint32_t n_items,
                                         int32_t* negatives, cudaStream_t stream);

// rows (n_rows, width)[r][offset + c] = vec[c] for c < D: the bias under W f_i before the GEMM adds
// F W^T (kernels/ultragcn_loss.cu).
cudaError_t launch_broadcast_rows(const float* vec, int32_t dim, int64_t n_rows, int64_t width,
                                  float* rows, cudaStream_t stream);

// The fused UltraGCN step for one batch (kernels/ultragcn_loss.cu; DESIGN.md section 2):
//   per row r (u, i): the positive, N negatives and K item neighbours of i, each term scored
//   s = <Pt_u, T_j> (+ <Pf_u, X_j>), its loss and dL/ds (math::bce_term), and the gradients
//   dPt_u, dPf_u (summed in registers, then added by atomics), dT_j, dX_j (atomics). A row's
//   terms are cut into term_chunks contiguous ranges, one warp each (1: a warp per row; more
//   when the batch alone would leave the GPU idle); D <= 256.
struct FusedLossArgs {
  int32_t dim = 0;                        // D
  const float* pt = nullptr;              // (n_users, D)
  const float* pf = nullptr;              // (n_users, D), or null: the ID-only model
  const float* t = nullptr;               // (n_items, D)
  const float* x = nullptr;               // (n_items, D) W f_j + b, null without content
  const float* beta_user = nullptr;       // (n_users,)
  const float* beta_item = nullptr;       // (n_items,)
  const int32_t* ii_neighbors = nullptr;  // (n_items, ii_k)
  const float* ii_weights = nullptr;      // (n_items, ii_k)
  int32_t ii_k = 0;                       // row stride of the neighbour tables
  int32_t k_used = 0;                     // neighbours per row used: ii_k, or 0 when kappa = 0
  const int32_t* users = nullptr;         // (rows,)
  const int32_t* items = nullptr;         // (rows,)
  const int32_t* negatives = nullptr;     // (rows, N)
  int64_t rows = 0;
  int32_t n_negatives = 0;  // N
  float w1 = 1, w2 = 0, w3 = 1, w4 = 0;
  float neg_scale = 1;  // neg_weight / N
  float kappa = 0;
  // HIM's E environment models in one launch: x (n_items, x_stride = E * D) holds every model's
  // W_e f_j + b_e side by side and row r uses block row_env[r]; grad_x has x's shape.
  const int32_t* row_env = nullptr;  // (rows,) or null: one model
  int32_t x_stride = 0;              // row stride of x and grad_x; 0: D
  // Gradients, each added to where its pointer is set (a frozen table's stays null).
  float* grad_pt = nullptr;   // (n_users, D)
  float* grad_pf = nullptr;   // (n_users, D) (content)
  float* grad_t = nullptr;    // (n_items, D)
  float* grad_x = nullptr;    // (n_items, x_stride) (content)
  int32_t term_chunks = 1;    // warps per row
  float* row_loss = nullptr;  // (rows * term_chunks, 2) written: main, item-item (unweighted)
  const int* halt = nullptr;  // optional device flag: nonzero, the kernel does nothing
  // Deterministic mode (all three set): no atomics. Each term's coefficient (dL/ds, times kappa
  // for a neighbour) and the key of the gradient row it adds to (j * blocks + block, blocks =
  // x_stride / D, block = row_env; INT32_MAX for a skipped padding term) are written, and each
  // warp's user gradient; launch_fused_loss_reduce then adds them in a fixed order.
  float* term_coef = nullptr;       // (rows, terms) written
  int32_t* term_key = nullptr;      // (rows, terms) written
  float* warp_user_grad = nullptr;  // (rows * term_chunks, 2 D) written: dPt_u | dPf_u
};
constexpr int32_t kFusedLossMaxDim = 256;
// Warps per row for a batch (below).
inline int32_t fused_loss_term_chunks(int64_t rows, int32_t terms);

// The arguments that come from the loss settings, the item graph and the batch: the term weights
// (neg_scale = neg_weight / N), the neighbours used (none when kappa = 0) and the term chunks.
// The caller sets the tables it reads (pt, pf, t, x), the gradients and row_loss.
inline FusedLossArgs fused_loss_args(const LossSettings& S, int32_t dim, const float* beta_user,
                                     const float* beta_item, const int32_t* ii_neighbors,
                                     const float* ii_weights, int32_t ii_k, const int32_t* users,
                                     const int32_t* items, const int32_t* negatives, int64_t rows,
                                     int32_t n_negatives) {
  FusedLossArgs a;
  a.dim = dim;
  a.beta_user = beta_user;
  a.beta_item = beta_item;
  a.ii_neighbors = ii_neighbors;
  a.ii_weights = ii_weights;
  a.ii_k = ii_k;
  a.k_used = S.kappa != 0 ? ii_k : 0;
  a.users = users;
  a.items = items;
  a.negatives = negatives;
  a.rows = rows;
  a.n_negatives = n_negatives;
  a.w1 = float(S.w1);
  a.w2 = float(S.w2);
  a.w3 = float(S.w3);
  a.w4 = float(S.w4);
  a.neg_scale = n_negatives > 0 ? float(S.neg_weight / n_negatives) : 0.f;
  a.kappa = float(S.kappa);
  a.term_chunks = fused_loss_term_chunks(rows, 1 + n_negatives + a.k_used);
  return a;
}
// Warps per row for a batch: enough warps to fill an H100/H200 several times over (4,096), each
// with at least 8 terms. A starting rule, to be settled by the lab (bench/ultragcn_loss_gpu.cu).
inline int32_t fused_loss_term_chunks(int64_t rows, int32_t terms) {
  const int64_t wanted = rows > 0 ? (4096 + rows - 1) / rows : 1;
  const int64_t most = terms / 8 > 1 ? terms / 8 : 1;
  return int32_t(wanted < 1 ? 1 : wanted > most ? most : wanted);
}
cudaError_t launch_fused_ultragcn_loss(const FusedLossArgs& args, cudaStream_t stream);

// Stable sort of (key, value) pairs by key (CUB's radix sort on a device; std::stable_sort in
// the emulated-kernel tests): keys_out, vals_out (n,). Enqueued on the launch's stream.
using DeviceSortPairs =
    std::function<cudaError_t(const int32_t* keys_in, int32_t* keys_out, const int32_t* vals_in,
                              int32_t* vals_out, int64_t n)>;

// The deterministic mode's second half (kernels/ultragcn_loss.cu): the fused launch `a` (with
// term_coef, term_key and warp_user_grad set) has run; its item-row gradients (dT_j, dX_j) and
// user-row gradients (dPt_u, dPf_u) are added to a's gradient tables, each row's contributions
// summed in term order (terms sorted stably by row key). scratch: 4 * max(rows * terms, warps)
// ints. The same sums in the same order on every run: bit-identical results.
cudaError_t launch_fused_loss_reduce(const FusedLossArgs& a, int32_t* scratch,
                                     const DeviceSortPairs& sort, cudaStream_t stream);
// ints of scratch launch_fused_loss_reduce needs for a batch.
inline int64_t fused_loss_reduce_scratch(int64_t rows, int32_t terms, int32_t term_chunks) {
  const int64_t n = rows * terms > rows * term_chunks ? rows * terms : rows * term_chunks;
  return 4 * n;
}

// Adam with the L2 gradient fused (math::adam_update), gradient zeroing, and the sums of squares
// of the parameters before the update, per block (kernels/adam.cu). The buffer is cut at
// bounds[0..4] into Pt, Pf, T, W|b; tensor k is frozen when bit k of `frozen` is set (no update,
// gradient zeroed, still summed). Embedding tensors (0..2) get emb_l2_coef, W|b w_l2_coef.
struct AdamArgs {
  float* params = nullptr;              // (n,)
  float* m = nullptr;                   // (n,)
  float* v = nullptr;                   // (n,)
  float* grad = nullptr;                // (n,) read, then zeroed
  int64_t bounds[5] = {0, 0, 0, 0, 0};  // pt, pf, t, w, total (n = bounds[4])
  uint8_t frozen = 0;
  float emb_l2_coef = 0, w_l2_coef = 0;
  math::AdamStep step{};
  float* block_sums = nullptr;  // (kAdamBlocks, 2) written: sum of squares, embeddings and W|b
  const int* halt = nullptr;    // optional device flag: nonzero, the kernel does nothing
};
constexpr int kAdamBlocks = 1024;
cudaError_t launch_adam(const AdamArgs& args, cudaStream_t stream);

// Adam for HIM's E environment models (kernels/adam.cu): params = [W_all (E, w_size) | b_all
// (E, D)]; element k belongs to model e = k / w_size (W) or (k - E w_size) / D (b); only models
// with active[e] take their step steps[e] (each model counts its own), with the L2 gradient
// l2_coef * theta fused; every gradient is zeroed.
struct EnvAdamArgs {
  float* params = nullptr;  // (E * (w_size + D),)
  float* m = nullptr;
  float* v = nullptr;
  float* grad = nullptr;
  int32_t envs = 0, dim = 0;
  int64_t w_size = 0;                     // D * d
  const math::AdamStep* steps = nullptr;  // (E,)
  const uint8_t* active = nullptr;        // (E,)
  float l2_coef = 0;
  const int* halt = nullptr;
};
cudaError_t launch_env_adam(const EnvAdamArgs& args, cudaStream_t stream);

// Ends a HIM step (kernels/adam.cu): adds the step's loss, sum of main + kappa * item-item over
// the fused launch's entries, to *epoch_loss, or sets *halt and *halt_step = step when it (or the
// epoch's sum) is not finite.
struct EnvStepEndArgs {
  const float* row_loss = nullptr;  // (entries, 2)
  int64_t entries = 0;
  float kappa = 0;
  int64_t step = 0;
  double* epoch_loss = nullptr;    // device
  int* halt = nullptr;             // device
  long long* halt_step = nullptr;  // device
};
cudaError_t launch_env_step_end(const EnvStepEndArgs& args, cudaStream_t stream);

// Ends a step on the device (kernels/adam.cu): sums the rows' losses and the L2 block sums in a
// fixed order, forms the step's total, and either adds it to the epoch accumulators or, when it
// is not finite, sets *halt so that the following steps' kernels do nothing.
struct EpochAccumulators {
  double total = 0, main = 0, item_item = 0, l2 = 0;  // item_item already times kappa
  long long steps = 0, pairs = 0;
};
struct StepEndArgs {
  const float* row_loss = nullptr;    // (entries, 2)
  int64_t entries = 0;                // rows * term_chunks of the step's fused launch
  int64_t pairs = 0;                  // the batch's rows
  const float* block_sums = nullptr;  // (kAdamBlocks, 2)
  float kappa = 0, gamma_emb = 0, gamma_w = 0;
  EpochAccumulators* acc = nullptr;  // device
  int* halt = nullptr;               // device
};
cudaError_t launch_step_end(const StepEndArgs& args, cudaStream_t stream);

// out (count, width) = [Pt_u, Pf_u] for u = users[p] (the user rows scored by one GEMM).
cudaError_t launch_gather_user_rows(const float* pt, const float* pf, int32_t dim,
                                    const int32_t* users, int64_t count, float* out,
                                    cudaStream_t stream);

// out[p] = <item_rows[items[p]], [Pt_u, Pf_u]> with u = users[p]; item_rows (n_items, width).
cudaError_t launch_score_pairs(const float* pt, const float* pf, int32_t dim,
                               const float* item_rows, const int32_t* users, const int32_t* items,
                               int64_t count, float* out, cudaStream_t stream);

// HIM's reassignment (kernels/adam.cu): env_out[p] = argmax_e <Pt_u, T_j> + <Pf_u, X_j,e> for
// u = users[p], j = items[p], ties to the smaller e; x_all (n_items, envs * dim) holds every
// environment model's X side by side.
cudaError_t launch_assign_environments(const float* pt, const float* pf, const float* t,
                                       int32_t dim, int32_t envs, const float* x_all,
                                       const int32_t* users, const int32_t* items, int64_t count,
                                       int32_t* env_out, cudaStream_t stream);

// Full-ranking evaluation (kernels/topk.cu). scores (count, n_items) for users[0..count): each
// user's excluded items (CSR offsets (n_users + 1), items) and, when candidates (n_items) is set,
// the items whose entry is 0 become -inf.
cudaError_t launch_exclude_items(const int64_t* offsets, const int32_t* items, const int32_t* users,
                                 int64_t count, int32_t n_items, const uint8_t* candidates,
                                 float* scores, cudaStream_t stream);
// ranked (count, k) = each row's k best items, score descending, ties towards the smaller id
// (host/pipeline/evaluate.cpp's order); 0 < k <= n_items. One pass over each row for k <= 32,
// else the rounds below.
cudaError_t launch_top_k(const float* scores, int64_t count, int32_t n_items, int32_t k,
                         int32_t* ranked, cudaStream_t stream);
// The same lists by k rounds over the whole row (the first version; the lab's variant 1).
cudaError_t launch_top_k_rounds(const float* scores, int64_t count, int32_t n_items, int32_t k,
                                int32_t* ranked, cudaStream_t stream);

}  // namespace painvrl::PAINVRL_KERNEL_NS
