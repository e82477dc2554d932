// The source of the per-target direct-convolution kernels declared in conv_kernels.h.
// Included once per target file with CR_TARGET naming the target's namespace
// (kernels/dispatch.h), so the copies compiled with different -m flags never merge at link
// time. Uses GCC vector types (8 floats: two SSE2 registers at baseline, one ymm with
// AVX2/AVX-512) and nothing from the standard library or common.h, whose inline functions
// would otherwise be emitted here with AVX instructions and could be picked by the linker
// for baseline callers.
// CR_CONV_PIXELS: output pixels per forward register block; fits the register file.
// CR_CONV_WIDE (optional): also use 16-float vectors (one zmm with AVX-512) for each whole
// group of 16 channels, halving the multiply-adds of the 8-wide form; 8-wide for the rest.
// Each lane computes the same operations in the same order either way.
// CR_CONV_SWEEP_KW (optional): the widest odd kernel (3, 5, 7) the stride-1 sweep form
// (c1_forward_sweep) is compiled for on this target.
#ifndef CR_CONV_SWEEP_KW
#define CR_CONV_SWEEP_KW 0
#endif
#if !defined(CR_TARGET) || !defined(CR_CONV_PIXELS)
#error "define CR_TARGET and CR_CONV_PIXELS before including kernels/conv_kernels_impl.h"
#endif
#include "kernels/conv_kernels.h"

