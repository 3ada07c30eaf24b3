// The CUDA kernels' own code (kernels/*.cu) compiled once by g++ against the host emulation
// (include/painvrl/cuda/emulation.h), into namespace painvrl::cuda_emulated, for the tests that
// run them on the CPU (tests/kernel_emulation_test.cpp, tests/mask_kernel_emulation_test.cpp).
#define PAINVRL_KERNEL_EMULATION 1
#include "../kernels/adam.cu"
#include "../kernels/mask_step.cu"
#include "../kernels/sampling.cu"
#include "../kernels/topk.cu"
#include "../kernels/ultragcn_loss.cu"
