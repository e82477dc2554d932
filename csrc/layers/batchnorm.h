// Batch normalization over the last axis (the features of a Dense output, the channels of
// a channels-last image), as Keras's BatchNormalization. Training: per channel c, over the
// batch's R rows (samples x pixels), y = γ·(x − μ)/√(σ² + ε) + β with the batch mean μ and
// biased variance σ², and the moving statistics move towards them:
// m ← m·momentum + μ·(1 − momentum), v ← v·momentum + σ²·(1 − momentum). Inference, and
// training while frozen (Keras), use (m, v) for (μ, σ²). Not here: other axes, masks,
// renormalization, statistics synchronized across replicas.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>

#include "layers/layer.h"

namespace cr {

template <typename T>
class BatchNormalization final : public Layer<T> {
 public:
  // size: values per sample; channels: the normalized (last) axis, dividing size.
  BatchNormalization(i64 size, i64 channels, bool center, bool scale, double momentum,
                     double epsilon) {
    if (size < 1 || size > kMaxElems)
      fail("BatchNormalization: input size must be in [1, ", kMaxElems, "]; received ", size);
    if (channels < 1 || size % channels != 0)
      fail("BatchNormalization: channels must be >= 1 and divide the input size ", size,
           "; received ", channels);
    if (!(momentum >= 0.0 && momentum <= 1.0))
      fail("BatchNormalization: momentum must be in [0, 1]; received ", momentum);
    if (!(epsilon > 0.0) || !std::isfinite(epsilon))
      fail("BatchNormalization: epsilon must be a finite number > 0; received ", epsilon);
    this->in_ = size;
    this->out_ = size;
    C_ = channels;
    pixels_ = size / channels;
    center_ = center;
    scale_ = scale;
    momentum_ = momentum;
    epsilon_ = epsilon;
    W_ = C_ * std::max<i64>(1, kWide / C_);
    block_ = W_ * std::max<i64>(1, kBlockElems / W_);
    mean_.assign(C_, 0.0);
    inv_std_.assign(C_, 0.0);
    totals_.assign(2 * C_, 0.0);
    for (auto* v : {&mu_, &mul_, &add_, &dx_a_, &dx_b_, &shift_}) v->assign(W_, T(0));
  }
  const char* kind() const override { return "batchnorm"; }
  i64 units() const override { return C_; }
  // Keras's order: gamma, beta (those the layer has), then the moving statistics, which
  // the forward pass updates and no optimizer touches.
  std::vector<ParamShape> param_shapes() const override {
    std::vector<ParamShape> p;
    if (scale_) p.push_back({"gamma", {C_}});
    if (center_) p.push_back({"beta", {C_}});
    p.push_back({"moving_mean", {C_}, false});
    p.push_back({"moving_variance", {C_}, false});
    return p;
  }
  void bind(T* params, T* grads) override {
    i64 k = 0;
    gamma_ = scale_ ? params + C_ * k : nullptr;
    dgamma_ = scale_ ? grads + C_ * k++ : nullptr;
    beta_ = center_ ? params + C_ * k : nullptr;
    dbeta_ = center_ ? grads + C_ * k++ : nullptr;
    moving_mean_ = params + C_ * k++;
    moving_var_ = params + C_ * k;
  }
  void reserve(i64 batch) override {
    const i64 n = checked_mul(batch, this->in_, "BatchNormalization: batch x size", kMaxBufferElems);
    const i64 need = 2 * blocks(n) * W_;
    if (i64(block_sums_.size()) < need) block_sums_.assign(need, T(0));
  }