namespace cr {
namespace CR_TARGET {
namespace {

using i64 = std::int64_t;
typedef float v8 __attribute__((vector_size(32)));
typedef float v16 __attribute__((vector_size(64)));
// Passing v8 by value changes the calling convention between targets; harmless here, where
// every function has internal linkage and is inlined into its own target's kernels.
#pragma GCC diagnostic ignored "-Wpsabi"

template <typename V>
inline V loadv(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <typename V>
inline void storev(float* p, V v) {
  __builtin_memcpy(p, &v, sizeof v);
}

// The forward kernels' epilogue: P pixels' sums (bias included), ReLU'd if relu, stored Co
// floats apart.
template <int P, typename V>
inline void store_pixels(const V* acc, bool relu, float* y, i64 Co) {
  const V zero = {};
#pragma GCC unroll 32
  for (int p = 0; p < P; ++p) storev(y + p * Co, relu ? (acc[p] > zero ? acc[p] : zero) : acc[p]);
}

// P consecutive output pixels x the lanes of V (8 or 16 channels):
// y[p] = bias + Σ_taps x(tap, p) · w(tap).
// xr: the input at the block's first window's top-left; w: the kernel at channel c0;
// y: the output of the first pixel at channel c0. Stride 1 is a separate instance so the
// pixel offsets are constants.
template <int P, bool kUnitStride, typename V>
inline void c1_forward_block(const ConvC1Geometry& g, const float* xr, const float* w, V bias,
                             bool relu, float* y) {
  const i64 W = g.W, KH = g.KH, KW = g.KW, Co = g.Co, SW = kUnitStride ? 1 : g.SW;
  V acc[P];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p) acc[p] = bias;
  for (i64 kh = 0; kh < KH; ++kh) {
    const float* xk = xr + kh * W;
    const float* wk = w + kh * KW * Co;
    for (i64 kw = 0; kw < KW; ++kw) {
      const V wv = loadv<V>(wk + kw * Co);
#pragma GCC unroll 16
      for (int p = 0; p < P; ++p) acc[p] += xk[p * SW + kw] * wv;
    }
  }
  store_pixels<P>(acc, relu, y, Co);
}

template <typename V>
inline V splat(float s) {
  V v;
#pragma GCC unroll 16
  for (unsigned i = 0; i < sizeof(V) / sizeof(float); ++i) v[i] = s;
  return v;
}

// Stride 1 with a kernel width KW known at compile time: each input value of a kernel row
// is broadcast once and feeds every multiply-add it takes part in (acc[j - kw] += x[j] ·
// w[kw], KW of them), where c1_forward_block broadcasts once per multiply-add (on Intel
// the broadcasts share a port with the FMAs). Each output's terms are added in the same
// (kh, kw) order as c1_forward_block, so the results are the same bits.
template <int P, int KW, typename V>
inline void c1_forward_sweep(const ConvC1Geometry& g, const float* xr, const float* w, V bias,
                             bool relu, float* y) {
  const i64 W = g.W, KH = g.KH, Co = g.Co;
  V acc[P];
#pragma GCC unroll 32
  for (int p = 0; p < P; ++p) acc[p] = bias;
  for (i64 kh = 0; kh < KH; ++kh) {
    const float* xk = xr + kh * W;
    const float* wk = w + kh * KW * Co;
    V wv[KW];
#pragma GCC unroll 8
    for (int kw = 0; kw < KW; ++kw) wv[kw] = loadv<V>(wk + kw * Co);
#pragma GCC unroll 40
    for (int j = 0; j < P + KW - 1; ++j) {
      const V xb = splat<V>(xk[j]);
#pragma GCC unroll 8
      for (int kw = 0; kw < KW; ++kw) {
        const int p = j - kw;
        if (p >= 0 && p < P) acc[p] += xb * wv[kw];
      }
    }
  }
  store_pixels<P>(acc, relu, y, Co);
}

// Whole blocks of P pixels of one output row with c1_forward_sweep; returns the first pixel
// not done. CR_CONV_SWEEP_KW is the widest kernel whose P accumulators, KW weights and one
// broadcast fit the target's registers (0: never).
template <int P, int KW, typename V>
inline i64 c1_sweep_blocks(const ConvC1Geometry& g, const float* xs, const float* w, V bias,
                           bool relu, float* yr) {
  i64 ow = 0;
  for (; ow + P <= g.OW; ow += P) c1_forward_sweep<P, KW>(g, xs + ow, w, bias, relu, yr + ow * g.Co);
  return ow;
}
template <int P, typename V>
inline i64 c1_sweep_row(const ConvC1Geometry& g, const float* xs, const float* w, V bias,
                        bool relu, float* yr) {
  switch (g.KW) {
#if CR_CONV_SWEEP_KW >= 3
    case 3: return c1_sweep_blocks<P, 3>(g, xs, w, bias, relu, yr);
#endif
#if CR_CONV_SWEEP_KW >= 5
    case 5: return c1_sweep_blocks<P, 5>(g, xs, w, bias, relu, yr);
#endif
#if CR_CONV_SWEEP_KW >= 7
    case 7: return c1_sweep_blocks<P, 7>(g, xs, w, bias, relu, yr);
#endif
    default: return 0;
  }
}

// Channels [c0, c0 + lanes of V) of one output row.
template <bool kUnitStride, typename V>
inline void c1_forward_channels(const ConvC1Geometry& g, const float* xs, const float* w,
                                const float* b, bool relu, float* yr, i64 c0) {
  constexpr int P = CR_CONV_PIXELS;
  const i64 OW = g.OW, Co = g.Co, SW = g.SW;
  const V bias = loadv<V>(b + c0);
  i64 ow = 0;
  if constexpr (kUnitStride) ow = c1_sweep_row<P>(g, xs, w + c0, bias, relu, yr + c0);
  for (; ow + P <= OW; ow += P)
    c1_forward_block<P, kUnitStride>(g, xs + ow * SW, w + c0, bias, relu, yr + ow * Co + c0);
  for (; ow < OW; ++ow)
    c1_forward_block<1, kUnitStride>(g, xs + ow * SW, w + c0, bias, relu, yr + ow * Co + c0);
}

template <bool kUnitStride>
void c1_forward_rows(const ConvC1Geometry& g, const float* x, const float* w, const float* b,
                     bool relu, float* y, i64 nh0, i64 nh1) {
  const i64 OH = g.OH, OW = g.OW, Co = g.Co;
  for (i64 nh = nh0; nh < nh1; ++nh) {
    const i64 n = nh / OH, oh = nh % OH;
    const float* xs = x + (n * g.H + oh * g.SH) * g.W;
    float* yr = y + nh * OW * Co;
    i64 c0 = 0;
#ifdef CR_CONV_WIDE
    for (; c0 + 16 <= Co; c0 += 16) c1_forward_channels<kUnitStride, v16>(g, xs, w, b, relu, yr, c0);
#endif
    for (; c0 < Co; c0 += 8) c1_forward_channels<kUnitStride, v8>(g, xs, w, b, relu, yr, c0);
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
template <int Q, typename V>
inline void c1_weights_taps(const ConvC1Geometry& g, const float* xs, const float* dzs, i64 kh,
                            i64 kw0, i64 c0, float* dw) {
  const i64 W = g.W, OW = g.OW, Co = g.Co, SH = g.SH, SW = g.SW;
  V acc[Q];
#pragma GCC unroll 16
  for (int q = 0; q < Q; ++q) acc[q] = V{};
  for (i64 oh = 0; oh < g.OH; ++oh) {
    const float* xr = xs + (oh * SH + kh) * W + kw0;
    const float* dr = dzs + oh * OW * Co + c0;
    for (i64 ow = 0; ow < OW; ++ow) {
      const V d = loadv<V>(dr + ow * Co);
      const float* xp = xr + ow * SW;
#pragma GCC unroll 16
      for (int q = 0; q < Q; ++q) acc[q] += xp[q] * d;
    }
  }
#pragma GCC unroll 16
  for (int q = 0; q < Q; ++q) {
    float* o = dw + (kh * g.KW + kw0 + q) * Co + c0;
    storev(o, loadv<V>(o) + acc[q]);
  }
}

// Channels [c0, c0 + lanes of V) of dw, one sample.
template <typename V>
inline void c1_weights_channels(const ConvC1Geometry& g, const float* xs, const float* dzs,
                                i64 c0, float* dw) {
  for (i64 kh = 0; kh < g.KH; ++kh)
    for (i64 kw0 = 0; kw0 < g.KW; kw0 += 8) {
      switch (g.KW - kw0 < 8 ? g.KW - kw0 : 8) {
        case 1: c1_weights_taps<1, V>(g, xs, dzs, kh, kw0, c0, dw); break;
        case 2: c1_weights_taps<2, V>(g, xs, dzs, kh, kw0, c0, dw); break;
        case 3: c1_weights_taps<3, V>(g, xs, dzs, kh, kw0, c0, dw); break;
        case 4: c1_weights_taps<4, V>(g, xs, dzs, kh, kw0, c0, dw); break;
        case 5: c1_weights_taps<5, V>(g, xs, dzs, kh, kw0, c0, dw); break;
        case 6: c1_weights_taps<6, V>(g, xs, dzs, kh, kw0, c0, dw); break;
        case 7: c1_weights_taps<7, V>(g, xs, dzs, kh, kw0, c0, dw); break;
        default: c1_weights_taps<8, V>(g, xs, dzs, kh, kw0, c0, dw); break;
      }
    }
}

void c1_weights(const ConvC1Geometry& g, const float* x, const float* dz, float* dw, i64 n0,
                i64 n1) {
  for (i64 n = n0; n < n1; ++n) {
    const float* xs = x + n * g.H * g.W;
    const float* dzs = dz + n * g.OH * g.OW * g.Co;
    i64 c0 = 0;
#ifdef CR_CONV_WIDE
    for (; c0 + 16 <= g.Co; c0 += 16) c1_weights_channels<v16>(g, xs, dzs, c0, dw);
#endif
    for (; c0 < g.Co; c0 += 8) c1_weights_channels<v8>(g, xs, dzs, c0, dw);
  }
}

}  // namespace

const ConvKernels conv_kernels = {CR_TARGET_NAME, c1_forward, c1_weights};

}  // namespace CR_TARGET
}  // namespace cr
