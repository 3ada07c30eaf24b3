// Kernel lab: the CPU UltraGCN loss forward + backward (host/cpu/cpu_loss.cpp) at MovieLens-1M
// shape (6,022 users, 3,043 items, D = 128, batch 1024, N = 200, K = 10: the ultragcn-ml1m preset).
// First validates the float step against the double step on the same inputs, then times it.
// Per step it must read the B (1 + N + K) item rows it scores twice (forward and backward) and
// the B user rows: about 2 * B * (1 + N + K) * D * 4 bytes = 222 MB, and do 4 * that many FLOPs
// divided by 4 bytes (a dot and an axpy per term per side).
// Run: build/bench/bench_ultragcn_loss_cpu [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "painvrl/cpu/ultragcn_loss.h"

using namespace painvrl;

namespace {

template <class T>
struct Problem {
  ParamLayout layout;
  std::vector<T> params, beta_u, beta_i, ii_w, grad;
  std::vector<int32_t> ii_n, users, items, negs;
  LossProblem<T> lp;
  Batch batch;
  LossSettings settings;
  cpu::LossWorkspace<T> ws;
};

template <class T>
void make_problem(Problem<T>& p, int32_t U, int32_t I, int32_t D, int64_t B, int32_t N, int32_t K,
                  unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0, 0.1);
  std::uniform_int_distribution<int32_t> ud(0, U - 1), id(0, I - 1);
  p.layout = ParamLayout::make(U, I, D, 0, false);
  p.params.resize(size_t(p.layout.total));
  for (auto& x : p.params) x = T(nd(rng));
  p.beta_u.resize(size_t(U));
  p.beta_i.resize(size_t(I));
  for (auto& x : p.beta_u) x = T(0.05 + std::fabs(nd(rng)));
  for (auto& x : p.beta_i) x = T(0.05 + std::fabs(nd(rng)));
  p.ii_n.resize(size_t(I) * K);
  p.ii_w.resize(size_t(I) * K);
  for (auto& x : p.ii_n) x = id(rng);
  for (auto& x : p.ii_w) x = T(std::fabs(nd(rng)));
  p.users.resize(size_t(B));
  p.items.resize(size_t(B));
  p.negs.resize(size_t(B) * N);
  for (auto& x : p.users) x = ud(rng);
  for (auto& x : p.items) x = id(rng);
  for (auto& x : p.negs) x = id(rng);
  p.lp = LossProblem<T>{p.beta_u.data(), p.beta_i.data(), p.ii_n.data(), p.ii_w.data(), K, nullptr};
  p.batch = Batch{p.users.data(), p.items.data(), p.negs.data(), B, N};
  p.settings = LossSettings{1e-7, 1, 1e-7, 1, 200, 1e-3, 5e-5, 0, false};
  p.grad.assign(size_t(p.layout.total), T(0));
}

// Validation: float against double on the same inputs (relative L2 error of the gradient).
bool validate() {
  Problem<float> f;
  Problem<double> d;
  make_problem(f, 500, 300, 32, 128, 20, 10, 1);
  make_problem(d, 500, 300, 32, 128, 20, 10, 1);
  const auto lf = cpu::ultragcn_loss_grad<float>(f.layout, f.params.data(), f.lp, f.batch,
                                                 f.settings, f.grad.data(), true, f.ws);
  const auto ld = cpu::ultragcn_loss_grad<double>(d.layout, d.params.data(), d.lp, d.batch,
                                                  d.settings, d.grad.data(), true, d.ws);
  double num = 0, den = 0;
  for (size_t k = 0; k < f.grad.size(); ++k) {
    num += (f.grad[k] - d.grad[k]) * (f.grad[k] - d.grad[k]);
    den += d.grad[k] * d.grad[k];
  }
  const double rel = std::sqrt(num / den);
  const double loss_rel = std::fabs(lf.total - ld.total) / std::fabs(ld.total);
  std::printf("validate: loss rel err %.2e, gradient rel L2 err %.2e -> %s\n", loss_rel, rel,
              rel < 1e-5 && loss_rel < 1e-5 ? "OK" : "FAIL");
  return rel < 1e-5 && loss_rel < 1e-5;
}

void BM_UltraGcnLossGradMl1m(benchmark::State& state) {
  Problem<float> p;
  const int64_t B = 1024;
  const int32_t N = 200, K = 10, D = 128;
  make_problem(p, 6022, 3043, D, B, N, K, 2);
  for (auto _ : state) {
    auto t = cpu::ultragcn_loss_grad<float>(p.layout, p.params.data(), p.lp, p.batch, p.settings,
                                            p.grad.data(), false, p.ws);
    benchmark::DoNotOptimize(t.total);
  }
  const double bytes = 2.0 * double(B) * (1 + N + K) * D * 4;
  state.counters["bytes_per_step"] = bytes;
  state.counters["GB/s"] =
      benchmark::Counter(bytes * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.counters["pairs/s"] =
      benchmark::Counter(double(B) * double(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_UltraGcnLossGradMl1m)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  if (!validate()) return 1;
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
