// Host memory estimate and limit (include/painvrl/pipeline/resources.h). The estimate adds, for
// each stage of a run, the buffers that stage holds at once (sizes from host/cpu/cpu_backend.cpp,
// host/pipeline/ (algorithm1, him, mask_stage), host/pipeline/trainer.cpp and
// host/pipeline/evaluate.cpp), and takes the largest stage on top of what lives throughout (the
// dataset, the graph). It counts the big arrays only: small vectors, the program and its libraries
// (a few tens of MB) are not in it.
#include "painvrl/pipeline/resources.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "painvrl/backend/mask_step.h"
#include "painvrl/data/error.h"

namespace painvrl {
namespace {

constexpr double kMiB = 1024.0 * 1024.0, kGiB = kMiB * 1024.0;

std::string gib(int64_t bytes) {
  return bytes >= int64_t(kGiB) ? fmt::format("{:.2f} GiB", double(bytes) / kGiB)
                                : fmt::format("{:.0f} MiB", double(bytes) / kMiB);
}

// A stage's buffers: (name, bytes).
using Parts = std::vector<std::pair<std::string, int64_t>>;
int64_t total(const Parts& p) {
  int64_t s = 0;
  for (const auto& [name, b] : p) s += b;
  return s;
}

// One backbone on the CPU backend, trained and evaluated: parameters, gradients and Adam moments
// (4 x 4 bytes per parameter), the item rows used for scoring, a shuffled copy of the training
// pairs, the step's negatives and loss workspace, and one evaluation block of scores.
Parts backbone(const Config& c, const ProblemSize& s, bool content, const std::string& name) {
  const int64_t D = c.dim;
  const int64_t params =
      s.n_users * D * (content ? 2 : 1) + s.n_items * D + (content ? D * s.d + D : 0);
  const int64_t B = c.batch_size, N = c.negatives, K = c.ii_neighbors;
  return {{name + " parameters, gradients, Adam moments", 16 * params},
          {name + " item rows for scoring", 4 * s.n_items * D * (content ? 2 : 1)},
          {name + " shuffled training pairs", 8 * s.n_train},
          {name + " step workspace", B * (N + K + 2) * 48 + B * N * 4},
          {name + " evaluation block", int64_t(c.eval_block) * s.n_items * 12}};
}

int64_t content_params(const Config& c, const ProblemSize& s) {
  return 2 * s.n_users * c.dim + s.n_items * c.dim + int64_t(c.dim) * s.d + c.dim;
}

}  // namespace

MemoryEstimate estimate_host_memory(const Config& c, const ProblemSize& s) {
  const std::string& m = c.method;
  const bool content = m == "ultragcn-mm" || m == "invrl" || m == "painvrl";
  const int64_t D = c.dim, d = content ? s.d : 0, threads = std::max(1, omp_get_max_threads());
  // Throughout: the dataset as loaded and the graph.
  Parts always = {
      {"dataset pairs", 8 * (s.n_train + s.n_heldout)},
      {"dataset features", 4 * s.n_items * d},
      {"graph (degrees, user-item CSR, item-item top-K)", 8 * (s.n_users + s.n_items) +
                                                              4 * (s.n_users + 1 + s.n_train) +
                                                              8 * s.n_items * c.ii_neighbors},
  };
  std::vector<std::pair<std::string, Parts>> stages;
  stages.push_back({"graph construction", {{"item-item accumulators", 16 * threads * s.n_items}}});
  if (m == "ultragcn" || m == "ultragcn-mm") {
    Parts p = backbone(c, s, content, "model");
    const int64_t params = content ? content_params(c, s) : (s.n_users + s.n_items) * D;
    p.push_back({"best-validation parameters", 4 * params});
    stages.push_back({"training", p});
  } else if (m == "painvrl" || m == "invrl") {
    const int64_t P = content_params(c, s);
    const int64_t E = c.envs;
    stages.push_back({"stage 0", backbone(c, s, true, "stage-0 model")});
    // Held from stage 0's end until the final model.
    const Parts mask_inputs = {
        {"stage-0 parameters", 4 * P},
        {"frozen embeddings and features in double",
         8 * ((2 * s.n_users + s.n_items) * D + s.n_items * d)},
        {"environment assignment and environments-<t>.tsv text", 4 * s.n_train + 24 * s.n_train}};
    Parts him = mask_inputs;
    him.push_back({"psi = (1 - m) f", 4 * s.n_items * d});
    if (c.him_train == "projection") {
      him.push_back({"environment models W, b (with gradients and Adam)", 16 * E * (D * d + D)});
      him.push_back({"per-pair scores under every model", 4 * s.n_train * (E + 2)});
      him.push_back({"step rows", int64_t(E) * c.batch_size * (c.negatives + 3) * 4});
    } else {
      for (const auto& x : backbone(c, s, true, "environment model")) him.push_back(x);
      him.push_back({"per-pair scores", 4 * s.n_train * 3});
    }
    stages.push_back({"environment identification", him});
    const MaskLayout ml =
        MaskLayout::make(c.dim, d, c.attention_hidden, c.method == "painvrl" && c.attention);
    Parts mask = mask_inputs;
    // host/cpu/mask_step.cpp (MaskStepWorkspace): per row seven d-vectors (q, R_e^T Pf_u, S1-S4,
    // the products' right-hand side) and the user quantities (Pf_u, [Pt_u, Pf_u], the attention
    // pre-activations and their gradients); per term eleven values, its item, weight and label;
    // per touched item [T_j, f_j] and the attention pre-activations; the per-environment
    // gradients G_e, their deviations and V (E, D, d).
    const int64_t rows = E * c.mask_batch;
    const int64_t terms = rows * (1 + c.negatives + (c.kappa > 0 ? c.ii_neighbors : 0));
    const int64_t touched = std::min<int64_t>(s.n_items, terms);
    mask.push_back({"mask step per-row vectors", 8 * rows * (7 * d + 3 * D + 6 * ml.H)});
    mask.push_back({"mask step per-term values", terms * (11 * 8 + 8 + 4 + 1)});
    mask.push_back({"mask step touched items", 8 * touched * (D + d + 4 * ml.H) + 8 * s.n_items});
    mask.push_back({"mask model (double, with Adam) and per-environment gradients",
                    8 * ml.total * 4 + 8 * D * d * (2 * E + 4)});
    mask.push_back({"mask, its moments and gate noise", 8 * d * (4 + 2 * E)});
    stages.push_back({"mask generation", mask});
    Parts fin = backbone(c, s, true, "final model");
    fin.push_back({"Phi = m f", 4 * s.n_items * d});
    fin.push_back({"best-validation parameters", 4 * P});
    stages.push_back({"final model", fin});
  }
  MemoryEstimate e;
  const std::pair<std::string, Parts>* peak = &stages.front();
  for (const auto& st : stages) {
    if (total(st.second) > total(peak->second)) peak = &st;
  }
  e.peak_stage = peak->first;
  e.peak_bytes = total(always) + total(peak->second);
  e.parts = always;
  for (const auto& x : peak->second) e.parts.push_back(x);
  std::sort(e.parts.begin(), e.parts.end(),
            [](const auto& a, const auto& b) { return a.second > b.second; });
  return e;
}

namespace {

int64_t read_int64_file(const std::string& path, bool& ok) {
  std::ifstream in(path);
  std::string word;
  ok = bool(in >> word) && !word.empty() && std::all_of(word.begin(), word.end(), ::isdigit);
  return ok ? std::stoll(word) : 0;
}

int64_t rss_bytes() {
  std::ifstream in("/proc/self/statm");
  int64_t pages = 0, resident = 0;
  in >> pages >> resident;
  return resident * int64_t(::sysconf(_SC_PAGESIZE));
}

}  // namespace

MemoryLimit host_memory_limit(const Config& c) {
  MemoryLimit out{int64_t(1) << 62, "no limit found"};
  if (c.memory_limit_gb > 0) {
    return MemoryLimit{int64_t(c.memory_limit_gb * kGiB), "memory_limit_gb"};
  }
  std::ifstream meminfo("/proc/meminfo");
  for (std::string line; std::getline(meminfo, line);) {
    if (line.rfind("MemAvailable:", 0) == 0) {
      std::istringstream ss(line.substr(13));
      int64_t kb = 0;
      if (ss >> kb) out = MemoryLimit{rss_bytes() + kb * 1024, "MemAvailable in /proc/meminfo"};
    }
  }
  bool ok_max = false, ok_cur = false;
  // cgroup v2 (Slurm's task/cgroup, containers), then v1.
  for (const auto& [max_file, cur_file] :
       {std::pair<std::string, std::string>{"/sys/fs/cgroup/memory.max",
                                            "/sys/fs/cgroup/memory.current"},
        {"/sys/fs/cgroup/memory/memory.limit_in_bytes",
         "/sys/fs/cgroup/memory/memory.usage_in_bytes"}}) {
    const int64_t max = read_int64_file(max_file, ok_max);
    const int64_t cur = read_int64_file(cur_file, ok_cur);
    if (ok_max && ok_cur && max > cur && max < (int64_t(1) << 60)) {
      const int64_t room = rss_bytes() + (max - cur);
      if (room < out.bytes) out = MemoryLimit{room, "the cgroup's memory limit (" + max_file + ")"};
      break;
    }
  }
  return out;
}

void check_host_memory(const Config& c, const ProblemSize& size) {
  const MemoryEstimate e = estimate_host_memory(c, size);
  const MemoryLimit limit = host_memory_limit(c);
  std::string parts;
  for (size_t k = 0; k < std::min<size_t>(4, e.parts.size()); ++k) {
    parts += fmt::format("{}{} {}", k ? ", " : "", e.parts[k].first, gib(e.parts[k].second));
  }
  if (e.peak_bytes > limit.bytes) {
    input_error(
        "memory: this run needs an estimated {} of host memory at its peak ({}: {}), more than "
        "the {} this process may use ({}); use a machine with more memory, a smaller dim, or set "
        "memory_limit_gb if the limit is wrong",
        gib(e.peak_bytes), e.peak_stage, parts, gib(limit.bytes), limit.source);
  }
  log_info(fmt::format("memory: peak estimate {} ({}), limit {} ({})", gib(e.peak_bytes),
                       e.peak_stage, gib(limit.bytes), limit.source));
}

}  // namespace painvrl
