// The UltraGCN loss gradient (every term, both branches, both L2 modes) against central finite
// differences in double precision on random small problems, several seeds; and float against
// double on the same inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "painvrl/cpu/ultragcn_loss.h"
#include "painvrl/math/ultragcn.h"

namespace painvrl {
namespace {

struct SmallProblem {
  ParamLayout layout;
  std::vector<double> params, beta_u, beta_i, ii_w, features;
  std::vector<int32_t> ii_n, users, items, negs;
  LossProblem<double> lp;
  Batch batch;

  SmallProblem(unsigned seed, bool content, int32_t K) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> nd(0, 0.7);
    std::uniform_real_distribution<double> uni(0.05, 1.5);
    const int32_t U = 6, I = 9, D = 4, d = content ? 5 : 0, B = 5, N = 3;
    std::uniform_int_distribution<int32_t> ud(0, U - 1), id(0, I - 1);
    layout = ParamLayout::make(U, I, D, d, content);
    params.resize(size_t(layout.total));
    for (auto& x : params) x = nd(rng);
    beta_u.resize(U);
    beta_i.resize(I);
    for (auto& x : beta_u) x = uni(rng);
    for (auto& x : beta_i) x = uni(rng);
    ii_n.resize(size_t(I) * std::max(K, 1));
    ii_w.resize(size_t(I) * std::max(K, 1));
    for (auto& x : ii_n) x = id(rng);
    for (auto& x : ii_w) x = uni(rng);
    features.resize(size_t(I) * d);
    for (auto& x : features) x = nd(rng);
    users.resize(B);
    items.resize(B);
    negs.resize(size_t(B) * N);
    for (auto& x : users) x = ud(rng);
    users[1] = users[0];  // a repeated user
    for (auto& x : items) x = id(rng);
    for (auto& x : negs) x = id(rng);
    negs[0] = items[0];  // a negative that is also a positive
    lp = LossProblem<double>{beta_u.data(),
                             beta_i.data(),
                             ii_n.data(),
                             ii_w.data(),
                             K,
                             content ? features.data() : nullptr};
    batch = Batch{users.data(), items.data(), negs.data(), B, N};
  }

