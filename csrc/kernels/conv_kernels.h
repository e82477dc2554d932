// Per-target float kernels of the direct convolution for one input channel (the first layer
// of an image model): the forward pass with bias and ReLU fused, and the weight gradient.
// One source (conv_kernels_impl.h) is compiled per target (conv_kernels_{generic,avx2,
// avx512}.cpp); conv_kernels_for_cpu() picks one at run time (kernels/dispatch.h), so
// CHAINRULE_CPU_TARGET selects it as it selects the GEMM kernel. Threading, padding and odd
// channel counts stay in kernels/conv_c1.h; these see only the fast case.
#pragma once
#include <cstdint>

#include "kernels/dispatch.h"

namespace cr {

// Valid padding, one input channel, Cout a multiple of 8.
// x: (B, H, W, 1), w: (KH, KW, 1, Co), y and dz: (B, OH, OW, Co).
struct ConvC1Geometry {
  std::int64_t H, W, KH, KW, SH, SW, OH, OW, Co;
};

struct ConvKernels {
  const char* name;
  // Output rows (n, oh) = nh for nh in [nh0, nh1): y = conv(x, w) + b, then max(., 0) if relu.
  void (*c1_forward)(const ConvC1Geometry& g, const float* x, const float* w, const float* b,
                     bool relu, float* y, std::int64_t nh0, std::int64_t nh1);
  // dw: (KH, KW, 1, Co) += Σ over samples [n0, n1) of x ⊗ dz.
  void (*c1_weights)(const ConvC1Geometry& g, const float* x, const float* dz, float* dw,
                     std::int64_t n0, std::int64_t n1);
};

// cr::generic::conv_kernels, cr::avx2::conv_kernels, cr::avx512::conv_kernels.
CR_DECLARE_PER_TARGET(ConvKernels, conv_kernels)

// The kernels of the target every family runs (cpu_target()), chosen once.
const ConvKernels& conv_kernels_for_cpu();

}  // namespace cr
