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

// Elements per block: the monitor's sums run in float within a block (vectorized through
// `omp simd` reductions) and in double across blocks.
constexpr i64 kStepBlock = 2048;

// kVariant selects the branch-free inner loop: SGD 0 plain / 1 momentum / 2 Nesterov;
// Adam 0 / 1 AMSGrad; RMSprop 0 / 1 momentum. Every choice is a template parameter so the
// loop has no data-dependent branches or conditional stores and vectorizes.
// The gradient is zeroed as it is consumed, so the next step's backward pass can accumulate
// into it without a separate pass over the whole block.
template <OptKind K, int kVariant, bool kClip, bool kStats, typename T>
SegmentStats step_segment(const OptimConfig& c, T lr, i64 t, T gscale, T* p, T* g,
                          T* s0, T* s1, T* s2, i64 n) {
  const T cv = T(c.clipvalue), eps = T(c.epsilon);
  const T mu = T(c.momentum), b1 = T(c.beta1), b2 = T(c.beta2), rho = T(c.rho);
  const T bc1 = T(1.0 - std::pow(c.beta1, double(t))), bc2 = T(1.0 - std::pow(c.beta2, double(t)));
  const T step_size = lr / bc1, inv_sqrt_bc2 = T(1.0 / std::sqrt(double(bc2)));
  const T decay = T(1) - lr * T(c.weight_decay);
  const i64 nblocks = (n + kStepBlock - 1) / kStepBlock;
  double g2 = 0.0, d2 = 0.0, w2 = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : g2, d2, w2) if (n > kParallelElems)
  for (i64 blk = 0; blk < nblocks; ++blk) {
    const i64 lo = blk * kStepBlock, hi = std::min(n, lo + kStepBlock);
    T bg2 = T(0), bd2 = T(0), bw2 = T(0);
#pragma omp simd reduction(+ : bg2, bd2, bw2)
    for (i64 i = lo; i < hi; ++i) {
      const T graw = g[i];
      g[i] = T(0);
      T gi = graw * gscale;
      if constexpr (kClip) gi = std::min(std::max(gi, -cv), cv);
      const T w0 = p[i];
      T w = w0 * decay;
      if constexpr (K == OptKind::SGD) {
        if constexpr (kVariant == 0) {
          w -= lr * gi;
        } else {
          const T v = mu * s0[i] + gi;
          s0[i] = v;
          w -= lr * (kVariant == 2 ? gi + mu * v : v);
        }
      } else if constexpr (K == OptKind::Adam) {
        const T m = b1 * s0[i] + (T(1) - b1) * gi;
        T v = b2 * s1[i] + (T(1) - b2) * gi * gi;
        s0[i] = m;
        s1[i] = v;
        if constexpr (kVariant == 1) {
          v = std::max(s2[i], v);
          s2[i] = v;
        }
        w -= step_size * m / (std::sqrt(v) * inv_sqrt_bc2 + eps);
      } else if constexpr (K == OptKind::RMSprop) {
        const T v = rho * s0[i] + (T(1) - rho) * gi * gi;
        s0[i] = v;
        T u = gi / (std::sqrt(v) + eps);
        if constexpr (kVariant == 1) {
          u = mu * s1[i] + u;
          s1[i] = u;
        }
        w -= lr * u;
      } else {  // Adagrad
        const T a = s0[i] + gi * gi;
        s0[i] = a;
        w -= lr * gi / (std::sqrt(a) + eps);
      }
      p[i] = w;
      if constexpr (kStats) {
        const T d = w - w0;
        bg2 += graw * graw;
        bd2 += d * d;
        bw2 += w * w;
      }
    }
    g2 += double(bg2);
    d2 += double(bd2);
    w2 += double(bw2);
  }
  return {g2, d2, w2};
}

template <OptKind K, int kVariant, typename T>
SegmentStats step_segment(bool stats, const OptimConfig& c, T lr, i64 t, T gscale, T* p,
                          T* g, T* s0, T* s1, T* s2, i64 n) {
  const bool clip = c.clipvalue > 0.0;
  if (stats) {
    return clip ? step_segment<K, kVariant, true, true>(c, lr, t, gscale, p, g, s0, s1, s2, n)
                : step_segment<K, kVariant, false, true>(c, lr, t, gscale, p, g, s0, s1, s2, n);
  }
  return clip ? step_segment<K, kVariant, true, false>(c, lr, t, gscale, p, g, s0, s1, s2, n)
              : step_segment<K, kVariant, false, false>(c, lr, t, gscale, p, g, s0, s1, s2, n);
}

}  // namespace detail

// One optimizer step (t counts from 1) with learning rate `lr` over every segment;
// gscale multiplies the gradients first (global-norm clipping). Leaves the gradients zeroed.
// stats: one per segment, filled when `with_stats` (the gradient monitor), else left zero.
template <typename T>
void optimizer_step(const OptimConfig& c, double lr, i64 t, double gscale, T* p, T* g,
                    std::vector<avec<T>>& state, const std::vector<Segment>& segs,
                    SegmentStats* stats, bool with_stats) {
  for (size_t k = 0; k < segs.size(); ++k) {
    const i64 off = segs[k].offset, n = segs[k].size;
    T* s[3] = {nullptr, nullptr, nullptr};
    for (size_t j = 0; j < state.size() && j < 3; ++j) s[j] = state[j].data() + off;
    SegmentStats st;
    using detail::step_segment;
    const bool ws = with_stats;
    const T tlr = T(lr), gs = T(gscale);
    T* pk = p + off;
    T* gk = g + off;
    switch (c.kind) {
      case OptKind::SGD:
        if (c.momentum == 0.0) st = step_segment<OptKind::SGD, 0>(ws, c, tlr, t, gs, pk, gk, s[0], s[1], s[2], n);
        else if (!c.nesterov) st = step_segment<OptKind::SGD, 1>(ws, c, tlr, t, gs, pk, gk, s[0], s[1], s[2], n);
        else st = step_segment<OptKind::SGD, 2>(ws, c, tlr, t, gs, pk, gk, s[0], s[1], s[2], n);
        break;
      case OptKind::Adam:
        if (c.amsgrad) st = step_segment<OptKind::Adam, 1>(ws, c, tlr, t, gs, pk, gk, s[0], s[1], s[2], n);
        else st = step_segment<OptKind::Adam, 0>(ws, c, tlr, t, gs, pk, gk, s[0], s[1], s[2], n);
        break;
      case OptKind::RMSprop:
        if (c.momentum != 0.0) st = step_segment<OptKind::RMSprop, 1>(ws, c, tlr, t, gs, pk, gk, s[0], s[1], s[2], n);
        else st = step_segment<OptKind::RMSprop, 0>(ws, c, tlr, t, gs, pk, gk, s[0], s[1], s[2], n);
        break;
      case OptKind::Adagrad:
        st = step_segment<OptKind::Adagrad, 0>(ws, c, tlr, t, gs, pk, gk, s[0], s[1], s[2], n);
        break;
    }
    stats[k] = st;
  }
}

}  // namespace cr
