// The Network: a chain of layers over one flat parameter block (params.h), forward and
// backward, the loss, the optimizer's state, and the loops over batches — training epoch
// (shuffle, batch, forward, loss, backward, optimizer step, metrics), evaluate, predict —
// all in C++, and the data-parallel epoch over a Reducer (data_parallel.h). The gradient
// monitor (monitor.h) and stop-on-NaN's snapshot (nan_guard.h) are its parts. Buffers are
// sized once per call for the largest batch; the batch loop allocates nothing. An epoch can
// also be fed one batch per call (data streamed from the caller), and the loss and some
// metrics can be computed outside the core (hooks). The training calls record the step
// profile (profile.h) when it is on.
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <system_error>
#include <vector>

#include "common.h"
#include "kernels/cpu.h"
#include "kernels/rng.h"
#include "layers/layer.h"
#include "losses/loss.h"
#include "metrics/metrics.h"
#include "optim/optimizer.h"
#include "profile.h"
#include "trainer/data_parallel.h"
#include "trainer/gather_ahead.h"
#include "trainer/gather_rows.h"
#include "trainer/monitor.h"
#include "trainer/nan_guard.h"
#include "trainer/params.h"

namespace cr {

struct EpochStats {
  double loss = 0.0;      // mean (weighted) loss over the samples, regularization included
  std::vector<double> metrics;  // per metric (built-in first, then external): mean over the samples
  i64 samples = 0;
  i64 steps = 0;
  bool stopped_nan = false;  // stop_on_nan: a loss or weight became NaN/inf; weights and
                             // optimizer state restored to those of the last finite step
  bool interrupted = false;  // the poll function asked to stop (Ctrl-C)
  i64 nonfinite_param = -1;  // the first parameter tensor holding NaN/inf after the call, or -1
  double learning_rate = 0.0;  // the rate of the last step taken
};

// Called every N steps from the epoch loop: (steps done, steps total, running loss, running
// metric means). Returning false stops the epoch after the current step.
using ProgressFn = std::function<bool(i64, i64, double, const std::vector<double>&)>;
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

// What the gradient block holds, tracked by the Network from the calls it makes. Backward
// passes accumulate (+=) into it; an optimizer step consumes it (reads each gradient and
// zeroes it in the same loop, which saves a pass over the block per step).
// What Network::trace records; flat row-major arrays, B rows each.
template <typename T>
struct LayerRecord {
  std::vector<T> input, z, a, dout, delta, dinput;  // z empty for layers without parameters
};
template <typename T>
struct TraceRecord {
  std::vector<LayerRecord<T>> layers;
  std::vector<T> output, output_grad, grads, updates;  // grads, updates: the flat block
  double loss = 0.0, learning_rate = 0.0;
};

// A loss computed outside the core (a Python callable, through the bindings): given the
// outputs out (B, C) and targets y (B, C), fills loss (B) with the per-sample losses and,
// when grad is not null, grad (B, C) with d loss_i / d out_i. The core applies the sample
// weights and the batch mean. Called between batches, never inside a parallel region; an
// error is an exception, which ends the call that ran it.
template <typename T>
using ExternalLossFn = std::function<void(const T* out, const T* y, i64 B, i64 C, double* loss, T* grad)>;
// Metrics computed outside the core: given pred (B, C) and targets y (B, tc), writes each
// external metric's sum over the batch into sums. Called like ExternalLossFn.
template <typename T>
using ExternalMetricsFn = std::function<void(const T* pred, const T* y, i64 B, i64 C, i64 tc, double* sums)>;

enum class GradState {
  Zero,         // every gradient is zero: just allocated, or consumed by an optimizer step
  Accumulated,  // a backward pass has added into it since
};

template <typename T>
class Network {
 public:
  explicit Network(std::vector<std::unique_ptr<Layer<T>>> layers)
      : layers_(checked_chain(std::move(layers))),
        params_(layers_),
        step_sums_(params_.segments().size()),
        monitor_(params_.segments().size(), layers_.size()) {
    last_act_ = layers_.back()->activation();
  }

  i64 num_layers() const { return i64(layers_.size()); }
  Layer<T>& layer(i64 i) { return *layers_.at(i); }
  i64 in_size() const { return layers_.front()->in_size(); }
  i64 out_size() const { return layers_.back()->out_size(); }
  const std::vector<ParamInfo>& params_info() const { return params_.info(); }
  T* params() { return params_.params(); }
  T* grads() { return params_.grads(); }
  i64 num_params() const { return params_.size(); }
  bool compiled() const { return compiled_; }
  Loss loss() const { return loss_; }
  bool external_loss() const { return external_loss_; }
  const char* loss_name() const { return external_loss_ ? "custom loss" : cr::loss_name(loss_); }
  // Columns of a target row: 1 (a class index) for sparse losses, the output width otherwise.
  i64 target_cols() const { return external_loss_ ? out_size() : cr::target_cols(loss_, out_size()); }
  // Targets outside the loss's domain: an argument error before any work (y: (n, target_cols)).
  void check_targets(const T* y, i64 n) const {
    if (!external_loss_) cr::check_targets(loss_, y, n, out_size());
  }
  std::mutex& mutex() { return mu_; }

