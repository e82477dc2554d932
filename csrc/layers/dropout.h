// Inverted dropout: in training each element is kept with probability 1 - rate and scaled
// by 1 / (1 - rate), so inference is the identity. Masks come from a SplitMix64 stream
// reseeded once per fit (Layer::seed); forward caches the scaled mask for backward.
#pragma once
#include <algorithm>
#include <cstring>

#include "kernels/rng.h"
#include "layers/layer.h"

namespace cr {

template <typename T>
class Dropout final : public Layer<T> {
 public:
  Dropout(i64 size, double rate) : rng_(0x5EED0D0Full) {
    if (size < 1 || size > kMaxElems)
      fail("Dropout: input size must be in [1, ", kMaxElems, "]; received ", size);
    if (!(rate >= 0.0 && rate < 1.0)) fail("Dropout: rate must be in [0, 1); received ", rate);
    this->in_ = size;
    this->out_ = size;
    rate_ = rate;
    scale_ = T(1.0 / (1.0 - rate));
  }
  const char* kind() const override { return "dropout"; }
  void seed(std::uint64_t s) override { rng_ = SplitMix64(s); }
  std::uint64_t rng_state() const override { return rng_.state; }
  void set_rng_state(std::uint64_t s) override { rng_.state = s; }
  void reserve(i64 batch) override {
    if (i64(mask_.size()) < batch * this->in_) mask_.assign(batch * this->in_, T(0));
  }

  bool step_single_threaded(i64) const override { return true; }  // serial loops only

  // x, y: (B, size). mask: (B, size) holds 0 or 1/(1-rate). Drawn serially: one stream,
  // the same masks for a given seed whatever the thread count.
  void forward(const T* x, T* y, i64 B, bool training) override {
    const i64 n = B * this->in_;
    active_ = training && rate_ > 0.0;
    if (!active_) {
      if (x != y) std::memcpy(y, x, sizeof(T) * n);
      return;
    }
    if (i64(mask_.size()) < n) fail("Dropout: batch of ", B, " exceeds the reserved capacity");
    const float keep_from = float(rate_);
    T* m = mask_.data();
    for (i64 i = 0; i < n; ++i) m[i] = rng_.uniform01() >= keep_from ? scale_ : T(0);
    for (i64 i = 0; i < n; ++i) y[i] = x[i] * m[i];
  }
  // dx = dy ⊙ mask (identity if the forward pass was not a training one).
  void backward(const T*, const T*, T* dy, T* dx, i64 B) override {
    if (!dx) return;
    const i64 n = B * this->in_;
    if (!active_) {
      std::memcpy(dx, dy, sizeof(T) * n);
      return;
    }
    const T* m = mask_.data();
    for (i64 i = 0; i < n; ++i) dx[i] = dy[i] * m[i];
  }

 private:
  double rate_ = 0.0;
  T scale_ = T(1);
  SplitMix64 rng_;
  bool active_ = false;
  avec<T> mask_;  // (batch, size)
};

}  // namespace cr
