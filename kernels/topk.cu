// Full-ranking evaluation on the device (DESIGN.md "Evaluation"; host/pipeline/evaluate.cpp is the
// CPU path): per block of users, after the scoring GEMM, the training items (and, in the cold-item
// protocol, the non-candidates, and any NaN score) are set to -inf, and each user's top k items are
// selected in the CPU's order: score descending, ties towards the smaller item id
// (std::partial_sort with that comparator). Two selections, the same lists:
//   one pass (k <= kListMax, what launch_top_k uses): every thread reads its strided share of the
//     row once, keeping its own k best in order (a short list in registers / L1-resident local
//     memory), then k rounds of a block-wide arg-max over the threads' list heads, the winner's
//     head advancing; the row is read once (n_items * 4 B);
//   rounds (launch_top_k_rounds, any k; the first version): k rounds of a block-wide arg-max over
//     the items still worse than the previous pick, each reading the whole row (k * n_items * 4 B,
//     from L1/L2: a 5,986-item row is 24 KB; at 85k items and k = 20, 6.8 MB a user).
// Both handle ties and -inf exactly as the CPU does. Bytes: the exclusion writes 4 B per training
// pair of the block's users and reads every score once (NaN and candidates); ranked: k ids.
#include <cmath>

#include "painvrl/cuda/kernels.h"

