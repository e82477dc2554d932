// AVX-512F sgemm micro-kernels: 12x32 register tile (24 zmm accumulators, 2 B loads and 12
// broadcasts per k step, enough independent FMAs to hide the 4-cycle latency on two ports),
// and 24x16 for narrow N.
// Edges are stored with opmasks. Compiled with -mavx512* only for this file, all of it in
// namespace cr::avx512; reached only through the run-time choice (kernels/dispatch.h) when
// the CPU and OS support AVX-512.
#include <immintrin.h>

#include <algorithm>

#include "kernels/gemm_kernels.h"

// GCC 12 warns about _mm512_undefined_ps() inside its own shuffle intrinsics.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace cr {
namespace avx512 {

namespace {

#include "kernels/pack_transpose.h"

// The widest float vector of this target, for sgemm_rows_fma.
typedef float Vec16 __attribute__((vector_size(64)));

// MR rows x NV*16 columns; acc[i][v] holds row i, columns 16v..16v+15.
template <int MR, int NV>
void ukernel_avx512(i64 k, const float* a, const float* b, float* c, i64 ldc, float alpha,
                    float beta, i64 m_rem, i64 n_rem) {
  constexpr int NR = 16 * NV;
  // The C tile is touched only after the k loop: start pulling its lines in now.
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
    if (i < m_rem) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
  __m512 acc[MR][NV];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (i64 p = 0; p < k; ++p) {
    __m512 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_load_ps(b + 16 * v);
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      __m512 ai = _mm512_set1_ps(a[i]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
    }
    a += MR;
    b += NR;
  }
  // Column masks: the store is the only place that knows about edges.
  __mmask16 mask[NV];
#pragma GCC unroll 2
  for (int v = 0; v < NV; ++v) {
    const i64 cols = n_rem - 16 * v;
    mask[v] = cols >= 16  ? __mmask16(0xFFFF)
              : cols > 0 ? __mmask16((1u << cols) - 1)
                         : __mmask16(0);
  }
  const __m512 va = _mm512_set1_ps(alpha);
  if (beta == 0.0f) {
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i)
      if (i < m_rem)
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v)
          _mm512_mask_storeu_ps(c + i * ldc + 16 * v, mask[v], _mm512_mul_ps(va, acc[i][v]));
  } else {
    const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i)
      if (i < m_rem)
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) {
          float* ci = c + i * ldc + 16 * v;
          const __m512 old = _mm512_maskz_loadu_ps(mask[v], ci);
          const __m512 x = _mm512_fmadd_ps(va, acc[i][v], _mm512_mul_ps(vb, old));
          _mm512_mask_storeu_ps(ci, mask[v], x);
        }
  }
}
}  // namespace

// The narrow kernel reading op(A) in place: element (i, p) at a[i*rs_i + p*rs_p]. For N
// this small every A element feeds only one B panel, so packing A would cost as much as
// the arithmetic. Rows must all be in bounds (the driver packs a ragged last panel).
template <int MR, int NV>
void ukernel_avx512_direct_a(i64 k, const float* a, i64 rs_i, i64 rs_p, const float* b,
                             i64 b_rs_p, float* c, i64 ldc, float alpha, float beta, i64 m_rem,
                             i64 n_rem) {
  __m512 acc[MR][NV];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  if (rs_i == 1) {
    for (i64 p = 0; p < k; ++p, a += rs_p, b += b_rs_p) {
      __m512 bv[NV];
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 32
      for (int i = 0; i < MR; ++i) {
        const __m512 ai = _mm512_set1_ps(a[i]);
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
      }
    }
  } else {
    // rows of A are contiguous in p: walk MR row pointers forward together.
    const float* rows[MR];
    for (int i = 0; i < MR; ++i) rows[i] = a + i * rs_i;
    for (i64 p = 0; p < k; ++p, b += b_rs_p) {
      __m512 bv[NV];
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 32
      for (int i = 0; i < MR; ++i) {
        const __m512 ai = _mm512_set1_ps(rows[i][p]);
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
      }
    }
  }
  __mmask16 mask[NV];
#pragma GCC unroll 2
  for (int v = 0; v < NV; ++v) {
    const i64 cols = n_rem - 16 * v;
    mask[v] = cols >= 16  ? __mmask16(0xFFFF)
              : cols > 0 ? __mmask16((1u << cols) - 1)
                         : __mmask16(0);
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i) {
    if (i < m_rem) {
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) {
        float* ci = c + i * ldc + 16 * v;
        __m512 x = _mm512_mul_ps(va, acc[i][v]);
        if (beta != 0.0f) x = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mask[v], ci), x);
        _mm512_mask_storeu_ps(ci, mask[v], x);
      }
    }
  }
}

