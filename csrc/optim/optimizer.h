// Optimizer steps: each is one fused loop over the flat parameter block (params, grads and
// state are views of the Network's contiguous buffers).
#pragma once
#include "common.h"

namespace cr {

enum class OptKind : int { SGD = 0 };

struct OptimConfig {
  OptKind kind = OptKind::SGD;
  double learning_rate = 0.01;
  double momentum = 0.0;
  bool nesterov = false;
  // Number of state slots (each the size of the parameter block) this optimizer needs.
  int state_slots() const { return (kind == OptKind::SGD && momentum == 0.0) ? 0 : 1; }
};

// SGD with (Nesterov) momentum in PyTorch's form: v = μ v + g; p -= lr (g + μ v) if
// Nesterov else lr v. With a constant rate this is Keras's v' = μ v' - lr g; p += v'.
template <typename T>
void sgd_step(T* p, const T* g, T* v, i64 n, T lr, T mu, bool nesterov) {
  if (mu == T(0)) {
#pragma omp parallel for schedule(static) if (n > kParallelElems)
    for (i64 i = 0; i < n; ++i) p[i] -= lr * g[i];
    return;
  }
  if (nesterov) {
#pragma omp parallel for schedule(static) if (n > kParallelElems)
    for (i64 i = 0; i < n; ++i) {
      T vi = mu * v[i] + g[i];
      v[i] = vi;
      p[i] -= lr * (g[i] + mu * vi);
    }
  } else {
#pragma omp parallel for schedule(static) if (n > kParallelElems)
    for (i64 i = 0; i < n; ++i) {
      T vi = mu * v[i] + g[i];
      v[i] = vi;
      p[i] -= lr * vi;
    }
  }
}

template <typename T>
void optimizer_step(const OptimConfig& c, T* p, const T* g, std::vector<avec<T>>& state,
                    i64 n, i64 /*step*/) {
  switch (c.kind) {
    case OptKind::SGD:
      sgd_step(p, g, c.momentum == 0.0 ? nullptr : state[0].data(), n, T(c.learning_rate),
               T(c.momentum), c.nesterov);
      return;
  }
}

}  // namespace cr
