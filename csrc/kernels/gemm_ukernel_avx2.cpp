// AVX2+FMA sgemm micro-kernel, 6x16 register tile (12 ymm accumulators, 2 B loads and one
// broadcast per k step). Compiled with -mavx2 -mfma only for this file, all of it in
// namespace cr::avx2; reached only through the run-time choice (kernels/dispatch.h) when the
// CPU and OS support AVX2.
#include <immintrin.h>

#include <algorithm>

#include "kernels/gemm_kernels.h"

namespace cr {
namespace avx2 {

namespace {

#include "kernels/pack_transpose.h"

// The widest float vector of this target, for sgemm_rows_fma.
typedef float Vec8 __attribute__((vector_size(32)));

constexpr int MR = 6, NR = 16;

void ukernel_avx2_6x16(i64 k, const float* a, const float* b, float* c, i64 ldc, float alpha,
                       float beta, i64 m_rem, i64 n_rem) {
  __m256 acc0[MR], acc1[MR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm256_setzero_ps();
  for (i64 p = 0; p < k; ++p) {
    __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      __m256 ai = _mm256_broadcast_ss(a + i);
      acc0[i] = _mm256_fmadd_ps(ai, b0, acc0[i]);
      acc1[i] = _mm256_fmadd_ps(ai, b1, acc1[i]);
    }
    a += MR;
    b += NR;
  }
  __m256 va = _mm256_set1_ps(alpha);
  if (m_rem == MR && n_rem == NR) {
    if (beta == 0.0f) {
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        _mm256_storeu_ps(c + i * ldc, _mm256_mul_ps(va, acc0[i]));
        _mm256_storeu_ps(c + i * ldc + 8, _mm256_mul_ps(va, acc1[i]));
      }
    } else {
      __m256 vb = _mm256_set1_ps(beta);
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        float* ci = c + i * ldc;
        _mm256_storeu_ps(ci, _mm256_fmadd_ps(va, acc0[i], _mm256_mul_ps(vb, _mm256_loadu_ps(ci))));
        _mm256_storeu_ps(ci + 8,
                         _mm256_fmadd_ps(va, acc1[i], _mm256_mul_ps(vb, _mm256_loadu_ps(ci + 8))));
      }
    }
  } else {
    alignas(32) float tile[MR * NR];
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      _mm256_store_ps(tile + i * NR, acc0[i]);
      _mm256_store_ps(tile + i * NR + 8, acc1[i]);
    }
    sgemm_store_edge(tile, NR, c, ldc, alpha, beta, m_rem, n_rem);
  }
}
}  // namespace

// The plain packed kernel with the transposing A packer: the other optional fast paths fall
// back to it.
const SgemmKernel sgemm_kernel = {"avx2", MR, NR, 1536, 256, 480, ukernel_avx2_6x16,
                                  nullptr, false, nullptr, pack_rows<MR>, nullptr, nullptr,
                                  sgemm_rows_fma<Vec8>};

}  // namespace avx2
}  // namespace cr
