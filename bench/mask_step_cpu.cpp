// Kernel lab: one PaInvRL mask-generation step on the CPU (DESIGN.md section 2, Eq. 10-19), in the
// llm.c manner: variant 0 (host/cpu/mask_step_v0.cpp, the first closed form, term by term) and
// variant 1 (host/cpu/mask_step.cpp, the production step: four dots and four axpys per term, the
// rest as GEMMs), validated against each other on the same inputs, then timed at the paper-like
// shapes. It prints each variant's seconds per step, its GFLOP/s against a DGEMM timed in the same
// run (the machine's own fp64 peak on the same threads), the floor that peak implies, and the ratio
// against the PyTorch autograd step of the same objective (tools/reference/painvrl_ref.py
// mask-epoch) on the same shape and threads, in float32 and float64, timed in the same run.
//
// FLOPs counted per step (rows = E * batch, terms = rows * (1 + N + K), touched = distinct items):
//   per term  16 d (passes 1 and 2: two dot pairs, two axpy pairs) + 2 D + 24 H (attention)
//   GEMMs     8 rows D d + 16 rows D H + 8 touched (D + d) H
// Bytes: every term reads its feature row in both passes: 2 terms d sizeof(double).
//
//   build/bench/bench_mask_step_cpu [--shape ml1m|tiktok|synth|all] [--steps 5] [--threads 0]
//                                   [--variants 0,1] [--no-torch] [--save F | --against F]
// --save F writes v1's outputs of each shape run to F.<shape>; --against F compares v1's outputs
// with those files (from a build before a change) and reports whether they are bit-identical.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "painvrl/backend/mask_step.h"
#include "painvrl/cpu/ultragcn_loss.h"

using namespace painvrl;

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Shape {
  const char* name;
  int32_t users, items, D, H, E, batch, N, K;
  int64_t d;
};
// ml1m: the MovieLens-1M multimodal dataset tools/features builds (384 text + 18 genre columns);
// tiktok: the paper's TikTok catalogue (3 x 128 columns); synth: `painvrl synth`'s default size.
const Shape kShapes[] = {
    {"ml1m", 6022, 3043, 64, 64, 2, 512, 20, 10, 402},
    {"tiktok", 36656, 76085, 64, 64, 2, 512, 20, 10, 384},
    {"synth", 1000, 800, 64, 64, 2, 512, 20, 10, 48},
};

struct Problem {
  Shape s;
  std::vector<double> pt, pf, ti, f, bu, bi, iiw, params, mask, noise;
  std::vector<int32_t> iin;
  EnvBatches batches;
  MaskLayout layout;
  MaskSettings settings;
  MaskProblem<double> view() const {
    return MaskProblem<double>{s.users,    s.items,    s.D,      s.d,       pt.data(),
                               pf.data(),  ti.data(),  f.data(), bu.data(), bi.data(),
                               iin.data(), iiw.data(), s.K};
  }
};

Problem make_problem(const Shape& s, unsigned seed) {
  Problem p;
  p.s = s;
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0, 1);
  std::uniform_real_distribution<double> uni(0.1, 1.0);
  auto fill = [&](std::vector<double>& v, size_t n, double scale) {
    v.resize(n);
    for (auto& x : v) x = scale * nd(rng);
  };
  fill(p.pt, size_t(s.users) * s.D, 0.1);
  fill(p.pf, size_t(s.users) * s.D, 0.1);
  fill(p.ti, size_t(s.items) * s.D, 0.1);
  p.f.resize(size_t(s.items) * s.d);  // float-valued features, as the trainer's are
  for (auto& x : p.f) x = double(float(nd(rng) / std::sqrt(double(s.d))));
  p.bu.resize(size_t(s.users));
  p.bi.resize(size_t(s.items));
  for (auto& x : p.bu) x = uni(rng);
  for (auto& x : p.bi) x = uni(rng);
  p.iin.resize(size_t(s.items) * s.K);
  p.iiw.resize(size_t(s.items) * s.K);
  for (auto& x : p.iin) x = int32_t(rng() % uint32_t(s.items));
  for (auto& x : p.iiw) x = uni(rng) / s.K;
  p.layout = MaskLayout::make(s.D, s.d, s.H, s.H > 0);
  fill(p.params, size_t(p.layout.total), 0.05);
  p.mask.assign(size_t(s.d), 0.5);
  fill(p.noise, size_t(s.E) * s.d, 0.01);
  p.batches.env_offsets = {0};
  p.batches.n_negatives = s.N;
  for (int32_t e = 0; e < s.E; ++e) {
    for (int32_t r = 0; r < s.batch; ++r) {
      p.batches.users.push_back(int32_t(rng() % uint32_t(s.users)));
      p.batches.items.push_back(int32_t(rng() % uint32_t(s.items)));
      for (int32_t n = 0; n < s.N; ++n)
        p.batches.negatives.push_back(int32_t(rng() % uint32_t(s.items)));
    }
    p.batches.env_offsets.push_back(int64_t(p.batches.users.size()));
  }
  MaskSettings& st = p.settings;
  st.w1 = 1;
  st.w2 = 1e-4;
  st.w3 = 1;
  st.w4 = 1e-4;
  st.neg_weight = 1;
  st.kappa = 0.01;
  st.gamma_w = 1e-2;
  st.lambda = 0.1;
  st.step = 0.01;
  st.normalize = ParetoNormalize::kInitial;
  return p;
}