  // x, y: (R, C) with R = B·pixels. Training (and not frozen): the batch statistics, then the
  // moving ones updated; otherwise the moving statistics. Either way y = (x − μ)·mul + β per
  // channel (mul = γ·inv_std), and mean_ / inv_std_ keep the statistics used for backward.
  void forward(const T* x, T* y, i64 B, bool training) override {
    const i64 C = C_, n = B * this->in_, R = B * pixels_;
    check_capacity(n);
    batch_stats_ = training && this->trainable_;
    if (batch_stats_) {
      // One pass: sums of x − K and (x − K)² with K the batch's first row, a value near each
      // channel's mean, so the variance Σ(x − K)²/R − (Σ(x − K)/R)² does not cancel.
      widen(shift_, [&](i64 c) { return x[c]; });
      const T* K = shift_.data();
      const double* total = column_sums(n, [&](const T* xs, i64 len, T* __restrict acc,
                                               T* __restrict acc2) {
#pragma omp simd
        for (i64 j = 0; j < len; ++j) {
          const T d = xs[j] - K[j];
          acc[j] += d;
          acc2[j] += d * d;
        }
      }, x);
      const double keep = momentum_, take = 1.0 - momentum_;
      for (i64 c = 0; c < C; ++c) {
        const double m = total[c] / double(R);
        const double var = std::max(total[C + c] / double(R) - m * m, 0.0);  // biased
        mean_[c] = double(K[c]) + m;
        inv_std_[c] = 1.0 / std::sqrt(var + epsilon_);
        moving_mean_[c] = T(double(moving_mean_[c]) * keep + mean_[c] * take);
        moving_var_[c] = T(double(moving_var_[c]) * keep + var * take);
      }
    } else {
      for (i64 c = 0; c < C; ++c) {
        mean_[c] = double(moving_mean_[c]);
        // A negative moving variance cannot come from training; the loaders refuse one, and
        // here it counts as 0 so that no NaN can come out.
        inv_std_[c] = 1.0 / std::sqrt(std::max(double(moving_var_[c]), 0.0) + epsilon_);
      }
    }
    widen(mu_, [&](i64 c) { return T(mean_[c]); });
    widen(mul_, [&](i64 c) { return T((gamma_ ? double(gamma_[c]) : 1.0) * inv_std_[c]); });
    widen(add_, [&](i64 c) { return beta_ ? beta_[c] : T(0); });
    const T* mu = mu_.data();
    const T* mul = mul_.data();
    const T* add = add_.data();
    // (x − μ) first: no cancellation when |μ| is large against σ.
    for_wide_rows(n, [&](i64 i, i64 len) {
      const T* xs = x + i;
      T* ys = y + i;
#pragma omp simd
      for (i64 j = 0; j < len; ++j) ys[j] = (xs[j] - mu[j]) * mul[j] + add[j];
    });
  }

  // dy: (R, C). With x̂ = (x − μ)·inv_std: dβ += Σ dy, dγ += Σ dy·x̂ (not when frozen). dx
  // with the batch statistics (they depend on x): γ·inv_std·(dy − Σdy/R − x̂·Σ(dy·x̂)/R);
  // with the moving ones (constants): γ·inv_std·dy.
  void backward(const T* x, const T*, T* dy, T* dx, i64 B) override {
    const i64 C = C_, n = B * this->in_, R = B * pixels_;
    check_capacity(n);
    const bool grads = this->trainable_;
    const T* mu = mu_.data();
    const T* mul = mul_.data();  // γ·inv_std
    const double* total = totals_.data();
    if (grads || (batch_stats_ && dx)) {
      // Σ dy and Σ dy·(x − μ) (times inv_std after the sums)
      total = column_sums(n, [&](const T* xs, i64 len, T* __restrict acc, T* __restrict acc2) {
        const T* ds = dy + (xs - x);
#pragma omp simd
        for (i64 j = 0; j < len; ++j) {
          acc[j] += ds[j];
          acc2[j] += ds[j] * (xs[j] - mu[j]);
        }
      }, x);
    }
    const double* sum_dy = total;
    const double* sum_dy_xc = total + C;  // Σ dy·(x − μ); Σ dy·x̂ = inv_std · this
    if (grads) {
      if (dgamma_)
        for (i64 c = 0; c < C; ++c) dgamma_[c] += T(sum_dy_xc[c] * inv_std_[c]);
      if (dbeta_)
        for (i64 c = 0; c < C; ++c) dbeta_[c] += T(sum_dy[c]);
    }
    if (!dx) return;
    if (!batch_stats_) {
      for_wide_rows(n, [&](i64 i, i64 len) {
        const T* ds = dy + i;
        T* out = dx + i;
#pragma omp simd
        for (i64 j = 0; j < len; ++j) out[j] = ds[j] * mul[j];
      });
      return;
    }
    // dx = mul·dy − mul·Σdy/R − (x − μ)·mul·inv_std²·Σ(dy·(x − μ))/R = mul·dy + (x − μ)·a + b.
    widen(dx_a_, [&](i64 c) {
      return T(-double(mul[c]) * inv_std_[c] * inv_std_[c] * sum_dy_xc[c] / double(R));
    });
    widen(dx_b_, [&](i64 c) { return T(-double(mul[c]) * sum_dy[c] / double(R)); });
    const T* a = dx_a_.data();
    const T* b = dx_b_.data();
    for_wide_rows(n, [&](i64 i, i64 len) {
      const T* xs = x + i;
      const T* ds = dy + i;
      T* out = dx + i;
#pragma omp simd
      for (i64 j = 0; j < len; ++j) out[j] = ds[j] * mul[j] + (xs[j] - mu[j]) * a[j] + b[j];
    });
  }

