// Direct convolution for one input channel, channels-last (Conv2D's first layer of an
// image model): portable loops for any T and shape, and the dispatch onto the per-target
// SIMD kernels (kernels/conv_kernels.h) with the threading around them. Not here: the
// general im2col + GEMM path (kernels/im2col.h) and activations other than a fused ReLU.
#pragma once
#include <algorithm>

#include "common.h"
#include "kernels/conv_kernels.h"
#include "kernels/spatial.h"

namespace cr {

// Direct kernels for one input channel (the first layer of an image model). There an im2col
// row holds only KH·KW values and the GEMM has a tiny N = Cout, so copying the patches costs
// more than the product; these loops keep a block of 8 output channels in registers instead.
// Measured on the LeNet first layer (28x28x1 -> 24x24x8, 5x5, batch 64, 1 thread): see
// bench/bench_cnn.py and the commit message.
constexpr i64 kConvBlock = 8;

// x: (B, H, W, 1), Wt: (KH, KW, 1, Cout), b: (Cout) -> y: (B, OH, OW, Cout) = conv + b.
template <typename T>
void conv2d_forward_c1(const ConvShape& s, const T* x, const T* Wt, const T* b, T* y, i64 B) {
  const i64 H = s.H, W = s.W, KH = s.ah.window, KW = s.aw.window, Co = s.Cout;
  const i64 SH = s.ah.stride, SW = s.aw.stride, PT = s.ah.pad_before, PL = s.aw.pad_before;
  const i64 OH = s.OH(), OW = s.OW();
#pragma omp parallel for schedule(static) if (B * OH * OW * Co * KH * KW > kParallelElems)
  for (i64 nh = 0; nh < B * OH; ++nh) {
    const i64 n = nh / OH, oh = nh % OH;
    const T* xs = x + n * H * W;
    const i64 kh0 = std::max<i64>(0, PT - oh * SH), kh1 = std::min(KH, H + PT - oh * SH);
    for (i64 ow = 0; ow < OW; ++ow) {
      T* yo = y + (nh * OW + ow) * Co;
      const i64 kw0 = std::max<i64>(0, PL - ow * SW), kw1 = std::min(KW, W + PL - ow * SW);
      for (i64 c0 = 0; c0 < Co; c0 += kConvBlock) {
        if (c0 + kConvBlock <= Co) {
          // Eight named accumulators, not an array: GCC keeps these in two vector registers
          // (an acc[8] array stayed in memory: 4x slower on the LeNet first layer).
          T a0 = b[c0], a1 = b[c0 + 1], a2 = b[c0 + 2], a3 = b[c0 + 3];
          T a4 = b[c0 + 4], a5 = b[c0 + 5], a6 = b[c0 + 6], a7 = b[c0 + 7];
          for (i64 kh = kh0; kh < kh1; ++kh) {
            const i64 xrow = (oh * SH - PT + kh) * W + (ow * SW - PL);
            const T* wr = Wt + kh * KW * Co + c0;
            for (i64 kw = kw0; kw < kw1; ++kw) {
              const T xv = xs[xrow + kw];
              const T* w = wr + kw * Co;
              a0 += xv * w[0]; a1 += xv * w[1]; a2 += xv * w[2]; a3 += xv * w[3];
              a4 += xv * w[4]; a5 += xv * w[5]; a6 += xv * w[6]; a7 += xv * w[7];
            }
          }
          yo[c0] = a0; yo[c0 + 1] = a1; yo[c0 + 2] = a2; yo[c0 + 3] = a3;
          yo[c0 + 4] = a4; yo[c0 + 5] = a5; yo[c0 + 6] = a6; yo[c0 + 7] = a7;
        } else {  // the last, partial block of channels
          const i64 nc = Co - c0;
          T acc[kConvBlock];
          for (i64 c = 0; c < nc; ++c) acc[c] = b[c0 + c];
          for (i64 kh = kh0; kh < kh1; ++kh)
            for (i64 kw = kw0; kw < kw1; ++kw) {
              const T xv = xs[(oh * SH - PT + kh) * W + (ow * SW - PL + kw)];
              for (i64 c = 0; c < nc; ++c) acc[c] += xv * Wt[(kh * KW + kw) * Co + c0 + c];
            }
          for (i64 c = 0; c < nc; ++c) yo[c0 + c] = acc[c];
        }
      }
    }
  }
}

// dW: (KH, KW, 1, Cout) += Σ x ⊗ dz, the sum split over threads by samples: each thread adds
// into its own (KH·KW, Cout) slice of `partial` (nt slices), reduced into dW at the end.
// x: (B, H, W, 1), dz: (B, OH, OW, Cout).
template <typename T>
void conv2d_backward_weights_c1(const ConvShape& s, const T* x, const T* dz, T* dW, T* partial,
                                int nt, i64 B) {
  const i64 H = s.H, W = s.W, KH = s.ah.window, KW = s.aw.window, Co = s.Cout;
  const i64 SH = s.ah.stride, SW = s.aw.stride, PT = s.ah.pad_before, PL = s.aw.pad_before;
  const i64 OH = s.OH(), OW = s.OW(), nk = KH * KW * Co;
  if (B * OH * OW * nk < kParallelElems) nt = 1;
  int used = 1;  // the team OpenMP actually grants (<= nt): the slices to reduce
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), nth = omp_get_num_threads();
#else
    const int t = 0, nth = 1;
#endif
#pragma omp single
    used = nth;
    T* dwp = partial + t * nk;
    std::fill(dwp, dwp + nk, T(0));
    const i64 n0 = B * t / nth, n1 = B * (t + 1) / nth;
    for (i64 n = n0; n < n1; ++n) {
      const T* xs = x + n * H * W;
      const T* dzs = dz + n * OH * OW * Co;
      // One tap at a time: its Cout-block accumulator stays in registers over all pixels.
      for (i64 kh = 0; kh < KH; ++kh)
        for (i64 kw = 0; kw < KW; ++kw)
          for (i64 c0 = 0; c0 < Co; c0 += kConvBlock) {
            const i64 nc = std::min(kConvBlock, Co - c0);
            T acc[kConvBlock] = {};
            T a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;  // see forward
            for (i64 oh = 0; oh < OH; ++oh) {
              const i64 ih = oh * SH - PT + kh;
              if (ih < 0 || ih >= H) continue;
              const i64 ow0 = std::max<i64>(0, (PL - kw + SW - 1) / SW);
              const i64 ow1 = std::min(OW, (W + PL - kw + SW - 1) / SW);
              const i64 xrow = ih * W - PL + kw;
              const T* dr = dzs + oh * OW * Co + c0;
              if (nc == kConvBlock) {
                for (i64 ow = ow0; ow < ow1; ++ow) {
                  const T xv = xs[xrow + ow * SW];
                  const T* d = dr + ow * Co;
                  a0 += xv * d[0]; a1 += xv * d[1]; a2 += xv * d[2]; a3 += xv * d[3];
                  a4 += xv * d[4]; a5 += xv * d[5]; a6 += xv * d[6]; a7 += xv * d[7];
                }
              } else {
                for (i64 ow = ow0; ow < ow1; ++ow)
                  for (i64 c = 0; c < nc; ++c) acc[c] += xs[xrow + ow * SW] * dr[ow * Co + c];
              }
            }
            if (nc == kConvBlock) {
              acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3;
              acc[4] = a4; acc[5] = a5; acc[6] = a6; acc[7] = a7;
            }
            T* d = dwp + (kh * KW + kw) * Co + c0;
            for (i64 c = 0; c < nc; ++c) d[c] += acc[c];
          }
    }
  }
  for (int t = 0; t < used; ++t)
    for (i64 i = 0; i < nk; ++i) dW[i] += partial[t * nk + i];
}

