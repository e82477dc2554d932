// The flat parameter block: every layer's weights in one allocation and their gradients in
// another, named views into them (ParamInfo, Segment, each layer's range of segments), which
// of them are trainable, the L1/L2 penalties with their gradients, and the finiteness
// checks of the weights. Not the optimizer (optim/), not the training loop (network.h).
#pragma once
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "common.h"
#include "layers/layer.h"
#include "optim/optimizer.h"

namespace cr {

// One parameter tensor, as the Python side sees it.
struct ParamInfo {
  i64 layer;
  std::string name;
  std::vector<i64> shape;
  i64 offset;  // into the flat block
  i64 size;
  bool stateful;  // updated by its layer's forward pass, never trainable (moving statistics)
};

// Parameter tensors (segments) [begin, end): one layer's, or the whole block's.
struct SegmentRange {
  size_t begin, end;
};

template <typename T>
class ParamStore {
 public:
  // Lays the layers' parameter tensors out back to back, in layer order, and binds each
  // layer to its views of the weights and gradients (all zero).
  explicit ParamStore(const std::vector<std::unique_ptr<Layer<T>>>& layers) {
    i64 total = 0;
    for (size_t l = 0; l < layers.size(); ++l) {
      for (auto& ps : layers[l]->param_shapes()) {
        info_.push_back({i64(l), ps.name, ps.shape, total, ps.size(), !ps.trainable});
        total += ps.size();  // each size <= kMaxElems: no overflow before the check below
        if (total > kMaxElems)
          fail("Network: the model has more than ", kMaxElems, " parameters (layer ", l, " (",
               layers[l]->kind(), ") brings the total to ", total, ")");
      }
    }
    params_.assign(total, T(0));
    grads_.assign(total, T(0));
    block_sums_.assign((total + kSumBlock - 1) / kSumBlock, 0.0);
    for (auto& pi : info_) segments_.push_back({pi.offset, pi.size});
    layer_segs_.assign(layers.size() + 1, 0);  // layer l owns segments [layer_segs_[l], layer_segs_[l+1])
    for (auto& pi : info_) layer_segs_[pi.layer + 1] += 1;
    for (size_t l = 0; l < layers.size(); ++l) layer_segs_[l + 1] += layer_segs_[l];
    reg_l1_.assign(segments_.size(), 0.0);
    reg_l2_.assign(segments_.size(), 0.0);
    trainable_.assign(segments_.size(), 0);
    for (size_t k = 0; k < info_.size(); ++k) trainable_[k] = !info_[k].stateful;
    update_trainable_ranges();
    i64 off = 0;
    for (auto& L : layers) {
      i64 n = 0;
      for (auto& ps : L->param_shapes()) n += ps.size();
      L->bind(params_.data() + off, grads_.data() + off);
      off += n;
    }
  }
  ParamStore(const ParamStore&) = delete;  // the layers hold pointers into this block
  ParamStore& operator=(const ParamStore&) = delete;

  const std::vector<ParamInfo>& info() const { return info_; }
  i64 size() const { return i64(params_.size()); }
  T* params() { return params_.data(); }
  const T* params() const { return params_.data(); }
  T* grads() { return grads_.data(); }
  const std::vector<Segment>& segments() const { return segments_; }
  SegmentRange layer_segments(size_t layer) const { return {layer_segs_[layer], layer_segs_[layer + 1]}; }
  SegmentRange all_segments() const { return {0, segments_.size()}; }

  // Trainable tensors take optimizer steps, penalties and count in the gradient norm; the
  // others (a frozen layer's, moving statistics) keep their values through training steps.
  bool trainable(size_t k) const { return trainable_[k] != 0; }
  // Layer l's tensors follow its trainable flag, except the stateful ones (never trainable).
  void set_layer_trainable(size_t layer, bool on) {
    const SegmentRange r = layer_segments(layer);
    for (size_t k = r.begin; k < r.end; ++k) trainable_[k] = on && !info_[k].stateful;
    update_trainable_ranges();
  }
  // The stateful tensors (moving statistics), out and back in: for a pass that runs the
  // training forward but must leave the network as it was.
  void save_state(std::vector<T>& out) const {
    out.clear();
    for (size_t k = 0; k < segments_.size(); ++k)
      if (info_[k].stateful)
        out.insert(out.end(), params_.begin() + segments_[k].offset,
                   params_.begin() + segments_[k].offset + segments_[k].size);
  }
  void restore_state(const std::vector<T>& in) {
    size_t pos = 0;
    for (size_t k = 0; k < segments_.size(); ++k)
      if (info_[k].stateful) {
        std::copy(in.begin() + pos, in.begin() + pos + segments_[k].size,
                  params_.begin() + segments_[k].offset);
        pos += segments_[k].size;
      }
  }
  void zero_grad_segment(size_t k) {
    std::fill(grads_.begin() + segments_[k].offset,
              grads_.begin() + segments_[k].offset + segments_[k].size, T(0));
  }