  // Set loss and optimizer. A final softmax/sigmoid that the loss can absorb is moved into
  // the loss (fused, stable); predictions still come out through it. With from_logits the
  // last layer's outputs are taken as logits: the loss applies its softmax/sigmoid (the same
  // fused computation), and predictions are the logits themselves.
  void compile(Loss loss, bool from_logits, const OptimConfig& opt) {
    const Act fus = fusable_head(loss);
    if (from_logits && fus == Act::Linear)
      fail("from_logits applies to the cross-entropy losses; received it for ", cr::loss_name(loss));
    set_optimizer(opt);
    loss_ = loss;
    external_loss_ = false;
    ext_loss_ = nullptr;
    if (from_logits) {
      loss_head_ = fus;
      predict_head_ = Act::Linear;
      layers_.back()->set_activation(last_act_);
    } else {
      loss_head_ = predict_head_ = (fus != Act::Linear && last_act_ == fus) ? fus : Act::Linear;
      layers_.back()->set_activation(loss_head_ != Act::Linear ? Act::Linear : last_act_);
    }
    metrics_.clear();
    set_external_metrics(0, nullptr);
    compiled_ = true;
  }
  // Set the optimizer and a loss computed outside the core (targets: one per output).
  void compile_external(ExternalLossFn<T> fn, const OptimConfig& opt) {
    if (!fn) fail("compile: the external loss function is empty");
    set_optimizer(opt);
    external_loss_ = true;
    ext_loss_ = std::move(fn);
    loss_head_ = predict_head_ = Act::Linear;
    layers_.back()->set_activation(last_act_);
    metrics_.clear();
    set_external_metrics(0, nullptr);
    compiled_ = true;
  }
  // The metrics reported by training and evaluation: the built-in ones (their targets must
  // have the loss's layout), then n_external computed by fn. Reported in that order.
  void set_metrics(const std::vector<MetricSpec>& specs, i64 n_external, ExternalMetricsFn<T> fn) {
    if (!compiled_) fail("set_metrics: the model must be compiled first");
    const bool sparse_targets = !external_loss_ && loss_info(loss_).sparse;
    for (const MetricSpec& m : specs) {
      check_metric(m);
      if (metric_info(m.kind).sparse != sparse_targets)
        fail(metric_info(m.kind).name, " needs ", metric_info(m.kind).sparse ? "integer class labels" : "one target per output",
             " but the loss (", loss_name(), ") takes ", sparse_targets ? "integer class labels" : "one target per output");
    }
    if (n_external < 0 || (n_external > 0 && !fn)) fail("set_metrics: bad external metrics (", n_external, ")");
    metrics_ = specs;
    set_external_metrics(n_external, std::move(fn));
  }
  i64 num_metrics() const { return i64(metrics_.size()) + n_ext_metrics_; }
  void set_optimizer(const OptimConfig& opt) {
    if (!(opt.learning_rate >= 0.0) || !std::isfinite(opt.learning_rate))
      fail("optimizer: learning_rate must be a finite number >= 0; received ", opt.learning_rate);
    opt_ = opt;
    nan_guard_.invalidate();
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
    nan_guard_.invalidate();
  }
  std::vector<avec<T>>& optimizer_state() { return opt_state_; }

  // L1/L2 penalty on one parameter tensor: loss += l1 Σ|w| + l2 Σw².
  void set_regularization(i64 param, double l1, double l2) { params_.set_regularization(param, l1, l2); }
  // Freeze (false) or unfreeze layer l: its parameters take no optimizer step, no penalty and
  // no part in the gradient norm, and it computes no parameter gradients (dx still flows).
  void set_layer_trainable(i64 layer, bool on) {
    if (layer < 0 || layer >= num_layers()) fail("layer index out of range: ", layer);
    layers_[layer]->set_trainable(on);
    params_.set_layer_trainable(size_t(layer), on);
  }
  // The weights or optimizer state were set from outside: a snapshot no longer applies.
  void state_changed() { nan_guard_.invalidate(); }
  // Stop an epoch at the first non-finite loss or weight and restore the weights and the
  // optimizer state of the last finite step.
  // every: steps between snapshots (1: a stop restores the last finite step exactly).
  void set_stop_on_nan(bool on, i64 every = 1) { nan_guard_.set_enabled(on, every); }
  // Shuffled epochs on 2+ threads whose steps run on one thread gather the next batches on
  // a helper thread during the current step (gather_ahead.h): on by default; the bits are
  // the same either way.
  // min_epoch_bytes: the least input data per epoch worth a helper (its start and join
  // cost about what gathering 1 MB does).
  void set_gather_ahead(bool on, i64 min_epoch_bytes = GatherAhead<T>::kMinEpochBytes) {
    if (min_epoch_bytes < 0) fail("min_epoch_bytes must be >= 0; received ", min_epoch_bytes);
    gather_ahead_ = on;
    gather_ahead_min_bytes_ = min_epoch_bytes;
  }
  // Whether a training step of B rows runs on the calling thread alone at any thread count:
  // every layer's passes, the loss and metrics over B x outputs, and the optimizer step, the
  // penalties and the clipping norm over the parameter block (each parallel only above
  // kParallelElems values). Where it does, a helper thread gathering ahead takes no CPU from
  // the step's own threads.
  bool step_single_threaded(i64 B) const {
    if (num_params() > kParallelElems || B * out_size() > kParallelElems) return false;
    for (const auto& l : layers_)
      if (!l->step_single_threaded(B)) return false;
    return true;
  }

  // Per-layer monitoring (gradient norms, update ratios, dead units): on by default.
  void set_monitor(bool on) { monitor_.set_enabled(on); }
  const std::vector<ParamHealth>& param_health() const { return monitor_.health(); }
  // Per layer: fraction of ReLU-family units (channels for convolutions) that produced no
  // positive output on any training sample of the last epoch; -1 for other layers.
  const std::vector<double>& dead_fraction() const { return monitor_.dead_fraction(); }

  // Reseed layers with randomness (dropout). Called once per fit.
  void seed_layers(std::uint64_t s) {
    for (size_t l = 0; l < layers_.size(); ++l) layers_[l]->seed(s + 0x9E37ull * (l + 1));
  }

  // One pass over X: (N, in), Y: (N, tc), SW: (N) or null. Mini-batches of `batch` (the
  // last one partial), in a seeded random order when `shuffle`.
  EpochStats train_epoch(const T* X, const T* Y, const T* SW, i64 N, i64 batch, bool shuffle,
                         std::uint64_t seed, const ProgressFn& progress = nullptr,
                         i64 progress_every = 0, const PollFn& poll = nullptr) {
    BatchCall call(*this, N, batch, NeedsCompile::Yes);
    const profile::Recording recording;
    order_epoch(N, shuffle, seed);
    begin_epoch();
    Poller poller(poll);
    const i64 total_steps = (N + batch - 1) / batch;
    std::optional<GatherAhead<T>> ahead;
    if (shuffle && gather_ahead_ && total_steps > GatherAhead<T>::kAhead &&
        N * in_size() * i64(sizeof(T)) >= gather_ahead_min_bytes_ && max_threads() >= 2 &&
        step_single_threaded(std::min(batch, N))) {
      try {
        ahead.emplace(X, Y, SW, in_size(), target_cols());
      } catch (const std::system_error&) {  // no thread to be had: gather on this one
      }
    }
    for (i64 start = 0, k = 0; start < N; start += batch, ++k) {
      if (poller.stop()) {
        epoch_.interrupted = true;
        break;
      }
      const i64 B = std::min(batch, N - start);
      const T *xb, *yb, *wb;
      if (ahead) {
        using Ahead = GatherAhead<T>;
        const profile::PhaseScope timed(profile::Phase::Gather);
        auto post = [&](i64 j) {  // batch j, if there is one, into buffer set j mod kSlots
          const i64 first = j * batch;
          if (first < N)
            ahead->post(std::uint64_t(j), order_.data() + first, std::min(batch, N - first),
                        batch_buffers(int(j % Ahead::kSlots)));
        };
        if (k == 0)
          for (i64 j = 0; j < Ahead::kAhead; ++j) post(j);
        ahead->collect(std::uint64_t(k));
        const auto cur = batch_buffers(int(k % Ahead::kSlots));
        xb = cur.x;
        yb = cur.y;
        wb = SW ? cur.w : nullptr;
        post(k + Ahead::kAhead);  // into the buffers of step k - 1, done
      } else {
        gather(X, Y, SW, start, B, shuffle, xb, yb, wb);
      }
      if (!epoch_step(xb, yb, wb, B)) break;
      if (progress && progress_every > 0 && (epoch_.steps % progress_every == 0 || epoch_.samples == N)) {
        const EpochStats run = running_stats();
        if (!progress(epoch_.steps, total_steps, run.loss, run.metrics)) break;
      }
    }
    return end_epoch();
  }

