// A fake CUDA device for tests of the CUDA backend's host code on machines without a GPU
// (tests/fake_cuda.cpp). The test program defines the CUDA runtime calls the backend makes, so
// that they resolve to these definitions instead of libcudart's: device memory is host memory,
// counted (live bytes and their peak); streams and copies are immediate; kernel launches are
// counted and do nothing; cuBLAS is replaced through cublas_api_override() and does nothing.
// CUB's temporary-storage queries run CUB's own host code against the fake device's attributes
// (an H200's: sm_90, 132 SMs). What it proves: what the host code allocates, in which order,
// and what it does when memory is short. What it cannot prove: anything a kernel computes.
#pragma once

#include <cstdint>

namespace painvrl::test::fake_cuda {

// Installs the fake cuBLAS (idempotent); call before the first CUDA backend object is made.
void install();

int64_t live_bytes();  // allocated and not yet freed
int64_t peak_bytes();  // the largest live_bytes since the last reset_peak()
void reset_peak();     // peak := live
int64_t launches();    // kernel launches so far

// What cudaMemGetInfo reports as free (default 140 GiB).
void set_free_bytes(int64_t bytes);

}  // namespace painvrl::test::fake_cuda
