// Kernel lab and stage benchmark of the mask-generation step on the device (kernels/mask_step.cu,
// kernels/cuda_mask.cpp), in the llm.c manner: first validate, then time.
//   1. validate: one step on a small random problem, on the device and by the CPU reference
//      mask_step<double> (host/cpu/mask_step.cpp); the largest error of each output relative to its
//      scale is printed, and the run fails above 1e-9.
//   2. time: variant 1 (the term passes read the feature rows in double) and variant 2 (in float,
//      exact: the features are floats; the runner's default) of the device runner's whole steps
//      (batch rows, negatives, noise, the step, Adam and the mask update) on a synthetic problem of
//      the given sizes (default: the paper's MovieLens sizes, 10 environments of 123,951 pairs,
//      batch 512 per environment, D = 64, d = 2,276, H = 64, N = 50, K = 10); median of `reps`
//      timed blocks of `steps` steps after a warm-up, and the epoch time that follows (steps per
//      epoch = ceil(largest environment / batch)).
// The bytes a step must move are dominated by the feature rows of every term, read in passes 1 and
// 2: 2 * rows * terms * d * 8 B in v1, 4 B in v2 (11.4 and 5.7 GB at the default sizes; items
// repeat, so much comes from L2), printed as effective GB/s. tools/device-check runs it beside the
// PyTorch reference of the same step (tools/reference/painvrl_ref.py mask-epoch). Run:
// build/bench/bench_mask_step_gpu [--envs 10] [--env-pairs 123951] [--batch 512] [--dim 64]
//        [--feat-dim 2276] [--hidden 64] [--negatives 50] [--ii-neighbors 10] [--steps 10]
//        [--reps 5] [--json FILE]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "painvrl/backend/mask_runner.h"
#include "painvrl/backend/mask_step.h"
#include "painvrl/cuda/backend.h"
#include "painvrl/cuda/device.h"
#include "painvrl/math/philox.h"
#include "painvrl/pipeline/config.h"
#include "painvrl/pipeline/stages.h"

using namespace painvrl;

namespace {

struct Sizes {
  int32_t users = 55485, items = 5986, dim = 64, hidden = 64, negatives = 50, ii_k = 10, envs = 10,
          batch = 512;
  int64_t feat_dim = 2276, env_pairs = 123951;
};

// Random tables of a mask problem (owned), in double.
struct Tables {
  std::vector<double> pt, pf, ti, f, bu, bi, iiw;
  std::vector<int32_t> iin;
  MaskProblem<double> problem;

  Tables(const Sizes& s, unsigned seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> nd(0, 1);
    std::uniform_real_distribution<double> uni(0.1, 1.0);
    auto fill = [&](std::vector<double>& v, int64_t n, double scale) {
      v.resize(size_t(n));
      for (double& x : v) x = scale * nd(rng);
    };
    fill(pt, int64_t(s.users) * s.dim, 0.1);
    fill(pf, int64_t(s.users) * s.dim, 0.1);
    fill(ti, int64_t(s.items) * s.dim, 0.1);
    fill(f, int64_t(s.items) * s.feat_dim, 1.0 / std::sqrt(double(s.feat_dim)));
    for (double& x : f) x = double(float(x));  // as the data's features: floats
    bu.resize(size_t(s.users));
    bi.resize(size_t(s.items));
    for (double& x : bu) x = uni(rng);
    for (double& x : bi) x = uni(rng);
    iin.resize(size_t(s.items) * s.ii_k);
    iiw.resize(iin.size());
    for (int32_t& x : iin) x = int32_t(rng() % uint64_t(s.items));
    for (double& x : iiw) x = uni(rng);
    problem = MaskProblem<double>{s.users,    s.items,    s.dim,    s.feat_dim, pt.data(),
                                  pf.data(),  ti.data(),  f.data(), bu.data(),  bi.data(),
                                  iin.data(), iiw.data(), s.ii_k};
  }
};

MaskSettings bench_settings() {
  MaskSettings ms;
  ms.w1 = 1e-7;
  ms.w2 = 1;
  ms.w3 = 1e-7;
  ms.w4 = 1;
  ms.neg_weight = 300;
  ms.kappa = 1;
  ms.gamma_w = 1e-4;
  ms.lambda = 0.1;
  ms.center = 0.5;
  ms.step = 0.01;
  return ms;
}

std::vector<double> init_params(const MaskLayout& L, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0, 0.05);
  std::vector<double> p(size_t(L.total));
  for (double& x : p) x = nd(rng);
  return p;
}

double max_scaled_error(const std::vector<double>& a, const std::vector<double>& b) {
  double err = 0, scale = 1e-300;
  for (size_t x = 0; x < a.size() && x < b.size(); ++x) {
    if (!std::isfinite(a[x])) return HUGE_VAL;
    err = std::max(err, std::fabs(a[x] - b[x]));
    scale = std::max(scale, std::fabs(b[x]));
  }
  return a.size() == b.size() ? err / scale : HUGE_VAL;
}

