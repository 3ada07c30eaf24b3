// The CUDA backend's device memory estimates (include/painvrl/cuda/backend.h) against what its
// host code allocates, on the fake device of tests/fake_cuda.h (no GPU needed; label cpu): the
// training backend through setup, an epoch, scoring, ranking and HIM's pair scores (ID-only and
// content, atomic and deterministic, one and two scoring blocks); the mask runner through an
// epoch (with and without attention, the float copy of the features made or not); HIM's models'
// training and reassignment. Each estimate less cuBLAS's allowance must hold the allocator's
// peak, and exceed it by at most 2 % and 64 KiB. Work whose estimate exceeds the free memory is
// refused, naming it, before it allocates anything that outlives the refusal.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "fake_cuda.h"
#include "mask_problem.h"
#include "painvrl/backend/backend.h"
#include "painvrl/backend/mask_runner.h"
#include "painvrl/cuda/backend.h"
#include "painvrl/pipeline/stages.h"
#include "toy_problem.h"

namespace painvrl {
namespace {

namespace fake = test::fake_cuda;

// The estimate, less what cuBLAS allocates for itself, holds the peak and is close to it.
void expect_holds(int64_t estimate, int64_t peak, const std::string& what) {
  const int64_t ours = estimate - cuda::kCublasWorkspaceAllowance;
  EXPECT_GT(peak, 0) << what;
  EXPECT_GE(ours, peak) << what << ": the estimate misses " << peak - ours << " bytes";
  EXPECT_LE(ours, peak + peak / 50 + (64 << 10))
      << what << ": the estimate is " << ours - peak << " bytes above the peak " << peak;
}

class DeviceMemory : public testing::Test {
 protected:
  void SetUp() override {
    fake::install();
    fake::set_free_bytes(int64_t(140) << 30);
    live_before_ = fake::live_bytes();
    fake::reset_peak();
  }
  void TearDown() override {
    EXPECT_EQ(fake::live_bytes(), live_before_) << "device memory left allocated";
    fake::set_free_bytes(int64_t(140) << 30);
  }
  int64_t peak() const { return fake::peak_bytes() - live_before_; }
  int64_t live_before_ = 0;
};

TEST_F(DeviceMemory, TrainingBackendEstimateHoldsTheAllocatorsPeak) {
  for (int32_t n_users : {300, 4500}) {  // one scoring block, then two
    for (bool content : {false, true}) {
      for (bool deterministic : {false, true}) {
        const std::string what = "users " + std::to_string(n_users) + " content " +
                                 std::to_string(content) + " deterministic " +
                                 std::to_string(deterministic);
        const unsigned seed = unsigned(n_users) + content;
        const test::Toy toy = test::make_toy(seed, n_users, 220);
        Config c = test::toy_config(seed, false, 16);
        c.deterministic = deterministic;
        const TrainSetup setup = make_train_setup(c, toy.n_users, toy.n_items, toy.d, content, 0);
        fake::reset_peak();
        const int64_t launches = fake::launches();
        {
          auto backend = cuda::make_cuda_backend();
          backend->setup(setup, toy.graph, toy.features);
          EpochStats stats;
          backend->train_steps(toy.train, 0, stats, nullptr);
          backend->prepare_scoring();
          ASSERT_TRUE(backend->prepare_ranking(toy.graph.train_by_user,
                                               std::vector<uint8_t>(size_t(toy.n_items), 1)));
          std::vector<int32_t> users(size_t(toy.n_users));
          std::iota(users.begin(), users.end(), 0);
          const int k = 20;
          std::vector<int32_t> ranked(users.size() * k);
          backend->rank(users.data(), int64_t(users.size()), k, ranked.data());
          std::vector<float> scores(toy.train.size());
          backend->score_pairs(toy.train.user.data(), toy.train.item.data(),
                               int64_t(toy.train.size()), scores.data());
        }
        EXPECT_GT(fake::launches(), launches) << what;
        cuda::BackendMemoryInputs in;
        in.ii_k = toy.graph.ii_k;
        in.n_pairs = int64_t(toy.graph.train_by_user.items.size());
        in.score_block = std::min<int64_t>(4096, toy.n_users);
        in.rank_k = 20;
        expect_holds(cuda::backend_device_bytes(setup, in), peak(), what);
      }
    }
  }
}

TEST_F(DeviceMemory, MaskRunnerEstimateHoldsTheAllocatorsPeak) {
  for (bool attention : {false, true}) {
    for (bool exact_float : {false, true}) {
      const std::string what = "attention " + std::to_string(attention) + " float features " +
                               std::to_string(exact_float);
      test::MaskTestProblem p(7 + attention, 32, 300, 16, attention, 3, false);
      if (exact_float) {
        for (double& x : p.f) x = double(float(x));
      }
      std::mt19937 rng(3);
      test::MaskRunFixture fx(p, {250, 50, 300}, 64, "adam", rng);
      std::vector<int64_t> sizes;
      for (const auto& v : fx.env_pairs) sizes.push_back(int64_t(v.size()));
      test::MaskRunnerState state(p.params, p.mask);
      fake::reset_peak();
      {
        auto runner = cuda::make_mask_runner(fx.setup, state.view(), fx.env_pairs);
        runner->begin_epoch(fx.env_pairs, 0);
        for (int64_t step = 0; step < 5; ++step) runner->step(step);
        runner->drain();
        runner->sync_state();
      }
      const int64_t estimate = cuda::mask_runner_device_bytes(fx.setup, sizes);
      expect_holds(estimate, peak(), what);
      if (exact_float) {  // the float copy is made and counted
        fx.setup.fp32_features = false;
        EXPECT_EQ(estimate - cuda::mask_runner_device_bytes(fx.setup, sizes),
                  4 * int64_t(p.I) * p.d)
            << what;
      }
    }
  }
}

TEST_F(DeviceMemory, HimEstimatesHoldTheAllocatorsPeak) {
  for (bool deterministic : {false, true}) {
    const std::string what = "deterministic " + std::to_string(deterministic);
    const test::Toy toy = test::make_toy(4, 400, 150);
    Config c = test::toy_config(4, false, 16);
    c.deterministic = deterministic;
    const TrainSetup setup = make_train_setup(c, toy.n_users, toy.n_items, toy.d, true, 0);
    const ParamLayout& bl = setup.layout;
    std::vector<PairList> env_pairs(3);
    for (size_t q = 0; q < toy.train.size(); ++q) {
      env_pairs[q % 7 < 4 ? 0 : q % 7 < 6 ? 1 : 2].push(toy.train.user[q], toy.train.item[q]);
    }
    std::vector<int64_t> sizes;
    for (const PairList& e : env_pairs) sizes.push_back(int64_t(e.size()));
    const std::vector<float> backbone(size_t(bl.total), 0.1f);
    fake::reset_peak();
    const std::vector<float> models = cuda::train_env_models_projection_on_device(
        setup, toy.graph, env_pairs, toy.features, backbone, {1, 2, 3}, 2, HimHooks{});
    expect_holds(cuda::him_train_device_bytes(setup, toy.graph.ii_k, sizes), peak(),
                 "HIM training, " + what);

    const int32_t E = 3, D = bl.dim;
    ASSERT_EQ(int64_t(models.size()), int64_t(E) * (D * toy.d + D));
    const cpu::EnvModelsView m{toy.n_users,
                               toy.n_items,
                               D,
                               E,
                               toy.d,
                               backbone.data() + bl.pt,
                               backbone.data() + bl.pf,
                               backbone.data() + bl.t,
                               models.data(),
                               models.data() + int64_t(E) * D * toy.d};
    fake::reset_peak();
    const std::vector<int32_t> env =
        cuda::assign_environments_on_device(m, toy.features.data(), toy.train);
    EXPECT_EQ(env.size(), toy.train.size());
    expect_holds(cuda::him_assign_device_bytes(toy.n_users, toy.n_items, D, toy.d, E,
                                               int64_t(toy.train.size())),
                 peak(), "HIM reassignment, " + what);
  }
}

// Free memory a little below the estimate: setup refuses, naming the work and both sizes, and
// keeps nothing allocated; the mask runner likewise.
TEST_F(DeviceMemory, WorkThatDoesNotFitIsRefusedBeforeItAllocates) {
  const test::Toy toy = test::make_toy(9, 300, 200);
  const Config c = test::toy_config(9, false, 16);
  const TrainSetup setup = make_train_setup(c, toy.n_users, toy.n_items, toy.d, true, 0);
  cuda::BackendMemoryInputs in;
  in.ii_k = toy.graph.ii_k;
  in.n_pairs = int64_t(toy.graph.train_by_user.items.size());
  in.score_block = toy.n_users;
  in.rank_k = 100;  // setup's allowance
  const int64_t need = cuda::backend_device_bytes(setup, in) + cuda::kRoundingAllowance;
  fake::set_free_bytes(fake::live_bytes() + need - 1024);
  {
    auto backend = cuda::make_cuda_backend();
    try {
      backend->setup(setup, toy.graph, toy.features);
      ADD_FAILURE() << "setup did not refuse";
    } catch (const std::runtime_error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("training on the GPU needs about"), std::string::npos) << msg;
      EXPECT_NE(msg.find("--device cpu"), std::string::npos) << msg;
    }
    EXPECT_EQ(fake::live_bytes(), live_before_);
  }
  fake::set_free_bytes(fake::live_bytes() + need);
  {
    auto backend = cuda::make_cuda_backend();
    EXPECT_NO_THROW(backend->setup(setup, toy.graph, toy.features));
  }

  test::MaskTestProblem p(2, 16, 100, 8, true, 2, false);
  std::mt19937 rng(1);
  test::MaskRunFixture fx(p, {120, 80}, 32, "sgd", rng);
  const int64_t mask_need =
      cuda::mask_runner_device_bytes(fx.setup, {120, 80}) + cuda::kRoundingAllowance;
  fake::set_free_bytes(fake::live_bytes() + mask_need - 1024);
  test::MaskRunnerState state(p.params, p.mask);
  try {
    auto runner = cuda::make_mask_runner(fx.setup, state.view(), fx.env_pairs);
    ADD_FAILURE() << "the mask runner did not refuse";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("mask generation on the GPU needs about"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(fake::live_bytes(), live_before_);
}

}  // namespace
}  // namespace painvrl
