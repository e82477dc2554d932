// The activations: one struct each (forward, derivative through the output, parameter), one
// list (CR_ACTIVATIONS) that generates the enum, the names, the count and the dispatch, and
// the row kernels built on them that every layer uses (GEMM epilogue, Dense, Conv2D, losses).
// Not here: which activation a loss fuses (losses/loss.h).
//
// Adding an activation: write its struct in namespace act, add it to CR_ACTIVATIONS, and
// that is all the C++ (and Python, which reads the table from _core) needs.
#pragma once
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common.h"

namespace cr {

template <typename T>
inline T sigmoid_scalar(T z) {
  // Two branches so exp never overflows.
  if (z >= T(0)) return T(1) / (T(1) + std::exp(-z));
  T e = std::exp(z);
  return e / (T(1) + e);
}

namespace act {

// What an activation declares (Defaults holds the defaults; each struct below overrides
// what differs):
//   name                    the public name (Python's and the saved models')
//   forward(z, alpha)       y = act(z)
//   grad(y, dy, alpha)      dL/dz from dL/dy, through the output y = act(z): layers cache
//                           only their outputs
//   vector_form             forward and grad use only arithmetic and selects, so they are
//                           also run on GCC vector types, a 16-byte vector at a time (GCC will
//                           not if-convert `z > 0 ? z : alpha * z` at baseline; the branchy
//                           loop mispredicts on every other sign)
//   expensive               a libm call per element: parallel from fewer elements
//   takes_alpha             alpha is a parameter (default_alpha unless configured)
//   identity                forward is z itself: a pass without a bias is skipped
//   dead_region             z <= 0 gives (almost) no output and gradient (the ReLU family):
//                           a unit can get stuck there; the training monitor counts such units
// A row-coupled activation (softmax) has row_coupled = true and forward_row / grad_row
// instead of forward / grad.
struct Defaults {
  static constexpr bool row_coupled = false;
  static constexpr bool vector_form = false;
  static constexpr bool expensive = false;
  static constexpr bool takes_alpha = false;
  static constexpr double default_alpha = 0.0;
  static constexpr bool identity = false;
  static constexpr bool dead_region = false;
};

struct Linear : Defaults {
  static constexpr const char* name = "linear";
  static constexpr bool vector_form = true;
  static constexpr bool identity = true;
  template <typename V>
  static V forward(V z, V) { return z; }
  template <typename V>
  static V grad(V, V dy, V) { return dy; }
};

struct Sigmoid : Defaults {
  static constexpr const char* name = "sigmoid";
  static constexpr bool expensive = true;
  template <typename T>
  static T forward(T z, T) { return sigmoid_scalar(z); }
  template <typename T>
  static T grad(T y, T dy, T) { return dy * (y * (T(1) - y)); }
};

struct Tanh : Defaults {
  static constexpr const char* name = "tanh";
  static constexpr bool expensive = true;
  template <typename T>
  static T forward(T z, T) { return std::tanh(z); }
  template <typename T>
  static T grad(T y, T dy, T) { return dy * (T(1) - y * y); }
};

struct Relu : Defaults {
  static constexpr const char* name = "relu";
  static constexpr bool vector_form = true;
  static constexpr bool dead_region = true;
  template <typename V>
  static V forward(V z, V) { return z > V{} ? z : V{}; }
  template <typename V>
  static V grad(V y, V dy, V) { return y > V{} ? dy : V{}; }
};

// grad through the output is exact for alpha >= 0 (the sign of y is that of z), which the
// Python side enforces. Default slope 0.01, as PyTorch.
struct LeakyRelu : Defaults {
  static constexpr const char* name = "leaky_relu";
  static constexpr bool vector_form = true;
  static constexpr bool dead_region = true;
  static constexpr bool takes_alpha = true;
  static constexpr double default_alpha = 0.01;
  template <typename V>
  static V forward(V z, V alpha) { return z > V{} ? z : alpha * z; }
  template <typename V>
  static V grad(V y, V dy, V alpha) { return y > V{} ? dy : alpha * dy; }
};

// Row-wise: y = exp(z - max z) / Σ exp(z - max z); dz = y ⊙ (dy - <dy, y>).
struct Softmax : Defaults {
  static constexpr const char* name = "softmax";
  static constexpr bool row_coupled = true;
  static constexpr bool expensive = true;
  // z: (n), overwritten by softmax(z).
  template <typename T>
  static void forward_row(T* z, i64 n) {
    T m = z[0];
    for (i64 j = 1; j < n; ++j) m = std::max(m, z[j]);
    T s = T(0);
    for (i64 j = 0; j < n; ++j) {
      z[j] = std::exp(z[j] - m);
      s += z[j];
    }
    T inv = T(1) / s;
    for (i64 j = 0; j < n; ++j) z[j] *= inv;
  }
  // y: (n) outputs; dy: (n) gradient w.r.t. y, overwritten by the gradient w.r.t. z.
  template <typename T>
  static void grad_row(const T* y, T* dy, i64 n) {
    T s = T(0);
    for (i64 j = 0; j < n; ++j) s += dy[j] * y[j];
    for (i64 j = 0; j < n; ++j) dy[j] = y[j] * (dy[j] - s);
  }
};

}  // namespace act

// The table. The position in this list is the activation's code (Act, and the codes Python
// passes to the layer factory, read from _core.ACTIVATIONS).
#define CR_ACTIVATIONS(X) X(Linear) X(Sigmoid) X(Tanh) X(Relu) X(LeakyRelu) X(Softmax)

enum class Act : int {
#define CR_ACT_ENUMERATOR(S) S,
  CR_ACTIVATIONS(CR_ACT_ENUMERATOR)
#undef CR_ACT_ENUMERATOR
};

#define CR_ACT_ONE(S) +1
constexpr int kActCount = 0 CR_ACTIVATIONS(CR_ACT_ONE);
#undef CR_ACT_ONE

// f(act::S{}) for the struct S of a; returns what f returns. Codes from outside the core are
// range-checked where they enter (layer factory, sgemm_bias_act), before any parallel region,
// so the failure below is unreachable from inside one.
template <typename F>
decltype(auto) dispatch_act(Act a, F&& f) {
  switch (a) {
#define CR_ACT_CASE(S) \
  case Act::S: return f(act::S{});
    CR_ACTIVATIONS(CR_ACT_CASE)
#undef CR_ACT_CASE
  }
  fail("unknown activation code ", int(a));
}

inline const char* act_name(Act a) {
  return dispatch_act(a, [](auto op) { return decltype(op)::name; });
}
inline bool act_row_coupled(Act a) {
  return dispatch_act(a, [](auto op) { return decltype(op)::row_coupled; });
}
inline bool act_has_dead_region(Act a) {
  return dispatch_act(a, [](auto op) { return decltype(op)::dead_region; });
}

// ---- row kernels: the one implementation of each activation's loops -------------------

namespace detail {
template <typename T>
struct Vec16 {  // the 16-byte GCC vector of T (SSE2 / NEON at baseline)
  typedef T type __attribute__((vector_size(16)));
  static constexpr i64 lanes = 16 / sizeof(T);
};
}  // namespace detail

// y[j] = Op(y[j] + b[j]) for j < n; b may be null (no bias). y, b: (n). The fused bias and
// activation of one output row, used by the GEMM epilogue on each register tile, by Dense
// (float64, softmax) and by Conv2D.
template <typename Op, typename T>
inline void bias_act_row(T* y, const T* b, i64 n, T alpha) {
  if constexpr (Op::row_coupled) {
    if (b)
      for (i64 j = 0; j < n; ++j) y[j] += b[j];
    Op::forward_row(y, n);
  } else if constexpr (Op::vector_form) {
    using V = typename detail::Vec16<T>::type;
    constexpr i64 L = detail::Vec16<T>::lanes;
    const V al = V{} + alpha;
    i64 j = 0;
    if (b) {
      for (; j + L <= n; j += L) {
        V v, bv;
        __builtin_memcpy(&v, y + j, 16);
        __builtin_memcpy(&bv, b + j, 16);
        v = Op::forward(V(v + bv), al);
        __builtin_memcpy(y + j, &v, 16);
      }
      for (; j < n; ++j) y[j] = Op::forward(T(y[j] + b[j]), alpha);
    } else {
      if constexpr (Op::identity) return;
      for (; j + L <= n; j += L) {
        V v;
        __builtin_memcpy(&v, y + j, 16);
        v = Op::forward(v, al);
        __builtin_memcpy(y + j, &v, 16);
      }
      for (; j < n; ++j) y[j] = Op::forward(y[j], alpha);
    }
  } else {
    if (b)
      for (i64 j = 0; j < n; ++j) y[j] = Op::forward(T(y[j] + b[j]), alpha);
    else
      for (i64 j = 0; j < n; ++j) y[j] = Op::forward(y[j], alpha);
  }
}

// Element-wise Op: d[j] = Op::grad(y[j], d[j]) and acc[j] += d[j] (acc may be null) for j < n.
// y, d, acc: (n). The fused start of a layer's backward pass: dz and the bias gradient's sum.
template <typename Op, typename T>
inline void act_grad_sum_row(const T* y, T* d, T* acc, i64 n, T alpha) {
  static_assert(!Op::row_coupled, "row-coupled activations have grad_row");
  i64 j = 0;
  if constexpr (Op::vector_form) {
    using V = typename detail::Vec16<T>::type;
    constexpr i64 L = detail::Vec16<T>::lanes;
    const V al = V{} + alpha;
    for (; j + L <= n; j += L) {
      V yv, g;
      __builtin_memcpy(&yv, y + j, 16);
      __builtin_memcpy(&g, d + j, 16);
      g = Op::grad(yv, g, al);
      __builtin_memcpy(d + j, &g, 16);
      if (acc) {
        V s;
        __builtin_memcpy(&s, acc + j, 16);
        s += g;
        __builtin_memcpy(acc + j, &s, 16);
      }
    }
  }
  if (acc) {
    for (; j < n; ++j) {
      d[j] = Op::grad(y[j], d[j], alpha);
      acc[j] += d[j];
    }
  } else {
    for (; j < n; ++j) d[j] = Op::grad(y[j], d[j], alpha);
  }
}

// ---- whole blocks ------------------------------------------------------------------------

// Element-wise loops split into blocks of this many elements across threads.
constexpr i64 kActBlock = 4096;

template <typename Op>
constexpr i64 act_parallel_min() {
  return Op::expensive ? kParallelElems / 4 : kParallelElems;
}

// z: (rows, cols), overwritten by act(z).
template <typename T>
void activation_forward(Act a, T alpha, T* z, i64 rows, i64 cols) {
  dispatch_act(a, [&](auto op) {
    using Op = decltype(op);
    const i64 n = rows * cols;
    if constexpr (Op::row_coupled) {
#pragma omp parallel for schedule(static) if (n > act_parallel_min<Op>())
      for (i64 r = 0; r < rows; ++r) Op::forward_row(z + r * cols, cols);
    } else if constexpr (!Op::identity) {
      const i64 nblk = (n + kActBlock - 1) / kActBlock;
#pragma omp parallel for schedule(static) if (n > act_parallel_min<Op>())
      for (i64 k = 0; k < nblk; ++k)
        bias_act_row<Op>(z + k * kActBlock, static_cast<const T*>(nullptr),
                         std::min(kActBlock, n - k * kActBlock), alpha);
    }
  });
}

// y: (rows, cols) activation outputs; dy: gradient w.r.t. y, overwritten by the gradient
// w.r.t. the pre-activation z.
template <typename T>
void activation_backward(Act a, T alpha, const T* y, T* dy, i64 rows, i64 cols) {
  dispatch_act(a, [&](auto op) {
    using Op = decltype(op);
    const i64 n = rows * cols;
    if constexpr (Op::row_coupled) {
#pragma omp parallel for schedule(static) if (n > kParallelElems)
      for (i64 r = 0; r < rows; ++r) Op::grad_row(y + r * cols, dy + r * cols, cols);
    } else if constexpr (!Op::identity) {
      const i64 nblk = (n + kActBlock - 1) / kActBlock;
#pragma omp parallel for schedule(static) if (n > kParallelElems)
      for (i64 k = 0; k < nblk; ++k) {
        const i64 lo = k * kActBlock;
        act_grad_sum_row<Op>(y + lo, dy + lo, static_cast<T*>(nullptr),
                             std::min(kActBlock, n - lo), alpha);
      }
    }
  });
}

// A layer's forward epilogue: y = act(y + bias) row by row, one pass over the product while
// it is still in cache. y: (rows, cols), bias: (cols) or null (no bias).
template <typename T>
void bias_activation_forward(Act a, T alpha, const T* bias, T* y, i64 rows, i64 cols) {
  dispatch_act(a, [&](auto op) {
    using Op = decltype(op);
    if constexpr (Op::identity)
      if (!bias) return;
#pragma omp parallel for schedule(static) if (rows * cols > act_parallel_min<Op>())
    for (i64 r = 0; r < rows; ++r) bias_act_row<Op>(y + r * cols, bias, cols, alpha);
  });
}

// Fused start of a Dense layer's backward pass: dy -> dz = dy ⊙ act'(y) in place, and
// db += Σ_rows dz, in one pass. y, dy: (rows, cols), db: (cols). Threads split the columns,
// so each owns its part of db and no reduction is needed. (Conv2D sums over its many more
// rows in row blocks instead, with the same row kernel.)
template <typename T>
void activation_backward_bias(Act a, T alpha, const T* y, T* dy, T* db, i64 rows, i64 cols) {
  dispatch_act(a, [&](auto op) {
    using Op = decltype(op);
    if constexpr (Op::row_coupled)  // its own pass, then the column sums
      activation_backward(a, alpha, y, dy, rows, cols);
    using Elem = std::conditional_t<Op::row_coupled, act::Linear, Op>;
    constexpr i64 kColBlock = 64;
    const i64 nblk = (cols + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (rows * cols > kParallelElems && nblk > 1)
    for (i64 blk = 0; blk < nblk; ++blk) {
      const i64 c0 = blk * kColBlock, c1 = std::min(cols, c0 + kColBlock);
      for (i64 r = 0; r < rows; ++r)
        act_grad_sum_row<Elem>(y + r * cols + c0, dy + r * cols + c0, db + c0, c1 - c0, alpha);
    }
  });
}

}  // namespace cr
