// Using a trained model: `painvrl recommend` (top-K unseen items per user with scores) and
// `painvrl export` (the learned tables as NPY for other tools). Both read a completed run
// directory (summary.json, model.npy, config.toml, mask.npy for the invariant methods) and the
// dataset it was trained on, whose content hash must match the one the run recorded.
// Scores are those of training and evaluation (Eq. 15):
//   s(u, i) = <Pt_u, T_i> + <Pf_u, W (m * f_i) + b>   (m = 1 without a mask; no second term for
//   the ID-only model), with the best-validation parameters.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace painvrl {

struct Dataset;

// A finished run loaded for serving (the CLI's recommend, the Python package): its parameters,
// mask and dataset, checked to fit together, and the item rows scoring uses.
class ServedModel {
 public:
  ServedModel(const std::string& run_dir, const std::string& data_dir = "");
  ~ServedModel();
  ServedModel(const ServedModel&) = delete;
  ServedModel& operator=(const ServedModel&) = delete;

  const Dataset& dataset() const;
  const std::string& method() const;
  // Top-k items of each of `n_users` users, best first (equal scores by item id), never an item
  // of the user's training split when exclude_seen: items_out, scores_out (n_users, k), padded
  // with -1 and NaN past a user's candidates. Throws InputError for k outside [1, n_items] or an
  // unknown user.
  void recommend(const int32_t* users, int64_t n_users, int k, bool exclude_seen,
                 int32_t* items_out, float* scores_out) const;
  // Rows whose dot products are the scores: user_rows (n_users, W) = [Pt_u, Pf_u] and item_rows
  // (n_items, W) = [T_i, W (m * f_i) + b], W = factor_width() (D, or 2D for the content models;
  // 0 for mostpop).
  int64_t factor_width() const;
  void factors(float* user_rows, float* item_rows) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct RecommendOptions {
  std::string run_dir;
  std::string data_dir;        // empty: the dataset the run recorded
  std::vector<int64_t> users;  // from --user (may be empty)
  std::string users_file;      // one user id per line (may be empty)
  int k = 10;
  std::string out_file;  // empty: stdout
};

// Prints (or writes atomically to out_file) a TSV `user rank item score`, K rows per user in the
// order given, best first, never an item of the user's training split. Throws InputError for a
// missing or incomplete run directory, an unknown user (naming it and the valid range) or a bad
// users file (naming the file and line).
void run_recommend(const RecommendOptions& options);

struct ExportOptions {
  std::string run_dir;
  std::string data_dir;  // empty: the dataset the run recorded
  std::string out_dir;   // empty: RUNDIR/export
  bool overwrite = false;
};

// Writes user_id_embeddings.npy (Pt), item_id_embeddings.npy (T) and, for the content models,
// user_content_embeddings.npy (Pf), W.npy, b.npy and item_content_embeddings.npy
// (W (m * f_i) + b), mask.npy for the invariant methods, and export.json naming each file, its
// shape and the score formula. The directory appears whole (written beside, then renamed).
void run_export(const ExportOptions& options);

}  // namespace painvrl
