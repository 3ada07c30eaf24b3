// Kernel lab (llm.c style) for the CUDA backend's smaller kernels, each first validated against a
// CPU reference computed in the same run, then timed (CUDA events, median of --reps, the L2
// flushed before each), with the bytes it must move, the achieved GB/s and its fraction of the
// copy bandwidth measured in the same run (a device-to-device cudaMemcpy of 1 GiB):
//   negatives  kernels/sampling.cu at the paper's step (512 rows x 50, 5,986 items) and a large
//              one (65,536 x 50): bit for bit against math::negative_row; writes 4 B a negative.
//   adam       kernels/adam.cu over the paper's MovieLens parameter buffer (Pt, Pf, T, W|b:
//              3.7 M floats) against math::adam_update, sums of squares against a double sum;
//              moves 16 B read and 16 B written per parameter (p, m, v, g; g zeroed).
//   score-pairs, assign-env  kernels/adam.cu: one pair's score (HIM, serving) and HIM's
//              reassignment to the best of E = 10 models, at 1.24 M pairs, against the same sums on
//              the CPU (scores to 1e-5; assignments may differ only on near-ties, at most 1e-4);
//              the floor reads each pair's user and item rows once.
//   top-k      kernels/topk.cu (exclusions, then k rounds of a block arg-max over the row, v1;
//              one pass keeping each thread's k best, then k rounds over the threads' heads, v2,
//              what the evaluation uses) and a CUB segmented radix sort of each row, stable and
//              descending, then its first k (v0), on
//              a block of 4,096 users x 5,986 items with ties and 40 excluded items a user, k =
//              20: both against std::partial_sort with the host's comparator; the floor reads the
//              scores once and writes the ids (4 B per score).
// Prints a table and, with --json FILE, one JSON object per kernel and variant.
// Run: build/bench/bench_small_kernels_gpu [--reps 30] [--json FILE]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <random>
#include <string>
#include <vector>

#include "gpu_lab.h"
#include "painvrl/cuda/device.h"
#include "painvrl/cuda/kernels.h"
#include "painvrl/math/adam.h"
#include "painvrl/math/sampling.h"

using namespace painvrl;
using painvrl::bench::copy_bandwidth_gbs;
using painvrl::bench::time_median;

