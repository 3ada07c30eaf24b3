// One PaInvRL mask-generation step in closed form (the production step, variant 1 of
// bench/mask-step); the derivation is in include/painvrl/backend/mask_step.h and docs/mask-step.md.
//
// A term t is one positive, negative or neighbour of a batch row r (user u, environment e, item j).
// h_t = (alpha_Psi + diff mu_e) * f_j with diff = alpha_Phi - alpha_Psi, so every d-long quantity a
// term needs is a dot product of f_j with a per-row vector, and every d-long sum over a row's terms
// is a weighted sum of its items' feature rows. Per term the step does four dot products and four
// axpys of length d and the two attention MLPs (hidden H); everything else is a dense product:
//   pass 1  A = <q_r, f_j>, B = <q_r mu_e, f_j>  (q_r = W^T Pf_u);  s_t = base + <Pt_u, T_j>
//           + alpha_Psi A + diff B;  S1_r = sum delta alpha_Psi f_j,  S2_r = sum delta diff f_j
//   G_e   = Pf_e^T (S1 + mu_e S2)  (GEMM);  V, L_IRM, R_e elementwise;  RU_e = Pf_e R_e (GEMM)
//   pass 2  C = <ru_r, f_j>, Dq = <ru_r mu_e, f_j>;  gamma_t = delta2 (alpha_Psi C + diff Dq);
//           S3_r = sum gamma alpha_Psi f_j,  S4_r = sum gamma diff f_j
//   g_E   = (1/E) sum_e open_e sum_r q_r S2_r;  g_I = 2 m sum_k V^2 + sum_e open_e sum_r (q_r S4_r
//           + ru_r S2_r);  dJ/dW = Pf^T (wE (S1 + mu S2) / E + wI (S3 + mu S4))  (GEMM)
//   attention: dJ/dalpha from the four dots; the MLPs' first layers by GEMMs over the rows and the
//           touched items.
// FLOPs per step: about 16 d per term plus 8 H per term (attention), and the GEMMs: 2 (D+d) 2H
// per touched item twice, 6 D d per row. Bytes: each term reads its feature row twice (passes 1
// and 2), 2 d * sizeof(T). Rows run in parallel; every reduction sums in a fixed order, so the
// result does not depend on the thread count (BLAS runs single-threaded, on fixed row chunks).
#include "painvrl/backend/mask_step.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "painvrl/cpu/ultragcn_loss.h"
#include "painvrl/math/activations.h"
#include "painvrl/math/mask.h"
#include "painvrl/math/ultragcn.h"

namespace painvrl {

MaskLayout MaskLayout::make(int32_t D, int64_t d, int32_t H, bool attention) {
  MaskLayout L;
  L.D = D;
  L.d = d;
  L.H = attention ? H : 0;
  L.attention = attention;
  int64_t off = 0;
  L.W = off;
  off += int64_t(D) * d;
  L.b = off;
  off += D;
  if (attention) {
    for (int k = 0; k < 2; ++k) {
      L.w1u[k] = off;
      off += int64_t(H) * 2 * D;
      L.w1i[k] = off;
      off += int64_t(H) * (D + d);
      L.b1[k] = off;
      off += H;
      L.w2[k] = off;
      off += H;
      L.b2[k] = off;
      off += 1;
    }
  }
  L.total = off;
  return L;
}

std::vector<MaskLayout::Tensor> MaskLayout::tensors() const {
  std::vector<Tensor> t = {{"W", W, {D, d}}, {"b", b, {D}}};
  if (attention) {
    for (int k = 0; k < 2; ++k) {
      const std::string p = k == 0 ? "mlp1_" : "mlp2_";
      t.push_back({p + "w1u", w1u[k], {H, 2 * D}});
      t.push_back({p + "w1i", w1i[k], {H, D + d}});
      t.push_back({p + "b1", b1[k], {H}});
      t.push_back({p + "w2", w2[k], {H}});
      t.push_back({p + "b2", b2[k], {1}});
    }
  }
  return t;
}

template <class T>
T pareto_weight(const std::vector<T>& g_E, const std::vector<T>& g_I) {
  T num = 0, den = 0;
  for (size_t j = 0; j < g_E.size(); ++j) {
    const T diff = g_E[j] - g_I[j];
    num += (g_I[j] - g_E[j]) * g_I[j];
    den += diff * diff;
  }
  return math::pareto_weight_from_sums(num, den);
}

template <class T>
void weigh_objectives(const MaskSettings& S, const T* mask, int64_t d, MaskStepResult<T>& R) {
  double sq_E = 0, sq_I = 0;
  for (T x : R.g_E) sq_E += double(x) * double(x);
  for (T x : R.g_I) sq_I += double(x) * double(x);
  double sE = 1, sI = 1;  // g_E / sE and g_I / sI enter Eq. 17 and the mask direction
  R.scale = S.scale;
  math::pareto_scales(S.normalize, sq_E, sq_I, double(R.L_ERM), double(R.L_IRM), d, R.scale, sE,
                      sI);
  std::vector<T> gE(R.g_E.size()), gI(R.g_I.size());
  for (size_t j = 0; j < gE.size(); ++j) {
    gE[j] = T(double(R.g_E[j]) / sE);
    gI[j] = T(double(R.g_I[j]) / sI);
  }
  T wE = 1, wI = 0;
  switch (S.objective) {
    case MaskObjective::kPareto:
      wE = pareto_weight(gE, gI);
      wI = T(1) - wE;
      break;
    case MaskObjective::kErm:
      break;
    case MaskObjective::kIrm:
      wE = 0;
      wI = 1;
      break;
    case MaskObjective::kFixed:
      wI = T(S.fixed_alpha);
      break;
  }
  R.w_ERM = wE;
  R.w_IRM = wI;
  R.mask_grad.resize(size_t(d));
  R.mask_new.resize(size_t(d));
  for (int64_t j = 0; j < d; ++j) {
    R.mask_grad[j] = math::mask_direction(wE, gE[j], wI, gI[j], T(S.lambda), mask[j], T(S.center));
    R.mask_new[j] = math::mask_sgd(mask[j], T(S.step), R.mask_grad[j]);
  }
}

namespace {

// Row-major GEMM, C (m x n) = alpha op(A) op(B) + beta C.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
          int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j];
    return;
  }
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(m),
              int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j];
    return;
  }
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(m),
              int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}