struct Count {
  double flops = 0, bytes = 0;
};
Count count(const Problem& p) {
  const Shape& s = p.s;
  const double rows = double(s.E) * s.batch, terms = rows * (1 + s.N + s.K);
  std::vector<char> seen(size_t(s.items), 0);
  double touched = 0;
  auto see = [&](int32_t j) {
    if (!seen[j]) touched += 1;
    seen[j] = 1;
  };
  for (size_t r = 0; r < p.batches.users.size(); ++r) {
    see(p.batches.items[r]);
    for (int32_t n = 0; n < s.N; ++n) see(p.batches.negatives[r * s.N + n]);
    for (int32_t k = 0; k < s.K; ++k) see(p.iin[size_t(p.batches.items[r]) * s.K + k]);
  }
  Count c;
  c.flops = terms * (16.0 * s.d + 2.0 * s.D + 24.0 * s.H) + 8 * rows * s.D * s.d +
            16 * rows * s.D * s.H + 8 * touched * (s.D + s.d) * s.H;
  c.bytes = 2 * terms * s.d * sizeof(double);
  return c;
}

using StepFn = void (*)(const Problem&, MaskStepWorkspace<double>&, MaskStepResult<double>&);
void step_v0(const Problem& p, MaskStepWorkspace<double>&, MaskStepResult<double>& out) {
  const MaskProblem<double> P = p.view();
  out = mask_step_v0<double>(p.layout, p.params.data(), p.mask.data(), P, p.batches, p.noise.data(),
                             p.settings);
}
void step_v1(const Problem& p, MaskStepWorkspace<double>& ws, MaskStepResult<double>& out) {
  const MaskProblem<double> P = p.view();
  mask_step<double>(p.layout, p.params.data(), p.mask.data(), P, p.batches, p.noise.data(),
                    p.settings, ws, out);
}

// v1's outputs, flattened in a fixed order (for --save and --against).
std::vector<double> flatten(const MaskStepResult<double>& r) {
  std::vector<double> out;
  for (const std::vector<double>* v :
       {&r.loss_env, &r.G, &r.V, &r.g_E, &r.g_I, &r.grad, &r.mask_grad, &r.mask_new})
    out.insert(out.end(), v->begin(), v->end());
  out.push_back(r.L_ERM);
  out.push_back(r.L_IRM);
  out.push_back(r.w_ERM);
  return out;
}

// Largest |a - b| over max |b| (the array's scale), over every output.
double worst_error(const MaskStepResult<double>& a, const MaskStepResult<double>& b) {
  auto err = [](const std::vector<double>& x, const std::vector<double>& y) {
    if (x.size() != y.size()) return double(INFINITY);
    double scale = 0, e = 0;
    for (double v : y) scale = std::max(scale, std::fabs(v));
    for (size_t k = 0; k < x.size(); ++k) e = std::max(e, std::fabs(x[k] - y[k]));
    return scale > 0 ? e / scale : e;
  };
  double w = 0;
  for (auto [x, y] : {std::pair{&a.loss_env, &b.loss_env},
                      {&a.G, &b.G},
                      {&a.V, &b.V},
                      {&a.g_E, &b.g_E},
                      {&a.g_I, &b.g_I},
                      {&a.grad, &b.grad},
                      {&a.mask_grad, &b.mask_grad},
                      {&a.mask_new, &b.mask_new}})
    w = std::max(w, err(*x, *y));
  w = std::max(w, std::fabs(a.L_IRM - b.L_IRM) / std::max(std::fabs(b.L_IRM), 1e-300));
  w = std::max(w, std::fabs(a.w_ERM - b.w_ERM));
  return w;
}

