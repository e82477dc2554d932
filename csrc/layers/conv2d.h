// 2-D convolution, channels-last: y = act(conv(x, W) + b) with x: (B, H, W, Cin),
// W: (KH, KW, Cin, Cout) (Keras layout), b: (Cout), y: (B, OH, OW, Cout).
// Lowered to one GEMM per chunk of samples through im2col; a naive direct twin
// (conv2d_forward_naive / conv2d_backward_naive) is always compiled as the oracle and runs
// instead when CHAINRULE_CONV_NAIVE=1 is set at layer construction (tests compare the two).
// Not here: dilation, groups, channels-first input.
#pragma once
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "kernels/conv_kernels.h"
#include "kernels/gemm.h"
#include "layers/layer.h"
#include "layers/spatial.h"

namespace cr {

struct ConvShape {
  i64 H, W, Cin, Cout;
  Axis ah, aw;  // window = kernel size, stride, out, pad_before per axis
  i64 OH() const { return ah.out; }
  i64 OW() const { return aw.out; }
  i64 K() const { return ah.window * aw.window * Cin; }  // one im2col row / kernel rows
  i64 in_size() const { return H * W * Cin; }
  i64 out_size() const { return ah.out * aw.out * Cout; }
};

// x: (nb, H, W, Cin) -> col: (nb·OH·OW, KH·KW·Cin); row (n, oh, ow) is the receptive field
// of that output pixel in (kh, kw, c) order, zeros where the window hangs over the padding.
// In NHWC the KW·Cin values of one kernel row are contiguous in x, so an interior row is
// KH block copies.
template <typename T>
void im2col_nhwc(const ConvShape& s, const T* x, i64 nb, T* col) {
  const i64 H = s.H, W = s.W, C = s.Cin, KH = s.ah.window, KW = s.aw.window;
  const i64 SH = s.ah.stride, SW = s.aw.stride, PT = s.ah.pad_before, PL = s.aw.pad_before;
  const i64 OH = s.OH(), OW = s.OW(), K = s.K(), span = KW * C;
#pragma omp parallel for schedule(static) if (nb * OH * OW * K > kParallelElems)
  for (i64 nh = 0; nh < nb * OH; ++nh) {
    const i64 n = nh / OH, oh = nh % OH;
    const T* xs = x + n * H * W * C;
    T* row = col + nh * OW * K;
    for (i64 ow = 0; ow < OW; ++ow, row += K) {
      const i64 iw0 = ow * SW - PL;
      const bool w_inside = iw0 >= 0 && iw0 + KW <= W;
      for (i64 kh = 0; kh < KH; ++kh) {
        T* dst = row + kh * span;
        const i64 ih = oh * SH - PT + kh;
        if (ih < 0 || ih >= H) {
          std::fill(dst, dst + span, T(0));
          continue;
        }
        const T* src = xs + (ih * W) * C;
        if (w_inside) {
          std::copy(src + iw0 * C, src + iw0 * C + span, dst);
        } else {
          for (i64 kw = 0; kw < KW; ++kw) {
            const i64 iw = iw0 + kw;
            if (iw < 0 || iw >= W)
              std::fill(dst + kw * C, dst + (kw + 1) * C, T(0));
            else
              std::copy(src + iw * C, src + (iw + 1) * C, dst + kw * C);
          }
        }
      }
    }
  }
}

// The adjoint of im2col: dx: (nb, H, W, Cin) = Σ over the col rows that read each input
// element. Parallel over samples (each writes only its own dx), dx is overwritten.
template <typename T>
void col2im_nhwc(const ConvShape& s, const T* col, i64 nb, T* dx) {
  const i64 H = s.H, W = s.W, C = s.Cin, KH = s.ah.window, KW = s.aw.window;
  const i64 SH = s.ah.stride, SW = s.aw.stride, PT = s.ah.pad_before, PL = s.aw.pad_before;
  const i64 OH = s.OH(), OW = s.OW(), K = s.K(), span = KW * C;
#pragma omp parallel for schedule(static) if (nb * OH * OW * K > kParallelElems)
  for (i64 n = 0; n < nb; ++n) {
    T* dxs = dx + n * H * W * C;
    std::fill(dxs, dxs + H * W * C, T(0));
    const T* row = col + n * OH * OW * K;
    for (i64 oh = 0; oh < OH; ++oh)
      for (i64 ow = 0; ow < OW; ++ow, row += K) {
        const i64 iw0 = ow * SW - PL;
        const bool w_inside = iw0 >= 0 && iw0 + KW <= W;
        for (i64 kh = 0; kh < KH; ++kh) {
          const i64 ih = oh * SH - PT + kh;
          if (ih < 0 || ih >= H) continue;
          const T* src = row + kh * span;
          T* dst = dxs + (ih * W) * C;
          if (w_inside) {
            dst += iw0 * C;
            for (i64 j = 0; j < span; ++j) dst[j] += src[j];
          } else {
            for (i64 kw = 0; kw < KW; ++kw) {
              const i64 iw = iw0 + kw;
              if (iw < 0 || iw >= W) continue;
              for (i64 c = 0; c < C; ++c) dst[iw * C + c] += src[kw * C + c];
            }
          }
        }
      }
  }
}

// Naive twin, forward: y: (B, OH, OW, Cout) = conv(x, W) + b, no activation. Direct loops.
template <typename T>
void conv2d_forward_naive(const ConvShape& s, const T* x, const T* Wt, const T* b, T* y, i64 B) {
  const i64 KH = s.ah.window, KW = s.aw.window, Ci = s.Cin, Co = s.Cout;
  for (i64 n = 0; n < B; ++n)
    for (i64 oh = 0; oh < s.OH(); ++oh)
      for (i64 ow = 0; ow < s.OW(); ++ow) {
        T* yo = y + ((n * s.OH() + oh) * s.OW() + ow) * Co;
        for (i64 co = 0; co < Co; ++co) yo[co] = b[co];
        for (i64 kh = 0; kh < KH; ++kh)
          for (i64 kw = 0; kw < KW; ++kw) {
            const i64 ih = oh * s.ah.stride - s.ah.pad_before + kh;
            const i64 iw = ow * s.aw.stride - s.aw.pad_before + kw;
            if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
            for (i64 ci = 0; ci < Ci; ++ci) {
              const T xv = x[((n * s.H + ih) * s.W + iw) * Ci + ci];
              for (i64 co = 0; co < Co; ++co) yo[co] += xv * Wt[((kh * KW + kw) * Ci + ci) * Co + co];
            }
          }
      }
}

// Naive twin, backward: dz: (B, OH, OW, Cout) gradient w.r.t. the pre-activation output.
// dW += , db += ; dx (may be null) is overwritten.
template <typename T>
void conv2d_backward_naive(const ConvShape& s, const T* x, const T* Wt, const T* dz, T* dW,
                           T* db, T* dx, i64 B) {
  const i64 KH = s.ah.window, KW = s.aw.window, Ci = s.Cin, Co = s.Cout;
  if (dx) std::fill(dx, dx + B * s.in_size(), T(0));
  for (i64 n = 0; n < B; ++n)
    for (i64 oh = 0; oh < s.OH(); ++oh)
      for (i64 ow = 0; ow < s.OW(); ++ow) {
        const T* d = dz + ((n * s.OH() + oh) * s.OW() + ow) * Co;
        for (i64 co = 0; co < Co; ++co) db[co] += d[co];
        for (i64 kh = 0; kh < KH; ++kh)
          for (i64 kw = 0; kw < KW; ++kw) {
            const i64 ih = oh * s.ah.stride - s.ah.pad_before + kh;
            const i64 iw = ow * s.aw.stride - s.aw.pad_before + kw;
            if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
            for (i64 ci = 0; ci < Ci; ++ci) {
              const i64 xi = ((n * s.H + ih) * s.W + iw) * Ci + ci;
              const T* wr = Wt + ((kh * KW + kw) * Ci + ci) * Co;
              T* dwr = dW + ((kh * KW + kw) * Ci + ci) * Co;
              T acc = T(0);
              for (i64 co = 0; co < Co; ++co) {
                dwr[co] += x[xi] * d[co];
                acc += wr[co] * d[co];
              }
              if (dx) dx[xi] += acc;
            }
          }
      }
}

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

// Row helpers of the piecewise-linear activations (ReLU: slope 0, leaky ReLU, identity:
// slope 1), written with GCC vector types: GCC will not if-convert the scalar select
// `v > 0 ? v : slope * v` at baseline, and the branchy loop mispredicts on every other sign
// (0.19 ms of the LeNet conv2 forward, 0.1 ms of its backward per batch).
// y[j] = act(y[j] + b[j]) for j < n (b may be null: no bias).
template <typename T>
inline void leaky_relu_bias_row(T* y, const T* b, i64 n, T slope) {
  typedef T V __attribute__((vector_size(16)));
  constexpr i64 L = 16 / sizeof(T);
  const V zero = {}, sl = zero + slope;
  i64 j = 0;
  for (; j + L <= n; j += L) {
    V v, bv = zero;
    __builtin_memcpy(&v, y + j, 16);
    if (b) __builtin_memcpy(&bv, b + j, 16);
    v += bv;
    v = v > zero ? v : v * sl;
    __builtin_memcpy(y + j, &v, 16);
  }
  for (; j < n; ++j) {
    const T v = y[j] + (b ? b[j] : T(0));
    y[j] = v > T(0) ? v : slope * v;
  }
}

// d[j] = y[j] > 0 ? d[j] : slope * d[j] (the activation's derivative at its output y), and
// bsum[j] += the result, for j < n.
template <typename T>
inline void leaky_relu_backward_sum_row(const T* y, T* d, T* bsum, i64 n, T slope) {
  typedef T V __attribute__((vector_size(16)));
  constexpr i64 L = 16 / sizeof(T);
  const V zero = {}, sl = zero + slope;
  i64 j = 0;
  for (; j + L <= n; j += L) {
    V yv, g, acc;
    __builtin_memcpy(&yv, y + j, 16);
    __builtin_memcpy(&g, d + j, 16);
    __builtin_memcpy(&acc, bsum + j, 16);
    g = yv > zero ? g : g * sl;
    acc += g;
    __builtin_memcpy(d + j, &g, 16);
    __builtin_memcpy(bsum + j, &acc, 16);
  }
  for (; j < n; ++j) {
    d[j] = y[j] > T(0) ? d[j] : slope * d[j];
    bsum[j] += d[j];
  }
}

// The per-target SIMD kernels (kernels/conv_kernels.h) cover float, one input channel, windows that
// never hang over the edge (no padding read), Cout a multiple of 8; anything else runs the
// portable loops above. The overloads below return false where the kernels do not apply.
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
  const int nt = macs > 4 * kParallelElems ? max_threads() : 1;
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

template <typename T>
class Conv2D final : public Layer<T> {
 public:
  // The im2col buffer is bounded: batches whose col matrix would exceed this are processed
  // in chunks of samples (one GEMM per chunk).
  static constexpr i64 kColBytes = i64(64) << 20;

