// Host emulation of the CUDA features the kernels in kernels/*.cu use, so that CPU tests run the
// kernels' own code (tests/kernel_emulation_test.cpp, compiled by g++ with
// PAINVRL_KERNEL_EMULATION defined before it includes a .cu file). A launch runs its blocks one
// after another; the threads of a block are fibers (ucontext) on the calling thread, switched
// only at barriers, so __syncthreads, warp shuffles and atomics behave as on the device for
// code that synchronises as CUDA requires, deterministically. Emulated: threadIdx, blockIdx,
// blockDim, gridDim (x only), __syncthreads, __shfl_xor_sync, atomicAdd, __shared__ (one copy,
// shared by the block being run), cub::BlockReduce::Sum (valid in thread 0, as CUB's), the launch
// (PAINVRL_LAUNCH) and cudaGetLastError. Not emulated: anything else; "device" pointers are host
// pointers. It proves the kernels' indexing, reductions and synchronisation logic, not their
// speed or the hardware's memory model.
#pragma once
#ifndef PAINVRL_KERNEL_EMULATION
#error "emulation.h is for PAINVRL_KERNEL_EMULATION builds (tests) only"
#endif
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <vector>

using std::isfinite;
using std::isnan;

// ---- the CUDA runtime types the launchers use -------------------------------------------------
using cudaError_t = int;
using cudaStream_t = void*;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidValue = 1;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

namespace painvrl::emu {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// The running thread's coordinates (one OS thread runs every fiber; the scheduler sets them).
inline Dim3 thread_idx, block_idx, block_dim, grid_dim;

class BlockRunner {
 public:
  static BlockRunner& instance() {
    static BlockRunner runner;
    return runner;
  }

  // Runs body() as `threads` fibers of block `block`; returns when all have returned.
  void run_block(unsigned threads, const std::function<void()>& body) {
    body_ = &body;
    fibers_.resize(threads);
    const unsigned warps = (threads + 31) / 32;
    warp_live_.assign(warps, 0);
    warp_arrived_.assign(warps, 0);
    warp_generation_.assign(warps, 0);
    warp_slots_.assign(size_t(warps) * 32, 0);
    block_live_ = threads;
    block_arrived_ = 0;
    block_generation_ = 0;
    for (unsigned t = 0; t < threads; ++t) {
      Fiber& f = fibers_[t];
      f.done = false;
      f.stack.resize(kStackBytes);
      ++warp_live_[t / 32];
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack.data();
      f.context.uc_stack.ss_size = f.stack.size();
      f.context.uc_link = &scheduler_;
      makecontext(&f.context, &BlockRunner::entry, 0);
    }
    unsigned remaining = threads;
    while (remaining > 0) {
      const uint64_t before = progress_;
      for (unsigned t = 0; t < threads; ++t) {
        Fiber& f = fibers_[t];
        if (f.done) continue;
        current_ = t;
        thread_idx = Dim3{t, 0, 0};
        swapcontext(&scheduler_, &f.context);
        if (f.done) --remaining;
      }
      // A sweep in which no thread arrived at a barrier, passed one or returned: every live
      // thread waits on a barrier that the others will never reach (a hang on the device).
      if (remaining > 0 && progress_ == before) {
        throw std::logic_error("emulation: the block's threads wait on barriers that cannot open");
      }
    }
  }

  // __syncthreads (warp = false) or a warp-wide barrier (warp = true).
  void barrier(bool warp) {
    const unsigned w = current_ / 32;
    unsigned& arrived = warp ? warp_arrived_[w] : block_arrived_;
    unsigned& generation = warp ? warp_generation_[w] : block_generation_;
    const unsigned live = warp ? warp_live_[w] : block_live_;
    const unsigned mine = generation;
    ++progress_;
    if (++arrived == live) {
      arrived = 0;
      ++generation;
      return;
    }
    while (generation == mine) yield();
  }

  uint64_t& warp_slot(unsigned lane_of_warp) {
    return warp_slots_[size_t(current_ / 32) * 32 + lane_of_warp];
  }
  unsigned lane() const { return current_ % 32; }

 private:
  static constexpr size_t kStackBytes = 64 * 1024;
  struct Fiber {
    ucontext_t context;
    std::vector<char> stack;
    bool done = false;
  };

