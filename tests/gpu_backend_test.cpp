// `gpu` tests of the CUDA backend's kernels against the CPU backend (skipped, GTEST_SKIP, with no
// usable device): the device's negatives are the CPU's draws bit for bit; the fused loss kernel
// with the projection and dW, db GEMMs gives the CPU's loss and gradient to fp32 rounding
// (atomics add in another order) for the ID-only and content models, with and without item
// neighbours, on several seeds with fresh inputs and NaN-poisoned outputs; HIM's environment
// models in one launch give the CPU's per-environment losses and dW, db; whole epochs of the
// backend give the CPU's losses, parameters and scores (more users than one scoring block);
// ranking on the device gives the host's ranking of the device's scores; deterministic runs are
// bit-identical;
// frozen tensors stay as they were and the rest trains as on the CPU; an epoch stopped after a
// few steps and continued ends as an uninterrupted one; a non-finite loss stops at the CPU's
// step; the optimiser state round-trips; what the backend does not implement is refused by name.
// The mask-generation step (kernels/mask_step.cu, cuBLAS DGEMM) gives every output of
// mask_step<double> to 1e-9 relative on several seeds, with and without attention; the device
// mask runner's epochs equal the CPU runner's, and a diverging run stops at the CPU's step.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <stdexcept>
#include <vector>

#include "mask_problem.h"
#include "painvrl/backend/backend.h"
#include "painvrl/backend/mask_runner.h"
#include "painvrl/backend/mask_step.h"
#include "painvrl/cpu/ultragcn_loss.h"
#include "painvrl/cuda/backend.h"
#include "painvrl/cuda/device.h"
#include "painvrl/data/graph.h"
#include "painvrl/math/sampling.h"
#include "painvrl/pipeline/config.h"
#include "painvrl/pipeline/evaluate.h"
#include "painvrl/pipeline/stages.h"
#include "toy_problem.h"