namespace {

template <class T>
T* device_copy(const std::vector<T>& host) {
  T* p = nullptr;
  CHECK(cudaMalloc(&p, sizeof(T) * std::max<size_t>(host.size(), 1)));
  CHECK(cudaMemcpy(p, host.data(), sizeof(T) * host.size(), cudaMemcpyHostToDevice));
  return p;
}
template <class T>
std::vector<T> host_copy(const T* p, size_t n) {
  std::vector<T> out(n);
  CHECK(cudaMemcpy(out.data(), p, sizeof(T) * n, cudaMemcpyDeviceToHost));
  return out;
}

struct Row {
  std::string kernel, shape;
  int variant;
  double seconds, bytes, err;
  bool valid;
};

void print_row(const Row& r, double copy_gbs) {
  const double gbs = r.bytes / r.seconds / 1e9;
  std::printf("%-10s %-30s v%-3d %10.1f %9.0f %7.0f%% %6s %.2e\n", r.kernel.c_str(),
              r.shape.c_str(), r.variant, r.seconds * 1e6, gbs, 100 * gbs / copy_gbs,
              r.valid ? "yes" : "NO", r.err);
}

std::vector<Row> negatives_lab(int reps) {
  std::vector<Row> rows;
  const math::PhiloxKey key = math::make_key(7, 3);
  const uint32_t n_items = 5986;
  const int32_t N = 50;
  for (int64_t B : {int64_t(512), int64_t(65536)}) {
    int32_t* d_out = nullptr;
    CHECK(cudaMalloc(&d_out, sizeof(int32_t) * B * N));
    CHECK(cudaMemset(d_out, 0xff, sizeof(int32_t) * B * N));
    CHECK(painvrl::cuda::launch_sample_negatives(key, 2, 9, B, N, n_items, d_out, 0));
    const std::vector<int32_t> got = host_copy(d_out, size_t(B * N));
    std::vector<int32_t> want(size_t(B * N));
    for (int64_t r = 0; r < B; ++r) {
      math::negative_row(key, 2, 9, uint32_t(r), uint32_t(N), n_items, want.data() + r * N);
    }
    const bool valid = got == want;
    const double s = time_median(reps, [&](int r) {
      CHECK(painvrl::cuda::launch_sample_negatives(key, 2, uint32_t(r), B, N, n_items, d_out, 0));
    });
    rows.push_back({"negatives", std::to_string(B) + " x 50", 1, s, 4.0 * double(B * N),
                    valid ? 0.0 : 1.0, valid});
    CHECK(cudaFree(d_out));
  }
  return rows;
}

std::vector<Row> adam_lab(int reps) {
  // The paper's MovieLens buffer: Pt, Pf (55,485 x 64), T (5,986 x 64), W | b (64 x 2,276 + 64).
  const int64_t nu = 55485LL * 64, ni = 5986LL * 64, nw = 64LL * 2276 + 64;
  const int64_t n = 2 * nu + ni + nw;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 0.1f);
  std::vector<float> p(static_cast<size_t>(n)), m(static_cast<size_t>(n)),
      v(static_cast<size_t>(n)), g(static_cast<size_t>(n));
  for (auto* vec : {&p, &m, &g}) {
    for (float& x : *vec) x = nd(rng);
  }
  for (float& x : v) x = std::fabs(nd(rng));
  float *dp = device_copy(p), *dm = device_copy(m), *dv = device_copy(v), *dg = device_copy(g);
  float* d_sums = nullptr;
  CHECK(cudaMalloc(&d_sums, sizeof(float) * 2 * painvrl::cuda::kAdamBlocks));
  painvrl::cuda::AdamArgs a;
  a.params = dp;
  a.m = dm;
  a.v = dv;
  a.grad = dg;
  a.bounds[0] = 0;
  a.bounds[1] = nu;
  a.bounds[2] = 2 * nu;
  a.bounds[3] = 2 * nu + ni;
  a.bounds[4] = n;
  a.emb_l2_coef = 1e-4f;
  a.w_l2_coef = 2e-4f;
  a.step = math::make_adam_step(1e-3f, 0.9f, 0.999f, 1e-8f, 3);
  a.block_sums = d_sums;
  CHECK(painvrl::cuda::launch_adam(a, 0));
  const std::vector<float> gp = host_copy(dp, size_t(n)), gm = host_copy(dm, size_t(n)),
                           gv = host_copy(dv, size_t(n)), gg = host_copy(dg, size_t(n)),
                           sums = host_copy(d_sums, size_t(2 * painvrl::cuda::kAdamBlocks));
  double err = 0, sq_emb = 0, sq_w = 0;
  for (int64_t k = 0; k < n; ++k) {
    const bool emb = k < a.bounds[3];
    (emb ? sq_emb : sq_w) += double(p[k]) * p[k];
    float pk = p[k], mk = m[k], vk = v[k];
    math::adam_update(pk, mk, vk, g[k], emb ? a.emb_l2_coef : a.w_l2_coef, a.step);
    err = std::max({err, double(std::fabs(pk - gp[k])), double(std::fabs(mk - gm[k])),
                    double(std::fabs(vk - gv[k])), double(std::fabs(gg[k]))});
  }
  double got_emb = 0, got_w = 0;
  for (int b = 0; b < painvrl::cuda::kAdamBlocks; ++b) {
    got_emb += sums[2 * b];
    got_w += sums[2 * b + 1];
  }
  err = std::max({err, std::fabs(got_emb - sq_emb) / sq_emb, std::fabs(got_w - sq_w) / sq_w});
  const bool valid = err < 1e-5;
  const double s = time_median(reps, [&](int) { CHECK(painvrl::cuda::launch_adam(a, 0)); });
  for (void* ptr : {(void*)dp, (void*)dm, (void*)dv, (void*)dg, (void*)d_sums})
    CHECK(cudaFree(ptr));
  return {{"adam", "3.7 M params (paper sizes)", 1, s, 32.0 * double(n), err, valid}};
}

