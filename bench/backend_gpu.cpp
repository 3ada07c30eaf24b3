// Whole-epoch benchmark of the CUDA backend: the UltraGCN objective (ID-only, or with the content
// branch as in the final model and UltraGCN with features) on a dataset directory, epoch by
// epoch on the GPU: negatives, projection, fused loss, dW, db, Adam and the step end, all on
// the device. The first epoch is a warm-up (cuBLAS heuristics, first-touch); the median of the
// others is reported, with positives per second. tools/device-check runs it beside the PyTorch
// reference of the same objective (tools/reference/painvrl_ref.py epoch --device cuda) on the
// same data and prints the ratio.
// Run: build/bench/bench_backend_gpu --data DIR [--epochs 3] [--content 1] [--dim 64]
//        [--negatives 50] [--batch 512] [--ii-neighbors 10] [--json FILE]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "painvrl/cuda/backend.h"
#include "painvrl/cuda/device.h"
#include "painvrl/data/dataset.h"
#include "painvrl/data/graph.h"
#include "painvrl/pipeline/config.h"
#include "painvrl/pipeline/stages.h"

using namespace painvrl;

int main(int argc, char** argv) {
  std::string data, json_path;
  int epochs = 3;
  bool content = true;
  Config c;
  for (int k = 1; k < argc; ++k) {
    const std::string a = argv[k];
    auto value = [&]() -> std::string {
      if (k + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++k];
    };
    if (a == "--data") {
      data = value();
    } else if (a == "--json") {
      json_path = value();
    } else if (a == "--epochs") {
      epochs = std::max(2, std::atoi(value().c_str()));
    } else if (a == "--content") {
      content = std::atoi(value().c_str()) != 0;
    } else if (a == "--dim") {
      c.dim = std::atoi(value().c_str());
    } else if (a == "--negatives") {
      c.negatives = std::atoi(value().c_str());
    } else if (a == "--batch") {
      c.batch_size = std::atoi(value().c_str());
    } else if (a == "--ii-neighbors") {
      c.ii_neighbors = std::atoi(value().c_str());
    } else {
      std::fprintf(stderr,
                   "usage: %s --data DIR [--epochs E] [--content 0|1] [--dim D] [--negatives N] "
                   "[--batch B] [--ii-neighbors K] [--json FILE]\n",
                   argv[0]);
      return 2;
    }
  }
  if (data.empty()) {
    std::fprintf(stderr, "--data DIR is required\n");
    return 2;
  }
  if (cuda::usable_device_count() == 0) {
    std::printf("no usable GPU (%s): nothing to time\n", cuda::describe_device().c_str());
    return cuda::gpu_required() ? 1 : 0;
  }
  try {
    LoadOptions lo;
    lo.load_features = content;
    const Dataset ds = load_dataset(data, lo);
    const Graph graph =
        build_graph(ds.train, ds.n_users, ds.n_items, c.ii_neighbors, IiSimilarity::kUltraGcn);
    const TrainSetup setup =
        make_train_setup(c, ds.n_users, ds.n_items, ds.feature_dim, content, 0);
    auto backend = cuda::make_cuda_backend();
    backend->setup(setup, graph, ds.features);
    std::printf(
        "device: %s\ndata: %s (%d users, %d items, %zu pairs, d = %lld), content %d, "
        "D %d, N %d, B %d, K %d\n",
        cuda::describe_device().c_str(), data.c_str(), ds.n_users, ds.n_items, ds.train.size(),
        static_cast<long long>(ds.feature_dim), int(content), c.dim, c.negatives, c.batch_size,
        graph.ii_k);
    PairList shuffled;
    std::vector<double> seconds;
    double last_loss = 0;
    for (int epoch = 0; epoch < epochs; ++epoch) {
      shuffle_pairs(ds.train, shuffled, c.seed, 0, uint32_t(epoch));
      const auto t0 = std::chrono::steady_clock::now();
      const EpochStats st = backend->train_epoch(shuffled, uint32_t(epoch));  // ends synchronised
      const double dt =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (st.diverged) {
        std::fprintf(stderr, "epoch %d diverged\n", epoch);
        return 1;
      }
      last_loss = st.loss_total / double(std::max<int64_t>(st.steps, 1));
      std::printf("epoch %d: %.4f s, %lld steps, mean loss %.6g%s\n", epoch, dt,
                  static_cast<long long>(st.steps), last_loss, epoch == 0 ? " (warm-up)" : "");
      if (epoch > 0) seconds.push_back(dt);
    }
    std::sort(seconds.begin(), seconds.end());
    const double median = seconds[seconds.size() / 2];
    std::printf("median epoch: %.4f s, %.3g positives/s\n", median,
                double(ds.train.size()) / median);
    if (!json_path.empty()) {
      FILE* f = std::fopen(json_path.c_str(), "w");
      if (!f) {
        std::fprintf(stderr, "cannot write %s\n", json_path.c_str());
        return 2;
      }
      std::fprintf(f,
                   "{\"bench\": \"backend_gpu\", \"content\": %s, \"users\": %d, \"items\": %d, "
                   "\"pairs\": %zu, \"feat_dim\": %lld, \"dim\": %d, \"negatives\": %d, "
                   "\"batch\": %d, \"ii_k\": %d, \"epoch_seconds\": %.6f, \"mean_loss\": %.8g}\n",
                   content ? "true" : "false", ds.n_users, ds.n_items, ds.train.size(),
                   static_cast<long long>(ds.feature_dim), c.dim, c.negatives, c.batch_size,
                   graph.ii_k, median, last_loss);
      std::fclose(f);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_backend_gpu: %s\n", e.what());
    return 1;
  }
  return 0;
}
