// The closed-form mask step (host/mask_step.cpp) against central finite differences in double:
// g_E, g_I, and the gradients of L_ERM and L_IRM with respect to W, b and the attention MLPs, on
// tiny random problems (several seeds, E = 2 and 3, with and without attention). And w_ERM: both
// clip ends, the zero-denominator rule, and the descent property of Eq. 20-23.
#include "painvrl/mask_step.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace painvrl {
namespace {

struct TinyMaskProblem {
  int32_t U = 5, I = 7, D = 3, H = 3, N = 2, K = 2;
  int64_t d = 4;
  std::vector<double> Pt, Pf, Ti, f, bu, bi, iiw, params, mask, noise;
  std::vector<int32_t> iin;
  EnvBatches batches;
  MaskLayout layout;
  MaskProblem<double> P;

  TinyMaskProblem(unsigned seed, int32_t E, bool attention) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> nd(0, 0.8);
    std::uniform_real_distribution<double> uni(0.1, 1.2);
    auto fill = [&](std::vector<double>& v, size_t n) {
      v.resize(n);
      for (auto& x : v) x = nd(rng);
    };
    fill(Pt, size_t(U) * D);
    fill(Pf, size_t(U) * D);
    fill(Ti, size_t(I) * D);
    fill(f, size_t(I) * d);
    bu.resize(U);
    bi.resize(I);
    for (auto& x : bu) x = uni(rng);
    for (auto& x : bi) x = uni(rng);
    iin.resize(size_t(I) * K);
    iiw.resize(size_t(I) * K);
    std::uniform_int_distribution<int32_t> ui(0, U - 1), ii(0, I - 1);
    for (auto& x : iin) x = ii(rng);
    for (auto& x : iiw) x = uni(rng);
    layout = MaskLayout::make(D, d, H, attention);
    fill(params, size_t(layout.total));
    // the mask: interior values, one coordinate clipped high in every environment
    mask = {0.35, 0.6, 0.5, 1.4};
    noise.resize(size_t(E) * d);
    for (auto& x : noise) x = 0.05 * nd(rng);
    batches.env_offsets = {0};
    batches.n_negatives = N;
    for (int32_t e = 0; e < E; ++e) {
      const int rows = 2 + e % 2;
      for (int r = 0; r < rows; ++r) {
        batches.users.push_back(ui(rng));
        batches.items.push_back(ii(rng));
        for (int n = 0; n < N; ++n) batches.negatives.push_back(ii(rng));
      }
      batches.env_offsets.push_back(int64_t(batches.users.size()));
    }
    P = MaskProblem<double>{U,          I,          D,        d,         Pt.data(),
                            Pf.data(),  Ti.data(),  f.data(), bu.data(), bi.data(),
                            iin.data(), iiw.data(), K};
  }

  MaskSettings settings(MaskObjective objective) const {
    MaskSettings s;
    s.w1 = 0.8;
    s.w2 = 1.1;
    s.w3 = 0.5;
    s.w4 = 0.9;
    s.neg_weight = 2.0;
    s.kappa = 0.7;
    s.gamma_w = 0;
    s.lambda = 0.3;
    s.center = 0.5;
    s.step = 0.1;
    s.objective = objective;
    return s;
  }

  MaskStepResult<double> run(const std::vector<double>& p, const std::vector<double>& m,
                             MaskObjective objective) const {
    return mask_step<double>(layout, p.data(), m.data(), P, batches, noise.data(),
                             settings(objective));
  }
};

void expect_near_fd(double analytic, double fd, double scale, const std::string& what) {
  EXPECT_NEAR(analytic, fd, 1e-7 * scale + 1e-6 * std::fabs(fd)) << what;
}

class MaskStepFd : public testing::TestWithParam<std::tuple<unsigned, int, bool>> {};

