// The Activation layer: y = act(x) on its own (Keras's Activation), element-wise, or over the
// last axis for softmax (the channels of a channels-last image). The activation arithmetic
// is kernels/activations.h's, as in Dense and Conv2D. No parameters.
#pragma once
#include <cstring>

#include "layers/layer.h"

namespace cr {

template <typename T>
class Activation final : public Layer<T> {
 public:
  // size: values per sample; channels: the last axis, dividing size (softmax's rows).
  Activation(i64 size, i64 channels, Act act, T alpha) {
    if (size < 1 || size > kMaxElems)
      fail("Activation: input size must be in [1, ", kMaxElems, "]; received ", size);
    if (channels < 1 || size % channels != 0)
      fail("Activation: channels must be >= 1 and divide the input size ", size, "; received ",
           channels);
    this->in_ = size;
    this->out_ = size;
    this->act_ = act;
    this->alpha_ = alpha;
    C_ = channels;
  }
  const char* kind() const override { return "activation"; }
  i64 units() const override { return C_; }
  bool has_activation() const override { return true; }

  // x, y: (B·size / C, C) rows.
  void forward(const T* x, T* y, i64 B, bool) override {
    const i64 n = B * this->in_;
    if (x != y) std::memcpy(y, x, sizeof(T) * n);
    activation_forward(this->act_, this->alpha_, y, n / C_, C_);
  }
  // dy -> dz = dy ⊙ act'(y) in place, then dx = dz.
  void backward(const T*, const T* y, T* dy, T* dx, i64 B) override {
    const i64 n = B * this->in_;
    activation_backward(this->act_, this->alpha_, y, dy, n / C_, C_);
    if (dx) std::memcpy(dx, dy, sizeof(T) * n);
  }

 private:
  i64 C_ = 1;
};

}  // namespace cr
