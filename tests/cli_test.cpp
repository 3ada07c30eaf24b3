// The program end to end: synth -> train -> run directory; every bad input ends with exit
// status 1, one clear message naming the file or key, and no run directory; and on the real
// MovieLens-100K split UltraGCN beats the most-popular baseline.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace painvrl {
namespace {

namespace fs = std::filesystem;
using test::run_program;
using test::TempDir;
using test::write_file;

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

// A .npy file written by hand: header dict `header`, then the raw bytes.
void write_npy_raw(const std::string& path, const std::string& header, const void* data,
                   size_t bytes) {
  std::string h = header;
  while ((10 + h.size() + 1) % 64 != 0) h += ' ';
  h += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += char(h.size() & 0xff);
  out += char(h.size() >> 8);
  out += h;
  out.append(static_cast<const char*>(data), bytes);
  write_file(path, out);
}

// A valid 3-user, 4-item dataset with a 4 x 2 float32 feature file.
void write_small_dataset(const std::string& dir) {
  fs::create_directories(dir);
  write_file(dir + "/dataset.toml",
             "format = \"lightgcn\"\ntrain = \"train.txt\"\nvalid = \"val.txt\"\n"
             "test = \"test.txt\"\n[[modality]]\nname = \"f\"\nfile = \"f.npy\"\n");
  write_file(dir + "/train.txt", "0 0 1\n1 1 2\n2 2 3\n");
  write_file(dir + "/val.txt", "0 2\n1 3\n");
  write_file(dir + "/test.txt", "0 3\n2 0\n");
  const float f[8] = {1, 0, 0, 1, 1, 1, 0.5f, 2};
  write_npy_raw(dir + "/f.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2), }", f,
                sizeof f);
}

struct BadCase {
  const char* name;
  std::function<void(const std::string& dir)> spoil;  // turns the valid dataset into a bad one
  const char* expect;                                 // substring of the message
};

TEST(Cli, EveryBadInputExitsOneWithAClearMessageAndWritesNothing) {
  const float nan_f[8] = {1, 0, 0, 1, std::nanf(""), 1, 0.5f, 2};
  const float inf_f[8] = {1, 0, 0, 1, 1, std::numeric_limits<float>::infinity(), 0.5f, 2};
  const float six[6] = {1, 2, 3, 4, 5, 6};
  const double dbl[8] = {1, 0, 0, 1, 1, 1, 0.5, 2};
  const std::vector<BadCase> cases = {
      {"non-integer item", [](auto d) { write_file(d + "/train.txt", "0 0 1\n1 x 2\n"); },
       "train.txt:2"},
      {"negative id", [](auto d) { write_file(d + "/train.txt", "0 0 1\n1 -1 2\n"); },
       "train.txt:2"},
      {"id out of declared range",
       [](auto d) {
         write_file(d + "/dataset.toml",
                    "format = \"lightgcn\"\ntrain = \"train.txt\"\ntest = \"test.txt\"\n"
                    "n_items = 3\n[[modality]]\nname = \"f\"\nfile = \"f.npy\"\n");
       },
       "train.txt:3: column 3 (item): item id 3 is out of range"},
      {"empty training file", [](auto d) { write_file(d + "/train.txt", ""); }, "train.txt"},
      {"missing split file", [](auto d) { fs::remove(d + "/test.txt"); }, "test.txt"},
      {"unknown dataset.toml key",
       [](auto d) { std::ofstream(d + "/dataset.toml", std::ios::app) << "colour = 3\n"; },
       "colour"},
      {"missing dataset.toml key",
       [](auto d) {
         write_file(d + "/dataset.toml", "format = \"lightgcn\"\ntrain = \"train.txt\"\n");
       },
       "test"},
      {"NaN feature",
       [&](auto d) {
         write_npy_raw(d + "/f.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2), }",
                       nan_f, sizeof nan_f);
       },
       "f.npy"},
      {"Inf feature",
       [&](auto d) {
         write_npy_raw(d + "/f.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2), }",
                       inf_f, sizeof inf_f);
       },
       "f.npy"},
      {"feature rows do not match items",
       [&](auto d) {
         write_npy_raw(d + "/f.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }",
                       six, sizeof six);
       },
       "f.npy"},
      {"truncated feature data",
       [&](auto d) {
         write_npy_raw(d + "/f.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2), }",
                       six, sizeof six);
       },
       "f.npy"},
      {"huge declared shape",
       [&](auto d) {
         write_npy_raw(d + "/f.npy",
                       "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 2), }",
                       six, sizeof six);
       },
       "f.npy"},
      {"wrong dtype",
       [&](auto d) {
         write_npy_raw(d + "/f.npy", "{'descr': '<i2', 'fortran_order': False, 'shape': (4, 2), }",
                       six, 16);
       },
       "f.npy"},
      {"Fortran order",
       [&](auto d) {
         write_npy_raw(d + "/f.npy", "{'descr': '<f8', 'fortran_order': True, 'shape': (4, 2), }",
                       dbl, sizeof dbl);
       },
       "f.npy"},
      {"big-endian",
       [&](auto d) {
         write_npy_raw(d + "/f.npy", "{'descr': '>f8', 'fortran_order': False, 'shape': (4, 2), }",
                       dbl, sizeof dbl);
       },
       "f.npy"},
      {"not an npy file", [](auto d) { write_file(d + "/f.npy", "junk\x01\x02 not numpy"); },
       "f.npy"},
  };
  for (const BadCase& c : cases) {
    TempDir tmp("bad");
    const std::string data = tmp / "data", run = tmp / "run";
    write_small_dataset(data);
    c.spoil(data);
    const auto r = run_program("train --method ultragcn-mm --data " + data + " --out " + run +
                               " --set epochs=1");
    EXPECT_EQ(r.status, 1) << c.name << ": " << r.output;
    EXPECT_NE(r.output.find("error: "), std::string::npos) << c.name << ": " << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << c.name << ": " << r.output;
    EXPECT_FALSE(fs::exists(run)) << c.name << ": the run directory must not be created";
  }
}

TEST(Cli, BadConfigurationExitsOneAndWritesNothing) {
  TempDir tmp("badcfg");
  const std::string data = tmp / "data", run = tmp / "run";
  write_small_dataset(data);
  write_file(tmp / "bad.toml", "dim = [1, 2]\n");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--set negative=3", "did you mean `negatives`"},
      {"--set dim=abc", "dim"},
      {"--preset nosuch", "no such preset"},
      {"--method nosuch", "method"},
      {"--config " + (tmp / "bad.toml"), "bad.toml"},
      {"--config " + (tmp / "missing.toml"), "missing.toml"},
      {"--set select_metric=recall@7", "select_metric"},
  };
  for (const auto& [args, expect] : cases) {
    const auto r = run_program("train --data " + data + " --out " + run + " " + args);
    EXPECT_EQ(r.status, 1) << args << ": " << r.output;
    EXPECT_NE(r.output.find(expect), std::string::npos) << args << ": " << r.output;
    EXPECT_FALSE(fs::exists(run)) << args;
  }
  const auto missing = run_program("train --data " + (tmp / "nodata") + " --out " + run);
  EXPECT_EQ(missing.status, 1) << missing.output;
  EXPECT_NE(missing.output.find("nodata"), std::string::npos) << missing.output;
  EXPECT_FALSE(fs::exists(run));
  EXPECT_EQ(run_program("train --data").status, 1);  // command-line parse error
}

