// CPU forward/backward of the UltraGCN loss; see include/painvrl/cpu/ultragcn_loss.h for the
// equation. Work per step: B (1 + N + K) dot products of length D (and again of length D with the
// content branch), the same again for the gradients, plus for the content model the projections
// X = F W^T + b and dW = dX^T F, two (n_items x d x D) GEMMs.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "painvrl/cpu/ultragcn_loss.h"
#include "painvrl/math/activations.h"
#include "painvrl/math/ultragcn.h"

namespace painvrl::cpu {
namespace {

template <class T>
T dot(const T* a, const T* b, int32_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int32_t k = 0; k < n; ++k) s += a[k] * b[k];
  return s;
}

template <class T>
void axpy(T alpha, const T* x, T* y, int32_t n) {
#pragma omp simd
  for (int32_t k = 0; k < n; ++k) y[k] += alpha * x[k];
}

// C (m x n) = A (m x k) * B^T (n x k), row-major.
void gemm_abt(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(n), int(k), 1.f, a, int(k), b,
              int(k), 0.f, c, int(n));
}
void gemm_abt(int64_t m, int64_t n, int64_t k, const double* a, const double* b, double* c) {
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(n), int(k), 1.0, a, int(k), b,
              int(k), 0.0, c, int(n));
}
// C (m x n) += A^T (m x k) * B (k x n), with A stored (k x m), row-major.
void gemm_atb_acc(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c) {
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(m), int(n), int(k), 1.f, a, int(m), b,
              int(n), 1.f, c, int(n));
}
void gemm_atb_acc(int64_t m, int64_t n, int64_t k, const double* a, const double* b, double* c) {
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(m), int(n), int(k), 1.0, a, int(m), b,
              int(n), 1.0, c, int(n));
}

// item_vec (n_items, D) = F (n_items, d) W^T + b
template <class T>
void project_items(const ParamLayout& L, const T* params, const T* features,
                   std::vector<T>& item_vec) {
  const int32_t D = L.dim;
  item_vec.resize(size_t(L.n_items) * D);
  if (L.feat_dim > 0) {
    gemm_abt(L.n_items, D, L.feat_dim, features, params + L.w, item_vec.data());
  } else {
    std::fill(item_vec.begin(), item_vec.end(), T(0));
  }
  const T* bias = params + L.b;
#pragma omp parallel for schedule(static)
  for (int32_t i = 0; i < L.n_items; ++i) axpy(T(1), bias, item_vec.data() + size_t(i) * D, D);
}

}  // namespace

