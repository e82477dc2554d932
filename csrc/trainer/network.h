// The Network: a chain of layers over one flat parameter block, and the training epoch
// loop — shuffle, batch, forward, loss, backward, optimizer step, metrics — all in C++.
// Buffers are sized once per call for the largest batch; the batch loop allocates nothing.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <numeric>
#include <vector>

#include "common.h"
#include "layers/layer.h"
#include "losses/loss.h"
#include "optim/optimizer.h"
#include "trainer/rng.h"

namespace cr {

struct ParamInfo {
  i64 layer;
  std::string name;
  std::vector<i64> shape;
  i64 offset;  // into the flat block
  i64 size;
};

struct EpochStats {
  double loss = 0.0;      // mean (weighted) loss over the samples
  double accuracy = 0.0;  // mean accuracy over the samples
  i64 samples = 0;
  i64 steps = 0;
};

template <typename T>
class Network {
 public:
  explicit Network(std::vector<std::unique_ptr<Layer<T>>> layers) : layers_(std::move(layers)) {
    if (layers_.empty()) fail("Network: needs at least one layer");
    for (size_t i = 1; i < layers_.size(); ++i)
      if (layers_[i]->in_size() != layers_[i - 1]->out_size())
        fail("Network: layer ", i, " (", layers_[i]->kind(), ") expects ",
             layers_[i]->in_size(), " inputs per sample but layer ", i - 1, " (",
             layers_[i - 1]->kind(), ") produces ", layers_[i - 1]->out_size());
    i64 total = 0;
    for (size_t l = 0; l < layers_.size(); ++l) {
      for (auto& ps : layers_[l]->param_shapes()) {
        params_info_.push_back({i64(l), ps.name, ps.shape, total, ps.size()});
        total += ps.size();
      }
    }
    params_.assign(total, T(0));
    grads_.assign(total, T(0));
    i64 off = 0;
    for (auto& L : layers_) {
      i64 n = 0;
      for (auto& ps : L->param_shapes()) n += ps.size();
      L->bind(params_.data() + off, grads_.data() + off);
      off += n;
    }
    last_act_ = layers_.back()->activation();
  }

  i64 num_layers() const { return i64(layers_.size()); }
  Layer<T>& layer(i64 i) { return *layers_.at(i); }
  i64 in_size() const { return layers_.front()->in_size(); }
  i64 out_size() const { return layers_.back()->out_size(); }
  const std::vector<ParamInfo>& params_info() const { return params_info_; }
  T* params() { return params_.data(); }
  T* grads() { return grads_.data(); }
  i64 num_params() const { return i64(params_.size()); }
  bool compiled() const { return compiled_; }
  Loss loss() const { return loss_; }
  std::mutex& mutex() { return mu_; }

  // Set loss and optimizer. A final softmax/sigmoid that the loss can absorb is moved into
  // the loss (fused, stable); predictions still come out through it.
  void compile(Loss loss, const OptimConfig& opt) {
    loss_ = loss;
    Act fus = fusable_head(loss);
    head_ = (fus != Act::Linear && last_act_ == fus) ? fus : Act::Linear;
    layers_.back()->set_activation(head_ != Act::Linear ? Act::Linear : last_act_);
    set_optimizer(opt);
    compiled_ = true;
  }
  void set_optimizer(const OptimConfig& opt) {
    if (!(opt.learning_rate >= 0.0) || !std::isfinite(opt.learning_rate))
      fail("optimizer: learning_rate must be a finite number >= 0; received ", opt.learning_rate);
    opt_ = opt;
    opt_state_.assign(opt.state_slots(), avec<T>(params_.size(), T(0)));
    step_ = 0;
  }
  void set_learning_rate(double lr) {
    if (!(lr >= 0.0) || !std::isfinite(lr))
      fail("learning_rate must be a finite number >= 0; received ", lr);
    opt_.learning_rate = lr;
  }
  const OptimConfig& optimizer() const { return opt_; }
  i64 step_count() const { return step_; }

