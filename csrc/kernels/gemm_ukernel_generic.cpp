// Portable sgemm micro-kernel (plain C++, any architecture): the fallback target and the
// CHAINRULE_CPU_TARGET=generic choice. The compiler vectorises the fixed-size loops with
// whatever baseline SIMD the architecture has (SSE2 on x86-64, NEON on aarch64).
#include "kernels/gemm_kernels.h"

namespace cr {
namespace generic {

namespace {
constexpr int MR = 4, NR = 8;

void ukernel_generic_4x8(i64 k, const float* a, const float* b, float* c, i64 ldc, float alpha,
                         float beta, i64 m_rem, i64 n_rem) {
  float acc[MR][NR] = {};
  for (i64 p = 0; p < k; ++p) {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] += a[i] * b[j];
    a += MR;
    b += NR;
  }
  if (m_rem == MR && n_rem == NR) {
    for (int i = 0; i < MR; ++i) {
      float* ci = c + i * ldc;
      if (beta == 0.0f)
        for (int j = 0; j < NR; ++j) ci[j] = alpha * acc[i][j];
      else
        for (int j = 0; j < NR; ++j) ci[j] = alpha * acc[i][j] + beta * ci[j];
    }
  } else {
    sgemm_store_edge(&acc[0][0], NR, c, ldc, alpha, beta, m_rem, n_rem);
  }
}
}  // namespace

// Only the plain packed kernel: the optional fast paths fall back to it.
const SgemmKernel sgemm_kernel = {"generic", MR, NR, 128, 256, 2048, ukernel_generic_4x8,
                                  nullptr, false, nullptr, nullptr, nullptr, nullptr, nullptr};

}  // namespace generic
}  // namespace cr
