// Negative sampling and initial weights from the counter-based generator (philox.h), so that
// every backend draws identical values. Negatives are uniform over all items with replacement
// (they may hit a positive, as in the UltraGCN and InvRL reference code).
#pragma once
#include "painvrl/math/philox.h"

namespace painvrl::math {

// The n-th negative of batch row `row` in step `step` of epoch `epoch`.
PAINVRL_HD uint32_t negative_item(PhiloxKey key, uint32_t epoch, uint32_t step, uint32_t row,
                                  uint32_t slot, uint32_t n_items) {
  const U32x4 r = philox(key, slot >> 2, row, step, epoch);
  return uniform_below(r.v[slot & 3u], n_items);
}

// All n negatives of one batch row, out[slot] = negative_item(..., slot, n_items): one Philox
// call per four slots.
PAINVRL_HD void negative_row(PhiloxKey key, uint32_t epoch, uint32_t step, uint32_t row, uint32_t n,
                             uint32_t n_items, int32_t* out) {
  for (uint32_t group = 0; group * 4u < n; ++group) {
    const U32x4 r = philox(key, group, row, step, epoch);
    for (uint32_t q = 0; q < 4u && group * 4u + q < n; ++q) {
      out[group * 4u + q] = int32_t(uniform_below(r.v[q], n_items));
    }
  }
}

// Element j of environment env's gate noise in mask step (epoch, step), N(0, sigma^2): one Philox
// call per two elements. Box-Muller runs in double and the result is rounded to float, so that
// the host's libm and the device's log and cos (whose float versions differ by an ulp or two)
// give the same float: a double result would have to fall within ~1e-16 of a float rounding
// boundary to round differently.
PAINVRL_HD float mask_noise(PhiloxKey key, uint32_t epoch, uint32_t step, uint32_t env, uint64_t j,
                            float sigma) {
  const U32x4 r = philox(key, uint32_t(j >> 1), env, step, epoch);
  const uint32_t half = uint32_t(j & 1u) * 2u;
  return float(double(sigma) * normal_from<double>(r.v[half], r.v[half + 1]));
}

// Element `index` of tensor `tensor`, drawn N(0, std^2).
template <class T>
PAINVRL_HD T init_normal(PhiloxKey key, uint32_t tensor, uint64_t index, T std_dev) {
  const U32x4 r = philox(key, uint32_t(index >> 1), uint32_t(index >> 33), tensor, 0);
  const uint32_t half = uint32_t(index & 1u) * 2u;
  return std_dev * normal_from<T>(r.v[half], r.v[half + 1]);
}

}  // namespace painvrl::math