 private:
  // The per-channel vectors are kept wide: repeated to W_ = C·k values (about kWide), so
  // every loop over the (R, C) data runs over rows of W_ values whatever C is: the data is
  // whole wide rows plus a tail of whole channel rows, and position j of any row is channel
  // j mod C.
  static constexpr i64 kWide = 256;
  // Per-channel sums are taken over blocks of block_ values (whole wide rows), each block's
  // partial sums kept apart and added in block order: the same sums whatever the thread
  // count.
  static constexpr i64 kBlockElems = 8192;
  i64 blocks(i64 n) const { return (n + block_ - 1) / block_; }

  void check_capacity(i64 n) const {
    if (n < 1) fail("BatchNormalization: batch must be >= 1");
    if (i64(block_sums_.size()) < 2 * blocks(n) * W_)
      fail("BatchNormalization: batch of ", n / this->in_,
           " exceeds the reserved capacity (reserve() was not called)");
  }

  // v[j] = value(j mod C) for j < W_.
  template <typename F>
  void widen(avec<T>& v, F&& value) {
    for (i64 c = 0; c < C_; ++c) v[c] = value(c);
    for (i64 j = C_; j < W_; ++j) v[j] = v[j - C_];
  }

  // fn(start, len) over the n values in rows of W_ (the last one shorter), in parallel.
  template <typename F>
  void for_wide_rows(i64 n, F&& fn) {
    const i64 rows = (n + W_ - 1) / W_;
#pragma omp parallel for schedule(static) if (n > kParallelElems)
    for (i64 r = 0; r < rows; ++r) fn(r * W_, std::min(W_, n - r * W_));
  }

  // Two per-channel sums over the n values of data: row_fn(data + i, len, acc, acc2) adds
  // the terms of a row of len <= W_ values into acc and acc2 (W_ values each, position j
  // being channel j mod C). A block's sums are taken in T (a block adds at most
  // kBlockElems / W_ terms into each), the blocks' in double, in block order. Returns the
  // totals, (2, C) doubles.
  template <typename RowFn>
  const double* column_sums(i64 n, RowFn&& row_fn, const T* data) {
    const i64 span = 2 * W_, nblk = blocks(n);
    T* part = block_sums_.data();
#pragma omp parallel for schedule(static) if (n > kParallelElems && nblk > 1)
    for (i64 k = 0; k < nblk; ++k) {
      T* acc = part + k * span;
      std::fill(acc, acc + span, T(0));
      const i64 end = std::min(n, (k + 1) * block_);
      for (i64 i = k * block_; i < end; i += W_) row_fn(data + i, std::min(W_, end - i), acc, acc + W_);
    }
    double* total = totals_.data();
    std::fill(total, total + 2 * C_, 0.0);
    for (i64 k = 0; k < nblk; ++k)
      for (int w = 0; w < 2; ++w)
        for (i64 j = 0; j < W_; ++j) total[w * C_ + j % C_] += double(part[k * span + w * W_ + j]);
    return total;
  }

  i64 C_ = 1, pixels_ = 1, W_ = 1, block_ = 1;
  bool center_ = true, scale_ = true;
  double momentum_ = 0.99, epsilon_ = 1e-3;
  T* gamma_ = nullptr;
  T* beta_ = nullptr;
  T* moving_mean_ = nullptr;
  T* moving_var_ = nullptr;
  T* dgamma_ = nullptr;
  T* dbeta_ = nullptr;
  bool batch_stats_ = false;            // the last forward used the batch's statistics
  std::vector<double> mean_, inv_std_;  // (C) the statistics of the last forward
  // Wide (W_) per-channel vectors: forward y = (x − mu)·mul + add; backward dx = dy·mul +
  // (x − mu)·dx_a + dx_b; shift: the batch's first row, the shift of the statistics' sums.
  avec<T> mu_, mul_, add_, dx_a_, dx_b_, shift_;
  avec<T> block_sums_;           // (blocks, 2, W_) the blocks' partial sums
  std::vector<double> totals_;   // (2, C)
};

}  // namespace cr