// Step 1: the device step (variant 1: double feature rows; 2: float) against the CPU reference on
// a small problem. Returns the worst error.
double validate(int variant) {
  Sizes s;
  s.users = 300;
  s.items = 200;
  s.dim = 32;
  s.feat_dim = 700;
  s.hidden = 16;
  s.negatives = 8;
  s.ii_k = 4;
  s.envs = 4;
  const Tables t(s, 7);
  const MaskLayout L = MaskLayout::make(s.dim, s.feat_dim, s.hidden, true);
  const std::vector<double> params = init_params(L, 8);
  std::mt19937_64 rng(9);
  std::vector<double> mask(size_t(s.feat_dim)), noise(size_t(s.envs * s.feat_dim));
  std::uniform_real_distribution<double> um(0.0, 1.0);
  std::normal_distribution<double> nd(0, 0.05);
  for (double& x : mask) x = um(rng);
  for (double& x : noise) x = nd(rng);
  EnvBatches b;
  b.env_offsets = {0};
  b.n_negatives = s.negatives;
  for (int32_t e = 0; e < s.envs; ++e) {
    for (int r = 0; r < 50 + 7 * e; ++r) {
      b.users.push_back(int32_t(rng() % uint64_t(s.users)));
      b.items.push_back(int32_t(rng() % uint64_t(s.items)));
      for (int n = 0; n < s.negatives; ++n) b.negatives.push_back(int32_t(rng() % s.items));
    }
    b.env_offsets.push_back(int64_t(b.users.size()));
  }
  const MaskSettings ms = bench_settings();
  const MaskStepResult<double> want =
      mask_step<double>(L, params.data(), mask.data(), t.problem, b, noise.data(), ms);
  const MaskStepResult<double> got = cuda::mask_step_on_device(
      L, params.data(), mask.data(), t.problem, b, noise.data(), ms, variant == 2);
  const struct {
    const char* name;
    double err;
  } errors[] = {
      {"loss_env", max_scaled_error(got.loss_env, want.loss_env)},
      {"L_ERM, L_IRM, w_ERM",
       max_scaled_error({got.L_ERM, got.L_IRM, got.w_ERM}, {want.L_ERM, want.L_IRM, want.w_ERM})},
      {"G", max_scaled_error(got.G, want.G)},
      {"V", max_scaled_error(got.V, want.V)},
      {"g_E", max_scaled_error(got.g_E, want.g_E)},
      {"g_I", max_scaled_error(got.g_I, want.g_I)},
      {"grad", max_scaled_error(got.grad, want.grad)},
      {"mask_new", max_scaled_error(got.mask_new, want.mask_new)},
  };
  double worst = 0;
  std::printf(
      "validate v%d (small problem, device vs mask_step<double>): max |error| / max |value|\n",
      variant);
  for (const auto& e : errors) {
    std::printf("  %-20s %.3g\n", e.name, e.err);
    worst = std::max(worst, e.err);
  }
  return worst;
}

}  // namespace

