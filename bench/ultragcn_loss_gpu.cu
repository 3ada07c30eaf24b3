// Kernel lab (llm.c style): the fused UltraGCN loss forward + backward on the GPU.
//   variant 1: one thread per term (score, loss, coefficient), then one thread per (term, column)
//              scattering the gradients; simple, two launches, the term coefficients through
//              global memory.
//   variant 2: kernels/ultragcn_loss.cu, the production kernel, one warp per batch row: user rows
//              and gradients in registers, item rows read once per term.
//   variant 3: the same kernel with a row's terms cut into fused_loss_term_chunks(B, terms)
//              ranges, one warp each (what the backend launches), so that small batches still
//              fill the GPU; the user gradient goes through atomics once per warp.
// Each variant is first validated against the CPU backend (cpu::ultragcn_loss_grad, float) on
// the same batch (loss and every gradient within 1e-5 of the tensor's scale), then timed: CUDA
// events, median of --reps launches, the L2 cache flushed before each, batches rotated.
// Bytes the step must move (ID-only model, C = 1; content, C = 2; terms = B (1 + N + K)):
//   item rows read terms * 4 D C, their gradient rows read and written by atomics 2 terms 4 D C,
//   user rows and their gradients B * 4 D C * 3, indices and weights.
// Achieved GB/s is that floor over the measured time; the copy bandwidth of the same GPU
// (a device-to-device cudaMemcpy of 1 GiB) is measured in the same run and printed beside it.
// Prints a table and, with --json FILE, one JSON object per variant and shape.
// Run: build/bench/bench_ultragcn_loss_gpu [--reps 50] [--json out.json] [--quick]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gpu_lab.h"
#include "painvrl/cpu/ultragcn_loss.h"
#include "painvrl/cuda/device.h"
#include "painvrl/cuda/kernels.h"
#include "painvrl/math/ultragcn.h"

using namespace painvrl;
using painvrl::bench::copy_bandwidth_gbs;

namespace {

struct Shape {
  const char* name;
  int32_t users, items, dim;
  int64_t batch;
  int32_t negatives, ii_k;
  bool content;
};

// ---- variant 1: thread per term, then thread per (term, column) ---------------------------
__global__ void v1_terms(const cuda::FusedLossArgs a, float* __restrict__ coef /* (rows, T) */,
                         int32_t* __restrict__ term_item /* (rows, T) */) {
  const int32_t N = a.n_negatives, T = 1 + N + a.k_used;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.rows * T) return;
  const int64_t row = idx / T;
  const int32_t term = int32_t(idx % T);
  const int32_t u = a.users[row], i = a.items[row];
  const float bu = a.beta_user[u];
  int32_t j;
  float w;
  if (term == 0) {
    j = i;
    w = math::pair_weight(a.w1, a.w2, bu, a.beta_item[i]);
  } else if (term <= N) {
    j = a.negatives[row * N + term - 1];
    w = a.neg_scale * math::pair_weight(a.w3, a.w4, bu, a.beta_item[j]);
  } else {
    const int64_t slot = int64_t(i) * a.ii_k + (term - 1 - N);
    j = a.ii_neighbors[slot];
    w = a.ii_weights[slot];
  }
  float s = 0.f;
  for (int32_t c = 0; c < a.dim; ++c) {
    s += a.pt[int64_t(u) * a.dim + c] * a.t[int64_t(j) * a.dim + c];
    if (a.x) s += a.pf[int64_t(u) * a.dim + c] * a.x[int64_t(j) * a.dim + c];
  }
  const math::TermLoss<float> tl = math::bce_term(s, w, term == 0 || term > N);
  coef[idx] = term > N ? a.kappa * tl.dlds : tl.dlds;
  term_item[idx] = j;
  atomicAdd(a.row_loss + 2 * row + (term > N ? 1 : 0), tl.loss);
}

