// Placeholder dispatch for the fast GEMM: a simple loop-ordered kernel, portable, OpenMP
// over rows. The packed SIMD implementation replaces this file.
#include "kernels/gemm.h"

namespace cr {

template <typename T>
static void gemm_simple(bool ta, bool tb, i64 M, i64 N, i64 K, T alpha, const T* A, i64 lda,
                        const T* B, i64 ldb, T beta, T* C, i64 ldc) {
#pragma omp parallel for schedule(static) if (M * N * K > (1 << 18))
  for (i64 i = 0; i < M; ++i) {
    T* c = C + i * ldc;
    if (beta == T(0)) {
      for (i64 j = 0; j < N; ++j) c[j] = T(0);
    } else if (beta != T(1)) {
      for (i64 j = 0; j < N; ++j) c[j] *= beta;
    }
    for (i64 p = 0; p < K; ++p) {
      T a = alpha * (ta ? A[p * lda + i] : A[i * lda + p]);
      if (!tb) {
        const T* b = B + p * ldb;
        for (i64 j = 0; j < N; ++j) c[j] += a * b[j];
      } else {
        for (i64 j = 0; j < N; ++j) c[j] += a * B[j * ldb + p];
      }
    }
  }
}

void sgemm(bool ta, bool tb, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda,
           const float* B, i64 ldb, float beta, float* C, i64 ldc) {
  gemm_simple(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void dgemm(bool ta, bool tb, i64 M, i64 N, i64 K, double alpha, const double* A, i64 lda,
           const double* B, i64 ldb, double beta, double* C, i64 ldc) {
  gemm_simple(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace cr