namespace painvrl {
namespace {

// Without a device a gpu test skips, unless PAINVRL_REQUIRE_GPU=1 (the device check) makes that
// a failure naming the CUDA error.
#define SKIP_WITHOUT_GPU()                                                                  \
  if (cuda::usable_device_count() == 0) {                                                   \
    if (cuda::gpu_required()) FAIL() << "PAINVRL_REQUIRE_GPU: " << cuda::describe_device(); \
    GTEST_SKIP() << cuda::describe_device();                                                \
  }

using test::scaled_error;
using test::Toy;

Toy make_toy(unsigned seed) { return test::make_toy(seed, 90, 70); }

TEST(GpuKernels, NegativesAreTheCpuDraws) {
  SKIP_WITHOUT_GPU();
  for (uint64_t seed : {1ull, 5ull, 99ull}) {
    const math::PhiloxKey key =
        math::make_key(seed, math::stream_id(math::RngStream::kNegative, 2));
    for (int32_t n : {1, 7, 50}) {
      const int64_t rows = 333;
      const std::vector<int32_t> got = cuda::negatives_on_device(key, 4, 17, rows, n, 3706);
      ASSERT_EQ(int64_t(got.size()), rows * n);
      std::vector<int32_t> want(size_t(rows * n), -1);
      for (int64_t r = 0; r < rows; ++r) {
        math::negative_row(key, 4, 17, uint32_t(r), uint32_t(n), 3706, want.data() + r * n);
      }
      EXPECT_EQ(got, want) << "seed " << seed << " N " << n;
    }
  }
}

TEST(GpuKernels, FusedLossAndGradientEqualTheCpu) {
  SKIP_WITHOUT_GPU();
  for (unsigned seed : {1u, 2u, 3u}) {
    const Toy toy = make_toy(seed);
    for (bool content : {false, true}) {
      for (double kappa : {0.0, 0.7}) {
        for (int32_t dim : {8, 64, 100, 256}) {
          const ParamLayout L = ParamLayout::make(toy.n_users, toy.n_items, dim, toy.d, content);
          std::mt19937 rng(seed * 31 + dim);
          std::normal_distribution<float> nd(0.f, 0.3f);
          std::vector<float> params(size_t(L.total));
          for (float& p : params) p = nd(rng);
          const int64_t B = 150;
          const int32_t N = 6;
          std::vector<int32_t> users(B), items(B), negatives(size_t(B * N));
          for (int64_t r = 0; r < B; ++r) {
            const size_t p = rng() % toy.train.size();
            users[r] = toy.train.user[p];
            items[r] = toy.train.item[p];
          }
          for (int32_t& j : negatives) j = int32_t(rng() % toy.n_items);
          const Batch batch{users.data(), items.data(), negatives.data(), B, N};
          LossSettings S;
          S.w1 = 1e-6;
          S.w2 = 1.0;
          S.w3 = 1e-6;
          S.w4 = 1.0;
          S.neg_weight = 30;
          S.kappa = kappa;
          LossProblem<float> problem{toy.graph.beta_user.data(),
                                     toy.graph.beta_item.data(),
                                     toy.graph.ii_neighbors.data(),
                                     toy.graph.ii_weights.data(),
                                     toy.graph.ii_k,
                                     content ? toy.features.data() : nullptr};
          std::vector<float> want(size_t(L.total), 0.f);
          cpu::LossWorkspace<float> ws;
          const LossTerms<float> cpu_terms = cpu::ultragcn_loss_grad<float>(
              L, params.data(), problem, batch, S, want.data(), false, ws);
          std::vector<float> got(size_t(L.total), std::nanf(""));
          const LossTerms<float> gpu_terms =
              cuda::loss_grad_on_device(L, params.data(), problem, batch, S, got.data());
          const std::string what = "seed " + std::to_string(seed) + " content " +
                                   std::to_string(content) + " kappa " + std::to_string(kappa) +
                                   " dim " + std::to_string(dim);
          EXPECT_NEAR(gpu_terms.main, cpu_terms.main, 1e-5 * std::fabs(cpu_terms.main)) << what;
          EXPECT_NEAR(gpu_terms.item_item, cpu_terms.item_item,
                      1e-5 * std::fabs(cpu_terms.item_item) + 1e-12)
              << what;
          // Each tensor on its own scale: Pt, Pf, T, then W and b.
          const int64_t starts[5] = {L.pt, L.pf, L.t, L.w, L.b};
          const int64_t ends[5] = {L.pf, L.t, L.w, L.b, L.total};
          for (int k = 0; k < 5; ++k) {
            if (ends[k] == starts[k]) continue;
            EXPECT_LT(
                scaled_error(got.data() + starts[k], want.data() + starts[k], ends[k] - starts[k]),
                1e-5)
                << what << " tensor " << k;
          }
        }
      }
    }
  }
}

TEST(GpuKernels, EnvironmentModelsEqualTheCpu) {
  SKIP_WITHOUT_GPU();
  for (unsigned seed : {1u, 2u}) {
    const Toy toy = make_toy(seed);
    const int32_t D = 32, E = 4, N = 5;
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.f, 0.3f);
    std::vector<float> pt(size_t(toy.n_users) * D), pf(pt.size()), t(size_t(toy.n_items) * D),
        w_all(size_t(E * D * toy.d)), b_all(size_t(E * D));
    for (auto* v : {&pt, &pf, &t, &w_all, &b_all})
      for (float& x : *v) x = nd(rng);
    const int64_t B = 200;
    std::vector<int32_t> users(B), items(B), envs(B), negs(size_t(B * N));
    for (int64_t r = 0; r < B; ++r) {
      const size_t p = rng() % toy.train.size();
      users[size_t(r)] = toy.train.user[p];
      items[size_t(r)] = toy.train.item[p];
      envs[size_t(r)] = int32_t(rng() % E);
    }
    for (int32_t& j : negs) j = int32_t(rng() % toy.n_items);
    cpu::EnvModelsView m;
    m.n_users = toy.n_users;
    m.n_items = toy.n_items;
    m.dim = D;
    m.envs = E;
    m.feat_dim = toy.d;
    m.pt = pt.data();
    m.pf = pf.data();
    m.t = t.data();
    m.w_all = w_all.data();
    m.b_all = b_all.data();
    LossSettings S;
    S.w2 = S.w4 = 1.0;
    S.neg_weight = 10;
    S.kappa = 0.5;
    const LossProblem<float> problem{toy.graph.beta_user.data(),
                                     toy.graph.beta_item.data(),
                                     toy.graph.ii_neighbors.data(),
                                     toy.graph.ii_weights.data(),
                                     toy.graph.ii_k,
                                     toy.features.data()};
    const cpu::EnvBatch batch{users.data(), items.data(), envs.data(), negs.data(), B, N};
    std::vector<double> want_loss(E), got_loss(E, std::nan(""));
    std::vector<float> want_w(w_all.size()), want_b(b_all.size());
    std::vector<float> got_w(w_all.size(), std::nanf("")), got_b(b_all.size(), std::nanf(""));
    cpu::LossWorkspace<float> ws;
    cpu::env_projection_loss_grad(m, problem, batch, S, want_loss.data(), want_w.data(),
                                  want_b.data(), ws);
    cuda::env_projection_loss_grad_on_device(m, problem, batch, S, got_loss.data(), got_w.data(),
                                             got_b.data());
    for (int32_t e = 0; e < E; ++e)
      EXPECT_NEAR(got_loss[e], want_loss[e], 1e-5 * std::fabs(want_loss[e])) << e;
    EXPECT_LT(scaled_error(got_w.data(), want_w.data(), int64_t(want_w.size())), 1e-5);
    EXPECT_LT(scaled_error(got_b.data(), want_b.data(), int64_t(want_b.size())), 1e-5);
  }
}

// HIM's reassignment on the device agrees with the CPU's argmax over the same models (the
// projections' GEMMs round differently, so a pair whose best two scores nearly tie may differ).
TEST(GpuKernels, EnvironmentAssignmentEqualsTheCpu) {
  SKIP_WITHOUT_GPU();
  for (unsigned seed : {1u, 2u}) {
    const int32_t U = 500, I = 300, D = 64, E = 10;
    const int64_t d = 200, P = 20000;
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.f, 0.3f);
    std::vector<float> pt(size_t(U) * D), pf(size_t(U) * D), t(size_t(I) * D),
        w_all(size_t(E) * D * d), b_all(size_t(E) * D), psi(size_t(I) * d);
    for (auto* v : {&pt, &pf, &t, &w_all, &b_all, &psi})
      for (float& x : *v) x = nd(rng);
    PairList pairs;
    for (int64_t p = 0; p < P; ++p) pairs.push(int32_t(rng() % U), int32_t(rng() % I));
    cpu::EnvModelsView m{U, I, D, E, d, pt.data(), pf.data(), t.data(), w_all.data(), b_all.data()};
    std::vector<float> scores(size_t(P) * E);
    cpu::LossWorkspace<float> ws;
    cpu::env_projection_score_pairs(m, psi.data(), pairs.user.data(), pairs.item.data(), P,
                                    scores.data(), ws);
    const std::vector<int32_t> got = cuda::assign_environments_on_device(m, psi.data(), pairs);
    ASSERT_EQ(int64_t(got.size()), P);
    int64_t same = 0;
    for (int64_t p = 0; p < P; ++p) {
      const float* row = scores.data() + p * E;
      const int32_t want = int32_t(std::max_element(row, row + E) - row);
      if (got[p] == want) {
        ++same;
      } else {  // only near-ties may differ
        EXPECT_NEAR(row[got[p]], row[want], 1e-4 * (1 + std::fabs(row[want]))) << p;
      }
    }
    EXPECT_GE(same, P * 995 / 1000);
  }
}

