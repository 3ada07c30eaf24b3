// The CUDA kernels' own code (kernels/*.cu), compiled by g++ against the host emulation of
// include/painvrl/cuda/emulation.h, against the CPU backend on every machine (label `cpu`): the
// fused loss kernel's loss and gradients (ID-only and content models, with and without item
// neighbours, D of 8, 64, 100 and 256, one warp per row or per chunk of terms, several seeds,
// NaN-poisoned outputs), also in the deterministic mode (coefficients out, then fixed-order sums),
// the negatives bit for bit, Adam with the fused L2, frozen tensors and the sums of squares, the
// step end's accumulators and its halt on a non-finite loss, the scoring kernels, HIM's
// reassignment, and the ranking kernels (exclusions and top k) against the host's ranking. The
// `gpu` tests (tests/gpu_backend_test.cpp) check the same on a device; these prove the kernels'
// indexing, warp reductions and barriers where no GPU is.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <set>
#include <vector>

#include "host_sort.h"
#include "painvrl/backend/model.h"
#include "painvrl/cpu/ultragcn_loss.h"
#include "painvrl/data/dataset.h"
#include "painvrl/math/adam.h"
#include "painvrl/math/sampling.h"
#include "painvrl/pipeline/evaluate.h"
#include "toy_problem.h"

// The kernels under test (compiled in tests/emulated_kernels.cpp), after every other header (the
// emulation defines CUDA's keywords).
#define PAINVRL_KERNEL_EMULATION 1
#include "painvrl/cuda/kernels.h"