  Conv2D(i64 h, i64 w, i64 cin, i64 cout, i64 kh, i64 kw, i64 sh, i64 sw, bool same, Act act,
         T alpha) {
    if (cin < 1) fail("Conv2D: input channels must be >= 1; received ", cin);
    if (cout < 1) fail("Conv2D: filters must be >= 1; received ", cout);
    s_.H = h;
    s_.W = w;
    s_.Cin = cin;
    s_.Cout = cout;
    s_.ah = Axis::make("Conv2D", "height", h, kh, sh, same);
    s_.aw = Axis::make("Conv2D", "width", w, kw, sw, same);
    // Every size the layer indexes with, checked once here; the products in ConvShape are
    // then known to fit.
    checked_mul(checked_mul(h, w, "Conv2D: input"), cin, "Conv2D: input (height x width x channels)");
    const i64 pixels = checked_mul(s_.OH(), s_.OW(), "Conv2D: output");
    checked_mul(pixels, cout, "Conv2D: output (height x width x filters)");
    const i64 k = checked_mul(checked_mul(kh, kw, "Conv2D: kernel"), cin, "Conv2D: kernel (kh x kw x channels)");
    checked_mul(k, cout, "Conv2D: kernel (kh x kw x channels x filters)");
    const i64 col_per_sample = checked_mul(pixels, k, "Conv2D: one sample's im2col matrix");
    this->in_ = s_.in_size();
    this->out_ = s_.out_size();
    this->act_ = act;
    this->alpha_ = alpha;
    // A 1x1 stride-1 convolution needs no im2col: x itself is the col matrix.
    pointwise_ = kh == 1 && kw == 1 && sh == 1 && sw == 1;
    // One input channel: direct loops (no im2col) for the forward pass and dW.
    direct_ = cin == 1 && !pointwise_;
    chunk_ = std::max<i64>(1, kColBytes / i64(sizeof(T) * col_per_sample));
    bsum_.assign(cout, T(0));
    const char* env = std::getenv("CHAINRULE_CONV_NAIVE");
    naive_ = env && env[0] == '1';
  }
  const char* kind() const override { return "conv2d"; }
  i64 units() const override { return s_.Cout; }  // channels-last: a unit is an output channel
  const ConvShape& shape() const { return s_; }
  std::vector<ParamShape> param_shapes() const override {
    return {{"kernel", {s_.ah.window, s_.aw.window, s_.Cin, s_.Cout}}, {"bias", {s_.Cout}}};
  }
  void bind(T* params, T* grads) override {
    const i64 nk = s_.K() * s_.Cout;
    W_ = params;
    b_ = params + nk;
    dW_ = grads;
    db_ = grads + nk;
  }
  bool naive() const { return naive_; }
  void reserve(i64 batch) override {
    if (pointwise_ || naive_) return;
    if (direct_) {
      const i64 nk = s_.K() * s_.Cout * max_threads();
      if (i64(partial_.size()) < nk) partial_.assign(nk, T(0));
    }
    const i64 need = std::min(batch, chunk_) * s_.OH() * s_.OW() * s_.K();
    if (i64(col_.size()) < need) col_.assign(need, T(0));
  }