TEST(GpuKernels, EnvironmentModelTrainingEqualsTheCpu) {
  SKIP_WITHOUT_GPU();
  for (unsigned seed : {1u, 3u}) {
    const Toy toy = make_toy(seed);
    Config c = test::toy_config(seed, false, 16);
    const ParamLayout bl = ParamLayout::make(toy.n_users, toy.n_items, c.dim, toy.d, true);
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.f, 0.3f);
    std::vector<float> backbone(size_t(bl.total));
    for (float& x : backbone) x = nd(rng);
    // Three models of unequal sizes: the smaller ones run out of batches first.
    std::vector<PairList> env_pairs(3);
    for (size_t p = 0; p < toy.train.size(); ++p) {
      env_pairs[p % 7 < 4 ? 0 : p % 7 < 6 ? 1 : 2].push(toy.train.user[p], toy.train.item[p]);
    }
    const std::vector<uint32_t> stages = {11, 12, 13};
    const std::vector<float> want = train_env_models_projection(
        c, toy.graph, env_pairs, toy.features, toy.d, backbone, stages, 2);
    const std::vector<float> got = cuda::train_env_models_projection_on_device(
        make_train_setup(c, toy.graph.n_users, toy.graph.n_items, toy.d, true, 0), toy.graph,
        env_pairs, toy.features, backbone, stages, 2, him_hooks());
    ASSERT_EQ(got.size(), want.size());
    EXPECT_LT(scaled_error(got.data(), want.data(), int64_t(want.size())), 1e-4) << seed;
  }
}

Config toy_config(unsigned seed) { return test::toy_config(seed, false, 16); }