namespace painvrl {
namespace {

namespace k = cuda_emulated;

using test::scaled_error;

TEST(EmulatedKernels, FusedLossAndGradientEqualTheCpu) {
  // One seed under the sanitizers (tools/sanitize), where the fibers run several times slower.
  const std::vector<unsigned> seeds =
      std::getenv("PAINVRL_SANITIZED") ? std::vector<unsigned>{1u} : std::vector<unsigned>{1u, 2u};
  for (unsigned seed : seeds) {
    for (bool content : {false, true}) {
      for (double kappa : {0.0, 0.7}) {
        for (int32_t D : {8, 64, 100, 256}) {
          const int32_t U = 40, I = 30, K = 3, N = 5;
          const int64_t d = 6, B = 37;  // B not a multiple of the 8 rows per block
          std::mt19937 rng(seed * 101 + D);
          std::normal_distribution<float> nd(0.f, 0.3f);
          std::uniform_real_distribution<float> uni(0.05f, 1.5f);
          const ParamLayout L = ParamLayout::make(U, I, D, d, content);
          std::vector<float> params(size_t(L.total)), features(size_t(I * d)), beta_u(U), beta_i(I),
              ii_w(size_t(I * K));
          std::vector<int32_t> ii_n(size_t(I * K)), users(B), items(B), negs(size_t(B * N));
          for (float& v : params) v = nd(rng);
          for (float& v : features) v = nd(rng);
          for (float& v : beta_u) v = uni(rng);
          for (float& v : beta_i) v = uni(rng);
          for (float& v : ii_w) v = uni(rng);
          ii_w[4] = 0.f;  // a padding neighbour: contributes nothing
          for (int32_t& v : ii_n) v = int32_t(rng() % I);
          for (int32_t& v : users) v = int32_t(rng() % U);
          users[1] = users[0];  // a repeated user: its gradient rows add up
          for (int32_t& v : items) v = int32_t(rng() % I);
          for (int32_t& v : negs) v = int32_t(rng() % I);
          LossSettings S;
          S.w1 = 0.3;
          S.w2 = 1.1;
          S.w3 = 0.2;
          S.w4 = 0.9;
          S.neg_weight = 4;
          S.kappa = kappa;
          const LossProblem<float> problem{beta_u.data(),
                                           beta_i.data(),
                                           ii_n.data(),
                                           ii_w.data(),
                                           K,
                                           content ? features.data() : nullptr};
          const Batch batch{users.data(), items.data(), negs.data(), B, N};
          std::vector<float> want(size_t(L.total), 0.f);
          cpu::LossWorkspace<float> ws;
          const LossTerms<float> ref = cpu::ultragcn_loss_grad<float>(
              L, params.data(), problem, batch, S, want.data(), false, ws);
          // X = F W^T + b as the backend's cuBLAS product computes it.
          std::vector<float> x(size_t(I) * D, 0.f), grad_x(size_t(I) * D, 0.f);
          if (content) {
            for (int32_t j = 0; j < I; ++j) {
              for (int32_t c = 0; c < D; ++c) {
                double v = params[size_t(L.b + c)];
                for (int64_t f = 0; f < d; ++f)
                  v += double(features[size_t(j * d + f)]) * params[size_t(L.w + c * d + f)];
                x[size_t(j) * D + c] = float(v);
              }
            }
          }
          const int32_t chunks = D == 64 ? 3 : 1;  // 3 warps per row: 9 or 12 terms in 3 chunks
          std::vector<float> grad(size_t(L.total), 0.f),
              row_loss(size_t(2 * B * chunks), std::nanf(""));
          k::FusedLossArgs a =
              k::fused_loss_args(S, D, beta_u.data(), beta_i.data(), ii_n.data(), ii_w.data(), K,
                                 users.data(), items.data(), negs.data(), B, N);
          a.term_chunks = chunks;
          a.pt = params.data() + L.pt;
          a.pf = content ? params.data() + L.pf : nullptr;
          a.t = params.data() + L.t;
          a.x = content ? x.data() : nullptr;
          a.grad_pt = grad.data() + L.pt;
          a.grad_pf = content ? grad.data() + L.pf : nullptr;
          a.grad_t = grad.data() + L.t;
          a.grad_x = content ? grad_x.data() : nullptr;
          a.row_loss = row_loss.data();
          ASSERT_EQ(k::launch_fused_ultragcn_loss(a, nullptr), cudaSuccess);
          double main = 0, item_item = 0;
          for (int64_t r = 0; r < B * chunks; ++r) {
            main += row_loss[size_t(2 * r)];
            item_item += row_loss[size_t(2 * r + 1)];
          }
          const std::string what = "seed " + std::to_string(seed) + " content " +
                                   std::to_string(content) + " kappa " + std::to_string(kappa) +
                                   " D " + std::to_string(D);
          EXPECT_NEAR(main, ref.main, 1e-5 * std::fabs(ref.main)) << what;
          EXPECT_NEAR(item_item, ref.item_item, 1e-5 * std::fabs(ref.item_item) + 1e-12) << what;
          EXPECT_LT(scaled_error(grad.data() + L.pt, want.data() + L.pt, L.pf - L.pt), 1e-5)
              << what;
          EXPECT_LT(scaled_error(grad.data() + L.t, want.data() + L.t, L.w - L.t), 1e-5) << what;
          if (content) {
            EXPECT_LT(scaled_error(grad.data() + L.pf, want.data() + L.pf, L.t - L.pf), 1e-5)
                << what;
            EXPECT_LT(scaled_error(grad_x.data(), ws.item_vec_grad.data(), int64_t(x.size())), 1e-5)
                << what;
          }
          // Deterministic mode: coefficients and warp user rows out, then the fixed-order sums
          // (the sort a stable host sort here, CUB's radix sort on a device): the same gradient.
          {
            const int32_t terms = 1 + N + a.k_used;
            std::vector<float> det_grad(size_t(L.total), 0.f), det_grad_x(x.size(), 0.f),
                det_loss(row_loss.size(), std::nanf("")), coef(size_t(B * terms), std::nanf("")),
                warp_grad(size_t(B * chunks * 2 * D), std::nanf(""));
            std::vector<int32_t> key(size_t(B * terms), -1),
                scratch(size_t(k::fused_loss_reduce_scratch(B, terms, chunks)), -1);
            k::FusedLossArgs da = a;
            da.grad_pt = det_grad.data() + L.pt;
            da.grad_pf = content ? det_grad.data() + L.pf : nullptr;
            da.grad_t = det_grad.data() + L.t;
            da.grad_x = content ? det_grad_x.data() : nullptr;
            da.row_loss = det_loss.data();
            da.term_coef = coef.data();
            da.term_key = key.data();
            da.warp_user_grad = warp_grad.data();
            const k::DeviceSortPairs host_sort = test::host_sort_pairs;
            ASSERT_EQ(k::launch_fused_ultragcn_loss(da, nullptr), cudaSuccess);
            EXPECT_EQ(det_loss, row_loss) << what;
            ASSERT_EQ(k::launch_fused_loss_reduce(da, scratch.data(), host_sort, nullptr),
                      cudaSuccess);
            EXPECT_LT(scaled_error(det_grad.data() + L.pt, want.data() + L.pt, L.pf - L.pt), 1e-5)
                << what;
            EXPECT_LT(scaled_error(det_grad.data() + L.t, want.data() + L.t, L.w - L.t), 1e-5)
                << what;
            if (content) {
              EXPECT_LT(scaled_error(det_grad.data() + L.pf, want.data() + L.pf, L.t - L.pf), 1e-5)
                  << what;
              EXPECT_LT(scaled_error(det_grad_x.data(), ws.item_vec_grad.data(), int64_t(x.size())),
                        1e-5)
                  << what;
            }
          }
          // Without gradients the loss alone is written; a halted step writes nothing.
          std::vector<float> loss_only(row_loss.size(), std::nanf(""));
          a.grad_pt = a.grad_pf = a.grad_t = a.grad_x = nullptr;
          a.row_loss = loss_only.data();
          ASSERT_EQ(k::launch_fused_ultragcn_loss(a, nullptr), cudaSuccess);
          EXPECT_EQ(loss_only, row_loss) << what;
          const int halt = 1;
          std::vector<float> untouched(row_loss.size(), 7.f);
          a.row_loss = untouched.data();
          a.halt = &halt;
          ASSERT_EQ(k::launch_fused_ultragcn_loss(a, nullptr), cudaSuccess);
          EXPECT_EQ(untouched, std::vector<float>(row_loss.size(), 7.f)) << what;
        }
      }
    }
  }
}

TEST(EmulatedKernels, FusedLossRefusesWhatItCannotDo) {
  k::FusedLossArgs a;
  std::vector<float> row_loss(2);
  a.rows = 1;
  a.row_loss = row_loss.data();
  a.dim = k::kFusedLossMaxDim + 1;
  EXPECT_EQ(k::launch_fused_ultragcn_loss(a, nullptr), cudaErrorInvalidValue);
  a.dim = 8;
  std::vector<float> g(8);
  a.grad_x = g.data();  // a content gradient without the content rows
  EXPECT_EQ(k::launch_fused_ultragcn_loss(a, nullptr), cudaErrorInvalidValue);
  a.x = g.data();
  a.x_stride = 4;  // narrower than D
  EXPECT_EQ(k::launch_fused_ultragcn_loss(a, nullptr), cudaErrorInvalidValue);
  a.x_stride = 0;
  const int32_t env = 0;
  a.row_env = &env;  // environments without the stride of their side-by-side blocks
  EXPECT_EQ(k::launch_fused_ultragcn_loss(a, nullptr), cudaErrorInvalidValue);
}

// HIM's E environment models in one launch (row_env, x of width E * D, Pt, Pf, T frozen): each
// environment's loss and dX_all equal cpu::env_projection_loss_grad's.
TEST(EmulatedKernels, EnvironmentModelsInOneLaunchEqualTheCpu) {
  for (unsigned seed : {4u, 5u}) {
    const int32_t U = 30, I = 25, D = 40, E = 3, K = 3, N = 4;
    const int64_t d = 7, B = 29;
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.f, 0.4f);
    std::uniform_real_distribution<float> uni(0.05f, 1.5f);
    std::vector<float> pt(size_t(U * D)), pf(size_t(U * D)), t(size_t(I * D)),
        w_all(size_t(E * D * d)), b_all(size_t(E * D)), features(size_t(I * d)), beta_u(U),
        beta_i(I), ii_w(size_t(I * K));
    for (auto* v : {&pt, &pf, &t, &w_all, &b_all, &features})
      for (float& x : *v) x = nd(rng);
    for (float& x : beta_u) x = uni(rng);
    for (float& x : beta_i) x = uni(rng);
    for (float& x : ii_w) x = uni(rng);
    std::vector<int32_t> ii_n(size_t(I * K)), users(B), items(B), envs(B), negs(size_t(B * N));
    for (int32_t& x : ii_n) x = int32_t(rng() % I);
    for (int32_t& x : users) x = int32_t(rng() % U);
    for (int32_t& x : items) x = int32_t(rng() % I);
    for (int32_t& x : envs) x = int32_t(rng() % E);
    for (int32_t& x : negs) x = int32_t(rng() % I);
    LossSettings S;
    S.w1 = 0.2;
    S.w2 = 1.0;
    S.w3 = 0.1;
    S.w4 = 0.8;
    S.neg_weight = 3;
    S.kappa = 0.6;
    const LossProblem<float> problem{beta_u.data(),  beta_i.data(), ii_n.data(), ii_w.data(), K,
                                     features.data()};
    cpu::EnvModelsView m;
    m.n_users = U;
    m.n_items = I;
    m.dim = D;
    m.envs = E;
    m.feat_dim = d;
    m.pt = pt.data();
    m.pf = pf.data();
    m.t = t.data();
    m.w_all = w_all.data();
    m.b_all = b_all.data();
    const cpu::EnvBatch batch{users.data(), items.data(), envs.data(), negs.data(), B, N};
    std::vector<double> want_loss(E);
    std::vector<float> gw(size_t(E * D * d)), gb(size_t(E * D));
    cpu::LossWorkspace<float> ws;
    cpu::env_projection_loss_grad(m, problem, batch, S, want_loss.data(), gw.data(), gb.data(), ws);
    const std::vector<float> x = ws.item_vec;  // X_all (I, E * D), as the CPU formed it
    std::vector<float> grad_x(x.size(), 0.f), row_loss(size_t(2 * B * 2), std::nanf(""));
    k::FusedLossArgs a =
        k::fused_loss_args(S, D, beta_u.data(), beta_i.data(), ii_n.data(), ii_w.data(), K,
                           users.data(), items.data(), negs.data(), B, N);
    a.pt = pt.data();
    a.pf = pf.data();
    a.t = t.data();
    a.x = x.data();
    a.row_env = envs.data();
    a.x_stride = E * D;
    a.grad_x = grad_x.data();
    a.term_chunks = 2;
    a.row_loss = row_loss.data();
    ASSERT_EQ(k::launch_fused_ultragcn_loss(a, nullptr), cudaSuccess);
    std::vector<double> got_loss(E, 0.0);
    for (int64_t w = 0; w < 2 * B; ++w) {
      got_loss[size_t(envs[size_t(w / 2)])] +=
          double(row_loss[size_t(2 * w)]) + S.kappa * row_loss[size_t(2 * w + 1)];
    }
    for (int32_t e = 0; e < E; ++e)
      EXPECT_NEAR(got_loss[e], want_loss[e], 1e-5 * std::fabs(want_loss[e])) << "env " << e;
    EXPECT_LT(scaled_error(grad_x.data(), ws.item_vec_grad.data(), int64_t(x.size())), 1e-5);
    // Deterministic mode: the environments' blocks of dX keyed apart (j * E + e), the same
    // gradient; an item table gradient with several blocks is refused (its runs would race).
    const int32_t terms = 1 + N + a.k_used;
    std::vector<float> det_grad_x(x.size(), 0.f), coef(size_t(B * terms)),
        warp_grad(size_t(B * 2 * 2 * D)), det_loss(row_loss.size());
    std::vector<int32_t> key(size_t(B * terms)),
        scratch(size_t(k::fused_loss_reduce_scratch(B, terms, 2)));
    k::FusedLossArgs da = a;
    da.grad_x = det_grad_x.data();
    da.row_loss = det_loss.data();
    da.term_coef = coef.data();
    da.term_key = key.data();
    da.warp_user_grad = warp_grad.data();
    ASSERT_EQ(k::launch_fused_ultragcn_loss(da, nullptr), cudaSuccess);
    ASSERT_EQ(k::launch_fused_loss_reduce(da, scratch.data(), test::host_sort_pairs, nullptr),
              cudaSuccess);
    EXPECT_LT(scaled_error(det_grad_x.data(), ws.item_vec_grad.data(), int64_t(x.size())), 1e-5);
    std::vector<float> grad_t(t.size(), 0.f);
    da.grad_t = grad_t.data();
    EXPECT_EQ(k::launch_fused_loss_reduce(da, scratch.data(), test::host_sort_pairs, nullptr),
              cudaErrorInvalidValue);
  }
}

TEST(EmulatedKernels, TermChunksFillTheGpuWithinTheLossBuffer) {
  for (int64_t rows : {1, 7, 512, 4095, 4096, 65536}) {
    for (int32_t terms : {1, 8, 15, 61, 211}) {
      const int32_t chunks = k::fused_loss_term_chunks(rows, terms);
      EXPECT_GE(chunks, 1);
      EXPECT_LE(chunks, std::max(1, terms / 8)) << rows << " " << terms;
      EXPECT_LE(rows * chunks, 4096 + rows) << "the backend's row_loss holds 4096 + B entries";
    }
  }
  EXPECT_EQ(k::fused_loss_term_chunks(512, 61), 7);  // the paper's batch: 3,584 warps
  EXPECT_EQ(k::fused_loss_term_chunks(65536, 61), 1);
}

TEST(EmulatedKernels, NegativesAreTheCpuDraws) {
  for (uint64_t seed : {3ull, 11ull}) {
    const math::PhiloxKey key =
        math::make_key(seed, math::stream_id(math::RngStream::kNegative, 1));
    for (int32_t n : {1, 6, 9}) {
      const int64_t rows = 21;
      std::vector<int32_t> got(size_t(rows * n), -1), want(size_t(rows * n), -2);
      ASSERT_EQ(k::launch_sample_negatives(key, 2, 5, rows, n, 977, got.data(), nullptr),
                cudaSuccess);
      for (int64_t r = 0; r < rows; ++r)
        math::negative_row(key, 2, 5, uint32_t(r), uint32_t(n), 977, want.data() + r * n);
      EXPECT_EQ(got, want) << seed << " " << n;
    }
  }
}

TEST(EmulatedKernels, AdamStepEndAndHaltMatchTheCpuOptimizer) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 0.5f);
  // Pt, Pf, T, W|b of 300, 0 (an ID-only layout), 200 and 70 parameters.
  const int64_t bounds[5] = {0, 300, 300, 500, 570};
  const int64_t n = bounds[4];
  std::vector<float> p(n), m(n), v(n), g(n);
  for (int64_t i = 0; i < n; ++i) {
    p[i] = nd(rng);
    m[i] = 0.1f * nd(rng);
    v[i] = std::fabs(nd(rng));
    g[i] = nd(rng);
  }
  k::AdamArgs a;
  std::vector<float> pd = p, md = m, vd = v, gd = g;
  a.params = pd.data();
  a.m = md.data();
  a.v = vd.data();
  a.grad = gd.data();
  std::copy(bounds, bounds + 5, a.bounds);
  a.frozen = 4;  // T
  a.emb_l2_coef = 0.02f;
  a.w_l2_coef = 0.3f;
  a.step = math::make_adam_step(0.01f, 0.9f, 0.999f, 1e-8f, 3);
  std::vector<float> block_sums(2 * k::kAdamBlocks, std::nanf(""));
  a.block_sums = block_sums.data();
  ASSERT_EQ(k::launch_adam(a, nullptr), cudaSuccess);
  double sum_emb = 0, sum_w = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool embedding = i < bounds[3];
    (embedding ? sum_emb : sum_w) += double(p[i]) * p[i];
    float pi = p[i], mi = m[i], vi = v[i];
    if (!(i >= bounds[2] && i < bounds[3])) {
      math::adam_update(pi, mi, vi, g[i], embedding ? 0.02f : 0.3f, a.step);
    }
    EXPECT_EQ(pd[i], pi) << i;
    EXPECT_EQ(md[i], mi) << i;
    EXPECT_EQ(vd[i], vi) << i;
    EXPECT_EQ(gd[i], 0.f) << i;
  }
  double got_emb = 0, got_w = 0;
  for (int b = 0; b < k::kAdamBlocks; ++b) {
    got_emb += block_sums[size_t(2 * b)];
    got_w += block_sums[size_t(2 * b + 1)];
  }
  EXPECT_NEAR(got_emb, sum_emb, 1e-5 * sum_emb);
  EXPECT_NEAR(got_w, sum_w, 1e-5 * sum_w);

  // The step end: the loss parts summed and accumulated; a non-finite loss halts.
  const int64_t rows = 300;
  std::vector<float> row_loss(size_t(2 * rows));
  double main = 0, ii = 0;
  for (int64_t r = 0; r < rows; ++r) {
    row_loss[size_t(2 * r)] = std::fabs(nd(rng));
    row_loss[size_t(2 * r + 1)] = std::fabs(nd(rng));
    main += row_loss[size_t(2 * r)];
    ii += row_loss[size_t(2 * r + 1)];
  }
  k::EpochAccumulators acc;
  int halt = 0;
  k::StepEndArgs e;
  e.row_loss = row_loss.data();
  e.entries = rows;
  e.pairs = 2 * rows;  // as if each entry were one of two chunks of a row
  e.block_sums = block_sums.data();
  e.kappa = 0.5f;
  e.gamma_emb = 1e-3f;
  e.gamma_w = 1e-2f;
  e.acc = &acc;
  e.halt = &halt;
  ASSERT_EQ(k::launch_step_end(e, nullptr), cudaSuccess);
  ASSERT_EQ(k::launch_step_end(e, nullptr), cudaSuccess);
  const double l2 = double(1e-3f) * got_emb + double(1e-2f) * got_w;
  EXPECT_EQ(acc.steps, 2);
  EXPECT_EQ(acc.pairs, 4 * rows);
  EXPECT_NEAR(acc.main, 2 * main, 1e-9 * main);
  EXPECT_NEAR(acc.item_item, 2 * 0.5 * ii, 1e-9 * ii);
  EXPECT_NEAR(acc.l2, 2 * l2, 1e-9 * l2);
  EXPECT_NEAR(acc.total, 2 * (main + 0.5 * ii + l2), 1e-9 * main);
  EXPECT_EQ(halt, 0);
  row_loss[17] = INFINITY;
  ASSERT_EQ(k::launch_step_end(e, nullptr), cudaSuccess);
  EXPECT_EQ(halt, 1);
  EXPECT_EQ(acc.steps, 2);  // the diverged step is not counted
  // Halted: Adam leaves everything as it is.
  const std::vector<float> before = pd;
  a.halt = &halt;
  std::fill(gd.begin(), gd.end(), 1.f);
  ASSERT_EQ(k::launch_adam(a, nullptr), cudaSuccess);
  EXPECT_EQ(pd, before);
  EXPECT_EQ(gd, std::vector<float>(size_t(n), 1.f));
}

