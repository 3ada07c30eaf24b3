// A small random training problem shared by the backend tests (CPU, GPU): users with 3 to 8
// random items each, Gaussian item features, the UltraGCN graph with 4 neighbours per item, its
// training settings; and the error measure the GPU comparisons use.
#pragma once
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "painvrl/data/dataset.h"
#include "painvrl/data/graph.h"
#include "painvrl/pipeline/config.h"

namespace painvrl::test {

struct Toy {
  int32_t n_users = 0, n_items = 0;
  int64_t d = 12;
  PairList train;
  std::vector<float> features;  // (n_items, d)
  Graph graph;
};

inline Toy make_toy(unsigned seed, int32_t n_users = 70, int32_t n_items = 55) {
  Toy t;
  t.n_users = n_users;
  t.n_items = n_items;
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> item(0, t.n_items - 1);
  for (int32_t u = 0; u < t.n_users; ++u) {
    const int n = 3 + int(rng() % 6);
    for (int k = 0; k < n; ++k) t.train.push(u, item(rng));
  }
  std::normal_distribution<float> nd(0.f, 1.f);
  t.features.resize(size_t(t.n_items) * t.d);
  for (float& x : t.features) x = nd(rng);
  t.graph = build_graph(t.train, t.n_users, t.n_items, 4, IiSimilarity::kUltraGcn);
  return t;
}

// Training settings for the toy: every loss term on (kappa, both L2 weights), a learning rate
// large enough that a few epochs move every parameter.
inline Config toy_config(unsigned seed, bool l2_touched, int dim) {
  Config c;
  c.seed = seed;
  c.dim = dim;
  c.negatives = 7;
  c.batch_size = 64;
  c.kappa = 0.5;
  c.gamma_emb = 1e-3;
  c.gamma_w = 1e-2;
  c.l2 = l2_touched ? "touched" : "full";
  c.lr = 1e-2;
  c.init_std = 0.1;
  return c;
}

// max |a - b| / max |b| over n values (infinite if a holds a non-finite value): the error
// relative to the tensor's scale, for results whose sums were added in another order.
inline double scaled_error(const float* a, const float* b, int64_t n) {
  double diff = 0, scale = 1e-30;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    diff = std::max(diff, std::fabs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::fabs(double(b[i])));
  }
  return diff / scale;
}

}  // namespace painvrl::test
