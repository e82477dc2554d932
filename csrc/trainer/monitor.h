// The gradient monitor: per parameter tensor, gradient norms and update ratios over an
// epoch's steps (from the sums the optimizer step reduces anyway), and per ReLU-family
// layer the fraction of units that never fired. It only reads what the training loop
// hands it; it changes nothing in training.
#pragma once
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "common.h"
#include "layers/layer.h"
#include "optim/optimizer.h"
#include "trainer/params.h"

namespace cr {

// Per-parameter-tensor health over the steps of one epoch.
struct ParamHealth {
  double grad_norm = 0.0;     // mean over steps of ||g|| (loss + regularization, before clipping)
  double grad_norm_max = 0.0; // max over steps of ||g||
  double update_ratio = 0.0;  // mean over steps of ||Δw|| / ||w||
  double weight_norm = 0.0;   // ||w|| after the last step
};

template <typename T>
class GradientMonitor {
 public:
  GradientMonitor(size_t nsegments, size_t nlayers)
      : health_(nsegments), alive_(nlayers), dead_fraction_(nlayers, -1.0) {}

  // On by default; takes effect at the next begin_epoch.
  void set_enabled(bool on) { enabled_ = on; }
  // Whether the current epoch (or the last one begun) collects statistics.
  bool active() const { return active_; }
  const std::vector<ParamHealth>& health() const { return health_; }
  // Per layer: fraction of ReLU-family units (channels for convolutions) that produced no
  // positive output on any training sample of the last epoch; -1 for other layers.
  const std::vector<double>& dead_fraction() const { return dead_fraction_; }

  void begin_epoch(const std::vector<std::unique_ptr<Layer<T>>>& layers) {
    active_ = enabled_;
    for (auto& h : health_) h = ParamHealth{};
    for (size_t l = 0; l < layers.size(); ++l) {
      Act a = layers[l]->activation();
      i64 units = layers[l]->units();
      bool relu = act_has_dead_region(a);
      const i64 out = layers[l]->out_size();
      if (active_ && relu && units > 0 && out % units == 0) {
        i64 width = units;  // widen to ~256 values, staying a multiple of units and dividing out
        while (width < 256 && out % (2 * width) == 0) width *= 2;
        alive_[l].assign(width, T(0));
      }
      else
        alive_[l].clear();
    }
  }

  // Whether layer l's outputs in training are to be passed to mark_alive.
  bool tracks_units(size_t l) const { return active_ && !alive_[l].empty(); }

  // y: (n) layer l's outputs of one training batch. Keeps in alive_[l] a running maximum,
  // `width` values wide (a multiple of the unit count, so output element e lands in slot
  // e % width and unit e % units): long contiguous max-reductions that vectorize even for 8
  // channels. A unit is alive once the maximum over its slots is positive (end_epoch).
  void mark_alive(size_t l, const T* y, i64 n) {
    const i64 width = i64(alive_[l].size());
    T* a = alive_[l].data();
    i64 e = 0;
    for (; e + width <= n; e += width) {
#pragma omp simd
      for (i64 j = 0; j < width; ++j) a[j] = std::max(a[j], y[e + j]);
    }
    for (i64 j = 0; e + j < n; ++j) a[j] = std::max(a[j], y[e + j]);
  }

  // f(data, n) on each layer's running maxima behind dead_fraction (while an epoch is
  // active): a data-parallel epoch takes their maximum over the processes before end_epoch,
  // so a unit counts as alive when it fired on any process's rows.
  template <typename F>
  void for_each_unit_maximum(F&& f) {
    for (auto& a : alive_)
      if (!a.empty()) f(a.data(), i64(a.size()));
  }

  // One optimizer step's sums (Σg², Σ(Δw)², Σw²) of the segments in r.
  void add_step(const std::vector<SegmentStats>& step_sums, SegmentRange r) {
    for (size_t k = r.begin; k < r.end; ++k) {
      const double gn = std::sqrt(step_sums[k].g2), wn = std::sqrt(step_sums[k].w2);
      health_[k].grad_norm += gn;
      health_[k].grad_norm_max = std::max(health_[k].grad_norm_max, gn);
      health_[k].update_ratio += wn > 0.0 ? std::sqrt(step_sums[k].d2) / wn : 0.0;
    }
  }

  // Sums to means over the epoch's steps; weight norms from the last step's sums.
  void end_epoch(i64 steps, const std::vector<SegmentStats>& last_step_sums,
                 const std::vector<std::unique_ptr<Layer<T>>>& layers) {
    for (size_t k = 0; k < health_.size(); ++k) {
      if (steps > 0) {
        health_[k].grad_norm /= double(steps);
        health_[k].update_ratio /= double(steps);
      }
      health_[k].weight_norm = std::sqrt(last_step_sums[k].w2);
    }
    for (size_t l = 0; l < layers.size(); ++l) {
      if (alive_[l].empty() || steps == 0) {
        dead_fraction_[l] = -1.0;
        continue;
      }
      const i64 units = layers[l]->units(), width = i64(alive_[l].size());
      i64 dead = 0;
      for (i64 u = 0; u < units; ++u) {
        T m = T(0);
        for (i64 j = u; j < width; j += units) m = std::max(m, alive_[l][j]);
        dead += m > T(0) ? 0 : 1;
      }
      dead_fraction_[l] = double(dead) / double(units);
    }
  }

 private:
  bool enabled_ = true, active_ = false;
  std::vector<ParamHealth> health_;
  std::vector<avec<T>> alive_;  // per layer: running max of each unit's output
  std::vector<double> dead_fraction_;
};

}  // namespace cr
