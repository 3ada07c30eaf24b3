// The closed-form mask step (host/cpu/mask_step.cpp) against central finite differences in double:
// g_E, g_I, and the gradients of L_ERM and L_IRM with respect to W, b and the attention MLPs, on
// tiny random problems (several seeds, E = 2 and 3, with and without attention). And w_ERM: both
// clip ends, the zero-denominator rule, and the descent property of Eq. 20-23. And the production
// step's outputs, bit for bit, on one, two and three threads (a problem big enough for several
// of its GEMM row and column chunks).
#include "painvrl/backend/mask_step.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <random>

#include "mask_problem.h"

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

TEST(MaskStep, BitIdenticalOnOneTwoAndThreeThreads) {
  const int saved = omp_get_max_threads();
  for (bool attention : {false, true}) {
    for (unsigned seed : {3u, 4u}) {
      // 150 rows per environment and d = 300: three row chunks and five column chunks.
      const test::MaskTestProblem p(seed, 32, 300, 16, attention, 3, false, 150);
      const MaskProblem<double> P = p.cpu_problem();
      const MaskSettings S =
          test::mask_test_settings(MaskObjective::kPareto, ParetoNormalize::kL2, 0.5);
      std::vector<MaskStepResult<double>> out;
      for (int threads : {1, 2, 3}) {
        omp_set_num_threads(threads);
        out.push_back(mask_step<double>(p.layout, p.params.data(), p.mask.data(), P, p.batches,
                                        p.noise.data(), S));
      }
      omp_set_num_threads(saved);
      auto same = [](const std::vector<double>& a, const std::vector<double>& b) {
        return a.size() == b.size() &&
               std::memcmp(a.data(), b.data(), sizeof(double) * a.size()) == 0;
      };
      for (size_t k = 1; k < out.size(); ++k) {
        const std::string what = "attention " + std::to_string(attention) + " seed " +
                                 std::to_string(seed) + " threads " + std::to_string(k + 1);
        EXPECT_TRUE(same(out[k].grad, out[0].grad)) << what;
        EXPECT_TRUE(same(out[k].G, out[0].G)) << what;
        EXPECT_TRUE(same(out[k].g_E, out[0].g_E)) << what;
        EXPECT_TRUE(same(out[k].g_I, out[0].g_I)) << what;
        EXPECT_TRUE(same(out[k].mask_new, out[0].mask_new)) << what;
        EXPECT_EQ(std::memcmp(&out[k].L_IRM, &out[0].L_IRM, sizeof(double)), 0) << what;
        EXPECT_EQ(std::memcmp(&out[k].w_ERM, &out[0].w_ERM, sizeof(double)), 0) << what;
      }
      double moved = 0;  // the step did something
      for (double g : out[0].grad) moved = std::max(moved, std::fabs(g));
      EXPECT_GT(moved, 0);
    }
  }
}

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

// The stage-relative scales (pareto_normalize), by hand. d = 2, g_E = (3, 0), g_I = (0, 1):
// RMS 3 / sqrt 2 and 1 / sqrt 2.
TEST(ParetoWeight, StageRelativeScalesByHand) {
  const double rE = 3 / std::sqrt(2.0), rI = 1 / std::sqrt(2.0);
  ParetoScale st;
  double sE = 0, sI = 0;
  // initial: the first step sets the references, later steps keep them.
  math::pareto_scales(ParetoNormalize::kInitial, 9, 1, 5, 0.1, 2, st, sE, sI);
  EXPECT_DOUBLE_EQ(sE, rE);
  EXPECT_DOUBLE_EQ(sI, rI);
  EXPECT_EQ(st.steps, 1);
  math::pareto_scales(ParetoNormalize::kInitial, 36, 0.25, 5, 0.1, 2, st, sE, sI);
  EXPECT_DOUBLE_EQ(sE, rE);
  EXPECT_DOUBLE_EQ(sI, rI);
  EXPECT_EQ(st.steps, 2);
  // running: bias-corrected, so the first step is its own RMS, the second
  // (0.9 * 0.1 * r1 + 0.1 * r2) / (1 - 0.81).
  ParetoScale run;
  math::pareto_scales(ParetoNormalize::kRunning, 9, 1, 5, 0.1, 2, run, sE, sI);
  EXPECT_NEAR(sE, rE, 1e-15);
  EXPECT_NEAR(sI, rI, 1e-15);
  math::pareto_scales(ParetoNormalize::kRunning, 36, 0.25, 5, 0.1, 2, run, sE, sI);
  EXPECT_NEAR(sE, (0.09 * rE + 0.1 * 2 * rE) / 0.19, 1e-14);
  EXPECT_NEAR(sI, (0.09 * rI + 0.1 * 0.5 * rI) / 0.19, 1e-14);
  // A zero gradient leaves its divisor at 1; l2 and loss need no state.
  ParetoScale z;
  math::pareto_scales(ParetoNormalize::kInitial, 0, 1, 5, 0.1, 2, z, sE, sI);
  EXPECT_EQ(sE, 1.0);
  EXPECT_EQ(z.rms_E, 0.0);  // set by the first non-zero step
  math::pareto_scales(ParetoNormalize::kL2, 9, 1, 5, 0.1, 2, z, sE, sI);
  EXPECT_DOUBLE_EQ(sE, 3.0);
  EXPECT_DOUBLE_EQ(sI, 1.0);
  math::pareto_scales(ParetoNormalize::kLoss, 9, 1, 5, 0.1, 2, z, sE, sI);
  EXPECT_DOUBLE_EQ(sE, 5.0);
  EXPECT_DOUBLE_EQ(sI, 0.1);
}

