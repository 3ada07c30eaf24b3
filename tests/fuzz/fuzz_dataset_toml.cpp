// libFuzzer target: a dataset directory's manifest. The input is written as dataset.toml into a
// directory that also holds small valid data files (LightGCN, TSV, .inter, float32 and float64
// features) for it to name, and load_dataset (host/data/dataset.cpp) reads the whole directory. An
// InputError is the expected answer to a bad manifest; any other exception, a crash, a leak or a
// sanitizer report is a finding. Run by tools/fuzz.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "painvrl/data/dataset.h"
#include "painvrl/data/error.h"
#include "painvrl/data/npy.h"

namespace {

namespace fs = std::filesystem;

std::string g_dir;  // the dataset directory, removed at exit

void write(const std::string& name, const std::string& text) {
  std::ofstream(g_dir + "/" + name, std::ios::binary) << text;
}

void remove_dir() {
  std::error_code error;
  fs::remove_all(g_dir, error);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::string pattern = (fs::temp_directory_path() / "painvrl-fuzz-XXXXXX").string();
  if (!::mkdtemp(pattern.data())) {
    std::perror("mkdtemp");
    std::abort();
  }
  g_dir = pattern;
  std::atexit(remove_dir);
  painvrl::set_quiet(true);  // load_dataset warns about dropped pairs and unused ids
  write("train.txt", "0 0 1\n1 1 2\n2 2 3\n");
  write("val.txt", "0 2\n1 3\n");
  write("test.txt", "0 3\n2 0\n");
  write("train.tsv", "user\titem\n0\t0\n1\t1\n2\t3\n");
  write("test.tsv", "user\titem\n0\t3\n");
  write("x.inter", "userID\titemID\tx_label\n0\t0\t0\n1\t1\t0\n2\t3\t2\n0\t2\t1\n");
  const float f32[8] = {1, 0, 0, 1, 1, 1, 0.5f, 2};
  painvrl::write_npy(g_dir + "/f.npy", f32, {4, 2});
  const double f64[12] = {1, 2, 3, 0, 0, 0, -1, 0.5, 2, 4, 4, 4};
  painvrl::write_npy(g_dir + "/g.npy", f64, {4, 3});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  write("dataset.toml", std::string(reinterpret_cast<const char*>(data), size));
  try {
    const painvrl::Dataset dataset = painvrl::load_dataset(g_dir);
    if (dataset.features.size() != static_cast<size_t>(dataset.n_items * dataset.feature_dim)) {
      __builtin_trap();
    }
  } catch (const painvrl::InputError&) {
  }
  return 0;
}