// HIM's pieces: negatives keyed per model, Adam per model (own step counts, only active models),
// and the step end that checks the loss before the update.
TEST(EmulatedKernels, EnvironmentNegativesAdamAndStepEnd) {
  const std::vector<math::PhiloxKey> keys = {
      math::make_key(9, math::stream_id(math::RngStream::kNegative, 5)),
      math::make_key(9, math::stream_id(math::RngStream::kNegative, 6))};
  const std::vector<int32_t> row_key = {0, 0, 1, 1, 1}, row_index = {0, 1, 0, 1, 2};
  const int32_t N = 6;
  std::vector<int32_t> got(row_key.size() * N, -1), want(got.size(), -2);
  ASSERT_EQ(k::launch_sample_negatives_rows(keys.data(), row_key.data(), row_index.data(), 3, 8,
                                            int64_t(row_key.size()), N, 500, got.data(), nullptr),
            cudaSuccess);
  for (size_t r = 0; r < row_key.size(); ++r) {
    math::negative_row(keys[size_t(row_key[r])], 3, 8, uint32_t(row_index[r]), N, 500,
                       want.data() + r * N);
  }
  EXPECT_EQ(got, want);

  const int32_t E = 3, D = 4;
  const int64_t wsize = 10, n = E * (wsize + D);
  std::mt19937 rng(2);
  std::normal_distribution<float> nd(0.f, 0.5f);
  std::vector<float> p(n), m(n), v(n), g(n);
  for (int64_t i = 0; i < n; ++i) {
    p[i] = nd(rng);
    m[i] = 0.1f * nd(rng);
    v[i] = std::fabs(nd(rng));
    g[i] = nd(rng);
  }
  const std::vector<math::AdamStep> steps = {math::make_adam_step(0.01f, 0.9f, 0.999f, 1e-8f, 2),
                                             math::make_adam_step(0.01f, 0.9f, 0.999f, 1e-8f, 5),
                                             math::make_adam_step(0.01f, 0.9f, 0.999f, 1e-8f, 1)};
  const std::vector<uint8_t> active = {1, 0, 1};
  std::vector<float> pd = p, md = m, vd = v, gd = g;
  k::EnvAdamArgs a;
  a.params = pd.data();
  a.m = md.data();
  a.v = vd.data();
  a.grad = gd.data();
  a.envs = E;
  a.dim = D;
  a.w_size = wsize;
  a.steps = steps.data();
  a.active = active.data();
  a.l2_coef = 0.2f;
  ASSERT_EQ(k::launch_env_adam(a, nullptr), cudaSuccess);
  for (int64_t i = 0; i < n; ++i) {
    const int e = int(i < E * wsize ? i / wsize : (i - E * wsize) / D);
    float pi = p[i], mi = m[i], vi = v[i];
    if (active[size_t(e)]) math::adam_update(pi, mi, vi, g[i], 0.2f, steps[size_t(e)]);
    EXPECT_EQ(pd[i], pi) << i;
    EXPECT_EQ(md[i], mi) << i;
    EXPECT_EQ(vd[i], vi) << i;
    EXPECT_EQ(gd[i], 0.f) << i;
  }

  std::vector<float> row_loss = {1.f, 2.f, 0.5f, 4.f};  // two entries: (main, item-item)
  double epoch_loss = 10;
  int halt = 0;
  long long halt_step = -1;
  k::EnvStepEndArgs e;
  e.row_loss = row_loss.data();
  e.entries = 2;
  e.kappa = 0.5f;
  e.step = 7;
  e.epoch_loss = &epoch_loss;
  e.halt = &halt;
  e.halt_step = &halt_step;
  ASSERT_EQ(k::launch_env_step_end(e, nullptr), cudaSuccess);
  EXPECT_DOUBLE_EQ(epoch_loss, 10 + 1 + 0.5 * 2 + 0.5 + 0.5 * 4);
  EXPECT_EQ(halt, 0);
  row_loss[3] = NAN;
  ASSERT_EQ(k::launch_env_step_end(e, nullptr), cudaSuccess);
  EXPECT_EQ(halt, 1);
  EXPECT_EQ(halt_step, 7);
  EXPECT_DOUBLE_EQ(epoch_loss, 14.5);  // unchanged
  std::fill(gd.begin(), gd.end(), 1.f);
  const std::vector<float> before = pd;
  a.halt = &halt;
  ASSERT_EQ(k::launch_env_adam(a, nullptr), cudaSuccess);
  EXPECT_EQ(pd, before);
}