double median_step_seconds(StepFn fn, const Problem& p, int steps) {
  MaskStepWorkspace<double> ws;
  MaskStepResult<double> out;
  fn(p, ws, out);  // warm-up (allocates the workspace)
  std::vector<double> t;
  for (int k = 0; k < steps; ++k) {
    const auto t0 = Clock::now();
    fn(p, ws, out);
    t.push_back(seconds_since(t0));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// The machine's fp64 peak as OpenBLAS's DGEMM reaches it on `threads` threads (n = 2048).
double dgemm_gflops(int threads) {
  const int n = 2048;
  std::vector<double> a(size_t(n) * n, 0.5), b(size_t(n) * n, 0.25), c(size_t(n) * n);
  openblas_set_num_threads(threads);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0, a.data(), n, b.data(), n,
              0.0, c.data(), n);
  const auto t0 = Clock::now();
  const int reps = 3;
  for (int r = 0; r < reps; ++r)
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0, a.data(), n, b.data(), n,
                0.0, c.data(), n);
  const double s = seconds_since(t0);
  cpu::use_single_threaded_blas();
  return 2.0 * n * double(n) * n * reps / s / 1e9;
}

// Seconds per step of the PyTorch autograd reference at this shape, or -1 when it cannot run.
double torch_seconds(const Shape& s, const char* dtype, int threads, int steps) {
  const std::string cmd = std::string("/usr/bin/python3 ") + PAINVRL_SOURCE_DIR +
                          "/tools/reference/painvrl_ref.py mask-epoch --dtype " + dtype +
                          " --threads " + std::to_string(threads) + " --steps " +
                          std::to_string(steps) + " --warmup 1 --users " + std::to_string(s.users) +
                          " --items " + std::to_string(s.items) + " --dim " + std::to_string(s.D) +
                          " --feat-dim " + std::to_string(s.d) + " --hidden " +
                          std::to_string(s.H) + " --envs " + std::to_string(s.E) + " --batch " +
                          std::to_string(s.batch) + " --negatives " + std::to_string(s.N) +
                          " --ii-neighbors " + std::to_string(s.K) + " 2>&1";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (!pipe) return -1;
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  if (::pclose(pipe) != 0) {
    std::fprintf(stderr, "the PyTorch reference failed:\n%s\n", out.c_str());
    return -1;
  }
  const size_t at = out.find("\"seconds_per_step\": ");
  return at == std::string::npos ? -1 : std::atof(out.c_str() + at + 20);
}

}  // namespace

