// AVX-512 build of the direct-convolution kernels (conv_kernels_impl.h): the same 8-float
// vectors, but 32 vector registers, so a wider pixel block; reached only through
// conv_kernels_for_cpu() after the CPU check.
#define CR_TARGET avx512
#define CR_CONV_PIXELS 12  // 12 accumulators of the 32 registers
#define CR_CONV_WIDE       // 16 channels per zmm where Cout allows
#define CR_CONV_SWEEP_KW 7  // 12 accumulators + 7 weights + 1 broadcast
#include "kernels/conv_kernels_impl.h"
