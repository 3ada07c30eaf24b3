// CPU forward/backward of the UltraGCN loss; see include/painvrl/cpu/ultragcn_loss.h for the
// equation. Work per step: B (1 + N + K) dot products of length D (and again of length D with the
// content branch), the same again for the gradients, plus for the content model the projections
// X = F W^T + b and dW = dX^T F, two (n_items x d x D) GEMMs.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "painvrl/cpu/ultragcn_loss.h"
#include "painvrl/math/activations.h"
#include "painvrl/math/ultragcn.h"

// glibc's libmvec exports an AVX2 log1pf since 2.35 (declared by math.h only under
// -ffast-math, so declared here).
#if defined(PAINVRL_LIBMVEC) && defined(__AVX2__) && defined(__GLIBC__) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
#include <immintrin.h>
#define PAINVRL_HAVE_MVEC_LOG1PF 1
extern "C" __m256 _ZGVdN8v_log1pf(__m256);
extern "C" __m256 _ZGVdN8v_expf(__m256);
#else
#define PAINVRL_HAVE_MVEC_LOG1PF 0
#endif

namespace painvrl::cpu {
namespace {

// Dot product in four independent 32-byte vector accumulators (GCC/Clang vector extensions;
// with AVX2 + FMA each is one register and each step one vfmadd), so the multiply-adds of one
// product do not wait on each other; the accumulators are added in a fixed tree, then the lanes
// in order, then any tail. Deterministic for a given n.
template <class T>
struct Vec32 {
  typedef T type __attribute__((vector_size(32)));
};

template <class T>
inline T dot(const T* a, const T* b, int32_t n) {
  using V = typename Vec32<T>::type;
  constexpr int32_t kLanes = int32_t(32 / sizeof(T));
  V s0 = {}, s1 = {}, s2 = {}, s3 = {};
  auto load = [](const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  };
  int32_t k = 0;
  for (; k + 4 * kLanes <= n; k += 4 * kLanes) {
    s0 += load(a + k) * load(b + k);
    s1 += load(a + k + kLanes) * load(b + k + kLanes);
    s2 += load(a + k + 2 * kLanes) * load(b + k + 2 * kLanes);
    s3 += load(a + k + 3 * kLanes) * load(b + k + 3 * kLanes);
  }
  const V s = (s0 + s1) + (s2 + s3);
  T r = 0;
  for (int32_t l = 0; l < kLanes; ++l) r += s[l];
  for (; k < n; ++k) r += a[k] * b[k];
  return r;
}

// x[k] = log1p(x[k]) for k < n. The float version uses glibc's vector log1pf (libmvec, glibc
// 2.35+, AVX2) eight at a time where available: the scalar log1pf was 13 % of an ML-1M epoch.
// e[k] = exp(-|z[k]|) for k < n; libmvec's expf eight at a time where available (as log1pf).
template <class T>
void exp_neg_abs(const T* z, T* e, int32_t n) {
  for (int32_t k = 0; k < n; ++k) e[k] = std::exp(-std::fabs(z[k]));
}
#if PAINVRL_HAVE_MVEC_LOG1PF
template <>
void exp_neg_abs<float>(const float* z, float* e, int32_t n) {
  const __m256 sign_bit = _mm256_set1_ps(-0.f);
  int32_t k = 0;
  for (; k + 8 <= n; k += 8) {  // -|z|: set the sign bit
    _mm256_storeu_ps(e + k, _ZGVdN8v_expf(_mm256_or_ps(_mm256_loadu_ps(z + k), sign_bit)));
  }
  for (; k < n; ++k) e[k] = std::exp(-std::fabs(z[k]));
}
#endif

template <class T>
void log1p_inplace(T* x, int32_t n) {
  for (int32_t k = 0; k < n; ++k) x[k] = std::log1p(x[k]);
}
#if PAINVRL_HAVE_MVEC_LOG1PF
template <>
void log1p_inplace<float>(float* x, int32_t n) {
  int32_t k = 0;
  for (; k + 8 <= n; k += 8) {
    _mm256_storeu_ps(x + k, _ZGVdN8v_log1pf(_mm256_loadu_ps(x + k)));
  }
  for (; k < n; ++k) x[k] = std::log1p(x[k]);
}
#endif

// Pass B of a batch row's terms (t = 0 the positive, 1..N the negatives, then the item
// neighbours), given their scores s (term_s, overwritten with z) and loss weights w (term_w):
// z = -s for label 1 (positive, neighbours) and s for label 0, e = e^{-|z|} (term_e, then
// log1p(e)), softplus(z) = max(z, 0) + log1p(e), sigmoid(z) from the same e, dL/ds (coef):
// -w sigmoid(z) for the positive, w sigmoid(z) for a negative, -kappa w sigmoid(z) for a
// neighbour; main += the positive and negative losses, ii += the neighbours' (unweighted by
// kappa).
template <class T>
void row_loss_and_coefficients(T* term_s, T* term_e, const T* term_w, T* coef, int32_t N,
                               int32_t terms_per_row, T kappa, T& main, T& ii) {
  for (int32_t t = 0; t < terms_per_row; ++t) {
    term_s[t] = t >= 1 && t <= N ? term_s[t] : -term_s[t];
  }
  exp_neg_abs(term_s, term_e, terms_per_row);
  for (int32_t t = 0; t < terms_per_row; ++t) {
    const T z = term_s[t], e = term_e[t], w = term_w[t];
    const T sg = z >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);  // sigmoid(z)
    const T relu = z > T(0) ? z : T(0);
    if (t == 0) {
      main += w * relu;
      coef[t] = -w * sg;
    } else if (t <= N) {
      main += w * relu;
      coef[t] = w * sg;
    } else {
      ii += w * relu;
      coef[t] = -kappa * w * sg;
    }
  }
  log1p_inplace(term_e, terms_per_row);
  for (int32_t t = 0; t <= N; ++t) main += term_w[t] * term_e[t];
  for (int32_t t = N + 1; t < terms_per_row; ++t) ii += term_w[t] * term_e[t];
}

// Asks for the cache lines of row[0 .. n) ahead of use.
template <class T>
inline void prefetch_row(const T* row, int32_t n) {
  const char* p = reinterpret_cast<const char*>(row);
  for (size_t off = 0; off < sizeof(T) * size_t(n); off += 64) __builtin_prefetch(p + off);
}

// y (n) += sum_p c[p] * table[rows[p]] (n), p in order. For float rows of a multiple of 64, y
// is held in eight 8-float vectors (registers with AVX2) 64 columns at a time, so the sum does
// not go through memory once per term; the result is the same as the axpy loop's (each column
// sums its terms in order). Rows are prefetched four terms ahead.
template <class T>
void accumulate_rows(T* y, const T* c, const int32_t* rows, int64_t count, const T* table,
                     int32_t n) {
  for (int64_t p = 0; p < count; ++p) {
    if (p + 4 < count) prefetch_row(table + size_t(rows[p + 4]) * n, n);
    const T* x = table + size_t(rows[p]) * n;
#pragma omp simd
    for (int32_t k = 0; k < n; ++k) y[k] += c[p] * x[k];
  }
}

template <>
void accumulate_rows<float>(float* y, const float* c, const int32_t* rows, int64_t count,
                            const float* table, int32_t n) {
  using V = Vec32<float>::type;
  if (n % 64 != 0) {
    for (int64_t p = 0; p < count; ++p) {
      if (p + 4 < count) prefetch_row(table + size_t(rows[p + 4]) * n, n);
      const float* x = table + size_t(rows[p]) * n;
      for (int32_t k = 0; k < n; ++k) y[k] += c[p] * x[k];
    }
    return;
  }
  auto load = [](const float* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  };
  for (int32_t base = 0; base < n; base += 64) {
    V a0 = load(y + base), a1 = load(y + base + 8), a2 = load(y + base + 16),
      a3 = load(y + base + 24), a4 = load(y + base + 32), a5 = load(y + base + 40),
      a6 = load(y + base + 48), a7 = load(y + base + 56);
    for (int64_t p = 0; p < count; ++p) {
      if (p + 4 < count) prefetch_row(table + size_t(rows[p + 4]) * n + base, 64);
      const float* x = table + size_t(rows[p]) * n + base;
      const float cp = c[p];
      a0 += cp * load(x);
      a1 += cp * load(x + 8);
      a2 += cp * load(x + 16);
      a3 += cp * load(x + 24);
      a4 += cp * load(x + 32);
      a5 += cp * load(x + 40);
      a6 += cp * load(x + 48);
      a7 += cp * load(x + 56);
    }
    std::memcpy(y + base, &a0, sizeof(V));
    std::memcpy(y + base + 8, &a1, sizeof(V));
    std::memcpy(y + base + 16, &a2, sizeof(V));
    std::memcpy(y + base + 24, &a3, sizeof(V));
    std::memcpy(y + base + 32, &a4, sizeof(V));
    std::memcpy(y + base + 40, &a5, sizeof(V));
    std::memcpy(y + base + 48, &a6, sizeof(V));
    std::memcpy(y + base + 56, &a7, sizeof(V));
  }
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

// Stable counting sort of the nonzero terms by item: positions item_term_offsets[j] ..
// item_term_offsets[j + 1] hold item j's terms in increasing term index, as their coefficient
// (item_term_coef) and user (item_term_user, row_user[term / terms_per_row]). Each thread counts
// and then places one contiguous range of terms; a thread's cursor for item j starts after the
// counts of all earlier threads, so the output is the serial one for any thread count.
template <class T>
void sort_terms_by_item(const std::vector<int32_t>& term_item, const std::vector<T>& term_coef,
                        int32_t n_items, const int32_t* row_user, int32_t terms_per_row,
                        LossWorkspace<T>& ws) {
  const int64_t n_terms = int64_t(term_item.size());
  const int threads = omp_get_max_threads();
  ws.thread_item_cursor.assign(size_t(threads) * n_items, 0);  // (threads, n_items)
  ws.item_term_offsets.resize(size_t(n_items) + 1);
#pragma omp parallel num_threads(threads)
  {
    const int th = omp_get_thread_num(), nth = omp_get_num_threads();
    const int64_t begin = n_terms * th / nth, end = n_terms * (th + 1) / nth;
    int64_t* count = ws.thread_item_cursor.data() + size_t(th) * n_items;
    for (int64_t t = begin; t < end; ++t) {
      if (term_coef[t] != T(0)) ++count[term_item[t]];
    }
#pragma omp barrier
#pragma omp single
    {
      int64_t running = 0;
      for (int32_t j = 0; j < n_items; ++j) {
        ws.item_term_offsets[j] = running;
        for (int k = 0; k < nth; ++k) {
          int64_t& c = ws.thread_item_cursor[size_t(k) * n_items + j];
          const int64_t n = c;
          c = running;
          running += n;
        }
      }
      ws.item_term_offsets[n_items] = running;
      ws.item_term_coef.resize(size_t(running));
      ws.item_term_user.resize(size_t(running));
    }  // implied barrier
    int64_t row = begin / terms_per_row, next_row_start = (row + 1) * terms_per_row;
    for (int64_t t = begin; t < end; ++t) {
      if (t == next_row_start) {
        ++row;
        next_row_start += terms_per_row;
      }
      if (term_coef[t] == T(0)) continue;
      const int64_t pos = count[term_item[t]]++;
      ws.item_term_coef[size_t(pos)] = term_coef[t];
      ws.item_term_user[size_t(pos)] = row_user[row];
    }
  }
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
  ws.term_exp.resize(size_t(B) * terms_per_row);
  ws.term_weight.resize(size_t(B) * terms_per_row);
  ws.term_score.resize(size_t(B) * terms_per_row);
  ws.term_item.resize(size_t(B) * terms_per_row);
  ws.row_main.resize(size_t(B));
  ws.row_ii.resize(size_t(B));
  if (grad) ws.row_user_grad.resize(size_t(B) * user_grad_width);

  const T w1 = T(S.w1), w2 = T(S.w2), w3 = T(S.w3), w4 = T(S.w4);
  const T neg_scale = N > 0 ? T(S.neg_weight) / T(N) : T(0);
  const T kappa = T(S.kappa);

  // 1. Per batch row: scores, loss, dL/ds per term, and the user-row gradient, each term's
  // gradient added while its item row is still in L1 from the dot product (terms in order).
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t r = 0; r < B; ++r) {
    const int32_t u = batch.users[r];
    const int32_t i = batch.items[r];
    const T* pt = Pt + size_t(u) * D;
    const T* pf = Pf ? Pf + size_t(u) * D : nullptr;
    const T bu = problem.beta_user[u];
    T* coef = ws.term_coef.data() + size_t(r) * terms_per_row;
    int32_t* titem = ws.term_item.data() + size_t(r) * terms_per_row;
    T* gu = grad ? ws.row_user_grad.data() + size_t(r) * user_grad_width : nullptr;
    if (gu) std::fill(gu, gu + user_grad_width, T(0));
    // The row's terms: the positive, its N negatives, its K item neighbours.
    titem[0] = i;
    std::copy_n(batch.negatives + size_t(r) * N, N, titem + 1);
    std::copy_n(problem.ii_neighbors + size_t(i) * problem.ii_k, K, titem + 1 + N);
    auto score = [&](int32_t j) {
      T s = dot(pt, Titem + size_t(j) * D, D);
      if (pf) s += dot(pf, X + size_t(j) * D, D);
      return s;
    };
    // The item rows are random rows of tables larger than L2: fetch kAhead terms ahead.
    auto prefetch = [&](int32_t j) {
      prefetch_row(Titem + size_t(j) * D, D);
      if (pf) prefetch_row(X + size_t(j) * D, D);
    };
    // Three passes over the row's terms, so that no term waits on the one before it:
    //   A. the scores (dot products only; rows prefetched kAhead terms ahead);
    //   B. per term z = -s (label 1) or s (label 0), its loss weight w, e = e^{-|z|} (one
    //      exponential gives softplus(z) = max(z, 0) + log1p(e) and sigmoid(z)), dL/ds;
    //   C. the user-row gradient, sum_t dL/ds_t * row_t, in registers (rows still in L2).
    T* term_e = ws.term_exp.data() + size_t(r) * terms_per_row;
    T* term_w = ws.term_weight.data() + size_t(r) * terms_per_row;
    T* term_s = ws.term_score.data() + size_t(r) * terms_per_row;
    constexpr int32_t kAhead = 4;
    for (int32_t t = 0; t < std::min(kAhead, terms_per_row); ++t) prefetch(titem[t]);
    for (int32_t t = 0; t < terms_per_row; ++t) {  // A
      if (t + kAhead < terms_per_row) prefetch(titem[t + kAhead]);
      term_w[t] = t == 0   ? math::pair_weight(w1, w2, bu, problem.beta_item[i])
                  : t <= N ? neg_scale * math::pair_weight(w3, w4, bu, problem.beta_item[titem[t]])
                           : problem.ii_weights[size_t(i) * problem.ii_k + (t - 1 - N)];
      // A neighbour with omega = 0 pads and contributes nothing: no score needed.
      term_s[t] = term_w[t] != T(0) || t <= N ? score(titem[t]) : T(0);
    }
    T main = 0, ii = 0;  // B
    row_loss_and_coefficients(term_s, term_e, term_w, coef, N, terms_per_row, kappa, main, ii);
    if (gu) {  // C
      accumulate_rows(gu, coef, titem, terms_per_row, Titem, D);
      if (pf) accumulate_rows(gu + D, coef, titem, terms_per_row, X, D);
    }
    ws.row_main[r] = main;
    ws.row_ii[r] = ii;
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
  // With the full-table L2 fused into the optimiser, its value is the optimiser's too (it reads
  // every parameter anyway); l2_emb and l2_w stay 0 here.
  if (touched_mode || add_l2_grad) {
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
  sort_terms_by_item(ws.term_item, ws.term_coef, L.n_items, batch.users, terms_per_row, ws);
  if (L.content) ws.item_vec_grad.assign(size_t(L.n_items) * D, T(0));
#pragma omp parallel for schedule(dynamic, 16)
  for (int32_t j = 0; j < L.n_items; ++j) {
    const int64_t begin = ws.item_term_offsets[j], end = ws.item_term_offsets[j + 1];
    const T* coefs = ws.item_term_coef.data() + begin;
    const int32_t* users = ws.item_term_user.data() + begin;
    accumulate_rows(grad + L.t + size_t(j) * D, coefs, users, end - begin, Pt, D);
    if (L.content) {
      accumulate_rows(ws.item_vec_grad.data() + size_t(j) * D, coefs, users, end - begin, Pf, D);
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

void use_single_threaded_blas() { openblas_set_num_threads(1); }

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

namespace {

// X (n_items, E * D) = F W_all^T + b_all.
void project_items_all_envs(const EnvModelsView& m, const float* features, std::vector<float>& x) {
  const int64_t width = int64_t(m.envs) * m.dim;
  x.resize(size_t(m.n_items) * size_t(width));
  if (m.feat_dim > 0) {
    gemm_abt(m.n_items, width, m.feat_dim, features, m.w_all, x.data());
  } else {
    std::fill(x.begin(), x.end(), 0.f);
  }
#pragma omp parallel for schedule(static)
  for (int32_t i = 0; i < m.n_items; ++i)
    axpy(1.f, m.b_all, x.data() + size_t(i) * width, int32_t(width));
}

}  // namespace

void env_projection_loss_grad(const EnvModelsView& m, const LossProblem<float>& problem,
                              const EnvBatch& batch, const LossSettings& S, double* env_loss,
                              float* grad_w_all, float* grad_b_all, LossWorkspace<float>& ws) {
  using T = float;
  const int32_t D = m.dim, E = m.envs;
  const int64_t width = int64_t(E) * D;
  const int64_t B = batch.size;
  const int32_t N = batch.n_negatives;
  const int32_t K = S.kappa != 0 ? problem.ii_k : 0;
  const int32_t terms_per_row = 1 + N + K;
  project_items_all_envs(m, problem.features, ws.item_vec);
  const T* X = ws.item_vec.data();
  ws.term_coef.resize(size_t(B) * terms_per_row);
  ws.term_item.resize(size_t(B) * terms_per_row);  // key j * E + e
  ws.term_exp.resize(size_t(B) * terms_per_row);
  ws.term_weight.resize(size_t(B) * terms_per_row);
  ws.term_score.resize(size_t(B) * terms_per_row);
  ws.row_main.resize(size_t(B));
  const T w1 = T(S.w1), w2 = T(S.w2), w3 = T(S.w3), w4 = T(S.w4);
  const T neg_scale = N > 0 ? T(S.neg_weight) / T(N) : T(0);
  const T kappa = T(S.kappa);

  // 1. Per row: the terms' scores under the row's environment model, loss and dL/ds.
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < B; ++r) {
    const int32_t u = batch.users[r], i = batch.items[r], e = batch.envs[r];
    const T* pt = m.pt + size_t(u) * D;
    const T* pf = m.pf + size_t(u) * D;
    const T bu = problem.beta_user[u];
    T* coef = ws.term_coef.data() + size_t(r) * terms_per_row;
    int32_t* key = ws.term_item.data() + size_t(r) * terms_per_row;
    T* term_e = ws.term_exp.data() + size_t(r) * terms_per_row;
    T* term_w = ws.term_weight.data() + size_t(r) * terms_per_row;
    auto item_of = [&](int32_t t) {
      return t == 0   ? i
             : t <= N ? batch.negatives[size_t(r) * N + (t - 1)]
                      : problem.ii_neighbors[size_t(i) * problem.ii_k + (t - 1 - N)];
    };
    T* term_s = ws.term_score.data() + size_t(r) * terms_per_row;
    for (int32_t t = 0; t < terms_per_row; ++t) {  // scores, as in ultragcn_loss_grad
      const int32_t j = item_of(t);
      key[t] = j * E + e;
      term_w[t] = t == 0   ? math::pair_weight(w1, w2, bu, problem.beta_item[i])
                  : t <= N ? neg_scale * math::pair_weight(w3, w4, bu, problem.beta_item[j])
                           : problem.ii_weights[size_t(i) * problem.ii_k + (t - 1 - N)];
      term_s[t] =
          term_w[t] != T(0) || t <= N
              ? dot(pt, m.t + size_t(j) * D, D) + dot(pf, X + size_t(j) * width + size_t(e) * D, D)
              : T(0);
    }
    T main = 0, ii = 0;
    row_loss_and_coefficients(term_s, term_e, term_w, coef, N, terms_per_row, kappa, main, ii);
    ws.row_main[r] = main + kappa * ii;
  }
  for (int32_t e = 0; e < E; ++e) env_loss[e] = 0;
  for (int64_t r = 0; r < B; ++r) env_loss[batch.envs[r]] += double(ws.row_main[r]);

  // 2. dX by (item, environment) key, each key's terms in term order; the "user" of a sorted
  // term is its row's user (row_user), whose Pf row is the gradient direction.
  sort_terms_by_item(ws.term_item, ws.term_coef, int32_t(m.n_items) * E, batch.users, terms_per_row,
                     ws);
  ws.item_vec_grad.assign(size_t(m.n_items) * size_t(width), T(0));
  const int32_t n_keys = m.n_items * E;
#pragma omp parallel for schedule(dynamic, 64)
  for (int32_t key = 0; key < n_keys; ++key) {
    T* gx = ws.item_vec_grad.data() + size_t(key) * D;  // row j, block e: (j * E + e) * D
    for (int64_t p = ws.item_term_offsets[key]; p < ws.item_term_offsets[key + 1]; ++p) {
      axpy(ws.item_term_coef[p], m.pf + size_t(ws.item_term_user[p]) * D, gx, D);
    }
  }
  // 3. dW_all (E D, d) = dX^T F; db_all = sum_j dX[j].
  std::fill(grad_w_all, grad_w_all + width * m.feat_dim, T(0));
  if (m.feat_dim > 0) {
    gemm_atb_acc(width, m.feat_dim, m.n_items, ws.item_vec_grad.data(), problem.features,
                 grad_w_all);
  }
  std::fill(grad_b_all, grad_b_all + width, T(0));
  for (int32_t j = 0; j < m.n_items; ++j) {
    axpy(T(1), ws.item_vec_grad.data() + size_t(j) * width, grad_b_all, int32_t(width));
  }
}

void env_projection_score_pairs(const EnvModelsView& m, const float* features, const int32_t* users,
                                const int32_t* items, int64_t count, float* out,
                                LossWorkspace<float>& ws) {
  project_items_all_envs(m, features, ws.item_vec);
  const int32_t D = m.dim, E = m.envs;
  const int64_t width = int64_t(E) * D;
  const float* X = ws.item_vec.data();
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < count; ++p) {
    const int32_t u = users[p], i = items[p];
    const float id_part = dot(m.pt + size_t(u) * D, m.t + size_t(i) * D, D);
    for (int32_t e = 0; e < E; ++e) {
      out[size_t(p) * E + e] =
          id_part + dot(m.pf + size_t(u) * D, X + size_t(i) * width + size_t(e) * D, D);
    }
  }
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
