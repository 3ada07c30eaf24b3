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

#include "painvrl/model.h"

namespace painvrl::cpu {

template <class T>
struct LossWorkspace {
  std::vector<T> item_vec;                 // (n_items, D) W f_i + b (content model)
  std::vector<T> item_vec_grad;            // (n_items, D) dL / d(W f_i + b)
  std::vector<T> term_coef;                // (B, 1 + N + K) dL / ds per term
  std::vector<int32_t> term_item;          // (B, 1 + N + K)
  std::vector<T> row_user_grad;            // (B, 2D) dL / d[Pt_u, Pf_u] per batch row
  std::vector<T> row_main, row_ii;         // (B,)
  std::vector<int64_t> item_term_offsets;  // (n_items + 1,) counting sort of terms by item
  std::vector<int32_t> item_terms;         // (B * (1 + N + K),)
  std::vector<unsigned char> row_touched;  // (n_users + n_items,) for l2 = touched
};

// Computes the loss terms and, when grad != nullptr, ADDS dL/dtheta into grad (layout.total).
// With add_l2_grad = false and full-table L2 the L2 gradient is left to the optimiser (fused into
// Adam); the L2 value is still returned.
template <class T>
LossTerms<T> ultragcn_loss_grad(const ParamLayout& layout, const T* params,
                                const LossProblem<T>& problem, const Batch& batch,
                                const LossSettings& settings, T* grad, bool add_l2_grad,
                                LossWorkspace<T>& ws);

// Item rows [T_i, W f_i + b] (n_items, D or 2D) for scoring, built once per evaluation.
template <class T>
void build_item_rows(const ParamLayout& layout, const T* params, const T* features,
                     std::vector<T>& item_rows);
// Scores of `count` users against all items: out (count, n_items), row-major.
template <class T>
void score_users(const ParamLayout& layout, const T* params, const std::vector<T>& item_rows,
                 const int32_t* users, int64_t count, T* out);

extern template LossTerms<float> ultragcn_loss_grad<float>(const ParamLayout&, const float*,
                                                           const LossProblem<float>&, const Batch&,
                                                           const LossSettings&, float*, bool,
                                                           LossWorkspace<float>&);
extern template LossTerms<double> ultragcn_loss_grad<double>(const ParamLayout&, const double*,
                                                             const LossProblem<double>&,
                                                             const Batch&, const LossSettings&,
                                                             double*, bool, LossWorkspace<double>&);

}  // namespace painvrl::cpu
