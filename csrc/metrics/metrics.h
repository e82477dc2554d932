// Metrics: per-sample values summed over one batch, computed in the training and evaluation
// loops on the outputs the loss saw (probabilities when a softmax/sigmoid head is fused or
// the loss takes logits). Not losses: no gradient. The Python side resolves Keras's names
// ('accuracy' by the loss, 'mae', ...) to these codes.
#pragma once
#include <algorithm>
#include <cmath>

#include "common.h"

namespace cr {

// The table of metrics: enumerator, public name (Keras's), and whether targets are sparse
// (one column holding a class index) rather than one value per output. The position in the
// list is the metric's code (Python reads names and codes from _core.METRICS). Adding a
// metric: a line here and its case in metric_sum below.
#define CR_METRICS(X)                                                        \
  X(BinaryAccuracy, "binary_accuracy", false)                                \
  X(CategoricalAccuracy, "categorical_accuracy", false)                      \
  X(SparseCategoricalAccuracy, "sparse_categorical_accuracy", true)          \
  X(TopKCategoricalAccuracy, "top_k_categorical_accuracy", false)            \
  X(SparseTopKCategoricalAccuracy, "sparse_top_k_categorical_accuracy", true) \
  X(MeanAbsoluteError, "mean_absolute_error", false)                         \
  X(MeanSquaredError, "mean_squared_error", false)

enum class Metric : int {
#define CR_METRIC_ENUMERATOR(E, name, sparse) E,
  CR_METRICS(CR_METRIC_ENUMERATOR)
#undef CR_METRIC_ENUMERATOR
};

#define CR_METRIC_ONE(E, name, sparse) +1
constexpr int kMetricCount = 0 CR_METRICS(CR_METRIC_ONE);
#undef CR_METRIC_ONE

struct MetricInfo {
  const char* name;
  bool sparse;
};

inline const MetricInfo& metric_info(Metric m) {
  static constexpr MetricInfo table[] = {
#define CR_METRIC_ROW(E, name, sparse) {name, sparse},
      CR_METRICS(CR_METRIC_ROW)
#undef CR_METRIC_ROW
  };
  const int i = int(m);
  if (i < 0 || i >= kMetricCount) fail("unknown metric code ", i);
  return table[i];
}

// One metric of a compiled model. param: the threshold of binary_accuracy, k of the top-k
// accuracies; unused by the others.
struct MetricSpec {
  Metric kind = Metric::BinaryAccuracy;
  double param = 0.0;
};

// Checked when the metrics are set: a threshold is a finite number, k a positive integer.
inline void check_metric(const MetricSpec& m) {
  metric_info(m.kind);
  if (m.kind == Metric::BinaryAccuracy && !std::isfinite(m.param))
    fail("binary_accuracy: threshold must be a finite number; received ", m.param);
  if ((m.kind == Metric::TopKCategoricalAccuracy || m.kind == Metric::SparseTopKCategoricalAccuracy) &&
      !(m.param >= 1.0 && m.param == std::floor(m.param) && m.param < 9.2e18))
    fail(metric_info(m.kind).name, ": k must be a positive integer; received ", m.param);
}

// Whether the target (column `label` of a sparse row, or the argmax of a dense one) is among
// the k largest outputs. Ties at the boundary count as in (TensorFlow's in_top_k): the target
// is in when fewer than k outputs are strictly larger. A NaN output is never in.
template <typename T>
inline bool in_top_k(const T* p, i64 C, i64 label, double k) {
  const T v = p[label];
  if (std::isnan(v)) return false;
  i64 larger = 0;
  for (i64 j = 0; j < C; ++j) larger += p[j] > v ? 1 : 0;
  return double(larger) < k;
}

template <typename T>
inline i64 first_argmax(const T* r, i64 C) {
  i64 best = 0;
  for (i64 j = 1; j < C; ++j)
    if (r[j] > r[best]) best = j;
  return best;
}

// Sum over the B samples of the metric's per-sample value. pred: (B, C); targets: (B, 1)
// class indices for a sparse metric, (B, C) otherwise (the caller checks the layout).
template <typename T>
double metric_sum(const MetricSpec& m, const T* pred, const T* targets, i64 B, i64 C) {
  const i64 tc = metric_info(m.kind).sparse ? 1 : C;
  double sum = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : sum) if (B * C > kParallelElems)
  for (i64 i = 0; i < B; ++i) {
    const T* p = pred + i * C;
    const T* t = targets + i * tc;
    double v = 0.0;
    switch (m.kind) {
      case Metric::BinaryAccuracy:  // Keras: mean over outputs of (t == (p > threshold))
        for (i64 j = 0; j < C; ++j) v += double(t[j]) == (double(p[j]) > m.param ? 1.0 : 0.0) ? 1.0 : 0.0;
        v /= double(C);
        break;
      case Metric::CategoricalAccuracy:
        v = first_argmax(p, C) == first_argmax(t, C) ? 1.0 : 0.0;
        break;
      case Metric::SparseCategoricalAccuracy:
        v = first_argmax(p, C) == i64(t[0]) ? 1.0 : 0.0;
        break;
      case Metric::TopKCategoricalAccuracy:
        v = in_top_k(p, C, first_argmax(t, C), m.param) ? 1.0 : 0.0;
        break;
      case Metric::SparseTopKCategoricalAccuracy:
        v = in_top_k(p, C, i64(t[0]), m.param) ? 1.0 : 0.0;
        break;
      case Metric::MeanAbsoluteError:
        for (i64 j = 0; j < C; ++j) v += std::fabs(double(p[j]) - double(t[j]));
        v /= double(C);
        break;
      case Metric::MeanSquaredError:
        for (i64 j = 0; j < C; ++j) {
          const double d = double(p[j]) - double(t[j]);
          v += d * d;
        }
        v /= double(C);
        break;
    }
    sum += v;
  }
  return sum;
}

}  // namespace cr
