// Shared macros for the formula headers in painvrl/math/: every formula is written once as
// __host__ __device__ code, compiled by g++ for the CPU backend and tests and by nvcc for kernels.
#pragma once

#if defined(__CUDACC__)
#define PAINVRL_HD __host__ __device__ __forceinline__
#else
#define PAINVRL_HD inline
#endif

#include <cmath>
#include <cstdint>
