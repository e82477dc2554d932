// AVX-512F sgemm micro-kernel, 12x32 register tile (24 zmm accumulators, 2 B loads and 12
// broadcasts per k step, enough independent FMAs to hide the 4-cycle latency on two ports).
// Edges are stored with opmasks. Compiled with -mavx512* only for this file; reached only
// through the runtime dispatch in gemm.cpp when the CPU and OS support AVX-512.
#include <immintrin.h>

#include "kernels/gemm_kernels.h"

namespace cr {

namespace {
constexpr int MR = 12, NR = 32;

void ukernel_avx512_12x32(i64 k, const float* a, const float* b, float* c, i64 ldc,
                          float alpha, float beta, i64 m_rem, i64 n_rem) {
  __m512 acc0[MR], acc1[MR];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  for (i64 p = 0; p < k; ++p) {
    __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      __m512 ai = _mm512_set1_ps(a[i]);
      acc0[i] = _mm512_fmadd_ps(ai, b0, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(ai, b1, acc1[i]);
    }
    a += MR;
    b += NR;
  }
  __m512 va = _mm512_set1_ps(alpha);
  __mmask16 m0 = n_rem >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n_rem) - 1);
  __mmask16 m1 = n_rem >= 32 ? __mmask16(0xFFFF)
                 : n_rem > 16 ? __mmask16((1u << (n_rem - 16)) - 1)
                              : __mmask16(0);
  if (beta == 0.0f) {
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      if (i < m_rem) {
        _mm512_mask_storeu_ps(c + i * ldc, m0, _mm512_mul_ps(va, acc0[i]));
        _mm512_mask_storeu_ps(c + i * ldc + 16, m1, _mm512_mul_ps(va, acc1[i]));
      }
    }
  } else {
    __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      if (i < m_rem) {
        float* ci = c + i * ldc;
        __m512 c0 = _mm512_maskz_loadu_ps(m0, ci), c1 = _mm512_maskz_loadu_ps(m1, ci + 16);
        _mm512_mask_storeu_ps(ci, m0, _mm512_fmadd_ps(va, acc0[i], _mm512_mul_ps(vb, c0)));
        _mm512_mask_storeu_ps(ci + 16, m1, _mm512_fmadd_ps(va, acc1[i], _mm512_mul_ps(vb, c1)));
      }
    }
  }
}
}  // namespace

const SgemmKernel sgemm_kernel_avx512 = {"avx512", MR, NR, 144, 384, 480, ukernel_avx512_12x32};

}  // namespace cr
