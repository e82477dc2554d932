// Optimizer steps: one fused loop per parameter tensor over the flat parameter block,
// applying (in order) global-norm scaling, value clipping, decoupled weight decay and the
// update rule, and reducing Σg², Σ(Δw)², Σw² on the way for the per-layer monitor.
// Update rules follow PyTorch's torch.optim formulas (so they can be checked step by step).
#pragma once
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "common.h"
#include "kernels/dispatch.h"

namespace cr {

enum class OptKind : int { SGD = 0, Adam = 1, RMSprop = 2, Adagrad = 3 };

// Learning-rate schedules, evaluated per optimizer step (t = 0, 1, …), as Keras's are.
enum class SchedKind : int { Constant = 0, Step = 1, Exponential = 2, Cosine = 3 };

struct Schedule {
  SchedKind kind = SchedKind::Constant;
  double decay_steps = 1.0;  // Step: steps between drops; Exponential/Cosine: decay length
  double decay_rate = 1.0;   // Step: factor per drop; Exponential: factor per decay_steps
  bool staircase = false;    // Exponential: integer division of t / decay_steps
  double alpha = 0.0;        // Cosine: final rate as a fraction of the peak
  double warmup_steps = 0;   // Cosine: linear warm-up from warmup_start to the peak
  double warmup_start = 0.0;

  double rate(double base, i64 t) const {
    const double s = double(t);
    switch (kind) {
      case SchedKind::Constant: return base;
      case SchedKind::Step: return base * std::pow(decay_rate, std::floor(s / decay_steps));
      case SchedKind::Exponential: {
        double e = s / decay_steps;
        return base * std::pow(decay_rate, staircase ? std::floor(e) : e);
      }
      case SchedKind::Cosine: {
        if (s < warmup_steps) return warmup_start + (base - warmup_start) * (s / warmup_steps);
        double progress = std::min(s - warmup_steps, decay_steps) / decay_steps;
        double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
        return base * ((1.0 - alpha) * cosine + alpha);
      }
    }
    return base;
  }
};

struct OptimConfig {
  OptKind kind = OptKind::SGD;
  double learning_rate = 0.01;
  double momentum = 0.0;       // SGD, RMSprop
  bool nesterov = false;       // SGD
  double beta1 = 0.9, beta2 = 0.999;  // Adam
  bool amsgrad = false;        // Adam
  double rho = 0.9;            // RMSprop decay of the squared-gradient average
  double epsilon = 1e-7;
  double initial_accumulator = 0.1;  // Adagrad
  double weight_decay = 0.0;   // decoupled: w -= lr · wd · w before the update
  double clipvalue = 0.0;      // > 0: clip each gradient element to [-c, c]
  double clipnorm = 0.0;       // > 0: scale all gradients so their global L2 norm <= c
  Schedule schedule;

  int state_slots() const {
    switch (kind) {
      case OptKind::SGD: return momentum == 0.0 ? 0 : 1;
      case OptKind::Adam: return amsgrad ? 3 : 2;
      case OptKind::RMSprop: return momentum == 0.0 ? 1 : 2;
      case OptKind::Adagrad: return 1;
    }
    return 0;
  }
  double state_init(int slot) const {
    return (kind == OptKind::Adagrad && slot == 0) ? initial_accumulator : 0.0;
  }
};

// A contiguous parameter tensor inside the flat block.
struct Segment {
  i64 offset, size;
};

struct SegmentStats {
  double g2 = 0.0;  // Σ g², raw gradient (before scaling/clipping)
  double d2 = 0.0;  // Σ (Δw)², the applied update
  double w2 = 0.0;  // Σ w², after the update
};

namespace detail {
#include "optim/step_impl.h"
}  // namespace detail

// The float32 step compiled once per CPU target (step_{generic,avx2,avx512}.cpp, through
// optim/step_target.h) as cr::<target>::optimizer_kernels; chosen as kernels/dispatch.h
// says, so CHAINRULE_CPU_TARGET lowers it with the GEMM's.
using StepF32 = SegmentStats (*)(bool, const OptimConfig&, float, i64, float, float*, float*,
                                 float*, float*, float*, i64);
struct OptimizerKernels {
  const char* name;
  StepF32 step_f32;
};
CR_DECLARE_PER_TARGET(OptimizerKernels, optimizer_kernels)

// The float32 step of the CPU target chosen at run time.
StepF32 step_f32_for_cpu();


// One optimizer step (t counts from 1) with learning rate `lr` over every segment;
// gscale multiplies the gradients first (global-norm clipping). Consumes the gradients: each
// is read and zeroed in the same loop (no separate zeroing pass), so all are zero after.
// stats: one per segment, filled when `with_stats` (the gradient monitor), else left zero.
template <typename T>
void optimizer_step(const OptimConfig& c, double lr, i64 t, double gscale, T* p, T* g,
                    std::vector<avec<T>>& state, const Segment* segs, size_t nsegs,
                    SegmentStats* stats, bool with_stats) {
  for (size_t k = 0; k < nsegs; ++k) {
    const i64 off = segs[k].offset, n = segs[k].size;
    T* s[3] = {nullptr, nullptr, nullptr};
    for (size_t j = 0; j < state.size() && j < 3; ++j) s[j] = state[j].data() + off;
    SegmentStats st;
    if constexpr (std::is_same_v<T, float>) {
      static const StepF32 step = step_f32_for_cpu();
      st = step(with_stats, c, T(lr), t, T(gscale), p + off, g + off, s[0], s[1], s[2], n);
    } else {
      st = detail::step_any<T>(with_stats, c, T(lr), t, T(gscale), p + off, g + off, s[0], s[1],
                               s[2], n);
    }
    stats[k] = st;
  }
}

}  // namespace cr
