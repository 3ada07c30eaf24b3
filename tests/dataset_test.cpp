// Tests of dataset reading: the LightGCN, TSV and .inter readers (line endings, hostile tokens),
// dataset.toml and layout detection, duplicate and held-out pair removal, per-modality feature
// normalisation, the LightGCN writer, and loading the real data sets in ../shared/data.
#include "painvrl/data/dataset.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "painvrl/data/error.h"
#include "painvrl/data/npy.h"
#include "test_util.h"

namespace painvrl {
namespace {

namespace fs = std::filesystem;
using test::TempDir;
using test::write_file;
using Pairs = std::vector<std::pair<int32_t, int32_t>>;

Pairs pairs_of(const PairList& list) {
  Pairs pairs;
  for (size_t p = 0; p < list.size(); ++p) pairs.emplace_back(list.user[p], list.item[p]);
  return pairs;
}

// Runs `action`, which must throw an InputError whose message contains each of `needles`.
template <class Action>
void expect_input_error(Action&& action, const std::vector<std::string>& needles) {
  try {
    action();
    ADD_FAILURE() << "expected an InputError containing \"" << needles.front() << "\"";
  } catch (const InputError& error) {
    const std::string message = error.what();
    for (const std::string& needle : needles) {
      EXPECT_NE(message.find(needle), std::string::npos)
          << "message lacks \"" << needle << "\": " << message;
    }
  }
}

void expect_load_error(const std::string& dir, const std::vector<std::string>& needles) {
  expect_input_error([&] { load_dataset(dir); }, needles);
}

// ---- readers ---------------------------------------------------------------------------------

TEST(DatasetReaders, LightgcnPairs) {
  TempDir dir("ds");
  const std::string path = dir / "train.txt";
  write_file(path, "0 1 2\n1 3\n2\n\n   \n3 0 0\n4\t5  6 \n");
  const Pairs expected = {{0, 1}, {0, 2}, {1, 3}, {3, 0}, {3, 0}, {4, 5}, {4, 6}};
  EXPECT_EQ(pairs_of(read_lightgcn(path)), expected);
}

TEST(DatasetReaders, LineEndingsReadAlike) {
  TempDir dir("ds");
  const std::string lightgcn_lf = "0 1 2\n1 3\n\n2 4\n";
  const std::vector<std::string> lightgcn_variants = {
      "0 1 2\r\n1 3\r\n\r\n2 4\r\n", "0 1 2\n1 3\n\n2 4", "0 1 2\r\n1 3\r\n\r\n2 4"};
  write_file(dir / "lf.txt", lightgcn_lf);
  const Pairs lightgcn_expected = {{0, 1}, {0, 2}, {1, 3}, {2, 4}};
  EXPECT_EQ(pairs_of(read_lightgcn(dir / "lf.txt")), lightgcn_expected);
  for (const std::string& text : lightgcn_variants) {
    write_file(dir / "variant.txt", text);
    EXPECT_EQ(pairs_of(read_lightgcn(dir / "variant.txt")), lightgcn_expected);
  }

  const Pairs tsv_expected = {{0, 5}, {2, 1}};
  for (const char* text : {"user\titem\n0\t5\n2\t1\n", "user\titem\r\n0\t5\r\n2\t1\r\n",
                           "user\titem\n0\t5\n2\t1", "user\titem\r\n0\t5\r\n2\t1"}) {
    write_file(dir / "pairs.tsv", text);
    EXPECT_EQ(pairs_of(read_pairs_tsv(dir / "pairs.tsv")), tsv_expected);
  }

  for (const char* text : {"userID\titemID\tx_label\n0\t5\t0\n1\t6\t2\n",
                           "userID\titemID\tx_label\r\n0\t5\t0\r\n1\t6\t2\r\n",
                           "userID\titemID\tx_label\r\n0\t5\t0\r\n1\t6\t2"}) {
    write_file(dir / "x.inter", text);
    PairList splits[3];
    read_inter(dir / "x.inter", splits);
    EXPECT_EQ(pairs_of(splits[0]), (Pairs{{0, 5}}));
    EXPECT_TRUE(splits[1].user.empty());
    EXPECT_EQ(pairs_of(splits[2]), (Pairs{{1, 6}}));
  }
}

// Each text with CRLF line endings, without its final newline, or both, as LF text would be.
std::vector<std::string> line_ending_twins(const std::string& lf) {
  std::string crlf;
  for (const char c : lf) crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
  std::vector<std::string> twins = {crlf};
  if (!lf.empty() && lf.back() == '\n') {
    twins.push_back(lf.substr(0, lf.size() - 1));
    twins.push_back(crlf.substr(0, crlf.size() - 2));
  }
  return twins;
}

// Every text reader, from a file and from memory: the twins of an LF text (blank lines included)
// give the same pairs.
TEST(DatasetReaders, LineEndingTwinsReadExactlyAlike) {
  TempDir dir("ds");
  const std::string lightgcn = "0 1 2\n\n1 3 \n  \n2\n3 4\t5\n";
  const std::string tsv = "user\titem\n0\t5\n\n2\t1 \n \n7\t0\n";
  const std::string inter = "userID\titemID\tx_label\n0\t5\t0\n\n1\t6\t2\n2\t7\t1\n";
  const Pairs lightgcn_pairs = pairs_of(parse_lightgcn(lightgcn, "lf.txt"));
  const Pairs tsv_pairs = pairs_of(parse_pairs_tsv(tsv, "lf.tsv"));
  PairList inter_splits[3];
  parse_inter(inter, "lf.inter", inter_splits);
  EXPECT_EQ(lightgcn_pairs, (Pairs{{0, 1}, {0, 2}, {1, 3}, {3, 4}, {3, 5}}));
  EXPECT_EQ(tsv_pairs, (Pairs{{0, 5}, {2, 1}, {7, 0}}));
  EXPECT_EQ(pairs_of(inter_splits[0]), (Pairs{{0, 5}}));
  EXPECT_EQ(pairs_of(inter_splits[1]), (Pairs{{2, 7}}));
  EXPECT_EQ(pairs_of(inter_splits[2]), (Pairs{{1, 6}}));
  for (const std::string& text : line_ending_twins(lightgcn)) {
    EXPECT_EQ(pairs_of(parse_lightgcn(text, "twin.txt")), lightgcn_pairs);
    write_file(dir / "twin.txt", text);
    EXPECT_EQ(pairs_of(read_lightgcn(dir / "twin.txt")), lightgcn_pairs);
  }
  for (const std::string& text : line_ending_twins(tsv)) {
    EXPECT_EQ(pairs_of(parse_pairs_tsv(text, "twin.tsv")), tsv_pairs);
    write_file(dir / "twin.tsv", text);
    EXPECT_EQ(pairs_of(read_pairs_tsv(dir / "twin.tsv")), tsv_pairs);
  }
  for (const std::string& text : line_ending_twins(inter)) {
    PairList from_text[3], from_file[3];
    parse_inter(text, "twin.inter", from_text);
    write_file(dir / "twin.inter", text);
    read_inter(dir / "twin.inter", from_file);
    for (int s = 0; s < 3; ++s) {
      EXPECT_EQ(pairs_of(from_text[s]), pairs_of(inter_splits[s]));
      EXPECT_EQ(pairs_of(from_file[s]), pairs_of(inter_splits[s]));
    }
  }
}

TEST(DatasetReaders, InMemoryErrorsNameTheOrigin) {
  expect_input_error([] { parse_lightgcn("0 1\n1 -2\n", "mem.txt"); },
                     {"mem.txt:2: column 2 (item)", "negative item id '-2'"});
  expect_input_error([] { parse_pairs_tsv("", "mem.tsv"); }, {"mem.tsv: the file is empty"});
  PairList splits[3];
  expect_input_error([&] { parse_inter("userID\titemID\n", "mem.inter", splits); },
                     {"mem.inter:1: the header lacks the column 'x_label'"});
}

TEST(DatasetReaders, PairsTsv) {
  TempDir dir("ds");
  const std::string path = dir / "train.tsv";
  write_file(path, "user\titem\n0\t5\n\n2\t1\n7\t0\n");
  EXPECT_EQ(pairs_of(read_pairs_tsv(path)), (Pairs{{0, 5}, {2, 1}, {7, 0}}));

  write_file(path, "user item\n0\t5\n");
  expect_input_error([&] { read_pairs_tsv(path); }, {path + ":1:", "header line 'user<TAB>item'"});
  write_file(path, "user\titem\n0\t5\n1\t2\t3\n");
  expect_input_error([&] { read_pairs_tsv(path); },
                     {path + ":3:", "expected 2 tab-separated columns", "found 3"});
  write_file(path, "user\titem\n0 5\n");
  expect_input_error([&] { read_pairs_tsv(path); }, {path + ":2:", "found 1"});
  write_file(path, "");
  expect_input_error([&] { read_pairs_tsv(path); }, {path, "empty"});
}

TEST(DatasetReaders, InterColumnsInAnyOrder) {
  TempDir dir("ds");
  const std::string path = dir / "x.inter";
  write_file(path,
             "itemID\tx_label\trating\tuserID\n"
             "5\t0\t3\t1\n"
             "6\t1\t4\t1\n"
             "7\t2\t5\t2\n"
             "8\t0\t1\t0\n");
  PairList splits[3];
  read_inter(path, splits);
  EXPECT_EQ(pairs_of(splits[0]), (Pairs{{1, 5}, {0, 8}}));
  EXPECT_EQ(pairs_of(splits[1]), (Pairs{{1, 6}}));
  EXPECT_EQ(pairs_of(splits[2]), (Pairs{{2, 7}}));
}

TEST(DatasetReaders, InterErrors) {
  TempDir dir("ds");
  const std::string path = dir / "x.inter";
  PairList splits[3];
  write_file(path, "userID\titemID\tx_label\n0\t1\t3\n");
  expect_input_error([&] { read_inter(path, splits); },
                     {path + ":2:", "x_label", "expected 0 (train), 1 (valid) or 2 (test)"});
  write_file(path, "userID\titemID\trating\n0\t1\t3\n");
  expect_input_error([&] { read_inter(path, splits); }, {path + ":1:", "'x_label'"});
  write_file(path, "userID\titemID\tx_label\n0\t1\n");
  expect_input_error([&] { read_inter(path, splits); },
                     {path + ":2:", "expected 3 tab-separated columns"});
}

TEST(DatasetReaders, NegativeId) {
  TempDir dir("ds");
  const std::string path = dir / "train.txt";
  write_file(path, "0 1\n1 -2\n");
  expect_input_error([&] { read_lightgcn(path); },
                     {path + ":2: column 2 (item)", "negative item id '-2'"});
  write_file(path, "-1 4\n");
  expect_input_error([&] { read_lightgcn(path); },
                     {path + ":1: column 1 (user)", "negative user id"});
}

TEST(DatasetReaders, NonIntegerToken) {
  TempDir dir("ds");
  const std::string path = dir / "train.txt";
  write_file(path, "0 1\n1 x7\n");
  expect_input_error([&] { read_lightgcn(path); },
                     {path + ":2: column 2 (item)", "'x7' is not an integer item id",
                      "expected a non-negative integer"});
  write_file(path, "0 1 2.5\n");
  expect_input_error([&] { read_lightgcn(path); }, {path + ":1: column 3", "'2.5'"});
  write_file(path, "0 +3\n");
  expect_input_error([&] { read_lightgcn(path); }, {path + ":1: column 2", "'+3'"});
  write_file(path, std::string("0 1\x00\x01\xff\n", 7));
  expect_input_error([&] { read_lightgcn(path); }, {path + ":1: column 2", "\\x00"});

  const std::string tsv = dir / "train.tsv";
  write_file(tsv, "user\titem\n3\tabc\n");
  expect_input_error([&] { read_pairs_tsv(tsv); }, {tsv + ":2: column 2 (item)", "'abc'"});
  write_file(tsv, "user\titem\n3\t\n");
  expect_input_error([&] { read_pairs_tsv(tsv); }, {tsv + ":2: column 2 (item) is empty"});
}

TEST(DatasetReaders, IdTooLarge) {
  TempDir dir("ds");
  const std::string path = dir / "train.txt";
  write_file(path, "0 2147483647\n");  // the largest id allowed
  EXPECT_EQ(pairs_of(read_lightgcn(path)), (Pairs{{0, 2147483647}}));
  write_file(path, "0 2147483648\n");
  expect_input_error([&] { read_lightgcn(path); }, {path + ":1: column 2 (item)", "too large"});
  write_file(path, "99999999999999999999999 1\n");
  expect_input_error([&] { read_lightgcn(path); }, {path + ":1: column 1 (user)", "too large"});
}

// ---- CSR and writer --------------------------------------------------------------------------

TEST(DatasetCsr, ItemsSortedPerUser) {
  PairList pairs;
  pairs.push(1, 5);
  pairs.push(0, 3);
  pairs.push(1, 2);
  pairs.push(1, 4);
  const UserItemCsr csr = UserItemCsr::build(pairs, 3);
  EXPECT_EQ(csr.offsets, (std::vector<int64_t>{0, 1, 4, 4}));
  EXPECT_EQ(csr.items, (std::vector<int32_t>{3, 2, 4, 5}));
  EXPECT_EQ(csr.degree(1), 3);
  EXPECT_EQ(csr.degree(2), 0);
  EXPECT_THROW(UserItemCsr::build(pairs, 1), InputError);
}

TEST(DatasetWriter, LightgcnRoundTrip) {
  TempDir dir("ds");
  const std::string path = dir / "out.txt";
  PairList pairs;
  pairs.push(3, 9);
  pairs.push(0, 3);
  pairs.push(3, 1);
  write_lightgcn(path, pairs, 5);
  std::ifstream in(path, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "0 3\n3 1 9\n");
  EXPECT_EQ(pairs_of(read_lightgcn(path)), (Pairs{{0, 3}, {3, 1}, {3, 9}}));
}

// ---- load_dataset ----------------------------------------------------------------------------

TEST(DatasetLoad, LightgcnLayoutDetected) {
  TempDir dir("ds_lightgcn");
  write_file(dir / "train.txt", "0 1 2\n1 0\n2\n");
  write_file(dir / "val.txt", "0 3\n");
  write_file(dir / "test.txt", "1 4\n3 2\n");
  const Dataset data = load_dataset(dir.path.string());
  EXPECT_EQ(data.format, "lightgcn");
  EXPECT_EQ(data.name, dir.path.filename().string());
  EXPECT_EQ(data.n_users, 4);  // user 3 appears only in test
  EXPECT_EQ(data.n_items, 5);
  EXPECT_EQ(pairs_of(data.train), (Pairs{{0, 1}, {0, 2}, {1, 0}}));
  EXPECT_EQ(pairs_of(data.valid), (Pairs{{0, 3}}));
  EXPECT_EQ(pairs_of(data.test), (Pairs{{1, 4}, {3, 2}}));
  EXPECT_EQ(data.report.users_without_train, 2);  // users 2 (listed, no items) and 3
  EXPECT_EQ(data.report.items_without_train, 2);  // items 3 and 4
  EXPECT_TRUE(data.features.empty());
}

TEST(DatasetLoad, TsvAndInterLayoutsDetected) {
  TempDir tsv_dir("ds_tsv");
  write_file(tsv_dir / "train.tsv", "user\titem\n0\t1\n1\t0\n");
  write_file(tsv_dir / "test.tsv", "user\titem\n0\t2\n");
  const Dataset tsv = load_dataset(tsv_dir.path.string());
  EXPECT_EQ(tsv.format, "tsv");
  EXPECT_EQ(pairs_of(tsv.train), (Pairs{{0, 1}, {1, 0}}));
  EXPECT_TRUE(tsv.valid.user.empty());
  EXPECT_EQ(pairs_of(tsv.test), (Pairs{{0, 2}}));
  EXPECT_EQ(tsv.n_items, 3);

  TempDir inter_dir("ds_inter");
  write_file(inter_dir / "toy.inter",
             "userID\titemID\trating\ttimestamp\tx_label\n0\t1\t5\t1\t0\n1\t2\t3\t2\t1\n"
             "1\t0\t4\t3\t2\n2\t2\t1\t4\t0\n");
  const Dataset inter = load_dataset(inter_dir.path.string());
  EXPECT_EQ(inter.format, "inter");
  EXPECT_EQ(pairs_of(inter.train), (Pairs{{0, 1}, {2, 2}}));
  EXPECT_EQ(pairs_of(inter.valid), (Pairs{{1, 2}}));
  EXPECT_EQ(pairs_of(inter.test), (Pairs{{1, 0}}));
  EXPECT_EQ(inter.n_users, 3);
  EXPECT_EQ(inter.n_items, 3);
}

TEST(DatasetLoad, TomlNamesFilesAndDeclaresCounts) {
  TempDir dir("ds_toml");
  write_file(dir / "dataset.toml",
             "name = \"toy\"\nformat = \"lightgcn\"\ntrain = \"a.txt\"\ntest = \"b.txt\"\n"
             "n_users = 5\nn_items = 6\n");
  write_file(dir / "a.txt", "0 1\n1 2\n");
  write_file(dir / "b.txt", "2 3\n");
  const Dataset data = load_dataset(dir.path.string());
  EXPECT_EQ(data.name, "toy");
  EXPECT_EQ(data.n_users, 5);
  EXPECT_EQ(data.n_items, 6);
  EXPECT_EQ(data.report.users_without_train, 3);  // users 2, 3, 4
  EXPECT_EQ(data.report.items_without_train, 4);  // items 0, 3, 4, 5
}

TEST(DatasetLoad, OutOfRangeIdWithDeclaredCount) {
  TempDir dir("ds");
  write_file(dir / "dataset.toml",
             "format = \"lightgcn\"\ntrain = \"train.txt\"\ntest = \"test.txt\"\nn_users = 3\n"
             "n_items = 10\n");
  write_file(dir / "train.txt", "0 1\n2 2\n");
  write_file(dir / "test.txt", "0 4\n5 2\n");
  expect_load_error(dir.path.string(),
                    {dir / "test.txt" + ":2: column 1 (user)", "user id 5 is out of range",
                     "n_users = 3", "dataset.toml"});
  write_file(dir / "test.txt", "0 10\n");
  expect_load_error(dir.path.string(), {dir / "test.txt" + ":1: column 2 (item)", "n_items = 10"});
}

// dataset.toml with CRLF line endings or no final newline loads exactly like the LF file.
TEST(DatasetLoad, TomlLineEndingTwinsLoadAlike) {
  TempDir dir("ds");
  write_file(dir / "a.txt", "0 1\n1 2\n");
  write_file(dir / "b.txt", "2 3\n");
  const float f[8] = {1, 0, 0, 1, 1, 1, 0.5f, 2};
  write_npy(dir / "f.npy", f, {4, 2});
  const std::string lf =
      "# toy\nname = \"toy\"\nformat = \"lightgcn\"\ntrain = \"a.txt\"\ntest = \"b.txt\"\n\n"
      "n_users = 5\nn_items = 4\n[[modality]]\nname = \"f\"\nfile = \"f.npy\"\n";
  write_file(dir / "dataset.toml", lf);
  const Dataset expected = load_dataset(dir.path.string());
  for (const std::string& text : line_ending_twins(lf)) {
    write_file(dir / "dataset.toml", text);
    const Dataset data = load_dataset(dir.path.string());
    EXPECT_EQ(data.name, expected.name);
    EXPECT_EQ(data.n_users, expected.n_users);
    EXPECT_EQ(data.n_items, expected.n_items);
    EXPECT_EQ(pairs_of(data.train), pairs_of(expected.train));
    EXPECT_EQ(pairs_of(data.test), pairs_of(expected.test));
    EXPECT_EQ(data.features, expected.features);
    ASSERT_EQ(data.modalities.size(), 1u);
    EXPECT_EQ(data.modalities[0].name, "f");
  }
}

// A device or pipe named as a data file is refused, not read (/dev/zero would never end).
TEST(DatasetLoad, DataFileMustBeARegularFile) {
  TempDir dir("ds");
  write_file(dir / "b.txt", "2 3\n");
  write_file(dir / "dataset.toml",
             "format = \"lightgcn\"\ntrain = \"/dev/zero\"\ntest = \"b.txt\"\n");
  expect_load_error(dir.path.string(), {"/dev/zero: not a regular file"});
  expect_input_error([] { read_lightgcn("/dev/zero"); }, {"/dev/zero: not a regular file"});
}

TEST(DatasetLoad, MissingTomlKey) {
  TempDir dir("ds");
  write_file(dir / "train.txt", "0 1\n");
  write_file(dir / "dataset.toml", "format = \"lightgcn\"\ntrain = \"train.txt\"\n");
  expect_load_error(dir.path.string(), {dir / "dataset.toml", "missing required key 'test'"});
  write_file(dir / "dataset.toml", "train = \"train.txt\"\ntest = \"train.txt\"\n");
  expect_load_error(dir.path.string(), {dir / "dataset.toml", "missing required key 'format'"});
  write_file(dir / "dataset.toml", "format = \"inter\"\n");
  expect_load_error(dir.path.string(), {dir / "dataset.toml", "missing required key 'file'"});
  write_file(dir / "dataset.toml",
             "format = \"lightgcn\"\ntrain = \"train.txt\"\ntest = \"train.txt\"\n"
             "[[modality]]\nname = \"x\"\n");
  expect_load_error(dir.path.string(), {dir / "dataset.toml", "required key 'file'"});
}

TEST(DatasetLoad, UnknownOrMistypedTomlKey) {
  TempDir dir("ds");
  write_file(dir / "train.txt", "0 1\n");
  const std::string base = "format = \"lightgcn\"\ntrain = \"train.txt\"\ntest = \"train.txt\"\n";
  write_file(dir / "dataset.toml", base + "n_user = 5\n");
  expect_load_error(dir.path.string(), {dir / "dataset.toml" + ":4:", "unknown key 'n_user'",
                                        "did you mean 'n_users'"});
  write_file(dir / "dataset.toml", base + "[[modality]]\nfile = \"f.npy\"\nweight = 2\n");
  expect_load_error(dir.path.string(), {dir / "dataset.toml", "unknown key 'modality.weight'"});
  write_file(dir / "dataset.toml", base + "n_items = \"7\"\n");
  expect_load_error(dir.path.string(), {"key 'n_items': expected an integer, found a string"});
  write_file(dir / "dataset.toml", base + "n_items = 0\n");
  expect_load_error(dir.path.string(), {"key 'n_items' = 0"});
  write_file(dir / "dataset.toml",
             "format = \"csv\"\ntrain = \"train.txt\"\ntest = \"train.txt\"\n");
  expect_load_error(dir.path.string(), {"key 'format'", "unknown format 'csv'"});
  write_file(dir / "dataset.toml", base + "file = \"x.inter\"\n");
  expect_load_error(dir.path.string(), {"key 'file' applies only to format = \"inter\""});
  write_file(dir / "dataset.toml", "format = [\n");
  expect_load_error(dir.path.string(), {dir / "dataset.toml" + ":", "invalid TOML"});
}

// [[test_set]]: further held-out files read like the test, cleaned the same way (duplicates and
// training pairs dropped), in the listed order; test_candidates and each set's candidates.
TEST(DatasetLoad, TestSetsAndTheirCandidates) {
  TempDir dir("ds");
  write_file(dir / "train.txt", "0 1 2\n1 2\n");
  write_file(dir / "test.txt", "0 3\n");
  write_file(dir / "iid.txt", "1 4 4 2\n2 5\n");  // a duplicate, a training pair, a new user
  write_file(dir / "cold.txt", "0 6\n");
  write_file(dir / "dataset.toml",
             "format = \"lightgcn\"\ntrain = \"train.txt\"\ntest = \"test.txt\"\n"
             "test_candidates = \"cold\"\n"
             "[[test_set]]\nname = \"iid\"\nfile = \"iid.txt\"\n"
             "[[test_set]]\nname = \"cold-ood\"\nfile = \"cold.txt\"\ncandidates = \"cold\"\n");
  const Dataset d = load_dataset(dir.path.string());
  EXPECT_EQ(d.test_candidates, "cold");
  ASSERT_EQ(d.test_sets.size(), 2u);
  EXPECT_EQ(d.test_sets[0].name, "iid");
  EXPECT_EQ(d.test_sets[0].candidates, "all");
  EXPECT_EQ(pairs_of(d.test_sets[0].pairs), (Pairs{{1, 4}, {2, 5}}));
  EXPECT_EQ(d.test_sets[1].name, "cold-ood");
  EXPECT_EQ(d.test_sets[1].candidates, "cold");
  EXPECT_EQ(d.n_users, 3);  // user 2 appears only in a test set
  EXPECT_EQ(d.n_items, 7);
  const std::string base = "format = \"lightgcn\"\ntrain = \"train.txt\"\ntest = \"test.txt\"\n";
  write_file(dir / "dataset.toml", base +
                                       "[[test_set]]\nname = \"a\"\nfile = \"iid.txt\"\n"
                                       "[[test_set]]\nname = \"a\"\nfile = \"cold.txt\"\n");
  expect_load_error(dir.path.string(), {"two [[test_set]] sections are named 'a'"});
  write_file(dir / "dataset.toml", base + "[[test_set]]\nname = \"a\"\n");
  expect_load_error(dir.path.string(), {"[[test_set]] needs both 'name' and 'file'"});
  write_file(dir / "dataset.toml",
             base + "[[test_set]]\nname = \"a\"\nfile = \"iid.txt\"\ncandidate = \"cold\"\n");
  expect_load_error(dir.path.string(),
                    {"unknown key 'test_set.candidate'", "did you mean 'candidates'"});
  write_file(dir / "dataset.toml", base + "test_candidates = \"warm\"\n");
  expect_load_error(dir.path.string(), {"key 'test_candidates' = \"warm\"", "\"all\" or \"cold\""});
  write_file(dir / "dataset.toml", base + "[[test_set]]\nname = \"a\"\nfile = \"none.txt\"\n");
  expect_load_error(dir.path.string(), {"none.txt"});
}

TEST(DatasetLoad, UnknownLayout) {
  TempDir dir("ds");
  write_file(dir / "readme.md", "nothing here\n");
  expect_load_error(dir.path.string(),
                    {dir.path.string(), "no dataset layout recognised", "train.txt + test.txt",
                     "train.tsv + test.tsv", "*.inter", "readme.md"});
  expect_load_error((dir.path / "absent").string(), {"not found"});
  expect_load_error(dir / "readme.md", {"not a directory"});
  write_file(dir / "a.inter", "userID\titemID\tx_label\n");
  write_file(dir / "b.inter", "userID\titemID\tx_label\n");
  expect_load_error(dir.path.string(), {"found 2 .inter files", "a.inter, b.inter"});
}

TEST(DatasetLoad, ValidationSplitAsTrainingNeedsToml) {
  TempDir dir("ds");
  write_file(dir / "val.tsv", "user\titem\n0\t1\n1\t2\n");
  write_file(dir / "test.tsv", "user\titem\n0\t2\n");
  expect_load_error(dir.path.string(), {"no dataset layout recognised", "train.tsv does not"});
  write_file(dir / "dataset.toml", "format = \"tsv\"\ntrain = \"val.tsv\"\ntest = \"test.tsv\"\n");
  const Dataset data = load_dataset(dir.path.string());
  EXPECT_EQ(pairs_of(data.train), (Pairs{{0, 1}, {1, 2}}));
  EXPECT_EQ(pairs_of(data.test), (Pairs{{0, 2}}));
}

TEST(DatasetLoad, EmptyTrainingSplit) {
  TempDir dir("ds");
  write_file(dir / "train.txt", "\n\n");
  write_file(dir / "test.txt", "0 1\n");
  expect_load_error(dir.path.string(), {dir / "train.txt", "no training pairs"});
}

TEST(DatasetLoad, DuplicatesDroppedWithCount) {
  TempDir dir("ds");
  write_file(dir / "train.txt", "0 1 1 2\n1 2 2 2\n0 1\n");
  write_file(dir / "val.txt", "0 3 3\n");
  write_file(dir / "test.txt", "1 4\n");
  const Dataset data = load_dataset(dir.path.string());
  EXPECT_EQ(data.report.duplicate_train, 4);
  EXPECT_EQ(data.report.duplicate_valid, 1);
  EXPECT_EQ(data.report.duplicate_test, 0);
  EXPECT_EQ(pairs_of(data.train), (Pairs{{0, 1}, {0, 2}, {1, 2}}));
  EXPECT_EQ(pairs_of(data.valid), (Pairs{{0, 3}}));
  EXPECT_EQ(pairs_of(data.test), (Pairs{{1, 4}}));
}

TEST(DatasetLoad, HeldOutPairRepeatingTrainIsDropped) {
  TempDir dir("ds");
  write_file(dir / "train.txt", "0 1 2\n1 2\n");
  write_file(dir / "val.txt", "0 1 3\n");
  write_file(dir / "test.txt", "1 2 0\n0 2\n");
  const Dataset data = load_dataset(dir.path.string());
  EXPECT_EQ(data.report.heldout_in_train, 3);
  EXPECT_EQ(pairs_of(data.valid), (Pairs{{0, 3}}));
  EXPECT_EQ(pairs_of(data.test), (Pairs{{1, 0}}));
  EXPECT_EQ(data.train.size(), 3u);
}

// Writes a dataset with two items and two modalities: a = [[3, 4], [0, 0]], b = [[-2], [5]].
void write_feature_dataset(const TempDir& dir, const std::string& extra_toml = "") {
  write_file(dir / "train.txt", "0 0 1\n");
  write_file(dir / "test.txt", "1 1\n");
  write_file(dir / "dataset.toml",
             "format = \"lightgcn\"\ntrain = \"train.txt\"\ntest = \"test.txt\"\n" + extra_toml +
                 "[[modality]]\nname = \"a\"\nfile = \"a.npy\"\n"
                 "[[modality]]\nname = \"b\"\nfile = \"b.npy\"\n");
  const std::vector<float> a = {3, 4, 0, 0};
  const std::vector<double> b = {-2, 5};
  write_npy(dir / "a.npy", a.data(), {2, 2});
  write_npy(dir / "b.npy", b.data(), {2, 1});
}

TEST(DatasetFeatures, NormalisedPerModalityBlock) {
  TempDir dir("ds_features");
  write_feature_dataset(dir);
  const Dataset data = load_dataset(dir.path.string());
  ASSERT_EQ(data.modalities.size(), 2u);
  EXPECT_EQ(data.modalities[0].name, "a");
  EXPECT_EQ(data.modalities[0].offset, 0);
  EXPECT_EQ(data.modalities[0].width, 2);
  EXPECT_EQ(data.modalities[1].name, "b");
  EXPECT_EQ(data.modalities[1].offset, 2);
  EXPECT_EQ(data.modalities[1].width, 1);
  EXPECT_EQ(data.feature_dim, 3);
  EXPECT_TRUE(data.normalized);
  // Row 0: a = (3, 4) / 5, b = -2 / 2; row 1: a stays zero, b = 5 / 5.
  const std::vector<float> expected = {0.6f, 0.8f, -1.0f, 0.0f, 0.0f, 1.0f};
  ASSERT_EQ(data.features.size(), expected.size());
  for (size_t k = 0; k < expected.size(); ++k) EXPECT_FLOAT_EQ(data.features[k], expected[k]) << k;
}

TEST(DatasetFeatures, NormalisationCanBeTurnedOff) {
  TempDir dir("ds_features");
  write_feature_dataset(dir);
  LoadOptions raw;
  raw.normalize = 0;
  const Dataset data = load_dataset(dir.path.string(), raw);
  EXPECT_FALSE(data.normalized);
  EXPECT_EQ(data.features, (std::vector<float>{3, 4, -2, 0, 0, 5}));

  TempDir off_dir("ds_features");
  write_feature_dataset(off_dir, "normalize = false\n");
  EXPECT_EQ(load_dataset(off_dir.path.string()).features, (std::vector<float>{3, 4, -2, 0, 0, 5}));
  LoadOptions forced;
  forced.normalize = 1;
  EXPECT_FLOAT_EQ(load_dataset(off_dir.path.string(), forced).features[0], 0.6f);
}

TEST(DatasetFeatures, SkippedWhenNotRequested) {
  TempDir dir("ds_features");
  write_feature_dataset(dir);
  LoadOptions options;
  options.load_features = false;
  const Dataset data = load_dataset(dir.path.string(), options);
  EXPECT_TRUE(data.features.empty());
  EXPECT_EQ(data.feature_dim, 0);
  ASSERT_EQ(data.modalities.size(), 2u);
  EXPECT_EQ(data.modalities[1].name, "b");
}

TEST(DatasetFeatures, RowsMustMatchItems) {
  TempDir dir("ds_features");
  write_feature_dataset(dir);
  const std::vector<float> three_rows = {1, 2, 3};
  write_npy(dir / "b.npy", three_rows.data(), {3, 1});
  expect_load_error(dir.path.string(), {dir / "b.npy", "has 3 rows; expected 2"});
}

// ---- real data -------------------------------------------------------------------------------

std::string real_data_dir(const std::string& name) { return test::shared_dir() + "/data/" + name; }

TEST(DatasetRealData, Ml1m) {
  const std::string dir = real_data_dir("ml1m");
  ASSERT_TRUE(fs::is_directory(dir)) << "the shared data folder is missing: " << dir;
  LoadOptions options;
  options.load_features = false;
  const Dataset data = load_dataset(dir, options);
  EXPECT_EQ(data.format, "lightgcn");
  EXPECT_EQ(data.name, "ml1m");
  EXPECT_EQ(data.n_users, 6022);
  EXPECT_EQ(data.n_items, 3043);
  EXPECT_EQ(data.train.size(), 796244u);
  EXPECT_EQ(data.valid.size(), 99455u);
  EXPECT_EQ(data.test.size(), 99455u);
  EXPECT_EQ(data.report.duplicate_train + data.report.duplicate_valid + data.report.duplicate_test,
            0);
  EXPECT_EQ(data.report.heldout_in_train, 0);
  EXPECT_EQ(data.report.users_without_train, 0);
  EXPECT_EQ(data.report.items_without_train, 0);
}

// Counts checked independently with a Python pass over ml100k.inter: 75,000 / 12,000 / 13,000
// rows, no duplicates, no held-out pair in train, ids up to 942 and 1,681, and 39 items that
// appear only in validation or test.
TEST(DatasetRealData, Ml100kInter) {
  const std::string dir = real_data_dir("ml100k");
  ASSERT_TRUE(fs::is_directory(dir)) << "the shared data folder is missing: " << dir;
  const Dataset data = load_dataset(dir);
  EXPECT_EQ(data.format, "inter");
  EXPECT_EQ(data.n_users, 943);
  EXPECT_EQ(data.n_items, 1682);
  EXPECT_EQ(data.train.size(), 75000u);
  EXPECT_EQ(data.valid.size(), 12000u);
  EXPECT_EQ(data.test.size(), 13000u);
  EXPECT_EQ(data.report.duplicate_train + data.report.duplicate_valid + data.report.duplicate_test,
            0);
  EXPECT_EQ(data.report.heldout_in_train, 0);
  EXPECT_EQ(data.report.users_without_train, 0);
  EXPECT_EQ(data.report.items_without_train, 39);
}

// The partial TikTok data (validation and test only) loads through a dataset.toml that trains on
// val.tsv; counts from the data README.
TEST(DatasetRealData, TiktokPartialThroughToml) {
  const std::string data_dir = real_data_dir("tiktok-partial");
  ASSERT_TRUE(fs::is_directory(data_dir)) << "the shared data folder is missing: " << data_dir;
  TempDir dir("ds_tiktok");
  write_file(dir / "dataset.toml", "format = \"tsv\"\ntrain = \"" + data_dir +
                                       "/val.tsv\"\ntest = \"" + data_dir + "/test.tsv\"\n");
  const Dataset data = load_dataset(dir.path.string());
  EXPECT_EQ(data.n_users, 36656);
  EXPECT_EQ(data.n_items, 76085);
  EXPECT_EQ(data.train.size(), 79809u);
  EXPECT_EQ(data.test.size(), 81891u);
  EXPECT_EQ(data.report.heldout_in_train, 0);
}

}  // namespace
}  // namespace painvrl
