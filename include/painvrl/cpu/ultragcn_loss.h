// CPU forward and backward of the UltraGCN loss (DESIGN.md section 2; paper Eq. 3-8, 15):
//   L = sum_(u,i) [ pos_w sp(-s_ui) + neg_weight (1/N) sum_n neg_w sp(s_uj_n)
//                   + kappa sum_(j in S(i)) omega_ij sp(-s_uj) ]
//       + gamma_emb (|Pt|^2 + |Pf|^2 + |T|^2) + gamma_W (|W|^2 + |b|^2)
// Templated on the scalar so that tests run it in double against finite differences; the trainer
// runs it in float. Deterministic for any thread count: per-term coefficients are computed in
// parallel, then every gradient row is summed by one thread in a fixed order (items grouped by a
// counting sort of the terms, users in batch order).
#pragma once
#include <cstdint>
#include <vector>

#include "painvrl/backend/model.h"

namespace painvrl::cpu {

template <class T>
struct LossWorkspace {
  std::vector<T> item_vec;                  // (n_items, D) W f_i + b (content model)
  std::vector<T> item_vec_grad;             // (n_items, D) dL / d(W f_i + b)
  std::vector<T> term_coef;                 // (B, 1 + N + K) dL / ds per term
  std::vector<T> term_exp;                  // (B, 1 + N + K) e^{-|z|}, then log1p of it
  std::vector<T> term_weight;               // (B, 1 + N + K) the term's loss weight
  std::vector<T> term_score;                // (B, 1 + N + K) s, then z = -s (label 1) or s
  std::vector<int32_t> term_item;           // (B, 1 + N + K)
  std::vector<T> row_user_grad;             // (B, 2D) dL / d[Pt_u, Pf_u] per batch row
  std::vector<T> row_main, row_ii;          // (B,)
  std::vector<int64_t> item_term_offsets;   // (n_items + 1,) counting sort of terms by item
  std::vector<T> item_term_coef;            // (nonzero terms,) dL / ds, sorted by item
  std::vector<int32_t> item_term_user;      // (nonzero terms,) the user of each sorted term
  std::vector<int64_t> thread_item_cursor;  // (threads, n_items) counts, then fill cursors
  std::vector<unsigned char> row_touched;   // (n_users + n_items,) for l2 = touched
};

// Computes the loss terms and, when grad != nullptr, ADDS dL/dtheta into grad (layout.total).
// With add_l2_grad = false and full-table L2 the L2 term is left to the optimiser, which reads
// every parameter anyway: its gradient is fused into Adam and its value is not computed here
// (l2_emb = l2_w = 0; total holds the data terms only).
template <class T>
LossTerms<T> ultragcn_loss_grad(const ParamLayout& layout, const T* params,
                                const LossProblem<T>& problem, const Batch& batch,
                                const LossSettings& settings, T* grad, bool add_l2_grad,
                                LossWorkspace<T>& ws);

// Sets OpenBLAS to one thread. Training and scoring call it: the per-step products are small and
// OpenBLAS's threads would compete with OpenMP's, and with another thread count OpenBLAS splits a
// product differently, so scores could differ in the last bit and near-ties reorder (recommend
// must rank exactly as evaluation did).
void use_single_threaded_blas();

// Item rows [T_i, W f_i + b] (n_items, D or 2D) for scoring, built once per evaluation.
template <class T>
void build_item_rows(const ParamLayout& layout, const T* params, const T* features,
                     std::vector<T>& item_rows);
// Scores of `count` users against all items: out (count, n_items), row-major.
template <class T>
void score_users(const ParamLayout& layout, const T* params, const std::vector<T>& item_rows,
                 const int32_t* users, int64_t count, T* out);

// HIM's E environment models trained as one computation (him_train = projection): every model
// shares the frozen Pt, Pf, T of the stage-0 backbone and owns W_e (D, d) and b_e (D), so
//   s_e(u, j) = <Pt_u, T_j> + <Pf_u, X_e[j]>,   X = F W_all^T + b_all  (n_items, E * D),
// with W_all = [W_0; ...; W_{E-1}] (E * D, d). Each batch row carries its environment. The data
// terms are those of ultragcn_loss_grad; the gradient is only dL/dW_all and dL/db_all (no L2:
// the optimiser adds 2 gamma_w W): dX by a counting sort of the terms by (item, environment)
// key j * E + e, then dW_all = dX^T F (one GEMM) and db_e = sum_j dX_e[j].
struct EnvBatch {
  const int32_t* users = nullptr;      // (B,)
  const int32_t* items = nullptr;      // (B,)
  const int32_t* envs = nullptr;       // (B,) environment of each row, in [0, E)
  const int32_t* negatives = nullptr;  // (B, N)
  int64_t size = 0;                    // B (rows of all environments together)
  int32_t n_negatives = 0;             // N
};

struct EnvModelsView {
  int32_t n_users = 0, n_items = 0, dim = 0, envs = 0;  // D, E
  int64_t feat_dim = 0;                                 // d
  const float* pt = nullptr;                            // (n_users, D) frozen
  const float* pf = nullptr;                            // (n_users, D) frozen
  const float* t = nullptr;                             // (n_items, D) frozen
  const float* w_all = nullptr;                         // (E * D, d)
  const float* b_all = nullptr;                         // (E * D,)
};

// Fills ws.item_vec with X (n_items, E * D). Returns per environment the data loss of its rows
// (main + kappa * item_item) in env_loss (E,); writes grad_w_all (E * D, d) and grad_b_all
// (E * D,) (overwritten, not added).
void env_projection_loss_grad(const EnvModelsView& m, const LossProblem<float>& problem,
                              const EnvBatch& batch, const LossSettings& settings, double* env_loss,
                              float* grad_w_all, float* grad_b_all, LossWorkspace<float>& ws);
// X for the current W_all, b_all into ws.item_vec, then out (count, E) = s_e(users[p], items[p]).
void env_projection_score_pairs(const EnvModelsView& m, const float* features, const int32_t* users,
                                const int32_t* items, int64_t count, float* out,
                                LossWorkspace<float>& ws);

extern template LossTerms<float> ultragcn_loss_grad<float>(const ParamLayout&, const float*,
                                                           const LossProblem<float>&, const Batch&,
                                                           const LossSettings&, float*, bool,
                                                           LossWorkspace<float>&);
extern template LossTerms<double> ultragcn_loss_grad<double>(const ParamLayout&, const double*,
                                                             const LossProblem<double>&,
                                                             const Batch&, const LossSettings&,
                                                             double*, bool, LossWorkspace<double>&);

}  // namespace painvrl::cpu