int main(int argc, char** argv) {
  Sizes s;
  int steps = 10, reps = 5;
  std::string json_path;
  for (int k = 1; k < argc; ++k) {
    const std::string a = argv[k];
    auto value = [&]() -> std::string {
      if (k + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++k];
    };
    if (a == "--envs") {
      s.envs = std::atoi(value().c_str());
    } else if (a == "--env-pairs") {
      s.env_pairs = std::atoll(value().c_str());
    } else if (a == "--batch") {
      s.batch = std::atoi(value().c_str());
    } else if (a == "--dim") {
      s.dim = std::atoi(value().c_str());
    } else if (a == "--feat-dim") {
      s.feat_dim = std::atoll(value().c_str());
    } else if (a == "--hidden") {
      s.hidden = std::atoi(value().c_str());
    } else if (a == "--negatives") {
      s.negatives = std::atoi(value().c_str());
    } else if (a == "--ii-neighbors") {
      s.ii_k = std::atoi(value().c_str());
    } else if (a == "--steps") {
      steps = std::max(1, std::atoi(value().c_str()));
    } else if (a == "--reps") {
      reps = std::max(1, std::atoi(value().c_str()));
    } else if (a == "--json") {
      json_path = value();
    } else {
      std::fprintf(stderr,
                   "usage: %s [--envs E] [--env-pairs P] [--batch B] [--dim D] [--feat-dim d] "
                   "[--hidden H] [--negatives N] [--ii-neighbors K] [--steps S] [--reps R] "
                   "[--json FILE]\n",
                   argv[0]);
      return 2;
    }
  }
  if (cuda::usable_device_count() == 0) {
    std::printf("no usable GPU (%s): nothing to time\n", cuda::describe_device().c_str());
    return cuda::gpu_required() ? 1 : 0;
  }
  try {
    std::printf("device: %s\n", cuda::describe_device().c_str());
    const double worst = std::max(validate(1), validate(2));
    const bool valid = worst <= 1e-9;
    std::printf("validation %s (worst %.3g, bar 1e-9)\n", valid ? "passed" : "FAILED", worst);

    const Tables t(s, 1);
    const MaskLayout L = MaskLayout::make(s.dim, s.feat_dim, s.hidden, s.hidden > 0);
    Config c;
    c.mask_batch = s.batch;
    c.negatives = s.negatives;
    c.mask_optimizer = "sgd";
    PairList train;
    std::vector<std::vector<int32_t>> env_pairs(size_t(s.envs));
    std::mt19937_64 rng(2);
    for (int32_t e = 0; e < s.envs; ++e) {
      for (int64_t p = 0; p < s.env_pairs; ++p) {
        env_pairs[size_t(e)].push_back(int32_t(train.size()));
        train.push(int32_t(rng() % uint64_t(s.users)), int32_t(rng() % uint64_t(s.items)));
      }
    }
    MaskRunSetup setup;
    setup.options = mask_run_options(c);
    setup.layout = L;
    setup.settings = bench_settings();
    setup.problem = t.problem;
    setup.train = &train;
    setup.envs = s.envs;
    setup.neg_key = math::make_key(1, 1);
    setup.noise_key = math::make_key(1, 2);
    const int64_t steps_per_epoch = (s.env_pairs + s.batch - 1) / s.batch;
    const int64_t rows = int64_t(s.envs) * std::min<int64_t>(s.batch, s.env_pairs);
    const int64_t terms = 1 + s.negatives + s.ii_k;
    std::printf("sizes: E %d x %lld pairs, batch %d (rows %lld), D %d, d %lld, H %d, N %d, K %d\n",
                s.envs, static_cast<long long>(s.env_pairs), s.batch, static_cast<long long>(rows),
                s.dim, static_cast<long long>(s.feat_dim), s.hidden, s.negatives, s.ii_k);
    // Median seconds per step of the runner with variant v (fresh state each time).
    auto time_variant = [&](int variant) {
      setup.fp32_features = variant == 2;
      std::vector<double> params = init_params(L, 3), m(params.size()), v(params.size()),
                          mask(size_t(s.feat_dim), 0.5), mm(mask.size()), mv(mask.size());
      long long adam_t = 0, mask_t = 0;
      auto runner = cuda::make_mask_runner(
          setup, MaskRunState{&params, &m, &v, &adam_t, &mask, &mm, &mv, &mask_t}, env_pairs);
      runner->begin_epoch(env_pairs, 0);
      int64_t step = 0;
      for (int w = 0; w < 3; ++w) runner->step(step++);
      runner->drain();
      std::vector<double> per_step;
      for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int k = 0; k < steps; ++k) runner->step(step++);
        const MaskDrain dr = runner->drain();  // synchronises
        const double dt =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (dr.failed) {
          throw std::runtime_error("a step was not finite (step " +
                                   std::to_string(dr.failed->step) + ")");
        }
        per_step.push_back(dt / steps);
      }
      std::sort(per_step.begin(), per_step.end());
      const double step_s = per_step[per_step.size() / 2];
      const double feature_bytes =
          2.0 * double(rows) * double(terms) * double(s.feat_dim) * (variant == 2 ? 4.0 : 8.0);
      std::printf(
          "v%d step: %.3f ms (median of %d blocks of %d), %.0f GB/s effective on the "
          "feature rows; epoch (%lld steps): %.3f s\n",
          variant, 1e3 * step_s, reps, steps, feature_bytes / step_s / 1e9,
          static_cast<long long>(steps_per_epoch), step_s * double(steps_per_epoch));
      return std::pair<double, double>(step_s, feature_bytes / step_s / 1e9);
    };
    const auto [v1_s, v1_gbs] = time_variant(1);
    const auto [step_s, gbs] = time_variant(2);  // the runner's default
    if (!json_path.empty()) {
      FILE* f = std::fopen(json_path.c_str(), "w");
      if (!f) {
        std::fprintf(stderr, "cannot write %s\n", json_path.c_str());
        return 2;
      }
      std::fprintf(f,
                   "{\"bench\": \"mask_step_gpu\", \"valid\": %s, \"validation_error\": %.3g, "
                   "\"envs\": %d, \"env_pairs\": %lld, \"batch\": %d, \"dim\": %d, "
                   "\"feat_dim\": %lld, \"hidden\": %d, \"negatives\": %d, \"ii_k\": %d, "
                   "\"step_seconds\": %.6g, \"steps_per_epoch\": %lld, \"epoch_seconds\": %.6g, "
                   "\"feature_gbs\": %.4g, \"v1_step_seconds\": %.6g, \"v1_feature_gbs\": %.4g}\n",
                   valid ? "true" : "false", worst, s.envs, static_cast<long long>(s.env_pairs),
                   s.batch, s.dim, static_cast<long long>(s.feat_dim), s.hidden, s.negatives,
                   s.ii_k, step_s, static_cast<long long>(steps_per_epoch),
                   step_s * double(steps_per_epoch), gbs, v1_s, v1_gbs);
      std::fclose(f);
    }
    return valid ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_mask_step_gpu: %s\n", e.what());
    return 1;
  }
}
