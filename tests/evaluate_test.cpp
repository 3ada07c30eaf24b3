// Full-ranking metrics against values computed by hand, both NDCG variants, block sizes, and
// the most-popular baseline.
#include "painvrl/pipeline/evaluate.h"

#include <gtest/gtest.h>

#include <cmath>

namespace painvrl {
namespace {

// 6 items; every user sees the scores [10, 5, 9, 1, 3, 7].
// user 0: train {0}, held-out {2, 4} -> ranking without 0: 2, 5, 1, 4, 3
// user 1: no train, held-out {3}      -> ranking: 0, 2, 5, 1, 4, 3 (no hit in the top 4)
// user 2: no held-out item            -> not evaluated
struct HandExample {
  PairList train, heldout;
  UserItemCsr exclude;
  ScoreFn score = [](const int32_t*, int64_t count, float* out) {
    const float row[6] = {10, 5, 9, 1, 3, 7};
    for (int64_t r = 0; r < count; ++r) std::copy(row, row + 6, out + r * 6);
  };
  HandExample() {
    train.push(0, 0);
    train.push(2, 1);
    heldout.push(0, 2);
    heldout.push(0, 4);
    heldout.push(1, 3);
    exclude = UserItemCsr::build(train, 3);
  }
};

TEST(Evaluate, StandardNdcgByHand) {
  HandExample ex;
  for (int block : {1, 2, 256}) {
    const Metrics m = evaluate_full_ranking(ex.score, 3, 6, ex.exclude, ex.heldout, {2, 4},
                                            NdcgVariant::kStandard, block);
    EXPECT_EQ(m.users, 2);
    const double idcg2 = 1 + 1 / std::log2(3.0);
    // K = 2: user 0 ranks [2, 5]: one hit at rank 0. user 1: none.
    EXPECT_DOUBLE_EQ(m.precision[0], (0.5 + 0) / 2);
    EXPECT_DOUBLE_EQ(m.recall[0], (0.5 + 0) / 2);
    EXPECT_NEAR(m.ndcg[0], (1 / idcg2) / 2, 1e-12);
    // K = 4: user 0 ranks [2, 5, 1, 4]: hits at ranks 0 and 3.
    EXPECT_DOUBLE_EQ(m.precision[1], (0.5 + 0) / 2);
    EXPECT_DOUBLE_EQ(m.recall[1], (1.0 + 0) / 2);
    EXPECT_NEAR(m.ndcg[1], ((1 + 1 / std::log2(5.0)) / idcg2) / 2, 1e-12);
    EXPECT_NEAR(m.get("ndcg@4"), m.ndcg[1], 0);
  }
}

TEST(Evaluate, InvRLNdcgNormalisesByHits) {
  HandExample ex;
  const Metrics m =
      evaluate_full_ranking(ex.score, 3, 6, ex.exclude, ex.heldout, {2, 4}, NdcgVariant::kInvRL, 2);
  // K = 2: one hit at rank 0, ideal over min(hits, K) = 1 position -> 1.0 for user 0.
  EXPECT_NEAR(m.ndcg[0], 1.0 / 2, 1e-12);
  // K = 4: two hits, ideal over 2 positions: the same as standard here.
  EXPECT_NEAR(m.ndcg[1], ((1 + 1 / std::log2(5.0)) / (1 + 1 / std::log2(3.0))) / 2, 1e-12);
}

TEST(Evaluate, TrainingItemsNeverRecommended) {
  HandExample ex;
  // If item 0 (score 10) were not excluded for user 0, K = 1 would have no hit; excluded, item 2
  // comes first and is a hit.
  const Metrics m =
      evaluate_full_ranking(ex.score, 3, 6, ex.exclude, ex.heldout, {1}, NdcgVariant::kStandard, 4);
  EXPECT_DOUBLE_EQ(m.precision[0], 0.5);
}

TEST(Evaluate, MostPopularRanksByTrainingDegree) {
  PairList train, heldout;
  // item degrees: item 2: 3, item 0: 2, item 1: 1, item 3: 0
  for (auto [u, i] :
       std::vector<std::pair<int, int>>{{0, 2}, {1, 2}, {2, 2}, {0, 0}, {1, 0}, {2, 1}}) {
    train.push(u, i);
  }
  heldout.push(3, 0);  // user 3 has no training item; top-1 is item 2 (miss), top-2 hits item 0
  const std::vector<float> degree = {2, 1, 3, 0};
  const UserItemCsr ex = UserItemCsr::build(train, 4);
  const Metrics m = evaluate_full_ranking(most_popular_scorer(degree), 4, 4, ex, heldout, {1, 2},
                                          NdcgVariant::kStandard, 8);
  EXPECT_DOUBLE_EQ(m.recall[0], 0.0);
  EXPECT_DOUBLE_EQ(m.recall[1], 1.0);
  EXPECT_NEAR(m.ndcg[1], 1 / std::log2(3.0), 1e-12);
}

TEST(Evaluate, MetricNamesAreChecked) {
  Metrics m;
  m.ks = {10};
  m.recall = m.precision = m.ndcg = {0.5};
  EXPECT_DOUBLE_EQ(m.get("recall@10"), 0.5);
  EXPECT_THROW(m.get("recall@20"), std::exception);
  EXPECT_THROW(m.get("hitrate@10"), std::exception);
}

}  // namespace
}  // namespace painvrl
