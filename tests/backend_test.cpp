// The CPU backend's training stage (train_fixed): bit-identical parameters and epoch losses for
// 1 and 2 threads (the determinism the CPU-speed issue keeps while parallelising), frozen tensors
// left exactly as they started, and the L2 value fused into the Adam pass equal to the loss
// function's own full-table L2 on the same parameters; HIM's batched environment models
// (him_train = projection) equal to training each model alone.
#include "painvrl/backend/backend.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <random>

#include "painvrl/cpu/ultragcn_loss.h"
#include "painvrl/data/graph.h"
#include "painvrl/math/sampling.h"
#include "painvrl/pipeline/config.h"
#include "painvrl/pipeline/stages.h"
#include "toy_problem.h"

namespace painvrl {
namespace {

using test::make_toy;
using test::Toy;

Config toy_config(unsigned seed, bool touched) { return test::toy_config(seed, touched, 8); }

std::vector<float> train_with_threads(const Config& c, const Toy& t, bool content, int threads,
                                      const std::vector<float>* start = nullptr,
                                      uint8_t frozen = 0) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  auto backend =
      train_fixed(c, t.graph, t.train, t.features, t.d, content, 7, 3, "", start, frozen);
  omp_set_num_threads(saved);
  return backend->parameters();
}

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(Backend, ParametersAreBitIdenticalForOneAndTwoThreads) {
  for (unsigned seed : {1u, 2u, 3u}) {
    const Toy toy = make_toy(seed);
    for (bool content : {false, true}) {
      for (bool touched : {false, true}) {
        const Config c = toy_config(seed, touched);
        const auto one = train_with_threads(c, toy, content, 1);
        const auto two = train_with_threads(c, toy, content, 2);
        EXPECT_TRUE(bit_equal(one, two))
            << "seed " << seed << " content " << content << " touched " << touched;
        // Training moved the parameters (the comparison is not between two untouched inits).
        const ParamLayout L = ParamLayout::make(toy.n_users, toy.n_items, c.dim, toy.d, content);
        auto fresh = make_cpu_backend();
        fresh->setup(make_train_setup(c, toy.n_users, toy.n_items, toy.d, content, 7), toy.graph,
                     toy.features);
        EXPECT_FALSE(bit_equal(fresh->parameters(), one));
        EXPECT_EQ(int64_t(one.size()), L.total);
      }
    }
  }
}

TEST(Backend, FrozenTensorsKeepTheirStartValues) {
  const Toy toy = make_toy(5);
  const Config c = toy_config(5, false);
  const ParamLayout L = ParamLayout::make(toy.n_users, toy.n_items, c.dim, toy.d, true);
  std::vector<float> start(size_t(L.total));
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.f, 0.1f);
  for (float& x : start) x = nd(rng);
  const auto out = train_with_threads(c, toy, true, 2, &start, kFrozenPt | kFrozenPf | kFrozenT);
  ASSERT_EQ(out.size(), start.size());
  EXPECT_EQ(std::memcmp(out.data(), start.data(), size_t(L.w) * sizeof(float)), 0)
      << "Pt, Pf or T moved";
  int64_t moved = 0;
  for (int64_t k = L.w; k < L.total; ++k) moved += out[k] != start[k];
  EXPECT_GT(moved, (L.total - L.w) / 2) << "W and b should train";
  // content mode of HIM: Pf trains, Pt and T do not
  const auto out2 = train_with_threads(c, toy, true, 2, &start, kFrozenPt | kFrozenT);
  EXPECT_EQ(
      std::memcmp(out2.data() + L.pt, start.data() + L.pt, size_t(L.pf - L.pt) * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(out2.data() + L.t, start.data() + L.t, size_t(L.w - L.t) * sizeof(float)),
            0);
  EXPECT_NE(
      std::memcmp(out2.data() + L.pf, start.data() + L.pf, size_t(L.t - L.pf) * sizeof(float)), 0);
}

TEST(Backend, BatchedEnvironmentModelsEqualOneModelAtATime) {
  // HIM with him_train = projection trains its E models in one computation; each must end where
  // train_fixed with Pt, Pf, T frozen would take it alone (same shuffles, negatives and Adam).
  for (unsigned seed : {21u, 22u}) {
    for (int E : {2, 3}) {
      const Toy toy = make_toy(seed);
      Config c = toy_config(seed, false);
      c.batch_size = 32;  // several steps, environments of different sizes
      const ParamLayout L = ParamLayout::make(toy.n_users, toy.n_items, c.dim, toy.d, true);
      std::vector<float> backbone(size_t(L.total));
      std::mt19937 rng(seed + 100);
      std::normal_distribution<float> nd(0.f, 0.2f);
      for (float& x : backbone) x = nd(rng);
      std::vector<PairList> env_pairs(static_cast<size_t>(E));
      for (size_t p = 0; p < toy.train.size(); ++p) {
        env_pairs[rng() % E].push(toy.train.user[p], toy.train.item[p]);
      }
      std::vector<uint32_t> stages;
      for (int e = 0; e < E; ++e) stages.push_back(500u + uint32_t(e) * 7u);
      const int epochs = 3;
      const std::vector<float> wb = train_env_models_projection(
          c, toy.graph, env_pairs, toy.features, toy.d, backbone, stages, epochs);
      const int64_t wsize = int64_t(c.dim) * toy.d;
      ASSERT_EQ(int64_t(wb.size()), E * (wsize + c.dim));
      for (int e = 0; e < E; ++e) {
        auto model = train_fixed(c, toy.graph, env_pairs[e], toy.features, toy.d, true, stages[e],
                                 epochs, "", &backbone, kFrozenPt | kFrozenPf | kFrozenT);
        const std::vector<float> p = model->parameters();
        double max_ref = 0, max_diff = 0, moved = 0;
        for (int64_t k = 0; k < wsize; ++k) {
          max_ref = std::max(max_ref, double(std::fabs(p[L.w + k])));
          max_diff = std::max(max_diff, double(std::fabs(p[L.w + k] - wb[e * wsize + k])));
          moved = std::max(moved, double(std::fabs(p[L.w + k] - backbone[L.w + k])));
        }
        for (int32_t k = 0; k < c.dim; ++k) {
          max_diff =
              std::max(max_diff, double(std::fabs(p[L.b + k] - wb[E * wsize + e * c.dim + k])));
        }
        EXPECT_GT(moved, 1e-3) << "the model did not train";
        EXPECT_LT(max_diff, 1e-5 * max_ref + 1e-7)
            << "seed " << seed << " E " << E << " env " << e << ": max |diff| " << max_diff;
      }
    }
  }
}

TEST(Backend, EpochLossIncludesTheFusedL2Value) {
  // One step over all pairs: the epoch loss (L2 from the Adam pass) equals the loss function's
  // total with its own full-table L2, on the initial parameters.
  for (unsigned seed : {11u, 12u}) {
    const Toy toy = make_toy(seed);
    Config c = toy_config(seed, false);
    c.batch_size = int(toy.train.size());
    for (bool content : {false, true}) {
      TrainSetup setup = make_train_setup(c, toy.n_users, toy.n_items, toy.d, content, 3);
      auto backend = make_cpu_backend();
      backend->setup(setup, toy.graph, toy.features);
      const std::vector<float> init = backend->parameters();
      // The negatives the backend will draw for epoch 0, step 0.
      const math::PhiloxKey key =
          math::make_key(c.seed, math::stream_id(math::RngStream::kNegative, 3));
      const int64_t B = int64_t(toy.train.size());
      std::vector<int32_t> negs(size_t(B) * c.negatives);
      for (int64_t r = 0; r < B; ++r) {
        for (int n = 0; n < c.negatives; ++n) {
          negs[size_t(r) * c.negatives + n] = int32_t(
              math::negative_item(key, 0, 0, uint32_t(r), uint32_t(n), uint32_t(toy.n_items)));
        }
      }
      LossProblem<float> lp{toy.graph.beta_user.data(),
                            toy.graph.beta_item.data(),
                            toy.graph.ii_neighbors.data(),
                            toy.graph.ii_weights.data(),
                            toy.graph.ii_k,
                            content ? toy.features.data() : nullptr};
      Batch batch{toy.train.user.data(), toy.train.item.data(), negs.data(), B, c.negatives};
      cpu::LossWorkspace<float> ws;
      const LossTerms<float> want = cpu::ultragcn_loss_grad<float>(
          setup.layout, init.data(), lp, batch, setup.loss, nullptr, true, ws);
      const EpochStats got = backend->train_epoch(toy.train, 0);
      ASSERT_EQ(got.steps, 1);
      EXPECT_NEAR(got.loss_total, double(want.total), 1e-5 * std::abs(double(want.total)));
      const double want_l2 = c.gamma_emb * double(want.l2_emb) + c.gamma_w * double(want.l2_w);
      EXPECT_GT(want_l2, 0.0);
      EXPECT_NEAR(got.loss_l2, want_l2, 1e-5 * want_l2);
    }
  }
}

}  // namespace
}  // namespace painvrl
