// The training graph: degrees, the beta weights (Eq. 6) and the item-item constraint graph
// (Eq. 8). G = R^T R is never formed densely: for each item i, the co-occurrence counts G_ij are
// accumulated over the users of i into a per-thread sparse accumulator, weighted by omega and
// reduced to the top K neighbours. Memory is O(items * K + threads * items).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "painvrl/data/dataset.h"

namespace painvrl {

enum class IiSimilarity { kPaper, kUltraGcn };
IiSimilarity parse_ii_similarity(const std::string& name);

struct Graph {
  int32_t n_users = 0, n_items = 0;
  std::vector<float> user_degree;  // (n_users,) d_u over training pairs
  std::vector<float> item_degree;  // (n_items,) d_i
  std::vector<float> beta_user;    // (n_users,) sqrt(d_u + 1) / d_u  (0 if d_u = 0)
  std::vector<float> beta_item;    // (n_items,) 1 / sqrt(d_i + 1)
  int32_t ii_k = 0;
  // (n_items, ii_k): neighbour ids and omega weights, sorted by weight descending (ties: smaller
  // id first). Items with fewer than ii_k candidates are padded with their own id and weight 0,
  // which contributes nothing to the loss or its gradient.
  std::vector<int32_t> ii_neighbors;
  std::vector<float> ii_weights;
  UserItemCsr train_by_user;  // training items per user (evaluation excludes them)
};

// Builds degrees, betas and, when k > 0, the top-k item-item neighbours.
Graph build_graph(const PairList& train, int32_t n_users, int32_t n_items, int32_t k,
                  IiSimilarity similarity);

}  // namespace painvrl