// C (m x n) = op(A) B with A's rows (or, transposed, its columns) cut into fixed chunks of
// kChunk output rows that threads take in turn: every output element is computed by the same
// single-threaded BLAS call whatever the thread count.
constexpr int64_t kChunk = 64;
template <class T>
void gemm_rows(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
               const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const int64_t chunks = (m + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(dynamic, 1) if (chunks > 1)
  for (int64_t x = 0; x < chunks; ++x) {
    const int64_t r0 = x * kChunk, rows = std::min(kChunk, m - r0);
    const T* a0 = ta ? a + r0 : a + r0 * lda;
    gemm(ta, tb, rows, n, k, T(1), a0, lda, b, ldb, beta, c + r0 * ldc, ldc);
  }
}

// C (m x n) = A^T B for A (k x m), B (k x n), all row-major, with the output's columns cut into
// fixed chunks of kColChunk that threads take in turn: for the products whose m is small (D or
// H) and whose k (rows, touched items) is long, where gemm_rows would leave one chunk and one
// thread. Each output element is computed by the same single-threaded BLAS call whatever the
// thread count.
constexpr int64_t kColChunk = 64;
template <class T>
void gemm_cols_at(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                  T* c, int64_t ldc) {
  const int64_t chunks = (n + kColChunk - 1) / kColChunk;
#pragma omp parallel for schedule(dynamic, 1) if (chunks > 1)
  for (int64_t x = 0; x < chunks; ++x) {
    const int64_t c0 = x * kColChunk, cols = std::min(kColChunk, n - c0);
    gemm(true, false, m, cols, k, T(1), a, lda, b + c0, ldb, T(0), c + c0, ldc);
  }
}

// The term loops' vector pieces. `omp simd` reductions keep several partial sums in a fixed
// order set at compile time (the same on every run and thread count) instead of one serial chain.
template <class T>
T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) s += a[k] * b[k];
  return s;
}
// (<a, f>, <b, f>)
template <class T>
void dot2(const T* a, const T* b, const T* f, int64_t n, T& sa, T& sb) {
  T x = 0, y = 0;
#pragma omp simd reduction(+ : x, y)
  for (int64_t k = 0; k < n; ++k) {
    x += a[k] * f[k];
    y += b[k] * f[k];
  }
  sa = x;
  sb = y;
}
// ya += ca f, yb += cb f
template <class T>
void axpy2(T ca, T cb, const T* f, T* ya, T* yb, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    ya[k] += ca * f[k];
    yb[k] += cb * f[k];
  }
}

// dot2 for two feature rows at once: four independent sums, each in dot2's order.
template <class T>
void dot2x2(const T* a, const T* b, const T* f, const T* g, int64_t n, T& fa, T& fb, T& ga, T& gb) {
  T x = 0, y = 0, z = 0, w = 0;
#pragma omp simd reduction(+ : x, y, z, w)
  for (int64_t k = 0; k < n; ++k) {
    x += a[k] * f[k];
    y += b[k] * f[k];
    z += a[k] * g[k];
    w += b[k] * g[k];
  }
  fa = x;
  fb = y;
  ga = z;
  gb = w;
}
// axpy2 with f, then with g: each element gets f's terms added before g's, as two calls would.
template <class T>
void axpy2x2(T ca, T cb, const T* f, T da, T db, const T* g, T* ya, T* yb, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    ya[k] = (ya[k] + ca * f[k]) + da * g[k];
    yb[k] = (yb[k] + cb * f[k]) + db * g[k];
  }
}