// The scoring of pairs (kernels/adam.cu score_pairs, HIM's per-model scores and serving) and HIM's
// reassignment (assign_environments) at the paper's sizes: 1.24 M pairs, D = 64, E = 10. Both read
// a user row and an item row (or E of them) per pair: the floor counts those once.
std::vector<Row> pair_scoring_lab(int reps) {
  const int32_t U = 55485, I = 5986, D = 64, E = 10;
  const int64_t P = 1239508;
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.f, 0.3f);
  std::vector<float> pt(size_t(U) * D), pf(size_t(U) * D), t(size_t(I) * D),
      x_all(size_t(I) * E * D), item_rows(size_t(I) * 2 * D);
  for (auto* v : {&pt, &pf, &t, &x_all}) {
    for (float& x : *v) x = nd(rng);
  }
  for (int32_t j = 0; j < I; ++j) {  // [T_j, X_j] with X the first model's
    std::copy_n(t.begin() + size_t(j) * D, D, item_rows.begin() + size_t(j) * 2 * D);
    std::copy_n(x_all.begin() + size_t(j) * E * D, D, item_rows.begin() + size_t(j) * 2 * D + D);
  }
  std::vector<int32_t> users(static_cast<size_t>(P)), items(static_cast<size_t>(P));
  for (int64_t p = 0; p < P; ++p) {
    users[size_t(p)] = int32_t(rng() % U);
    items[size_t(p)] = int32_t(rng() % I);
  }
  // CPU references: the same sums in the same order.
  std::vector<float> want_scores(static_cast<size_t>(P));
  std::vector<int32_t> want_env(static_cast<size_t>(P));
  for (int64_t p = 0; p < P; ++p) {
    const float* pu = pt.data() + size_t(users[p]) * D;
    const float* fu = pf.data() + size_t(users[p]) * D;
    const float* tj = t.data() + size_t(items[p]) * D;
    float id_part = 0.f;
    for (int32_t c = 0; c < D; ++c) id_part += pu[c] * tj[c];
    float content = 0.f;
    for (int32_t c = 0; c < D; ++c) content += fu[c] * x_all[size_t(items[p]) * E * D + c];
    want_scores[size_t(p)] = id_part + content;
    float best = -INFINITY;
    for (int32_t e = 0; e < E; ++e) {
      float s = 0.f;
      for (int32_t c = 0; c < D; ++c) s += fu[c] * x_all[(size_t(items[p]) * E + e) * D + c];
      s += id_part;
      if (s > best) {
        best = s;
        want_env[size_t(p)] = e;
      }
    }
  }
  float *d_pt = device_copy(pt), *d_pf = device_copy(pf), *d_t = device_copy(t),
        *d_x = device_copy(x_all), *d_rows = device_copy(item_rows), *d_scores = nullptr;
  int32_t *d_users = device_copy(users), *d_items = device_copy(items), *d_env = nullptr;
  CHECK(cudaMalloc(&d_scores, sizeof(float) * P));
  CHECK(cudaMalloc(&d_env, sizeof(int32_t) * P));
  std::vector<Row> rows;
  {
    CHECK(cudaMemset(d_scores, 0xff, sizeof(float) * P));
    CHECK(
        painvrl::cuda::launch_score_pairs(d_pt, d_pf, D, d_rows, d_users, d_items, P, d_scores, 0));
    const std::vector<float> got = host_copy(d_scores, size_t(P));
    double err = 0, scale = 1e-30;
    for (int64_t p = 0; p < P; ++p) {
      err = std::max(err, std::fabs(double(got[size_t(p)]) - want_scores[size_t(p)]));
      scale = std::max(scale, std::fabs(double(want_scores[size_t(p)])));
    }
    err /= scale;
    const double s = time_median(reps, [&](int) {
      CHECK(painvrl::cuda::launch_score_pairs(d_pt, d_pf, D, d_rows, d_users, d_items, P, d_scores,
                                              0));
    });
    rows.push_back({"score-pairs", "1.24 M pairs, D 64, content", 1, s,
                    double(P) * (4.0 * 4 * D + 12.0), err, err < 1e-5});
  }
  {
    CHECK(cudaMemset(d_env, 0xff, sizeof(int32_t) * P));
    CHECK(painvrl::cuda::launch_assign_environments(d_pt, d_pf, d_t, D, E, d_x, d_users, d_items, P,
                                                    d_env, 0));
    const std::vector<int32_t> got = host_copy(d_env, size_t(P));
    int64_t differ = 0;
    for (int64_t p = 0; p < P; ++p) differ += got[size_t(p)] != want_env[size_t(p)];
    const double s = time_median(reps, [&](int) {
      CHECK(painvrl::cuda::launch_assign_environments(d_pt, d_pf, d_t, D, E, d_x, d_users, d_items,
                                                      P, d_env, 0));
    });
    // FMA contraction may round a near-tie differently: a few in a million may differ.
    rows.push_back({"assign-env", "1.24 M pairs, D 64, E 10", 1, s,
                    double(P) * (4.0 * (3 + E) * D + 12.0), double(differ) / double(P),
                    differ * 10000 <= P});
  }
  for (void* ptr : {(void*)d_pt, (void*)d_pf, (void*)d_t, (void*)d_x, (void*)d_rows,
                    (void*)d_scores, (void*)d_users, (void*)d_items, (void*)d_env}) {
    CHECK(cudaFree(ptr));
  }
  return rows;
}