template <class T>
LossTerms<T> ultragcn_loss_grad(const ParamLayout& L, const T* params,
                                const LossProblem<T>& problem, const Batch& batch,
                                const LossSettings& S, T* grad, bool add_l2_grad,
                                LossWorkspace<T>& ws) {
  const int32_t D = L.dim;
  const int64_t B = batch.size;
  const int32_t N = batch.n_negatives;
  const int32_t K = S.kappa != 0 ? problem.ii_k : 0;
  const int32_t terms_per_row = 1 + N + K;
  const T* Pt = params + L.pt;
  const T* Pf = L.content ? params + L.pf : nullptr;
  const T* Titem = params + L.t;
  const T* X = nullptr;
  if (L.content) {
    project_items(L, params, problem.features, ws.item_vec);
    X = ws.item_vec.data();
  }
  const int32_t user_grad_width = L.content ? 2 * D : D;
  ws.term_coef.resize(size_t(B) * terms_per_row);
  ws.term_item.resize(size_t(B) * terms_per_row);
  ws.row_main.resize(size_t(B));
  ws.row_ii.resize(size_t(B));
  if (grad) ws.row_user_grad.assign(size_t(B) * user_grad_width, T(0));

  const T w1 = T(S.w1), w2 = T(S.w2), w3 = T(S.w3), w4 = T(S.w4);
  const T neg_scale = N > 0 ? T(S.neg_weight) / T(N) : T(0);
  const T kappa = T(S.kappa);

  // 1. Per batch row: scores, loss, dL/ds per term, and the user-row gradient.
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < B; ++r) {
    const int32_t u = batch.users[r];
    const int32_t i = batch.items[r];
    const T* pt = Pt + size_t(u) * D;
    const T* pf = Pf ? Pf + size_t(u) * D : nullptr;
    const T bu = problem.beta_user[u];
    T* coef = ws.term_coef.data() + size_t(r) * terms_per_row;
    int32_t* titem = ws.term_item.data() + size_t(r) * terms_per_row;
    auto score = [&](int32_t j) {
      T s = dot(pt, Titem + size_t(j) * D, D);
      if (pf) s += dot(pf, X + size_t(j) * D, D);
      return s;
    };
    T main = 0, ii = 0;
    {  // positive: pos_w sp(-s), d/ds = -pos_w sigmoid(-s)
      const T s = score(i);
      const T w = math::pair_weight(w1, w2, bu, problem.beta_item[i]);
      main += w * math::softplus(-s);
      coef[0] = -w * math::sigmoid(-s);
      titem[0] = i;
    }
    for (int32_t n = 0; n < N; ++n) {  // negatives: c sp(s), d/ds = c sigmoid(s)
      const int32_t j = batch.negatives[size_t(r) * N + n];
      const T s = score(j);
      const T c = neg_scale * math::pair_weight(w3, w4, bu, problem.beta_item[j]);
      main += c * math::softplus(s);
      coef[1 + n] = c * math::sigmoid(s);
      titem[1 + n] = j;
    }
    for (int32_t k = 0; k < K; ++k) {  // neighbours: kappa omega sp(-s)
      const int32_t j = problem.ii_neighbors[size_t(i) * problem.ii_k + k];
      const T omega = problem.ii_weights[size_t(i) * problem.ii_k + k];
      const T s = omega != T(0) ? score(j) : T(0);
      ii += omega * math::softplus(-s);
      coef[1 + N + k] = omega != T(0) ? -kappa * omega * math::sigmoid(-s) : T(0);
      titem[1 + N + k] = j;
    }
    ws.row_main[r] = main;
    ws.row_ii[r] = ii;
    if (grad) {
      T* gu = ws.row_user_grad.data() + size_t(r) * user_grad_width;
      for (int32_t t = 0; t < terms_per_row; ++t) {
        if (coef[t] == T(0)) continue;
        axpy(coef[t], Titem + size_t(titem[t]) * D, gu, D);
        if (pf) axpy(coef[t], X + size_t(titem[t]) * D, gu + D, D);
      }
    }
  }

  LossTerms<T> out;
  for (int64_t r = 0; r < B; ++r) {
    out.main += ws.row_main[r];
    out.item_item += ws.row_ii[r];
  }

  // L2 over the full tables or over the rows the batch touches (each row once).
  const bool touched_mode = S.l2_touched;
  if (touched_mode) {
    ws.row_touched.assign(size_t(L.n_users) + L.n_items, 0);
    for (int64_t r = 0; r < B; ++r) ws.row_touched[batch.users[r]] = 1;
    for (int32_t j : ws.term_item) ws.row_touched[size_t(L.n_users) + j] = 1;
  }
  {
    T l2_emb = 0;
    if (!touched_mode) {
      const int64_t n = L.embedding_end();
#pragma omp parallel for reduction(+ : l2_emb) schedule(static)
      for (int64_t k = 0; k < n; ++k) l2_emb += params[k] * params[k];
    } else {
      for (int32_t u = 0; u < L.n_users; ++u) {
        if (!ws.row_touched[u]) continue;
        l2_emb += dot(Pt + size_t(u) * D, Pt + size_t(u) * D, D);
        if (Pf) l2_emb += dot(Pf + size_t(u) * D, Pf + size_t(u) * D, D);
      }
      for (int32_t j = 0; j < L.n_items; ++j) {
        if (!ws.row_touched[size_t(L.n_users) + j]) continue;
        l2_emb += dot(Titem + size_t(j) * D, Titem + size_t(j) * D, D);
      }
    }
    out.l2_emb = l2_emb;
    T l2_w = 0;
    if (L.content) {
      for (int64_t k = L.w; k < L.total; ++k) l2_w += params[k] * params[k];
    }
    out.l2_w = l2_w;
  }
  out.total =
      out.main + kappa * out.item_item + T(S.gamma_emb) * out.l2_emb + T(S.gamma_w) * out.l2_w;
  if (!grad) return out;

  // 2. Users: batch order, one thread (rows of the same user add up in a fixed order).
  for (int64_t r = 0; r < B; ++r) {
    const int32_t u = batch.users[r];
    const T* gu = ws.row_user_grad.data() + size_t(r) * user_grad_width;
    axpy(T(1), gu, grad + L.pt + size_t(u) * D, D);
    if (Pf) axpy(T(1), gu + D, grad + L.pf + size_t(u) * D, D);
  }

  // 3. Items: counting sort of the terms by item, then each item's terms in term order.
  const int64_t n_terms = B * terms_per_row;
  ws.item_term_offsets.assign(size_t(L.n_items) + 1, 0);
  for (int64_t t = 0; t < n_terms; ++t) {
    if (ws.term_coef[t] != T(0)) ++ws.item_term_offsets[size_t(ws.term_item[t]) + 1];
  }
  for (int32_t j = 0; j < L.n_items; ++j) ws.item_term_offsets[j + 1] += ws.item_term_offsets[j];
  ws.item_terms.resize(size_t(ws.item_term_offsets[L.n_items]));
  {
    std::vector<int64_t>& off = ws.item_term_offsets;
    // Fill using a running cursor held in the offsets array shifted by one (restored below).
    for (int64_t t = 0; t < n_terms; ++t) {
      if (ws.term_coef[t] == T(0)) continue;
      ws.item_terms[size_t(off[ws.term_item[t]]++)] = int32_t(t);
    }
    for (int32_t j = L.n_items; j > 0; --j) off[j] = off[j - 1];
    off[0] = 0;
  }
  if (L.content) ws.item_vec_grad.assign(size_t(L.n_items) * D, T(0));
