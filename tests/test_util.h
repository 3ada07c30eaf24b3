// Helpers shared by the tests: temporary directories, running the program, file writing.
#pragma once
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace painvrl::test {

// A fresh directory under the system temp folder, removed at scope exit.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag = "t") {
    static int counter = 0;
    path = std::filesystem::temp_directory_path() /
           ("painvrl_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

struct RunResult {
  int status = -1;
  std::string output;  // stdout and stderr together
};

// Runs `painvrl ARGS` and captures its output and exit status.
inline RunResult run_program(const std::string& args) {
  RunResult r;
  const std::string cmd = std::string(PAINVRL_BIN) + " " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

inline std::string shared_dir() { return PAINVRL_SHARED_DIR; }

}  // namespace painvrl::test
