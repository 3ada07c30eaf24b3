// A random mask-generation problem for comparing the device step (kernels/mask_step.cu) with
// mask_step<double>: tables, a mask with entries clipped at both ends, noise, and E environments'
// batches (one of them optionally empty), for tests/mask_kernel_emulation_test.cpp and
// tests/gpu_backend_test.cpp.
#pragma once
#include <algorithm>
#include <random>
#include <vector>

#include "painvrl/mask_step.h"

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

}  // namespace painvrl::test
