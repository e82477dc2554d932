// im2col and its adjoint col2im for channels-last convolutions: the copies that turn a
// convolution into one GEMM (Conv2D's general path). Portable loops, any T; no GEMM here.
#pragma once
#include <algorithm>

#include "common.h"
#include "kernels/spatial.h"

namespace cr {

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

}  // namespace cr