TEST(GpuMaskStep, EveryOutputEqualsTheCpuStep) {
  SKIP_WITHOUT_GPU();
  struct Case {
    bool attention;
    double kappa;
    MaskObjective objective;
    ParetoNormalize normalize;
    bool empty_env;
  };
  const std::vector<Case> cases = {
      {true, 0.7, MaskObjective::kPareto, ParetoNormalize::kNone, false},
      {true, 0.0, MaskObjective::kPareto, ParetoNormalize::kL2, true},
      {false, 0.7, MaskObjective::kFixed, ParetoNormalize::kLoss, false},
  };
  for (unsigned seed : {1u, 2u, 3u}) {
    for (size_t c = 0; c < cases.size(); ++c) {
      const Case& cs = cases[c];
      SCOPED_TRACE(testing::Message() << "seed " << seed << " case " << c);
      // D = 64, d = 700 (several strides of the 256-thread rows), H = 48, 4 environments of
      // 40-43 rows, N = 4, K = 3.
      const test::MaskTestProblem p(seed * 17 + unsigned(c), 64, 700, 48, cs.attention, 4,
                                    cs.empty_env, 40);
      const MaskSettings s = test::mask_test_settings(cs.objective, cs.normalize, cs.kappa);
      const MaskProblem<double> problem = p.cpu_problem();
      const MaskStepResult<double> want = mask_step<double>(
          p.layout, p.params.data(), p.mask.data(), problem, p.batches, p.noise.data(), s);
      const MaskStepResult<double> got = cuda::mask_step_on_device(
          p.layout, p.params.data(), p.mask.data(), problem, p.batches, p.noise.data(), s);
      auto err = [](const std::vector<double>& a, const std::vector<double>& b) {
        EXPECT_EQ(a.size(), b.size());
        double e = 0, scale = 1e-300;
        for (size_t x = 0; x < std::min(a.size(), b.size()); ++x) {
          if (!std::isfinite(a[x])) return HUGE_VAL;
          e = std::max(e, std::fabs(a[x] - b[x]));
          scale = std::max(scale, std::fabs(b[x]));
        }
        return e / scale;
      };
      EXPECT_LT(err(got.loss_env, want.loss_env), 1e-10);
      EXPECT_NEAR(got.L_ERM, want.L_ERM, 1e-10 * std::fabs(want.L_ERM));
      EXPECT_NEAR(got.L_IRM, want.L_IRM, 1e-9 * std::fabs(want.L_IRM));
      EXPECT_NEAR(got.w_ERM, want.w_ERM, 1e-9);
      EXPECT_LT(err(got.G, want.G), 1e-10);
      EXPECT_LT(err(got.V, want.V), 1e-9);
      EXPECT_LT(err(got.g_E, want.g_E), 1e-9);
      EXPECT_LT(err(got.g_I, want.g_I), 1e-9);
      EXPECT_LT(err(got.grad, want.grad), 1e-9);
      EXPECT_LT(err(got.mask_grad, want.mask_grad), 1e-9);
      EXPECT_LT(err(got.mask_new, want.mask_new), 1e-9);
    }
  }
  // Variant 2 (float feature rows, when every feature is exactly a float) against variant 1.
  test::MaskTestProblem p(9, 64, 700, 48, true, 4, false, 40);
  for (double& x : p.f) x = double(float(x));
  const MaskSettings s =
      test::mask_test_settings(MaskObjective::kPareto, ParetoNormalize::kNone, 0.7);
  const MaskProblem<double> problem = p.cpu_problem();
  const MaskStepResult<double> v1 = cuda::mask_step_on_device(
      p.layout, p.params.data(), p.mask.data(), problem, p.batches, p.noise.data(), s, false);
  const MaskStepResult<double> v2 = cuda::mask_step_on_device(
      p.layout, p.params.data(), p.mask.data(), problem, p.batches, p.noise.data(), s, true);
  EXPECT_NEAR(v2.L_ERM, v1.L_ERM, 1e-12 * std::fabs(v1.L_ERM));
  EXPECT_NEAR(v2.L_IRM, v1.L_IRM, 1e-11 * std::fabs(v1.L_IRM));
  for (size_t k = 0; k < v1.grad.size(); ++k) {
    ASSERT_NEAR(v2.grad[k], v1.grad[k], 1e-10 * (1 + std::fabs(v1.grad[k]))) << k;
  }
}