  // An epoch fed batches by the caller (data streamed in chunks of batches): begin_epoch,
  // then train_stream_batches per chunk, then end_epoch for the epoch's statistics. train_epoch is
  // the same over an array in memory. Between begin and end, only these calls (and
  // running_stats) may train or evaluate the network.
  void begin_epoch() {
    if (!compiled_) fail("the model must be compiled (loss and optimizer set) before training or evaluation");
    {
      const profile::PhaseScope timed(profile::Phase::Monitor);
      monitor_.begin_epoch(layers_);
    }
    epoch_ = EpochStats{};
    epoch_.metrics.assign(num_metrics(), 0.0);
  }
  // Training steps on `count` consecutive batches of X: (N, in), Y: (N, tc), SW: (N) or null,
  // of sizes[0], sizes[1], ... rows (summing to N), counted in the current epoch. Returns the
  // number of batches used: fewer than count when stop_on_nan refused a step (the last one
  // used; the step is undone) or the poll function asked to stop (interrupted).
  i64 train_stream_batches(const T* X, const T* Y, const T* SW, const i64* sizes, i64 count,
                           const PollFn& poll = nullptr) {
    i64 total = 0, largest = 1;
    for (i64 k = 0; k < count; ++k) {
      if (sizes[k] < 1) fail("batch sizes must be >= 1; received ", sizes[k], " at index ", k);
      total += sizes[k];
      largest = std::max(largest, sizes[k]);
    }
    BatchCall call(*this, total, largest, NeedsCompile::Yes);
    const profile::Recording recording;
    const i64 in = in_size(), tc = target_cols();
    Poller poller(poll);
    i64 start = 0;
    for (i64 k = 0; k < count; ++k) {
      if (poller.stop()) {
        epoch_.interrupted = true;
        return k;
      }
      if (!epoch_step(X + start * in, Y + start * tc, SW ? SW + start : nullptr, sizes[k])) return k + 1;
      start += sizes[k];
    }
    return count;
  }
  // The epoch so far: loss and metric means over the samples seen, steps, samples.
  EpochStats running_stats() const {
    EpochStats st = epoch_;
    const double n = double(std::max<i64>(epoch_.samples, 1));
    st.loss /= n;
    for (double& m : st.metrics) m /= n;
    return st;
  }
  EpochStats end_epoch() {
    {
      const profile::PhaseScope timed(profile::Phase::Monitor);
      monitor_.end_epoch(epoch_.steps, step_sums_, layers_);
    }
    EpochStats st = running_stats();
    st.learning_rate = last_lr_;
    st.nonfinite_param = params_.first_nonfinite();
    return st;
  }

  // The data-parallel epoch: dp.size processes run it together, each with the same
  // configuration, weights and optimizer state. Each step, this process takes its rows of
  // the global batch (StepPlan) through forward and backward; the gradients, a mean over the
  // global batch, are summed over the processes by dp.reducer, bucket by bucket as the
  // backward pass completes them (train_step_parallel); penalties, clipping and the
  // optimizer step follow on the sums, the same on every process, so the weights stay
  // identical everywhere. Loss, metrics, stop requests (poll, progress) and stop_on_nan's
  // loss check travel with each step's sums, so every process leaves the loop after the same
  // step; an interrupt ends the epoch after the step in progress. The stats are global.
  // With shared rows this computes train_epoch's epoch (the gradient sums in another order:
  // equal to rounding); dropout masks differ (each process draws its own stream).
  EpochStats train_epoch_parallel(const T* X, const T* Y, const T* SW, i64 N, i64 batch,
                                  bool shuffle, std::uint64_t seed, const DataParallel& dp,
                                  const ProgressFn& progress = nullptr, i64 progress_every = 0,
                                  const PollFn& poll = nullptr) {
    if (!dp.reducer) fail("data-parallel training needs a reducer");
    const StepPlan plan(dp, N, batch);
    BatchCall call(*this, N, plan.max_part(), NeedsCompile::Yes);
    const profile::Recording recording;
    order_epoch(N, shuffle, seed);
    plan_buckets();
    begin_epoch();
    step_totals_.assign(2 + size_t(num_metrics()), 0.0);  // loss, metrics, stop requests
    Poller poller(poll);
    bool stop_asked = false;  // here: by the poll or the progress callback
    for (i64 k = 0; k < plan.steps(); ++k) {
      if (poller.stop()) stop_asked = true;
      const StepPlan::Part part = plan.part(k);
      const T *xb = nullptr, *yb = nullptr, *wb = nullptr;
      if (part.count > 0) gather(X, Y, SW, part.begin, part.count, shuffle, xb, yb, wb);
      LossStats ls;
      bool stop = stop_asked;
      const bool stepped = train_step_parallel(xb, yb, wb, part.count, part.global, *dp.reducer, stop, ls);
      // as epoch_step, with the global sums
      epoch_.loss += ls.loss_sum;
      for (size_t m = 0; m < epoch_.metrics.size(); ++m) epoch_.metrics[m] += batch_metrics_[m];
      epoch_.samples += part.global;
      if (!stepped) {
        epoch_.stopped_nan = true;
        break;
      }
      epoch_.steps += 1;
      if (stop) {
        epoch_.interrupted = true;
        break;
      }
      if (progress && progress_every > 0 &&
          (epoch_.steps % progress_every == 0 || epoch_.samples == plan.total_rows())) {
        const EpochStats run = running_stats();
        if (!progress(epoch_.steps, plan.steps(), run.loss, run.metrics)) stop_asked = true;
      }
    }
    if (monitor_.active()) {  // a unit is alive when it fired on any process's rows
      const profile::PhaseScope timed(profile::Phase::Monitor);
      std::vector<i64> tickets;
      monitor_.for_each_unit_maximum([&](T* a, i64 n) { tickets.push_back(dp.reducer->start_max(a, n)); });
      for (i64 t : tickets) dp.reducer->wait(t);
    }
    return end_epoch();
  }