// Row r's terms that have an item (term_item >= 0), in slot order, into `terms`; returns how many.
inline int32_t row_terms(const int32_t* term_item, int64_t r, int32_t per_row, int64_t* terms) {
  int32_t n = 0;
  for (int32_t slot = 0; slot < per_row; ++slot) {
    if (term_item[r * per_row + slot] >= 0) terms[n++] = r * per_row + slot;
  }
  return n;
}

// Per-term values kept between the passes (MaskStepWorkspace::term).
enum TermField : int {
  kAlphaPhi,
  kAlphaPsi,
  kA,       // <q_r, f_j>
  kB,       // <q_r mu_e, f_j>
  kDelta,   // dloss/ds
  kDelta2,  // d^2loss/ds^2
  kGamma,
  kDAlphaPhiErm,  // dL_ERM/dalpha_Phi, then dJ/dlogit_Phi
  kDAlphaPsiErm,  // dL_ERM/dalpha_Psi, then dJ/dlogit_Psi
  kDAlphaPhiIrm,
  kDAlphaPsiIrm,
  kTermFields
};

template <class T>
void resize(std::vector<T>& v, size_t n) {
  if (v.size() != n) v.resize(n);
}

}  // namespace

template <class T>
void mask_step(const MaskLayout& L, const T* params, const T* mask, const MaskProblem<T>& P,
               const EnvBatches& B, const T* noise, const MaskSettings& S, MaskStepWorkspace<T>& ws,
               MaskStepResult<T>& R) {
  // Every product below is a single-threaded BLAS call on a fixed chunk, whoever set the count.
  cpu::use_single_threaded_blas();
  const int32_t E = B.E(), N = B.n_negatives, D = L.D, H = L.H;
  const int32_t K = S.kappa > 0 ? P.ii_k : 0;
  const int32_t TPR = 1 + N + K;  // terms per row
  const int64_t d = L.d;
  const int64_t rows = B.env_offsets.back();
  const int64_t n_terms = rows * TPR;
  const bool att = L.attention;
  const T* W = params + L.W;

  // ---- the gate, each row's user quantities and the touched items
  resize(ws.gate, size_t(E) * d);
  resize(ws.open, size_t(E) * d);
  for (int32_t e = 0; e < E; ++e) {
    for (int64_t j = 0; j < d; ++j) {
      const size_t x = size_t(e) * d + j;
      ws.gate[x] = math::mask_gate(mask[j], noise[x], ws.open[x]);
    }
  }
  std::vector<int32_t> row_env(static_cast<size_t>(rows));
  for (int32_t e = 0; e < E; ++e)
    for (int64_t r = B.env_offsets[e]; r < B.env_offsets[e + 1]; ++r) row_env[r] = e;
  resize(ws.pf_rows, size_t(rows) * D);
  resize(ws.term_item, size_t(n_terms));
  resize(ws.term, size_t(n_terms) * kTermFields);
  std::vector<T> term_weight(static_cast<size_t>(n_terms));
  std::vector<uint8_t> term_positive(static_cast<size_t>(n_terms));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t u = B.users[r], i = B.items[r];
    std::copy(P.Pf + size_t(u) * D, P.Pf + size_t(u + 1) * D, ws.pf_rows.data() + size_t(r) * D);
    const T bu = P.beta_user[u];
    for (int32_t slot = 0; slot < TPR; ++slot) {
      const int64_t t = r * TPR + slot;
      int32_t item;
      T c;
      bool positive = true;
      if (slot == 0) {
        item = i;
        c = math::pair_weight(T(S.w1), T(S.w2), bu, P.beta_item[i]);
      } else if (slot <= N) {
        item = B.negatives[size_t(r) * N + slot - 1];
        c = T(S.neg_weight) / T(N) * math::pair_weight(T(S.w3), T(S.w4), bu, P.beta_item[item]);
        positive = false;
      } else {
        const int32_t k = slot - 1 - N;
        item = P.ii_neighbors[size_t(i) * P.ii_k + k];
        c = T(S.kappa) * P.ii_weights[size_t(i) * P.ii_k + k];
      }
      ws.term_item[t] = c == T(0) ? -1 : item;
      term_weight[t] = c;
      term_positive[t] = positive;
    }
  }
  // q = Pf_rows W (rows, d)
  resize(ws.q, size_t(rows) * d);
  gemm_rows<T>(false, false, rows, d, D, ws.pf_rows.data(), D, W, d, T(0), ws.q.data(), d);
  int64_t n_touched = 0;
  const int64_t w_in = D + d;
  if (att) {
    // Touched items in first-seen order, and their [T_j, f_j] rows.
    resize(ws.item_slot, size_t(P.n_items));
    std::fill(ws.item_slot.begin(), ws.item_slot.end(), -1);
    ws.touched.clear();
    for (int64_t t = 0; t < n_terms; ++t) {
      const int32_t j = ws.term_item[t];
      if (j >= 0 && ws.item_slot[j] < 0) {
        ws.item_slot[j] = int32_t(ws.touched.size());
        ws.touched.push_back(j);
      }
    }
    n_touched = int64_t(ws.touched.size());
    resize(ws.item_in, size_t(n_touched) * w_in);
#pragma omp parallel for schedule(static)
    for (int64_t x = 0; x < n_touched; ++x) {
      const int32_t j = ws.touched[x];
      T* dst = ws.item_in.data() + size_t(x) * w_in;
      std::copy(P.Ti + size_t(j) * D, P.Ti + size_t(j + 1) * D, dst);
      std::copy(P.features + size_t(j) * d, P.features + size_t(j + 1) * d, dst + D);
    }
    resize(ws.user_in, size_t(rows) * 2 * D);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t u = B.users[r];
      T* dst = ws.user_in.data() + size_t(r) * 2 * D;
      std::copy(P.Pt + size_t(u) * D, P.Pt + size_t(u + 1) * D, dst);
      std::copy(P.Pf + size_t(u) * D, P.Pf + size_t(u + 1) * D, dst + D);
    }
    // Both MLPs' first layers in one product each (their weights stacked, 2H outputs):
    // user_pre (rows, 2H) = user_in (rows, 2D) w1u_both^T;  item_pre = item_in w1i_both^T + b1.
    resize(ws.w1u_both, size_t(2) * H * 2 * D);
    resize(ws.w1i_both, size_t(2) * H * w_in);
    for (int k = 0; k < 2; ++k) {
      std::copy(params + L.w1u[k], params + L.w1u[k] + size_t(H) * 2 * D,
                ws.w1u_both.data() + size_t(k) * H * 2 * D);
      std::copy(params + L.w1i[k], params + L.w1i[k] + size_t(H) * w_in,
                ws.w1i_both.data() + size_t(k) * H * w_in);
    }
    resize(ws.user_pre, size_t(rows) * 2 * H);
    resize(ws.item_pre, size_t(n_touched) * 2 * H);
    gemm_rows<T>(false, true, rows, 2 * H, 2 * D, ws.user_in.data(), 2 * D, ws.w1u_both.data(),
                 2 * D, T(0), ws.user_pre.data(), 2 * H);
    for (int64_t x = 0; x < n_touched; ++x) {
      for (int k = 0; k < 2; ++k) {
        std::copy(params + L.b1[k], params + L.b1[k] + H,
                  ws.item_pre.data() + size_t(x) * 2 * H + size_t(k) * H);
      }
    }
    gemm_rows<T>(false, true, n_touched, 2 * H, w_in, ws.item_in.data(), w_in, ws.w1i_both.data(),
                 w_in, T(1), ws.item_pre.data(), 2 * H);
  }
  // Both attention logits of row r's term on item j, as two independent sums.
  auto logits = [&](int64_t r, int32_t j, T& l0, T& l1) {
    const T* up = ws.user_pre.data() + size_t(r) * 2 * H;
    const T* ip = ws.item_pre.data() + size_t(ws.item_slot[j]) * 2 * H;
    const T *w2a = params + L.w2[0], *w2b = params + L.w2[1];
    T a = 0, b = 0;
#pragma omp simd reduction(+ : a)
    for (int32_t x = 0; x < H; ++x) {
      const T pa = up[x] + ip[x];
      a += w2a[x] * (pa > T(0) ? pa : T(0));
    }
#pragma omp simd reduction(+ : b)
    for (int32_t x = 0; x < H; ++x) {
      const T pb = up[H + x] + ip[H + x];
      b += w2b[x] * (pb > T(0) ? pb : T(0));
    }
    l0 = params[L.b2[0]] + a;
    l1 = params[L.b2[1]] + b;
  };

  // ---- pass 1: scores, losses, S1 and S2
  resize(ws.s1, size_t(rows) * d);
  resize(ws.s2, size_t(rows) * d);
  resize(ws.row_loss, size_t(rows));
  resize(ws.row_dsum, size_t(rows));
  resize(ws.row_gsum, size_t(rows));