// The device runner (kernels/cuda_mask.cpp) over two epochs equals the CPU runner: the same
// trace records, model, mask and optimiser moments (sgd and Adam mask rules); then a step made
// non-finite stops it where the CPU runner stops.
TEST(GpuMaskStep, RunnerEqualsTheCpuRunner) {
  SKIP_WITHOUT_GPU();
  for (const char* mask_optimizer : {"sgd", "adam"}) {
    SCOPED_TRACE(mask_optimizer);
    const test::MaskTestProblem p(11, 32, 500, 16, true, 3, false);
    std::mt19937 rng(5);
    test::MaskRunFixture fx(p, {250, 50, 300}, 64, mask_optimizer, rng);
    Config& c = fx.config;
    MaskRunSetup& setup = fx.setup;
    std::vector<std::vector<int32_t>>& env_pairs = fx.env_pairs;
    using State = test::MaskRunnerState;
    State cpu(p.params, p.mask), dev(p.params, p.mask);
    auto cpu_runner = make_cpu_mask_runner(setup, cpu.view());
    auto dev_runner = cuda::make_mask_runner(setup, dev.view(), env_pairs);
    std::vector<MaskStepRecord> want, got;
    const int64_t steps = (250 + c.mask_batch - 1) / c.mask_batch;
    for (int epoch = 0; epoch < 2; ++epoch) {
      for (auto& v : env_pairs) std::shuffle(v.begin(), v.end(), rng);
      cpu_runner->begin_epoch(env_pairs, epoch);
      dev_runner->begin_epoch(env_pairs, epoch);
      for (int64_t step = 0; step < steps; ++step) {
        cpu_runner->step(step);
        dev_runner->step(step);
        const MaskDrain dr = cpu_runner->drain();
        ASSERT_FALSE(dr.failed);
        want.insert(want.end(), dr.records.begin(), dr.records.end());
      }
      const MaskDrain dr = dev_runner->drain();
      ASSERT_FALSE(dr.failed);
      got.insert(got.end(), dr.records.begin(), dr.records.end());
    }
    dev_runner->sync_state();
    ASSERT_EQ(got.size(), want.size());
    for (size_t r = 0; r < want.size(); ++r) {
      EXPECT_EQ(got[r].step, want[r].step);
      EXPECT_NEAR(got[r].w_ERM, want[r].w_ERM, 1e-9) << r;
      EXPECT_NEAR(got[r].L_ERM, want[r].L_ERM, 1e-10 * want[r].L_ERM) << r;
      EXPECT_NEAR(got[r].L_IRM, want[r].L_IRM, 1e-8 * want[r].L_IRM) << r;
      EXPECT_NEAR(got[r].mask_mean, want[r].mask_mean, 1e-10) << r;
    }
    EXPECT_EQ(dev.t, cpu.t);
    EXPECT_EQ(dev.mask_t, cpu.mask_t);
    auto err = [](const std::vector<double>& a, const std::vector<double>& b) {
      double e = 0, scale = 1e-300;
      for (size_t x = 0; x < a.size(); ++x) {
        e = std::max(e, std::fabs(a[x] - b[x]));
        scale = std::max(scale, std::fabs(b[x]));
      }
      return e / scale;
    };
    EXPECT_LT(err(dev.params, cpu.params), 1e-8);
    EXPECT_LT(err(dev.m, cpu.m), 1e-8);
    EXPECT_LT(err(dev.v, cpu.v), 1e-8);
    EXPECT_LT(err(dev.mask, cpu.mask), 1e-9);
    EXPECT_LT(err(dev.mask_m, cpu.mask_m), 1e-8);
    EXPECT_GT(err(cpu.params, p.params), 1e-4);  // the run moved

    // A learning rate that is infinite in float makes step 0's update non-finite, so step 1's
    // loss is: both runners stop at step 1, its update unapplied, step 0's record kept.
    Config wild = c;
    wild.lr = 1e39;
    setup.options = mask_run_options(wild);
    State cpu2 = cpu, dev2 = cpu;
    auto cpu_wild = make_cpu_mask_runner(setup, cpu2.view());
    auto dev_wild = cuda::make_mask_runner(setup, dev2.view(), env_pairs);
    cpu_wild->begin_epoch(env_pairs, 2);
    dev_wild->begin_epoch(env_pairs, 2);
    std::optional<int64_t> cpu_failed;
    for (int64_t step = 0; step < steps; ++step) {
      cpu_wild->step(step);
      dev_wild->step(step);
      const MaskDrain dr = cpu_wild->drain();
      if (dr.failed && !cpu_failed) cpu_failed = dr.failed->step;
    }
    const MaskDrain dr = dev_wild->drain();
    ASSERT_TRUE(cpu_failed);
    EXPECT_EQ(*cpu_failed, 1);
    ASSERT_TRUE(dr.failed);
    EXPECT_EQ(dr.failed->step, *cpu_failed);
    EXPECT_EQ(int64_t(dr.records.size()), *cpu_failed);
    EXPECT_EQ(dev2.t, cpu2.t);  // the failed and later steps are not counted
    EXPECT_EQ(dev2.mask_t, cpu2.mask_t);
  }
}

TEST(GpuBackend, EpochsGiveTheCpuLossesParametersAndScores) {
  SKIP_WITHOUT_GPU();
  for (unsigned seed : {1u, 2u}) {
    const Toy toy = make_toy(seed);
    for (bool content : {false, true}) {
      const Config c = toy_config(seed);
      const TrainSetup setup = make_train_setup(c, toy.n_users, toy.n_items, toy.d, content, 3);
      auto cpu_backend = make_cpu_backend();
      auto gpu_backend = cuda::make_cuda_backend();
      cpu_backend->setup(setup, toy.graph, toy.features);
      gpu_backend->setup(setup, toy.graph, toy.features);
      // The same initial draw, bit for bit (the shared generator).
      ASSERT_EQ(gpu_backend->parameters(), cpu_backend->parameters());
      PairList shuffled;
      for (uint32_t epoch = 0; epoch < 3; ++epoch) {
        shuffle_pairs(toy.train, shuffled, c.seed, 3, epoch);
        const EpochStats a = cpu_backend->train_epoch(shuffled, epoch);
        const EpochStats b = gpu_backend->train_epoch(shuffled, epoch);
        EXPECT_EQ(b.steps, a.steps);
        EXPECT_EQ(b.pairs, a.pairs);
        EXPECT_FALSE(b.diverged);
        EXPECT_NEAR(b.loss_total, a.loss_total, 1e-5 * std::fabs(a.loss_total));
        EXPECT_NEAR(b.loss_l2, a.loss_l2, 1e-5 * std::fabs(a.loss_l2));
      }
      const std::vector<float> pa = cpu_backend->parameters(), pb = gpu_backend->parameters();
      ASSERT_EQ(pa.size(), pb.size());
      EXPECT_LT(scaled_error(pb.data(), pa.data(), int64_t(pa.size())), 1e-4);
      cpu_backend->prepare_scoring();
      gpu_backend->prepare_scoring();
      // More users than one scoring block (4,096): every user, many times over.
      const int64_t n_scored = 5000;
      std::vector<int32_t> users(static_cast<size_t>(n_scored));
      for (int64_t p = 0; p < n_scored; ++p) users[size_t(p)] = int32_t((p * 7) % toy.n_users);
      std::vector<float> sa(size_t(n_scored) * toy.n_items),
          sb(size_t(n_scored) * toy.n_items, std::nanf(""));
      cpu_backend->score(users.data(), n_scored, sa.data());
      gpu_backend->score(users.data(), n_scored, sb.data());
      EXPECT_LT(scaled_error(sb.data(), sa.data(), int64_t(sa.size())), 1e-4);
      std::vector<float> qa(toy.train.size()), qb(toy.train.size(), std::nanf(""));
      cpu_backend->score_pairs(toy.train.user.data(), toy.train.item.data(),
                               int64_t(toy.train.size()), qa.data());
      gpu_backend->score_pairs(toy.train.user.data(), toy.train.item.data(),
                               int64_t(toy.train.size()), qb.data());
      EXPECT_LT(scaled_error(qb.data(), qa.data(), int64_t(qa.size())), 1e-4);
      // Ranking on the device is the host's ranking of the device's own scores, list for list
      // (more users than a block, all items and the cold-item candidates, several k).
      ASSERT_FALSE(cpu_backend->prepare_ranking(toy.graph.train_by_user, {}));
      for (bool cold : {false, true}) {
        std::vector<uint8_t> cands;
        if (cold) {
          for (int32_t j = 0; j < toy.n_items; ++j) cands.push_back(j % 3 != 0);
        }
        ASSERT_TRUE(gpu_backend->prepare_ranking(toy.graph.train_by_user, cands));
        const RankFn host = host_ranker(
            [&](const int32_t* us, int64_t n, float* out) { gpu_backend->score(us, n, out); },
            toy.n_items, toy.graph.train_by_user, cands);
        for (int k : {1, 20, toy.n_items}) {
          std::vector<int32_t> want(size_t(n_scored) * k), got(size_t(n_scored) * k, -2);
          host(users.data(), n_scored, k, want.data());
          gpu_backend->rank(users.data(), n_scored, k, got.data());
          EXPECT_EQ(got, want) << "k " << k << " cold " << cold;
        }
      }
    }
  }
}

