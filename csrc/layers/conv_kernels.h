// Per-target float kernels of the direct convolution for one input channel (the first layer
// of an image model): the forward pass with bias and ReLU fused, and the weight gradient.
// One source (conv_kernels_impl.h) is compiled per target (conv_kernels.cpp: baseline,
// conv_kernels_avx2.cpp, conv_kernels_avx512.cpp); conv_kernels() picks one at run time
// from cpu_target(), so CHAINRULE_CPU_TARGET selects it as it selects the GEMM kernel.
// Threading, padding and odd channel counts stay in conv2d.h; these see only the fast case.
#pragma once
#include <cstdint>

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

extern const ConvKernels conv_kernels_generic;
#ifdef CR_X86
extern const ConvKernels conv_kernels_avx2;
extern const ConvKernels conv_kernels_avx512;
#endif

// The kernels for the target sgemm runs (cpu_target(): best supported, or the
// CHAINRULE_CPU_TARGET override), chosen once.
const ConvKernels& conv_kernels();

}  // namespace cr
