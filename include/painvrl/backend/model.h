// The backbone model of Eq. 15 and its parameter layout.
//   s(u, i; x) = <Pt_u, T_i> + <Pf_u, W x_i + b>
// Pt, Pf: (n_users, D); T: (n_items, D); W: (D, d); b: (D,). The ID-only model has no Pf, W, b.
// All parameters live in one contiguous buffer (likewise gradients and Adam moments); the layout
// gives each tensor's offset.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace painvrl {

struct ParamLayout {
  int32_t n_users = 0, n_items = 0, dim = 0;
  int64_t feat_dim = 0;                                    // d; 0 for the ID-only model
  bool content = false;                                    // has Pf, W, b
  int64_t pt = 0, pf = 0, t = 0, w = 0, b = 0, total = 0;  // offsets, in elements

  static ParamLayout make(int32_t n_users, int32_t n_items, int32_t dim, int64_t feat_dim,
                          bool content);
  int64_t embedding_end() const { return w; }  // [0, w) are the embedding tables
};

// Hyper-parameters of the UltraGCN loss (DESIGN.md section 2).
struct LossSettings {
  double w1 = 1, w2 = 0, w3 = 1, w4 = 0;
  double neg_weight = 1;
  double kappa = 0;
  double gamma_emb = 0;
  double gamma_w = 0;
  bool l2_touched = false;  // L2 over the rows the batch touches instead of the full tables
};

// The loss's parts, each summed over the batch.
template <class T>
struct LossTerms {
  T main = 0;       // sum of pos_w sp(-s_ui) + neg_weight * mean_n neg_w sp(s_uj)
  T item_item = 0;  // sum over neighbours of omega sp(-s_uj) (unweighted by kappa)
  T l2_emb = 0;     // |Pt|^2 + |Pf|^2 + |T|^2 (or the touched rows)
  T l2_w = 0;       // |W|^2 + |b|^2
  T total = 0;      // main + kappa * item_item + gamma_emb * l2_emb + gamma_w * l2_w
};

// A batch of positives with their negatives.
struct Batch {
  const int32_t* users = nullptr;      // (B,)
  const int32_t* items = nullptr;      // (B,)
  const int32_t* negatives = nullptr;  // (B, N)
  int64_t size = 0;                    // B
  int32_t n_negatives = 0;             // N
};

// Read-only problem data the loss needs, in the loss's scalar type.
template <class T>
struct LossProblem {
  const T* beta_user = nullptr;           // (n_users,)
  const T* beta_item = nullptr;           // (n_items,)
  const int32_t* ii_neighbors = nullptr;  // (n_items, K)
  const T* ii_weights = nullptr;          // (n_items, K)
  int32_t ii_k = 0;                       // K
  const T* features = nullptr;            // (n_items, d), only for the content model
};

}  // namespace painvrl