// deterministic = true: two runs give bit-identical parameters, losses and scores (the gradient
// rows summed in a fixed order), which stay within the usual tolerance of the CPU; with a repeated
// user in every batch and item neighbours, for the ID-only and the content model.
TEST(GpuBackend, DeterministicRunsAreBitIdentical) {
  SKIP_WITHOUT_GPU();
  for (bool content : {false, true}) {
    const Toy toy = make_toy(6);
    Config c = toy_config(6);
    c.deterministic = true;
    const TrainSetup setup = make_train_setup(c, toy.n_users, toy.n_items, toy.d, content, 3);
    ASSERT_TRUE(setup.deterministic);
    auto cpu_backend = make_cpu_backend();
    auto first = cuda::make_cuda_backend();
    auto second = cuda::make_cuda_backend();
    cpu_backend->setup(setup, toy.graph, toy.features);
    first->setup(setup, toy.graph, toy.features);
    second->setup(setup, toy.graph, toy.features);
    PairList shuffled;
    for (uint32_t epoch = 0; epoch < 3; ++epoch) {
      shuffle_pairs(toy.train, shuffled, c.seed, 3, epoch);
      const EpochStats a = cpu_backend->train_epoch(shuffled, epoch);
      const EpochStats b1 = first->train_epoch(shuffled, epoch);
      const EpochStats b2 = second->train_epoch(shuffled, epoch);
      EXPECT_EQ(b1.loss_total, b2.loss_total);
      EXPECT_NEAR(b1.loss_total, a.loss_total, 1e-5 * std::fabs(a.loss_total));
    }
    const std::vector<float> p1 = first->parameters(), p2 = second->parameters(),
                             pc = cpu_backend->parameters();
    EXPECT_EQ(p1, p2) << "content " << content;
    EXPECT_LT(scaled_error(p1.data(), pc.data(), int64_t(pc.size())), 1e-4);
  }
}

