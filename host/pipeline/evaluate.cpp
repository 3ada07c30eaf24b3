// Full-ranking evaluation; see include/painvrl/pipeline/evaluate.h for the metric definitions.
// Users are ranked in blocks of `block_users`: on the host (host_ranker: a scores buffer of
// block_users x n_items floats, training items set to -inf, the top max(K) items per user by a
// partial sort with ties broken towards the smaller item id) or by a backend that ranks on the
// device in the same order (kernels/topk.cu); the metrics are summed from the ranked lists in a
// fixed order.
#include "painvrl/pipeline/evaluate.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "painvrl/data/error.h"

namespace painvrl {

NdcgVariant parse_ndcg(const std::string& name) {
  if (name == "standard") return NdcgVariant::kStandard;
  if (name == "invrl") return NdcgVariant::kInvRL;
  input_error("ndcg: expected `standard` or `invrl`, got `{}`", name);
}

double Metrics::get(const std::string& name) const {
  const auto at = name.find('@');
  if (at == std::string::npos) input_error("metric `{}`: expected NAME@K, e.g. recall@20", name);
  const std::string kind = name.substr(0, at);
  int k = 0;
  try {
    k = std::stoi(name.substr(at + 1));
  } catch (...) {
    input_error("metric `{}`: K after '@' must be an integer", name);
  }
  for (size_t x = 0; x < ks.size(); ++x) {
    if (ks[x] != k) continue;
    if (kind == "recall") return recall[x];
    if (kind == "precision") return precision[x];
    if (kind == "ndcg") return ndcg[x];
    input_error("metric `{}`: expected recall, precision or ndcg before '@'", name);
  }
  input_error("metric `{}`: K = {} is not among the evaluated eval_ks", name, k);
}

std::map<std::string, double> Metrics::as_map() const {
  std::map<std::string, double> m;
  for (size_t x = 0; x < ks.size(); ++x) {
    m["precision@" + std::to_string(ks[x])] = precision[x];
    m["recall@" + std::to_string(ks[x])] = recall[x];
    m["ndcg@" + std::to_string(ks[x])] = ndcg[x];
  }
  return m;
}

void UserHits::accumulate(const int32_t* ranked, int n_ranked, const int32_t* heldout_sorted,
                          int64_t n_heldout, const std::vector<int>& ks, NdcgVariant variant,
                          double* precision, double* recall, double* ndcg) {
  for (size_t x = 0; x < ks.size(); ++x) {
    const int k = ks[x];
    int hits = 0;
    double dcg = 0;
    for (int r = 0; r < std::min(k, n_ranked); ++r) {
      if (std::binary_search(heldout_sorted, heldout_sorted + n_heldout, ranked[r])) {
        ++hits;
        dcg += 1.0 / std::log2(double(r) + 2.0);
      }
    }
    const int64_t ideal_count =
        variant == NdcgVariant::kStandard ? std::min<int64_t>(n_heldout, k) : std::min(hits, k);
    double idcg = 0;
    for (int64_t r = 0; r < ideal_count; ++r) idcg += 1.0 / std::log2(double(r) + 2.0);
    precision[x] += double(hits) / k;
    recall[x] += n_heldout > 0 ? double(hits) / double(n_heldout) : 0.0;
    ndcg[x] += idcg > 0 ? dcg / idcg : 0.0;
  }
}

Metrics evaluate_ranked(const RankFn& rank, int32_t n_users, int32_t n_items,
                        const PairList& heldout, const std::vector<int>& ks, NdcgVariant variant,
                        int block_users) {
  Metrics m;
  m.ks = ks;
  const size_t nk = ks.size();
  m.precision.assign(nk, 0.0);
  m.recall.assign(nk, 0.0);
  m.ndcg.assign(nk, 0.0);
  const UserItemCsr truth = UserItemCsr::build(heldout, n_users);
  std::vector<int32_t> eval_users;
  for (int32_t u = 0; u < n_users; ++u) {
    if (truth.degree(u) > 0) eval_users.push_back(u);
  }
  m.users = int64_t(eval_users.size());
  if (eval_users.empty()) return m;
  const int max_k = std::min<int>(*std::max_element(ks.begin(), ks.end()), n_items);
  const int64_t block = std::max(1, block_users);
  std::vector<int32_t> ranked(size_t(std::min<int64_t>(block, m.users)) * max_k);
  // Per-user contributions (fixed-order sum afterwards: identical for any thread count).
  std::vector<double> contrib(size_t(m.users) * 3 * nk, 0.0);
  for (int64_t start = 0; start < m.users; start += block) {
    const int64_t count = std::min(block, m.users - start);
    rank(eval_users.data() + start, count, max_k, ranked.data());
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < count; ++r) {
      const int32_t u = eval_users[start + r];
      double* c = contrib.data() + size_t(start + r) * 3 * nk;
      UserHits::accumulate(ranked.data() + size_t(r) * max_k, max_k,
                           truth.items.data() + truth.offsets[u], truth.degree(u), ks, variant, c,
                           c + nk, c + 2 * nk);
    }
  }
  for (int64_t r = 0; r < m.users; ++r) {
    const double* c = contrib.data() + size_t(r) * 3 * nk;
    for (size_t x = 0; x < nk; ++x) {
      m.precision[x] += c[x];
      m.recall[x] += c[nk + x];
      m.ndcg[x] += c[2 * nk + x];
    }
  }
  for (size_t x = 0; x < nk; ++x) {
    m.precision[x] /= double(m.users);
    m.recall[x] /= double(m.users);
    m.ndcg[x] /= double(m.users);
  }
  return m;
}

