// Variant 0 of the mask-generation step (bench/mask-step's baseline and a second oracle for the
// production step in host/cpu/mask_step.cpp): the first closed form, term by term, every term's
// h_t built as a d-vector. The derivation is in include/painvrl/backend/mask_step.h and
// docs/mask-step.md. Three passes over the environments' terms (a term = one positive, negative or
// neighbour of a batch row; all terms of a row share the row's user):
//   1. forward: losses L^e, G_e = sum_r Pf_u (sum_t delta_t h_t)^T, and g_E;
//   2. with V and R_e known: gamma_t, the IRM h-adjoint a_t, g_I, and the per-row and per-term
//      pieces of the ERM and IRM parameter gradients (kept apart until w_ERM is known);
//   3. w_ERM, then the weighted parameter gradients (the attention MLPs' backward included).
// Terms are recomputed rather than stored, so memory is O(rows * (d + 2H) + items * H).
// Rows run in parallel; every reduction sums in a fixed order (the same for any thread count).
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "painvrl/backend/mask_step.h"
#include "painvrl/math/activations.h"
#include "painvrl/math/mask.h"
#include "painvrl/math/ultragcn.h"

namespace painvrl {

namespace {

template <class T>
T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
  for (int64_t k = 0; k < n; ++k) s += a[k] * b[k];
  return s;
}

// Everything one term needs, recomputed identically in every pass.
template <class T>
struct TermEval {
  int32_t item = 0;
  T c = 0;            // loss weight c_t
  bool positive = 0;  // y_t
  T alpha_phi = 1, alpha_psi = 0;
  T s = 0, delta = 0, delta2 = 0, loss = 0;
};

template <class T>
struct StepContext {
  const MaskLayout& L;
  const T* params;
  const T* mask;
  const MaskProblem<T>& P;
  const EnvBatches& B;
  const T* noise;
  const MaskSettings& S;
  int32_t E, N, K, H, D;
  int64_t d;
  int32_t terms_per_row;
  std::vector<T> item_pre;  // (2, I, H): w1i_k [T_j; f_j] + b1_k
  std::vector<T> gate;      // (E, d): mu_e
  std::vector<T> open;      // (E, d): 1 where 0 < m + eps < 1

  StepContext(const MaskLayout& L_, const T* params_, const T* mask_, const MaskProblem<T>& P_,
              const EnvBatches& B_, const T* noise_, const MaskSettings& S_)
      : L(L_), params(params_), mask(mask_), P(P_), B(B_), noise(noise_), S(S_) {
    E = B.E();
    N = B.n_negatives;
    K = S.kappa > 0 ? P.ii_k : 0;
    H = L.H;
    D = L.D;
    d = L.d;
    terms_per_row = 1 + N + K;
    gate.resize(size_t(E) * d);
    open.resize(size_t(E) * d);
    for (int32_t e = 0; e < E; ++e) {
      for (int64_t j = 0; j < d; ++j) {
        gate[size_t(e) * d + j] =
            math::mask_gate(mask[j], noise[size_t(e) * d + j], open[size_t(e) * d + j]);
      }
    }
    if (L.attention) {
      item_pre.assign(size_t(2) * P.n_items * H, T(0));
#pragma omp parallel for schedule(static)
      for (int32_t j = 0; j < P.n_items; ++j) {
        for (int k = 0; k < 2; ++k) {
          for (int32_t h = 0; h < H; ++h) {
            const T* w = params + L.w1i[k] + size_t(h) * (D + d);
            T v = params[L.b1[k] + h] + dot(w, P.Ti + size_t(j) * D, D) +
                  dot(w + D, P.features + size_t(j) * d, d);
            item_pre[(size_t(k) * P.n_items + j) * H + h] = v;
          }
        }
      }
    }
  }

  // The environment that owns batch row r.
  int32_t env_of_row(int64_t r) const {
    return int32_t(std::upper_bound(B.env_offsets.begin(), B.env_offsets.end(), r) -
                   B.env_offsets.begin()) -
           1;
  }