#pragma omp parallel for schedule(dynamic, 64)
  for (int32_t j = 0; j < L.n_items; ++j) {
    T* gt = grad + L.t + size_t(j) * D;
    T* gx = L.content ? ws.item_vec_grad.data() + size_t(j) * D : nullptr;
    for (int64_t p = ws.item_term_offsets[j]; p < ws.item_term_offsets[j + 1]; ++p) {
      const int32_t t = ws.item_terms[p];
      const int32_t u = batch.users[t / terms_per_row];
      axpy(ws.term_coef[t], Pt + size_t(u) * D, gt, D);
      if (gx) axpy(ws.term_coef[t], Pf + size_t(u) * D, gx, D);
    }
  }

  // 4. Content branch: dW (D, d) += dX^T F, db += sum_j dX_j.
  if (L.content) {
    if (L.feat_dim > 0) {
      gemm_atb_acc(D, L.feat_dim, L.n_items, ws.item_vec_grad.data(), problem.features, grad + L.w);
    }
    T* gb = grad + L.b;
    for (int32_t j = 0; j < L.n_items; ++j)
      axpy(T(1), ws.item_vec_grad.data() + size_t(j) * D, gb, D);
  }

  // 5. L2 gradient: 2 gamma theta (full tables: only when not fused into the optimiser).
  const T ce = T(2 * S.gamma_emb), cw = T(2 * S.gamma_w);
  if (touched_mode) {
    for (int32_t u = 0; u < L.n_users; ++u) {
      if (!ws.row_touched[u]) continue;
      axpy(ce, Pt + size_t(u) * D, grad + L.pt + size_t(u) * D, D);
      if (Pf) axpy(ce, Pf + size_t(u) * D, grad + L.pf + size_t(u) * D, D);
    }
    for (int32_t j = 0; j < L.n_items; ++j) {
      if (!ws.row_touched[size_t(L.n_users) + j]) continue;
      axpy(ce, Titem + size_t(j) * D, grad + L.t + size_t(j) * D, D);
    }
  } else if (add_l2_grad) {
    const int64_t n = L.embedding_end();
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < n; ++k) grad[k] += ce * params[k];
  }
  if (add_l2_grad && L.content) {
    for (int64_t k = L.w; k < L.total; ++k) grad[k] += cw * params[k];
  }
  return out;
}

template <class T>
void build_item_rows(const ParamLayout& L, const T* params, const T* features,
                     std::vector<T>& item_rows) {
  const int32_t D = L.dim;
  const int32_t width = L.content ? 2 * D : D;
  std::vector<T> item_vec;
  if (L.content) project_items(L, params, features, item_vec);
  item_rows.resize(size_t(L.n_items) * width);
  for (int32_t j = 0; j < L.n_items; ++j) {
    std::memcpy(&item_rows[size_t(j) * width], params + L.t + size_t(j) * D, sizeof(T) * D);
    if (L.content) {
      std::memcpy(&item_rows[size_t(j) * width + D], &item_vec[size_t(j) * D], sizeof(T) * D);
    }
  }
}

template <class T>
void score_users(const ParamLayout& L, const T* params, const std::vector<T>& item_rows,
                 const int32_t* users, int64_t count, T* out) {
  const int32_t D = L.dim;
  const int32_t width = L.content ? 2 * D : D;
  std::vector<T> user_rows(size_t(count) * width);  // (count, width): [Pt_u, Pf_u]
  for (int64_t r = 0; r < count; ++r) {
    std::memcpy(&user_rows[size_t(r) * width], params + L.pt + size_t(users[r]) * D, sizeof(T) * D);
    if (L.content) {
      std::memcpy(&user_rows[size_t(r) * width + D], params + L.pf + size_t(users[r]) * D,
                  sizeof(T) * D);
    }
  }
  gemm_abt(count, L.n_items, width, user_rows.data(), item_rows.data(), out);
}

template LossTerms<float> ultragcn_loss_grad<float>(const ParamLayout&, const float*,
                                                    const LossProblem<float>&, const Batch&,
                                                    const LossSettings&, float*, bool,
                                                    LossWorkspace<float>&);
template LossTerms<double> ultragcn_loss_grad<double>(const ParamLayout&, const double*,
                                                      const LossProblem<double>&, const Batch&,
                                                      const LossSettings&, double*, bool,
                                                      LossWorkspace<double>&);
template void build_item_rows<float>(const ParamLayout&, const float*, const float*,
                                     std::vector<float>&);
template void build_item_rows<double>(const ParamLayout&, const double*, const double*,
                                      std::vector<double>&);
template void score_users<float>(const ParamLayout&, const float*, const std::vector<float>&,
                                 const int32_t*, int64_t, float*);
template void score_users<double>(const ParamLayout&, const double*, const std::vector<double>&,
                                  const int32_t*, int64_t, double*);

}  // namespace painvrl::cpu
