// Element-wise activations on row-major (rows, cols) blocks, forward and backward.
// Forward is in place (z -> y); backward is expressed through the output y, so a layer
// caches only its output: sigmoid' = y(1-y), tanh' = 1-y², relu' = [y>0],
// leaky_relu' = [y>0] + alpha[y<=0] (valid for alpha >= 0), softmax: dz = y ⊙ (dy - <dy,y>).
#pragma once
#include <algorithm>
#include <cmath>

#include "common.h"

namespace cr {

enum class Act : int { Linear = 0, Sigmoid = 1, Tanh = 2, Relu = 3, LeakyRelu = 4, Softmax = 5 };

inline const char* act_name(Act a) {
  switch (a) {
    case Act::Linear: return "linear";
    case Act::Sigmoid: return "sigmoid";
    case Act::Tanh: return "tanh";
    case Act::Relu: return "relu";
    case Act::LeakyRelu: return "leaky_relu";
    case Act::Softmax: return "softmax";
  }
  return "?";
}

template <typename T>
inline T sigmoid_scalar(T z) {
  // Two branches so exp never overflows.
  if (z >= T(0)) return T(1) / (T(1) + std::exp(-z));
  T e = std::exp(z);
  return e / (T(1) + e);
}

// Row-wise softmax of one row, in place.
template <typename T>
inline void softmax_row(T* z, i64 cols) {
  T m = z[0];
  for (i64 j = 1; j < cols; ++j) m = std::max(m, z[j]);
  T s = T(0);
  for (i64 j = 0; j < cols; ++j) {
    z[j] = std::exp(z[j] - m);
    s += z[j];
  }
  T inv = T(1) / s;
  for (i64 j = 0; j < cols; ++j) z[j] *= inv;
}

// z: (rows, cols), overwritten by act(z).
template <typename T>
void activation_forward(Act act, T alpha, T* z, i64 rows, i64 cols) {
  const i64 n = rows * cols;
  switch (act) {
    case Act::Linear: return;
    case Act::Sigmoid:
#pragma omp parallel for schedule(static) if (n > kParallelElems / 4)
      for (i64 i = 0; i < n; ++i) z[i] = sigmoid_scalar(z[i]);
      return;
    case Act::Tanh:
#pragma omp parallel for schedule(static) if (n > kParallelElems / 4)
      for (i64 i = 0; i < n; ++i) z[i] = std::tanh(z[i]);
      return;
    case Act::Relu:
#pragma omp parallel for schedule(static) if (n > kParallelElems)
      for (i64 i = 0; i < n; ++i) z[i] = z[i] > T(0) ? z[i] : T(0);
      return;
    case Act::LeakyRelu:
#pragma omp parallel for schedule(static) if (n > kParallelElems)
      for (i64 i = 0; i < n; ++i) z[i] = z[i] > T(0) ? z[i] : alpha * z[i];
      return;
    case Act::Softmax:
#pragma omp parallel for schedule(static) if (n > kParallelElems / 4)
      for (i64 r = 0; r < rows; ++r) softmax_row(z + r * cols, cols);
      return;
  }
}

// y: (rows, cols) activation outputs; dy: gradient w.r.t. y, overwritten by the gradient
// w.r.t. the pre-activation z.
template <typename T>
void activation_backward(Act act, T alpha, const T* y, T* dy, i64 rows, i64 cols) {
  const i64 n = rows * cols;
  switch (act) {
    case Act::Linear: return;
    case Act::Sigmoid:
#pragma omp parallel for schedule(static) if (n > kParallelElems)
      for (i64 i = 0; i < n; ++i) dy[i] *= y[i] * (T(1) - y[i]);
      return;
    case Act::Tanh:
#pragma omp parallel for schedule(static) if (n > kParallelElems)
      for (i64 i = 0; i < n; ++i) dy[i] *= T(1) - y[i] * y[i];
      return;
    case Act::Relu:
#pragma omp parallel for schedule(static) if (n > kParallelElems)
      for (i64 i = 0; i < n; ++i) dy[i] = y[i] > T(0) ? dy[i] : T(0);
      return;
    case Act::LeakyRelu:
#pragma omp parallel for schedule(static) if (n > kParallelElems)
      for (i64 i = 0; i < n; ++i) dy[i] = y[i] > T(0) ? dy[i] : alpha * dy[i];
      return;
    case Act::Softmax:
#pragma omp parallel for schedule(static) if (n > kParallelElems)
      for (i64 r = 0; r < rows; ++r) {
        const T* yr = y + r * cols;
        T* d = dy + r * cols;
        T s = T(0);
        for (i64 j = 0; j < cols; ++j) s += d[j] * yr[j];
        for (i64 j = 0; j < cols; ++j) d[j] = yr[j] * (d[j] - s);
      }
      return;
  }
}

// Fused epilogue of a linear layer's forward pass: y = act(y + bias) row by row, one pass
// over the GEMM output while it is still in cache. y: (rows, cols), bias: (cols).
template <typename T>
void bias_activation_forward(Act act, T alpha, const T* bias, T* y, i64 rows, i64 cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelElems)
  for (i64 r = 0; r < rows; ++r) {
    T* yr = y + r * cols;
    switch (act) {
      case Act::Linear:
        for (i64 j = 0; j < cols; ++j) yr[j] += bias[j];
        break;
      case Act::Relu:
        for (i64 j = 0; j < cols; ++j) {
          T z = yr[j] + bias[j];
          yr[j] = z > T(0) ? z : T(0);
        }
        break;
      case Act::LeakyRelu:
        for (i64 j = 0; j < cols; ++j) {
          T z = yr[j] + bias[j];
          yr[j] = z > T(0) ? z : alpha * z;
        }
        break;
      case Act::Sigmoid:
        for (i64 j = 0; j < cols; ++j) yr[j] = sigmoid_scalar(yr[j] + bias[j]);
        break;
      case Act::Tanh:
        for (i64 j = 0; j < cols; ++j) yr[j] = std::tanh(yr[j] + bias[j]);
        break;
      case Act::Softmax:
        for (i64 j = 0; j < cols; ++j) yr[j] += bias[j];
        softmax_row(yr, cols);
        break;
    }
  }
}

