// The optimizer's inner loops. This file has no include guard and includes nothing: it is
// included inside a namespace once per compilation target (optimizer.h in cr::detail for
// float64, optim/step_target.h in cr::<target>::impl for float32 built per CPU target), so
// no inline function compiled for a wider target can be shared with baseline code. Hence the
// local min/max/sqrt instead of the standard library's inline templates.
// Needs in scope: i64, kParallelElems, OptKind, OptimConfig, SegmentStats, std::pow.

template <typename T>
inline T step_min(T a, T b) { return b < a ? b : a; }
template <typename T>
inline T step_max(T a, T b) { return a < b ? b : a; }
inline float step_sqrt(float x) { return __builtin_sqrtf(x); }
inline double step_sqrt(double x) { return __builtin_sqrt(x); }


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
  // 1 - beta in double, then rounded: 1 - T(beta) would carry beta's float32 rounding error
  // ~1000x magnified (0.9999 -> 1 - 0.99989998 is 8e-5 off).
  const T one_m_b1 = T(1.0 - c.beta1), one_m_b2 = T(1.0 - c.beta2), one_m_rho = T(1.0 - c.rho);
  const T bc1 = T(1.0 - std::pow(c.beta1, double(t))), bc2 = T(1.0 - std::pow(c.beta2, double(t)));
  const T step_size = lr / bc1, inv_sqrt_bc2 = T(1.0 / step_sqrt(double(bc2)));
  const T decay = T(1) - lr * T(c.weight_decay);
  const i64 nblocks = (n + kStepBlock - 1) / kStepBlock;
  double g2 = 0.0, d2 = 0.0, w2 = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : g2, d2, w2) if (n > kParallelElems)
  for (i64 blk = 0; blk < nblocks; ++blk) {
    const i64 lo = blk * kStepBlock, hi = step_min(n, lo + kStepBlock);
    T bg2 = T(0), bd2 = T(0), bw2 = T(0);
#pragma omp simd reduction(+ : bg2, bd2, bw2)
    for (i64 i = lo; i < hi; ++i) {
      const T graw = g[i];
      g[i] = T(0);
      T gi = graw * gscale;
      if constexpr (kClip) gi = step_min(step_max(gi, -cv), cv);
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
        const T m = b1 * s0[i] + one_m_b1 * gi;
        T v = b2 * s1[i] + one_m_b2 * gi * gi;
        s0[i] = m;
        s1[i] = v;
        if constexpr (kVariant == 1) {
          v = step_max(s2[i], v);
          s2[i] = v;
        }
        w -= step_size * m / (step_sqrt(v) * inv_sqrt_bc2 + eps);
      } else if constexpr (K == OptKind::RMSprop) {
        const T v = rho * s0[i] + one_m_rho * gi * gi;
        s0[i] = v;
        T u = gi / (step_sqrt(v) + eps);
        if constexpr (kVariant == 1) {
          u = mu * s1[i] + u;
          s1[i] = u;
        }
        w -= lr * u;
      } else {  // Adagrad
        const T a = s0[i] + gi * gi;
        s0[i] = a;
        w -= lr * gi / (step_sqrt(a) + eps);
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


// One parameter tensor: picks the branch-free loop for this optimizer's variant.
template <typename T>
SegmentStats step_any(bool ws, const OptimConfig& c, T lr, i64 t, T gs, T* p, T* g, T* s0, T* s1,
                      T* s2, i64 n) {
  switch (c.kind) {
    case OptKind::SGD:
      if (c.momentum == 0.0) return step_segment<OptKind::SGD, 0>(ws, c, lr, t, gs, p, g, s0, s1, s2, n);
      if (!c.nesterov) return step_segment<OptKind::SGD, 1>(ws, c, lr, t, gs, p, g, s0, s1, s2, n);
      return step_segment<OptKind::SGD, 2>(ws, c, lr, t, gs, p, g, s0, s1, s2, n);
    case OptKind::Adam:
      if (c.amsgrad) return step_segment<OptKind::Adam, 1>(ws, c, lr, t, gs, p, g, s0, s1, s2, n);
      return step_segment<OptKind::Adam, 0>(ws, c, lr, t, gs, p, g, s0, s1, s2, n);
    case OptKind::RMSprop:
      if (c.momentum != 0.0) return step_segment<OptKind::RMSprop, 1>(ws, c, lr, t, gs, p, g, s0, s1, s2, n);
      return step_segment<OptKind::RMSprop, 0>(ws, c, lr, t, gs, p, g, s0, s1, s2, n);
    case OptKind::Adagrad:
      return step_segment<OptKind::Adagrad, 0>(ws, c, lr, t, gs, p, g, s0, s1, s2, n);
  }
  return {};
}