TEST(EmulatedKernels, ScoringKernelsEqualHostDotProducts) {
  std::mt19937 rng(8);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int32_t U = 9, I = 13, D = 5;
  for (bool content : {false, true}) {
    const int32_t width = content ? 2 * D : D;
    std::vector<float> pt(size_t(U * D)), pf(size_t(U * D)), item_rows(size_t(I * width));
    for (float& x : pt) x = nd(rng);
    for (float& x : pf) x = nd(rng);
    for (float& x : item_rows) x = nd(rng);
    const std::vector<int32_t> users = {3, 0, 8, 3, 5}, items = {12, 0, 4, 7, 7};
    std::vector<float> rows(users.size() * width, std::nanf(""));
    ASSERT_EQ(k::launch_gather_user_rows(pt.data(), content ? pf.data() : nullptr, D, users.data(),
                                         int64_t(users.size()), rows.data(), nullptr),
              cudaSuccess);
    std::vector<float> scores(users.size(), std::nanf(""));
    ASSERT_EQ(k::launch_score_pairs(pt.data(), content ? pf.data() : nullptr, D, item_rows.data(),
                                    users.data(), items.data(), int64_t(users.size()),
                                    scores.data(), nullptr),
              cudaSuccess);
    for (size_t p = 0; p < users.size(); ++p) {
      float want = 0;
      for (int32_t c = 0; c < width; ++c) {
        const float u = c < D ? pt[size_t(users[p] * D + c)] : pf[size_t(users[p] * D + c - D)];
        EXPECT_EQ(rows[p * width + c], u);
        want += u * item_rows[size_t(items[p] * width + c)];
      }
      EXPECT_NEAR(scores[p], want, 1e-5f * (1 + std::fabs(want)));
    }
  }
}