// The per-target SIMD kernels (kernels/conv_kernels.h) cover float, one input channel,
// windows that never hang over the edge (no padding read), Cout a multiple of 8; anything
// else runs the portable loops above. The overloads below return false where the kernels
// do not apply.
inline bool conv_c1_simd_applies(const ConvShape& s) {
  return s.Cin == 1 && s.Cout % 8 == 0 && s.ah.pad_before == 0 && s.aw.pad_before == 0 &&
         (s.OH() - 1) * s.ah.stride + s.ah.window <= s.H &&
         (s.OW() - 1) * s.aw.stride + s.aw.window <= s.W;
}
inline ConvC1Geometry conv_c1_geometry(const ConvShape& s) {
  return {s.H, s.W, s.ah.window, s.aw.window, s.ah.stride, s.aw.stride, s.OH(), s.OW(), s.Cout};
}

// y = conv(x, W) + b, then ReLU if relu; parallel over output rows.
template <typename T>
bool conv2d_forward_c1_simd(const ConvShape&, const T*, const T*, const T*, bool, T*, i64) {
  return false;
}
inline bool conv2d_forward_c1_simd(const ConvShape& s, const float* x, const float* Wt,
                                   const float* b, bool relu, float* y, i64 B) {
  if (!conv_c1_simd_applies(s)) return false;
  const ConvC1Geometry g = conv_c1_geometry(s);
  const ConvKernels& k = conv_kernels_for_cpu();
  const i64 rows = B * s.OH();
  const i64 macs = rows * s.OW() * s.Cout * s.ah.window * s.aw.window;
  const int nt = int(std::clamp<i64>(macs / kMinMacsPerThread, 1, max_threads()));
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), nth = omp_get_num_threads();
#else
    const int t = 0, nth = 1;
#endif
    k.c1_forward(g, x, Wt, b, relu, y, rows * t / nth, rows * (t + 1) / nth);
  }
  return true;
}

// dW += Σ x ⊗ dz: each of nt threads sums its share of the samples into its own slice of
// `partial` ((KH·KW·Cout) each), reduced into dW at the end.
template <typename T>
bool conv2d_backward_weights_c1_simd(const ConvShape&, const T*, const T*, T*, T*, int, i64) {
  return false;
}
inline bool conv2d_backward_weights_c1_simd(const ConvShape& s, const float* x, const float* dz,
                                            float* dW, float* partial, int nt, i64 B) {
  if (!conv_c1_simd_applies(s)) return false;
  const ConvC1Geometry g = conv_c1_geometry(s);
  const ConvKernels& k = conv_kernels_for_cpu();
  const i64 nk = s.K() * s.Cout;
  if (B * s.OH() * s.OW() * nk < 4 * kParallelElems) nt = 1;
  nt = int(std::min<i64>(nt, B));
  int used = 1;  // the team OpenMP actually grants (<= nt): the slices to reduce
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), nth = omp_get_num_threads();
#else
    const int t = 0, nth = 1;
#endif
#pragma omp single
    used = nth;
    float* dwp = partial + t * nk;
    std::fill(dwp, dwp + nk, 0.0f);
    k.c1_weights(g, x, dz, dwp, B * t / nth, B * (t + 1) / nth);
  }
  for (int t = 0; t < used; ++t)
    for (i64 i = 0; i < nk; ++i) dW[i] += partial[t * nk + i];
  return true;
}

}  // namespace cr