#pragma omp parallel
  {
    std::vector<T> qmu(static_cast<size_t>(d));
    std::vector<int64_t> valid(static_cast<size_t>(TPR));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t e = row_env[r], u = B.users[r];
      const T* mu = ws.gate.data() + size_t(e) * d;
      const T* q = ws.q.data() + size_t(r) * d;
      for (int64_t j = 0; j < d; ++j) qmu[j] = q[j] * mu[j];
      const T base = dot(ws.pf_rows.data() + size_t(r) * D, params + L.b, D);
      T* s1 = ws.s1.data() + size_t(r) * d;
      T* s2 = ws.s2.data() + size_t(r) * d;
      std::fill(s1, s1 + d, T(0));
      std::fill(s2, s2 + d, T(0));
      double loss = 0;
      auto alphas = [&](int64_t t, T& a_phi, T& a_psi) {
        a_phi = 1;
        a_psi = 0;
        if (att) {
          T l0, l1;
          logits(r, ws.term_item[t], l0, l1);
          a_phi = math::sigmoid(l0);
          a_psi = math::sigmoid(l1);
        }
      };
      // Term t's score from its dots, its loss added to `loss`, its values kept; c1, c2: the
      // coefficients of f_j in S1 and S2.
      auto finish = [&](int64_t t, T a_phi, T a_psi, T A, T Bq, T& c1, T& c2) {
        const int32_t j = ws.term_item[t];
        const T diff = a_phi - a_psi;
        const T sc =
            base + dot(P.Ti + size_t(j) * D, P.Pt + size_t(u) * D, D) + a_psi * A + diff * Bq;
        const math::MaskTermLoss<T> bl = math::mask_term_loss(sc, term_weight[t], term_positive[t]);
        loss += double(bl.loss);
        c1 = bl.delta * a_psi;
        c2 = bl.delta * diff;
        T* tv = ws.term.data() + size_t(t) * kTermFields;
        tv[kAlphaPhi] = a_phi;
        tv[kAlphaPsi] = a_psi;
        tv[kA] = A;
        tv[kB] = Bq;
        tv[kDelta] = bl.delta;
        tv[kDelta2] = bl.delta2;
      };
      // The row's terms with an item, in slot order, two at a time (each sum is added in the
      // order one term at a time adds it; two rows' reads and four independent sums in flight).
      const int32_t nv = row_terms(ws.term_item.data(), r, TPR, valid.data());
      for (int32_t x = 0; x < nv; x += 2) {
        const int64_t ta = valid[size_t(x)];
        const T* fa = P.features + size_t(ws.term_item[ta]) * d;
        T pa, sa, ca1, ca2;
        alphas(ta, pa, sa);
        if (x + 1 < nv) {
          const int64_t tb = valid[size_t(x + 1)];
          const T* fb = P.features + size_t(ws.term_item[tb]) * d;
          T pb, sb, Aa, Ba, Ab, Bb, cb1, cb2;
          alphas(tb, pb, sb);
          dot2x2(q, qmu.data(), fa, fb, d, Aa, Ba, Ab, Bb);
          finish(ta, pa, sa, Aa, Ba, ca1, ca2);
          finish(tb, pb, sb, Ab, Bb, cb1, cb2);
          axpy2x2(ca1, ca2, fa, cb1, cb2, fb, s1, s2, d);
        } else {
          T A, Bq;
          dot2(q, qmu.data(), fa, d, A, Bq);
          finish(ta, pa, sa, A, Bq, ca1, ca2);
          axpy2(ca1, ca2, fa, s1, s2, d);
        }
      }
      ws.row_loss[r] = loss;
    }
  }

  // ---- G_e, L^e, g_E, V, L_IRM, R_e
  R.loss_env.assign(size_t(E), T(0));
  resize(R.G, size_t(E) * D * d);
  resize(R.V, size_t(D) * d);
  R.g_E.assign(size_t(d), T(0));
  R.g_I.assign(size_t(d), T(0));
  resize(ws.row_vec, size_t(rows) * d);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {  // S1 + mu_e S2 = sum_t delta_t h_t
    const T* mu = ws.gate.data() + size_t(row_env[r]) * d;
    const T* s1 = ws.s1.data() + size_t(r) * d;
    const T* s2 = ws.s2.data() + size_t(r) * d;
    T* v = ws.row_vec.data() + size_t(r) * d;
    for (int64_t x = 0; x < d; ++x) v[x] = s1[x] + mu[x] * s2[x];
  }
  R.L_ERM = 0;
  for (int32_t e = 0; e < E; ++e) {
    const int64_t r0 = B.env_offsets[e], re = B.env_offsets[e + 1] - r0;
    double le = 0;
    for (int64_t r = r0; r < r0 + re; ++r) le += ws.row_loss[r];
    R.loss_env[e] = T(le);
    R.L_ERM += R.loss_env[e] / T(E);
    // G_e (D, d) = Pf_e^T (rows_e, D)^T row_vec_e (rows_e, d)
    gemm_cols_at<T>(D, d, re, ws.pf_rows.data() + size_t(r0) * D, D,
                    ws.row_vec.data() + size_t(r0) * d, d, R.G.data() + size_t(e) * D * d, d);
  }
  resize(ws.gbar, size_t(D) * d);
  resize(ws.radj, size_t(E) * D * d);
  T L_IRM = 0;
  std::vector<T> v2_col(static_cast<size_t>(d), T(0));  // sum_k V_kj^2
  for (int32_t k = 0; k < D; ++k) {
    for (int64_t j = 0; j < d; ++j) {
      const size_t x = size_t(k) * d + j;
      T gb = 0;
      for (int32_t e = 0; e < E; ++e) gb += R.G[size_t(e) * D * d + x] / T(E);
      ws.gbar[x] = gb;
      T v = 0;
      for (int32_t e = 0; e < E; ++e) {
        const T dev = R.G[size_t(e) * D * d + x] - gb;
        v += dev * dev / T(E);
      }
      R.V[x] = v;
      const T vm = v * mask[j];
      L_IRM += vm * vm;
      v2_col[j] += v * v;
      for (int32_t e = 0; e < E; ++e) {
        ws.radj[size_t(e) * D * d + x] =
            T(4) / T(E) * mask[j] * mask[j] * v * (R.G[size_t(e) * D * d + x] - gb);
      }
    }
  }
  R.L_IRM = L_IRM;
  // RU_e (rows_e, d) = Pf_e (rows_e, D) R_e (D, d)
  resize(ws.ru, size_t(rows) * d);
  for (int32_t e = 0; e < E; ++e) {
    const int64_t r0 = B.env_offsets[e], re = B.env_offsets[e + 1] - r0;
    gemm_rows<T>(false, false, re, d, D, ws.pf_rows.data() + size_t(r0) * D, D,
                 ws.radj.data() + size_t(e) * D * d, d, T(0), ws.ru.data() + size_t(r0) * d, d);
  }

  // ---- pass 2: gamma, S3, S4 and the pieces of dJ/dalpha
  resize(ws.s3, size_t(rows) * d);
  resize(ws.s4, size_t(rows) * d);
  const T inv_E = T(1) / T(E);