// Fused start of a linear layer's backward pass: dy -> dz = dy ⊙ act'(y) in place, and
// db += Σ_rows dz, in one pass. y, dy: (rows, cols), db: (cols). Threads split the columns,
// so each owns its part of db and no reduction is needed.
template <typename T>
void activation_backward_bias(Act act, T alpha, const T* y, T* dy, T* db, i64 rows, i64 cols) {
  if (act == Act::Softmax) {  // row-coupled: its own pass, then the column sums
    activation_backward(act, alpha, y, dy, rows, cols);
    act = Act::Linear;
  }
  constexpr i64 kColBlock = 64;
  const i64 nblk = (cols + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (rows * cols > kParallelElems && nblk > 1)
  for (i64 blk = 0; blk < nblk; ++blk) {
    const i64 c0 = blk * kColBlock, c1 = std::min(cols, c0 + kColBlock);
    for (i64 r = 0; r < rows; ++r) {
      const T* yr = y + r * cols;
      T* d = dy + r * cols;
      switch (act) {
        case Act::Linear:
        case Act::Softmax:
          break;
        case Act::Relu:
          for (i64 j = c0; j < c1; ++j) d[j] = yr[j] > T(0) ? d[j] : T(0);
          break;
        case Act::LeakyRelu:
          for (i64 j = c0; j < c1; ++j) d[j] = yr[j] > T(0) ? d[j] : alpha * d[j];
          break;
        case Act::Sigmoid:
          for (i64 j = c0; j < c1; ++j) d[j] *= yr[j] * (T(1) - yr[j]);
          break;
        case Act::Tanh:
          for (i64 j = c0; j < c1; ++j) d[j] *= T(1) - yr[j] * yr[j];
          break;
      }
      for (i64 j = c0; j < c1; ++j) db[j] += d[j];
    }
  }
}

}  // namespace cr