  // x: (B, H, W, Cin), y: (B, OH, OW, Cout). Per chunk of nb samples:
  // col: (nb·OH·OW, K) = im2col(x); y = col · W (K, Cout), then bias and activation per row.
  void forward(const T* x, T* y, i64 B, bool training) override {
    check_capacity(B);
    const i64 P = s_.OH() * s_.OW(), K = s_.K(), Co = s_.Cout;
    if (naive_) {
      conv2d_forward_naive(s_, x, W_, b_, y, B);
      activation_forward(this->act_, this->alpha_, y, B * P, Co);
      return;
    }
    if (direct_) {
      const bool relu = this->act_ == Act::Relu;
      if (!((relu || this->act_ == Act::Linear) &&
            conv2d_forward_c1_simd(s_, x, W_, b_, relu, y, B))) {
        conv2d_forward_c1(s_, x, W_, b_, y, B);
        bias_activation_forward(y, B * P, false);
      }
      col_holds_ = nullptr;
      return;
    }
    for (i64 n0 = 0; n0 < B; n0 += chunk_) {
      const i64 nb = std::min(chunk_, B - n0);
      const T* xs = x + n0 * this->in_;
      T* ys = y + n0 * P * Co;
      const T* col = xs;
      if (!pointwise_) {
        im2col_nhwc(s_, xs, nb, col_.data());
        col = col_.data();
      }
      gemm(false, false, nb * P, Co, K, T(1), col, K, W_, Co, T(0), ys, Co);
      bias_activation_forward(ys, nb * P, true);
    }
    // Backward can reuse this col matrix when the whole batch was one chunk.
    col_holds_ = training && !pointwise_ && B <= chunk_ ? x : nullptr;
    col_batch_ = B;
  }