// In-place transpose of a 16x16 block held in 16 zmm registers (unpack ps, unpack pd, two
// 128-bit lane shuffles).
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  auto lo = [](__m512 x, __m512 y) {
    return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(x), _mm512_castps_pd(y)));
  };
  auto hi = [](__m512 x, __m512 y) {
    return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(x), _mm512_castps_pd(y)));
  };
  for (int q = 0; q < 4; ++q) {
    r[4 * q] = lo(t[4 * q], t[4 * q + 2]);
    r[4 * q + 1] = hi(t[4 * q], t[4 * q + 2]);
    r[4 * q + 2] = lo(t[4 * q + 1], t[4 * q + 3]);
    r[4 * q + 3] = hi(t[4 * q + 1], t[4 * q + 3]);
  }
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 4; ++i) {
      t[8 * h + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + i + 4], 0x88);
      t[8 * h + i + 4] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + i + 4], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}

// Column-oriented kernel for very narrow N (the 10-class layer, small convolutions): a
// 32 x NR tile held as 2 x NR zmm columns (vectors run along M, B values are broadcast),
// so N = 10 costs 10 columns, not a 16-wide vector with 6 lanes of padding. The tile is
// transposed in registers for the row-major store. a: 32 floats per k step, a_stride_p
// apart (32 when packed, lda when read in place); b: NR floats per k step.
template <int NR>
inline void col_kernel_body(i64 k, const float* a, i64 a_stride_p, const float* b,
                            i64 b_stride_p, float* c, i64 ldc, float alpha, float beta,
                            i64 m_rem, i64 n_rem) {
  __m512 acc0[NR], acc1[NR];
#pragma GCC unroll 16
  for (int j = 0; j < NR; ++j) acc0[j] = acc1[j] = _mm512_setzero_ps();
  for (i64 p = 0; p < k; ++p, a += a_stride_p, b += b_stride_p) {
    const __m512 a0 = _mm512_loadu_ps(a), a1 = _mm512_loadu_ps(a + 16);
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) {
      const __m512 bj = _mm512_set1_ps(b[j]);
      acc0[j] = _mm512_fmadd_ps(a0, bj, acc0[j]);
      acc1[j] = _mm512_fmadd_ps(a1, bj, acc1[j]);
    }
  }
  const __mmask16 mask = n_rem >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n_rem) - 1);
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int half = 0; half < 2 && 16 * half < m_rem; ++half) {
    __m512 r[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) r[j] = j < NR ? (half ? acc1[j] : acc0[j]) : _mm512_setzero_ps();
    transpose16(r);
    const i64 rows = std::min<i64>(16, m_rem - 16 * half);
    float* ch = c + 16 * half * ldc;
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
      if (i < rows) {
        __m512 v = _mm512_mul_ps(va, r[i]);
        if (beta != 0.0f) v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mask, ch + i * ldc), v);
        _mm512_mask_storeu_ps(ch + i * ldc, mask, v);
      }
    }
  }
}

template <int NR>
void ukernel_avx512_col(i64 k, const float* a, const float* b, float* c, i64 ldc, float alpha,
                        float beta, i64 m_rem, i64 n_rem) {
  col_kernel_body<NR>(k, a, 32, b, NR, c, ldc, alpha, beta, m_rem, n_rem);
}
// In place: only for op(A) with rows contiguous (rs_i == 1, i.e. trans_a); see driver.
template <int NR>
void ukernel_avx512_col_direct_a(i64 k, const float* a, i64 rs_i, i64 rs_p, const float* b,
                                 i64 b_rs_p, float* c, i64 ldc, float alpha, float beta,
                                 i64 m_rem, i64 n_rem) {
  (void)rs_i;
  col_kernel_body<NR>(k, a, rs_p, b, b_rs_p, c, ldc, alpha, beta, m_rem, n_rem);
}