// HIM's reassignment kernel picks, for every pair, the environment the CPU's scores
// (cpu::env_projection_score_pairs) rank first, ties to the smaller id.
TEST(EmulatedKernels, EnvironmentAssignmentIsTheCpuArgmax) {
  for (unsigned seed : {1u, 2u}) {
    const int32_t U = 31, I = 23, D = 16, E = 4;
    const int64_t d = 9, P = 300;
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.f, 0.5f);
    std::vector<float> pt(size_t(U * D)), pf(size_t(U * D)), t(size_t(I * D)),
        w_all(size_t(E * D * d)), b_all(size_t(E * D)), psi(size_t(I * d));
    for (auto* v : {&pt, &pf, &t, &w_all, &b_all, &psi})
      for (float& x : *v) x = nd(rng);
    PairList pairs;
    for (int64_t p = 0; p < P; ++p) pairs.push(int32_t(rng() % U), int32_t(rng() % I));
    cpu::EnvModelsView m;
    m.n_users = U;
    m.n_items = I;
    m.dim = D;
    m.envs = E;
    m.feat_dim = d;
    m.pt = pt.data();
    m.pf = pf.data();
    m.t = t.data();
    m.w_all = w_all.data();
    m.b_all = b_all.data();
    std::vector<float> scores(size_t(P * E));
    cpu::LossWorkspace<float> ws;
    cpu::env_projection_score_pairs(m, psi.data(), pairs.user.data(), pairs.item.data(), P,
                                    scores.data(), ws);  // leaves X (I, E D) in ws.item_vec
    std::vector<float> x = ws.item_vec;
    std::vector<int32_t> want(static_cast<size_t>(P)), got(static_cast<size_t>(P), -1);
    for (int64_t p = 0; p < P; ++p) {  // the first maximum: the smaller id
      want[p] = int32_t(std::max_element(scores.begin() + p * E, scores.begin() + (p + 1) * E) -
                        (scores.begin() + p * E));
    }
    ASSERT_EQ(
        k::launch_assign_environments(pt.data(), pf.data(), t.data(), D, E, x.data(),
                                      pairs.user.data(), pairs.item.data(), P, got.data(), nullptr),
        cudaSuccess);
    EXPECT_EQ(got, want) << "seed " << seed;
    // Environment 3's X made equal to environment 1's: every pair that preferred either now ties,
    // and the tie goes to 1.
    for (int32_t j = 0; j < I; ++j) {
      std::copy_n(x.begin() + (j * E + 1) * D, D, x.begin() + (j * E + 3) * D);
    }
    std::vector<int32_t> tied(static_cast<size_t>(P), -1);
    ASSERT_EQ(k::launch_assign_environments(pt.data(), pf.data(), t.data(), D, E, x.data(),
                                            pairs.user.data(), pairs.item.data(), P, tied.data(),
                                            nullptr),
              cudaSuccess);
    int64_t ties = 0;
    for (int64_t p = 0; p < P; ++p) {
      std::vector<float> row(scores.begin() + p * E, scores.begin() + (p + 1) * E);
      row[3] = row[1];
      const int32_t expect = int32_t(std::max_element(row.begin(), row.end()) - row.begin());
      EXPECT_EQ(tied[p], expect) << p;
      EXPECT_NE(tied[p], 3);
      ties += expect == 1;  // a tie between 1 and 3, resolved to 1
    }
    EXPECT_GT(ties, 0);
    std::set<int32_t> used(want.begin(), want.end());
    EXPECT_GE(used.size(), 3u);  // the comparison is not trivial
  }
}

