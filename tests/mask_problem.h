// A random mask-generation problem for comparing the device step (kernels/mask_step.cu) with
// mask_step<double>: tables, a mask with entries clipped at both ends, noise, and E environments'
// batches (one of them optionally empty), for tests/mask_kernel_emulation_test.cpp and
// tests/gpu_backend_test.cpp.
#pragma once
#include <algorithm>
#include <random>
#include <vector>

#include "painvrl/backend/mask_runner.h"
#include "painvrl/backend/mask_step.h"
#include "painvrl/data/dataset.h"
#include "painvrl/math/philox.h"
#include "painvrl/pipeline/stages.h"

namespace painvrl::test {

struct MaskTestProblem {
  int32_t U = 23, I = 31, D = 0, H = 0, N = 4, K = 3, E = 0;
  int64_t d = 0;
  std::vector<double> pt, pf, ti, f, bu, bi, iiw, params, mask, noise;
  std::vector<int32_t> iin;
  EnvBatches batches;
  MaskLayout layout;

  MaskTestProblem(unsigned seed, int32_t D_, int64_t d_, int32_t H_, bool attention, int32_t envs,
                  bool empty_env, int rows_per_env = 0)
      : D(D_), H(H_), E(envs), d(d_) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> nd(0, 0.5);
    std::uniform_real_distribution<double> uni(0.1, 1.2);
    auto fill = [&](std::vector<double>& v, size_t n, double scale) {
      v.resize(n);
      for (auto& x : v) x = scale * nd(rng);
    };
    fill(pt, size_t(U) * D, 1);
    fill(pf, size_t(U) * D, 1);
    fill(ti, size_t(I) * D, 1);
    fill(f, size_t(I) * d, 1);
    bu.resize(U);
    bi.resize(I);
    for (auto& x : bu) x = uni(rng);
    for (auto& x : bi) x = uni(rng);
    iin.resize(size_t(I) * K);
    iiw.resize(size_t(I) * K);
    for (auto& x : iin) x = int32_t(rng() % I);
    for (auto& x : iiw) x = uni(rng);
    iiw[5] = 0;  // a padding neighbour: skipped
    layout = MaskLayout::make(D, d, H, attention);
    fill(params, size_t(layout.total), 0.3);
    mask.resize(size_t(d));
    std::uniform_real_distribution<double> mu(-0.1, 1.1);  // some clipped at both ends
    for (auto& x : mask) x = std::clamp(mu(rng), 0.0, 1.0);
    fill(noise, size_t(E) * d, 0.05);
    batches.env_offsets = {0};
    batches.n_negatives = N;
    for (int32_t e = 0; e < E; ++e) {
      const int rows = empty_env && e == 1 ? 0
                       : rows_per_env > 0  ? rows_per_env + e
                                           : 2 + (e * 5 + int(seed)) % 3;
      for (int r = 0; r < rows; ++r) {
        batches.users.push_back(int32_t(rng() % U));
        batches.items.push_back(int32_t(rng() % I));
        for (int n = 0; n < N; ++n) batches.negatives.push_back(int32_t(rng() % I));
      }
      batches.env_offsets.push_back(int64_t(batches.users.size()));
    }
  }

  MaskProblem<double> cpu_problem() const {
    return MaskProblem<double>{U,          I,          D,        d,         pt.data(),
                               pf.data(),  ti.data(),  f.data(), bu.data(), bi.data(),
                               iin.data(), iiw.data(), K};
  }
};

inline MaskSettings mask_test_settings(MaskObjective objective, ParetoNormalize normalize,
                                       double kappa) {
  MaskSettings s;
  s.w1 = 0.8;
  s.w2 = 1.1;
  s.w3 = 0.5;
  s.w4 = 0.9;
  s.neg_weight = 2.0;
  s.kappa = kappa;
  s.gamma_w = 0.01;
  s.lambda = 0.3;
  s.center = 0.5;
  s.step = 0.1;
  s.normalize = normalize;
  s.objective = objective;
  s.fixed_alpha = 2.5;
  return s;
}

// What a mask runner reads and updates, with the MaskRunState that points at it.
struct MaskRunnerState {
  std::vector<double> params, m, v, mask, mask_m, mask_v;
  long long t = 0, mask_t = 0;
  MaskRunnerState(const std::vector<double>& params0, const std::vector<double>& mask0)
      : params(params0),
        m(params0.size()),
        v(params0.size()),
        mask(mask0),
        mask_m(mask0.size()),
        mask_v(mask0.size()) {}
  MaskRunState view() { return {&params, &m, &v, &t, &mask, &mask_m, &mask_v, &mask_t}; }
};

// A runner's setup over problem p: random training pairs split into environments of the given
// sizes (in order), the Pareto objective with item neighbours.
struct MaskRunFixture {
  PairList train;
  std::vector<std::vector<int32_t>> env_pairs;
  Config config;
  MaskRunSetup setup;

  MaskRunFixture(const MaskTestProblem& p, const std::vector<int32_t>& sizes, int32_t mask_batch,
                 const char* mask_optimizer, std::mt19937& rng) {
    env_pairs.resize(sizes.size());
    for (size_t e = 0; e < sizes.size(); ++e) {
      for (int32_t q = 0; q < sizes[e]; ++q) {
        env_pairs[e].push_back(int32_t(train.size()));
        train.push(int32_t(rng() % uint32_t(p.U)), int32_t(rng() % uint32_t(p.I)));
      }
    }
    config.mask_batch = mask_batch;
    config.negatives = p.N;
    config.sigma = 0.05;
    config.lr = 0.01;
    config.mask_optimizer = mask_optimizer;
    config.mask_step = 0.05;
    setup.options = mask_run_options(config);
    setup.layout = p.layout;
    setup.settings = mask_test_settings(MaskObjective::kPareto, ParetoNormalize::kNone, 0.7);
    setup.problem = p.cpu_problem();
    setup.train = &train;
    setup.envs = int32_t(sizes.size());
    setup.neg_key = math::make_key(3, 1);
    setup.noise_key = math::make_key(3, 2);
  }
  MaskRunFixture(const MaskRunFixture&) = delete;
  MaskRunFixture& operator=(const MaskRunFixture&) = delete;
};

}  // namespace painvrl::test