  static void entry() {
    BlockRunner& r = instance();
    (*r.body_)();
    r.finish_current();
  }

  // A returned thread no longer counts towards its barriers (as an exited thread on the device).
  void finish_current() {
    const unsigned w = current_ / 32;
    fibers_[current_].done = true;
    ++progress_;
    --warp_live_[w];
    --block_live_;
    if (warp_arrived_[w] > 0 && warp_arrived_[w] == warp_live_[w]) {
      warp_arrived_[w] = 0;
      ++warp_generation_[w];
    }
    if (block_arrived_ > 0 && block_arrived_ == block_live_) {
      block_arrived_ = 0;
      ++block_generation_;
    }
  }

  void yield() {
    thread_idx = Dim3{current_, 0, 0};
    const unsigned me = current_;
    swapcontext(&fibers_[me].context, &scheduler_);
    current_ = me;
    thread_idx = Dim3{me, 0, 0};
  }

  const std::function<void()>* body_ = nullptr;
  ucontext_t scheduler_{};
  std::vector<Fiber> fibers_;
  unsigned current_ = 0;
  std::vector<unsigned> warp_live_, warp_arrived_, warp_generation_;
  std::vector<uint64_t> warp_slots_;
  unsigned block_live_ = 0, block_arrived_ = 0, block_generation_ = 0;
  uint64_t progress_ = 0;  // barrier arrivals and returned threads, for the hang check
};

inline cudaError_t& last_error() {
  static cudaError_t error = cudaSuccess;
  return error;
}

// kernel<<<grid, block>>>(...) with a 1-D grid and block, run to completion.
template <class Body>
void launch(int64_t grid, int64_t block, Body&& body) {
  if (grid <= 0 || block <= 0 || block > 1024) {
    last_error() = cudaErrorInvalidValue;
    return;
  }
  grid_dim = Dim3{unsigned(grid), 1, 1};
  block_dim = Dim3{unsigned(block), 1, 1};
  const std::function<void()> fn = body;
  for (int64_t b = 0; b < grid; ++b) {
    block_idx = Dim3{unsigned(b), 1, 1};
    BlockRunner::instance().run_block(unsigned(block), fn);
  }
}

}  // namespace painvrl::emu

#define threadIdx (::painvrl::emu::thread_idx)
#define blockIdx (::painvrl::emu::block_idx)
#define blockDim (::painvrl::emu::block_dim)
#define gridDim (::painvrl::emu::grid_dim)
#define PAINVRL_LAUNCH(kernel, grid, block, stream, ...) \
  ::painvrl::emu::launch(int64_t(grid), int64_t(block), [&] { kernel(__VA_ARGS__); })

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = ::painvrl::emu::last_error();
  ::painvrl::emu::last_error() = cudaSuccess;
  return e;
}

inline void __syncthreads() { ::painvrl::emu::BlockRunner::instance().barrier(false); }

template <class T>
T __shfl_xor_sync(unsigned /*mask*/, T value, int lane_mask) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "emulated shuffles move up to 8 bytes");
  auto& runner = ::painvrl::emu::BlockRunner::instance();
  const unsigned lane = runner.lane();
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  runner.warp_slot(lane) = bits;
  runner.barrier(true);
  const uint64_t other = runner.warp_slot(lane ^ unsigned(lane_mask));
  runner.barrier(true);
  T out;
  std::memcpy(&out, &other, sizeof(T));
  return out;
}

template <class T>
T atomicAdd(T* address, T value) {  // one OS thread: a plain read-modify-write is atomic
  const T old = *address;
  *address = old + value;
  return old;
}

namespace cub {
// The part of cub::BlockReduce the kernels use: Sum, whose result is valid in thread 0.
template <class T, int kThreads>
class BlockReduce {
 public:
  struct TempStorage {
    T slot[kThreads];
  };
  explicit BlockReduce(TempStorage& storage) : storage_(storage) {}
  T Sum(T value) {
    const unsigned t = threadIdx.x;
    storage_.slot[t] = value;
    __syncthreads();
    if (t != 0) return value;
    T total = storage_.slot[0];
    for (unsigned k = 1; k < blockDim.x; ++k) total += storage_.slot[k];
    return total;
  }

 private:
  TempStorage& storage_;
};
}  // namespace cub
