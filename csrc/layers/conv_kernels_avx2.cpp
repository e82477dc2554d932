// AVX2+FMA build of the direct-convolution kernels (conv_kernels_impl.h); compiled with
// -mavx2 -mfma for this file only and reached only through conv_kernels() after the CPU check.
#define CR_CONV_NS avx2
#define CR_CONV_PIXELS 8  // 8 ymm accumulators of the 16
#include "layers/conv_kernels_impl.h"

namespace cr {
const ConvKernels conv_kernels_avx2 = {"avx2", avx2::c1_forward, avx2::c1_weights};
}  // namespace cr
