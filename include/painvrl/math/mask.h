// The per-element formulas of PaInvRL's mask-generation step (DESIGN.md section 2, paper Eq.
// 10-19), shared by the CPU step (host/mask_step.cpp) and the CUDA kernels (kernels/mask_step.cu):
//   gate:   z = m_j + noise_ej, mu_ej = clip(z, 0, 1), open_ej = [0 < z < 1]   (Eq. 12, the
//           straight-through clip: the gradient passes only where the clip is inactive)
//   term:   a BCE term c * BCE(s, y) with its first and second derivatives in s:
//           delta = c (sigma(s) - y), delta2 = c sigma(s) (1 - sigma(s))
//   Pareto: w_ERM = clip(((g_I - g_E) . g_I) / |g_E - g_I|^2, 0, 1), 0.5 when the denominator is
//           below 1e-12 (Eq. 17-18), from the two sums.
//   mask:   direction wE g_E + wI g_I + lambda (m - c); m' = clip(m - step * direction, 0, 1) (Eq.
//   19)
#pragma once
#include "painvrl/math/activations.h"
#include "painvrl/math/common.h"

namespace painvrl::math {

template <class T>
PAINVRL_HD T mask_gate(T m, T noise, T& open) {
  const T z = m + noise;
  open = (z > T(0) && z < T(1)) ? T(1) : T(0);
  return z < T(0) ? T(0) : (z > T(1) ? T(1) : z);
}

template <class T>
struct MaskTermLoss {
  T delta, delta2, loss;
};

// One exponential e = e^{-|s|}, one division and one log1p: sigma(s) and sigma(-s) are
// 1 / (1 + e) and e / (1 + e) (which is which depends on the sign of s), so delta2 is their
// product without the cancellation of 1 - sigma(s), and sigma(s) - 1 = -sigma(-s).
template <class T>
PAINVRL_HD MaskTermLoss<T> mask_term_loss(T s, T c, bool positive) {
  using std::exp;
  using std::fabs;
  using std::log1p;
  const T e = exp(-fabs(s));
  const T inv = T(1) / (T(1) + e);
  const T big = inv, small = e * inv;  // sigma(|s|), sigma(-|s|)
  const T sig_s = s >= T(0) ? big : small, sig_neg_s = s >= T(0) ? small : big;
  const T z = positive ? -s : s;  // the loss is c * softplus(z)
  MaskTermLoss<T> r;
  r.delta = positive ? -c * sig_neg_s : c * sig_s;
  r.delta2 = c * sig_s * sig_neg_s;
  r.loss = c * ((z > T(0) ? z : T(0)) + log1p(e));
  return r;
}

// num = sum_j (gI_j - gE_j) gI_j, den = sum_j (gE_j - gI_j)^2.
template <class T>
PAINVRL_HD T pareto_weight_from_sums(T num, T den) {
  if (den < T(1e-12)) return T(0.5);
  const T w = num / den;
  return w < T(0) ? T(0) : (w > T(1) ? T(1) : w);
}

// The mask direction and the clipped SGD step of one element.
template <class T>
PAINVRL_HD T mask_direction(T wE, T gE, T wI, T gI, T lambda, T m, T center) {
  return wE * gE + wI * gI + lambda * (m - center);
}
template <class T>
PAINVRL_HD T mask_sgd(T m, T step, T direction) {
  const T x = m - step * direction;
  return x < T(0) ? T(0) : (x > T(1) ? T(1) : x);
}

}  // namespace painvrl::math
