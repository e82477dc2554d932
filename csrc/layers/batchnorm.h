// Batch normalization over the last axis (the features of a Dense output, the channels of a
// channels-last image), as Keras's BatchNormalization. Training: per channel c, over the
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
    block_rows_ = std::max<i64>(1, kBlockElems / C_);
    mean_.assign(C_, 0.0);
    inv_std_.assign(C_, 0.0);
    mu_.assign(C_, T(0));
    mul_.assign(C_, T(0));
    add_.assign(C_, T(0));
    dx_a_.assign(C_, T(0));
    dx_b_.assign(C_, T(0));
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
    const i64 need = 2 * blocks(checked_mul(batch, pixels_, "BatchNormalization: rows", kMaxBufferElems)) * C_;
    if (i64(partial_.size()) < need) partial_.assign(need, 0.0);
  }

  // x, y: (R, C) with R = B·pixels. Training (and not frozen): the batch statistics, then the
  // moving ones updated; otherwise the moving statistics. Either way y = (x − μ)·mul + β per
  // channel (mul = γ·inv_std), and mean_ / inv_std_ keep the statistics used for backward.
  void forward(const T* x, T* y, i64 B, bool training) override {
    const i64 C = C_, R = B * pixels_;
    check_capacity(R);
    batch_stats_ = training && this->trainable_;
    if (batch_stats_) {
      column_sums(R, [&](i64 r, double* acc) {
        const T* xr = x + r * C;
        for (i64 c = 0; c < C; ++c) acc[c] += double(xr[c]);
      }, 1);
      for (i64 c = 0; c < C; ++c) mean_[c] = partial_[c] / double(R);
      const double* mean = mean_.data();
      column_sums(R, [&](i64 r, double* acc) {  // second pass: Σ(x − μ)², no cancellation
        const T* xr = x + r * C;
        for (i64 c = 0; c < C; ++c) {
          const double d = double(xr[c]) - mean[c];
          acc[c] += d * d;
        }
      }, 1);
      const double keep = momentum_, take = 1.0 - momentum_;
      for (i64 c = 0; c < C; ++c) {
        const double var = partial_[c] / double(R);
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
    for (i64 c = 0; c < C; ++c) {
      mu_[c] = T(mean_[c]);
      mul_[c] = T((gamma_ ? double(gamma_[c]) : 1.0) * inv_std_[c]);
      add_[c] = beta_ ? beta_[c] : T(0);
    }
    const T* mu = mu_.data();
    const T* mul = mul_.data();
    const T* add = add_.data();
    // (x − μ) first: no cancellation when |μ| is large against σ.
#pragma omp parallel for schedule(static) if (R * C > kParallelElems)
    for (i64 r = 0; r < R; ++r) {
      const T* xr = x + r * C;
      T* yr = y + r * C;
#pragma omp simd
      for (i64 c = 0; c < C; ++c) yr[c] = (xr[c] - mu[c]) * mul[c] + add[c];
    }
  }

  // dy: (R, C). With x̂ = (x − μ)·inv_std: dβ += Σ dy, dγ += Σ dy·x̂ (not when frozen). dx
  // with the batch statistics (they depend on x): γ·inv_std·(dy − Σdy/R − x̂·Σ(dy·x̂)/R);
  // with the moving ones (constants): γ·inv_std·dy.
  void backward(const T* x, const T*, T* dy, T* dx, i64 B) override {
    const i64 C = C_, R = B * pixels_;
    check_capacity(R);
    const bool grads = this->trainable_;
    const double* mean = mean_.data();
    const double* inv_std = inv_std_.data();
    if (grads || (batch_stats_ && dx)) {
      column_sums(R, [&](i64 r, double* acc) {
        const T* xr = x + r * C;
        const T* dr = dy + r * C;
        double* acc2 = acc + C;
        for (i64 c = 0; c < C; ++c) {
          const double d = double(dr[c]);
          acc[c] += d;
          acc2[c] += d * (double(xr[c]) - mean[c]) * inv_std[c];
        }
      }, 2);
    }
    const double* sum_dy = partial_.data();
    const double* sum_dy_xhat = partial_.data() + C;
    if (grads) {
      if (dgamma_)
        for (i64 c = 0; c < C; ++c) dgamma_[c] += T(sum_dy_xhat[c]);
      if (dbeta_)
        for (i64 c = 0; c < C; ++c) dbeta_[c] += T(sum_dy[c]);
    }
    if (!dx) return;
    const T* mul = mul_.data();  // γ·inv_std
    if (!batch_stats_) {
#pragma omp parallel for schedule(static) if (R * C > kParallelElems)
      for (i64 r = 0; r < R; ++r) {
        const T* dr = dy + r * C;
        T* out = dx + r * C;
#pragma omp simd
        for (i64 c = 0; c < C; ++c) out[c] = dr[c] * mul[c];
      }
      return;
    }
    // dx = mul·dy − mul·Σdy/R − (x − μ)·mul·inv_std·Σ(dy·x̂)/R = mul·dy + (x − μ)·a + b.
    T* a = dx_a_.data();
    T* b = dx_b_.data();
    for (i64 c = 0; c < C; ++c) {
      const double m = double(mul[c]);
      a[c] = T(-m * inv_std[c] * sum_dy_xhat[c] / double(R));
      b[c] = T(-m * sum_dy[c] / double(R));
    }
    const T* mu = mu_.data();
#pragma omp parallel for schedule(static) if (R * C > kParallelElems)
    for (i64 r = 0; r < R; ++r) {
      const T* xr = x + r * C;
      const T* dr = dy + r * C;
      T* out = dx + r * C;
#pragma omp simd
      for (i64 c = 0; c < C; ++c) out[c] = dr[c] * mul[c] + (xr[c] - mu[c]) * a[c] + b[c];
    }
  }

 private:
  // Per-channel sums are taken over blocks of rows (about kBlockElems values each), each
  // block's partial sums kept apart and added in block order: the same sums whatever the
  // thread count, and float32 data summed in double.
  static constexpr i64 kBlockElems = 8192;
  i64 blocks(i64 rows) const { return (rows + block_rows_ - 1) / block_rows_; }

  void check_capacity(i64 rows) const {
    if (rows < 1) fail("BatchNormalization: batch must be >= 1; received ", rows / pixels_);
    if (i64(partial_.size()) < 2 * blocks(rows) * C_)
      fail("BatchNormalization: batch of ", rows / pixels_,
           " exceeds the reserved capacity (reserve() was not called)");
  }

  // width·C sums per channel over the R rows: row_fn(r, acc) adds row r's terms into acc
  // (width·C doubles). The totals land in partial_[0, width·C).
  template <typename RowFn>
  void column_sums(i64 R, RowFn&& row_fn, int width) {
    const i64 n = width * C_, nblk = blocks(R);
    double* part = partial_.data();
    // Block 0 accumulates into the front of partial_, which then holds the total; blocks
    // k >= 1 use slot k.
#pragma omp parallel for schedule(static) if (R * C_ > kParallelElems && nblk > 1)
    for (i64 k = 0; k < nblk; ++k) {
      double* acc = part + k * n;
      std::fill(acc, acc + n, 0.0);
      const i64 r1 = std::min(R, (k + 1) * block_rows_);
      for (i64 r = k * block_rows_; r < r1; ++r) row_fn(r, acc);
    }
    for (i64 k = 1; k < nblk; ++k)
      for (i64 j = 0; j < n; ++j) part[j] += part[k * n + j];
  }

  i64 C_ = 1, pixels_ = 1, block_rows_ = 1;
  bool center_ = true, scale_ = true;
  double momentum_ = 0.99, epsilon_ = 1e-3;
  T* gamma_ = nullptr;
  T* beta_ = nullptr;
  T* moving_mean_ = nullptr;
  T* moving_var_ = nullptr;
  T* dgamma_ = nullptr;
  T* dbeta_ = nullptr;
  bool batch_stats_ = false;         // the last forward used the batch's statistics
  std::vector<double> mean_, inv_std_;  // (C) the statistics of the last forward
  avec<T> mu_, mul_, add_;           // (C) y = (x − mu)·mul + add
  avec<T> dx_a_, dx_b_;              // (C) backward: dx = dy·mul + x·a + b
  std::vector<double> partial_;      // (blocks, 2C) partial sums; its front: the totals
};

}  // namespace cr