// Lane j of the result = sum of the 16 lanes of v[j] (v[j] for j >= NV taken as zero).
template <int NV>
inline __m512 hsum16(const __m512* v) {
  auto get = [&](int j) { return j < NV ? v[j] : _mm512_setzero_ps(); };
  __m512 w[8], u[4];
#pragma GCC unroll 8
  for (int m = 0; m < 8; ++m) {  // block q: [x0+x2, y0+y2, x1+x3, y1+y3]
    const __m512 x = get(2 * m), y = get(2 * m + 1);
    w[m] = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
  }
#pragma GCC unroll 4
  for (int m = 0; m < 4; ++m) {  // block q, position t: block-q partial of v[4m + t]
    const __m512d a = _mm512_castps_pd(w[2 * m]), b = _mm512_castps_pd(w[2 * m + 1]);
    u[m] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88),
                                   _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
  const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88),
                                   _mm512_shuffle_f32x4(u[2], u[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xDD));
}

// Dot-product kernel for narrow N with plain (row-major, untransposed) A: vectors run
// along K, so rows of A are streamed straight from memory with full-width loads — no
// transpose, no packing of A — and each C element is a horizontal sum at the end.
// bt: op(B) transposed, NR rows of ld_bt floats (ld_bt >= K rounded up to 16), zero past
// N and past K. ROWS rows of C per step; a ragged last row group uses ROWS = 1.
template <int NR, int ROWS>
inline void dot_rows(i64 K, const float* a, i64 lda, const float* bt, i64 ld_bt, float* c,
                     i64 ldc, float alpha, float beta, i64 n) {
  __m512 acc[ROWS][NR];
#pragma GCC unroll 4
  for (int i = 0; i < ROWS; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  for (i64 p = 0; p < K; p += 16) {
    const __mmask16 km = K - p >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (K - p)) - 1);
    __m512 av[ROWS];
#pragma GCC unroll 4
    for (int i = 0; i < ROWS; ++i) av[i] = _mm512_maskz_loadu_ps(km, a + i * lda + p);
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) {
      const __m512 bv = _mm512_load_ps(bt + j * ld_bt + p);
#pragma GCC unroll 4
      for (int i = 0; i < ROWS; ++i) acc[i][j] = _mm512_fmadd_ps(av[i], bv, acc[i][j]);
    }
  }
  const __mmask16 nm = __mmask16((1u << n) - 1);
#pragma GCC unroll 4
  for (int i = 0; i < ROWS; ++i) {
    __m512 v = _mm512_mul_ps(_mm512_set1_ps(alpha), hsum16<NR>(acc[i]));
    if (beta != 0.0f)
      v = _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(nm, c + i * ldc), v);
    _mm512_mask_storeu_ps(c + i * ldc, nm, v);
  }
}

template <int NR>
void dot_kernel(i64 M, i64 n, i64 K, float alpha, const float* a, i64 lda, const float* bt,
                i64 ld_bt, float beta, float* c, i64 ldc) {
  constexpr int ROWS = NR <= 6 ? 4 : 2;  // <= 24 accumulators
  i64 i = 0;
  for (; i + ROWS <= M; i += ROWS)
    dot_rows<NR, ROWS>(K, a + i * lda, lda, bt, ld_bt, c + i * ldc, ldc, alpha, beta, n);
  for (; i < M; ++i)
    dot_rows<NR, 1>(K, a + i * lda, lda, bt, ld_bt, c + i * ldc, ldc, alpha, beta, n);
}

// N <= 12; bt holds round_up(N, 2) rows.
void sgemm_dot_avx512(i64 M, i64 N, i64 K, float alpha, const float* a, i64 lda,
                      const float* bt, i64 ld_bt, float beta, float* c, i64 ldc) {
  switch ((N + 1) / 2) {
    case 1: return dot_kernel<2>(M, N, K, alpha, a, lda, bt, ld_bt, beta, c, ldc);
    case 2: return dot_kernel<4>(M, N, K, alpha, a, lda, bt, ld_bt, beta, c, ldc);
    case 3: return dot_kernel<6>(M, N, K, alpha, a, lda, bt, ld_bt, beta, c, ldc);
    case 4: return dot_kernel<8>(M, N, K, alpha, a, lda, bt, ld_bt, beta, c, ldc);
    case 5: return dot_kernel<10>(M, N, K, alpha, a, lda, bt, ld_bt, beta, c, ldc);
    default: return dot_kernel<12>(M, N, K, alpha, a, lda, bt, ld_bt, beta, c, ldc);
  }
}