  // One optimizer step on exactly this batch (Keras train_on_batch).
  EpochStats train_batch(const T* X, const T* Y, const T* SW, i64 B) {
    BatchCall call(*this, B, B, NeedsCompile::Yes);
    const profile::Recording recording;
    LossStats ls;
    const bool stepped = train_step(X, Y, SW, B, ls);
    EpochStats st = batch_stats(ls, B);
    st.steps = stepped ? 1 : 0;
    st.stopped_nan = !stepped;
    st.learning_rate = stepped ? last_lr_ : 0.0;
    st.nonfinite_param = params_.first_nonfinite();
    return st;
  }

  // Loss and gradients of one batch, penalties not included; the gradients are left in
  // grads() (the pass starts from zero; a frozen layer's stay zero). The moving statistics
  // the training forward updates are put back.
  EpochStats compute_gradients(const T* X, const T* Y, const T* SW, i64 B) {
    BatchCall call(*this, B, B, NeedsCompile::Yes);
    params_.save_state(state_copy_);
    const LossStats ls = forward_loss(X, Y, SW, B);
    params_.restore_state(state_copy_);
    start_gradient_pass();
    backward(X, B);
    return batch_stats(ls, B);
  }

  // The numbers of one training step on (X, Y, SW) without taking it (model.trace): per
  // layer its input, pre-activation z (layers with an activation: the layer run with it set
  // to Linear; a itself is the training forward's), output a, dL/d(output) before the
  // layer's backward and delta after it (dL/dz for layers with an activation), dL/d(input);
  // the gradients (penalty included) and the update the step would make (the optimizer's,
  // run on copies of the weights, gradients and optimizer state, and the moving statistics'
  // from the training forward). Nothing of the network's state changes: the dropout streams
  // and the moving statistics are put back (the trace sees the masks the next step will
  // draw), the gradient block is restored, the monitor and NaN guard are not touched.
  // z in float32 may differ from the value the fused Dense epilogue used in the last bit;
  // in float64 the two are the same computation.
  TraceRecord<T> trace(const T* X, const T* Y, const T* SW, i64 B) {
    BatchCall call(*this, B, B, NeedsCompile::Yes);
    const size_t L = layers_.size();
    TraceRecord<T> tr;
    tr.layers.resize(L);
    std::vector<std::uint64_t> rng(L);
    for (size_t l = 0; l < L; ++l) rng[l] = layers_[l]->rng_state();
    const i64 np = params_.size();
    const std::vector<T> before(params_.params(), params_.params() + np);
    const i64 C = out_size();
    const T* in = X;
    for (size_t l = 0; l < L; ++l) {
      Layer<T>& ly = *layers_[l];
      auto& rec = tr.layers[l];
      rec.input.assign(in, in + B * ly.in_size());
      const i64 n = B * ly.out_size();
      if (ly.has_activation()) {  // z first
        const Act act = ly.activation();
        ly.set_activation(Act::Linear);
        try {
          ly.forward(in, acts_[l].data(), B, false);
        } catch (...) {
          ly.set_activation(act);
          throw;
        }
        ly.set_activation(act);
        rec.z.assign(acts_[l].data(), acts_[l].data() + n);
      }
      ly.forward(in, acts_[l].data(), B, true);
      rec.a.assign(acts_[l].data(), acts_[l].data() + n);
      in = acts_[l].data();
    }
    for (size_t l = 0; l < L; ++l) layers_[l]->set_rng_state(rng[l]);
    tr.output.assign(acts_.back().data(), acts_.back().data() + B * C);
    if (predict_head_ != Act::Linear) activation_forward(predict_head_, T(0), tr.output.data(), B, C);
    std::memcpy(probs_.data(), acts_.back().data(), sizeof(T) * B * C);
    const LossStats ls = compute_loss(probs_.data(), Y, SW, B, gbuf_[0].data());
    tr.output_grad.assign(gbuf_[0].data(), gbuf_[0].data() + B * C);
    // The gradient pass, into the gradient block (the layers are bound to it), saved first.
    std::vector<T> saved_grads(params_.grads(), params_.grads() + np);
    params_.zero_grads();
    avec<T> dx0(B * in_size(), T(0));
    T* dcur = gbuf_[0].data();
    int which = 0;
    for (i64 l = i64(L) - 1; l >= 0; --l) {
      const T* lin = l == 0 ? X : acts_[l - 1].data();
      T* dx = l == 0 ? dx0.data() : gbuf_[1 - which].data();
      const i64 n = B * layers_[l]->out_size();
      tr.layers[l].dout.assign(dcur, dcur + n);
      layers_[l]->backward(lin, acts_[l].data(), dcur, dx, B);
      tr.layers[l].delta.assign(dcur, dcur + n);
      tr.layers[l].dinput.assign(dx, dx + B * layers_[l]->in_size());
      dcur = dx;
      which = 1 - which;
    }
    const double pen = params_.add_penalty_gradients(params_.all_segments());
    tr.grads.assign(params_.grads(), params_.grads() + np);
    const double norm = std::sqrt(params_.grad_sum_squares());
    std::copy(saved_grads.begin(), saved_grads.end(), params_.grads());
    // The update, on copies: the step consumes (zeroes) the gradient copy.
    std::vector<avec<T>> state = opt_state_;
    avec<T> p(params_.params(), params_.params() + np), g(tr.grads.begin(), tr.grads.end());
    std::vector<SegmentStats> sums(params_.segments().size());
    const double gscale = opt_.clipnorm > 0.0 && norm > opt_.clipnorm ? opt_.clipnorm / norm : 1.0;
    tr.learning_rate = current_learning_rate();
    step_trainable(params_.all_segments(), tr.learning_rate, step_ + 1, gscale, p.data(), g.data(),
                   state, sums.data(), monitor_.active() || nan_guard_.enabled());
    tr.updates.resize(np);
    for (i64 i = 0; i < np; ++i) tr.updates[i] = p[i] - before[i];
    std::copy(before.begin(), before.end(), params_.params());  // the moving statistics
    tr.loss = (ls.loss_sum + pen * double(B)) / double(B);
    return tr;
  }

  EpochStats evaluate(const T* X, const T* Y, const T* SW, i64 N, i64 batch,
                      const PollFn& poll = nullptr) {
    BatchCall call(*this, N, batch, NeedsCompile::Yes);
    InferencePasses passes(*this, N, batch);
    const i64 tc = target_cols();
    EpochStats st;
    st.metrics.assign(num_metrics(), 0.0);
    Poller poller(poll);
    for (i64 start = 0; start < N; start += batch) {
      if (poller.stop()) {
        st.interrupted = true;
        return st;
      }
      const i64 B = std::min(batch, N - start);
      T* out = forward(X + start * in_size(), B, false);
      std::memcpy(probs_.data(), out, sizeof(T) * B * out_size());
      const T* yb = Y + start * tc;
      LossStats ls = compute_loss(probs_.data(), yb, SW ? SW + start : nullptr, B, nullptr);
      measure(probs_.data(), yb, B);
      st.loss += ls.loss_sum;
      for (size_t k = 0; k < st.metrics.size(); ++k) st.metrics[k] += batch_metrics_[k];
    }
    st.loss += params_.penalty() * double(N);
    st.samples = N;
    st.loss /= double(N);
    for (double& m : st.metrics) m /= double(N);
    return st;
  }