__global__ void v1_scatter(const cuda::FusedLossArgs a, const float* __restrict__ coef,
                           const int32_t* __restrict__ term_item) {
  const int32_t T = 1 + a.n_negatives + a.k_used;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.rows * T * a.dim) return;
  const int64_t t = idx / a.dim;
  const int32_t c = int32_t(idx % a.dim);
  const float g = coef[t];
  if (g == 0.f) return;
  const int64_t u = a.users[t / T], j = term_item[t];
  atomicAdd(a.grad_pt + u * a.dim + c, g * a.t[j * a.dim + c]);
  atomicAdd(a.grad_t + j * a.dim + c, g * a.pt[u * a.dim + c]);
  if (a.x) {
    atomicAdd(a.grad_pf + u * a.dim + c, g * a.x[j * a.dim + c]);
    atomicAdd(a.grad_x + j * a.dim + c, g * a.pf[u * a.dim + c]);
  }
}

template <class T>
T* to_device(const std::vector<T>& v) {
  T* d = nullptr;
  CHECK(cudaMalloc(&d, sizeof(T) * std::max<size_t>(v.size(), 1)));
  CHECK(cudaMemcpy(d, v.data(), sizeof(T) * v.size(), cudaMemcpyHostToDevice));
  return d;
}

struct Problem {
  Shape shape;
  ParamLayout layout;            // content: Pt, Pf, T (X given directly as "features")
  std::vector<float> params, x;  // x (items, D): stands for W f + b
  std::vector<float> beta_u, beta_i, ii_w;
  std::vector<int32_t> ii_n;
  std::vector<std::vector<int32_t>> users, items, negs;  // rotated batches
};

Problem make_problem(const Shape& s, int batches, unsigned seed) {
  Problem p;
  p.shape = s;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 0.1f);
  std::uniform_int_distribution<int32_t> ud(0, s.users - 1), id(0, s.items - 1);
  p.layout = ParamLayout::make(s.users, s.items, s.dim, 0, s.content);
  p.params.resize(size_t(p.layout.total));
  for (float& v : p.params) v = nd(rng);
  if (s.content) {
    p.x.resize(size_t(s.items) * s.dim);
    for (float& v : p.x) v = nd(rng);
  }
  p.beta_u.resize(size_t(s.users));
  p.beta_i.resize(size_t(s.items));
  for (float& v : p.beta_u) v = 0.05f + std::fabs(nd(rng));
  for (float& v : p.beta_i) v = 0.05f + std::fabs(nd(rng));
  p.ii_n.resize(size_t(s.items) * s.ii_k);
  p.ii_w.resize(size_t(s.items) * s.ii_k);
  for (int32_t& v : p.ii_n) v = id(rng);
  for (float& v : p.ii_w) v = std::fabs(nd(rng));
  for (int b = 0; b < batches; ++b) {
    std::vector<int32_t> u(size_t(s.batch)), i(size_t(s.batch)), n(size_t(s.batch) * s.negatives);
    for (int32_t& v : u) v = ud(rng);
    for (int32_t& v : i) v = id(rng);
    for (int32_t& v : n) v = id(rng);
    p.users.push_back(u);
    p.items.push_back(i);
    p.negs.push_back(n);
  }
  return p;
}

