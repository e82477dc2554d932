// The naive twin of the convolution kernels: direct loops, always compiled, the oracle the
// tests compare the fast paths with (Conv2D runs them when CHAINRULE_CONV_NAIVE=1).
#pragma once
#include <algorithm>

#include "common.h"
#include "kernels/spatial.h"

namespace cr {

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
// dW += , db += (either may be null: not wanted); dx (may be null) is overwritten.
template <typename T>
void conv2d_backward_naive(const ConvShape& s, const T* x, const T* Wt, const T* dz, T* dW,
                           T* db, T* dx, i64 B) {
  const i64 KH = s.ah.window, KW = s.aw.window, Ci = s.Cin, Co = s.Cout;
  if (dx) std::fill(dx, dx + B * s.in_size(), T(0));
  for (i64 n = 0; n < B; ++n)
    for (i64 oh = 0; oh < s.OH(); ++oh)
      for (i64 ow = 0; ow < s.OW(); ++ow) {
        const T* d = dz + ((n * s.OH() + oh) * s.OW() + ow) * Co;
        if (db)
          for (i64 co = 0; co < Co; ++co) db[co] += d[co];
        for (i64 kh = 0; kh < KH; ++kh)
          for (i64 kw = 0; kw < KW; ++kw) {
            const i64 ih = oh * s.ah.stride - s.ah.pad_before + kh;
            const i64 iw = ow * s.aw.stride - s.aw.pad_before + kw;
            if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
            for (i64 ci = 0; ci < Ci; ++ci) {
              const i64 xi = ((n * s.H + ih) * s.W + iw) * Ci + ci;
              const T* wr = Wt + ((kh * KW + kw) * Ci + ci) * Co;
              T acc = T(0);
              for (i64 co = 0; co < Co; ++co) acc += wr[co] * d[co];
              if (dW) {
                T* dwr = dW + ((kh * KW + kw) * Ci + ci) * Co;
                for (i64 co = 0; co < Co; ++co) dwr[co] += x[xi] * d[co];
              }
              if (dx) dx[xi] += acc;
            }
          }
      }
}

}  // namespace cr