  // The term's item, weight and label.
  void term_identity(int64_t row, int32_t slot, TermEval<T>& t) const {
    const int32_t u = B.users[row], i = B.items[row];
    const T bu = P.beta_user[u];
    if (slot == 0) {
      t.item = i;
      t.c = math::pair_weight(T(S.w1), T(S.w2), bu, P.beta_item[i]);
      t.positive = true;
    } else if (slot <= N) {
      t.item = B.negatives[size_t(row) * N + slot - 1];
      t.c = T(S.neg_weight) / T(N) * math::pair_weight(T(S.w3), T(S.w4), bu, P.beta_item[t.item]);
      t.positive = false;
    } else {
      const int32_t k = slot - 1 - N;
      t.item = P.ii_neighbors[size_t(i) * P.ii_k + k];
      t.c = T(S.kappa) * P.ii_weights[size_t(i) * P.ii_k + k];
      t.positive = true;
    }
  }

  // user_pre: (2, H) w1u_k [Pt_u; Pf_u]; hid: (2, H) out; h: (d) out.
  void forward(int32_t e, int32_t u, const T* q_u, const T* user_pre, T base, TermEval<T>& t,
               T* hid, T* h) const {
    const T* mu = gate.data() + size_t(e) * d;
    const T* f = P.features + size_t(t.item) * d;
    if (L.attention) {
      T a[2];
      for (int k = 0; k < 2; ++k) {
        const T* ip = item_pre.data() + (size_t(k) * P.n_items + t.item) * H;
        const T* w2 = params + L.w2[k];
        T acc = params[L.b2[k]];
        for (int32_t x = 0; x < H; ++x) {
          const T pre = user_pre[k * H + x] + ip[x];
          hid[k * H + x] = pre > T(0) ? pre : T(0);
          acc += w2[x] * hid[k * H + x];
        }
        a[k] = acc;
      }
      t.alpha_phi = math::sigmoid(a[0]);
      t.alpha_psi = math::sigmoid(a[1]);
    }
    const T diff = t.alpha_phi - t.alpha_psi;
    for (int64_t j = 0; j < d; ++j) h[j] = (t.alpha_psi + diff * mu[j]) * f[j];
    t.s = base + dot(P.Ti + size_t(t.item) * D, P.Pt + size_t(u) * D, D) + dot(q_u, h, d);
    const math::MaskTermLoss<T> b = math::mask_term_loss(t.s, t.c, t.positive);
    t.delta = b.delta;
    t.delta2 = b.delta2;
    t.loss = b.loss;
  }

  // Per-row user quantities: q_u = W^T Pf_u (d), base = <Pf_u, b>, user_pre (2, H).
  void row_setup(int32_t u, T* q_u, T& base, T* user_pre) const {
    const T* pf = P.Pf + size_t(u) * D;
    const T* W = params + L.W;
    for (int64_t j = 0; j < d; ++j) q_u[j] = 0;
    for (int32_t k = 0; k < D; ++k) {
      const T pk = pf[k];
      const T* wrow = W + size_t(k) * d;
      for (int64_t j = 0; j < d; ++j) q_u[j] += pk * wrow[j];
    }
    base = dot(pf, params + L.b, D);
    if (L.attention) {
      for (int k = 0; k < 2; ++k) {
        for (int32_t x = 0; x < H; ++x) {
          const T* w = params + L.w1u[k] + size_t(x) * 2 * D;
          user_pre[k * H + x] = dot(w, P.Pt + size_t(u) * D, D) + dot(w + D, pf, D);
        }
      }
    }
  }
};

// out (D, d) += sum_r Pf_{u_r} vec_r^T over rows [r0, r1), parallel over D (fixed order per k).
template <class T>
void accumulate_outer(const StepContext<T>& C, int64_t r0, int64_t r1, const std::vector<T>& vec,
                      T scale, T* out) {
  const int64_t d = C.d;
#pragma omp parallel for schedule(static)
  for (int32_t k = 0; k < C.D; ++k) {
    T* o = out + size_t(k) * d;
    for (int64_t r = r0; r < r1; ++r) {
      const T p = scale * C.P.Pf[size_t(C.B.users[r]) * C.D + k];
      const T* v = vec.data() + size_t(r) * d;
      for (int64_t j = 0; j < d; ++j) o[j] += p * v[j];
    }
  }
}

}  // namespace

