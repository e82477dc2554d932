// The step profile: opt-in wall-time accounting of training by phase (gathering batches,
// GEMM packing and micro-kernels, the layers' own element-wise work, loss, optimizer,
// monitor, the rest), so the cost of a step beyond its arithmetic is visible. Not a general
// profiler: the phases are fixed, exclusive, and add up to the time recorded. Beside
// common.h because the GEMM driver (kernels/) and the trainer both record into it.
//
// What is recorded: the wall time of one thread, the one that runs a training call (the
// thread that calls train_epoch, train_stream_batches, train_epoch_parallel or train_batch;
// OpenMP's thread 0 of every team that call forks). Evaluation and prediction are not.
// Inside a parallel GEMM that thread packs and computes its own tiles, so gemm_pack is its
// own packing and gemm_compute the rest of the call as it sees it: its micro-kernel loops,
// the fork/join, and the wait for the other threads' tiles. Other threads record nothing.
// The phases thus split the step's critical path as the caller experiences it, and the
// sum over phases is the wall time of the training calls; the work the other threads do in
// parallel is in there only as far as the caller waits for it.
//
// Cost: off (the default), each phase boundary is one relaxed load and a predictable
// branch; nothing is allocated or written. On, one steady_clock read per boundary (about
// 1 us per step of the 784-32-10 MLP, 2% of it; bench/step_profile.py measures it), and
// the first touch of a thread's recorder may have the C library set up its thread-local
// block (once per thread).
// Results are the same either way: nothing here touches the numbers.
#pragma once
#include <array>
#include <atomic>
#include <chrono>
#include <mutex>

#include "common.h"

namespace cr::profile {

// The phases in report order. At any moment of a recording the recording thread is in
// exactly one of them; `Other` is where it is outside every named phase.
enum class Phase : int {
  Gather,               // the epoch's shuffled order, copying a batch's rows (Network::gather)
  GemmPack,             // packing A and B micro-panels in the float32 GEMM driver
  GemmCompute,          // the rest of a GEMM call: micro-kernel loops with the fused bias +
                        // activation epilogue, fork/join, waiting for other threads' tiles;
                        // float64 products (no packing) whole
  ForwardElementwise,   // a layer's forward outside its GEMMs: bias/activation not fused into
                        // the GEMM, im2col, pooling, dropout, batch normalization
  Loss,                 // loss value and output gradient, metrics (those computed in Python
                        // included)
  BackwardElementwise,  // a layer's backward outside its GEMMs: activation derivative, bias
                        // gradient, col2im, pooling, dropout, batch normalization
  Optimizer,            // penalty gradients, clipping's global norm, the optimizer step (with
                        // the per-tensor sums it reduces for the monitor and stop_on_nan)
  Monitor,              // the gradient monitor: dead-unit marks, per-step and per-epoch sums
  Other,                // the rest: the batch loop, learning-rate schedule, stop_on_nan
                        // snapshots, progress and poll callbacks, data-parallel reductions
};
constexpr int kPhaseCount = int(Phase::Other) + 1;
// The names the bindings report; one per Phase, same order.
inline constexpr const char* kPhaseNames[kPhaseCount] = {
    "gather", "gemm_pack", "gemm_compute", "forward_elementwise", "loss",
    "backward_elementwise", "optimizer", "monitor", "other"};
static_assert(kPhaseNames[kPhaseCount - 1] != nullptr, "a name for every phase");

// What has been recorded: nanoseconds per phase, the recorded wall time (the sum of the
// phases, measured on its own), and the training steps taken while recording.
struct Totals {
  std::array<i64, kPhaseCount> ns{};
  i64 total_ns = 0;
  i64 steps = 0;
};

namespace detail {

using Clock = std::chrono::steady_clock;

inline i64 nanoseconds(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}

inline std::atomic<bool> enabled{false};
// Guards `totals`; held only to add a finished recording or to copy or clear the totals,
// never while waiting for anything else.
inline std::mutex totals_mutex;
inline Totals totals;

// One thread's recording in progress.
struct Recorder {
  bool active = false;
  Phase current = Phase::Other;
  Clock::time_point start, since;
  Totals sums;
  // Ends the current phase now and enters p; returns the phase left.
  Phase enter(Phase p) {
    const Clock::time_point now = Clock::now();
    sums.ns[int(current)] += nanoseconds(now - since);
    since = now;
    const Phase left = current;
    current = p;
    return left;
  }
};
inline thread_local Recorder recorder;

}  // namespace detail

inline bool enabled() { return detail::enabled.load(std::memory_order_relaxed); }
// Takes effect at the next training call (one in progress goes on as it started).
inline void set_enabled(bool on) { detail::enabled.store(on, std::memory_order_relaxed); }
// The totals of every recording finished so far (in any thread).
inline Totals totals() {
  std::lock_guard<std::mutex> lk(detail::totals_mutex);
  return detail::totals;
}
inline void reset() {
  std::lock_guard<std::mutex> lk(detail::totals_mutex);
  detail::totals = Totals{};
}

// The time until the end of the scope counts to phase p, on the recording thread; on any
// other thread, or with profiling off, nothing happens. Scopes nest: an inner scope's time
// is its own, and the outer phase resumes after it.
class PhaseScope {
 public:
  explicit PhaseScope(Phase p) {
    if (!enabled()) return;  // off: this load and branch are the whole cost
    detail::Recorder& r = detail::recorder;
    if (!r.active) return;
    rec_ = &r;
    left_ = r.enter(p);
  }
  ~PhaseScope() {
    if (rec_) rec_->enter(left_);
  }
  PhaseScope(const PhaseScope&) = delete;
  PhaseScope& operator=(const PhaseScope&) = delete;

 private:
  detail::Recorder* rec_ = nullptr;
  Phase left_ = Phase::Other;
};

// Around a training call (an epoch, a chunk of streamed batches, one batch): with profiling
// on, records this thread's time by phase from here to the end of the scope, then adds it
// to the totals. A recording already in progress on this thread covers a nested one.
class Recording {
 public:
  Recording() {
    if (!enabled()) return;
    detail::Recorder& r = detail::recorder;
    if (r.active) return;
    r.sums = Totals{};
    r.current = Phase::Other;
    r.start = r.since = detail::Clock::now();
    r.active = true;
    rec_ = &r;
  }
  ~Recording() {
    if (!rec_) return;
    rec_->enter(Phase::Other);
    rec_->sums.total_ns = detail::nanoseconds(rec_->since - rec_->start);
    rec_->active = false;
    std::lock_guard<std::mutex> lk(detail::totals_mutex);
    Totals& t = detail::totals;
    for (int k = 0; k < kPhaseCount; ++k) t.ns[k] += rec_->sums.ns[k];
    t.total_ns += rec_->sums.total_ns;
    t.steps += rec_->sums.steps;
  }
  Recording(const Recording&) = delete;
  Recording& operator=(const Recording&) = delete;

 private:
  detail::Recorder* rec_ = nullptr;
};

// One training step taken (or refused by stop_on_nan) inside a recording.
inline void count_step() {
  if (!enabled()) return;
  detail::Recorder& r = detail::recorder;
  if (r.active) ++r.sums.steps;
}

}  // namespace cr::profile