// Packing of 32-wide panels whose source runs are contiguous in p (plain A for the column
// kernels, B with trans_b for the 12x32 kernel): a transpose, 8x8 blocks in registers.
// Ragged panels and the last k % 8 steps go scalar. Same contract as the portable packer:
// element (p, r) of panel q from src[p*ld_p + (32q + r)*ld_r] to dst[(q*k + p)*32 + r],
// rows >= n_valid zero.
void pack32_avx512(const float* src, i64 ld_p, i64 ld_r, i64 n_valid, i64 k, float* dst) {
  for (i64 q0 = 0; q0 < n_valid; q0 += 32, dst += k * 32) {
    const i64 nv = std::min<i64>(32, n_valid - q0);
    const float* s = src + q0 * ld_r;
    i64 p = 0;
    if (ld_p == 1 && nv == 32) {
      for (; p + 8 <= k; p += 8) {
        for (int g = 0; g < 4; ++g)
          transpose8x8_store(s + 8 * g * ld_r + p, ld_r, dst + p * 32 + 8 * g, 32);
      }
    } else if (ld_r == 1 && nv == 32) {
      for (; p < k; ++p) {
        _mm512_store_ps(dst + p * 32, _mm512_loadu_ps(s + p * ld_p));
        _mm512_store_ps(dst + p * 32 + 16, _mm512_loadu_ps(s + p * ld_p + 16));
      }
    }
    for (; p < k; ++p) {
      float* d = dst + p * 32;
      for (i64 r = 0; r < nv; ++r) d[r] = s[p * ld_p + r * ld_r];
      for (i64 r = nv; r < 32; ++r) d[r] = 0.0f;
    }
  }
}

#define CR_COL_KERNEL(NR)                                                             \
  static const SgemmKernel col##NR = {"avx512", 32, NR, 256, 512, 4096,                \
                                      ukernel_avx512_col<NR>,                          \
                                      ukernel_avx512_col_direct_a<NR>, false, nullptr,   \
                                      pack32_avx512, nullptr, sgemm_dot_avx512, nullptr};
CR_COL_KERNEL(2)
CR_COL_KERNEL(4)
CR_COL_KERNEL(6)
CR_COL_KERNEL(8)
CR_COL_KERNEL(10)
CR_COL_KERNEL(12)
#undef CR_COL_KERNEL

// Narrow products (N <= 16 or so: the 10-class output layer, small convolutions) would
// waste most of a 32-wide tile: they get a 24x16 tile instead.
static const SgemmKernel narrow = {"avx512", 24, 16, 144, 384, 480, ukernel_avx512<24, 1>,
                                   ukernel_avx512_direct_a<24, 1>, true, nullptr,
                                   pack_rows<24>, nullptr, nullptr, nullptr};

// 8x32: for a single B panel (N <= 32) whose M is a multiple of 8 but not of 12 (batch 32),
// where the 12-row tile would compute a third of a panel of padding.
static const SgemmKernel wide8 = {"avx512", 8, 32, 1536, 512, 480, ukernel_avx512<8, 2>,
                                  ukernel_avx512_direct_a<8, 2>, true, nullptr,
                                  pack_rows<8>, pack32_avx512, nullptr, nullptr};

// N <= 12: the column kernel with NR = N rounded up to even; up to 16 (or any N that a
// 32-wide tile would mostly pad): 24x16 rows; else the 12x32 kernel (8x32 when that fits
// M better and there is a single B panel).
const SgemmKernel* select_avx512(const SgemmKernel* wide, i64 M, i64 N) {
  static const SgemmKernel* const col[] = {&col2, &col4, &col6, &col8, &col10, &col12};
  if (N <= 12) return col[(std::max<i64>(N, 1) - 1) / 2];
  if (double((N + 15) / 16 * 16) * 1.15 < double((N + 31) / 32 * 32)) return &narrow;
  if (N <= 32 && (M + 7) / 8 * 8 < (M + 11) / 12 * 12) return &wide8;
  return wide;
}

const SgemmKernel sgemm_kernel = {"avx512",       12, 32, 1536, 512, 480,
                                  ukernel_avx512<12, 2>,
                                  ukernel_avx512_direct_a<12, 2>,
                                  true,           select_avx512,
                                  pack_rows<12>, pack32_avx512,
                                  nullptr,        sgemm_rows_fma<Vec16>};

}  // namespace avx512
}  // namespace cr