namespace painvrl::PAINVRL_KERNEL_NS {
namespace {

constexpr int kExcludeThreads = 256;
#ifdef PAINVRL_KERNEL_EMULATION
constexpr int kTopKThreads = 64;  // the emulated tests' fibers; the code strides by blockDim
#else
constexpr int kTopKThreads = 256;
#endif

__global__ void __launch_bounds__(kExcludeThreads)
    exclude_kernel(const int64_t* offsets, const int32_t* items, const int32_t* users,
                   int32_t n_items, const uint8_t* candidates, float* scores) {
  const int64_t r = blockIdx.x;
  const int32_t u = users[r];
  float* row = scores + r * n_items;
  const float neg_inf = -INFINITY;
  for (int64_t p = offsets[u] + threadIdx.x; p < offsets[u + 1]; p += blockDim.x) {
    row[items[p]] = neg_inf;
  }
  // Not-a-number scores rank as -inf (host_ranker does the same): the order stays total.
  for (int32_t j = threadIdx.x; j < n_items; j += blockDim.x) {
    if ((candidates && !candidates[j]) || isnan(row[j])) row[j] = neg_inf;
  }
}

// (score, item) a ranks before b: higher score, then smaller item id.
__device__ __forceinline__ bool ranks_before(float sa, int32_t ja, float sb, int32_t jb) {
  return sa != sb ? sa > sb : ja < jb;
}

// The block-wide best of each thread's candidate (s, j) (j < 0: none), the same in every thread.
__device__ __forceinline__ void block_best(float& best_s, int32_t& best_j, float* warp_score,
                                           int32_t* warp_item) {
  const int warps = int(blockDim.x + 31) / 32;
  for (int lane_mask = 16; lane_mask > 0; lane_mask >>= 1) {
    const float os = __shfl_xor_sync(0xffffffffu, best_s, lane_mask);
    const int32_t oj = __shfl_xor_sync(0xffffffffu, best_j, lane_mask);
    if (oj >= 0 && (best_j < 0 || ranks_before(os, oj, best_s, best_j))) {
      best_s = os;
      best_j = oj;
    }
  }
  if (threadIdx.x % 32 == 0) {
    warp_score[threadIdx.x / 32] = best_s;
    warp_item[threadIdx.x / 32] = best_j;
  }
  __syncthreads();
  best_j = -1;
  for (int w = 0; w < warps; ++w) {
    const int32_t oj = warp_item[w];
    if (oj >= 0 && (best_j < 0 || ranks_before(warp_score[w], oj, best_s, best_j))) {
      best_s = warp_score[w];
      best_j = oj;
    }
  }
  __syncthreads();  // warp_* free for the next call
}

__global__ void __launch_bounds__(kTopKThreads)
    top_k_kernel(const float* scores, int32_t n_items, int32_t k, int32_t* ranked) {
  __shared__ float warp_score[kTopKThreads / 32];
  __shared__ int32_t warp_item[kTopKThreads / 32];
  const int64_t r = blockIdx.x;
  const float* row = scores + r * n_items;
  float prev_s = 0;
  int32_t prev_j = -1;  // none picked yet
  for (int32_t round = 0; round < k; ++round) {
    float best_s = 0;
    int32_t best_j = -1;
    for (int32_t j = threadIdx.x; j < n_items; j += blockDim.x) {
      const float s = row[j];
      if (prev_j >= 0 && !ranks_before(prev_s, prev_j, s, j)) continue;  // picked already
      if (best_j < 0 || ranks_before(s, j, best_s, best_j)) {
        best_s = s;
        best_j = j;
      }
    }
    block_best(best_s, best_j, warp_score, warp_item);
    if (threadIdx.x == 0) ranked[r * k + round] = best_j;  // -1 only if k > n_items
    prev_s = best_s;
    prev_j = best_j;
  }
}

constexpr int kListMax = 32;  // the one-pass selection's longest per-thread list

__global__ void __launch_bounds__(kTopKThreads)
    top_k_one_pass_kernel(const float* scores, int32_t n_items, int32_t k, int32_t* ranked) {
  __shared__ float warp_score[kTopKThreads / 32];
  __shared__ int32_t warp_item[kTopKThreads / 32];
  const int64_t r = blockIdx.x;
  const float* row = scores + r * n_items;
  // This thread's best min(k, its share) items of j = threadIdx.x, + blockDim.x, ..., in order.
  float list_s[kListMax];
  int32_t list_j[kListMax];
  int32_t held = 0;
  for (int32_t j = threadIdx.x; j < n_items; j += blockDim.x) {
    const float s = row[j];
    if (held == k && !ranks_before(s, j, list_s[k - 1], list_j[k - 1])) continue;
    int32_t at = held < k ? held++ : k - 1;  // the slot freed at the end
    while (at > 0 && ranks_before(s, j, list_s[at - 1], list_j[at - 1])) {
      list_s[at] = list_s[at - 1];
      list_j[at] = list_j[at - 1];
      --at;
    }
    list_s[at] = s;
    list_j[at] = j;
  }
  int32_t next = 0;  // this thread's first item not yet ranked
  for (int32_t round = 0; round < k; ++round) {
    float best_s = next < held ? list_s[next] : 0.0f;
    int32_t best_j = next < held ? list_j[next] : -1;
    block_best(best_s, best_j, warp_score, warp_item);
    if (best_j >= 0 && best_j % int32_t(blockDim.x) == int32_t(threadIdx.x)) ++next;  // its owner
    if (threadIdx.x == 0) ranked[r * k + round] = best_j;
  }
}

}  // namespace

cudaError_t launch_exclude_items(const int64_t* offsets, const int32_t* items, const int32_t* users,
                                 int64_t count, int32_t n_items, const uint8_t* candidates,
                                 float* scores, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  PAINVRL_LAUNCH(exclude_kernel, count, kExcludeThreads, stream, offsets, items, users, n_items,
                 candidates, scores);
  return cudaGetLastError();
}

cudaError_t launch_top_k_rounds(const float* scores, int64_t count, int32_t n_items, int32_t k,
                                int32_t* ranked, cudaStream_t stream) {
  if (k <= 0 || k > n_items) return cudaErrorInvalidValue;
  if (count <= 0) return cudaSuccess;
  PAINVRL_LAUNCH(top_k_kernel, count, kTopKThreads, stream, scores, n_items, k, ranked);
  return cudaGetLastError();
}

cudaError_t launch_top_k(const float* scores, int64_t count, int32_t n_items, int32_t k,
                         int32_t* ranked, cudaStream_t stream) {
  if (k <= 0 || k > n_items) return cudaErrorInvalidValue;
  if (count <= 0) return cudaSuccess;
  if (k > kListMax) return launch_top_k_rounds(scores, count, n_items, k, ranked, stream);
  PAINVRL_LAUNCH(top_k_one_pass_kernel, count, kTopKThreads, stream, scores, n_items, k, ranked);
  return cudaGetLastError();
}

}  // namespace painvrl::PAINVRL_KERNEL_NS
