// The Activation layer: y = act(x) on its own (Keras's Activation), element-wise, or over the
// last axis for softmax (the channels of a channels-last image). The activation arithmetic
// is kernels/activations.h's, as in Dense and Conv2D. No parameters.
#pragma once
#include <algorithm>
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

  bool step_single_threaded(i64 B) const override { return B * this->in_ <= kParallelElems / 4; }

  // x, y: (B·size / C, C) rows. Block by block: the copy and the in-place activation of a
  // block both run in cache, so memory sees one read of x and one write of y.
  void forward(const T* x, T* y, i64 B, bool) override {
    const i64 n = B * this->in_;
    const T alpha = this->alpha_;
    dispatch_act(this->act_, [&](auto op) {
      using Op = decltype(op);
      const i64 block = block_size<Op>();
      const i64 nblk = (n + block - 1) / block;
#pragma omp parallel for schedule(static) if (n > act_parallel_min<Op>())
      for (i64 k = 0; k < nblk; ++k) {
        const i64 lo = k * block, len = std::min(block, n - lo);
        if (x != y) std::memcpy(y + lo, x + lo, sizeof(T) * len);
        if constexpr (Op::row_coupled) {
          for (i64 r = 0; r < len / C_; ++r) Op::forward_row(y + lo + r * C_, C_);
        } else {
          bias_act_row<Op>(y + lo, static_cast<const T*>(nullptr), len, alpha);
        }
      }
    });
  }
  // dy -> dz = dy ⊙ act'(y) in place (what a trace reports as δ, as for Dense), and dx = dz,
  // block by block as forward.
  void backward(const T*, const T* y, T* dy, T* dx, i64 B) override {
    const i64 n = B * this->in_;
    const T alpha = this->alpha_;
    dispatch_act(this->act_, [&](auto op) {
      using Op = decltype(op);
      const i64 block = block_size<Op>();
      const i64 nblk = (n + block - 1) / block;
#pragma omp parallel for schedule(static) if (n > kParallelElems)
      for (i64 k = 0; k < nblk; ++k) {
        const i64 lo = k * block, len = std::min(block, n - lo);
        if constexpr (Op::row_coupled) {
          for (i64 r = 0; r < len / C_; ++r) Op::grad_row(y + lo + r * C_, dy + lo + r * C_, C_);
        } else {
          act_grad_sum_row<Op>(y + lo, dy + lo, static_cast<T*>(nullptr), len, alpha);
        }
        if (dx) std::memcpy(dx + lo, dy + lo, sizeof(T) * len);
      }
    });
  }

 private:
  // Values per block of forward and backward: kActBlock, or whole rows of C_ for an
  // activation that couples a row (softmax).
  template <typename Op>
  i64 block_size() const {
    return Op::row_coupled ? std::max<i64>(1, kActBlock / C_) * C_ : kActBlock;
  }

  i64 C_ = 1;
};

}  // namespace cr
