// Datasets: interaction splits and item features, read and validated.
//
// A dataset is a directory. With a `dataset.toml` it names its files:
//   name = "synth"                 # optional
//   format = "lightgcn"            # lightgcn | tsv | inter
//   train = "train.txt"            # lightgcn / tsv: one file per split (valid optional)
//   valid = "val.txt"
//   test = "test.txt"
//   file = "x.inter"               # inter: one file, x_label 0/1/2 = train/valid/test
//   n_users = 1000                 # optional; default max id + 1 over all splits
//   n_items = 800
//   normalize = true               # optional: L2-normalise each modality block per row
//   test_candidates = "all"        # optional: rank the test's items among all | cold items (the
//                                  # items without training pairs; the cold-item protocol)
//   [[test_set]]                   # optional further test sets (lightgcn / tsv formats), each
//   name = "iid"                   # evaluated at the selected model and reported by name
//   file = "test_iid.txt"
//   candidates = "all"             # all | cold, as test_candidates
//   [[modality]]                   # in order; concatenated into f (rows = items)
//   name = "content"
//   file = "features.npy"
// Without one, the layout is recognised: train.txt + test.txt (+ val.txt) is LightGCN text;
// train.tsv/val.tsv/test.tsv are `user item` tables; a single *.inter file is MMRec's format.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace painvrl {

struct PairList {
  std::vector<int32_t> user;  // (P,)
  std::vector<int32_t> item;  // (P,)
  size_t size() const { return user.size(); }
  void push(int32_t u, int32_t i) {
    user.push_back(u);
    item.push_back(i);
  }
};

// Per-user lists (CSR): items of user u are items[offsets[u] .. offsets[u + 1]), sorted.
struct UserItemCsr {
  std::vector<int64_t> offsets;  // (n_users + 1,)
  std::vector<int32_t> items;    // (P,)
  static UserItemCsr build(const PairList& pairs, int32_t n_users);
  int64_t degree(int32_t u) const { return offsets[u + 1] - offsets[u]; }
};

struct Modality {
  std::string name;
  std::string file;
  int64_t offset = 0;  // first column in f
  int64_t width = 0;
};

// What loading found and fixed, reported by `inspect` and at the start of `train`.
struct DataReport {
  int64_t duplicate_train = 0, duplicate_valid = 0, duplicate_test = 0;  // dropped
  int64_t heldout_in_train = 0;  // valid/test pairs repeating a training pair (dropped)
  int64_t users_without_train = 0, items_without_train = 0;
};

// A further held-out set evaluated at the selected model (dataset.toml [[test_set]]).
struct TestSet {
  std::string name;
  std::string file;
  std::string candidates = "all";  // all | cold
  PairList pairs;
};

struct Dataset {
  std::string name;
  std::string dir;
  std::string format;
  int32_t n_users = 0;
  int32_t n_items = 0;
  PairList train, valid, test;
  std::string test_candidates = "all";  // all | cold: the main test's ranking candidates
  std::vector<TestSet> test_sets;       // further test sets, in the order dataset.toml lists them
  std::vector<Modality> modalities;
  int64_t feature_dim = 0;      // d
  std::vector<float> features;  // (n_items, d) row-major, per-modality row-normalised
  bool normalized = true;
  // The dataset's own ids of its users and items, by our id (empty: ours are theirs), from the
  // id maps it declares (user_ids / item_ids in dataset.toml) or, beside an MMRec .inter file,
  // u_id_mapping.csv and i_id_mapping.csv: a header line, then `original<TAB>our id` per line.
  std::vector<std::string> user_ids, item_ids;
  DataReport report;
};

struct LoadOptions {
  bool load_features = true;
  int normalize = -1;  // -1: as the dataset says (default true); 0/1 override
};

// Loads and validates. Throws InputError naming the file, line or field on any problem.
Dataset load_dataset(const std::string& dir, const LoadOptions& options = {});

// The individual readers (exposed for tests and converters). Ids must be non-negative integers.
PairList read_lightgcn(const std::string& path);
PairList read_pairs_tsv(const std::string& path);
// MMRec .inter: splits[0..2] get the rows whose x_label is 0, 1, 2.
void read_inter(const std::string& path, PairList splits[3]);
// The same readers over a file's text already in memory (the fuzz targets in tests/fuzz use
// them); `origin` stands for the path in error messages.
PairList parse_lightgcn(std::string_view text, const std::string& origin);
PairList parse_pairs_tsv(std::string_view text, const std::string& origin);
void parse_inter(std::string_view text, const std::string& origin, PairList splits[3]);

// Writers used by `synth` and `split` (atomic: temporary file, then rename).
void write_lightgcn(const std::string& path, const PairList& pairs, int32_t n_users);

}  // namespace painvrl
