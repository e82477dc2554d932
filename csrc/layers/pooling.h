// 2-D max and average pooling, channels-last: x: (B, H, W, C) -> y: (B, OH, OW, C).
// "same" padding follows TensorFlow: padded positions never win a max and are not counted
// in an average (every window holds at least one real element). No parameters.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>

#include "kernels/spatial.h"
#include "layers/layer.h"

namespace cr {

struct PoolShape {
  i64 H, W, C;
  Axis ah, aw;
  i64 in_size() const { return H * W * C; }
  i64 out_size() const { return ah.out * aw.out * C; }

  // Checked by make(): both sizes fit kMaxElems, so the products above cannot overflow.
  static PoolShape make(const char* layer, i64 h, i64 w, i64 c, i64 ph, i64 pw, i64 sh, i64 sw,
                        bool same) {
    if (c < 1) fail(layer, ": input channels must be >= 1; received ", c);
    PoolShape s;
    s.H = h;
    s.W = w;
    s.C = c;
    s.ah = Axis::make(layer, "height", h, ph, sh, same);
    s.aw = Axis::make(layer, "width", w, pw, sw, same);
    checked_mul(checked_mul(h, w, "pooling input"), c, "pooling input (height x width x channels)");
    checked_mul(checked_mul(s.ah.out, s.aw.out, "pooling output"), c, "pooling output");
    return s;
  }
  // The in-bounds window rows [h0, h1) and columns [w0, w1) of output pixel (oh, ow).
  void window(i64 oh, i64 ow, i64& h0, i64& h1, i64& w0, i64& w1) const {
    h0 = oh * ah.stride - ah.pad_before;
    w0 = ow * aw.stride - aw.pad_before;
    h1 = std::min(h0 + ah.window, H);
    w1 = std::min(w0 + aw.window, W);
    h0 = std::max<i64>(h0, 0);
    w0 = std::max<i64>(w0, 0);
  }
};

// x: (B, H, W, C) -> y: (B, OH, OW, C), argmax: (B, OH, OW, C) offsets into the sample's x
// of the winning element (the first maximum in row-major window order, as PyTorch).
template <typename T>
void maxpool2d_forward(const PoolShape& s, const T* x, T* y, std::int32_t* argmax, i64 B) {
  const i64 OH = s.ah.out, OW = s.aw.out, C = s.C;
#pragma omp parallel for schedule(static) if (B * s.in_size() > kParallelElems)
  for (i64 nh = 0; nh < B * OH; ++nh) {
    const i64 n = nh / OH, oh = nh % OH;
    const T* xs = x + n * s.in_size();
    for (i64 ow = 0; ow < OW; ++ow) {
      T* yo = y + (nh * OW + ow) * C;
      std::int32_t* am = argmax + (nh * OW + ow) * C;
      i64 h0, h1, w0, w1;
      s.window(oh, ow, h0, h1, w0, w1);
      const std::int32_t first = std::int32_t((h0 * s.W + w0) * C);
      for (i64 c = 0; c < C; ++c) {
        yo[c] = xs[first + c];
        am[c] = first + std::int32_t(c);
      }
      for (i64 ih = h0; ih < h1; ++ih)
        for (i64 iw = (ih == h0 ? w0 + 1 : w0); iw < w1; ++iw) {
          const std::int32_t off = std::int32_t((ih * s.W + iw) * C);
          const T* xp = xs + off;
          // Branch-free selects so the channel loop vectorizes (a branch here was the
          // slowest part of the LeNet epoch after the convolutions).
          for (i64 c = 0; c < C; ++c) {
            const bool gt = xp[c] > yo[c];
            yo[c] = gt ? xp[c] : yo[c];
            am[c] = gt ? off + std::int32_t(c) : am[c];
          }
        }
    }
  }
}

// Fast path for the common 2x2 window, stride 2, no padding (every window whole; an odd
// last row/column of a 'valid' pooling is simply not read). Four contiguous C-vectors per
// output pixel and no argmax at all: backward finds the winner again by comparing x with y,
// the first element equal to the max in row-major window order (the general path's
// choice). Pure float compares and selects, so both loops vectorize at baseline SSE2.
inline bool maxpool_is_2x2(const PoolShape& s) {
  return s.ah.window == 2 && s.aw.window == 2 && s.ah.stride == 2 && s.aw.stride == 2 &&
         s.ah.pad_before == 0 && s.aw.pad_before == 0 && 2 * s.ah.out <= s.H &&
         2 * s.aw.out <= s.W;
}

// x: (B, H, W, C) -> y: (B, OH, OW, C).
template <typename T>
void maxpool2x2_forward(const PoolShape& s, const T* x, T* y, i64 B) {
  const i64 OH = s.ah.out, OW = s.aw.out, C = s.C, W = s.W;
#pragma omp parallel for schedule(static) if (B * s.in_size() > kParallelElems)
  for (i64 nh = 0; nh < B * OH; ++nh) {
    const i64 n = nh / OH, oh = nh % OH;
    const T* __restrict r0 = x + n * s.in_size() + 2 * oh * W * C;
    const T* __restrict r1 = r0 + W * C;
    T* __restrict yo = y + nh * OW * C;
    for (i64 ow = 0; ow < OW; ++ow, r0 += 2 * C, r1 += 2 * C, yo += C)
      for (i64 c = 0; c < C; ++c) {
        const T a = r0[c], b = r0[C + c], d = r1[c], e = r1[C + c];
        const T m0 = b > a ? b : a, m1 = e > d ? e : d;  // ">" keeps the earlier on ties
        yo[c] = m1 > m0 ? m1 : m0;
      }
  }
}

// One output pixel's channels c in [c0, C) of the 2x2 backward: x0/x1 the window's two
// input rows, dx0/dx1 the same places in dx. Written with GCC vector types: GCC will not
// if-convert the scalar form of these equality selects, and the scalar loop is 6x slower.
template <typename T>
inline void maxpool2x2_backward_pixel(const T* x0, const T* x1, const T* ym, const T* d, T* dx0,
                                      T* dx1, i64 C) {
  typedef T V __attribute__((vector_size(16)));
  constexpr i64 L = 16 / sizeof(T);
  i64 c = 0;
  for (; c + L <= C; c += L) {
    V a, b, e, m, g;
    __builtin_memcpy(&a, x0 + c, 16);
    __builtin_memcpy(&b, x0 + C + c, 16);
    __builtin_memcpy(&e, x1 + c, 16);
    __builtin_memcpy(&m, ym + c, 16);
    __builtin_memcpy(&g, d + c, 16);
    const V zero = {};
    const auto ta = a == m, tb = (a != m) & (b == m), te = (a != m) & (b != m) & (e == m);
    const V g0 = ta ? g : zero, g1 = tb ? g : zero, g2 = te ? g : zero;
    const V g3 = (ta | tb | te) ? zero : g;
    __builtin_memcpy(dx0 + c, &g0, 16);
    __builtin_memcpy(dx0 + C + c, &g1, 16);
    __builtin_memcpy(dx1 + c, &g2, 16);
    __builtin_memcpy(dx1 + C + c, &g3, 16);
  }
  for (; c < C; ++c) {
    const T m = ym[c], g = d[c];
    const int k = x0[c] == m ? 0 : x0[C + c] == m ? 1 : x1[c] == m ? 2 : 3;
    dx0[c] = k == 0 ? g : T(0);
    dx0[C + c] = k == 1 ? g : T(0);
    dx1[c] = k == 2 ? g : T(0);
    dx1[C + c] = k == 3 ? g : T(0);
  }
}

// x, y: the forward input and output; dy: (B, OH, OW, C) -> dx: (B, H, W, C) overwritten:
// dy to the window's first element equal to y, zeros elsewhere (windows do not overlap).
template <typename T>
void maxpool2x2_backward(const PoolShape& s, const T* x, const T* y, const T* dy, T* dx,
                         i64 B) {
  const i64 OH = s.ah.out, OW = s.aw.out, C = s.C, H = s.H, W = s.W;
#pragma omp parallel for schedule(static) if (B * s.in_size() > kParallelElems)
  for (i64 n = 0; n < B; ++n) {
    T* dxs = dx + n * s.in_size();
    for (i64 oh = 0; oh < OH; ++oh) {
      const i64 row = 2 * oh * W * C, o = (n * OH + oh) * OW * C;
      const T* x0 = x + n * s.in_size() + row;
      T* r0 = dxs + row;
      for (i64 ow = 0; ow < OW; ++ow)
        maxpool2x2_backward_pixel(x0 + 2 * ow * C, x0 + (W + 2 * ow) * C, y + o + ow * C,
                                  dy + o + ow * C, r0 + 2 * ow * C, r0 + (W + 2 * ow) * C, C);
      if (2 * OW < W) {  // odd last column, in no window
        std::fill(r0 + 2 * OW * C, r0 + W * C, T(0));
        std::fill(r0 + (W + 2 * OW) * C, r0 + 2 * W * C, T(0));
      }
    }
    if (2 * OH < H) std::fill(dxs + 2 * OH * W * C, dxs + H * W * C, T(0));  // odd last row
  }
}

// dy: (B, OH, OW, C) -> dx: (B, H, W, C) overwritten; each dy goes to its window's argmax.
template <typename T>
void maxpool2d_backward(const PoolShape& s, const T* dy, const std::int32_t* argmax, T* dx, i64 B) {
  const i64 out = s.out_size(), in = s.in_size();
#pragma omp parallel for schedule(static) if (B * in > kParallelElems)
  for (i64 n = 0; n < B; ++n) {
    T* dxs = dx + n * in;
    std::fill(dxs, dxs + in, T(0));
    const T* d = dy + n * out;
    const std::int32_t* am = argmax + n * out;
    for (i64 i = 0; i < out; ++i) dxs[am[i]] += d[i];
  }
}

// x: (B, H, W, C) -> y: (B, OH, OW, C), the mean over the in-bounds window.
template <typename T>
void avgpool2d_forward(const PoolShape& s, const T* x, T* y, i64 B) {
  const i64 OH = s.ah.out, OW = s.aw.out, C = s.C;
#pragma omp parallel for schedule(static) if (B * s.in_size() > kParallelElems)
  for (i64 nh = 0; nh < B * OH; ++nh) {
    const i64 n = nh / OH, oh = nh % OH;
    const T* xs = x + n * s.in_size();
    for (i64 ow = 0; ow < OW; ++ow) {
      T* yo = y + (nh * OW + ow) * C;
      i64 h0, h1, w0, w1;
      s.window(oh, ow, h0, h1, w0, w1);
      std::fill(yo, yo + C, T(0));
      for (i64 ih = h0; ih < h1; ++ih)
        for (i64 iw = w0; iw < w1; ++iw) {
          const T* xp = xs + (ih * s.W + iw) * C;
          for (i64 c = 0; c < C; ++c) yo[c] += xp[c];
        }
      const T inv = T(1) / T((h1 - h0) * (w1 - w0));
      for (i64 c = 0; c < C; ++c) yo[c] *= inv;
    }
  }
}

// dy: (B, OH, OW, C) -> dx: (B, H, W, C) overwritten; dy / count spread over the window.
template <typename T>
void avgpool2d_backward(const PoolShape& s, const T* dy, T* dx, i64 B) {
  const i64 OH = s.ah.out, OW = s.aw.out, C = s.C, in = s.in_size();
#pragma omp parallel for schedule(static) if (B * in > kParallelElems)
  for (i64 n = 0; n < B; ++n) {
    T* dxs = dx + n * in;
    std::fill(dxs, dxs + in, T(0));
    for (i64 oh = 0; oh < OH; ++oh)
      for (i64 ow = 0; ow < OW; ++ow) {
        const T* d = dy + ((n * OH + oh) * OW + ow) * C;
        i64 h0, h1, w0, w1;
        s.window(oh, ow, h0, h1, w0, w1);
        const T inv = T(1) / T((h1 - h0) * (w1 - w0));
        for (i64 ih = h0; ih < h1; ++ih)
          for (i64 iw = w0; iw < w1; ++iw) {
            T* dp = dxs + (ih * s.W + iw) * C;
            for (i64 c = 0; c < C; ++c) dp[c] += inv * d[c];
          }
      }
  }
}

template <typename T>
class MaxPooling2D final : public Layer<T> {
 public:
  MaxPooling2D(i64 h, i64 w, i64 c, i64 ph, i64 pw, i64 sh, i64 sw, bool same)
      : s_(PoolShape::make("MaxPooling2D", h, w, c, ph, pw, sh, sw, same)) {
    if (s_.in_size() > std::numeric_limits<std::int32_t>::max())
      fail("MaxPooling2D: input of ", s_.in_size(), " elements per sample is too large");
    this->in_ = s_.in_size();
    this->out_ = s_.out_size();
  }
  const char* kind() const override { return "maxpool2d"; }
  void reserve(i64 batch) override {
    if (reserved_ >= batch) return;
    if (!two_by_two_) argmax_.assign(batch * this->out_, 0);
    reserved_ = batch;
  }
  // x: (B, H, W, C), y: (B, OH, OW, C); caches the argmax offsets for backward (the 2x2
  // path finds them again from x and y).
  void forward(const T* x, T* y, i64 B, bool) override {
    check_capacity(B);
    if (two_by_two_)
      maxpool2x2_forward(s_, x, y, B);
    else
      maxpool2d_forward(s_, x, y, argmax_.data(), B);
  }
  void backward(const T* x, const T* y, T* dy, T* dx, i64 B) override {
    check_capacity(B);
    if (!dx) return;
    if (two_by_two_)
      maxpool2x2_backward(s_, x, y, dy, dx, B);
    else
      maxpool2d_backward(s_, dy, argmax_.data(), dx, B);
  }

 private:
  void check_capacity(i64 B) const {
    if (B < 1 || B > reserved_)
      fail("MaxPooling2D: batch of ", B, " exceeds the reserved capacity");
  }
  PoolShape s_;
  bool two_by_two_ = maxpool_is_2x2(s_);
  i64 reserved_ = 0;
  std::vector<std::int32_t> argmax_;  // (batch, OH, OW, C); empty on the 2x2 path
};

template <typename T>
class AveragePooling2D final : public Layer<T> {
 public:
  AveragePooling2D(i64 h, i64 w, i64 c, i64 ph, i64 pw, i64 sh, i64 sw, bool same)
      : s_(PoolShape::make("AveragePooling2D", h, w, c, ph, pw, sh, sw, same)) {
    this->in_ = s_.in_size();
    this->out_ = s_.out_size();
  }
  const char* kind() const override { return "avgpool2d"; }
  void forward(const T* x, T* y, i64 B, bool) override { avgpool2d_forward(s_, x, y, B); }
  void backward(const T*, const T*, T* dy, T* dx, i64 B) override {
    if (dx) avgpool2d_backward(s_, dy, dx, B);
  }

 private:
  PoolShape s_;
};

}  // namespace cr