  // Reseed layers with randomness (dropout). Called once per fit.
  void seed_layers(std::uint64_t s) {
    for (size_t l = 0; l < layers_.size(); ++l) layers_[l]->seed(s + 0x9E37ull * (l + 1));
  }

  // One pass over X: (N, in), Y: (N, tc), SW: (N) or null. Mini-batches of `batch` (the
  // last one partial), in a seeded random order when `shuffle`.
  EpochStats train_epoch(const T* X, const T* Y, const T* SW, i64 N, i64 batch, bool shuffle,
                         std::uint64_t seed) {
    require_compiled();
    check_batch(N, batch);
    reserve(std::min(batch, N));
    order_.resize(N);
    std::iota(order_.begin(), order_.end(), i64(0));
    if (shuffle) shuffle_indices(order_.data(), N, seed);
    EpochStats st;
    for (i64 start = 0; start < N; start += batch) {
      const i64 B = std::min(batch, N - start);
      const T *xb, *yb, *wb;
      gather(X, Y, SW, start, B, shuffle, xb, yb, wb);
      LossStats ls = step(xb, yb, wb, B);
      st.loss += ls.loss_sum;
      st.accuracy += ls.correct;
      st.steps += 1;
    }
    st.samples = N;
    st.loss /= double(N);
    st.accuracy /= double(N);
    return st;
  }

  // One optimizer step on exactly this batch (Keras train_on_batch).
  EpochStats train_batch(const T* X, const T* Y, const T* SW, i64 B) {
    require_compiled();
    check_batch(B, B);
    reserve(B);
    LossStats ls = step(X, Y, SW, B);
    return {ls.loss_sum / double(B), ls.correct / double(B), B, 1};
  }

  // Loss and gradients of one batch; gradients are left in grads() (zeroed first).
  EpochStats compute_gradients(const T* X, const T* Y, const T* SW, i64 B) {
    require_compiled();
    check_batch(B, B);
    reserve(B);
    LossStats ls = forward_backward(X, Y, SW, B);
    return {ls.loss_sum / double(B), ls.correct / double(B), B, 0};
  }

  EpochStats evaluate(const T* X, const T* Y, const T* SW, i64 N, i64 batch) {
    require_compiled();
    check_batch(N, batch);
    reserve(std::min(batch, N));
    const i64 tc = target_cols(loss_, out_size());
    EpochStats st;
    for (i64 start = 0; start < N; start += batch) {
      const i64 B = std::min(batch, N - start);
      T* out = forward(X + start * in_size(), B, false);
      std::memcpy(probs_.data(), out, sizeof(T) * B * out_size());
      LossStats ls = loss_forward_backward<T>(loss_, head_, probs_.data(), Y + start * tc,
                                              SW ? SW + start : nullptr, B, out_size(), nullptr);
      st.loss += ls.loss_sum;
      st.accuracy += ls.correct;
    }
    st.samples = N;
    st.loss /= double(N);
    st.accuracy /= double(N);
    return st;
  }

  // out: (N, out_size) — the model's outputs, final activation included.
  void predict(const T* X, i64 N, i64 batch, T* out) {
    check_batch(N, batch);
    reserve(std::min(batch, N));
    const i64 C = out_size();
    for (i64 start = 0; start < N; start += batch) {
      const i64 B = std::min(batch, N - start);
      T* o = forward(X + start * in_size(), B, false);
      T* dst = out + start * C;
      std::memcpy(dst, o, sizeof(T) * B * C);
      if (head_ != Act::Linear) activation_forward(head_, T(0), dst, B, C);
    }
  }

  // Grow every buffer for batches up to `batch` (outside the batch loop only).
  void reserve(i64 batch) {
    if (batch <= cap_) return;
    const size_t L = layers_.size();
    acts_.resize(L);
    i64 widest = in_size();
    for (size_t l = 0; l < L; ++l) {
      acts_[l].assign(batch * layers_[l]->out_size(), T(0));
      widest = std::max(widest, layers_[l]->out_size());
      layers_[l]->reserve(batch);
    }
    xbuf_.assign(batch * in_size(), T(0));
    ybuf_.assign(batch * out_size(), T(0));
    wbuf_.assign(batch, T(0));
    probs_.assign(batch * out_size(), T(0));
    for (auto& g : gbuf_) g.assign(batch * widest, T(0));
    cap_ = batch;
  }

