// AVX2+FMA build of the direct-convolution kernels (conv_kernels_impl.h); compiled with
// -mavx2 -mfma for this file only and reached only through conv_kernels_for_cpu() after the
// CPU check.
#define CR_TARGET avx2
#define CR_CONV_PIXELS 8  // 8 ymm accumulators of the 16
#define CR_CONV_SWEEP_KW 5  // 8 accumulators + 5 weights + 1 broadcast of 16 ymm
#include "kernels/conv_kernels_impl.h"
