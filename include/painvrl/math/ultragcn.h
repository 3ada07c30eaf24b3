// UltraGCN weights (paper Eq. 6 and Eq. 8; UltraGCN reference code, see DESIGN.md section 2).
//   beta_u = sqrt(d_u + 1) / d_u,  beta_i = 1 / sqrt(d_i + 1)      (v_ui = beta_u * beta_i, Eq. 6)
//   pos_w(u, i) = w1 + w2 * beta_u * beta_i,  neg_w(u, j) = w3 + w4 * beta_u * beta_j
//   omega_ij, paper (Eq. 8):   G_ij / (g_i - G_ii) * sqrt(g_i / g_j),   j != i
//   omega_ij, ultragcn code:   G_ij / g_i * sqrt((g_i + 1) / (g_j + 1)), diagonal kept
// with G = R^T R and g_i = sum_j G_ij (diagonal included; G_ii = d_i).
#pragma once
#include "painvrl/math/activations.h"
#include "painvrl/math/common.h"

namespace painvrl::math {

// A user without training pairs never appears as a positive; beta_u = 0 keeps it finite.
template <class T>
PAINVRL_HD T beta_user(T degree) {
  using std::sqrt;
  return degree > T(0) ? sqrt(degree + T(1)) / degree : T(0);
}

template <class T>
PAINVRL_HD T beta_item(T degree) {
  using std::sqrt;
  return T(1) / sqrt(degree + T(1));
}

template <class T>
PAINVRL_HD T pair_weight(T w_const, T w_beta, T beta_u, T beta_i) {
  return w_const + w_beta * beta_u * beta_i;
}

template <class T>
PAINVRL_HD T omega_paper(T g_ij, T g_i, T g_ii, T g_j) {
  using std::sqrt;
  const T denom = g_i - g_ii;
  return denom > T(0) && g_j > T(0) ? g_ij / denom * sqrt(g_i / g_j) : T(0);
}

template <class T>
PAINVRL_HD T omega_ultragcn(T g_ij, T g_i, T g_j) {
  using std::sqrt;
  return g_i > T(0) ? g_ij / g_i * sqrt((g_i + T(1)) / (g_j + T(1))) : T(0);
}

// One term of a batch row's loss (paper Eq. 3-5, 7): a label-1 term (the positive pair or an
// item neighbour) costs w softplus(-s), a label-0 term (a negative) w softplus(s); dlds is its
// derivative in the score s. Kernels call this per term; the CPU backend computes the same
// quantities eight terms at a time (host/cpu/cpu_loss.cpp) and a test holds the two equal.
template <class T>
struct TermLoss {
  T loss;
  T dlds;
};

template <class T>
PAINVRL_HD TermLoss<T> bce_term(T score, T weight, bool label_one) {
  const T z = label_one ? -score : score;
  T sp, sg;
  softplus_sigmoid(z, sp, sg);
  return TermLoss<T>{weight * sp, label_one ? -weight * sg : weight * sg};
}

}  // namespace painvrl::math