int main(int argc, char** argv) {
  std::string shape = "ml1m", variants = "0,1";
  int steps = 5, threads = 0;
  bool torch = true;
  std::string save_path, against_path;
  for (int a = 1; a < argc; ++a) {
    const std::string k = argv[a];
    auto next = [&]() -> std::string {
      if (a + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", k.c_str());
        std::exit(2);
      }
      return argv[++a];
    };
    if (k == "--shape") {
      shape = next();
    } else if (k == "--steps") {
      steps = std::max(1, std::atoi(next().c_str()));
    } else if (k == "--threads") {
      threads = std::atoi(next().c_str());
    } else if (k == "--variants") {
      variants = next();
    } else if (k == "--no-torch") {
      torch = false;
    } else if (k == "--save") {
      save_path = next();
    } else if (k == "--against") {
      against_path = next();
    } else {
      std::fprintf(stderr,
                   "usage: %s [--shape ml1m|tiktok|synth|all] [--steps N] [--threads N] "
                   "[--variants 0,1] [--no-torch] [--save F | --against F]\n",
                   argv[0]);
      return 2;
    }
  }
  if (threads > 0) omp_set_num_threads(threads);
  threads = omp_get_max_threads();
  cpu::use_single_threaded_blas();
  const double peak = dgemm_gflops(threads);
  std::printf("mask-step lab: %d threads; DGEMM 2048^3 on %d threads: %.1f GFLOP/s (the peak)\n",
              threads, threads, peak);
  const bool want0 = variants.find('0') != std::string::npos;
  const bool want1 = variants.find('1') != std::string::npos;
  int failures = 0;
  // --save F / --against F: one file per shape, F.<shape>.
  auto read_doubles = [](const std::string& path, std::vector<double>& out) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) return false;
    double x;
    while (std::fread(&x, sizeof x, 1, f) == 1) out.push_back(x);
    std::fclose(f);
    return true;
  };
  for (const Shape& s : kShapes) {
    if (shape != "all" && shape != s.name) continue;
    const Problem p = make_problem(s, 7);
    const Count c = count(p);
    std::printf(
        "\nshape %s: %d users, %d items, d = %lld, D = %d, H = %d, E = %d x %d rows, N = %d, "
        "K = %d; %.2f GFLOP and %.0f MB of feature rows per step; floor %.1f ms\n",
        s.name, s.users, s.items, (long long)s.d, s.D, s.H, s.E, s.batch, s.N, s.K, c.flops / 1e9,
        c.bytes / 1e6, 1e3 * c.flops / (peak * 1e9));
    // Validate v1 against v0 on the same inputs.
    MaskStepWorkspace<double> ws;
    MaskStepResult<double> r0, r1;
    step_v0(p, ws, r0);
    step_v1(p, ws, r1);
    const double err = worst_error(r1, r0);
    const bool ok = err < 1e-9;
    failures += !ok;
    std::printf("  validate v1 against v0: worst scaled error %.2e %s\n", err,
                ok ? "(ok)" : "FAIL");
    const std::vector<double> flat = flatten(r1);
    if (!save_path.empty()) {
      const std::string path = save_path + "." + s.name;
      FILE* f = std::fopen(path.c_str(), "wb");
      const bool written =
          f && std::fwrite(flat.data(), sizeof(double), flat.size(), f) == flat.size();
      if (f) std::fclose(f);
      if (!written) {
        std::fprintf(stderr, "%s: cannot write\n", path.c_str());
        return 2;
      }
      std::printf("  v1's outputs saved to %s (%zu values)\n", path.c_str(), flat.size());
    }
    if (!against_path.empty()) {
      const std::string path = against_path + "." + s.name;
      std::vector<double> against;
      if (!read_doubles(path, against) || against.size() != flat.size()) {
        std::fprintf(stderr, "%s: missing, or not %zu values\n", path.c_str(), flat.size());
        return 2;
      }
      int64_t differ = 0;
      double worst = 0;
      for (size_t k = 0; k < flat.size(); ++k) {
        const double b = against[k];
        if (std::memcmp(&flat[k], &b, sizeof b) != 0) ++differ;
        worst = std::max(worst, std::fabs(flat[k] - b) / std::max(std::fabs(b), 1e-300));
      }
      std::printf(
          "  v1 against %s: %lld of %zu values differ in some bit (worst relative %.2e)%s\n",
          path.c_str(), (long long)differ, flat.size(), worst,
          differ == 0 ? ": bit-identical" : "");
    }
    double t1 = 0;
    for (int v = 0; v < 2; ++v) {
      if ((v == 0 && !want0) || (v == 1 && !want1)) continue;
      const double t = median_step_seconds(v == 0 ? step_v0 : step_v1, p, steps);
      if (v == 1) t1 = t;
      std::printf("  v%d: %8.2f ms per step  %6.1f GFLOP/s (%4.1f%% of peak)  %5.2fx the floor\n",
                  v, 1e3 * t, c.flops / t / 1e9, 100 * c.flops / t / 1e9 / peak,
                  t / (c.flops / (peak * 1e9)));
    }
    if (torch && t1 > 0) {
      for (const char* dtype : {"float32", "float64"}) {
        const double tt = torch_seconds(s, dtype, threads, std::max(2, steps / 2));
        if (tt > 0) {
          std::printf("  PyTorch autograd %s: %8.2f ms per step; v1 is %.1fx faster\n", dtype,
                      1e3 * tt, tt / t1);
        } else {
          std::printf("  PyTorch autograd %s: not measured\n", dtype);
        }
      }
    }
  }
  return failures == 0 ? 0 : 1;
}
