// The host-memory estimate against the peak resident memory the program actually reaches (read
// with wait4's ru_maxrss) on a dataset large enough that the training buffers dominate the
// program's own few MiB, for a baseline and for painvrl (whose peak is in mask generation); and a
// run that would not fit is refused before anything is written, naming the estimate and limit.
#include "painvrl/pipeline/resources.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>

#include "test_util.h"

namespace painvrl {
namespace {

using test::run_program;
using test::TempDir;

struct Measured {
  int status = -1;
  double maxrss_mib = 0;
  std::string log;
};

Measured run_measured(const std::string& args, const std::string& log_path) {
  const pid_t pid = test::spawn_program(args, log_path);
  int st = 0;
  struct rusage ru {};
  ::wait4(pid, &st, 0, &ru);
  Measured m;
  m.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  m.maxrss_mib = double(ru.ru_maxrss) / 1024.0;  // Linux: kilobytes
  std::ifstream in(log_path);
  m.log.assign(std::istreambuf_iterator<char>(in), {});
  return m;
}

TEST(Resources, EstimateIsCloseToTheMeasuredPeak) {
  TempDir tmp("mem");
  const std::string data = tmp / "data";
  // Wide features over few pairs: the buffers are large while the steps stay few.
  ASSERT_EQ(run_program("synth --out " + data +
                        " --users 400 --items 2000 --noise 3000 --per-user 15 --seed 1")
                .status,
            0);
  const std::string common =
      " --set dim=32 negatives=2 epochs=1 eval_every=1 pretrain_epochs=1 outer_iterations=1 "
      "envs=3 him_epochs=1 him_rounds=1 mask_epochs=1 mask_batch=512 threads=2";
  for (const std::string method : {"painvrl", "ultragcn-mm"}) {
    const Measured m = run_measured(
        "train --method " + method + " --data " + data + " --out " + (tmp / method) + common,
        tmp / (method + ".log"));
    ASSERT_EQ(m.status, 0) << m.log;
    std::smatch match;
    ASSERT_TRUE(std::regex_search(m.log, match, std::regex("memory: peak estimate (\\d+) MiB")))
        << m.log;
    const double estimate = std::stod(match[1].str());
    // The program, its libraries and small vectors add a few MiB the estimate leaves out.
    EXPECT_GT(estimate, 0.85 * (m.maxrss_mib - 16)) << method << ": measured " << m.maxrss_mib;
    EXPECT_LT(estimate, 1.15 * m.maxrss_mib) << method << ": measured " << m.maxrss_mib;
  }
}

TEST(Resources, RunThatDoesNotFitIsRefusedBeforeWriting) {
  TempDir tmp("nofit");
  const std::string data = tmp / "data";
  ASSERT_EQ(run_program("synth --out " + data + " --users 300 --items 200").status, 0);
  const auto r = run_program("train --method painvrl --data " + data + " --out " + (tmp / "run") +
                             " --set memory_limit_gb=0.0001");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("memory: this run needs an estimated"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("(memory_limit_gb)"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(tmp / "run"));
}

// The estimate grows with what drives it: the feature width for painvrl's mask step, the
// environments, the users.
TEST(Resources, EstimateGrowsWithTheProblem) {
  Config c;
  c.method = "painvrl";
  const ProblemSize base{10000, 5000, 500000, 100000, 1000};
  const int64_t b = estimate_host_memory(c, base).peak_bytes;
  ProblemSize wider = base;
  wider.d *= 2;
  EXPECT_GT(estimate_host_memory(c, wider).peak_bytes, b);
  Config more_envs = c;
  more_envs.envs *= 2;
  EXPECT_GT(estimate_host_memory(more_envs, base).peak_bytes, b);
  ProblemSize more_users = base;
  more_users.n_users *= 4;
  EXPECT_GT(estimate_host_memory(c, more_users).peak_bytes, b);
  c.method = "ultragcn";
  EXPECT_LT(estimate_host_memory(c, base).peak_bytes, b);
}

}  // namespace
}  // namespace painvrl
