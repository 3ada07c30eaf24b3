// Degrees, beta and the item-item graph: a hand-computed example for both omega formulas, a
// brute-force dense comparison on random data, and the TikTok item count without any
// items x items allocation.
#include "painvrl/data/graph.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "painvrl/data/dataset.h"
#include "painvrl/math/ultragcn.h"
#include "test_util.h"

namespace painvrl {
namespace {

// users: u0 {0, 1}, u1 {0, 1, 2}, u2 {2, 3}.  G = R^T R:
//   G = [[2 2 1 0], [2 2 1 0], [1 1 2 1], [0 0 1 1]],  g = row sums = [5 5 5 2]
PairList tiny() {
  PairList p;
  for (auto [u, i] :
       std::vector<std::pair<int, int>>{{0, 0}, {0, 1}, {1, 0}, {1, 1}, {1, 2}, {2, 2}, {2, 3}}) {
    p.push(u, i);
  }
  return p;
}

TEST(Graph, DegreesAndBetaByHand) {
  const Graph g = build_graph(tiny(), 4, 4, 0, IiSimilarity::kPaper);  // user 3 has no pair
  EXPECT_EQ(g.user_degree, (std::vector<float>{2, 3, 2, 0}));
  EXPECT_EQ(g.item_degree, (std::vector<float>{2, 2, 2, 1}));
  EXPECT_FLOAT_EQ(g.beta_user[0], std::sqrt(3.f) / 2);
  EXPECT_FLOAT_EQ(g.beta_user[1], 2.f / 3);
  EXPECT_FLOAT_EQ(g.beta_user[3], 0.f);
  EXPECT_FLOAT_EQ(g.beta_item[0], 1 / std::sqrt(3.f));
  EXPECT_FLOAT_EQ(g.beta_item[3], 1 / std::sqrt(2.f));
}

TEST(Graph, PaperOmegaByHand) {
  // omega_ij = G_ij / (g_i - G_ii) * sqrt(g_i / g_j), j != i
  const Graph g = build_graph(tiny(), 3, 4, 2, IiSimilarity::kPaper);
  auto nb = [&](int i, int s) { return g.ii_neighbors[size_t(i) * 2 + s]; };
  auto w = [&](int i, int s) { return g.ii_weights[size_t(i) * 2 + s]; };
  EXPECT_EQ(nb(0, 0), 1);
  EXPECT_FLOAT_EQ(w(0, 0), 2.f / 3);
  EXPECT_EQ(nb(0, 1), 2);
  EXPECT_FLOAT_EQ(w(0, 1), 1.f / 3);
  EXPECT_EQ(nb(2, 0), 3);
  EXPECT_FLOAT_EQ(w(2, 0), float(1.0 / 3 * std::sqrt(5.0 / 2)));
  EXPECT_EQ(nb(2, 1), 0);  // ties with item 1 at 1/3: the smaller id first
  EXPECT_FLOAT_EQ(w(2, 1), 1.f / 3);
  EXPECT_EQ(nb(3, 0), 2);
  EXPECT_FLOAT_EQ(w(3, 0), float(std::sqrt(2.0 / 5)));
  EXPECT_EQ(nb(3, 1), 3);  // padding: itself with weight 0
  EXPECT_EQ(w(3, 1), 0.f);
}

TEST(Graph, UltraGcnOmegaByHand) {
  // omega_ij = G_ij / g_i * sqrt((g_i + 1) / (g_j + 1)), diagonal kept
  const Graph g = build_graph(tiny(), 3, 4, 2, IiSimilarity::kUltraGcn);
  auto nb = [&](int i, int s) { return g.ii_neighbors[size_t(i) * 2 + s]; };
  auto w = [&](int i, int s) { return g.ii_weights[size_t(i) * 2 + s]; };
  EXPECT_EQ(nb(0, 0), 0);
  EXPECT_FLOAT_EQ(w(0, 0), 0.4f);
  EXPECT_EQ(nb(0, 1), 1);
  EXPECT_FLOAT_EQ(w(0, 1), 0.4f);
  EXPECT_EQ(nb(2, 0), 2);
  EXPECT_FLOAT_EQ(w(2, 0), 0.4f);
  EXPECT_EQ(nb(2, 1), 3);
  EXPECT_FLOAT_EQ(w(2, 1), float(0.2 * std::sqrt(2.0)));
  EXPECT_EQ(nb(3, 0), 3);
  EXPECT_FLOAT_EQ(w(3, 0), 0.5f);
  EXPECT_EQ(nb(3, 1), 2);
  EXPECT_FLOAT_EQ(w(3, 1), float(0.5 * std::sqrt(0.5)));
}

// Brute force: dense G, every omega, full sort; compared with the sparse top-K.
TEST(Graph, MatchesDenseBruteForceOnRandomData) {
  for (unsigned seed : {1u, 2u, 3u}) {
    std::mt19937 rng(seed);
    const int U = 60, I = 45, K = 7;
    PairList p;
    std::vector<std::vector<int>> R(U, std::vector<int>(I, 0));
    for (int u = 0; u < U; ++u) {
      for (int i = 0; i < I; ++i) {
        if (std::uniform_real_distribution<double>(0, 1)(rng) < 0.12) {
          R[u][i] = 1;
          p.push(u, i);
        }
      }
    }
    std::vector<std::vector<double>> G(I, std::vector<double>(I, 0));
    std::vector<double> gsum(I, 0);
    for (int i = 0; i < I; ++i) {
      for (int j = 0; j < I; ++j) {
        for (int u = 0; u < U; ++u) G[i][j] += R[u][i] * R[u][j];
        gsum[i] += G[i][j];
      }
    }
    for (IiSimilarity sim : {IiSimilarity::kPaper, IiSimilarity::kUltraGcn}) {
      const Graph g = build_graph(p, U, I, K, sim);
      for (int i = 0; i < I; ++i) {
        std::vector<std::pair<double, int>> all;
        for (int j = 0; j < I; ++j) {
          double w = sim == IiSimilarity::kPaper
                         ? (j == i ? 0 : math::omega_paper(G[i][j], gsum[i], G[i][i], gsum[j]))
                         : math::omega_ultragcn(G[i][j], gsum[i], gsum[j]);
          if (w > 0) all.emplace_back(-w, j);
        }
        std::sort(all.begin(), all.end());
        for (int s = 0; s < K; ++s) {
          const float w = g.ii_weights[size_t(i) * K + s];
          if (s < int(all.size())) {
            EXPECT_NEAR(w, -all[s].first, 1e-6 * -all[s].first) << "item " << i << " slot " << s;
            EXPECT_EQ(g.ii_neighbors[size_t(i) * K + s], all[s].second);
          } else {
            EXPECT_EQ(w, 0.f);
          }
        }
      }
    }
  }
}

// The TikTok item count: 76,085 items (pairs from the real validation split). A dense
// items x items matrix would need 23 GB; the sparse build stays in O(items * K).
TEST(Graph, HandlesTikTokItemCount) {
  const PairList pairs = read_pairs_tsv(test::shared_dir() + "/data/tiktok-partial/val.tsv");
  ASSERT_EQ(pairs.size(), 79809u);
  const Graph g = build_graph(pairs, 36656, 76085, 10, IiSimilarity::kPaper);
  ASSERT_EQ(g.ii_weights.size(), size_t(76085) * 10);
  int64_t with_neighbours = 0;
  for (int32_t i = 0; i < 76085; ++i) {
    for (int s = 1; s < 10; ++s) {
      ASSERT_GE(g.ii_weights[size_t(i) * 10 + s - 1], g.ii_weights[size_t(i) * 10 + s]);
    }
    with_neighbours += g.ii_weights[size_t(i) * 10] > 0;
  }
  EXPECT_GT(with_neighbours, 1000);
}

}  // namespace
}  // namespace painvrl
