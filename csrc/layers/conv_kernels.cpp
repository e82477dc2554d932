// Baseline (SSE2 on x86-64) build of the direct-convolution kernels, and the run-time choice
// among the per-target builds.
#include "kernels/cpu.h"

#define CR_CONV_NS generic
#define CR_CONV_PIXELS 4  // 4 pixels x 2 xmm accumulators: 8 of the 16 xmm registers
#include "layers/conv_kernels_impl.h"

namespace cr {

const ConvKernels conv_kernels_generic = {"generic", generic::c1_forward, generic::c1_weights};

const ConvKernels& conv_kernels() {
  static const ConvKernels* chosen = [] {
#ifdef CR_X86
    switch (cpu_target()) {
      case CpuTarget::avx512: return &conv_kernels_avx512;
      case CpuTarget::avx2: return &conv_kernels_avx2;
      default: break;
    }
#endif
    return &conv_kernels_generic;
  }();
  return *chosen;
}

}  // namespace cr
