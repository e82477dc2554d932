// Transposing packers for the A panels of the AVX targets' GEMM: a plain A (each row's run
// contiguous in K) is copied into R-row panels (element (p, r) at dst[p*R + r]) by
// transposing 8, 4 or 2 rows x 8 steps of p in registers; the portable packer's strided
// scalar loop there costs several times the B packing per element. Uses AVX (256-bit)
// instructions only. This file has no include guard and includes nothing: it is included
// inside the anonymous namespace of each AVX target's micro-kernel file
// (gemm_ukernel_avx2.cpp, gemm_ukernel_avx512.cpp), compiled with that target's flags; the
// file includes <immintrin.h> and kernels/gemm_kernels.h first.

// 8 source runs (rows r, contiguous in p) x 8 steps of p -> 8 vectors, one per p, holding
// the 8 rows: the classic 8x8 transpose. Loads pair rows r and r+4 into one ymm so that
// the remaining shuffles are in-lane (two shuffle ports instead of one).
inline void transpose8x8_store(const float* s, i64 ld_r, float* d, i64 ld_d) {
  auto rows = [&](int r, int p) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(s + r * ld_r + p)),
                                _mm_loadu_ps(s + (r + 4) * ld_r + p), 1);
  };
  for (int h = 0; h < 2; ++h) {  // p 0..3, then p 4..7
    const __m256 r0 = rows(0, 4 * h), r1 = rows(1, 4 * h), r2 = rows(2, 4 * h),
                 r3 = rows(3, 4 * h);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    _mm256_storeu_ps(d + (4 * h + 0) * ld_d, _mm256_shuffle_ps(t0, t2, 0x44));
    _mm256_storeu_ps(d + (4 * h + 1) * ld_d, _mm256_shuffle_ps(t0, t2, 0xEE));
    _mm256_storeu_ps(d + (4 * h + 2) * ld_d, _mm256_shuffle_ps(t1, t3, 0x44));
    _mm256_storeu_ps(d + (4 * h + 3) * ld_d, _mm256_shuffle_ps(t1, t3, 0xEE));
  }
}

// 4 rows x 8 steps of p -> 8 vectors of 4, one per p: two 4x4 transposes.
inline void transpose4x8_store(const float* s, i64 ld_r, float* d, i64 ld_d) {
  for (int h = 0; h < 2; ++h) {
    __m128 r0 = _mm_loadu_ps(s + 4 * h), r1 = _mm_loadu_ps(s + ld_r + 4 * h),
           r2 = _mm_loadu_ps(s + 2 * ld_r + 4 * h), r3 = _mm_loadu_ps(s + 3 * ld_r + 4 * h);
    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
    _mm_storeu_ps(d + (4 * h + 0) * ld_d, r0);
    _mm_storeu_ps(d + (4 * h + 1) * ld_d, r1);
    _mm_storeu_ps(d + (4 * h + 2) * ld_d, r2);
    _mm_storeu_ps(d + (4 * h + 3) * ld_d, r3);
  }
}

// 2 rows x 8 steps of p -> 8 pairs, one per p: interleave the two rows.
inline void transpose2x8_store(const float* s, i64 ld_r, float* d, i64 ld_d) {
  const __m128 a0 = _mm_loadu_ps(s), a1 = _mm_loadu_ps(s + 4);
  const __m128 b0 = _mm_loadu_ps(s + ld_r), b1 = _mm_loadu_ps(s + ld_r + 4);
  const __m128 lo0 = _mm_unpacklo_ps(a0, b0), hi0 = _mm_unpackhi_ps(a0, b0);
  const __m128 lo1 = _mm_unpacklo_ps(a1, b1), hi1 = _mm_unpackhi_ps(a1, b1);
  auto pair = [&](int p, __m128 v, bool high) {
    if (high)
      _mm_storeh_pi(reinterpret_cast<__m64*>(d + p * ld_d), v);
    else
      _mm_storel_pi(reinterpret_cast<__m64*>(d + p * ld_d), v);
  };
  pair(0, lo0, false), pair(1, lo0, true), pair(2, hi0, false), pair(3, hi0, true);
  pair(4, lo1, false), pair(5, lo1, true), pair(6, hi1, false), pair(7, hi1, true);
}

// R-row A panels (R even: the 6-, 8-, 12- and 24-row tiles), the portable packer's contract:
// element (p, r) of panel q from src[p*ld_p + (q*R + r)*ld_r] to dst[(q*k + p)*R + r], rows
// >= n_valid zero. A plain A (ld_p == 1) is transposed 8 steps of p at a time; a transposed
// one (ld_r == 1) is a copy of R contiguous floats per p; ragged panels and the last k % 8
// steps go scalar.
template <int R>
void pack_rows(const float* src, i64 ld_p, i64 ld_r, i64 n_valid, i64 k, float* dst) {
  static_assert(R % 2 == 0, "R rows in blocks of 8, 4 and 2");
  for (i64 q0 = 0; q0 < n_valid; q0 += R, dst += k * R) {
    const i64 nv = std::min<i64>(R, n_valid - q0);
    const float* s = src + q0 * ld_r;
    i64 p = 0;
    if (ld_p == 1 && nv == R) {
      for (; p + 8 <= k; p += 8) {
        int r = 0;
        for (; r + 8 <= R; r += 8) transpose8x8_store(s + r * ld_r + p, ld_r, dst + p * R + r, R);
        if (r + 4 <= R) {
          transpose4x8_store(s + r * ld_r + p, ld_r, dst + p * R + r, R);
          r += 4;
        }
        if (r < R) transpose2x8_store(s + r * ld_r + p, ld_r, dst + p * R + r, R);
      }
    } else if (ld_r == 1 && nv == R) {
      for (; p < k; ++p) {
        const float* sp = s + p * ld_p;
        float* d = dst + p * R;
        int r = 0;
        for (; r + 8 <= R; r += 8) _mm256_storeu_ps(d + r, _mm256_loadu_ps(sp + r));
        for (; r < R; ++r) d[r] = sp[r];
      }
    }
    for (; p < k; ++p) {
      float* d = dst + p * R;
      for (i64 r = 0; r < nv; ++r) d[r] = s[p * ld_p + r * ld_r];
      for (i64 r = nv; r < R; ++r) d[r] = 0.0f;
    }
  }
}