template <class T>
MaskStepResult<T> mask_step_v0(const MaskLayout& L, const T* params, const T* mask,
                               const MaskProblem<T>& P, const EnvBatches& B, const T* noise,
                               const MaskSettings& S) {
  StepContext<T> C(L, params, mask, P, B, noise, S);
  const int32_t E = C.E, D = C.D, H = C.H, TPR = C.terms_per_row;
  const int64_t d = C.d;
  const int64_t rows = B.env_offsets.back();
  MaskStepResult<T> R;
  R.loss_env.assign(size_t(E), T(0));
  R.G.assign(size_t(E) * D * d, T(0));
  R.V.assign(size_t(D) * d, T(0));
  R.g_E.assign(size_t(d), T(0));
  R.g_I.assign(size_t(d), T(0));
  R.grad.assign(size_t(L.total), T(0));

  // Per-row scratch shared by the passes.
  std::vector<T> row_vec(size_t(rows) * d);  // pass 1: sum_t delta_t h_t; pass 2: sum gamma_t h_t
  std::vector<T> row_vec_erm(size_t(rows) * d);  // pass 2: sum_t delta_t h_t (kept for grad_W)
  std::vector<T> row_mask_e(size_t(rows) * d);   // g_E contribution per row (before open, 1/E)
  std::vector<T> row_mask_i(size_t(rows) * d);   // g_I contribution per row (before open)
  std::vector<T> row_loss(static_cast<size_t>(rows));
  // Sums over a row's terms of delta_t / E and gamma_t, accumulated in double: the positive and
  // negative terms nearly cancel in dJ/db, which float accumulation would blur.
  std::vector<double> row_delta_sum(static_cast<size_t>(rows)),
      row_gamma_sum(static_cast<size_t>(rows));
  // Per term: dJ/dalpha pieces for the MLPs, ERM and IRM apart: (rows * TPR, 4).
  std::vector<T> term_dalpha(L.attention ? size_t(rows) * TPR * 4 : 0);

  // ---- pass 1: forward, L^e, G_e, g_E pieces
#pragma omp parallel
  {
    std::vector<T> q(d), up(size_t(2) * H), hid(size_t(2) * H), h(d);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t e = C.env_of_row(r);
      const int32_t u = B.users[r];
      T base;
      C.row_setup(u, q.data(), base, up.data());
      T* acc = row_vec.data() + size_t(r) * d;
      T* me = row_mask_e.data() + size_t(r) * d;
      std::fill(acc, acc + d, T(0));
      std::fill(me, me + d, T(0));
      T loss = 0;
      for (int32_t slot = 0; slot < TPR; ++slot) {
        TermEval<T> t;
        C.term_identity(r, slot, t);
        if (t.c == T(0)) continue;
        C.forward(e, u, q.data(), up.data(), base, t, hid.data(), h.data());
        loss += t.loss;
        const T diff = t.alpha_phi - t.alpha_psi;
        const T* f = P.features + size_t(t.item) * d;
        for (int64_t j = 0; j < d; ++j) {
          acc[j] += t.delta * h[j];
          me[j] += t.delta * q[j] * diff * f[j];
        }
      }
      row_loss[r] = loss;
    }
  }
  for (int32_t e = 0; e < E; ++e) {
    for (int64_t r = B.env_offsets[e]; r < B.env_offsets[e + 1]; ++r) R.loss_env[e] += row_loss[r];
    accumulate_outer(C, B.env_offsets[e], B.env_offsets[e + 1], row_vec, T(1),
                     R.G.data() + size_t(e) * D * d);
    R.L_ERM += R.loss_env[e] / T(E);
  }
  // V = (1/E) sum_e (G_e - Gbar)^2; L_IRM = sum (V m)^2; Rm = dL_IRM/dG_e = (4/E) m^2 V (G_e -
  // Gbar)
  std::vector<T> Gbar(size_t(D) * d, T(0));
  for (int32_t e = 0; e < E; ++e) {
    for (size_t k = 0; k < Gbar.size(); ++k) Gbar[k] += R.G[size_t(e) * D * d + k] / T(E);
  }
  for (int32_t e = 0; e < E; ++e) {
    for (size_t k = 0; k < Gbar.size(); ++k) {
      const T dev = R.G[size_t(e) * D * d + k] - Gbar[k];
      R.V[k] += dev * dev / T(E);
    }
  }
  for (int32_t k = 0; k < D; ++k) {
    for (int64_t j = 0; j < d; ++j) {
      const T vm = R.V[size_t(k) * d + j] * mask[j];
      R.L_IRM += vm * vm;
      R.g_I[j] += T(2) * mask[j] * R.V[size_t(k) * d + j] * R.V[size_t(k) * d + j];
    }
  }
  std::vector<T> Radj(size_t(E) * D * d);  // (E, D, d)
  for (int32_t e = 0; e < E; ++e) {
    for (int32_t k = 0; k < D; ++k) {
      for (int64_t j = 0; j < d; ++j) {
        const size_t x = size_t(k) * d + j;
        Radj[size_t(e) * D * d + x] =
            T(4) / T(E) * mask[j] * mask[j] * R.V[x] * (R.G[size_t(e) * D * d + x] - Gbar[x]);
      }
    }
  }

  // ---- pass 2: gamma_t, a_t, g_I pieces, gradient pieces
