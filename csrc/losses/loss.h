// Losses: value and gradient for one batch in one pass (metrics: metrics/metrics.h).
// Fused heads: softmax + (sparse) categorical cross-entropy and sigmoid + binary
// cross-entropy are computed from the logits (log-sum-exp / softplus), so large logits give
// finite losses and the gradient w.r.t. the logits is the simple (p - t) / n.
#pragma once
#include <algorithm>
#include <cmath>

#include "common.h"
#include "kernels/activations.h"

namespace cr {

// The table of losses: enumerator, public name, the activation it fuses into a numerically
// stable form when the last layer has it (Linear: none), and whether targets are sparse (one
// column holding a class index) rather than one value per output. The position in the list
// is the loss's code (Python reads names and codes from _core.LOSSES). Adding a loss: a line
// here, its case in loss_forward_backward and in check_targets below.
#define CR_LOSSES(X)                                                         \
  X(MSE, "mean_squared_error", Linear, false)                                \
  X(BinaryCE, "binary_crossentropy", Sigmoid, false)                         \
  X(CategoricalCE, "categorical_crossentropy", Softmax, false)               \
  X(SparseCategoricalCE, "sparse_categorical_crossentropy", Softmax, true)

enum class Loss : int {
#define CR_LOSS_ENUMERATOR(E, name, head, sparse) E,
  CR_LOSSES(CR_LOSS_ENUMERATOR)
#undef CR_LOSS_ENUMERATOR
};

#define CR_LOSS_ONE(E, name, head, sparse) +1
constexpr int kLossCount = 0 CR_LOSSES(CR_LOSS_ONE);
#undef CR_LOSS_ONE

struct LossInfo {
  const char* name;
  Act fusable_head;
  bool sparse;
};

inline const LossInfo& loss_info(Loss l) {
  static constexpr LossInfo table[] = {
#define CR_LOSS_ROW(E, name, head, sparse) {name, Act::head, sparse},
      CR_LOSSES(CR_LOSS_ROW)
#undef CR_LOSS_ROW
  };
  const int i = int(l);
  if (i < 0 || i >= kLossCount) fail("unknown loss code ", i);
  return table[i];
}

inline const char* loss_name(Loss l) { return loss_info(l).name; }

// Columns a target row has for this loss and an output width C.
inline i64 target_cols(Loss l, i64 C) { return loss_info(l).sparse ? 1 : C; }

// The activation a loss can absorb into a numerically stable fused form (Linear: none).
inline Act fusable_head(Loss l) { return loss_info(l).fusable_head; }

// Targets outside a loss's domain would train on a loss that is not bounded below: check all
// of them before training. y: (n, target_cols(l, C)); C: the output width.
template <typename T>
void check_targets(Loss l, const T* y, i64 n, i64 C) {
  const i64 tc = target_cols(l, C);
  const i64 ny = n * tc;
  for (i64 i = 0; i < ny; ++i) {
    const T v = y[i];
    const char* want = nullptr;
    switch (l) {
      case Loss::SparseCategoricalCE:
        if (!(v >= T(0) && v < T(C)) || v != std::floor(v))
          fail("y: labels must be integers in [0, ", C, "); received ", double(v), " at index ", i);
        break;
      case Loss::BinaryCE:
        if (!(v >= T(0) && v <= T(1))) want = "targets in [0, 1]";
        break;
      case Loss::CategoricalCE:
        if (!(v >= T(0) && v <= T(1))) want = "targets in [0, 1] (one-hot or class probabilities)";
        break;
      case Loss::MSE:
        if (!std::isfinite(v)) want = "finite targets";
        break;
    }
    if (want)
      fail("y: ", loss_name(l), " needs ", want, "; received ", double(v), " at index (", i / tc,
           ", ", i % tc, ")");
  }
}

struct LossStats {
  double loss_sum = 0.0;  // sum over samples of the (weighted) per-sample loss
};

constexpr double kProbEps = 1e-7;  // clipping for cross-entropy on probabilities (as Keras)

// out: (B, C) network output. With head != Linear it holds logits and is overwritten by
// head(out), the probabilities; the gradient is then w.r.t. the logits. targets: (B, tc),
// tc = target_cols(loss, C), sparse labels stored as exact integers. sample_weight: (B) or
// null. grad: (B, C) or null; receives d(sum_i w_i l_i / n)/d(out or logits), n = batch_total
// when > 0 (a data-parallel step: these B rows are part of a global batch of n), else B.
template <typename T>
LossStats loss_forward_backward(Loss loss, Act head, T* out, const T* targets,
                                const T* sample_weight, i64 B, i64 C, T* grad,
                                i64 batch_total = 0) {
  LossStats st;
  const i64 tc = target_cols(loss, C);
  const double invB = 1.0 / double(batch_total > 0 ? batch_total : B);
  double loss_sum = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : loss_sum) if (B * C > kParallelElems)
  for (i64 i = 0; i < B; ++i) {
    T* o = out + i * C;
    const T* t = targets + i * tc;
    const double w = sample_weight ? double(sample_weight[i]) : 1.0;
    T* g = grad ? grad + i * C : nullptr;
    double li = 0.0;
    switch (loss) {
      case Loss::MSE: {
        if (head != Act::Linear) activation_forward(head, T(0), o, 1, C);
        for (i64 j = 0; j < C; ++j) {
          double d = double(o[j]) - double(t[j]);
          li += d * d;
          if (g) g[j] = T(2.0 * d * w * invB / double(C));
        }
        li /= double(C);
        break;
      }
      case Loss::BinaryCE: {
        for (i64 j = 0; j < C; ++j) {
          double tj = double(t[j]);
          double p;
          if (head == Act::Sigmoid) {  // from the logit z: max(z,0) - z t + log(1 + e^-|z|)
            double z = double(o[j]);
            li += std::max(z, 0.0) - z * tj + std::log1p(std::exp(-std::fabs(z)));
            p = double(sigmoid_scalar(o[j]));
            if (g) g[j] = T((p - tj) * w * invB / double(C));
            o[j] = T(p);
          } else {  // on probabilities, clipped to [eps, 1-eps]: no gradient where clipped
            const double y = double(o[j]);
            p = std::min(std::max(y, kProbEps), 1.0 - kProbEps);
            li += -(tj * std::log(p) + (1.0 - tj) * std::log(1.0 - p));
            const bool clipped = y != p;
            if (g) g[j] = clipped ? T(0) : T((p - tj) / (p * (1.0 - p)) * w * invB / double(C));
          }
        }
        li /= double(C);
        break;
      }
      case Loss::CategoricalCE:
      case Loss::SparseCategoricalCE: {
        const bool sparse = loss == Loss::SparseCategoricalCE;
        const i64 label = sparse ? i64(t[0]) : 0;
        if (head == Act::Softmax) {  // from the logits: logsumexp(z) - sum_j t_j z_j
          double m = double(o[0]);
          for (i64 j = 1; j < C; ++j) m = std::max(m, double(o[j]));
          double tsum = 1.0, tz;  // targets need not sum to 1: d/dz (lse Σt - <t,z>) = p Σt - t
          if (sparse) {
            tz = double(o[label]);
          } else {
            tsum = tz = 0.0;
            for (i64 j = 0; j < C; ++j) {
              tsum += double(t[j]);
              tz += double(t[j]) * double(o[j]);
            }
          }
          double s = 0.0;  // each exp once: o holds exp(z - m) until it is normalised
          for (i64 j = 0; j < C; ++j) {
            const double e = std::exp(double(o[j]) - m);
            o[j] = T(e);
            s += e;
          }
          li = (m + std::log(s)) * tsum - tz;
          const double inv_s = 1.0 / s;
          for (i64 j = 0; j < C; ++j) {
            const double p = double(o[j]) * inv_s;
            o[j] = T(p);
            if (g) {
              double tj = sparse ? (j == label ? 1.0 : 0.0) : double(t[j]);
              g[j] = T((p * tsum - tj) * w * invB);
            }
          }
        } else {
          if (head != Act::Linear) activation_forward(head, T(0), o, 1, C);
          for (i64 j = 0; j < C; ++j) {  // clipped to [eps, 1-eps]: no gradient where clipped
            double tj = sparse ? (j == label ? 1.0 : 0.0) : double(t[j]);
            const double y = double(o[j]);
            double p = std::min(std::max(y, kProbEps), 1.0 - kProbEps);
            if (tj != 0.0) li -= tj * std::log(p);
            if (g) g[j] = y != p ? T(0) : T(-tj / p * w * invB);
          }
        }
        break;
      }
    }
    loss_sum += w * li;
  }
  st.loss_sum = loss_sum;
  return st;
}

}  // namespace cr
