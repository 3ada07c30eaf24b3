// Parity with the official UltraGCN code on the three problems of
// ../shared/golden/ultragcn-official (see its README): beta, the item-item neighbours and
// weights (the `ultragcn` similarity), the loss terms and the gradients of the whole loss with
// respect to both embedding tables, each to a relative error under 1e-5.
// The folder must be present: a missing golden file fails the test, it never skips.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "painvrl/cpu/ultragcn_loss.h"
#include "painvrl/data/graph.h"
#include "painvrl/data/npy.h"
#include "test_util.h"

namespace painvrl {
namespace {

constexpr double kRelTol = 1e-5;

std::string golden_file(const std::string& seed, const std::string& name) {
  return test::shared_dir() + "/golden/ultragcn-official/" + seed + "/" + name;
}

// Per tensor: the relative error |ours - ref| / |ref| (L2 norms) under 1e-5; and per element
// |ours - ref| <= 1e-5 |ref| + 1e-7 max|ref|, the second term being the float32 rounding the
// reference itself carries on entries that are nearly zero (sums of terms of the tensor's scale).
void expect_close(const std::vector<double>& ours, const std::vector<double>& ref,
                  const std::string& what) {
  ASSERT_EQ(ours.size(), ref.size()) << what;
  double scale = 0, diff2 = 0, ref2 = 0;
  for (size_t k = 0; k < ref.size(); ++k) {
    scale = std::max(scale, std::fabs(ref[k]));
    diff2 += (ours[k] - ref[k]) * (ours[k] - ref[k]);
    ref2 += ref[k] * ref[k];
  }
  EXPECT_LT(std::sqrt(diff2), kRelTol * std::sqrt(ref2)) << what << ": relative L2 error";
  for (size_t k = 0; k < ref.size(); ++k) {
    EXPECT_LE(std::fabs(ours[k] - ref[k]), kRelTol * std::fabs(ref[k]) + 1e-7 * scale)
        << what << "[" << k << "]: ours " << ours[k] << " reference " << ref[k];
  }
}

class UltraGcnGolden : public testing::TestWithParam<std::string> {};

TEST_P(UltraGcnGolden, BetaNeighboursLossAndGradientsMatchTheReference) {
  const std::string seed = GetParam();
  std::ifstream vin(golden_file(seed, "values.json"));
  ASSERT_TRUE(vin.good()) << "missing " << golden_file(seed, "values.json");
  const nlohmann::json v = nlohmann::json::parse(vin);
  const int32_t U = v["users"], I = v["items"], D = v["dim"], K = v["neighbors"];
  const int32_t B = v["batch"], N = v["negatives"];

  const std::vector<int64_t> pairs = read_npy(golden_file(seed, "train_pairs.npy")).to_int64();
  PairList train;
  for (size_t p = 0; p + 1 < pairs.size(); p += 2)
    train.push(int32_t(pairs[p]), int32_t(pairs[p + 1]));
  const Graph g = build_graph(train, U, I, K, IiSimilarity::kUltraGcn);

  // beta
  const std::vector<double> ref_bu = read_npy(golden_file(seed, "beta_u.npy")).to_double();
  const std::vector<double> ref_bi = read_npy(golden_file(seed, "beta_i.npy")).to_double();
  expect_close(std::vector<double>(g.beta_user.begin(), g.beta_user.end()), ref_bu, "beta_u");
  expect_close(std::vector<double>(g.beta_item.begin(), g.beta_item.end()), ref_bi, "beta_i");

  // item-item neighbours: weights row by row; ids wherever the weight is not tied in the row
  const std::vector<int64_t> ref_nb = read_npy(golden_file(seed, "ii_neighbors.npy")).to_int64();
  const std::vector<double> ref_w = read_npy(golden_file(seed, "ii_weights.npy")).to_double();
  ASSERT_EQ(ref_w.size(), size_t(I) * K);
  expect_close(std::vector<double>(g.ii_weights.begin(), g.ii_weights.end()), ref_w, "ii_weights");
  int compared_ids = 0;
  for (int32_t i = 0; i < I; ++i) {
    for (int32_t s = 0; s < K; ++s) {
      const double w = ref_w[size_t(i) * K + s];
      int ties = 0;
      for (int32_t t = 0; t < K; ++t) {
        ties += std::fabs(ref_w[size_t(i) * K + t] - w) <= 1e-6 * w;
      }
      // a weight equal to the K-th could also tie with an item just outside the top K
      const bool tied_with_cut = std::fabs(ref_w[size_t(i) * K + K - 1] - w) <= 1e-6 * w;
      if (ties == 1 && !tied_with_cut && w > 0) {
        EXPECT_EQ(g.ii_neighbors[size_t(i) * K + s], ref_nb[size_t(i) * K + s])
            << "item " << i << " slot " << s;
        ++compared_ids;
      }
    }
  }
  EXPECT_GT(compared_ids, I);  // most neighbours have distinct weights

  // loss and gradients with the reference's own neighbours (ties resolved as it resolved them)
  const ParamLayout L = ParamLayout::make(U, I, D, 0, false);
  std::vector<double> params = read_npy(golden_file(seed, "user_emb.npy")).to_double();
  const std::vector<double> item_emb = read_npy(golden_file(seed, "item_emb.npy")).to_double();
  params.insert(params.end(), item_emb.begin(), item_emb.end());
  ASSERT_EQ(int64_t(params.size()), L.total);
  std::vector<int32_t> nb(ref_nb.begin(), ref_nb.end());
  const LossProblem<double> lp{ref_bu.data(), ref_bi.data(), nb.data(), ref_w.data(), K, nullptr};
  const std::vector<int64_t> bu = read_npy(golden_file(seed, "batch_users.npy")).to_int64();
  const std::vector<int64_t> bp = read_npy(golden_file(seed, "batch_pos.npy")).to_int64();
  const std::vector<int64_t> bn = read_npy(golden_file(seed, "batch_neg.npy")).to_int64();
  std::vector<int32_t> users(bu.begin(), bu.end()), items(bp.begin(), bp.end()),
      negs(bn.begin(), bn.end());
  ASSERT_EQ(int(users.size()), B);
  ASSERT_EQ(int(negs.size()), B * N);
  const Batch batch{users.data(), items.data(), negs.data(), B, N};
  // The reference's gamma multiplies half the sum of squares: gamma_emb = gamma / 2.
  const LossSettings s{
      v["w1"], v["w2"], v["w3"], v["w4"], v["negative_weight"], v["lambda"], double(v["gamma"]) / 2,
      0.0,     false};
  std::vector<double> grad(params.size(), 0.0);
  cpu::LossWorkspace<double> ws;
  const LossTerms<double> t =
      cpu::ultragcn_loss_grad<double>(L, params.data(), lp, batch, s, grad.data(), true, ws);
  expect_close({t.main}, {v["loss_L"]}, "loss_L");
  expect_close({t.item_item}, {v["loss_I"]}, "loss_I");
  expect_close({t.l2_emb / 2}, {v["norm_loss"]}, "norm_loss");
  expect_close({t.total}, {v["loss_total"]}, "loss_total");
  const std::vector<double> gu = read_npy(golden_file(seed, "grad_user_emb.npy")).to_double();
  const std::vector<double> gi = read_npy(golden_file(seed, "grad_item_emb.npy")).to_double();
  expect_close(std::vector<double>(grad.begin(), grad.begin() + L.t), gu, "grad_user_emb");
  expect_close(std::vector<double>(grad.begin() + L.t, grad.end()), gi, "grad_item_emb");
}

INSTANTIATE_TEST_SUITE_P(OfficialCode, UltraGcnGolden, testing::Values("seed0", "seed1", "seed2"));

}  // namespace
}  // namespace painvrl