#pragma omp parallel
  {
    std::vector<T> q(d), up(size_t(2) * H), hid(size_t(2) * H), h(d), ru(d);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t e = C.env_of_row(r);
      const int32_t u = B.users[r];
      const T* mu = C.gate.data() + size_t(e) * d;
      T base;
      C.row_setup(u, q.data(), base, up.data());
      // r_u = R_e^T Pf_u
      std::fill(ru.begin(), ru.end(), T(0));
      const T* Re = Radj.data() + size_t(e) * D * d;
      for (int32_t k = 0; k < D; ++k) {
        const T pk = P.Pf[size_t(u) * D + k];
        for (int64_t j = 0; j < d; ++j) ru[j] += pk * Re[size_t(k) * d + j];
      }
      T* kg = row_vec.data() + size_t(r) * d;      // sum gamma_t h_t
      T* ke = row_vec_erm.data() + size_t(r) * d;  // sum delta_t h_t / E
      T* mi = row_mask_i.data() + size_t(r) * d;
      std::fill(kg, kg + d, T(0));
      std::fill(ke, ke + d, T(0));
      std::fill(mi, mi + d, T(0));
      double gsum = 0, dsum = 0;
      for (int32_t slot = 0; slot < TPR; ++slot) {
        TermEval<T> t;
        C.term_identity(r, slot, t);
        if (t.c == T(0)) continue;
        C.forward(e, u, q.data(), up.data(), base, t, hid.data(), h.data());
        const T gamma = t.delta2 * dot(ru.data(), h.data(), d);
        gsum += gamma;
        dsum += t.delta / T(E);
        const T diff = t.alpha_phi - t.alpha_psi;
        const T* f = P.features + size_t(t.item) * d;
        T dphi_i = 0, dpsi_i = 0, dphi_e = 0, dpsi_e = 0;
        for (int64_t j = 0; j < d; ++j) {
          kg[j] += gamma * h[j];
          ke[j] += t.delta / T(E) * h[j];
          const T a = gamma * q[j] + t.delta * ru[j];  // dL_IRM/dh_tj
          const T ae = t.delta / T(E) * q[j];          // dL_ERM/dh_tj
          mi[j] += a * diff * f[j];
          dphi_i += a * mu[j] * f[j];
          dpsi_i += a * (T(1) - mu[j]) * f[j];
          dphi_e += ae * mu[j] * f[j];
          dpsi_e += ae * (T(1) - mu[j]) * f[j];
        }
        if (L.attention) {
          T* da = term_dalpha.data() + (size_t(r) * TPR + slot) * 4;
          da[0] = dphi_e;
          da[1] = dpsi_e;
          da[2] = dphi_i;
          da[3] = dpsi_i;
        }
      }
      row_gamma_sum[r] = gsum;
      row_delta_sum[r] = dsum;
    }
  }
  // g_E, g_I: rows in order, gated by the environment's open mask.
  for (int32_t e = 0; e < E; ++e) {
    const T* op = C.open.data() + size_t(e) * d;
    for (int64_t r = B.env_offsets[e]; r < B.env_offsets[e + 1]; ++r) {
      for (int64_t j = 0; j < d; ++j) {
        R.g_E[j] += op[j] * row_mask_e[size_t(r) * d + j] / T(E);
        R.g_I[j] += op[j] * row_mask_i[size_t(r) * d + j];
      }
    }
  }

  // ---- pass 3: w_ERM, the mask direction, and the weighted parameter gradient
  weigh_objectives(S, mask, d, R);
  const T wE = R.w_ERM, wI = R.w_IRM;

  // W and b: sum_r Pf_u (wE * ke_r + wI * kg_r)^T (+ 2 gamma_w W)
  std::vector<T> combined(size_t(rows) * d);
  for (size_t x = 0; x < combined.size(); ++x) combined[x] = wE * row_vec_erm[x] + wI * row_vec[x];
  accumulate_outer(C, 0, rows, combined, T(1), R.grad.data() + L.W);
  for (int32_t k = 0; k < D; ++k) {
    double acc = 0;
    for (int64_t r = 0; r < rows; ++r) {
      acc += (wE * row_delta_sum[r] + wI * row_gamma_sum[r]) * P.Pf[size_t(B.users[r]) * D + k];
    }
    R.grad[L.b + k] = T(acc);
  }
  for (int64_t x = 0; x < int64_t(D) * d; ++x)
    R.grad[L.W + x] += T(2 * S.gamma_w) * params[L.W + x];
  for (int32_t k = 0; k < D; ++k) R.grad[L.b + k] += T(2 * S.gamma_w) * params[L.b + k];

  if (L.attention) {
    // Per row: dpre of the user half (2, H); per term: dpre of the item half, summed by item.
    std::vector<T> row_dpre(size_t(rows) * 2 * H, T(0));
    std::vector<T> term_dpre(size_t(rows) * TPR * 2 * H, T(0));
    std::vector<T> row_dw2(size_t(rows) * 2 * H, T(0)), row_db2(size_t(rows) * 2, T(0));
#pragma omp parallel
    {
      std::vector<T> q(d), up(size_t(2) * H), hid(size_t(2) * H), h(d);
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        const int32_t e = C.env_of_row(r);
        const int32_t u = B.users[r];
        T base;
        C.row_setup(u, q.data(), base, up.data());
        for (int32_t slot = 0; slot < TPR; ++slot) {
          TermEval<T> t;
          C.term_identity(r, slot, t);
          if (t.c == T(0)) continue;
          C.forward(e, u, q.data(), up.data(), base, t, hid.data(), h.data());
          const T* da = term_dalpha.data() + (size_t(r) * TPR + slot) * 4;
          const T dalpha[2] = {wE * da[0] + wI * da[2], wE * da[1] + wI * da[3]};
          const T alpha[2] = {t.alpha_phi, t.alpha_psi};
          for (int k = 0; k < 2; ++k) {
            const T dlogit = dalpha[k] * alpha[k] * (T(1) - alpha[k]);
            row_db2[size_t(r) * 2 + k] += dlogit;
            const T* w2 = params + L.w2[k];
            for (int32_t x = 0; x < H; ++x) {
              row_dw2[(size_t(r) * 2 + k) * H + x] += dlogit * hid[k * H + x];
              const T dp = hid[k * H + x] > T(0) ? dlogit * w2[x] : T(0);
              row_dpre[(size_t(r) * 2 + k) * H + x] += dp;
              term_dpre[((size_t(r) * TPR + slot) * 2 + k) * H + x] = dp;
            }
          }
        }
      }
    }
    for (int k = 0; k < 2; ++k) {
      T* gw1u = R.grad.data() + L.w1u[k];
      T* gw1i = R.grad.data() + L.w1i[k];
      T* gb1 = R.grad.data() + L.b1[k];
      T* gw2 = R.grad.data() + L.w2[k];
      // user half: sum_r dpre_r [Pt_u; Pf_u]^T
#pragma omp parallel for schedule(static)
      for (int32_t x = 0; x < H; ++x) {
        for (int64_t r = 0; r < rows; ++r) {
          const T dp = row_dpre[(size_t(r) * 2 + k) * H + x];
          if (dp == T(0)) continue;
          const int32_t u = B.users[r];
          for (int32_t c = 0; c < D; ++c) {
            gw1u[size_t(x) * 2 * D + c] += dp * P.Pt[size_t(u) * D + c];
            gw1u[size_t(x) * 2 * D + D + c] += dp * P.Pf[size_t(u) * D + c];
          }
        }
      }
      // item half: dpre summed per item, then sum_j dpre_j [T_j; f_j]^T
      std::vector<T> item_dpre(size_t(P.n_items) * H, T(0));
      for (int64_t r = 0; r < rows; ++r) {
        for (int32_t slot = 0; slot < TPR; ++slot) {
          TermEval<T> t;
          C.term_identity(r, slot, t);
          if (t.c == T(0)) continue;
          const T* dp = term_dpre.data() + ((size_t(r) * TPR + slot) * 2 + k) * H;
          T* acc = item_dpre.data() + size_t(t.item) * H;
          for (int32_t x = 0; x < H; ++x) acc[x] += dp[x];
        }
      }
#pragma omp parallel for schedule(static)
      for (int32_t x = 0; x < H; ++x) {
        for (int32_t j = 0; j < P.n_items; ++j) {
          const T dp = item_dpre[size_t(j) * H + x];
          if (dp == T(0)) continue;
          T* g = gw1i + size_t(x) * (D + d);
          for (int32_t c = 0; c < D; ++c) g[c] += dp * P.Ti[size_t(j) * D + c];
          for (int64_t c = 0; c < d; ++c) g[D + c] += dp * P.features[size_t(j) * d + c];
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        for (int32_t x = 0; x < H; ++x) {
          gb1[x] += row_dpre[(size_t(r) * 2 + k) * H + x];
          gw2[x] += row_dw2[(size_t(r) * 2 + k) * H + x];
        }
        R.grad[L.b2[k]] += row_db2[size_t(r) * 2 + k];
      }
    }
  }
  return R;
}

template MaskStepResult<float> mask_step_v0<float>(const MaskLayout&, const float*, const float*,
                                                   const MaskProblem<float>&, const EnvBatches&,
                                                   const float*, const MaskSettings&);
template MaskStepResult<double> mask_step_v0<double>(const MaskLayout&, const double*,
                                                     const double*, const MaskProblem<double>&,
                                                     const EnvBatches&, const double*,
                                                     const MaskSettings&);

}  // namespace painvrl