  // dy: (B, OH, OW, Cout) -> dz in place; db += Σ dz; per chunk: dW += colᵀ·dz (K, Cout),
  // dcol = dz·Wᵀ (nb·OH·OW, K) into the col buffer (col is dead by then), dx = col2im(dcol).
  void backward(const T* x, const T* y, T* dy, T* dx, i64 B) override {
    check_capacity(B);
    const i64 P = s_.OH() * s_.OW(), K = s_.K(), Co = s_.Cout;
    if (naive_) {
      activation_backward(this->act_, this->alpha_, y, dy, B * P, Co);
      conv2d_backward_naive(s_, x, W_, dy, dW_, db_, dx, B);
      return;
    }
    activation_backward_bias(y, dy, B * P);
    const bool have_col = col_holds_ == x && col_batch_ == B && B <= chunk_;
    col_holds_ = nullptr;
    for (i64 n0 = 0; n0 < B; n0 += chunk_) {
      const i64 nb = std::min(chunk_, B - n0);
      const T* xs = x + n0 * this->in_;
      const T* dz = dy + n0 * P * Co;
      T* dxs = dx ? dx + n0 * this->in_ : nullptr;
      if (direct_) {
        const int nt = int(std::min<i64>(max_threads(), i64(partial_.size()) / (K * Co)));
        if (!conv2d_backward_weights_c1_simd(s_, xs, dz, dW_, partial_.data(), nt, nb))
          conv2d_backward_weights_c1(s_, xs, dz, dW_, partial_.data(), nt, nb);
        if (dxs) {
          gemm(false, true, nb * P, K, Co, T(1), dz, Co, W_, Co, T(0), col_.data(), K);
          col2im_nhwc(s_, col_.data(), nb, dxs);
        }
        continue;
      }
      if (pointwise_) {
        gemm(true, false, K, Co, nb * P, T(1), xs, K, dz, Co, T(1), dW_, Co);
        if (dxs) gemm(false, true, nb * P, K, Co, T(1), dz, Co, W_, Co, T(0), dxs, K);
        continue;
      }
      if (!have_col) im2col_nhwc(s_, xs, nb, col_.data());
      gemm(true, false, K, Co, nb * P, T(1), col_.data(), K, dz, Co, T(1), dW_, Co);
      if (dxs) {
        gemm(false, true, nb * P, K, Co, T(1), dz, Co, W_, Co, T(0), col_.data(), K);
        col2im_nhwc(s_, col_.data(), nb, dxs);
      }
    }
  }

