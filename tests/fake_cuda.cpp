// The fake CUDA device of tests/fake_cuda.h: definitions of the CUDA runtime calls that
// kernels/*.cpp, kernels/device_support.h and the launch stubs nvcc generates make. Linked into
// the test program itself, they take precedence over libcudart's for every call from the program
// and its static libraries (libcudart's own internal calls are unaffected). Calls not defined
// here go to the real runtime, which fails without a device: a test that needs one more call
// fails naming it rather than passing silently.
#include "fake_cuda.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "device_support.h"

namespace painvrl::test::fake_cuda {
namespace {

struct State {
  std::mutex mu;
  std::map<void*, size_t> blocks;  // live allocations
  int64_t live = 0, peak = 0, launches = 0;
  int64_t free_bytes = int64_t(140) << 30;
};
State& state() {
  static State s;
  return s;
}

// cuBLAS: a handle that is never dereferenced, calls that succeed and compute nothing.
int g_handle_storage = 0;
cublasStatus_t fake_create(cublasHandle_t* h) {
  *h = reinterpret_cast<cublasHandle_t>(&g_handle_storage);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t fake_destroy(cublasHandle_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t fake_set_stream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t fake_set_math_mode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t fake_sgemm(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                          const float*, const float*, int, const float*, int, const float*, float*,
                          int) {
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t fake_sgemv(cublasHandle_t, cublasOperation_t, int, int, const float*, const float*,
                          int, const float*, int, const float*, float*, int) {
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t fake_dgemm(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                          const double*, const double*, int, const double*, int, const double*,
                          double*, int) {
  return CUBLAS_STATUS_SUCCESS;
}
const char* fake_status_string(cublasStatus_t) { return "fake cuBLAS status"; }

const cuda::CublasApi g_fake_cublas = {fake_create,        fake_destroy,      fake_set_stream,
                                       fake_set_math_mode, fake_sgemm,        fake_sgemv,
                                       fake_dgemm,         fake_status_string};

}  // namespace

void install() { cuda::cublas_api_override() = &g_fake_cublas; }
int64_t live_bytes() {
  std::lock_guard<std::mutex> lock(state().mu);
  return state().live;
}
int64_t peak_bytes() {
  std::lock_guard<std::mutex> lock(state().mu);
  return state().peak;
}
void reset_peak() {
  std::lock_guard<std::mutex> lock(state().mu);
  state().peak = state().live;
}
int64_t launches() {
  std::lock_guard<std::mutex> lock(state().mu);
  return state().launches;
}
void set_free_bytes(int64_t bytes) {
  std::lock_guard<std::mutex> lock(state().mu);
  state().free_bytes = bytes;
}

}  // namespace painvrl::test::fake_cuda

using painvrl::test::fake_cuda::state;

// ---- memory ------------------------------------------------------------------------------------
cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  void* p = std::calloc(1, bytes == 0 ? 1 : bytes);  // zeroed: a no-op kernel leaves zeros
  if (!p) return cudaErrorMemoryAllocation;
  std::lock_guard<std::mutex> lock(state().mu);
  state().blocks[p] = bytes;
  state().live += int64_t(bytes);
  state().peak = std::max(state().peak, state().live);
  *ptr = p;
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  if (!ptr) return cudaSuccess;
  std::lock_guard<std::mutex> lock(state().mu);
  const auto it = state().blocks.find(ptr);
  if (it == state().blocks.end()) return cudaErrorInvalidValue;
  state().live -= int64_t(it->second);
  state().blocks.erase(it);
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  std::lock_guard<std::mutex> lock(state().mu);
  *free_bytes = size_t(std::max<int64_t>(state().free_bytes - state().live, 0));
  *total_bytes = size_t(141) << 30;
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind,
                            cudaStream_t) {
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch,
                              size_t width, size_t height, cudaMemcpyKind, cudaStream_t) {
  for (size_t r = 0; r < height; ++r) {
    std::memmove(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch,
                 width);
  }
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) {
  if (bytes) std::memset(ptr, value, bytes);
  return cudaSuccess;
}

// ---- device, streams, errors -------------------------------------------------------------------
cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int) {
  std::memset(prop, 0, sizeof(*prop));
  std::strncpy(prop->name, "fake H200 (tests/fake_cuda.cpp)", sizeof(prop->name) - 1);
  prop->major = 9;
  prop->minor = 0;
  prop->totalGlobalMem = size_t(141) << 30;
  prop->multiProcessorCount = 132;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsPerMultiProcessor = 2048;
  prop->sharedMemPerBlock = 48 << 10;
  prop->sharedMemPerBlockOptin = 227 << 10;
  prop->sharedMemPerMultiprocessor = 228 << 10;
  prop->regsPerBlock = 65536;
  prop->regsPerMultiprocessor = 65536;
  prop->l2CacheSize = 50 << 20;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor:
      *value = 9;
      break;
    case cudaDevAttrComputeCapabilityMinor:
      *value = 0;
      break;
    case cudaDevAttrMultiProcessorCount:
      *value = 132;
      break;
    case cudaDevAttrWarpSize:
      *value = 32;
      break;
    case cudaDevAttrMaxThreadsPerBlock:
      *value = 1024;
      break;
    case cudaDevAttrMaxThreadsPerMultiProcessor:
      *value = 2048;
      break;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = 48 << 10;
      break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = 227 << 10;
      break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
      *value = 228 << 10;
      break;
    case cudaDevAttrMaxRegistersPerBlock:
      *value = 65536;
      break;
    case cudaDevAttrMaxGridDimX:
      *value = 2147483647;
      break;
    case cudaDevAttrMaxGridDimY:
    case cudaDevAttrMaxGridDimZ:
      *value = 65535;
      break;
    case cudaDevAttrL2CacheSize:
      *value = 50 << 20;
      break;
    default:
      *value = 0;
      break;
  }
  return cudaSuccess;
}
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, const void*) {
  std::memset(attr, 0, sizeof(*attr));
  attr->ptxVersion = 90;
  attr->binaryVersion = 90;
  attr->maxThreadsPerBlock = 1024;
  attr->numRegs = 32;
  return cudaSuccess;
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void*, int, size_t) {
  *blocks = 2;
  return cudaSuccess;
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* blocks, const void*, int,
                                                                   size_t, unsigned int) {
  *blocks = 2;
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  static int storage = 0;
  *stream = reinterpret_cast<cudaStream_t>(&storage);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaGetLastError() { return cudaSuccess; }
cudaError_t cudaPeekAtLastError() { return cudaSuccess; }

// ---- launches (the stubs nvcc generates for <<<...>>>) -----------------------------------------
extern "C" unsigned __cudaPushCallConfiguration(dim3, dim3, size_t, CUstream_st*) { return 0; }
extern "C" cudaError_t __cudaPopCallConfiguration(dim3* grid, dim3* block, size_t* shared,
                                                  void* stream) {
  *grid = dim3(1);
  *block = dim3(1);
  *shared = 0;
  *static_cast<cudaStream_t*>(stream) = nullptr;
  return cudaSuccess;
}
extern "C" cudaError_t __cudaGetKernel(cudaKernel_t* kernel, const void* func) {
  *kernel = reinterpret_cast<cudaKernel_t>(const_cast<void*>(func));
  return cudaSuccess;
}
extern "C" cudaError_t __cudaLaunchKernel(cudaKernel_t, dim3, dim3, void**, size_t, cudaStream_t) {
  std::lock_guard<std::mutex> lock(state().mu);
  ++state().launches;
  return cudaSuccess;
}
cudaError_t cudaLaunchKernel(const void*, dim3, dim3, void**, size_t, cudaStream_t) {
  std::lock_guard<std::mutex> lock(state().mu);
  ++state().launches;
  return cudaSuccess;
}