#pragma omp parallel
  {
    std::vector<T> rumu(static_cast<size_t>(d));
    std::vector<int64_t> valid(static_cast<size_t>(TPR));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* mu = ws.gate.data() + size_t(row_env[r]) * d;
      const T* ru = ws.ru.data() + size_t(r) * d;
      for (int64_t j = 0; j < d; ++j) rumu[j] = ru[j] * mu[j];
      T* s3 = ws.s3.data() + size_t(r) * d;
      T* s4 = ws.s4.data() + size_t(r) * d;
      std::fill(s3, s3 + d, T(0));
      std::fill(s4, s4 + d, T(0));
      double gsum = 0, dsum = 0;
      // Term t's gamma from its dots, its pieces of dJ/dalpha kept; c1, c2: the coefficients of
      // f_j in S3 and S4.
      auto finish = [&](int64_t t, T C, T Dq, T& c1, T& c2) {
        T* tv = ws.term.data() + size_t(t) * kTermFields;
        const T a_psi = tv[kAlphaPsi], diff = tv[kAlphaPhi] - a_psi;
        const T delta = tv[kDelta];
        const T gamma = tv[kDelta2] * (a_psi * C + diff * Dq);
        gsum += double(gamma);
        dsum += double(delta * inv_E);
        c1 = gamma * a_psi;
        c2 = gamma * diff;
        tv[kGamma] = gamma;
        tv[kDAlphaPhiErm] = delta * inv_E * tv[kB];
        tv[kDAlphaPsiErm] = delta * inv_E * (tv[kA] - tv[kB]);
        tv[kDAlphaPhiIrm] = gamma * tv[kB] + delta * Dq;
        tv[kDAlphaPsiIrm] = gamma * (tv[kA] - tv[kB]) + delta * (C - Dq);
      };
      const int32_t nv = row_terms(ws.term_item.data(), r, TPR, valid.data());  // as in pass 1
      for (int32_t x = 0; x < nv; x += 2) {
        const int64_t ta = valid[size_t(x)];
        const T* fa = P.features + size_t(ws.term_item[ta]) * d;
        T ca1, ca2;
        if (x + 1 < nv) {
          const int64_t tb = valid[size_t(x + 1)];
          const T* fb = P.features + size_t(ws.term_item[tb]) * d;
          T Ca, Da, Cb, Db, cb1, cb2;
          dot2x2(ru, rumu.data(), fa, fb, d, Ca, Da, Cb, Db);
          finish(ta, Ca, Da, ca1, ca2);
          finish(tb, Cb, Db, cb1, cb2);
          axpy2x2(ca1, ca2, fa, cb1, cb2, fb, s3, s4, d);
        } else {
          T C, Dq;
          dot2(ru, rumu.data(), fa, d, C, Dq);
          finish(ta, C, Dq, ca1, ca2);
          axpy2(ca1, ca2, fa, s3, s4, d);
        }
      }
      ws.row_gsum[r] = gsum;
      ws.row_dsum[r] = dsum;
    }
  }
  // g_E and g_I: per column, the rows in order, gated by their environment's open indicator;
  // threads take blocks of columns and walk the rows' segments of them.
  const int64_t col_blocks = (d + kColChunk - 1) / kColChunk;
