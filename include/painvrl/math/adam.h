// Adam update (Kingma and Ba), in PyTorch's arithmetic order so that our runs match the reference
// implementations step for step, with the L2 gradient fused in:
//   g' = g + l2_grad_coef * p           (l2_grad_coef = 2 * gamma for the term gamma * |p|^2)
//   m = b1 m + (1 - b1) g';  v = b2 v + (1 - b2) g'^2
//   p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
#pragma once
#include "painvrl/math/common.h"

namespace painvrl::math {

struct AdamStep {
  float lr;
  float beta1;
  float beta2;
  float eps;
  float step_size;            // lr / (1 - beta1^t)
  float inv_sqrt_bias_corr2;  // 1 / sqrt(1 - beta2^t)
};

inline AdamStep make_adam_step(float lr, float beta1, float beta2, float eps, long long t) {
  const double bc1 = 1.0 - std::pow(double(beta1), double(t));
  const double bc2 = 1.0 - std::pow(double(beta2), double(t));
  return AdamStep{lr, beta1, beta2, eps, float(lr / bc1), float(1.0 / std::sqrt(bc2))};
}

template <class T>
PAINVRL_HD void adam_update(T& param, T& m, T& v, T grad, T l2_grad_coef, const AdamStep& s) {
  using std::sqrt;
  const T g = grad + l2_grad_coef * param;
  m = T(s.beta1) * m + (T(1) - T(s.beta1)) * g;
  v = T(s.beta2) * v + (T(1) - T(s.beta2)) * g * g;
  const T denom = sqrt(v) * T(s.inv_sqrt_bias_corr2) + T(s.eps);
  param -= T(s.step_size) * m / denom;
}

}  // namespace painvrl::math
