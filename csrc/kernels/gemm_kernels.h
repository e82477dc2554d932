// Internal interface between the portable GEMM driver (gemm.cpp: blocking, packing, threads)
// and the per-target micro-kernels (gemm_ukernel_{generic,avx2,avx512}.cpp, hand-written per
// target, each defining cr::<target>::sgemm_kernel; chosen as kernels/dispatch.h says).
// Not part of the public API; the Python test hook (sgemm_variant) is declared here too.
// Only fn is required of a target; the other entry points are optional fast paths (the
// AVX-512 target has them all), each with a defined fallback in the driver.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include "common.h"
#include "kernels/cpu.h"
#include "kernels/dispatch.h"
#include "kernels/gemm.h"

namespace cr {

// One micro-kernel call computes an MR x NR tile:
//   C[0:m_rem, 0:n_rem] = alpha * Ap·Bp + beta * C      (beta == 0: C is not read)
// a: packed A micro-panel, k steps of MR floats (row i of the tile at a[p*MR + i]);
// b: packed B micro-panel, k steps of NR floats; both zero-padded past the matrix edge,
// so the k loop never branches. Only the store looks at m_rem <= MR, n_rem <= NR.
// k >= 1. a and b are 64-byte aligned.
using sgemm_ukernel_fn = void (*)(i64 k, const float* a, const float* b, float* c, i64 ldc,
                                  float alpha, float beta, i64 m_rem, i64 n_rem);

// Variant for products with a single B panel: reads op(A) in place, element (i, p) at
// a[i*rs_i + p*rs_p] with all MR rows in bounds (a packed panel is rs_i = 1, rs_p = MR),
// and B panel rows b_rs_p apart (NR when packed; ldb when read in place, only if N == NR).
using sgemm_ukernel_direct_a_fn = void (*)(i64 k, const float* a, i64 rs_i, i64 rs_p,
                                           const float* b, i64 b_rs_p, float* c, i64 ldc,
                                           float alpha, float beta, i64 m_rem, i64 n_rem);

// Packs n_valid rows (or columns) into R-wide panels: element (p, r) of panel q from
// src[p*ld_p + (q*R + r)*ld_r] to dst[(q*k + p)*R + r], zero past n_valid.
using sgemm_pack_fn = void (*)(const float* src, i64 ld_p, i64 ld_r, i64 n_valid, i64 k,
                               float* dst);

// Dot-product form for narrow N (<= 12) with plain row-major op(A): C (M x N) from rows of
// A (vectors along K) and bt = op(B) transposed, round_up(N, 2) rows of ld_bt floats
// (ld_bt >= K rounded up to 16, 64-byte aligned rows), zero past N and past K.
using sgemm_dot_fn = void (*)(i64 M, i64 N, i64 K, float alpha, const float* a, i64 lda,
                              const float* bt, i64 ld_bt, float beta, float* c, i64 ldc);

// Row form for a few rows (M <= kRowsMaxM) of plain row-major A and B, with alpha == 1 and
// beta 0 or 1: C (M x N) = A·B + beta*C straight from B, no packing. A batch of one sample
// (inference) then reads each weight once, where the packed path first copies all of B.
// Sums over K in blocks of kc, each element's products in order with FMA, as the
// micro-kernels do: the same bits as the packed path.
using sgemm_rows_fn = void (*)(i64 M, i64 N, i64 K, i64 kc, const float* a, i64 lda,
                               const float* b, i64 ldb, float beta, float* c, i64 ldc);
constexpr i64 kRowsMaxM = 4;

struct SgemmKernel {
  const char* name;
  int mr, nr;          // register tile
  i64 mc, kc, nc;      // cache blocks: A block mc x kc, B block kc x nc
  sgemm_ukernel_fn fn;
  sgemm_ukernel_direct_a_fn fn_direct_a;  // optional: single-B-panel path (nullptr)
  bool direct_a_any_stride;  // fn_direct_a also takes rs_i != 1 (else only rs_i == 1)
  // Optional: the kernel (of this target) to use for an M x N product; nullptr means
  // always this one.
  const SgemmKernel* (*select)(const SgemmKernel* self, i64 M, i64 N);
  // Optional target-specific packer for A panels (R = mr), e.g. an in-register transpose;
  // nullptr: the portable packer.
  sgemm_pack_fn pack_a;
  sgemm_pack_fn pack_b;  // same, for B panels (R = nr)
  sgemm_dot_fn fn_dot;   // optional: narrow N, plain A, long K (see sgemm_dot_fn)
  sgemm_rows_fn fn_rows;  // optional: a few rows (see sgemm_rows_fn)
};

// cr::generic::sgemm_kernel, cr::avx2::sgemm_kernel, cr::avx512::sgemm_kernel.
CR_DECLARE_PER_TARGET(SgemmKernel, sgemm_kernel)

// Generic tail for SIMD kernels: merge a full MR x NR tile computed with alpha=1, beta=0
// into the m_rem x n_rem corner of C. Internal linkage: each target file compiles its own
// copy with its own flags, so the linker cannot give the generic kernel an AVX copy.
namespace {
inline void sgemm_store_edge(const float* tile, i64 nr, float* c, i64 ldc, float alpha,
                             float beta, i64 m_rem, i64 n_rem) {
  for (i64 i = 0; i < m_rem; ++i)
    for (i64 j = 0; j < n_rem; ++j) {
      float v = alpha * tile[i * nr + j];
      c[i * ldc + j] = beta == 0.0f ? v : v + beta * c[i * ldc + j];
    }
}

// sgemm_rows_fn for a target whose micro-kernel accumulates with FMA (compiled in that
// target's file, with its flags; V is the target's widest float vector as a GCC vector type).
// Blocks of 8 vectors of columns of C (128 columns with AVX-512, 64 with AVX2) are summed in
// registers; the columns past the last whole block take a loop with the sums in L1. Each
// element's products are added in p order, so the bits equal the packed path's. Multiply-adds
// are contracted to FMA (GNU mode, -ffp-contract=fast), as std::fma is in the tail: tests
// compare the bits with the packed path. Measured at M = 1, 1 thread, against walking each
// block down all K rows: 784x512 24 vs 26-29 us, 512x1024 45 vs 57 us, 2048x2048 (from
// memory) 0.69 vs 1.03 ms, the rest within noise.
template <typename V>
inline void sgemm_rows_fma(i64 M, i64 N, i64 K, i64 kc, const float* a, i64 lda, const float* b,
                           i64 ldb, float beta, float* c, i64 ldc) {
  constexpr int NV = 8;
  constexpr i64 L = i64(sizeof(V) / sizeof(float)), W = NV * L;
  auto load = [](const float* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  };
  for (i64 i = 0; i < M; ++i) {
    const float* ai = a + i * lda;
    float* ci = c + i * ldc;
    // Whole blocks, up to kSpan columns at a time. The p loop goes in steps of kRowStep
    // rows; within a step every block of the span is visited, its sums loaded from `part`
    // into registers and stored back. B is then read kRowStep whole row segments at a time
    // (up to 4 KB each, contiguous), which the hardware prefetchers follow, where one block
    // down all K rows would read 512 bytes per row at the row stride.
    constexpr i64 kSpan = 1024, kRowStep = 32;
    const i64 n_whole = N / W * W;
    for (i64 js = 0; js < n_whole; js += kSpan) {
      const i64 span = std::min(kSpan, n_whole - js);
      for (i64 pc = 0; pc < K; pc += kc) {
        const i64 kb = std::min(kc, K - pc);
        alignas(64) float part[kSpan];
        std::memset(part, 0, sizeof(float) * span);
        for (i64 p0 = pc; p0 < pc + kb; p0 += kRowStep) {
          const i64 p1 = std::min(p0 + kRowStep, pc + kb);
          for (i64 j0 = js; j0 < js + span; j0 += W) {
            float* pj = part + (j0 - js);
            V acc[NV];
#pragma GCC unroll 8
            for (int q = 0; q < NV; ++q) acc[q] = load(pj + q * L);
            for (i64 p = p0; p < p1; ++p) {
              const float s = ai[p];
              const float* bp = b + p * ldb + j0;
#pragma GCC unroll 8
              for (int q = 0; q < NV; ++q) acc[q] += s * load(bp + q * L);
            }
#pragma GCC unroll 8
            for (int q = 0; q < NV; ++q) std::memcpy(pj + q * L, &acc[q], sizeof acc[q]);
          }
        }
        float* cj = ci + js;
        const bool first = pc == 0 && beta == 0.0f;
        // beta == 1 (or a later K block): one rounding, as the micro-kernels' FMA
        for (i64 j = 0; j < span; ++j) cj[j] = first ? part[j] : part[j] + cj[j];
      }
    }
    const i64 j0 = n_whole;
    if (j0 == N) continue;
    const i64 w = N - j0;  // < W
    for (i64 pc = 0; pc < K; pc += kc) {
      const i64 kb = std::min(kc, K - pc);
      alignas(64) float acc[W] = {};
      for (i64 p = pc; p < pc + kb; ++p) {
        const float s = ai[p];
        const float* bp = b + p * ldb + j0;
#pragma omp simd
        for (i64 j = 0; j < w; ++j) acc[j] = std::fma(s, bp[j], acc[j]);
      }
      float* cj = ci + j0;
      if (pc == 0 && beta == 0.0f) {
        for (i64 j = 0; j < w; ++j) cj[j] = acc[j];
      } else {
        for (i64 j = 0; j < w; ++j) cj[j] = acc[j] + cj[j];
      }
    }
  }
}
}  // namespace

// The kernel table entry for a target, or nullptr if it is not compiled in or not
// runnable on this CPU.
const SgemmKernel* sgemm_kernel_for(CpuTarget t);

// The portable driver around one kernel (blocking from `kern`); benchmarks pass tuned copies.
void sgemm_with_kernel(const SgemmKernel& kern, bool trans_a, bool trans_b, i64 M, i64 N, i64 K,
                       float alpha, const float* A, i64 lda, const float* B, i64 ldb,
                       float beta, float* C, i64 ldc, const GemmEpilogue* ep = nullptr,
                       const PackedB* packed = nullptr);

// The panels of `packed` if they were packed (sgemm_pack_b) from this B for this kernel and
// shape, else null: then the product packs B itself.
const float* packed_panels(const PackedB* packed, const void* kern, bool trans_b, i64 N, i64 K,
                           const float* B, i64 ldb);

// sgemm forced onto one target's micro-kernel (test hook and benchmarks). Throws
// std::invalid_argument if that target cannot run here.
void sgemm_variant(CpuTarget t, bool trans_a, bool trans_b, i64 M, i64 N, i64 K, float alpha,
                   const float* A, i64 lda, const float* B, i64 ldb, float beta, float* C,
                   i64 ldc);

}  // namespace cr