#pragma omp parallel
  {
    std::vector<T> se(static_cast<size_t>(kColChunk)), si(static_cast<size_t>(kColChunk));
#pragma omp for schedule(dynamic, 1)
    for (int64_t cb = 0; cb < col_blocks; ++cb) {
      const int64_t j0 = cb * kColChunk, w = std::min(kColChunk, d - j0);
      T gE[kColChunk] = {}, gI[kColChunk] = {};
      for (int32_t e = 0; e < E; ++e) {
        std::fill(se.begin(), se.end(), T(0));
        std::fill(si.begin(), si.end(), T(0));
        for (int64_t r = B.env_offsets[e]; r < B.env_offsets[e + 1]; ++r) {
          const size_t o = size_t(r) * d + j0;
          const T *q = ws.q.data() + o, *s2 = ws.s2.data() + o, *s4 = ws.s4.data() + o,
                  *ru = ws.ru.data() + o;
          for (int64_t x = 0; x < w; ++x) {
            se[x] += q[x] * s2[x];
            si[x] += q[x] * s4[x] + ru[x] * s2[x];
          }
        }
        for (int64_t x = 0; x < w; ++x) {
          const T op = ws.open[size_t(e) * d + j0 + x];
          gE[x] += op * se[x] * inv_E;
          gI[x] += op * si[x];
        }
      }
      for (int64_t x = 0; x < w; ++x) {
        R.g_E[j0 + x] = gE[x];
        R.g_I[j0 + x] = T(2) * mask[j0 + x] * v2_col[j0 + x] + gI[x];
      }
    }
  }

  // ---- w_ERM, the mask direction, then the weighted parameter gradient
  weigh_objectives(S, mask, d, R);
  const T wE = R.w_ERM, wI = R.w_IRM;
  R.grad.assign(size_t(L.total), T(0));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {  // wE sum delta h / E + wI sum gamma h
    const T* mu = ws.gate.data() + size_t(row_env[r]) * d;
    const size_t o = size_t(r) * d;
    T* v = ws.row_vec.data() + o;
    for (int64_t x = 0; x < d; ++x) {
      v[x] = wE * inv_E * (ws.s1[o + x] + mu[x] * ws.s2[o + x]) +
             wI * (ws.s3[o + x] + mu[x] * ws.s4[o + x]);
    }
  }
  gemm_cols_at<T>(D, d, rows, ws.pf_rows.data(), D, ws.row_vec.data(), d, R.grad.data() + L.W, d);
  for (int32_t k = 0; k < D; ++k) {
    double acc = 0;
    for (int64_t r = 0; r < rows; ++r)
      acc += (double(wE) * ws.row_dsum[r] + double(wI) * ws.row_gsum[r]) *
             double(ws.pf_rows[size_t(r) * D + k]);
    R.grad[L.b + k] = T(acc);
  }
  for (int64_t x = 0; x < int64_t(D) * d; ++x) R.grad[L.W + x] += T(2 * S.gamma_w) * W[x];
  for (int32_t k = 0; k < D; ++k) R.grad[L.b + k] += T(2 * S.gamma_w) * params[L.b + k];

  if (!att) return;
  // ---- the attention MLPs' backward
  // Per row: dpre of the user half, dw2 and db2; dJ/dlogit per term for the item pass.
  resize(ws.row_dpre, size_t(2) * rows * H);
  resize(ws.row_dw2, size_t(rows) * 2 * H);
  resize(ws.row_db2, size_t(rows) * 2);
