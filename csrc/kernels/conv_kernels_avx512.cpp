// AVX-512 build of the direct-convolution kernels (conv_kernels_impl.h): the same 8-float
// vectors, but 32 vector registers, so a wider pixel block; reached only through
// conv_kernels_for_cpu() after the CPU check.
#define CR_TARGET avx512
#define CR_CONV_PIXELS 12  // 12 accumulators of the 32 ymm registers
#include "kernels/conv_kernels_impl.h"
