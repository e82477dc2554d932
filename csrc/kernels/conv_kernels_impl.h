// The source of the per-target direct-convolution kernels declared in conv_kernels.h.
// Included once per target file with CR_TARGET naming the target's namespace
// (kernels/dispatch.h), so the copies compiled with different -m flags never merge at link
// time. Uses GCC vector types (8 floats: two SSE2 registers at baseline, one ymm with
// AVX2/AVX-512) and nothing from the standard library or common.h, whose inline functions
// would otherwise be emitted here with AVX instructions and could be picked by the linker
// for baseline callers.
// CR_CONV_PIXELS: output pixels per forward register block; fits the register file.
#if !defined(CR_TARGET) || !defined(CR_CONV_PIXELS)
#error "define CR_TARGET and CR_CONV_PIXELS before including kernels/conv_kernels_impl.h"
#endif
#include "kernels/conv_kernels.h"

namespace cr {
namespace CR_TARGET {
namespace {

using i64 = std::int64_t;
typedef float v8 __attribute__((vector_size(32)));
// Passing v8 by value changes the calling convention between targets; harmless here, where
// every function has internal linkage and is inlined into its own target's kernels.
#pragma GCC diagnostic ignored "-Wpsabi"

inline v8 load8(const float* p) {
  v8 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, v8 v) { __builtin_memcpy(p, &v, sizeof v); }

// P consecutive output pixels x 8 channels: y[p] = bias + Σ_taps x(tap, p) · w(tap).
// xr: the input at the block's first window's top-left; w: the kernel at channel c0;
// y: the output of the first pixel at channel c0. Stride 1 is a separate instance so the
// pixel offsets are constants.
template <int P, bool kUnitStride>
inline void c1_forward_block(const ConvC1Geometry& g, const float* xr, const float* w, v8 bias,
                             bool relu, float* y) {
  const i64 W = g.W, KH = g.KH, KW = g.KW, Co = g.Co, SW = kUnitStride ? 1 : g.SW;
  v8 acc[P];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p) acc[p] = bias;
  for (i64 kh = 0; kh < KH; ++kh) {
    const float* xk = xr + kh * W;
    const float* wk = w + kh * KW * Co;
    for (i64 kw = 0; kw < KW; ++kw) {
      const v8 wv = load8(wk + kw * Co);
#pragma GCC unroll 16
      for (int p = 0; p < P; ++p) acc[p] += xk[p * SW + kw] * wv;
    }
  }
  const v8 zero = {};
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p) store8(y + p * Co, relu ? (acc[p] > zero ? acc[p] : zero) : acc[p]);
}

template <bool kUnitStride>
void c1_forward_rows(const ConvC1Geometry& g, const float* x, const float* w, const float* b,
                     bool relu, float* y, i64 nh0, i64 nh1) {
  constexpr int P = CR_CONV_PIXELS;
  const i64 OH = g.OH, OW = g.OW, Co = g.Co, SW = g.SW;
  for (i64 nh = nh0; nh < nh1; ++nh) {
    const i64 n = nh / OH, oh = nh % OH;
    const float* xs = x + (n * g.H + oh * g.SH) * g.W;
    float* yr = y + nh * OW * Co;
    for (i64 c0 = 0; c0 < Co; c0 += 8) {
      const v8 bias = load8(b + c0);
      i64 ow = 0;
      for (; ow + P <= OW; ow += P)
        c1_forward_block<P, kUnitStride>(g, xs + ow * SW, w + c0, bias, relu, yr + ow * Co + c0);
      for (; ow < OW; ++ow)
        c1_forward_block<1, kUnitStride>(g, xs + ow * SW, w + c0, bias, relu, yr + ow * Co + c0);
    }
  }
}

void c1_forward(const ConvC1Geometry& g, const float* x, const float* w, const float* b,
                bool relu, float* y, i64 nh0, i64 nh1) {
  if (g.SW == 1)
    c1_forward_rows<true>(g, x, w, b, relu, y, nh0, nh1);
  else
    c1_forward_rows<false>(g, x, w, b, relu, y, nh0, nh1);
}

// Q taps kw0 .. kw0+Q-1 of kernel row kh, channels c0..c0+7, one sample: the Q accumulators
// stay in registers over all output pixels; one dz load feeds Q multiply-adds.
template <int Q>
inline void c1_weights_taps(const ConvC1Geometry& g, const float* xs, const float* dzs, i64 kh,
                            i64 kw0, i64 c0, float* dw) {
  const i64 W = g.W, OW = g.OW, Co = g.Co, SH = g.SH, SW = g.SW;
  v8 acc[Q];
#pragma GCC unroll 16
  for (int q = 0; q < Q; ++q) acc[q] = v8{};
  for (i64 oh = 0; oh < g.OH; ++oh) {
    const float* xr = xs + (oh * SH + kh) * W + kw0;
    const float* dr = dzs + oh * OW * Co + c0;
    for (i64 ow = 0; ow < OW; ++ow) {
      const v8 d = load8(dr + ow * Co);
      const float* xp = xr + ow * SW;
#pragma GCC unroll 16
      for (int q = 0; q < Q; ++q) acc[q] += xp[q] * d;
    }
  }
#pragma GCC unroll 16
  for (int q = 0; q < Q; ++q) {
    float* o = dw + (kh * g.KW + kw0 + q) * Co + c0;
    store8(o, load8(o) + acc[q]);
  }
}

void c1_weights(const ConvC1Geometry& g, const float* x, const float* dz, float* dw, i64 n0,
                i64 n1) {
  for (i64 n = n0; n < n1; ++n) {
    const float* xs = x + n * g.H * g.W;
    const float* dzs = dz + n * g.OH * g.OW * g.Co;
    for (i64 c0 = 0; c0 < g.Co; c0 += 8)
      for (i64 kh = 0; kh < g.KH; ++kh)
        for (i64 kw0 = 0; kw0 < g.KW; kw0 += 8) {
          switch (g.KW - kw0 < 8 ? g.KW - kw0 : 8) {
            case 1: c1_weights_taps<1>(g, xs, dzs, kh, kw0, c0, dw); break;
            case 2: c1_weights_taps<2>(g, xs, dzs, kh, kw0, c0, dw); break;
            case 3: c1_weights_taps<3>(g, xs, dzs, kh, kw0, c0, dw); break;
            case 4: c1_weights_taps<4>(g, xs, dzs, kh, kw0, c0, dw); break;
            case 5: c1_weights_taps<5>(g, xs, dzs, kh, kw0, c0, dw); break;
            case 6: c1_weights_taps<6>(g, xs, dzs, kh, kw0, c0, dw); break;
            case 7: c1_weights_taps<7>(g, xs, dzs, kh, kw0, c0, dw); break;
            default: c1_weights_taps<8>(g, xs, dzs, kh, kw0, c0, dw); break;
          }
        }
  }
}

}  // namespace

const ConvKernels conv_kernels = {CR_TARGET_NAME, c1_forward, c1_weights};

}  // namespace CR_TARGET
}  // namespace cr
