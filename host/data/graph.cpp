// Degrees, beta weights (Eq. 6) and the top-K item-item graph (Eq. 8) over the training pairs.
// For item i, G_ij = |users of i who also have j|, accumulated over the users of i into a
// per-thread dense counter with a touched-list (O(items) memory per thread, never items x items);
// g_i = sum_j G_ij = sum over users u of i of d_u. Work: sum over users of d_u^2.
#include "painvrl/data/graph.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "painvrl/data/error.h"
#include "painvrl/math/ultragcn.h"

namespace painvrl {

IiSimilarity parse_ii_similarity(const std::string& name) {
  if (name == "paper") return IiSimilarity::kPaper;
  if (name == "ultragcn") return IiSimilarity::kUltraGcn;
  input_error("ii_similarity: expected `paper` or `ultragcn`, got `{}`", name);
}

namespace {

// Training users per item (CSR), the transpose of train_by_user.
struct ItemUserCsr {
  std::vector<int64_t> offsets;
  std::vector<int32_t> users;
};

ItemUserCsr transpose(const UserItemCsr& by_user, int32_t n_users, int32_t n_items) {
  ItemUserCsr t;
  t.offsets.assign(size_t(n_items) + 1, 0);
  for (int32_t i : by_user.items) ++t.offsets[size_t(i) + 1];
  for (int32_t i = 0; i < n_items; ++i) t.offsets[i + 1] += t.offsets[i];
  t.users.resize(by_user.items.size());
  std::vector<int64_t> cursor(t.offsets.begin(), t.offsets.end() - 1);
  for (int32_t u = 0; u < n_users; ++u) {
    for (int64_t k = by_user.offsets[u]; k < by_user.offsets[u + 1]; ++k) {
      t.users[size_t(cursor[by_user.items[k]]++)] = u;
    }
  }
  return t;
}

}  // namespace

Graph build_graph(const PairList& train, int32_t n_users, int32_t n_items, int32_t k,
                  IiSimilarity similarity) {
  Graph g;
  g.n_users = n_users;
  g.n_items = n_items;
  g.train_by_user = UserItemCsr::build(train, n_users);
  g.user_degree.assign(size_t(n_users), 0.f);
  g.item_degree.assign(size_t(n_items), 0.f);
  for (int32_t u = 0; u < n_users; ++u) g.user_degree[u] = float(g.train_by_user.degree(u));
  for (int32_t i : g.train_by_user.items) g.item_degree[i] += 1.f;
  g.beta_user.resize(size_t(n_users));
  g.beta_item.resize(size_t(n_items));
  for (int32_t u = 0; u < n_users; ++u) {
    g.beta_user[u] = float(math::beta_user(double(g.user_degree[u])));
  }
  for (int32_t i = 0; i < n_items; ++i) {
    g.beta_item[i] = float(math::beta_item(double(g.item_degree[i])));
  }
  g.ii_k = k;
  if (k <= 0) return g;

  const ItemUserCsr by_item = transpose(g.train_by_user, n_users, n_items);
  // g_i = sum_j G_ij = sum over users u of i of d_u (diagonal included).
  std::vector<double> row_sum(size_t(n_items), 0.0);
  for (int32_t i = 0; i < n_items; ++i) {
    double s = 0;
    for (int64_t p = by_item.offsets[i]; p < by_item.offsets[i + 1]; ++p) {
      s += g.user_degree[by_item.users[p]];
    }
    row_sum[i] = s;
  }

  g.ii_neighbors.assign(size_t(n_items) * k, 0);
  g.ii_weights.assign(size_t(n_items) * k, 0.f);
#pragma omp parallel
  {
    std::vector<int32_t> count(size_t(n_items), 0);  // G_ij for the current i
    std::vector<int32_t> touched;
    std::vector<std::pair<double, int32_t>> candidates;
#pragma omp for schedule(dynamic, 16)
    for (int32_t i = 0; i < n_items; ++i) {
      touched.clear();
      for (int64_t p = by_item.offsets[i]; p < by_item.offsets[i + 1]; ++p) {
        const int32_t u = by_item.users[p];
        for (int64_t q = g.train_by_user.offsets[u]; q < g.train_by_user.offsets[u + 1]; ++q) {
          const int32_t j = g.train_by_user.items[q];
          if (count[j]++ == 0) touched.push_back(j);
        }
      }
      candidates.clear();
      const double g_i = row_sum[i];
      const double g_ii = g.item_degree[i];
      for (int32_t j : touched) {
        double w;
        if (similarity == IiSimilarity::kPaper) {
          w = j == i ? 0.0 : math::omega_paper(double(count[j]), g_i, g_ii, row_sum[j]);
        } else {
          w = math::omega_ultragcn(double(count[j]), g_i, row_sum[j]);
        }
        if (w > 0) candidates.emplace_back(w, j);
        count[j] = 0;
      }
      // Highest weight first; among equal weights the smaller id (deterministic).
      auto better = [](const auto& a, const auto& b) {
        return a.first != b.first ? a.first > b.first : a.second < b.second;
      };
      const size_t keep = std::min<size_t>(size_t(k), candidates.size());
      std::partial_sort(candidates.begin(), candidates.begin() + keep, candidates.end(), better);
      for (int32_t s = 0; s < k; ++s) {
        const size_t o = size_t(i) * k + s;
        if (size_t(s) < keep) {
          g.ii_neighbors[o] = candidates[s].second;
          g.ii_weights[o] = float(candidates[s].first);
        } else {
          g.ii_neighbors[o] = i;  // padding: weight 0 contributes nothing
          g.ii_weights[o] = 0.f;
        }
      }
    }
  }
  return g;
}

}  // namespace painvrl
