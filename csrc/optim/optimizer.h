// Optimizer steps: one fused loop per parameter tensor over the flat parameter block,
// applying (in order) global-norm scaling, value clipping, decoupled weight decay and the
// update rule, and reducing Σg², Σ(Δw)², Σw² on the way for the per-layer monitor.
// Update rules follow PyTorch's torch.optim formulas (so they can be checked step by step).
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"

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

template <OptKind K, typename T>
SegmentStats step_segment(const OptimConfig& c, T lr, i64 t, T gscale, T* p, const T* g,
                          T* s0, T* s1, T* s2, i64 n) {
  const T cv = T(c.clipvalue), wd = T(c.weight_decay), eps = T(c.epsilon);
  const T mu = T(c.momentum), b1 = T(c.beta1), b2 = T(c.beta2), rho = T(c.rho);
  const bool clip = c.clipvalue > 0.0, nesterov = c.nesterov, ams = c.amsgrad;
  const T bc1 = T(1.0 - std::pow(c.beta1, double(t))), bc2 = T(1.0 - std::pow(c.beta2, double(t)));
  const T step_size = lr / bc1, inv_sqrt_bc2 = T(1.0 / std::sqrt(double(bc2)));
  double g2 = 0.0, d2 = 0.0, w2 = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : g2, d2, w2) if (n > kParallelElems)
  for (i64 i = 0; i < n; ++i) {
    const T graw = g[i];
    T gi = graw * gscale;
    if (clip) gi = std::min(std::max(gi, -cv), cv);
    const T w0 = p[i];
    T w = w0 - lr * wd * w0;
    if constexpr (K == OptKind::SGD) {
      if (s0) {
        T v = mu * s0[i] + gi;
        s0[i] = v;
        w -= lr * (nesterov ? gi + mu * v : v);
      } else {
        w -= lr * gi;
      }
    } else if constexpr (K == OptKind::Adam) {
      T m = b1 * s0[i] + (T(1) - b1) * gi;
      T v = b2 * s1[i] + (T(1) - b2) * gi * gi;
      s0[i] = m;
      s1[i] = v;
      if (ams) {
        v = std::max(s2[i], v);
        s2[i] = v;
      }
      w -= step_size * m / (std::sqrt(v) * inv_sqrt_bc2 + eps);
    } else if constexpr (K == OptKind::RMSprop) {
      T v = rho * s0[i] + (T(1) - rho) * gi * gi;
      s0[i] = v;
      T u = gi / (std::sqrt(v) + eps);
      if (s1) {
        u = mu * s1[i] + u;
        s1[i] = u;
      }
      w -= lr * u;
    } else {  // Adagrad
      T a = s0[i] + gi * gi;
      s0[i] = a;
      w -= lr * gi / (std::sqrt(a) + eps);
    }
    p[i] = w;
    const T d = w - w0;
    g2 += double(graw) * double(graw);
    d2 += double(d) * double(d);
    w2 += double(w) * double(w);
  }
  return {g2, d2, w2};
}

}  // namespace detail

// One optimizer step (t counts from 1) with learning rate `lr` over every segment;
// gscale multiplies the gradients first (global-norm clipping). stats: one per segment.
template <typename T>
void optimizer_step(const OptimConfig& c, double lr, i64 t, double gscale, T* p, const T* g,
                    std::vector<avec<T>>& state, const std::vector<Segment>& segs,
                    SegmentStats* stats) {
  for (size_t k = 0; k < segs.size(); ++k) {
    const i64 off = segs[k].offset, n = segs[k].size;
    T* s[3] = {nullptr, nullptr, nullptr};
    for (size_t j = 0; j < state.size() && j < 3; ++j) s[j] = state[j].data() + off;
    SegmentStats st;
    switch (c.kind) {
      case OptKind::SGD:
        st = detail::step_segment<OptKind::SGD>(c, T(lr), t, T(gscale), p + off, g + off, s[0], s[1], s[2], n);
        break;
      case OptKind::Adam:
        st = detail::step_segment<OptKind::Adam>(c, T(lr), t, T(gscale), p + off, g + off, s[0], s[1], s[2], n);
        break;
      case OptKind::RMSprop:
        st = detail::step_segment<OptKind::RMSprop>(c, T(lr), t, T(gscale), p + off, g + off, s[0], s[1], s[2], n);
        break;
      case OptKind::Adagrad:
        st = detail::step_segment<OptKind::Adagrad>(c, T(lr), t, T(gscale), p + off, g + off, s[0], s[1], s[2], n);
        break;
    }
    stats[k] = st;
  }
}

}  // namespace cr