  // Samples per forward pass of predict: the batch, or fewer when one pass's widest layer
  // (its input plus its output) would not fit in 3/4 of a core's L2, but not below 64. Then
  // each layer's output is still in L2 when the next layer reads it: a conv net's first
  // layer writes 36 KB per MNIST sample, so a 256-sample batch sent 9.4 MB to L3 and back.
  // Measured on the example CNN (2 MiB L2), samples/s at 256 rows per pass against 64: 40,400
  // against 46,200 at 1 thread, 75,000 against 87,000 at 2. The MNIST MLP (5 KB per sample)
  // keeps 256. Each row's result does not depend on the other rows of its pass; the pass's
  // size only picks among GEMM kernels (for N <= 12, the dot form from 64 rows), so the
  // floor keeps every whole pass of a batch of >= 64 on the kernel the batch would get,
  // and the size does not depend on the thread count.
  static constexpr i64 kPredictMinRows = 64;
  i64 predict_rows(i64 batch) const {
    i64 widest = 1;
    for (const auto& l : layers_) widest = std::max(widest, l->in_size() + l->out_size());
    const i64 fit = i64(l2_cache_bytes()) * 3 / 4 / (i64(sizeof(T)) * widest);
    return std::min(batch, std::max(kPredictMinRows, fit));
  }

  // out: (N, out_size) — the model's outputs, final activation included.
  // Returns false when the poll function stopped it (out is then incomplete).
  // Runs at most predict_rows(batch) samples per forward pass.
  bool predict(const T* X, i64 N, i64 batch, T* out, const PollFn& poll = nullptr) {
    if (batch < 1) fail("batch_size must be >= 1; received ", batch);
    const i64 rows = predict_rows(batch);
    BatchCall call(*this, N, rows, NeedsCompile::No);
    InferencePasses passes(*this, N, rows);
    Poller poller(poll);
    const i64 C = out_size();
    for (i64 start = 0; start < N; start += rows) {
      if (poller.stop()) return false;
      const i64 B = std::min(rows, N - start);
      T* o = forward(X + start * in_size(), B, false);
      T* dst = out + start * C;
      std::memcpy(dst, o, sizeof(T) * B * C);
      if (predict_head_ != Act::Linear) activation_forward(predict_head_, T(0), dst, B, C);
    }
    return true;
  }

 private:
  enum class NeedsCompile : bool { No, Yes };

  // The preamble of every call that runs batches, written once: the checks, every buffer
  // grown for the call's largest batch (so the batch loop allocates nothing), then
  // denormals flushed until the call returns.
  class BatchCall {
   public:
    BatchCall(Network& net, i64 N, i64 batch, NeedsCompile needs) {
      if (needs == NeedsCompile::Yes && !net.compiled_)
        fail("the model must be compiled (loss and optimizer set) before training or evaluation");
      if (N < 1) fail("no samples: the input has 0 rows");
      if (batch < 1) fail("batch_size must be >= 1; received ", batch);
      net.reserve(std::min(batch, N));
      ftz_.emplace();
    }

   private:
    std::optional<DenormalsFlushed> ftz_;
  };

  // The layers prepared once for all the passes of an inference call over N rows, `rows` at
  // a time (Layer::begin_inference: Dense packs its kernel), and put back when the call ends,
  // however it ends. Only for two or more passes of many rows each: one pass packs its
  // weights anyway, and a pass of a few rows reads them in place.
  class InferencePasses {
   public:
    InferencePasses(Network& net, i64 N, i64 rows) : net_(net) {
      if (N <= rows || rows < kPredictMinRows) return;
      active_ = true;
      try {
        for (auto& l : net_.layers_) l->begin_inference(rows);
      } catch (...) {  // out of memory: no layer keeps panels it could later read stale
        for (auto& l : net_.layers_) l->end_inference();
        throw;
      }
    }
    ~InferencePasses() {
      if (active_)
        for (auto& l : net_.layers_) l->end_inference();
    }
    InferencePasses(const InferencePasses&) = delete;
    InferencePasses& operator=(const InferencePasses&) = delete;

   private:
    Network& net_;
    bool active_ = false;
  };

  static std::vector<std::unique_ptr<Layer<T>>> checked_chain(std::vector<std::unique_ptr<Layer<T>>> layers) {
    if (layers.empty()) fail("Network: needs at least one layer");
    for (size_t i = 1; i < layers.size(); ++i)
      if (layers[i]->in_size() != layers[i - 1]->out_size())
        fail("Network: layer ", i, " (", layers[i]->kind(), ") expects ",
             layers[i]->in_size(), " inputs per sample but layer ", i - 1, " (",
             layers[i - 1]->kind(), ") produces ", layers[i - 1]->out_size());
    return layers;
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
    for (int s = 0; s < GatherAhead<T>::kSlots; ++s) {
      xbuf_[s].assign(batch * in_size(), T(0));
      ybuf_[s].assign(batch * out_size(), T(0));
      wbuf_[s].assign(batch, T(0));
    }
    sample_loss_.assign(batch, 0.0);
    probs_.assign(batch * out_size(), T(0));
    for (auto& g : gbuf_) g.assign(batch * widest, T(0));
    cap_ = batch;
  }

  // Loss and metrics of a single-batch call (those of its last measure()), as means over
  // its B samples.
  EpochStats batch_stats(const LossStats& ls, i64 B) const {
    EpochStats st;
    st.loss = ls.loss_sum / double(B);
    st.metrics.resize(batch_metrics_.size());
    for (size_t k = 0; k < batch_metrics_.size(); ++k) st.metrics[k] = batch_metrics_[k] / double(B);
    st.samples = B;
    return st;
  }

  void set_external_metrics(i64 n, ExternalMetricsFn<T> fn) {
    n_ext_metrics_ = n;
    ext_metrics_ = std::move(fn);
    batch_metrics_.assign(metrics_.size() + size_t(n), 0.0);
  }