  // The explicit zeroing step before a backward pass, which accumulates (+=). One pass over
  // the gradients: the Network skips it when an optimizer step has consumed (read and
  // zeroed) them all.
  void zero_grads() { std::fill(grads_.begin(), grads_.end(), T(0)); }

  // Σg² over the trainable tensors' gradients (global-norm clipping). Summed in fixed blocks
  // of the flat block, then the block sums in order: the same bits for any thread count, so
  // data-parallel processes running different thread counts clip by the same factor.
  double grad_sum_squares() {
    const T* g = grads_.data();
    const i64 n = size(), nblocks = i64(block_sums_.size());
    const i64 nranges = i64(trainable_ranges_.size());
    const Segment* ranges = trainable_ranges_.data();
    double* bs = block_sums_.data();
#pragma omp parallel for schedule(static) if (n > kParallelElems)
    for (i64 b = 0; b < nblocks; ++b) {
      const i64 lo = b * kSumBlock, hi = std::min(n, lo + kSumBlock);
      double s = 0.0;
      for (i64 r = 0; r < nranges; ++r) {  // the trainable stretches that meet this block
        const i64 a = std::max(lo, ranges[r].offset);
        const i64 e = std::min(hi, ranges[r].offset + ranges[r].size);
        for (i64 i = a; i < e; ++i) s += double(g[i]) * double(g[i]);
      }
      bs[b] = s;
    }
    double g2 = 0.0;
    for (i64 b = 0; b < nblocks; ++b) g2 += bs[b];
    return g2;
  }

  // L1/L2 penalty on one parameter tensor: loss += l1 Σ|w| + l2 Σw².
  void set_regularization(i64 param, double l1, double l2) {
    if (param < 0 || param >= i64(segments_.size())) fail("parameter index out of range: ", param);
    if (!(l1 >= 0.0 && l2 >= 0.0) || !std::isfinite(l1) || !std::isfinite(l2))
      fail("regularization factors must be finite and >= 0; received l1=", l1, " l2=", l2);
    reg_l1_[param] = l1;
    reg_l2_[param] = l2;
  }

  // The regularization penalty of the current trainable weights (a frozen tensor's
  // penalty is a constant: Keras leaves it out of the loss, and so does this).
  double penalty() const {
    double pen = 0.0;
    for (size_t k = 0; k < segments_.size(); ++k) {
      if ((reg_l1_[k] == 0.0 && reg_l2_[k] == 0.0) || !trainable(k)) continue;
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

  // Adds the penalty's gradient to the gradients of the segments in r (as the backward
  // pass does: +=); returns their penalty.
  double add_penalty_gradients(SegmentRange r) {
    double pen = 0.0;
    for (size_t k = r.begin; k < r.end; ++k) pen += add_penalty_gradient(k);
    return pen;
  }

  // The first parameter tensor holding a NaN or an infinity, or -1. One pass over the
  // parameters: call it once per call, not per step.
  i64 first_nonfinite() const {
    for (size_t k = 0; k < segments_.size(); ++k)
      if (!all_finite(params_.data() + segments_[k].offset, segments_[k].size)) return i64(k);
    return -1;
  }
  // After an optimizer step: every weight finite? The step's Σw² per segment says so unless
  // it overflowed (|w| > ~1e19 in float32), which an exact pass over that segment settles.
  bool weights_finite_after(const std::vector<SegmentStats>& step_sums) const {
    for (size_t k = 0; k < segments_.size(); ++k)
      if (!std::isfinite(step_sums[k].w2) &&
          !all_finite(params_.data() + segments_[k].offset, segments_[k].size))
        return false;
    return true;
  }

 private:
  // Segment k's penalty gradient added to its gradient; returns its penalty.
  double add_penalty_gradient(size_t k) {
    const double l1 = reg_l1_[k], l2 = reg_l2_[k];
    if ((l1 == 0.0 && l2 == 0.0) || !trainable(k)) return 0.0;
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

  // The trainable segments as maximal stretches of the flat block (grad_sum_squares).
  void update_trainable_ranges() {
    trainable_ranges_.clear();
    for (size_t k = 0; k < segments_.size(); ++k) {
      if (!trainable(k) || segments_[k].size == 0) continue;
      if (!trainable_ranges_.empty() &&
          trainable_ranges_.back().offset + trainable_ranges_.back().size == segments_[k].offset)
        trainable_ranges_.back().size += segments_[k].size;
      else
        trainable_ranges_.push_back(segments_[k]);
    }
  }

  static constexpr i64 kSumBlock = 4096;  // grad_sum_squares' blocks

  std::vector<ParamInfo> info_;
  avec<T> params_, grads_;
  std::vector<double> block_sums_;  // grad_sum_squares' per-block sums
  std::vector<Segment> segments_;
  std::vector<size_t> layer_segs_;
  std::vector<double> reg_l1_, reg_l2_;  // per segment
  std::vector<char> trainable_;          // per segment
  std::vector<Segment> trainable_ranges_;  // the trainable segments, adjacent ones merged
};

}  // namespace cr
