// AVX-512 build of the direct-convolution kernels (conv_kernels_impl.h): the same 8-float
// vectors, but 32 vector registers, so a wider pixel block; reached only through
// conv_kernels() after the CPU check.
#define CR_CONV_NS avx512
#define CR_CONV_PIXELS 12  // 12 accumulators of the 32 ymm registers
#include "layers/conv_kernels_impl.h"

namespace cr {
const ConvKernels conv_kernels_avx512 = {"avx512", avx512::c1_forward, avx512::c1_weights};
}  // namespace cr