#pragma omp parallel
  {
    std::vector<T> hid(static_cast<size_t>(H));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      T* dw2 = ws.row_dw2.data() + size_t(r) * 2 * H;
      std::fill(dw2, dw2 + 2 * H, T(0));
      T db2[2] = {0, 0};
      T* dpre[2] = {ws.row_dpre.data() + size_t(r) * H,
                    ws.row_dpre.data() + (size_t(rows) + r) * H};
      std::fill(dpre[0], dpre[0] + H, T(0));
      std::fill(dpre[1], dpre[1] + H, T(0));
      for (int32_t slot = 0; slot < TPR; ++slot) {
        const int64_t t = r * TPR + slot;
        const int32_t j = ws.term_item[t];
        if (j < 0) continue;
        T* tv = ws.term.data() + size_t(t) * kTermFields;
        const T alpha[2] = {tv[kAlphaPhi], tv[kAlphaPsi]};
        const T dalpha[2] = {wE * tv[kDAlphaPhiErm] + wI * tv[kDAlphaPhiIrm],
                             wE * tv[kDAlphaPsiErm] + wI * tv[kDAlphaPsiIrm]};
        const T* up = ws.user_pre.data() + size_t(r) * 2 * H;
        const T* ip = ws.item_pre.data() + size_t(ws.item_slot[j]) * 2 * H;
        for (int k = 0; k < 2; ++k) {
          const T dlogit = dalpha[k] * alpha[k] * (T(1) - alpha[k]);
          tv[kDAlphaPhiErm + k] = dlogit;  // kept for the item pass
          db2[k] += dlogit;
          const T* w2 = params + L.w2[k];
          const T *upk = up + k * H, *ipk = ip + k * H;
#pragma omp simd
          for (int32_t x = 0; x < H; ++x) {
            const T pre = upk[x] + ipk[x];
            hid[x] = pre > T(0) ? pre : T(0);
          }
          T* dwk = dw2 + k * H;
          T* dpk = dpre[k];
#pragma omp simd
          for (int32_t x = 0; x < H; ++x) {
            dwk[x] += dlogit * hid[x];
            dpk[x] += T(hid[x] > T(0)) * (dlogit * w2[x]);  // no branch: vectorises
          }
        }
      }
      ws.row_db2[size_t(r) * 2] = db2[0];
      ws.row_db2[size_t(r) * 2 + 1] = db2[1];
    }
  }
  // Terms grouped by touched item (rows in order within an item), then per item the sum of dpre.
  resize(ws.item_term_offsets, size_t(n_touched) + 1);
  std::fill(ws.item_term_offsets.begin(), ws.item_term_offsets.end(), 0);
  for (int64_t t = 0; t < n_terms; ++t) {
    if (ws.term_item[t] >= 0) ++ws.item_term_offsets[size_t(ws.item_slot[ws.term_item[t]]) + 1];
  }
  for (int64_t x = 0; x < n_touched; ++x) ws.item_term_offsets[x + 1] += ws.item_term_offsets[x];
  resize(ws.item_terms, size_t(ws.item_term_offsets[n_touched]));
  {
    std::vector<int64_t> cursor(ws.item_term_offsets.begin(), ws.item_term_offsets.end() - 1);
    for (int64_t t = 0; t < n_terms; ++t) {
      if (ws.term_item[t] >= 0) ws.item_terms[cursor[ws.item_slot[ws.term_item[t]]]++] = t;
    }
  }
  resize(ws.item_dpre, size_t(2) * n_touched * H);
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t x = 0; x < n_touched; ++x) {
    for (int k = 0; k < 2; ++k) {
      T* acc = ws.item_dpre.data() + (size_t(k) * n_touched + x) * H;
      std::fill(acc, acc + H, T(0));
      const T* ip = ws.item_pre.data() + size_t(x) * 2 * H + size_t(k) * H;
      const T* w2 = params + L.w2[k];
      for (int64_t p = ws.item_term_offsets[x]; p < ws.item_term_offsets[x + 1]; ++p) {
        const int64_t t = ws.item_terms[p];
        const int64_t r = t / TPR;
        const T dlogit = ws.term[size_t(t) * kTermFields + kDAlphaPhiErm + k];
        const T* up = ws.user_pre.data() + size_t(r) * 2 * H + size_t(k) * H;
#pragma omp simd
        for (int32_t h = 0; h < H; ++h) acc[h] += T(up[h] + ip[h] > T(0)) * (dlogit * w2[h]);
      }
    }
  }
  for (int k = 0; k < 2; ++k) {
    // dJ/dw1u_k (H, 2D) = row_dpre_k^T (H, rows) user_in (rows, 2D)
    gemm_cols_at<T>(H, 2 * D, rows, ws.row_dpre.data() + size_t(k) * rows * H, H, ws.user_in.data(),
                    2 * D, R.grad.data() + L.w1u[k], 2 * D);
    // dJ/dw1i_k (H, D + d) = item_dpre_k^T (H, touched) item_in (touched, D + d)
    gemm_cols_at<T>(H, w_in, n_touched, ws.item_dpre.data() + size_t(k) * n_touched * H, H,
                    ws.item_in.data(), w_in, R.grad.data() + L.w1i[k], w_in);
    T* gb1 = R.grad.data() + L.b1[k];
    T* gw2 = R.grad.data() + L.w2[k];
    T gb2 = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const T* dp = ws.row_dpre.data() + (size_t(k) * rows + r) * H;
      const T* dw = ws.row_dw2.data() + size_t(r) * 2 * H + size_t(k) * H;
      for (int32_t x = 0; x < H; ++x) {
        gb1[x] += dp[x];
        gw2[x] += dw[x];
      }
      gb2 += ws.row_db2[size_t(r) * 2 + k];
    }
    R.grad[L.b2[k]] = gb2;
  }
}

