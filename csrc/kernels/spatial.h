// Window geometry shared by the convolution kernels, Conv2D and the pooling layers: output
// size and padding for one spatial axis, "valid" or "same" exactly as TensorFlow/Keras
// define them, and a convolution's shape. Images are channels-last (H, W, C) per sample;
// nothing here touches data.
#pragma once
#include "common.h"

namespace cr {

struct Axis {
  i64 in = 0, window = 0, stride = 1;
  i64 out = 0, pad_before = 0;  // pad_after is implied: extra padding goes after (bottom/right)

  // valid: out = floor((in - window) / stride) + 1, no padding.
  // same:  out = ceil(in / stride), pad total = max((out - 1) * stride + window - in, 0),
  //        pad_before = total / 2 (the odd element goes after, as TensorFlow).
  static Axis make(const char* layer, const char* axis_name, i64 in, i64 window, i64 stride,
                   bool same) {
    if (in < 1) fail(layer, ": input ", axis_name, " must be >= 1; received ", in);
    if (window < 1) fail(layer, ": window ", axis_name, " must be >= 1; received ", window);
    if (stride < 1) fail(layer, ": stride along ", axis_name, " must be >= 1; received ", stride);
    if (in > kMaxElems || window > kMaxElems || stride > kMaxElems)
      fail(layer, ": input ", axis_name, " ", in, ", window ", window, " and stride ", stride,
           " must each be <= ", kMaxElems);
    Axis a;
    a.in = in;
    a.window = window;
    a.stride = stride;
    if (same) {
      a.out = (in + stride - 1) / stride;
      i64 total = (a.out - 1) * stride + window - in;
      a.pad_before = total > 0 ? total / 2 : 0;
    } else {
      if (window > in)
        fail(layer, ": window ", axis_name, " ", window, " is larger than the input ", axis_name,
             " ", in, " with padding='valid'");
      a.out = (in - window) / stride + 1;
    }
    return a;
  }
};

// A convolution: input (H, W, Cin) per sample, Cout filters, one window per spatial axis.
struct ConvShape {
  i64 H, W, Cin, Cout;
  Axis ah, aw;  // window = kernel size, stride, out, pad_before per axis
  i64 OH() const { return ah.out; }
  i64 OW() const { return aw.out; }
  i64 K() const { return ah.window * aw.window * Cin; }  // one im2col row / kernel rows
  i64 in_size() const { return H * W * Cin; }
  i64 out_size() const { return ah.out * aw.out * Cout; }
};

}  // namespace cr