// tf32 = true: the projection's and the scoring's GEMMs on TF32 tensor cores stay within their
// own tolerance of the CPU (1e-3 relative on the losses and the scores after whole epochs).
// TF32 against the same GPU run in fp32 (not against the CPU, whose own differences would add
// in). The tolerance, from the rounding: TF32 keeps 11 significant bits of each GEMM input
// (relative error u = 2^-11 = 4.9e-4), so a product of two rounded inputs is off by at most 2u
// = 1e-3 relative, and a sum of such products by at most that (the errors do not add in
// relative terms; of independent signs they average down). Two GEMMs are rounded, the content
// projection and the scoring: 2e-3 on a score. Two epochs of Adam at lr 1e-3 feed the
// difference back into the parameters at a small fraction of it. Bound: 4e-3 relative, twice
// the two GEMMs' worst case; the loss, a sum over the batch, within the same.
TEST(GpuBackend, Tf32StaysWithinItsTolerance) {
  SKIP_WITHOUT_GPU();
  const Toy toy = make_toy(4);
  Config c = toy_config(4);
  const TrainSetup fp32 = make_train_setup(c, toy.n_users, toy.n_items, toy.d, true, 3);
  c.tf32 = true;
  const TrainSetup tf32 = make_train_setup(c, toy.n_users, toy.n_items, toy.d, true, 3);
  ASSERT_TRUE(tf32.tf32);
  ASSERT_FALSE(fp32.tf32);
  auto exact = cuda::make_cuda_backend();
  auto rounded = cuda::make_cuda_backend();
  exact->setup(fp32, toy.graph, toy.features);
  rounded->setup(tf32, toy.graph, toy.features);
  constexpr double kTolerance = 4e-3;
  PairList shuffled;
  for (uint32_t epoch = 0; epoch < 2; ++epoch) {
    shuffle_pairs(toy.train, shuffled, c.seed, 3, epoch);
    const EpochStats a = exact->train_epoch(shuffled, epoch);
    const EpochStats b = rounded->train_epoch(shuffled, epoch);
    EXPECT_NEAR(b.loss_total, a.loss_total, kTolerance * std::fabs(a.loss_total));
  }
  exact->prepare_scoring();
  rounded->prepare_scoring();
  std::vector<int32_t> users(static_cast<size_t>(toy.n_users));
  for (int32_t u = 0; u < toy.n_users; ++u) users[size_t(u)] = u;
  std::vector<float> sa(size_t(toy.n_users) * toy.n_items, std::nanf(""));
  std::vector<float> sb(sa.size(), std::nanf(""));
  exact->score(users.data(), toy.n_users, sa.data());
  rounded->score(users.data(), toy.n_users, sb.data());
  EXPECT_LT(scaled_error(sb.data(), sa.data(), int64_t(sa.size())), kTolerance);
}

TEST(GpuBackend, FrozenTensorsStayAndTheOptimizerStateRoundTrips) {
  SKIP_WITHOUT_GPU();
  const Toy toy = make_toy(4);
  const Config c = toy_config(4);
  TrainSetup setup = make_train_setup(c, toy.n_users, toy.n_items, toy.d, true, 1);
  setup.frozen = kFrozenPt | kFrozenT;
  auto backend = cuda::make_cuda_backend();
  auto cpu_backend = make_cpu_backend();
  backend->setup(setup, toy.graph, toy.features);
  cpu_backend->setup(setup, toy.graph, toy.features);
  const std::vector<float> before = backend->parameters();
  PairList shuffled;
  shuffle_pairs(toy.train, shuffled, c.seed, 1, 0);
  const EpochStats st_gpu = backend->train_epoch(shuffled, 0);
  const EpochStats st_cpu = cpu_backend->train_epoch(shuffled, 0);
  const std::vector<float> after = backend->parameters();
  // The frozen tensors' L2 is still part of the loss, and the others train as on the CPU.
  EXPECT_NEAR(st_gpu.loss_total, st_cpu.loss_total, 1e-5 * std::fabs(st_cpu.loss_total));
  const std::vector<float> cpu_after = cpu_backend->parameters();
  EXPECT_LT(scaled_error(after.data(), cpu_after.data(), int64_t(after.size())), 1e-4);
  const ParamLayout& L = setup.layout;
  EXPECT_EQ(std::memcmp(before.data() + L.pt, after.data() + L.pt, sizeof(float) * (L.pf - L.pt)),
            0);
  EXPECT_EQ(std::memcmp(before.data() + L.t, after.data() + L.t, sizeof(float) * (L.w - L.t)), 0);
  EXPECT_NE(std::memcmp(before.data() + L.pf, after.data() + L.pf, sizeof(float) * (L.t - L.pf)),
            0);
  const OptimizerState st = backend->optimizer_state();
  EXPECT_EQ(st.params, after);
  EXPECT_GT(st.adam_t, 0);
  auto other = cuda::make_cuda_backend();
  other->setup(setup, toy.graph, toy.features);
  other->set_optimizer_state(st);
  const OptimizerState back = other->optimizer_state();
  EXPECT_EQ(back.params, st.params);
  EXPECT_EQ(back.adam_m, st.adam_m);
  EXPECT_EQ(back.adam_v, st.adam_v);
  EXPECT_EQ(back.adam_t, st.adam_t);
}

bool stop_after_three_polls() {
  static int polls = 0;
  return ++polls > 3;
}

TEST(GpuBackend, AStoppedEpochContinuesAsAnUninterruptedOne) {
  SKIP_WITHOUT_GPU();
  const Toy toy = make_toy(6);
  const Config c = toy_config(6);
  const TrainSetup setup = make_train_setup(c, toy.n_users, toy.n_items, toy.d, true, 2);
  auto whole = cuda::make_cuda_backend();
  auto parts = cuda::make_cuda_backend();
  whole->setup(setup, toy.graph, toy.features);
  parts->setup(setup, toy.graph, toy.features);
  PairList shuffled;
  shuffle_pairs(toy.train, shuffled, c.seed, 2, 0);
  const EpochStats a = whole->train_epoch(shuffled, 0);
  EpochStats b;
  parts->train_steps(shuffled, 0, b, &stop_after_three_polls);
  EXPECT_TRUE(b.stopped);
  EXPECT_EQ(b.steps, 3);
  parts->train_steps(shuffled, 0, b);
  EXPECT_FALSE(b.stopped);
  EXPECT_EQ(b.steps, a.steps);
  EXPECT_EQ(b.pairs, a.pairs);
  EXPECT_NEAR(b.loss_total, a.loss_total, 1e-6 * std::fabs(a.loss_total));
  const std::vector<float> pa = whole->parameters(), pb = parts->parameters();
  EXPECT_LT(scaled_error(pb.data(), pa.data(), int64_t(pa.size())), 1e-5);
  EXPECT_EQ(whole->optimizer_state().adam_t, parts->optimizer_state().adam_t);
}

