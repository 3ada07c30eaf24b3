// Numerically stable softplus and logistic sigmoid (the BCE-with-logits pieces of Eq. 3-8).
//   softplus(z) = log(1 + e^z) = max(z, 0) + log1p(e^{-|z|})   (never overflows)
//   sigmoid(z)  = 1 / (1 + e^{-z}), evaluated on the side that cannot overflow.
// d softplus / dz = sigmoid(z). BCE(s, y=1) = softplus(-s); BCE(s, y=0) = softplus(s).
#pragma once
#include "painvrl/math/common.h"

namespace painvrl::math {

template <class T>
PAINVRL_HD T softplus(T z) {
  using std::exp;
  using std::fabs;
  using std::log1p;
  const T zero = T(0);
  return (z > zero ? z : zero) + log1p(exp(-fabs(z)));
}

// softplus(z) and sigmoid(z) from one exponential, e = e^{-|z|}; bit-identical to the two
// functions above.
template <class T>
PAINVRL_HD void softplus_sigmoid(T z, T& softplus_z, T& sigmoid_z) {
  using std::exp;
  using std::fabs;
  using std::log1p;
  const T zero = T(0);
  const T e = exp(-fabs(z));
  softplus_z = (z > zero ? z : zero) + log1p(e);
  sigmoid_z = z >= zero ? T(1) / (T(1) + e) : e / (T(1) + e);
}

template <class T>
PAINVRL_HD T sigmoid(T z) {
  using std::exp;
  if (z >= T(0)) {
    return T(1) / (T(1) + exp(-z));
  }
  const T e = exp(z);
  return e / (T(1) + e);
}

}  // namespace painvrl::math
