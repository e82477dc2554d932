// The Network: a chain of layers over one flat parameter block, and the training epoch
// loop — shuffle, batch, forward, loss, backward, optimizer step, metrics — all in C++.
// Buffers are sized once per call for the largest batch; the batch loop allocates nothing.
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <vector>

#include "common.h"
#include "kernels/rng.h"
#include "layers/layer.h"
#include "losses/loss.h"
#include "optim/optimizer.h"

namespace cr {

struct ParamInfo {
  i64 layer;
  std::string name;
  std::vector<i64> shape;
  i64 offset;  // into the flat block
  i64 size;
};

struct EpochStats {
  double loss = 0.0;      // mean (weighted) loss over the samples, regularization included
  double accuracy = 0.0;  // mean accuracy over the samples
  i64 samples = 0;
  i64 steps = 0;
  bool stopped_nan = false;  // stop_on_nan: a loss or weight became NaN/inf; weights and
                             // optimizer state restored to those of the last finite step
  bool interrupted = false;  // the poll function asked to stop (Ctrl-C)
  i64 nonfinite_param = -1;  // the first parameter tensor holding NaN/inf after the call, or -1
  double learning_rate = 0.0;  // the rate of the last step taken
};

// Per-parameter-tensor health over the steps of one epoch (the gradient monitor).
struct ParamHealth {
  double grad_norm = 0.0;     // mean over steps of ||g|| (loss + regularization, before clipping)
  double grad_norm_max = 0.0; // max over steps of ||g||
  double update_ratio = 0.0;  // mean over steps of ||Δw|| / ||w||
  double weight_norm = 0.0;   // ||w|| after the last step
};

// Called every N steps from the epoch loop: (steps done, steps total, running loss, running
// accuracy). Returning false stops the epoch after the current step.
using ProgressFn = std::function<bool(i64, i64, double, double)>;
// Called between steps (and batches of evaluate/predict) at most every kPollSeconds of wall
// time; returning false stops the loop after the current batch (a pending Ctrl-C).
using PollFn = std::function<bool()>;
constexpr double kPollSeconds = 0.05;

// Calls a PollFn when kPollSeconds have passed since the last call; remembers a "stop".
class Poller {
 public:
  explicit Poller(const PollFn& fn) : fn_(fn), last_(std::chrono::steady_clock::now()) {}
  // True when the loop must stop.
  bool stop() {
    if (!fn_ || stopped_) return stopped_;
    const auto now = std::chrono::steady_clock::now();
    if (std::chrono::duration<double>(now - last_).count() < kPollSeconds) return false;
    last_ = now;
    stopped_ = !fn_();
    return stopped_;
  }