TEST(GpuBackend, ANonFiniteLossStopsAtTheCpusStep) {
  SKIP_WITHOUT_GPU();
  const Toy toy = make_toy(7);
  const Config c = toy_config(7);
  const TrainSetup setup = make_train_setup(c, toy.n_users, toy.n_items, toy.d, false, 0);
  auto cpu_backend = make_cpu_backend();
  auto gpu_backend = cuda::make_cuda_backend();
  cpu_backend->setup(setup, toy.graph, toy.features);
  gpu_backend->setup(setup, toy.graph, toy.features);
  // An infinite item row: the first step whose terms score it diverges.
  std::vector<float> params = cpu_backend->parameters();
  params[size_t(setup.layout.t + 5 * setup.layout.dim)] = INFINITY;
  cpu_backend->set_parameters(params);
  gpu_backend->set_parameters(params);
  PairList shuffled;
  shuffle_pairs(toy.train, shuffled, c.seed, 0, 0);
  const EpochStats a = cpu_backend->train_epoch(shuffled, 0);
  const EpochStats b = gpu_backend->train_epoch(shuffled, 0);
  ASSERT_TRUE(a.diverged);
  EXPECT_TRUE(b.diverged);
  EXPECT_EQ(b.steps, a.steps);
  EXPECT_EQ(b.pairs, a.pairs);
  EXPECT_EQ(gpu_backend->optimizer_state().adam_t, cpu_backend->optimizer_state().adam_t);
}

TEST(GpuBackend, RefusesWhatItDoesNotImplement) {
  SKIP_WITHOUT_GPU();
  const Toy toy = make_toy(5);
  Config c = toy_config(5);
  c.l2 = "touched";
  const TrainSetup setup = make_train_setup(c, toy.n_users, toy.n_items, toy.d, false, 0);
  auto backend = cuda::make_cuda_backend();
  try {
    backend->setup(setup, toy.graph, toy.features);
    FAIL() << "l2 = touched was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("touched"), std::string::npos) << e.what();
  }
}

// The setup estimate against the device's own count: free memory before the backend and after
// setup, an epoch, ranking and HIM's pair scores (the CUDA context made beforehand). The real
// allocator rounds blocks up (to 2 MiB for large ones), so up to 32 MiB over is allowed; the
// exact accounting is tests/device_memory_test.cpp's, on the fake device.
TEST(GpuBackend, MemoryEstimateHoldsWhatTheDeviceReports) {
  SKIP_WITHOUT_GPU();
  const Toy toy = test::make_toy(8, 20000, 5000);
  const Config c = toy_config(8);
  const TrainSetup setup = make_train_setup(c, toy.n_users, toy.n_items, toy.d, true, 0);
  ASSERT_EQ(cudaFree(nullptr), cudaSuccess);  // the context, outside the measurement
  size_t free_before = 0, free_after = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_before, &total), cudaSuccess);
  auto backend = cuda::make_cuda_backend();
  backend->setup(setup, toy.graph, toy.features);
  EpochStats stats;
  backend->train_steps(toy.train, 0, stats, nullptr);
  backend->prepare_scoring();
  ASSERT_TRUE(backend->prepare_ranking(toy.graph.train_by_user, {}));
  std::vector<int32_t> users(size_t(toy.n_users));
  for (int32_t u = 0; u < toy.n_users; ++u) users[size_t(u)] = u;
  std::vector<int32_t> ranked(users.size() * 20);
  backend->rank(users.data(), toy.n_users, 20, ranked.data());
  std::vector<float> scores(toy.train.size());
  backend->score_pairs(toy.train.user.data(), toy.train.item.data(), int64_t(toy.train.size()),
                       scores.data());
  ASSERT_EQ(cudaMemGetInfo(&free_after, &total), cudaSuccess);
  cuda::BackendMemoryInputs in;
  in.ii_k = toy.graph.ii_k;
  in.n_pairs = int64_t(toy.graph.train_by_user.items.size());
  in.score_block = 4096;
  in.rank_k = 20;
  const int64_t estimate = cuda::backend_device_bytes(setup, in);
  const int64_t used = int64_t(free_before) - int64_t(free_after);
  std::printf("device memory: used %.1f MiB, estimate %.1f MiB (%.1f MiB of it cuBLAS's)\n",
              used / 1048576.0, estimate / 1048576.0, cuda::kCublasWorkspaceAllowance / 1048576.0);
  EXPECT_LE(used, estimate + (int64_t(32) << 20));
  EXPECT_GE(used, (estimate - cuda::kCublasWorkspaceAllowance) / 2);
}

}  // namespace
}  // namespace painvrl