  double loss(const LossSettings& s, const std::vector<double>& p) {
    cpu::LossWorkspace<double> ws;
    return cpu::ultragcn_loss_grad<double>(layout, p.data(), lp, batch, s, nullptr, true, ws).total;
  }
};

void expect_gradient_matches_fd(SmallProblem& prob, const LossSettings& s, const char* what) {
  std::vector<double> grad(prob.params.size(), std::nan(""));
  std::fill(grad.begin(), grad.end(), 0.0);  // the loss adds into grad
  cpu::LossWorkspace<double> ws;
  cpu::ultragcn_loss_grad<double>(prob.layout, prob.params.data(), prob.lp, prob.batch, s,
                                  grad.data(), true, ws);
  const double h = 1e-6;
  double max_abs = 0;
  for (size_t k = 0; k < prob.params.size(); ++k) {
    std::vector<double> p = prob.params;
    p[k] += h;
    const double up = prob.loss(s, p);
    p[k] -= 2 * h;
    const double down = prob.loss(s, p);
    const double fd = (up - down) / (2 * h);
    max_abs = std::max(max_abs, std::fabs(fd));
    ASSERT_NEAR(grad[k], fd, 1e-7 + 1e-6 * std::fabs(fd)) << what << ": parameter " << k;
  }
  EXPECT_GT(max_abs, 1e-3) << what << ": the gradient should not be trivially zero";
}

LossSettings only(const char* term) {
  LossSettings s{0, 0, 0, 0, 0, 0, 0, 0, false};
  const std::string t = term;
  if (t == "pos") s = LossSettings{0.7, 1.3, 0, 0, 0, 0, 0, 0, false};
  if (t == "neg") s = LossSettings{0, 0, 0.4, 2.1, 3.0, 0, 0, 0, false};
  if (t == "ii") s = LossSettings{0, 0, 0, 0, 0, 0.8, 0, 0, false};
  if (t == "l2") s = LossSettings{0, 0, 0, 0, 0, 0, 0.3, 0.2, false};
  if (t == "l2touched") s = LossSettings{0, 0, 0, 0, 0, 0, 0.3, 0.2, true};
  if (t == "all") s = LossSettings{0.7, 1.3, 0.4, 2.1, 3.0, 0.8, 0.3, 0.2, false};
  return s;
}

class LossGradient : public testing::TestWithParam<std::tuple<unsigned, bool>> {};

TEST_P(LossGradient, EveryTermMatchesFiniteDifferences) {
  const auto [seed, content] = GetParam();
  for (const char* term : {"pos", "neg", "ii", "l2", "l2touched", "all"}) {
    SmallProblem prob(seed, content, 3);
    expect_gradient_matches_fd(prob, only(term), term);
  }
}

INSTANTIATE_TEST_SUITE_P(SeedsAndBranches, LossGradient,
                         testing::Combine(testing::Values(1u, 2u, 3u, 4u), testing::Bool()));

TEST(LossGradient, FloatAgreesWithDouble) {
  for (unsigned seed : {5u, 6u, 7u}) {
    SmallProblem prob(seed, true, 3);
    const LossSettings s = only("all");
    std::vector<double> gd(prob.params.size(), 0.0);
    cpu::LossWorkspace<double> wsd;
    const double ld = cpu::ultragcn_loss_grad<double>(prob.layout, prob.params.data(), prob.lp,
                                                      prob.batch, s, gd.data(), true, wsd)
                          .total;
    auto to_f = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
    std::vector<float> pf = to_f(prob.params), bu = to_f(prob.beta_u), bi = to_f(prob.beta_i),
                       iw = to_f(prob.ii_w), ff = to_f(prob.features);
    LossProblem<float> lpf{bu.data(), bi.data(), prob.ii_n.data(), iw.data(), 3, ff.data()};
    std::vector<float> gf(prob.params.size(), 0.f);
    cpu::LossWorkspace<float> wsf;
    const float lf = cpu::ultragcn_loss_grad<float>(prob.layout, pf.data(), lpf, prob.batch, s,
                                                    gf.data(), true, wsf)
                         .total;
    EXPECT_NEAR(lf, ld, 1e-5 * std::fabs(ld));
    for (size_t k = 0; k < gd.size(); ++k) EXPECT_NEAR(gf[k], gd[k], 1e-5 * (1 + std::fabs(gd[k])));
  }
}

TEST(LossGradient, LossTermsAddUp) {
  SmallProblem prob(9, true, 3);
  const LossSettings s = only("all");
  cpu::LossWorkspace<double> ws;
  const auto t = cpu::ultragcn_loss_grad<double>(prob.layout, prob.params.data(), prob.lp,
                                                 prob.batch, s, nullptr, true, ws);
  EXPECT_NEAR(t.total, t.main + s.kappa * t.item_item + s.gamma_emb * t.l2_emb + s.gamma_w * t.l2_w,
              1e-12);
  double l2w = 0;
  for (int64_t k = prob.layout.w; k < prob.layout.total; ++k)
    l2w += prob.params[k] * prob.params[k];
  EXPECT_NEAR(t.l2_w, l2w, 1e-12);
}

// The fused GPU kernel's algorithm (kernels/ultragcn_loss.cu), row by row and term by term with
// math::bce_term, run here in double: the same loss and the same Pt, Pf, T and dX gradients as
// the CPU backend, so the kernel's per-term formula is proven on machines without a GPU.
TEST(LossGradient, TheKernelsPerTermFormulaGivesTheCpuLossAndGradient) {
  for (unsigned seed : {3u, 4u, 5u}) {
    SmallProblem prob(seed, true, 3);
    LossSettings s = only("all");
    s.gamma_emb = s.gamma_w = 0;
    const ParamLayout& L = prob.layout;
    const int32_t D = L.dim, N = prob.batch.n_negatives, K = prob.lp.ii_k;
    const double* P = prob.params.data();
    std::vector<double> x(size_t(L.n_items) * D);  // X = F W^T + b
    for (int32_t j = 0; j < L.n_items; ++j) {
      for (int32_t c = 0; c < D; ++c) {
        double v = P[L.b + c];
        for (int64_t f = 0; f < L.feat_dim; ++f)
          v += prob.features[size_t(j * L.feat_dim + f)] * P[L.w + c * L.feat_dim + f];
        x[size_t(j) * D + c] = v;
      }
    }
    std::vector<double> grad(size_t(L.total), 0.0), grad_x(x.size(), 0.0);
    double main = 0, item_item = 0;
    for (int64_t r = 0; r < prob.batch.size; ++r) {
      const int32_t u = prob.users[size_t(r)], i = prob.items[size_t(r)];
      const double bu = prob.beta_u[size_t(u)];
      for (int32_t term = 0; term < 1 + N + K; ++term) {
        int32_t j;
        double w;
        if (term == 0) {
          j = i;
          w = math::pair_weight(s.w1, s.w2, bu, prob.beta_i[size_t(i)]);
        } else if (term <= N) {
          j = prob.negs[size_t(r * N + term - 1)];
          w = s.neg_weight / N * math::pair_weight(s.w3, s.w4, bu, prob.beta_i[size_t(j)]);
        } else {
          j = prob.ii_n[size_t(i * K + term - 1 - N)];
          w = prob.ii_w[size_t(i * K + term - 1 - N)];
        }
        double score = 0;
        for (int32_t c = 0; c < D; ++c) {
          score +=
              P[L.pt + u * D + c] * P[L.t + j * D + c] + P[L.pf + u * D + c] * x[size_t(j) * D + c];
        }
        const math::TermLoss<double> tl = math::bce_term(score, w, term == 0 || term > N);
        const double coef = term > N ? s.kappa * tl.dlds : tl.dlds;
        (term <= N ? main : item_item) += tl.loss;
        for (int32_t c = 0; c < D; ++c) {
          grad[size_t(L.pt + u * D + c)] += coef * P[L.t + j * D + c];
          grad[size_t(L.t + j * D + c)] += coef * P[L.pt + u * D + c];
          grad[size_t(L.pf + u * D + c)] += coef * x[size_t(j) * D + c];
          grad_x[size_t(j) * D + c] += coef * P[L.pf + u * D + c];
        }
      }
    }
    std::vector<double> want(size_t(L.total), 0.0);
    cpu::LossWorkspace<double> ws;
    const auto t =
        cpu::ultragcn_loss_grad<double>(L, P, prob.lp, prob.batch, s, want.data(), false, ws);
    EXPECT_NEAR(main, t.main, 1e-12 * std::fabs(t.main));
    EXPECT_NEAR(item_item, t.item_item, 1e-12 * std::fabs(t.item_item));
    for (int64_t k = 0; k < L.w; ++k) EXPECT_NEAR(grad[size_t(k)], want[size_t(k)], 1e-12) << k;
    for (size_t k = 0; k < grad_x.size(); ++k)
      EXPECT_NEAR(grad_x[k], ws.item_vec_grad[k], 1e-12) << k;
  }
}

}  // namespace
}  // namespace painvrl
