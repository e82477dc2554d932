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
    this->in_ = s_.in_size();
    this->out_ = s_.out_size();
    this->act_ = act;
    this->alpha_ = alpha;
    // A 1x1 stride-1 convolution needs no im2col: x itself is the col matrix.
    pointwise_ = kh == 1 && kw == 1 && sh == 1 && sw == 1;
    const i64 col_per_sample = s_.OH() * s_.OW() * s_.K();
    chunk_ = std::max<i64>(1, kColBytes / i64(sizeof(T) * col_per_sample));
    bsum_.assign(cout, T(0));
    const char* env = std::getenv("CHAINRULE_CONV_NAIVE");
    naive_ = env && env[0] == '1';
  }
  const char* kind() const override { return "conv2d"; }
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
      bias_activation_forward(ys, nb * P);
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
    activation_backward(this->act_, this->alpha_, y, dy, B * P, Co);
    if (naive_) {
      conv2d_backward_naive(s_, x, W_, dy, dW_, db_, dx, B);
      return;
    }
    bias_backward(dy, B * P);
    const bool have_col = col_holds_ == x && col_batch_ == B && B <= chunk_;
    col_holds_ = nullptr;
    for (i64 n0 = 0; n0 < B; n0 += chunk_) {
      const i64 nb = std::min(chunk_, B - n0);
      const T* xs = x + n0 * this->in_;
      const T* dz = dy + n0 * P * Co;
      T* dxs = dx ? dx + n0 * this->in_ : nullptr;
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
  void bias_activation_forward(T* y, i64 rows) {
    const i64 Co = s_.Cout;
    const T* b = b_;
    const Act act = this->act_;
    const T alpha = this->alpha_;
    if (act == Act::Relu || act == Act::Linear || act == Act::LeakyRelu) {
      const T slope = act == Act::Relu ? T(0) : alpha;
      const bool linear = act == Act::Linear;
#pragma omp parallel for schedule(static) if (rows * Co > kParallelElems)
      for (i64 r = 0; r < rows; ++r) {
        T* yr = y + r * Co;
        if (linear) {
          for (i64 j = 0; j < Co; ++j) yr[j] += b[j];
        } else {
          for (i64 j = 0; j < Co; ++j) {
            const T v = yr[j] + b[j];
            yr[j] = v > T(0) ? v : slope * v;
          }
        }
      }
      return;
    }
#pragma omp parallel for schedule(static) if (rows * Co > kParallelElems)
    for (i64 r = 0; r < rows; ++r)
      for (i64 j = 0; j < Co; ++j) y[r * Co + j] += b[j];
    activation_forward(act, alpha, y, rows, Co);
  }

  // db += Σ_rows dz, summed in blocks of rows so float32 sums over large batches keep
  // their precision.
  void bias_backward(const T* dz, i64 rows) {
    const i64 Co = s_.Cout;
    constexpr i64 kBlock = 256;
    for (i64 r0 = 0; r0 < rows; r0 += kBlock) {
      const i64 r1 = std::min(rows, r0 + kBlock);
      std::fill(bsum_.begin(), bsum_.end(), T(0));
      for (i64 r = r0; r < r1; ++r) {
        const T* d = dz + r * Co;
        for (i64 j = 0; j < Co; ++j) bsum_[j] += d[j];
      }
      for (i64 j = 0; j < Co; ++j) db_[j] += bsum_[j];
    }
  }

  ConvShape s_{};
  bool pointwise_ = false;
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