// The device ranking (exclusions, then the top k) gives host_ranker's lists: scores with many
// ties (a few distinct values) and NaNs, excluded items, a candidate mask, k from 1 to every item.
TEST(EmulatedKernels, TopKIsTheHostRanking) {
  for (unsigned seed : {1u, 2u}) {
    std::mt19937 rng(seed);
    const int32_t n_users = 9, n_items = 70;
    std::vector<float> scores(size_t(n_users) * n_items);
    for (float& x : scores) x = float(int(rng() % 7)) * 0.5f;     // ties everywhere
    scores[5] = scores[size_t(2) * n_items + 7] = std::nanf("");  // NaN ranks as -inf
    PairList train;
    for (int32_t u = 0; u < n_users; ++u) {
      for (int32_t q = 0; q < 5 + u * 3; ++q) train.push(u, int32_t(rng() % n_items));
    }
    const UserItemCsr exclude = UserItemCsr::build(train, n_users);
    std::vector<uint8_t> candidates(static_cast<size_t>(n_items));
    for (auto& c : candidates) c = rng() % 3 != 0;
    const std::vector<int32_t> users = {4, 0, 8, 2, 2, 7};  // any order, repeats
    const int64_t count = int64_t(users.size());
    const ScoreFn score = [&](const int32_t* us, int64_t n, float* out) {
      for (int64_t r = 0; r < n; ++r) {
        std::copy_n(scores.begin() + size_t(us[r]) * n_items, n_items, out + r * n_items);
      }
    };
    for (bool use_candidates : {false, true}) {
      const std::vector<uint8_t> cands = use_candidates ? candidates : std::vector<uint8_t>{};
      const RankFn host = host_ranker(score, n_items, exclude, cands);
      for (int k : {1, 7, 32, 33, seed == 1 ? int(n_items) : 20}) {
        std::vector<int32_t> want(size_t(count) * k, -2), got(size_t(count) * k, -2);
        host(users.data(), count, k, want.data());
        std::vector<float> block(size_t(count) * n_items);
        score(users.data(), count, block.data());
        ASSERT_EQ(k::launch_exclude_items(
                      exclude.offsets.data(), exclude.items.data(), users.data(), count, n_items,
                      use_candidates ? cands.data() : nullptr, block.data(), nullptr),
                  cudaSuccess);
        // Both selections: the one pass (k <= 32, launch_top_k) and the rounds.
        const std::vector<float> excluded = block;
        ASSERT_EQ(k::launch_top_k(block.data(), count, n_items, k, got.data(), nullptr),
                  cudaSuccess);
        EXPECT_EQ(got, want) << "seed " << seed << " k " << k << " candidates " << use_candidates;
        std::fill(got.begin(), got.end(), -2);
        ASSERT_EQ(k::launch_top_k_rounds(excluded.data(), count, n_items, k, got.data(), nullptr),
                  cudaSuccess);
        EXPECT_EQ(got, want) << "rounds: seed " << seed << " k " << k;
      }
    }
    std::vector<int32_t> out(1);
    EXPECT_EQ(k::launch_top_k(scores.data(), 1, n_items, n_items + 1, out.data(), nullptr),
              cudaErrorInvalidValue);
  }
  // Rows much longer than the block, so that every thread's list fills and drops (the one pass),
  // with ties and -inf.
  std::mt19937 rng(3);
  const int32_t n_items = 1500, count = 3;
  std::vector<float> rows(size_t(count) * n_items);
  for (float& x : rows) x = rng() % 11 == 0 ? -INFINITY : float(int(rng() % 40)) * 0.25f;
  for (int kk : {1, 5, 20, 32}) {
    std::vector<int32_t> want(size_t(count) * kk), got(want.size(), -2),
        got_rounds(want.size(), -2);
    for (int32_t r = 0; r < count; ++r) {
      std::vector<int32_t> order(static_cast<size_t>(n_items));
      std::iota(order.begin(), order.end(), 0);
      const float* s = rows.data() + size_t(r) * n_items;
      std::partial_sort(order.begin(), order.begin() + kk, order.end(),
                        [&](int32_t a, int32_t b) { return s[a] != s[b] ? s[a] > s[b] : a < b; });
      std::copy_n(order.begin(), kk, want.begin() + size_t(r) * kk);
    }
    ASSERT_EQ(k::launch_top_k(rows.data(), count, n_items, kk, got.data(), nullptr), cudaSuccess);
    ASSERT_EQ(k::launch_top_k_rounds(rows.data(), count, n_items, kk, got_rounds.data(), nullptr),
              cudaSuccess);
    EXPECT_EQ(got, want) << "long rows, k " << kk;
    EXPECT_EQ(got_rounds, want) << "long rows, rounds, k " << kk;
  }
}

}  // namespace
}  // namespace painvrl