std::vector<Row> topk_lab(int reps) {
  const int32_t users = 4096, n_items = 5986, k = 20, per_user = 40;
  std::mt19937 rng(5);
  std::vector<float> scores(size_t(users) * n_items);
  for (float& x : scores) x = float(int(rng() % 2000)) * 1e-3f;  // ties
  std::vector<int64_t> offsets(size_t(users) + 1, 0);
  std::vector<int32_t> items, user_ids(static_cast<size_t>(users));
  for (int32_t u = 0; u < users; ++u) {
    user_ids[size_t(u)] = u;
    for (int q = 0; q < per_user; ++q) items.push_back(int32_t(rng() % n_items));
    offsets[size_t(u) + 1] = int64_t(items.size());
  }
  // CPU reference: exclusions, then std::partial_sort with the host's comparator.
  std::vector<int32_t> want(size_t(users) * k);
  {
    std::vector<float> row(static_cast<size_t>(n_items));
    std::vector<int32_t> order(static_cast<size_t>(n_items));
    for (int32_t u = 0; u < users; ++u) {
      std::copy_n(scores.begin() + size_t(u) * n_items, n_items, row.begin());
      for (int64_t p = offsets[u]; p < offsets[u + 1]; ++p) row[size_t(items[p])] = -INFINITY;
      for (int32_t j = 0; j < n_items; ++j) order[size_t(j)] = j;
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
        return row[a] != row[b] ? row[a] > row[b] : a < b;
      });
      std::copy_n(order.begin(), k, want.begin() + size_t(u) * k);
    }
  }
  float* d_src = device_copy(scores);
  float* d_scores = nullptr;
  CHECK(cudaMalloc(&d_scores, sizeof(float) * scores.size()));
  int64_t* d_off = device_copy(offsets);
  int32_t *d_items = device_copy(items), *d_users = device_copy(user_ids), *d_ranked = nullptr;
  CHECK(cudaMalloc(&d_ranked, sizeof(int32_t) * users * k));
  // v0: CUB's segmented radix sort (stable, descending) of (score, item) per row, then the first k.
  std::vector<int32_t> ids(scores.size());
  std::vector<int> seg(size_t(users) + 1);
  for (int32_t u = 0; u < users; ++u) {
    for (int32_t j = 0; j < n_items; ++j) ids[size_t(u) * n_items + j] = j;
  }
  for (int32_t u = 0; u <= users; ++u) seg[size_t(u)] = u * n_items;
  int32_t* d_ids = device_copy(ids);
  int* d_seg = device_copy(seg);
  float* d_sorted = nullptr;
  int32_t* d_sorted_ids = nullptr;
  CHECK(cudaMalloc(&d_sorted, sizeof(float) * scores.size()));
  CHECK(cudaMalloc(&d_sorted_ids, sizeof(int32_t) * scores.size()));
  size_t temp_bytes = 0;
  CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(nullptr, temp_bytes, d_scores, d_sorted,
                                                           d_ids, d_sorted_ids, int(scores.size()),
                                                           users, d_seg, d_seg + 1));
  void* d_temp = nullptr;
  CHECK(cudaMalloc(&d_temp, temp_bytes));
  auto run = [&](int variant) {
    CHECK(
        cudaMemcpyAsync(d_scores, d_src, sizeof(float) * scores.size(), cudaMemcpyDeviceToDevice));
    CHECK(painvrl::cuda::launch_exclude_items(d_off, d_items, d_users, users, n_items, nullptr,
                                              d_scores, 0));
    if (variant == 1) {
      CHECK(painvrl::cuda::launch_top_k_rounds(d_scores, users, n_items, k, d_ranked, 0));
    } else if (variant == 2) {
      CHECK(painvrl::cuda::launch_top_k(d_scores, users, n_items, k, d_ranked, 0));
    } else {
      size_t tb = temp_bytes;
      CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
          d_temp, tb, d_scores, d_sorted, d_ids, d_sorted_ids, int(scores.size()), users, d_seg,
          d_seg + 1));
      CHECK(cudaMemcpy2DAsync(d_ranked, sizeof(int32_t) * k, d_sorted_ids,
                              sizeof(int32_t) * n_items, sizeof(int32_t) * k, users,
                              cudaMemcpyDeviceToDevice));
    }
  };
  std::vector<Row> rows;
  for (int variant : {0, 1, 2}) {
    CHECK(cudaMemset(d_ranked, 0xff, sizeof(int32_t) * users * k));
    run(variant);
    const std::vector<int32_t> got = host_copy(d_ranked, size_t(users) * k);
    int64_t wrong = 0;
    for (size_t x = 0; x < got.size(); ++x) wrong += got[x] != want[x];
    // The copy that restores the scores is timed too; subtract its own time.
    const double restore = time_median(reps, [&](int) {
      CHECK(cudaMemcpyAsync(d_scores, d_src, sizeof(float) * scores.size(),
                            cudaMemcpyDeviceToDevice));
    });
    const double s = std::max(1e-9, time_median(reps, [&](int) { run(variant); }) - restore);
    rows.push_back({"top-k", "4096 users x 5986, k 20", variant, s,
                    4.0 * double(scores.size()) + 4.0 * users * k, double(wrong), wrong == 0});
  }
  for (void* ptr : {(void*)d_src, (void*)d_scores, (void*)d_off, (void*)d_items, (void*)d_users,
                    (void*)d_ranked, (void*)d_ids, (void*)d_seg, (void*)d_sorted,
                    (void*)d_sorted_ids, d_temp}) {
    CHECK(cudaFree(ptr));
  }
  return rows;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 30;
  std::string json_path;
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    if (arg == "--reps" && a + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++a]));
    } else if (arg == "--json" && a + 1 < argc) {
      json_path = argv[++a];
    } else {
      std::fprintf(stderr, "usage: %s [--reps R] [--json FILE]\n", argv[0]);
      return 2;
    }
  }
  if (painvrl::cuda::usable_device_count() == 0) {
    std::printf("no usable GPU (%s): nothing to time\n", painvrl::cuda::describe_device().c_str());
    return painvrl::cuda::gpu_required() ? 1 : 0;
  }
  std::printf("device: %s\n", painvrl::cuda::describe_device().c_str());
  const double copy_gbs = copy_bandwidth_gbs();
  std::printf("copy bandwidth (device to device, read + write): %.0f GB/s\n\n", copy_gbs);
  std::printf("%-10s %-30s %-4s %10s %9s %8s %6s %s\n", "kernel", "shape", "var", "us", "GB/s",
              "of copy", "valid", "error");
  std::vector<Row> all;
  for (auto lab : {negatives_lab, adam_lab, pair_scoring_lab, topk_lab}) {
    for (const Row& r : lab(reps)) {
      print_row(r, copy_gbs);
      all.push_back(r);
    }
  }
  bool ok = true;
  if (!json_path.empty()) {
    FILE* f = std::fopen(json_path.c_str(), "w");
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", json_path.c_str());
      return 2;
    }
    std::fprintf(f, "[\n");
    for (size_t x = 0; x < all.size(); ++x) {
      const Row& r = all[x];
      std::fprintf(f,
                   "%s  {\"lab\": \"%s\", \"shape\": \"%s\", \"variant\": %d, \"median_us\": %.2f, "
                   "\"floor_bytes\": %.0f, \"gbs\": %.1f, \"copy_gbs\": %.1f, \"valid\": %s, "
                   "\"max_err\": %.3e}",
                   x ? ",\n" : "", r.kernel.c_str(), r.shape.c_str(), r.variant, r.seconds * 1e6,
                   r.bytes, r.bytes / r.seconds / 1e9, copy_gbs, r.valid ? "true" : "false", r.err);
    }
    std::fprintf(f, "\n]\n");
    std::fclose(f);
  }
  for (const Row& r : all) ok &= r.valid;
  if (!ok) std::printf("\nFAILED: a kernel does not match its CPU reference\n");
  return ok ? 0 : 1;
}