  // The loss of one batch: out (B, C) holds the last layer's outputs; with a fused head (or
  // from_logits) they are logits, overwritten with the probabilities. grad (B, C) or null
  // receives d(sum_i w_i l_i / n)/d(out), n = batch_total when > 0 (a data-parallel step's
  // global batch), else B.
  LossStats compute_loss(T* out, const T* y, const T* w, i64 B, T* grad, i64 batch_total = 0) {
    const i64 C = out_size();
    if (!external_loss_)
      return loss_forward_backward<T>(loss_, loss_head_, out, y, w, B, C, grad, batch_total);
    ext_loss_(out, y, B, C, sample_loss_.data(), grad);
    LossStats ls;
    const double invB = 1.0 / double(batch_total > 0 ? batch_total : B);
    for (i64 i = 0; i < B; ++i) {
      const double wi = w ? double(w[i]) : 1.0;
      ls.loss_sum += wi * sample_loss_[i];
      if (grad) {
        const T scale = T(wi * invB);
        for (i64 j = 0; j < C; ++j) grad[i * C + j] *= scale;
      }
    }
    return ls;
  }

  // Every metric's sum over this batch into batch_metrics_. pred: (B, C) the outputs the loss
  // saw (probabilities after a fused head); y: (B, target_cols()).
  void measure(const T* pred, const T* y, i64 B) {
    const i64 C = out_size();
    for (size_t k = 0; k < metrics_.size(); ++k) batch_metrics_[k] = metric_sum(metrics_[k], pred, y, B, C);
    if (n_ext_metrics_ > 0) {
      double* ext = batch_metrics_.data() + metrics_.size();
      std::fill(ext, ext + n_ext_metrics_, 0.0);
      ext_metrics_(pred, y, B, C, target_cols(), ext);
    }
  }

  // One training step of the current epoch (begin_epoch), its loss and metrics added to the
  // epoch's sums. Returns false when stop_on_nan refused the step.
  bool epoch_step(const T* x, const T* y, const T* w, i64 B) {
    LossStats ls;
    const bool ok = train_step(x, y, w, B, ls);
    epoch_.loss += ls.loss_sum;
    for (size_t k = 0; k < epoch_.metrics.size(); ++k) epoch_.metrics[k] += batch_metrics_[k];
    epoch_.samples += B;
    if (ok) epoch_.steps += 1;
    else epoch_.stopped_nan = true;
    return ok;
  }

  // The epoch's order of the rows: 0..N-1, shuffled with seed when asked.
  void order_epoch(i64 N, bool shuffle, std::uint64_t seed) {
    const profile::PhaseScope timed(profile::Phase::Gather);
    order_.resize(N);
    std::iota(order_.begin(), order_.end(), i64(0));
    if (shuffle) shuffle_indices(order_.data(), N, seed);
  }

  // Point xb/yb/wb at the rows of this batch: the user's arrays directly when in order,
  // otherwise the rows gathered into the preallocated batch buffers.
  void gather(const T* X, const T* Y, const T* SW, i64 start, i64 B, bool shuffled,
              const T*& xb, const T*& yb, const T*& wb) {
    const profile::PhaseScope timed(profile::Phase::Gather);
    const i64 in = in_size(), tc = target_cols();
    if (!shuffled) {
      xb = X + start * in;
      yb = Y + start * tc;
      wb = SW ? SW + start : nullptr;
      return;
    }
    const i64* idx = order_.data() + start;
    T* xd = xbuf_[0].data();
    T* yd = ybuf_[0].data();
    const i64 groups = (B + kGatherStreams - 1) / kGatherStreams;
#pragma omp parallel for schedule(static) if (B * in > kParallelElems)
    for (i64 g = 0; g < groups; ++g) {
      const i64 r0 = g * kGatherStreams, rows = std::min(kGatherStreams, B - r0);
      gather_rows(xd + r0 * in, X, idx + r0, rows, in);
      gather_rows(yd + r0 * tc, Y, idx + r0, rows, tc);
    }
    if (SW)
      for (i64 r = 0; r < B; ++r) wbuf_[0][r] = SW[idx[r]];
    xb = xd;
    yb = yd;
    wb = SW ? wbuf_[0].data() : nullptr;
  }

  // Batch buffer set s: gather() fills set 0, gathering ahead cycles through all of them.
  typename GatherAhead<T>::Buffers batch_buffers(int s) {
    return {xbuf_[s].data(), ybuf_[s].data(), wbuf_[s].data()};
  }

  // Forward through every layer; returns the last layer's output (logits if fused).
  T* forward(const T* x, i64 B, bool training) {
    const T* in = x;
    for (size_t l = 0; l < layers_.size(); ++l) {
      {
        const profile::PhaseScope timed(profile::Phase::ForwardElementwise);  // less its GEMMs
        layers_[l]->forward(in, acts_[l].data(), B, training);
      }
      in = acts_[l].data();
      if (training && monitor_.tracks_units(l)) {
        const profile::PhaseScope timed(profile::Phase::Monitor);
        monitor_.mark_alive(l, acts_[l].data(), B * layers_[l]->out_size());
      }
    }
    return acts_.back().data();
  }

  // Forward pass, loss and metrics; the loss gradient w.r.t. the output is left in gbuf_[0],
  // as a mean over batch_total rows (0: these B; data-parallel: the global batch), the metric
  // sums in batch_metrics_.
  LossStats forward_loss(const T* x, const T* y, const T* w, i64 B, i64 batch_total = 0) {
    const i64 C = out_size();
    T* out = forward(x, B, true);
    const profile::PhaseScope timed(profile::Phase::Loss);
    std::memcpy(probs_.data(), out, sizeof(T) * B * C);
    const LossStats ls = compute_loss(probs_.data(), y, w, B, gbuf_[0].data(), batch_total);
    measure(probs_.data(), y, B);
    return ls;
  }

  // Backward passes accumulate (+=) into the gradients, so each starts from zero: the
  // explicit zeroing pass, skipped when the last optimizer step consumed every gradient.
  void start_gradient_pass() {
    if (grad_state_ != GradState::Zero) params_.zero_grads();
    grad_state_ = GradState::Accumulated;
  }

  // The backward pass from the loss gradient in gbuf_[0], last layer first; after layer l's
  // backward has accumulated its parameter gradients, after_layer(l) runs (they are still
  // in cache then).
  template <typename AfterLayer>
  void backward_layers(const T* x, i64 B, AfterLayer&& after_layer) {
    T* dcur = gbuf_[0].data();
    int which = 0;
    for (i64 l = i64(layers_.size()) - 1; l >= 0; --l) {
      const T* lin = l == 0 ? x : acts_[l - 1].data();
      T* dx = l == 0 ? nullptr : gbuf_[1 - which].data();
      {
        const profile::PhaseScope timed(profile::Phase::BackwardElementwise);  // less its GEMMs
        layers_[l]->backward(lin, acts_[l].data(), dcur, dx, B);
      }
      after_layer(size_t(l));
      dcur = dx;
      which = 1 - which;
    }
  }

