// Device selection through the program: `--device cuda` without a usable GPU exits 1 saying so
// (with a GPU it is refused because the CUDA backend has not passed its device check, unless
// PAINVRL_UNVERIFIED_CUDA=1), writing nothing; `--device auto` (the default) trains on the CPU
// after one line saying why.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "painvrl/pipeline/device_select.h"
#include "test_util.h"

namespace painvrl {
namespace {

using test::run_program;
using test::TempDir;

TEST(Device, CudaWithoutAUsableGpuExitsOneAndWritesNothing) {
  ::unsetenv("PAINVRL_UNVERIFIED_CUDA");  // the gate this test expects closed
  TempDir tmp("dev");
  const std::string data = tmp / "data";
  ASSERT_EQ(run_program("synth --out " + data + " --users 60 --items 40").status, 0);
  const auto r = run_program("train --device cuda --data " + data + " --out " + (tmp / "run"));
  EXPECT_EQ(r.status, 1) << r.output;
  if (usable_gpu_count() == 0) {
    EXPECT_NE(r.output.find("error: --device cuda: no usable GPU was found"), std::string::npos)
        << r.output;
  } else {
    EXPECT_NE(r.output.find("has not yet passed its device check"), std::string::npos) << r.output;
  }
  EXPECT_FALSE(std::filesystem::exists(tmp / "run"));
  const auto bad = run_program("train --device tpu --data " + data + " --out " + (tmp / "run"));
  EXPECT_EQ(bad.status, 1);
  EXPECT_NE(bad.output.find("device"), std::string::npos) << bad.output;
}

TEST(Device, AutoFallsBackToTheCpuWithOneLine) {
  TempDir tmp("auto");
  const std::string data = tmp / "data";
  ASSERT_EQ(run_program("synth --out " + data + " --users 60 --items 40").status, 0);
  const auto r = run_program("train --data " + data + " --out " + (tmp / "run") +
                             " --set epochs=1 dim=8 negatives=2 threads=1");
  ASSERT_EQ(r.status, 0) << r.output;
  std::istringstream lines(r.output);
  int device_lines = 0;
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("device auto: ", 0) == 0) {
      ++device_lines;
      EXPECT_NE(line.find("training on the CPU"), std::string::npos) << line;
    }
  }
  EXPECT_EQ(device_lines, 1) << r.output;
  std::ifstream in(tmp / "run/summary.json");
  EXPECT_EQ(nlohmann::json::parse(in)["backend"], "cpu");
  // `--device cpu` says nothing about devices.
  const auto cpu = run_program("train --device cpu --data " + data + " --out " + (tmp / "cpu") +
                               " --set epochs=1 dim=8 negatives=2 threads=1");
  ASSERT_EQ(cpu.status, 0) << cpu.output;
  EXPECT_EQ(cpu.output.find("device auto"), std::string::npos) << cpu.output;
}

}  // namespace
}  // namespace painvrl
