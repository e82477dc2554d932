// Stop-on-NaN's snapshot: before a step it copies what a step changes (weights, optimizer
// slots, step count) so that a step whose loss or new weights are not finite can be undone.
// Taken before every step (every = 1), a restore puts back exactly the last finite step;
// taken at most every N steps, the copy's cost is spread over N steps and a restore goes
// back at most N steps, to a state that was finite too. The finiteness checks and the
// decision to restore are the training step's (network.h).
#pragma once
#include <cstring>
#include <vector>

#include "common.h"
#include "trainer/params.h"

namespace cr {

template <typename T>
class NanGuard {
 public:
  bool enabled() const { return enabled_; }
  // A snapshot from an earlier fit is not "the last finite step": switching drops it.
  // every: steps between snapshots (>= 1).
  void set_enabled(bool on, i64 every = 1) {
    if (every < 1) fail("stop_on_nan: the snapshot interval must be >= 1; received ", every);
    enabled_ = on;
    every_ = every;
    valid_ = false;
  }
  i64 every() const { return every_; }
  // Whether the step about to be taken (the optimizer's step count `step`) needs a snapshot.
  bool due(i64 step) const { return !valid_ || step - step_ >= every_; }
  // The weights, optimizer state or step count were set from outside: the snapshot no
  // longer describes a step of this run.
  void invalidate() { valid_ = false; }

  // Before a step. Allocates on the first call only (the sizes do not change after).
  void take(const ParamStore<T>& params, const std::vector<avec<T>>& opt_state, i64 step) {
    valid_ = true;
    weights_.resize(params.size());
    std::memcpy(weights_.data(), params.params(), sizeof(T) * params.size());
    opt_state_.resize(opt_state.size());
    for (size_t j = 0; j < opt_state.size(); ++j) {
      opt_state_[j].resize(opt_state[j].size());
      std::memcpy(opt_state_[j].data(), opt_state[j].data(), sizeof(T) * opt_state[j].size());
    }
    step_ = step;
  }

  // Puts back the snapshot, once; nothing when there is none valid.
  void restore(ParamStore<T>& params, std::vector<avec<T>>& opt_state, i64& step) {
    if (!valid_) return;
    valid_ = false;
    std::memcpy(params.params(), weights_.data(), sizeof(T) * params.size());
    for (size_t j = 0; j < opt_state.size(); ++j)
      std::memcpy(opt_state[j].data(), opt_state_[j].data(), sizeof(T) * opt_state[j].size());
    step = step_;
  }

 private:
  bool enabled_ = false, valid_ = false;
  i64 every_ = 1;
  avec<T> weights_;
  std::vector<avec<T>> opt_state_;
  i64 step_ = 0;
};

}  // namespace cr