 private:
  void check_capacity(i64 B) const {
    if (B < 1) fail("Conv2D: batch must be >= 1; received ", B);
    if (!pointwise_ && !naive_ && i64(col_.size()) < std::min(B, chunk_) * s_.OH() * s_.OW() * s_.K())
      fail("Conv2D: batch of ", B, " exceeds the reserved capacity (reserve() was not called)");
  }

  // y: (rows, Cout) GEMM output, in cache: add the bias and apply the activation in one pass
  // where the activation is element-wise and cheap; otherwise a second pass.
  void bias_activation_forward(T* y, i64 rows, bool add_bias) {
    const i64 Co = s_.Cout;
    if (!add_bias && this->act_ == Act::Linear) return;
    const T* b = b_;
    const Act act = this->act_;
    const T alpha = this->alpha_;
    if (act == Act::Relu || act == Act::LeakyRelu) {
      const T slope = act == Act::Relu ? T(0) : alpha;
      const T* bias = add_bias ? b : nullptr;
#pragma omp parallel for schedule(static) if (rows * Co > kParallelElems)
      for (i64 r = 0; r < rows; ++r) leaky_relu_bias_row(y + r * Co, bias, Co, slope);
      return;
    }
    if (add_bias) {
#pragma omp parallel for schedule(static) if (rows * Co > kParallelElems)
      for (i64 r = 0; r < rows; ++r)
        for (i64 j = 0; j < Co; ++j) y[r * Co + j] += b[j];
    }
    activation_forward(act, alpha, y, rows, Co);
  }

  // dy -> dz = dy ⊙ act'(y) in place and db += Σ_rows dz, one pass for the piecewise-linear
  // activations (a second pass for the others). Summed in blocks of rows so float32 sums over
  // large batches keep their precision.
  void activation_backward_bias(const T* y, T* dz, i64 rows) {
    const i64 Co = s_.Cout;
    const Act act = this->act_;
    const bool piecewise = act == Act::Relu || act == Act::LeakyRelu || act == Act::Linear;
    if (!piecewise) activation_backward(act, this->alpha_, y, dz, rows, Co);
    const T slope = act == Act::LeakyRelu ? this->alpha_ : T(0);
    const bool masked = piecewise && act != Act::Linear;
    T* __restrict bs = bsum_.data();
    constexpr i64 kBlock = 256;
    for (i64 r0 = 0; r0 < rows; r0 += kBlock) {
      const i64 r1 = std::min(rows, r0 + kBlock);
      std::fill(bs, bs + Co, T(0));
      if (masked) {
        for (i64 r = r0; r < r1; ++r)
          leaky_relu_backward_sum_row(y + r * Co, dz + r * Co, bs, Co, slope);
      } else {
        for (i64 r = r0; r < r1; ++r)
          for (i64 j = 0; j < Co; ++j) bs[j] += dz[r * Co + j];
      }
      for (i64 j = 0; j < Co; ++j) db_[j] += bs[j];
    }
  }

  ConvShape s_{};
  bool pointwise_ = false;
  bool direct_ = false;  // Cin == 1: direct forward and dW, col_ only for dx
  avec<T> partial_;      // (threads, K, Cout) per-thread dW sums of the direct path
  bool naive_ = false;  // run the direct twin (CHAINRULE_CONV_NAIVE=1)
  i64 chunk_ = 1;
  avec<T> col_;
  avec<T> bsum_;  // (Cout) block partial sums for db
  const T* col_holds_ = nullptr;  // the x whose im2col the buffer holds (training forward)
  i64 col_batch_ = 0;
  T* W_ = nullptr;
  T* b_ = nullptr;
  T* dW_ = nullptr;
  T* db_ = nullptr;
};

}  // namespace cr