  // Gradients of the loss w.r.t. every parameter, accumulated into grads().
  void backward(const T* x, i64 B) {
    backward_layers(x, B, [](size_t) {});
  }

  // The backward pass with each layer's optimizer step taken as soon as its gradients are
  // complete: penalty gradients added, then the step consumes them. Its weights are no
  // longer needed once the layer has computed dx. Returns the penalty.
  double backward_and_step(const T* x, i64 B) {
    double pen = 0.0;
    backward_layers(x, B, [&](size_t l) {
      const profile::PhaseScope timed(profile::Phase::Optimizer);
      const SegmentRange r = params_.layer_segments(l);
      pen += params_.add_penalty_gradients(r);
      step_consuming_grads(r, 1.0);
    });
    return pen;
  }

  // The fused optimizer loop over the trainable segments in r: reads each gradient (scaled
  // by gscale, the global-norm clipping factor) and zeroes it, so those gradients are
  // consumed. Its per-segment sums go to the monitor and, Σw², to the NaN check.
  void step_consuming_grads(SegmentRange r, double gscale) {
    step_trainable(r, last_lr_, step_, gscale, params_.params(), params_.grads(), opt_state_,
                   step_sums_.data(), monitor_.active() || nan_guard_.enabled(),
                   [&](SegmentRange run) {
                     if (!monitor_.active()) return;
                     const profile::PhaseScope timed(profile::Phase::Monitor);
                     monitor_.add_step(step_sums_, run);
                   });
  }

  // optimizer_step over the maximal runs of trainable segments in r, on the block p / g
  // with state slots `state` (the network's, or copies: trace); after each run,
  // after_run(run). The other segments (a frozen layer's, moving statistics) are left as
  // they are, their gradients zeroed (consumed) and their sums cleared.
  template <typename AfterRun = void (*)(SegmentRange)>
  void step_trainable(SegmentRange r, double lr, i64 t, double gscale, T* p, T* g,
                      std::vector<avec<T>>& state, SegmentStats* sums, bool with_stats,
                      AfterRun&& after_run = [](SegmentRange) {}) {
    const Segment* segs = params_.segments().data();
    for (size_t k = r.begin; k < r.end;) {
      if (!params_.trainable(k)) {
        std::fill(g + segs[k].offset, g + segs[k].offset + segs[k].size, T(0));
        sums[k] = SegmentStats{};
        ++k;
        continue;
      }
      size_t e = k + 1;
      while (e < r.end && params_.trainable(e)) ++e;
      optimizer_step(opt_, lr, t, gscale, p, g, state, segs + k, e - k, sums + k, with_stats);
      after_run(SegmentRange{k, e});
      k = e;
    }
  }

  // One training step: forward, loss, backward, optimizer. Without clipnorm each layer's
  // parameters are updated right after its backward pass (backward_and_step); global-norm
  // clipping needs every gradient first, so with clipnorm the step follows the whole
  // backward pass. Either way the step consumes every gradient.
  // Returns false when stop_on_nan is set and the loss or a new weight is not finite. The
  // weights, optimizer state and step count are then put back to the last ones whose loss
  // was finite: those before this step (new weights not finite) or before the previous one
  // (the loss of the weights it left is not finite), if that step was taken in this run
  // of stop_on_nan with no change of the weights from outside since. With snapshots every
  // N > 1 steps, to the last snapshot's: a finite state at most N steps back.
  bool train_step(const T* x, const T* y, const T* w, i64 B, LossStats& ls) {
    profile::count_step();
    ls = forward_loss(x, y, w, B);
    if (nan_guard_.enabled() && !std::isfinite(ls.loss_sum)) {
      // The last step's weights give a non-finite loss: put back those before it.
      nan_guard_.restore(params_, opt_state_, step_);
      return false;
    }
    if (nan_guard_.enabled() && nan_guard_.due(step_)) nan_guard_.take(params_, opt_state_, step_);
    last_lr_ = current_learning_rate();
    ++step_;
    start_gradient_pass();
    double pen = 0.0;
    if (opt_.clipnorm <= 0.0) {
      pen = backward_and_step(x, B);
    } else {
      backward(x, B);
      const profile::PhaseScope timed(profile::Phase::Optimizer);
      const SegmentRange all = params_.all_segments();
      pen = params_.add_penalty_gradients(all);
      const double norm = std::sqrt(params_.grad_sum_squares());
      step_consuming_grads(all, norm > opt_.clipnorm ? opt_.clipnorm / norm : 1.0);
    }
    grad_state_ = GradState::Zero;
    ls.loss_sum += pen * double(B);
    if (nan_guard_.enabled() && (!std::isfinite(pen) || !params_.weights_finite_after(step_sums_))) {
      nan_guard_.restore(params_, opt_state_, step_);
      return false;
    }
    return true;
  }

  // A gradient bucket (see kMinBucketBytes): parameter tensors [segs.begin, segs.end), one
  // contiguous run [offset, offset + size) of the gradient block.
  struct Bucket {
    SegmentRange segs;
    i64 offset, size;
    i64 ticket;  // of its sum in the current step
  };

  // The buckets, last layer's first, and for each layer the bucket whose sum can start once
  // its backward pass is done (-1: none). Fixed by the layer sizes: built once.
  void plan_buckets() {
    if (!bucket_after_layer_.empty()) return;
    const size_t L = layers_.size();
    bucket_after_layer_.assign(L, -1);
    const auto& segs = params_.segments();
    size_t lowest = L;  // the first layer with parameters
    for (size_t l = 0; l < L; ++l) {
      const SegmentRange r = params_.layer_segments(l);
      if (r.begin != r.end) {
        lowest = l;
        break;
      }
    }
    SegmentRange open{0, 0};
    for (size_t l = L; l-- > 0;) {
      const SegmentRange r = params_.layer_segments(l);
      if (r.begin == r.end) continue;
      if (open.begin == open.end) open = r;
      else open.begin = r.begin;
      const i64 offset = segs[open.begin].offset;
      const i64 size = segs[open.end - 1].offset + segs[open.end - 1].size - offset;
      if (size * i64(sizeof(T)) >= kMinBucketBytes || l == lowest) {
        bucket_after_layer_[l] = i64(buckets_.size());
        buckets_.push_back({open, offset, size, 0});
        open = {0, 0};
      }
    }
  }