double floor_bytes(const Shape& s) {
  const double C = s.content ? 2 : 1;
  const double terms = double(s.batch) * (1 + s.negatives + s.ii_k);
  return terms * 4.0 * s.dim * C * 3.0 + double(s.batch) * 4.0 * s.dim * C * 3.0 + terms * 8.0;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 50;
  bool quick = false;
  std::string json_path;
  for (int k = 1; k < argc; ++k) {
    const std::string a = argv[k];
    if (a == "--reps" && k + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++k]));
    } else if (a == "--json" && k + 1 < argc) {
      json_path = argv[++k];
    } else if (a == "--quick") {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: %s [--reps R] [--json FILE] [--quick]\n", argv[0]);
      return 2;
    }
  }
  if (cuda::usable_device_count() == 0) {
    std::printf("no usable GPU (%s): nothing to time\n", cuda::describe_device().c_str());
    return cuda::gpu_required() ? 1 : 0;
  }
  std::printf("device: %s\n", cuda::describe_device().c_str());
  const double copy_gbs = copy_bandwidth_gbs();
  std::printf("copy bandwidth (D2D memcpy, read + write): %.0f GB/s\n\n", copy_gbs);
  // The paper's MovieLens sizes (55,485 users, 5,986 items, D = 64, batch 512, N = 50) and
  // larger batches that fill the GPU; K = 10 item neighbours.
  std::vector<Shape> shapes = {
      {"paper-ml B=512", 55485, 5986, 64, 512, 50, 10, true},
      {"paper-ml B=8192", 55485, 5986, 64, 8192, 50, 10, true},
      {"paper-ml B=65536", 55485, 5986, 64, 65536, 50, 10, true},
      {"ml1m-id D=128 B=1024 N=200", 6022, 3043, 128, 1024, 200, 10, false},
  };
  if (quick) shapes.resize(2);
  FILE* json = json_path.empty() ? nullptr : std::fopen(json_path.c_str(), "w");
  if (!json_path.empty() && !json) {
    std::fprintf(stderr, "cannot write %s\n", json_path.c_str());
    return 2;
  }
  if (json) std::fprintf(json, "[\n");
  bool first_json = true, all_valid = true;
  std::printf("%-28s %-8s %10s %10s %9s %8s %s\n", "shape", "variant", "median us", "GB/s",
              "of copy", "valid", "max err");
  // The L2 flush: writing 512 MiB evicts H200's 60 MB L2.
  void* flush = nullptr;
  const size_t flush_bytes = size_t(512) << 20;
  CHECK(cudaMalloc(&flush, flush_bytes));
  for (const Shape& s : shapes) {
    const int n_batches = 4;
    Problem p = make_problem(s, n_batches, 7);
    const ParamLayout& L = p.layout;
    const int32_t D = s.dim;
    float* d_params = to_device(p.params);
    float* d_x = s.content ? to_device(p.x) : nullptr;
    float* d_bu = to_device(p.beta_u);
    float* d_bi = to_device(p.beta_i);
    float* d_iw = to_device(p.ii_w);
    int32_t* d_in = to_device(p.ii_n);
    std::vector<int32_t*> d_users, d_items, d_negs;
    for (int b = 0; b < n_batches; ++b) {
      d_users.push_back(to_device(p.users[b]));
      d_items.push_back(to_device(p.items[b]));
      d_negs.push_back(to_device(p.negs[b]));
    }
    float *d_grad = nullptr, *d_grad_x = nullptr, *d_row_loss = nullptr, *d_coef = nullptr;
    int32_t* d_term_item = nullptr;
    const int32_t T = 1 + s.negatives + s.ii_k;
    CHECK(cudaMalloc(&d_grad, sizeof(float) * L.total));
    CHECK(cudaMalloc(&d_grad_x, sizeof(float) * size_t(s.items) * D));
    const int32_t chunks3 = cuda::fused_loss_term_chunks(s.batch, T);
    const int64_t loss_entries = s.batch * chunks3;  // the largest of the variants
    CHECK(cudaMalloc(&d_row_loss, sizeof(float) * 2 * loss_entries));
    CHECK(cudaMalloc(&d_coef, sizeof(float) * size_t(s.batch) * T));
    CHECK(cudaMalloc(&d_term_item, sizeof(int32_t) * size_t(s.batch) * T));
    // The loss settings of both the GPU variants and the CPU reference below.
    LossSettings S;
    S.w1 = 1e-6;
    S.w2 = 1;
    S.w3 = 1e-6;
    S.w4 = 1;
    S.neg_weight = 300;
    S.kappa = 2.5;
    auto args_for = [&](int b) {
      cuda::FusedLossArgs a =
          cuda::fused_loss_args(S, D, d_bu, d_bi, d_in, d_iw, s.ii_k, d_users[b], d_items[b],
                                d_negs[b], s.batch, s.negatives);
      a.pt = d_params + L.pt;
      a.pf = s.content ? d_params + L.pf : nullptr;
      a.t = d_params + L.t;
      a.x = d_x;
      a.grad_pt = d_grad + L.pt;
      a.grad_pf = s.content ? d_grad + L.pf : nullptr;
      a.grad_t = d_grad + L.t;
      a.grad_x = s.content ? d_grad_x : nullptr;
      a.row_loss = d_row_loss;
      return a;
    };
    auto chunks_of = [&](int variant) { return variant == 3 ? chunks3 : 1; };
    auto run = [&](int variant, int b) {
      cuda::FusedLossArgs a = args_for(b);
      a.term_chunks = chunks_of(variant);
      if (variant == 1) {
        CHECK(cudaMemsetAsync(d_row_loss, 0, sizeof(float) * 2 * s.batch));
        const int64_t n1 = s.batch * T, n2 = n1 * D;
        v1_terms<<<unsigned((n1 + 255) / 256), 256>>>(a, d_coef, d_term_item);
        v1_scatter<<<unsigned((n2 + 255) / 256), 256>>>(a, d_coef, d_term_item);
        CHECK(cudaGetLastError());
      } else {
        CHECK(cuda::launch_fused_ultragcn_loss(a, 0));
      }
    };
    // CPU reference on batch 0: the content branch's X passed as features with W = I, b = 0 is
    // not expressible, so the reference runs the ID-only layout plus the content dot products by
    // treating [Pt | Pf] and [T | X] as one 2D-wide ID model (the loss is the same function).
    const int32_t Dc = s.content ? 2 * D : D;
    const ParamLayout Lc = ParamLayout::make(s.users, s.items, Dc, 0, false);
    std::vector<float> ref_params(size_t(Lc.total));
    for (int32_t u = 0; u < s.users; ++u) {
      for (int32_t c = 0; c < D; ++c) {
        ref_params[size_t(u) * Dc + c] = p.params[size_t(L.pt) + size_t(u) * D + c];
        if (s.content)
          ref_params[size_t(u) * Dc + D + c] = p.params[size_t(L.pf) + size_t(u) * D + c];
      }
    }
    for (int32_t j = 0; j < s.items; ++j) {
      for (int32_t c = 0; c < D; ++c) {
        ref_params[size_t(Lc.t) + size_t(j) * Dc + c] = p.params[size_t(L.t) + size_t(j) * D + c];
        if (s.content) ref_params[size_t(Lc.t) + size_t(j) * Dc + D + c] = p.x[size_t(j) * D + c];
      }
    }
    LossProblem<float> lp{p.beta_u.data(), p.beta_i.data(), p.ii_n.data(),
                          p.ii_w.data(),   s.ii_k,          nullptr};
    const Batch batch{p.users[0].data(), p.items[0].data(), p.negs[0].data(), s.batch, s.negatives};
    std::vector<float> ref_grad(size_t(Lc.total), 0.f);
    cpu::LossWorkspace<float> ws;
    const LossTerms<float> ref = cpu::ultragcn_loss_grad<float>(Lc, ref_params.data(), lp, batch, S,
                                                                ref_grad.data(), false, ws);
    cudaEvent_t e0, e1;
    CHECK(cudaEventCreate(&e0));
    CHECK(cudaEventCreate(&e1));
    for (int variant = 1; variant <= 3; ++variant) {
      const int64_t entries = s.batch * chunks_of(variant);
      // Validate: the written output poisoned with NaN (the gradients are added to, so they
      // start at zero), then one run on batch 0.
      CHECK(cudaMemset(d_row_loss, 0xff, sizeof(float) * 2 * entries));
      CHECK(cudaMemset(d_grad, 0, sizeof(float) * L.total));
      CHECK(cudaMemset(d_grad_x, 0, sizeof(float) * size_t(s.items) * D));
      run(variant, 0);
      CHECK(cudaDeviceSynchronize());
      std::vector<float> grad(size_t(L.total)), grad_x(size_t(s.items) * D),
          row_loss(size_t(2 * entries));
      CHECK(cudaMemcpy(grad.data(), d_grad, sizeof(float) * L.total, cudaMemcpyDeviceToHost));
      CHECK(cudaMemcpy(grad_x.data(), d_grad_x, sizeof(float) * grad_x.size(),
                       cudaMemcpyDeviceToHost));
      CHECK(cudaMemcpy(row_loss.data(), d_row_loss, sizeof(float) * row_loss.size(),
                       cudaMemcpyDeviceToHost));
      double main = 0, ii = 0;
      for (int64_t r = 0; r < entries; ++r) {
        main += row_loss[size_t(2 * r)];
        ii += row_loss[size_t(2 * r + 1)];
      }
      double err = std::max(
          std::fabs(main - ref.main) / std::fabs(ref.main),
          std::fabs(ii - ref.item_item) / std::max(1e-30, std::fabs(double(ref.item_item))));
      // Gradients: user rows [dPt | dPf] and item rows [dT | dX] against the reference's.
      double diff = 0, scale = 1e-30;
      auto cmp = [&](float got, float want) {
        if (!std::isfinite(got)) diff = INFINITY;
        diff = std::max(diff, std::fabs(double(got) - double(want)));
        scale = std::max(scale, std::fabs(double(want)));
      };
      for (int32_t u = 0; u < s.users; ++u) {
        for (int32_t c = 0; c < D; ++c) {
          cmp(grad[size_t(L.pt) + size_t(u) * D + c], ref_grad[size_t(u) * Dc + c]);
          if (s.content)
            cmp(grad[size_t(L.pf) + size_t(u) * D + c], ref_grad[size_t(u) * Dc + D + c]);
        }
      }
      for (int32_t j = 0; j < s.items; ++j) {
        for (int32_t c = 0; c < D; ++c) {
          cmp(grad[size_t(L.t) + size_t(j) * D + c], ref_grad[size_t(Lc.t) + size_t(j) * Dc + c]);
          if (s.content)
            cmp(grad_x[size_t(j) * D + c], ref_grad[size_t(Lc.t) + size_t(j) * Dc + D + c]);
        }
      }
      err = std::max(err, diff / scale);
      const bool valid = err < 1e-5;
      all_valid &= valid;
      // Time: flush L2, rotate batches, median of reps.
      std::vector<float> ms;
      for (int r = 0; r < reps; ++r) {
        CHECK(cudaMemsetAsync(flush, r & 0xff, flush_bytes));
        CHECK(cudaEventRecord(e0));
        run(variant, r % n_batches);
        CHECK(cudaEventRecord(e1));
        CHECK(cudaEventSynchronize(e1));
        float t = 0;
        CHECK(cudaEventElapsedTime(&t, e0, e1));
        ms.push_back(t);
      }
      std::sort(ms.begin(), ms.end());
      const double med_s = ms[ms.size() / 2] * 1e-3;
      const double gbs = floor_bytes(s) / med_s / 1e9;
      std::printf("%-28s v%-7d %10.1f %10.0f %8.0f%% %8s %.2e\n", s.name, variant, med_s * 1e6, gbs,
                  100.0 * gbs / copy_gbs, valid ? "yes" : "NO", err);
      if (json) {
        std::fprintf(
            json,
            "%s  {\"lab\": \"ultragcn_loss\", \"shape\": \"%s\", \"variant\": %d, "
            "\"term_chunks\": %d, \"median_us\": %.2f, \"floor_bytes\": %.0f, \"gbs\": %.1f, "
            "\"copy_gbs\": %.1f, \"valid\": %s, \"max_err\": %.3e}",
            first_json ? "" : ",\n", s.name, variant, chunks_of(variant), med_s * 1e6,
            floor_bytes(s), gbs, copy_gbs, valid ? "true" : "false", err);
        first_json = false;
      }
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    for (void* ptr :
         {(void*)d_params, (void*)d_x, (void*)d_bu, (void*)d_bi, (void*)d_iw, (void*)d_in,
          (void*)d_grad, (void*)d_grad_x, (void*)d_row_loss, (void*)d_coef, (void*)d_term_item}) {
      cudaFree(ptr);
    }
    for (int b = 0; b < n_batches; ++b) {
      cudaFree(d_users[b]);
      cudaFree(d_items[b]);
      cudaFree(d_negs[b]);
    }
  }
  cudaFree(flush);
  if (json) {
    std::fprintf(json, "\n]\n");
    std::fclose(json);
  }
  if (!all_valid) {
    std::printf("\nFAILED: a variant does not match the CPU reference\n");
    return 1;
  }
  return 0;
}
