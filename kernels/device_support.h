// What the CUDA backend's host files (kernels/cuda_backend.cpp, kernels/cuda_mask.cpp) share:
// the checked-call macros, cuBLAS loaded at first use, a growing device array, and a stream with
// its cuBLAS handle. Private to kernels/.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "painvrl/cuda/backend.h"
#include "painvrl/cuda/kernels.h"

namespace painvrl::cuda {

// PAINVRL_CUDA_SYNC=1 (diagnosis): every checked call is followed by a device synchronisation,
// so that an asynchronous fault is reported at the launch that caused it, not at a later call.
inline bool cuda_sync_mode() {
  static const bool on = [] {
    const char* v = std::getenv("PAINVRL_CUDA_SYNC");
    return v != nullptr && v[0] != '\0' && v[0] != '0';
  }();
  return on;
}

// Every runtime, launcher and cuBLAS call is checked; the message names the call (for a launch,
// the kernel's launcher) and where it was made.
#define PAINVRL_CUDA_CHECK(call)                                                            \
  do {                                                                                      \
    const cudaError_t err_ = (call);                                                        \
    if (err_ != cudaSuccess) {                                                              \
      throw std::runtime_error(fmt::format("CUDA error in {} ({}:{}): {}", #call, __FILE__, \
                                           __LINE__, cudaGetErrorString(err_)));            \
    }                                                                                       \
    if (::painvrl::cuda::cuda_sync_mode()) {                                                \
      const cudaError_t sync_ = cudaDeviceSynchronize();                                    \
      if (sync_ != cudaSuccess) {                                                           \
        throw std::runtime_error(                                                           \
            fmt::format("CUDA error after {} ({}:{}; PAINVRL_CUDA_SYNC): "                  \
                        "{}",                                                               \
                        #call, __FILE__, __LINE__, cudaGetErrorString(sync_)));             \
      }                                                                                     \
    }                                                                                       \
  } while (0)
#define PAINVRL_CUBLAS_CHECK(call)                                                            \
  do {                                                                                        \
    const cublasStatus_t st_ = (call);                                                        \
    if (st_ != CUBLAS_STATUS_SUCCESS) {                                                       \
      throw std::runtime_error(fmt::format("cuBLAS error in {} ({}:{}): {}", #call, __FILE__, \
                                           __LINE__, cublas_api().status_string(st_)));       \
    }                                                                                         \
  } while (0)

// cuBLAS, loaded when the CUDA backend is first used rather than linked: a program linked to it
// maps libcublas and libcublasLt at start, which made every run, CPU ones included, about 150 to
// 190 MiB larger in resident memory (Resources.EstimateIsCloseToTheMeasuredPeak failed on it).
struct CublasApi {
  decltype(&::cublasCreate_v2) create;
  decltype(&::cublasDestroy_v2) destroy;
  decltype(&::cublasSetStream_v2) set_stream;
  decltype(&::cublasSetMathMode) set_math_mode;
  decltype(&::cublasSgemm_v2) sgemm;
  decltype(&::cublasSgemv_v2) sgemv;
  decltype(&::cublasDgemm_v2) dgemm;
  decltype(&::cublasGetStatusString) status_string;
};

// Tests without a GPU put a fake cuBLAS here (tests/fake_cuda.cpp); null: the library's.
inline const CublasApi*& cublas_api_override() {
  static const CublasApi* api = nullptr;
  return api;
}

inline const CublasApi& cublas_api() {
  if (const CublasApi* fake = cublas_api_override()) return *fake;
  static const CublasApi api = [] {
    const std::string soname = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
    void* lib = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      throw std::runtime_error(fmt::format("the CUDA backend needs {}: {}", soname, dlerror()));
    }
    auto sym = [&](const char* name) {
      void* p = dlsym(lib, name);
      if (!p) throw std::runtime_error(fmt::format("{}: no symbol {}", soname, name));
      return p;
    };
    CublasApi a;
    a.create = reinterpret_cast<decltype(a.create)>(sym("cublasCreate_v2"));
    a.destroy = reinterpret_cast<decltype(a.destroy)>(sym("cublasDestroy_v2"));
    a.set_stream = reinterpret_cast<decltype(a.set_stream)>(sym("cublasSetStream_v2"));
    a.set_math_mode = reinterpret_cast<decltype(a.set_math_mode)>(sym("cublasSetMathMode"));
    a.sgemm = reinterpret_cast<decltype(a.sgemm)>(sym("cublasSgemm_v2"));
    a.sgemv = reinterpret_cast<decltype(a.sgemv)>(sym("cublasSgemv_v2"));
    a.dgemm = reinterpret_cast<decltype(a.dgemm)>(sym("cublasDgemm_v2"));
    a.status_string = reinterpret_cast<decltype(a.status_string)>(sym("cublasGetStatusString"));
    return a;
  }();
  return api;
}

// A device array that only grows; freed with its owner.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(ptr_); }
  void reserve(int64_t n) {
    if (n <= capacity_) return;
    cudaFree(ptr_);
    ptr_ = nullptr;
    capacity_ = 0;
    PAINVRL_CUDA_CHECK(cudaMalloc(&ptr_, sizeof(T) * size_t(std::max<int64_t>(n, 1))));
    capacity_ = n;
  }
  void upload(const T* host, int64_t n, cudaStream_t stream) {
    reserve(n);
    if (n > 0) {
      PAINVRL_CUDA_CHECK(
          cudaMemcpyAsync(ptr_, host, sizeof(T) * size_t(n), cudaMemcpyHostToDevice, stream));
    }
  }
  void upload(const std::vector<T>& host, cudaStream_t stream) {
    upload(host.data(), int64_t(host.size()), stream);
  }
  void download(T* host, int64_t n, cudaStream_t stream) const {
    if (n > 0) {
      PAINVRL_CUDA_CHECK(
          cudaMemcpyAsync(host, ptr_, sizeof(T) * size_t(n), cudaMemcpyDeviceToHost, stream));
    }
  }
  void zero(int64_t n, cudaStream_t stream) {
    if (n > 0) PAINVRL_CUDA_CHECK(cudaMemsetAsync(ptr_, 0, sizeof(T) * size_t(n), stream));
  }
  T* data() { return ptr_; }
  const T* data() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  int64_t capacity_ = 0;
};

// Owns a stream and a cuBLAS handle bound to it.
class StreamContext {
 public:
  // tf32: cuBLAS may run fp32 GEMMs on TF32 tensor cores (CUBLAS_TF32_TENSOR_OP_MATH); otherwise
  // full fp32 (CUBLAS_DEFAULT_MATH). The mask step's DGEMMs are unaffected either way.
  explicit StreamContext(bool tf32 = false) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
      cudaGetLastError();
      throw std::runtime_error("the CUDA backend found no usable GPU");
    }
    PAINVRL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    PAINVRL_CUBLAS_CHECK(cublas_api().create(&cublas_));
    PAINVRL_CUBLAS_CHECK(cublas_api().set_stream(cublas_, stream_));
    PAINVRL_CUBLAS_CHECK(cublas_api().set_math_mode(
        cublas_, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  }
  StreamContext(const StreamContext&) = delete;
  StreamContext& operator=(const StreamContext&) = delete;
  ~StreamContext() {
    if (cublas_) cublas_api().destroy(cublas_);
    if (stream_) cudaStreamDestroy(stream_);
  }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  void sync() const { PAINVRL_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
};

// CUB's stable radix sort of (key, value) pairs (kernels/sort.cu); temp null: sets temp_bytes.
cudaError_t sort_pairs_stable(void* temp, size_t& temp_bytes, const int32_t* keys_in,
                              int32_t* keys_out, const int32_t* vals_in, int32_t* vals_out,
                              int64_t n, cudaStream_t stream);

// CUB's storage for a stable sort of up to max_n pairs (its own size query; nothing runs).
inline int64_t sort_temp_bytes(int64_t max_n, cudaStream_t stream) {
  size_t bytes = 0;
  PAINVRL_CUDA_CHECK(
      sort_pairs_stable(nullptr, bytes, nullptr, nullptr, nullptr, nullptr, max_n, stream));
  return int64_t(bytes);
}

// Refuses work whose device memory estimate (backend.h) exceeds the free memory, before it
// allocates; `what` names the work, `advice` what to change. The estimates count the bytes asked
// for; kRoundingAllowance (backend.h) covers the device allocator's rounding.
inline void check_device_fits(int64_t bytes, const char* what, const char* advice) {
  size_t free_bytes = 0, total_bytes = 0;
  PAINVRL_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (bytes + kRoundingAllowance > int64_t(free_bytes)) {
    throw std::runtime_error(fmt::format(
        "{} needs about {:.2f} GiB of device memory and {:.2f} GiB is free; {}, or run on the "
        "CPU (--device cpu)",
        what, double(bytes) / (1 << 30), double(free_bytes) / (1 << 30), advice));
  }
}

// A DeviceSortPairs (kernels.h) on `stream` for up to max_n pairs, its storage grown once in temp.
inline DeviceSortPairs stable_sort_on(cudaStream_t stream, DeviceBuffer<char>& temp,
                                      int64_t max_n) {
  size_t bytes = 0;
  PAINVRL_CUDA_CHECK(
      sort_pairs_stable(nullptr, bytes, nullptr, nullptr, nullptr, nullptr, max_n, stream));
  temp.reserve(int64_t(bytes));
  char* storage = temp.data();
  return [storage, bytes, stream](const int32_t* kin, int32_t* kout, const int32_t* vin,
                                  int32_t* vout, int64_t n) {
    size_t b = bytes;
    return sort_pairs_stable(storage, b, kin, kout, vin, vout, n, stream);
  };
}

}  // namespace painvrl::cuda