  // One data-parallel step on this process's B rows (B may be 0) of a global batch of
  // Bglobal rows. stop: in, whether this process asks to stop; out, whether any does. ls
  // receives the global sums. The loss sums start first, then each bucket's gradients as
  // soon as the backward pass has produced them; without clipnorm each bucket's optimizer
  // step follows as soon as its sum is complete (while the next ones travel), with clipnorm
  // all steps wait for every sum (the global norm). Returns false when stop_on_nan undid
  // the step: a non-finite global loss or new weights — the same decision on every
  // process, as it is made from the same sums.
  bool train_step_parallel(const T* x, const T* y, const T* w, i64 B, i64 Bglobal, Reducer& red,
                           bool& stop, LossStats& ls) {
    profile::count_step();
    LossStats local;
    if (B > 0) local = forward_loss(x, y, w, B, Bglobal);  // the metric sums in batch_metrics_
    else std::fill(batch_metrics_.begin(), batch_metrics_.end(), 0.0);
    const size_t nm = batch_metrics_.size();
    step_totals_[0] = local.loss_sum;
    std::copy(batch_metrics_.begin(), batch_metrics_.end(), step_totals_.begin() + 1);
    step_totals_[1 + nm] = stop ? 1.0 : 0.0;
    const i64 totals_ticket = red.start_sum(step_totals_.data(), i64(step_totals_.size()));
    start_gradient_pass();
    bool totals_known = false, finite = true;
    // Before the first weight changes: the global loss decides whether the step is taken
    // (stop_on_nan), then the snapshot and the step count, as in train_step.
    auto settle_totals = [&] {
      if (totals_known) return;
      totals_known = true;
      red.wait(totals_ticket);
      ls.loss_sum = step_totals_[0];
      std::copy(step_totals_.begin() + 1, step_totals_.begin() + 1 + nm, batch_metrics_.begin());
      stop = step_totals_[1 + nm] > 0.0;
      if (nan_guard_.enabled() && !std::isfinite(ls.loss_sum)) {
        finite = false;
        return;
      }
      if (nan_guard_.enabled() && nan_guard_.due(step_)) nan_guard_.take(params_, opt_state_, step_);
      last_lr_ = current_learning_rate();
      ++step_;
    };
    const bool clip = opt_.clipnorm > 0.0;
    double pen = 0.0;
    size_t next_step = 0;  // the first bucket whose optimizer step is not taken yet
    auto step_through = [&](size_t end) {  // steps of buckets [next_step, end), sums awaited
      for (; next_step < end; ++next_step) {
        red.wait(buckets_[next_step].ticket);
        settle_totals();
        if (!finite) continue;
        const profile::PhaseScope timed(profile::Phase::Optimizer);
        const SegmentRange r = buckets_[next_step].segs;
        pen += params_.add_penalty_gradients(r);
        step_consuming_grads(r, 1.0);
      }
    };
    auto after_layer = [&](size_t l) {
      const i64 bi = bucket_after_layer_[l];
      if (bi < 0) return;
      Bucket& b = buckets_[bi];
      b.ticket = red.start_sum(params_.grads() + b.offset, b.size);
      if (!clip) step_through(size_t(bi));  // the buckets above, while this one travels
    };
    if (B > 0) {
      backward_layers(x, B, after_layer);
    } else {  // no rows here this step: zero gradients, but the same sums as everyone
      for (size_t l = layers_.size(); l-- > 0;) after_layer(l);
    }
    if (!clip) {
      step_through(buckets_.size());
    } else {
      for (const Bucket& b : buckets_) red.wait(b.ticket);
      settle_totals();
      if (finite) {
        const profile::PhaseScope timed(profile::Phase::Optimizer);
        const SegmentRange all = params_.all_segments();
        pen = params_.add_penalty_gradients(all);
        const double norm = std::sqrt(params_.grad_sum_squares());
        step_consuming_grads(all, norm > opt_.clipnorm ? opt_.clipnorm / norm : 1.0);
      }
    }
    settle_totals();  // a network without parameters has no buckets
    if (!finite) {  // the last step's weights gave a non-finite loss: put back those before it
      nan_guard_.restore(params_, opt_state_, step_);
      return false;
    }
    grad_state_ = GradState::Zero;
    ls.loss_sum += pen * double(Bglobal);
    if (nan_guard_.enabled() && (!std::isfinite(pen) || !params_.weights_finite_after(step_sums_))) {
      nan_guard_.restore(params_, opt_state_, step_);
      return false;
    }
    return true;
  }

  std::vector<std::unique_ptr<Layer<T>>> layers_;
  ParamStore<T> params_;  // binds the layers to their views: constructed after layers_
  GradState grad_state_ = GradState::Zero;
  Loss loss_ = Loss::MSE;
  Act last_act_ = Act::Linear;     // the last layer's configured activation
  Act loss_head_ = Act::Linear;    // the activation the loss applies to the outputs, if any
  Act predict_head_ = Act::Linear; // the activation predictions get after the last layer
  bool compiled_ = false;
  bool external_loss_ = false;
  ExternalLossFn<T> ext_loss_;
  std::vector<MetricSpec> metrics_;
  i64 n_ext_metrics_ = 0;
  ExternalMetricsFn<T> ext_metrics_;
  std::vector<double> batch_metrics_;  // per metric: its sum over the last batch measured
  EpochStats epoch_;                   // the current epoch's sums (begin_epoch .. end_epoch)
  std::mutex mu_;

  // The optimizer: configuration, state slots (each parallel to the parameter block), the
  // step count, and per segment the sums (Σg², Σ(Δw)², Σw²) of the last step.
  OptimConfig opt_;
  std::vector<avec<T>> opt_state_;
  i64 step_ = 0;
  double lr_scale_ = 1.0, last_lr_ = 0.0;
  std::vector<SegmentStats> step_sums_;

  GradientMonitor<T> monitor_;
  NanGuard<T> nan_guard_;

  // Per-call buffers, sized by reserve() for batches up to cap_.
  i64 cap_ = 0;
  std::vector<avec<T>> acts_;
  avec<T> xbuf_[GatherAhead<T>::kSlots], ybuf_[GatherAhead<T>::kSlots], wbuf_[GatherAhead<T>::kSlots];
  avec<T> probs_;
  bool gather_ahead_ = true;
  i64 gather_ahead_min_bytes_ = GatherAhead<T>::kMinEpochBytes;
  std::vector<double> sample_loss_;  // per-sample losses from an external loss
  avec<T> gbuf_[2];
  std::vector<i64> order_;
  std::vector<T> state_copy_;  // compute_gradients: the moving statistics before its pass

  // Data-parallel steps: the gradient buckets, and the step's loss sum, metric sums and
  // stop requests as summed over the processes.
  std::vector<Bucket> buckets_;
  std::vector<i64> bucket_after_layer_;
  std::vector<double> step_totals_;  // sized by train_epoch_parallel
};

}  // namespace cr
