// The per-element formulas of PaInvRL's mask-generation step (DESIGN.md section 2, paper Eq.
// 10-19), shared by the CPU step (host/cpu/mask_step.cpp) and the CUDA kernels
// (kernels/mask_step.cu):
//   gate:   z = m_j + noise_ej, mu_ej = clip(z, 0, 1), open_ej = [0 < z < 1]   (Eq. 12, the
//           straight-through clip: the gradient passes only where the clip is inactive)
//   term:   a BCE term c * BCE(s, y) with its first and second derivatives in s:
//           delta = c (sigma(s) - y), delta2 = c sigma(s) (1 - sigma(s))
//   Pareto: w_ERM = clip(((g_I - g_E) . g_I) / |g_E - g_I|^2, 0, 1), 0.5 when the denominator is
//           below 1e-12 (Eq. 17-18), from the two sums.
//   mask:   direction wE g_E + wI g_I + lambda (m - c); m' = clip(m - step * direction, 0, 1) (Eq.
//   19)
//   scale:  the divisors of g_E and g_I before Eq. 17 (pareto_normalize), from the step's sums and
//           the stage's running state
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

// How g_E and g_I are scaled before Eq. 17 (and in the mask direction): none (the paper's raw
// gradients), l2 (each by its own norm: w_ERM is then identically 1/2), loss (each by its loss),
// initial (each by its RMS at the first step of the mask stage, so w_ERM follows how each
// gradient has changed since), running (each by a bias-corrected running mean of its RMS).
enum class ParetoNormalize { kNone, kL2, kLoss, kInitial, kRunning };

// The reference scales of the stage-relative normalisations, carried from step to step of one
// mask stage (one outer iteration) by the mask runners and saved in their checkpoints.
struct ParetoScale {
  double rms_E = 0, rms_I = 0;  // kInitial: the first non-zero step's RMS; kRunning: running means
  int64_t steps = 0;            // steps folded in
};
constexpr double kParetoRunningDecay = 0.9;  // kRunning's running mean

// The divisors sE, sI of g_E and g_I from |g_E|^2, |g_I|^2 (over d columns) and the losses;
// `state` goes from the stage's state before the step to the one after it. A zero or
// non-finite divisor is 1 (that gradient is left as it is).
PAINVRL_HD void pareto_scales(ParetoNormalize mode, double sq_E, double sq_I, double L_ERM,
                              double L_IRM, int64_t d, ParetoScale& state, double& sE, double& sI) {
  using std::isfinite;
  using std::pow;
  using std::sqrt;
  const double cols = double(d > 0 ? d : 1);
  const double rms_E = sqrt(sq_E / cols), rms_I = sqrt(sq_I / cols);
  sE = 1;
  sI = 1;
  if (mode == ParetoNormalize::kL2) {
    sE = sqrt(sq_E);
    sI = sqrt(sq_I);
  } else if (mode == ParetoNormalize::kLoss) {
    sE = L_ERM;
    sI = L_IRM;
  } else if (mode == ParetoNormalize::kInitial) {
    if (!(state.rms_E > 0)) state.rms_E = rms_E;
    if (!(state.rms_I > 0)) state.rms_I = rms_I;
    ++state.steps;
    sE = state.rms_E;
    sI = state.rms_I;
  } else if (mode == ParetoNormalize::kRunning) {
    const double a = kParetoRunningDecay;
    state.rms_E = a * state.rms_E + (1 - a) * rms_E;
    state.rms_I = a * state.rms_I + (1 - a) * rms_I;
    ++state.steps;
    const double correction = 1 - pow(a, double(state.steps));
    sE = state.rms_E / correction;
    sI = state.rms_I / correction;
  }
  if (!(sE > 0) || !isfinite(sE)) sE = 1;
  if (!(sI > 0) || !isfinite(sI)) sI = 1;
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
