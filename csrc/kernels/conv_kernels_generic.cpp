// Baseline (SSE2 on x86-64) build of the direct-convolution kernels (conv_kernels_impl.h),
// the generic target.
#define CR_TARGET generic
#define CR_CONV_PIXELS 4  // 4 pixels x 2 xmm accumulators: 8 of the 16 xmm registers
#include "kernels/conv_kernels_impl.h"
