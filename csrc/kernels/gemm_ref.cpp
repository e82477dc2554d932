// Reference GEMM: the slow, obviously-correct twin of the fast kernels (and the float64
// path until it gets one of its own). Accumulates in double.
#include "kernels/gemm.h"

namespace cr {

template <typename T>
static void gemm_naive(bool ta, bool tb, i64 M, i64 N, i64 K, T alpha, const T* A, i64 lda,
                       const T* B, i64 ldb, T beta, T* C, i64 ldc) {
  for (i64 i = 0; i < M; ++i) {
    for (i64 j = 0; j < N; ++j) {
      double acc = 0.0;
      for (i64 p = 0; p < K; ++p) {
        T a = ta ? A[p * lda + i] : A[i * lda + p];
        T b = tb ? B[j * ldb + p] : B[p * ldb + j];
        acc += double(a) * double(b);
      }
      T prev = beta == T(0) ? T(0) : beta * C[i * ldc + j];
      C[i * ldc + j] = T(alpha * acc) + prev;
    }
  }
}

void sgemm_ref(bool ta, bool tb, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda,
               const float* B, i64 ldb, float beta, float* C, i64 ldc) {
  gemm_naive(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void dgemm_ref(bool ta, bool tb, i64 M, i64 N, i64 K, double alpha, const double* A, i64 lda,
               const double* B, i64 ldb, double beta, double* C, i64 ldc) {
  gemm_naive(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace cr