// w_ERM moves with the data under the stage-relative normalisations, where l2 fixes it at 1/2:
// with g_E = (3, 0) and g_I = (0, 1) at the stage's first step both scaled vectors are
// (sqrt 2, 0) and (0, sqrt 2), w = 1/2; when g_I later halves, w = |b|^2 / (|a|^2 + |b|^2) =
// 0.5 / 2.5 = 0.2 under initial (the objective that moved less keeps the step), while l2 still
// says 1/2.
TEST(ParetoWeight, AdaptsToHowTheGradientsChanged) {
  auto weigh = [](ParetoNormalize mode, ParetoScale& state, std::vector<double> gE,
                  std::vector<double> gI) {
    MaskSettings S;
    S.normalize = mode;
    S.scale = state;
    MaskStepResult<double> R;
    R.g_E = gE;
    R.g_I = gI;
    R.L_ERM = 5;
    R.L_IRM = 0.1;
    const std::vector<double> mask = {0.5, 0.5};
    weigh_objectives(S, mask.data(), 2, R);
    state = R.scale;
    return R;
  };
  ParetoScale init, l2;
  EXPECT_NEAR(weigh(ParetoNormalize::kInitial, init, {3, 0}, {0, 1}).w_ERM, 0.5, 1e-15);
  const MaskStepResult<double> later = weigh(ParetoNormalize::kInitial, init, {3, 0}, {0, 0.5});
  EXPECT_NEAR(later.w_ERM, 0.2, 1e-15);
  EXPECT_NEAR(later.w_IRM, 0.8, 1e-15);
  // The mask direction uses the scaled gradients: w_ERM (sqrt 2, 0) + w_IRM (0, sqrt 2 / 2) plus
  // lambda (m - c) with the defaults lambda = 1, c = 0.
  EXPECT_NEAR(later.mask_grad[0], 0.2 * std::sqrt(2.0) + 0.5, 1e-14);
  EXPECT_NEAR(later.mask_grad[1], 0.8 * std::sqrt(0.5) + 0.5, 1e-14);
  EXPECT_NEAR(weigh(ParetoNormalize::kL2, l2, {3, 0}, {0, 0.5}).w_ERM, 0.5, 1e-15);
  // running: the second step's references are the running means, between the two steps' RMS.
  ParetoScale run;
  weigh(ParetoNormalize::kRunning, run, {3, 0}, {0, 1});
  const double w = weigh(ParetoNormalize::kRunning, run, {3, 0}, {0, 0.5}).w_ERM;
  const double sI = (0.09 / std::sqrt(2.0) + 0.1 * 0.5 / std::sqrt(2.0)) / 0.19;
  const double bI = 0.5 / sI;                  // g_I's scaled component
  const double aE = 3 / (3 / std::sqrt(2.0));  // g_E unchanged: its scale is its RMS
  EXPECT_NEAR(w, bI * bI / (aE * aE + bI * bI), 1e-12);
  EXPECT_GT(w, 0.2);  // the running mean forgets the start: w between l2's 1/2 and initial's 0.2
  EXPECT_LT(w, 0.5);
}

}  // namespace
}  // namespace painvrl