template <class T>
MaskStepResult<T> mask_step(const MaskLayout& layout, const T* params, const T* mask,
                            const MaskProblem<T>& problem, const EnvBatches& batches,
                            const T* noise, const MaskSettings& settings) {
  MaskStepWorkspace<T> ws;
  MaskStepResult<T> r;
  mask_step(layout, params, mask, problem, batches, noise, settings, ws, r);
  return r;
}

#define PAINVRL_MASK_STEP(T)                                                                     \
  template T pareto_weight<T>(const std::vector<T>&, const std::vector<T>&);                     \
  template void weigh_objectives<T>(const MaskSettings&, const T*, int64_t, MaskStepResult<T>&); \
  template MaskStepResult<T> mask_step<T>(const MaskLayout&, const T*, const T*,                 \
                                          const MaskProblem<T>&, const EnvBatches&, const T*,    \
                                          const MaskSettings&);                                  \
  template void mask_step<T>(const MaskLayout&, const T*, const T*, const MaskProblem<T>&,       \
                             const EnvBatches&, const T*, const MaskSettings&,                   \
                             MaskStepWorkspace<T>&, MaskStepResult<T>&);
PAINVRL_MASK_STEP(float)
PAINVRL_MASK_STEP(double)
#undef PAINVRL_MASK_STEP

}  // namespace painvrl