 private:
  void require_compiled() const {
    if (!compiled_) fail("the model must be compiled (loss and optimizer set) before training or evaluation");
  }
  static void check_batch(i64 N, i64 batch) {
    if (N < 1) fail("no samples: the input has 0 rows");
    if (batch < 1) fail("batch_size must be >= 1; received ", batch);
  }

  // Point xb/yb/wb at the rows of this batch: the user's arrays directly when in order,
  // otherwise the rows gathered into the preallocated batch buffers.
  void gather(const T* X, const T* Y, const T* SW, i64 start, i64 B, bool shuffled,
              const T*& xb, const T*& yb, const T*& wb) {
    const i64 in = in_size(), tc = target_cols(loss_, out_size());
    if (!shuffled) {
      xb = X + start * in;
      yb = Y + start * tc;
      wb = SW ? SW + start : nullptr;
      return;
    }
    const i64* idx = order_.data() + start;
    T* xd = xbuf_.data();
    T* yd = ybuf_.data();
#pragma omp parallel for schedule(static) if (B * in > 4 * kParallelElems)
    for (i64 r = 0; r < B; ++r) {
      std::memcpy(xd + r * in, X + idx[r] * in, sizeof(T) * in);
      std::memcpy(yd + r * tc, Y + idx[r] * tc, sizeof(T) * tc);
    }
    if (SW)
      for (i64 r = 0; r < B; ++r) wbuf_[r] = SW[idx[r]];
    xb = xd;
    yb = yd;
    wb = SW ? wbuf_.data() : nullptr;
  }

  // Forward through every layer; returns the last layer's output (logits if fused).
  T* forward(const T* x, i64 B, bool training) {
    const T* in = x;
    for (size_t l = 0; l < layers_.size(); ++l) {
      layers_[l]->forward(in, acts_[l].data(), B, training);
      in = acts_[l].data();
    }
    return acts_.back().data();
  }

  LossStats forward_backward(const T* x, const T* y, const T* w, i64 B) {
    const i64 C = out_size();
    T* out = forward(x, B, true);
    std::memcpy(probs_.data(), out, sizeof(T) * B * C);
    T* dcur = gbuf_[0].data();
    LossStats ls = loss_forward_backward<T>(loss_, head_, probs_.data(), y, w, B, C, dcur);
    std::fill(grads_.begin(), grads_.end(), T(0));
    int which = 0;
    for (i64 l = i64(layers_.size()) - 1; l >= 0; --l) {
      const T* lin = l == 0 ? x : acts_[l - 1].data();
      T* dx = l == 0 ? nullptr : gbuf_[1 - which].data();
      layers_[l]->backward(lin, acts_[l].data(), dcur, dx, B);
      dcur = dx;
      which = 1 - which;
    }
    return ls;
  }

  LossStats step(const T* x, const T* y, const T* w, i64 B) {
    LossStats ls = forward_backward(x, y, w, B);
    ++step_;
    optimizer_step(opt_, params_.data(), grads_.data(), opt_state_, num_params(), step_);
    return ls;
  }

  std::vector<std::unique_ptr<Layer<T>>> layers_;
  std::vector<ParamInfo> params_info_;
  avec<T> params_, grads_;
  std::vector<avec<T>> opt_state_;
  OptimConfig opt_;
  Loss loss_ = Loss::MSE;
  Act last_act_ = Act::Linear;  // the last layer's configured activation
  Act head_ = Act::Linear;      // the activation fused into the loss, if any
  bool compiled_ = false;
  i64 step_ = 0;
  std::mutex mu_;

  i64 cap_ = 0;
  std::vector<avec<T>> acts_;
  avec<T> xbuf_, ybuf_, wbuf_, probs_;
  avec<T> gbuf_[2];
  std::vector<i64> order_;
};

}  // namespace cr