 private:
  const PollFn& fn_;
  std::chrono::steady_clock::time_point last_;
  bool stopped_ = false;
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
        total += ps.size();  // each size <= kMaxElems: no overflow before the check below
        if (total > kMaxElems)
          fail("Network: the model has more than ", kMaxElems, " parameters (layer ", l, " (",
               layers_[l]->kind(), ") brings the total to ", total, ")");
      }
    }
    params_.assign(total, T(0));
    grads_.assign(total, T(0));
    for (auto& pi : params_info_) segments_.push_back({pi.offset, pi.size});
    layer_segs_.assign(layers_.size() + 1, 0);  // layer l owns segments [layer_segs_[l], layer_segs_[l+1])
    for (auto& pi : params_info_) layer_segs_[pi.layer + 1] += 1;
    for (size_t l = 0; l < layers_.size(); ++l) layer_segs_[l + 1] += layer_segs_[l];
    reg_l1_.assign(segments_.size(), 0.0);
    reg_l2_.assign(segments_.size(), 0.0);
    seg_stats_.assign(segments_.size(), SegmentStats{});
    health_.assign(segments_.size(), ParamHealth{});
    alive_.resize(layers_.size());
    dead_fraction_.assign(layers_.size(), -1.0);
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
    have_snapshot_ = false;
    opt_state_.clear();
    for (int k = 0; k < opt.state_slots(); ++k)
      opt_state_.emplace_back(params_.size(), T(opt.state_init(k)));
    step_ = 0;
    lr_scale_ = 1.0;
  }
  // Base learning rate (the schedule's peak); the rate used at step t is
  // schedule.rate(base, t) * lr_scale (lr_scale: ReduceLROnPlateau's running factor).
  void set_learning_rate(double lr) {
    if (!(lr >= 0.0) || !std::isfinite(lr))
      fail("learning_rate must be a finite number >= 0; received ", lr);
    opt_.learning_rate = lr;
  }
  void set_lr_scale(double s) {
    if (!(s > 0.0) || !std::isfinite(s)) fail("lr_scale must be a finite number > 0; received ", s);
    lr_scale_ = s;
  }
  double lr_scale() const { return lr_scale_; }
  double current_learning_rate() const {
    return opt_.schedule.rate(opt_.learning_rate, step_) * lr_scale_;
  }
  const OptimConfig& optimizer() const { return opt_; }
  i64 step_count() const { return step_; }
  void set_step_count(i64 t) {
    if (t < 0) fail("step_count must be >= 0; received ", t);
    step_ = t;
    have_snapshot_ = false;
  }
  std::vector<avec<T>>& optimizer_state() { return opt_state_; }

  // L1/L2 penalty on one parameter tensor: loss += l1 Σ|w| + l2 Σw².
  void set_regularization(i64 param, double l1, double l2) {
    if (param < 0 || param >= i64(segments_.size())) fail("parameter index out of range: ", param);
    if (!(l1 >= 0.0 && l2 >= 0.0) || !std::isfinite(l1) || !std::isfinite(l2))
      fail("regularization factors must be finite and >= 0; received l1=", l1, " l2=", l2);
    reg_l1_[param] = l1;
    reg_l2_[param] = l2;
  }
  // The weights or optimizer state were set from outside: a snapshot no longer applies.
  void state_changed() { have_snapshot_ = false; }
  // Stop an epoch at the first non-finite loss or weight and restore the weights and the
  // optimizer state of the last finite step.
  void set_stop_on_nan(bool on) {
    stop_on_nan_ = on;
    have_snapshot_ = false;  // a snapshot from an earlier fit is not "the last finite step"
  }
  // Per-layer monitoring (gradient norms, update ratios, dead units): on by default.
  void set_monitor(bool on) { monitor_ = on; }
  const std::vector<ParamHealth>& param_health() const { return health_; }
  // Per layer: fraction of ReLU-family units (channels for convolutions) that produced no
  // positive output on any training sample of the last epoch; -1 for other layers.
  const std::vector<double>& dead_fraction() const { return dead_fraction_; }

  // Reseed layers with randomness (dropout). Called once per fit.
  void seed_layers(std::uint64_t s) {
    for (size_t l = 0; l < layers_.size(); ++l) layers_[l]->seed(s + 0x9E37ull * (l + 1));
  }

  // One pass over X: (N, in), Y: (N, tc), SW: (N) or null. Mini-batches of `batch` (the
  // last one partial), in a seeded random order when `shuffle`.
  EpochStats train_epoch(const T* X, const T* Y, const T* SW, i64 N, i64 batch, bool shuffle,
                         std::uint64_t seed, const ProgressFn& progress = nullptr,
                         i64 progress_every = 0, const PollFn& poll = nullptr) {
    require_compiled();
    check_batch(N, batch);
    reserve(std::min(batch, N));
    DenormalsFlushed ftz;
    order_.resize(N);
    std::iota(order_.begin(), order_.end(), i64(0));
    if (shuffle) shuffle_indices(order_.data(), N, seed);
    begin_monitor();
    EpochStats st;
    Poller poller(poll);
    const i64 total_steps = (N + batch - 1) / batch;
    i64 seen = 0;
    for (i64 start = 0; start < N; start += batch) {
      if (poller.stop()) {
        st.interrupted = true;
        break;
      }
      const i64 B = std::min(batch, N - start);
      const T *xb, *yb, *wb;
      gather(X, Y, SW, start, B, shuffle, xb, yb, wb);
      LossStats ls;
      if (!train_step(xb, yb, wb, B, ls)) {
        st.stopped_nan = true;
        st.loss += ls.loss_sum;
        seen += B;
        break;
      }
      st.loss += ls.loss_sum;
      st.accuracy += ls.correct;
      st.steps += 1;
      seen += B;
      if (progress && progress_every > 0 && (st.steps % progress_every == 0 || seen == N)) {
        if (!progress(st.steps, total_steps, st.loss / double(seen), st.accuracy / double(seen))) break;
      }
    }
    end_monitor(st.steps);
    st.samples = seen;
    st.loss /= double(std::max<i64>(seen, 1));
    st.accuracy /= double(std::max<i64>(seen, 1));
    st.learning_rate = last_lr_;
    st.nonfinite_param = first_nonfinite_param();
    return st;
  }

  // One optimizer step on exactly this batch (Keras train_on_batch).
  EpochStats train_batch(const T* X, const T* Y, const T* SW, i64 B) { return one_batch(X, Y, SW, B, true); }

  // Loss and gradients of one batch; gradients are left in grads() (zeroed first).
  EpochStats compute_gradients(const T* X, const T* Y, const T* SW, i64 B) {
    return one_batch(X, Y, SW, B, false);
  }

  EpochStats evaluate(const T* X, const T* Y, const T* SW, i64 N, i64 batch,
                      const PollFn& poll = nullptr) {
    require_compiled();
    check_batch(N, batch);
    reserve(std::min(batch, N));
    DenormalsFlushed ftz;
    const i64 tc = target_cols(loss_, out_size());
    EpochStats st;
    Poller poller(poll);
    for (i64 start = 0; start < N; start += batch) {
      if (poller.stop()) {
        st.interrupted = true;
        return st;
      }
      const i64 B = std::min(batch, N - start);
      T* out = forward(X + start * in_size(), B, false);
      std::memcpy(probs_.data(), out, sizeof(T) * B * out_size());
      LossStats ls = loss_forward_backward<T>(loss_, head_, probs_.data(), Y + start * tc,
                                              SW ? SW + start : nullptr, B, out_size(), nullptr);
      st.loss += ls.loss_sum;
      st.accuracy += ls.correct;
    }
    st.loss += penalty() * double(N);
    st.samples = N;
    st.loss /= double(N);
    st.accuracy /= double(N);
    return st;
  }

  // out: (N, out_size) — the model's outputs, final activation included.
  // Returns false when the poll function stopped it (out is then incomplete).
  bool predict(const T* X, i64 N, i64 batch, T* out, const PollFn& poll = nullptr) {
    check_batch(N, batch);
    reserve(std::min(batch, N));
    DenormalsFlushed ftz;
    Poller poller(poll);
    const i64 C = out_size();
    for (i64 start = 0; start < N; start += batch) {
      if (poller.stop()) return false;
      const i64 B = std::min(batch, N - start);
      T* o = forward(X + start * in_size(), B, false);
      T* dst = out + start * C;
      std::memcpy(dst, o, sizeof(T) * B * C);
      if (head_ != Act::Linear) activation_forward(head_, T(0), dst, B, C);
    }
    return true;
  }

  // Grow every buffer for batches up to `batch` (outside the batch loop only).
  void reserve(i64 batch) {
    if (batch <= cap_) return;
    const size_t L = layers_.size();
    checked_mul(batch, in_size(), "batch_size x input size", kMaxBufferElems);
    for (size_t l = 0; l < L; ++l)
      checked_mul(batch, layers_[l]->out_size(), "batch_size x layer output size", kMaxBufferElems);
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

  EpochStats one_batch(const T* X, const T* Y, const T* SW, i64 B, bool take_step) {
    require_compiled();
    check_batch(B, B);
    reserve(B);
    DenormalsFlushed ftz;
    LossStats ls;
    bool stepped = false;
    if (take_step) {
      stepped = train_step(X, Y, SW, B, ls);
    } else {
      ls = forward_loss(X, Y, SW, B);
      backward(X, B, nullptr);
    }
    EpochStats st;
    st.loss = ls.loss_sum / double(B);
    st.accuracy = ls.correct / double(B);
    st.samples = B;
    st.steps = stepped ? 1 : 0;
    st.stopped_nan = take_step && !stepped;
    st.learning_rate = stepped ? last_lr_ : 0.0;
    if (take_step) st.nonfinite_param = first_nonfinite_param();
    return st;
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
#pragma omp parallel for schedule(static) if (B * in > kParallelElems)
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
      if (training && monitoring_ && !alive_[l].empty()) mark_alive(l, B);
    }
    return acts_.back().data();
  }

  // Keep in alive_[l] a running maximum of the layer's outputs, `width` values wide (a
  // multiple of the unit count, so output element e lands in slot e % width and unit
  // e % units): long contiguous max-reductions that vectorize even for 8 channels. A unit is
  // alive once the maximum over its slots is positive (folded in end_monitor).
  void mark_alive(size_t l, i64 B) {
    const i64 n = B * layers_[l]->out_size(), width = i64(alive_[l].size());
    const T* y = acts_[l].data();
    T* a = alive_[l].data();
    i64 e = 0;
    for (; e + width <= n; e += width) {
#pragma omp simd
      for (i64 j = 0; j < width; ++j) a[j] = std::max(a[j], y[e + j]);
    }
    for (i64 j = 0; e + j < n; ++j) a[j] = std::max(a[j], y[e + j]);
  }

  // The first parameter tensor holding a NaN or an infinity, or -1. One pass over the
  // parameters, once per call (not per step).
  i64 first_nonfinite_param() const {
    for (size_t k = 0; k < segments_.size(); ++k)
      if (!all_finite(params_.data() + segments_[k].offset, segments_[k].size)) return i64(k);
    return -1;
  }
  static bool all_finite(const T* w, i64 n) {
    T acc = T(0);  // w * 0 is NaN exactly for NaN and inf: one vectorizable pass, no branches
#pragma omp simd reduction(+ : acc)
    for (i64 i = 0; i < n; ++i) acc += w[i] * T(0);
    return acc == T(0);
  }

  void begin_monitor() {
    monitoring_ = monitor_;
    for (auto& h : health_) h = ParamHealth{};
    for (size_t l = 0; l < layers_.size(); ++l) {
      Act a = layers_[l]->activation();
      i64 units = layers_[l]->units();
      bool relu = a == Act::Relu || a == Act::LeakyRelu;
      const i64 out = layers_[l]->out_size();
      if (monitoring_ && relu && units > 0 && out % units == 0) {
        i64 width = units;  // widen to ~256 values, staying a multiple of units and dividing out
        while (width < 256 && out % (2 * width) == 0) width *= 2;
        alive_[l].assign(width, T(0));
      }
      else
        alive_[l].clear();
    }
  }

  void end_monitor(i64 steps) {
    for (size_t k = 0; k < health_.size(); ++k) {
      if (steps > 0) {
        health_[k].grad_norm /= double(steps);
        health_[k].update_ratio /= double(steps);
      }
      health_[k].weight_norm = std::sqrt(seg_stats_[k].w2);
    }
    for (size_t l = 0; l < layers_.size(); ++l) {
      if (alive_[l].empty() || steps == 0) {
        dead_fraction_[l] = -1.0;
        continue;
      }
      const i64 units = layers_[l]->units(), width = i64(alive_[l].size());
      i64 dead = 0;
      for (i64 u = 0; u < units; ++u) {
        T m = T(0);
        for (i64 j = u; j < width; j += units) m = std::max(m, alive_[l][j]);
        dead += m > T(0) ? 0 : 1;
      }
      dead_fraction_[l] = double(dead) / double(units);
    }
  }

  // The regularization penalty of the current weights.
  double penalty() const {
    double pen = 0.0;
    for (size_t k = 0; k < segments_.size(); ++k) {
      if (reg_l1_[k] == 0.0 && reg_l2_[k] == 0.0) continue;
      const T* w = params_.data() + segments_[k].offset;
      double a = 0.0, q = 0.0;
      for (i64 i = 0; i < segments_[k].size; ++i) {
        a += std::fabs(double(w[i]));
        q += double(w[i]) * double(w[i]);
      }
      pen += reg_l1_[k] * a + reg_l2_[k] * q;
    }
    return pen;
  }

  // Add the penalty's gradient to segment k's gradient; returns the penalty.
  double regularize(size_t k) {
    const double l1 = reg_l1_[k], l2 = reg_l2_[k];
    if (l1 == 0.0 && l2 == 0.0) return 0.0;
    const T* w = params_.data() + segments_[k].offset;
    T* g = grads_.data() + segments_[k].offset;
    const T tl1 = T(l1), tl2 = T(2.0 * l2);
    double a = 0.0, q = 0.0;
    const i64 n = segments_[k].size;
#pragma omp parallel for schedule(static) reduction(+ : a, q) if (n > kParallelElems)
    for (i64 i = 0; i < n; ++i) {
      const T wi = w[i];
      g[i] += tl1 * T((wi > T(0)) - (wi < T(0))) + tl2 * wi;
      a += std::fabs(double(wi));
      q += double(wi) * double(wi);
    }
    return l1 * a + l2 * q;
  }

  // Penalty gradients of segments [k0, k1) added to their gradients; returns the penalty.
  double add_penalties(size_t k0, size_t k1) {
    double pen = 0.0;
    for (size_t k = k0; k < k1; ++k) pen += regularize(k);
    return pen;
  }

  // The fused optimizer loop over segments [k0, k1), and the monitor's per-step sums.
  // gscale: global-norm clipping factor.
  void apply_step(size_t k0, size_t k1, double gscale) {
    // The per-segment sums are also the NaN guard's check of the new weights (Σw² finite).
    optimizer_step(opt_, last_lr_, step_, gscale, params_.data(), grads_.data(), opt_state_,
                   segments_.data() + k0, k1 - k0, seg_stats_.data() + k0,
                   monitoring_ || stop_on_nan_);
    if (!monitoring_) return;
    for (size_t k = k0; k < k1; ++k) {
      const double gn = std::sqrt(seg_stats_[k].g2), wn = std::sqrt(seg_stats_[k].w2);
      health_[k].grad_norm += gn;
      health_[k].grad_norm_max = std::max(health_[k].grad_norm_max, gn);
      health_[k].update_ratio += wn > 0.0 ? std::sqrt(seg_stats_[k].d2) / wn : 0.0;
    }
  }

  // One training step: forward, loss, backward, optimizer. Each layer's parameters are
  // updated as soon as its backward pass has produced their gradients (still in cache; its
  // weights are no longer needed once it has computed dx). Global-norm clipping needs every
  // gradient first, so with clipnorm the step runs after the whole backward pass.
  // Returns false when stop_on_nan is set and the loss or a new weight is not finite. The
  // weights, optimizer state and step count are then put back to the last ones whose loss
  // was finite: those before this step (new weights not finite) or before the previous one
  // (the loss of the weights it left is not finite), if that step was taken in this run
  // of stop_on_nan with no change of the weights from outside since.
  bool train_step(const T* x, const T* y, const T* w, i64 B, LossStats& ls) {
    ls = forward_loss(x, y, w, B);
    if (stop_on_nan_ && !std::isfinite(ls.loss_sum)) {
      // The last step's weights give a non-finite loss: put back those before it.
      restore_snapshot();
      return false;
    }
    if (stop_on_nan_) take_snapshot();
    last_lr_ = current_learning_rate();
    ++step_;
    const bool per_layer = opt_.clipnorm <= 0.0;
    double pen = 0.0;
    backward(x, B, per_layer ? &pen : nullptr);
    if (!per_layer) {
      const size_t nseg = segments_.size();
      pen = add_penalties(0, nseg);
      double g2 = 0.0;
      const T* g = grads_.data();
      const i64 n = num_params();
#pragma omp parallel for schedule(static) reduction(+ : g2) if (n > kParallelElems)
      for (i64 i = 0; i < n; ++i) g2 += double(g[i]) * double(g[i]);
      const double norm = std::sqrt(g2);
      apply_step(0, nseg, norm > opt_.clipnorm ? opt_.clipnorm / norm : 1.0);
    }
    grads_zero_ = true;  // the optimizer consumed and zeroed them
    ls.loss_sum += pen * double(B);
    if (stop_on_nan_ && (!std::isfinite(pen) || !new_weights_finite())) {
      restore_snapshot();
      return false;
    }
    return true;
  }

  // The state one step restores when its result is not finite: weights, optimizer slots,
  // step count (the snapshot is taken only under stop_on_nan, before each step).
  void take_snapshot() {
    have_snapshot_ = true;
    snapshot_.resize(params_.size());
    std::memcpy(snapshot_.data(), params_.data(), sizeof(T) * params_.size());
    state_snapshot_.resize(opt_state_.size());
    for (size_t j = 0; j < opt_state_.size(); ++j) {
      state_snapshot_[j].resize(opt_state_[j].size());
      std::memcpy(state_snapshot_[j].data(), opt_state_[j].data(), sizeof(T) * opt_state_[j].size());
    }
    step_snapshot_ = step_;
  }
  void restore_snapshot() {
    if (!have_snapshot_) return;
    have_snapshot_ = false;
    std::memcpy(params_.data(), snapshot_.data(), sizeof(T) * params_.size());
    for (size_t j = 0; j < opt_state_.size(); ++j)
      std::memcpy(opt_state_[j].data(), state_snapshot_[j].data(), sizeof(T) * opt_state_[j].size());
    step_ = step_snapshot_;
  }
  // After a step: every weight finite? The optimizer's Σw² per segment says so unless it
  // overflowed (|w| > ~1e19 in float32), which an exact pass over that segment settles.
  bool new_weights_finite() const {
    for (size_t k = 0; k < segments_.size(); ++k)
      if (!std::isfinite(seg_stats_[k].w2) &&
          !all_finite(params_.data() + segments_[k].offset, segments_[k].size))
        return false;
    return true;
  }

  // Forward pass and loss; the loss gradient w.r.t. the output is left in gbuf_[0].
  LossStats forward_loss(const T* x, const T* y, const T* w, i64 B) {
    const i64 C = out_size();
    T* out = forward(x, B, true);
    std::memcpy(probs_.data(), out, sizeof(T) * B * C);
    return loss_forward_backward<T>(loss_, head_, probs_.data(), y, w, B, C, gbuf_[0].data());
  }

  // Backward pass from the loss gradient in gbuf_[0]. With `pen` non-null, each layer's
  // parameters take their optimizer step right after its backward (penalties summed in).
  void backward(const T* x, i64 B, double* pen) {
    if (!grads_zero_) std::fill(grads_.begin(), grads_.end(), T(0));
    grads_zero_ = false;
    T* dcur = gbuf_[0].data();
    int which = 0;
    for (i64 l = i64(layers_.size()) - 1; l >= 0; --l) {
      const T* lin = l == 0 ? x : acts_[l - 1].data();
      T* dx = l == 0 ? nullptr : gbuf_[1 - which].data();
      layers_[l]->backward(lin, acts_[l].data(), dcur, dx, B);
      if (pen) {
        *pen += add_penalties(layer_segs_[l], layer_segs_[l + 1]);
        apply_step(layer_segs_[l], layer_segs_[l + 1], 1.0);
      }
      dcur = dx;
      which = 1 - which;
    }
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
  double lr_scale_ = 1.0, last_lr_ = 0.0;
  std::mutex mu_;

  bool grads_zero_ = false;  // grads_ is all zeros (left so by the last optimizer step)
  std::vector<Segment> segments_;
  std::vector<size_t> layer_segs_;
  std::vector<double> reg_l1_, reg_l2_;
  bool stop_on_nan_ = false, have_snapshot_ = false;
  avec<T> snapshot_;
  std::vector<avec<T>> state_snapshot_;
  i64 step_snapshot_ = 0;
  bool monitor_ = true, monitoring_ = false;
  std::vector<SegmentStats> seg_stats_;
  std::vector<ParamHealth> health_;
  std::vector<avec<T>> alive_;  // per layer: running max of each unit's output
  std::vector<double> dead_fraction_;

  i64 cap_ = 0;
  std::vector<avec<T>> acts_;
  avec<T> xbuf_, ybuf_, wbuf_, probs_;
  avec<T> gbuf_[2];
  std::vector<i64> order_;
};

}  // namespace cr