RankFn host_ranker(const ScoreFn& score, int32_t n_items, const UserItemCsr& exclude,
                   const std::vector<uint8_t>& candidates) {
  // The scores buffer grows to the largest block asked for and is reused.
  auto scores = std::make_shared<std::vector<float>>();
  return [score, n_items, &exclude, &candidates, scores](const int32_t* users, int64_t count, int k,
                                                         int32_t* ranked) {
    scores->resize(std::max(scores->size(), size_t(count) * n_items));
    score(users, count, scores->data());
    const float neg_inf = -std::numeric_limits<float>::infinity();
#pragma omp parallel
    {
      std::vector<int32_t> order(static_cast<size_t>(n_items));
#pragma omp for schedule(dynamic, 4)
      for (int64_t r = 0; r < count; ++r) {
        const int32_t u = users[r];
        float* row = scores->data() + size_t(r) * n_items;
        for (int64_t p = exclude.offsets[u]; p < exclude.offsets[u + 1]; ++p) {
          row[exclude.items[p]] = neg_inf;
        }
        for (int32_t j = 0; j < n_items; ++j) {  // NaN ranks as -inf: the order stays total
          if ((!candidates.empty() && !candidates[j]) || std::isnan(row[j])) row[j] = neg_inf;
        }
        for (int32_t j = 0; j < n_items; ++j) order[j] = j;
        auto better = [row](int32_t a, int32_t b) {
          return row[a] != row[b] ? row[a] > row[b] : a < b;
        };
        std::partial_sort(order.begin(), order.begin() + k, order.end(), better);
        std::copy(order.begin(), order.begin() + k, ranked + size_t(r) * k);
      }
    }
  };
}

Metrics evaluate_full_ranking(const ScoreFn& score, int32_t n_users, int32_t n_items,
                              const UserItemCsr& exclude, const PairList& heldout,
                              const std::vector<int>& ks, NdcgVariant variant, int block_users,
                              const std::vector<uint8_t>& candidates) {
  return evaluate_ranked(host_ranker(score, n_items, exclude, candidates), n_users, n_items,
                         heldout, ks, variant, block_users);
}

ScoreFn most_popular_scorer(const std::vector<float>& item_degree) {
  return [&item_degree](const int32_t*, int64_t count, float* out) {
    const size_t n = item_degree.size();
    for (int64_t r = 0; r < count; ++r) {
      std::copy(item_degree.begin(), item_degree.end(), out + size_t(r) * n);
    }
  };
}

}  // namespace painvrl