TEST_P(MaskStepFd, ClosedFormMatchesFiniteDifferences) {
  const auto [seed, E, attention] = GetParam();
  TinyMaskProblem prob(seed, E, attention);
  const double h = 1e-6;
  // g_E and g_I: derivatives of L_ERM and L_IRM with respect to m.
  const auto base = prob.run(prob.params, prob.mask, MaskObjective::kPareto);
  EXPECT_GT(base.L_IRM, 0);
  double scale_e = 0, scale_i = 0;
  for (int64_t j = 0; j < prob.d; ++j) {
    scale_e = std::max(scale_e, std::fabs(base.g_E[j]));
    scale_i = std::max(scale_i, std::fabs(base.g_I[j]));
  }
  ASSERT_GT(scale_e, 1e-4);
  ASSERT_GT(scale_i, 1e-6);
  for (int64_t j = 0; j < prob.d; ++j) {
    std::vector<double> m = prob.mask;
    m[j] += h;
    const auto up = prob.run(prob.params, m, MaskObjective::kPareto);
    m[j] -= 2 * h;
    const auto down = prob.run(prob.params, m, MaskObjective::kPareto);
    expect_near_fd(base.g_E[j], (up.L_ERM - down.L_ERM) / (2 * h), scale_e,
                   "g_E " + std::to_string(j));
    expect_near_fd(base.g_I[j], (up.L_IRM - down.L_IRM) / (2 * h), scale_i,
                   "g_I " + std::to_string(j));
  }
  // dL_ERM/dtheta and dL_IRM/dtheta for every parameter (W, b, MLPs).
  const auto erm = prob.run(prob.params, prob.mask, MaskObjective::kErm);
  const auto irm = prob.run(prob.params, prob.mask, MaskObjective::kIrm);
  double se = 0, si = 0;
  for (int64_t k = 0; k < prob.layout.total; ++k) {
    se = std::max(se, std::fabs(erm.grad[k]));
    si = std::max(si, std::fabs(irm.grad[k]));
  }
  for (int64_t k = 0; k < prob.layout.total; ++k) {
    std::vector<double> p = prob.params;
    p[k] += h;
    const auto up = prob.run(p, prob.mask, MaskObjective::kPareto);
    p[k] -= 2 * h;
    const auto down = prob.run(p, prob.mask, MaskObjective::kPareto);
    expect_near_fd(erm.grad[k], (up.L_ERM - down.L_ERM) / (2 * h), se,
                   "dL_ERM/dparam " + std::to_string(k));
    expect_near_fd(irm.grad[k], (up.L_IRM - down.L_IRM) / (2 * h), si,
                   "dL_IRM/dparam " + std::to_string(k));
  }
  // The Pareto objective's gradient is the w_ERM-weighted sum of the two.
  for (int64_t k = 0; k < prob.layout.total; ++k) {
    EXPECT_NEAR(base.grad[k], base.w_ERM * erm.grad[k] + (1 - base.w_ERM) * irm.grad[k],
                1e-12 * (se + si));
  }
  // The mask update of Eq. 19.
  for (int64_t j = 0; j < prob.d; ++j) {
    const double dir =
        base.w_ERM * base.g_E[j] + (1 - base.w_ERM) * base.g_I[j] + 0.3 * (prob.mask[j] - 0.5);
    EXPECT_NEAR(base.mask_new[j], std::clamp(prob.mask[j] - 0.1 * dir, 0.0, 1.0), 1e-12);
  }
  // A clipped coordinate (m = 1.4 stays above 1 with the noise) receives no gate gradient.
  EXPECT_NEAR(base.g_E[3], 0.0, 1e-15);
}

INSTANTIATE_TEST_SUITE_P(SeedsEnvsAttention, MaskStepFd,
                         testing::Combine(testing::Values(1u, 2u, 3u), testing::Values(2, 3),
                                          testing::Bool()));

TEST(ParetoWeight, ClipEndsAndZeroDenominator) {
  // |g_I| >> |g_E| along the same line: the min-norm point is g_E itself (w = 1).
  EXPECT_DOUBLE_EQ(pareto_weight<double>({1, 0}, {10, 0}), 1.0);
  // |g_E| >> |g_I|: w = 0 (all weight on g_I).
  EXPECT_DOUBLE_EQ(pareto_weight<double>({10, 0}, {1, 0}), 0.0);
  // equal gradients: zero denominator -> 0.5
  EXPECT_DOUBLE_EQ(pareto_weight<double>({0.3, -2}, {0.3, -2}), 0.5);
  EXPECT_DOUBLE_EQ(pareto_weight<double>({0, 0}, {0, 0}), 0.5);
  // orthogonal unit vectors: w = 0.5 exactly; (1, 0) vs (0, 2): w = 4 / 5
  EXPECT_DOUBLE_EQ(pareto_weight<double>({1, 0}, {0, 1}), 0.5);
  EXPECT_DOUBLE_EQ(pareto_weight<double>({1, 0}, {0, 2}), 0.8);
}

// Eq. 20-23: for w strictly inside (0, 1) the combined direction has a non-negative inner product
// with both gradients (it is the min-norm point of their convex hull).
TEST(ParetoWeight, CombinedDirectionDescendsBothObjectives) {
  std::mt19937 rng(11);
  std::normal_distribution<double> nd(0, 1);
  int interior = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    const int d = 1 + trial % 7;
    std::vector<double> gE(d), gI(d);
    const double scale = std::exp(nd(rng));
    for (int j = 0; j < d; ++j) {
      gE[j] = nd(rng);
      gI[j] = scale * nd(rng);
    }
    const double w = pareto_weight(gE, gI);
    ASSERT_GE(w, 0.0);
    ASSERT_LE(w, 1.0);
    if (w <= 0 || w >= 1) continue;
    ++interior;
    double de = 0, di = 0, norm = 0;
    for (int j = 0; j < d; ++j) {
      const double c = w * gE[j] + (1 - w) * gI[j];
      de += c * gE[j];
      di += c * gI[j];
      norm += c * c;
    }
    EXPECT_GE(de, -1e-12 * (1 + norm));
    EXPECT_GE(di, -1e-12 * (1 + norm));
  }
  EXPECT_GT(interior, 500);
}

}  // namespace
}  // namespace painvrl