TEST(Cli, SynthTrainWritesTheRunDirectoryAndRefusesToOverwrite) {
  TempDir tmp("e2e");
  const std::string data = tmp / "synth";
  auto r = run_program("synth --out " + data + " --seed 3 --users 120 --items 90");
  ASSERT_EQ(r.status, 0) << r.output;
  for (const char* method : {"ultragcn", "ultragcn-mm", "mostpop"}) {
    const std::string run = tmp / (std::string("run-") + method);
    r = run_program(std::string("train --method ") + method + " --data " + data + " --out " + run +
                    " --set epochs=3 --set eval_every=1 --set dim=16 --set negatives=5");
    ASSERT_EQ(r.status, 0) << method << ": " << r.output;
    EXPECT_TRUE(fs::exists(run + "/config.toml"));
    const nlohmann::json s = read_json(run + "/summary.json");
    EXPECT_EQ(s["method"], method);
    EXPECT_TRUE(s["test_at_best"].contains("recall@20"));
    EXPECT_TRUE(s["best_valid"].contains("ndcg@10"));
    std::ifstream metrics(run + "/metrics.jsonl");
    int lines = 0;
    for (std::string line; std::getline(metrics, line); ++lines) {
      EXPECT_TRUE(nlohmann::json::parse(line).contains("test"));
    }
    EXPECT_EQ(lines, std::string(method) == "mostpop" ? 1 : 3);
    if (std::string(method) != "mostpop") {
      EXPECT_NE(r.output.find("epoch    2/3"), std::string::npos) << r.output;
      EXPECT_NE(r.output.find("pairs/s"), std::string::npos);
    }
  }
  const std::string run = tmp / "run-ultragcn";
  r = run_program("train --data " + data + " --out " + run + " --set epochs=1");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("--overwrite"), std::string::npos) << r.output;
  r = run_program("train --data " + data + " --out " + run + " --set epochs=1 --overwrite");
  EXPECT_EQ(r.status, 0) << r.output;
  r = run_program("inspect " + data);
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("users        120"), std::string::npos) << r.output;
}

// Must-show 4 of the foundation: on the real ML-100K split, UltraGCN clearly beats the
// most-popular baseline on test Recall@20. (The folder must exist: a missing one fails.)
TEST(Cli, UltraGcnBeatsMostPopularOnMl100k) {
  TempDir tmp("ml100k");
  const std::string data = test::shared_dir() + "/data/ml100k";
  ASSERT_TRUE(fs::exists(data + "/ml100k.inter")) << "missing " << data;
  auto pop = run_program("train --method mostpop --data " + data + " --out " + (tmp / "pop"));
  ASSERT_EQ(pop.status, 0) << pop.output;
  auto ugcn =
      run_program("train --method ultragcn --data " + data + " --out " + (tmp / "ugcn") +
                  " --config " + std::string(PAINVRL_SOURCE_DIR) + "/configs/examples/ml100k.toml");
  ASSERT_EQ(ugcn.status, 0) << ugcn.output;
  const double r_pop = read_json(tmp / "pop/summary.json")["test_at_best"]["recall@20"];
  const double r_ugcn = read_json(tmp / "ugcn/summary.json")["test_at_best"]["recall@20"];
  std::printf("ML-100K test Recall@20: most popular %.4f, ultragcn %.4f\n", r_pop, r_ugcn);
  EXPECT_GT(r_ugcn, r_pop * 1.15) << "most popular " << r_pop << ", ultragcn " << r_ugcn;
  EXPECT_GT(r_ugcn - r_pop, 0.02);
}

}  // namespace
}  // namespace painvrl
