// Full-ranking evaluation (DESIGN.md "Evaluation"): every user with at least one held-out item
// is scored against all items, training items are excluded, and Precision, Recall and NDCG are
// computed at each K and averaged over those users. Scores come in blocks of users, so nothing
// of size users x items is ever held.
//   Recall@K = hits / |held-out|,  Precision@K = hits / K,
//   DCG@K = sum over ranks r < K of hit_r / log2(r + 2)
//   NDCG standard: DCG / IDCG(min(|held-out|, K));  NDCG invrl: DCG / IDCG(min(hits, K)), 0 if no
//   hit
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "painvrl/data/dataset.h"

namespace painvrl {

enum class NdcgVariant { kStandard, kInvRL };
NdcgVariant parse_ndcg(const std::string& name);

struct Metrics {
  std::vector<int> ks;
  std::vector<double> precision, recall, ndcg;  // (ks.size(),)
  int64_t users = 0;                            // users evaluated
  double get(const std::string& name) const;    // "recall@20", "ndcg@10", "precision@10"
  std::map<std::string, double> as_map() const;
};

// Per-user metric contributions from a ranked list (top max K) and the held-out set.
struct UserHits {
  static void accumulate(const int32_t* ranked, int n_ranked, const int32_t* heldout_sorted,
                         int64_t n_heldout, const std::vector<int>& ks, NdcgVariant ndcg,
                         double* precision, double* recall, double* ndcg_out);
};

// Fills scores (count, n_items) for users[0..count).
using ScoreFn = std::function<void(const int32_t* users, int64_t count, float* scores)>;

// Fills ranked (count, k) with each of users[0..count)'s k best items, best first: score
// descending, ties towards the smaller item id, excluded and non-candidate items and NaN scores
// last (as -inf).
using RankFn = std::function<void(const int32_t* users, int64_t count, int k, int32_t* ranked)>;

// Evaluates `heldout` pairs from the ranked lists of `rank` (k = min(max(ks), n_items)), users
// with held-out items in blocks of block_users.
Metrics evaluate_ranked(const RankFn& rank, int32_t n_users, int32_t n_items,
                        const PairList& heldout, const std::vector<int>& ks, NdcgVariant ndcg,
                        int block_users);

// The host's ranking from scores: `exclude` lists the items never recommended to each user,
// `candidates` (n_items,), when not empty, keeps only the items with a non-zero entry. Holds
// references to exclude and candidates.
RankFn host_ranker(const ScoreFn& score, int32_t n_items, const UserItemCsr& exclude,
                   const std::vector<uint8_t>& candidates);

// Evaluates `heldout` pairs. `exclude` lists the items never recommended to each user (training).
// `candidates` (n_items,), when not empty, restricts the ranking to items with a non-zero entry
// (the cold-item protocol ranks held-out cold items among the cold items only).
Metrics evaluate_full_ranking(const ScoreFn& score, int32_t n_users, int32_t n_items,
                              const UserItemCsr& exclude, const PairList& heldout,
                              const std::vector<int>& ks, NdcgVariant ndcg, int block_users,
                              const std::vector<uint8_t>& candidates = {});

// Most-popular baseline scores: training degree of each item, same for every user.
ScoreFn most_popular_scorer(const std::vector<float>& item_degree);

}  // namespace painvrl
