// The fast float32 GEMM driver (BLIS-style): cache blocking, packing of A and B into
// zero-padded micro-panels (packing absorbs the transposes), OpenMP over sub-rectangles of C,
// and the micro-kernel of the target chosen once at run time (kernels/dispatch.h). Portable
// C++: all CPU-specific code lives in the gemm_ukernel_*.cpp micro-kernels. Also the simple
// float64 dgemm (gradient checks). Not here: the naive reference twins (gemm_ref.cpp).
#include "kernels/gemm.h"
#include "kernels/activations.h"

#include <algorithm>
#include <cstring>

#include "kernels/cpu.h"
#include "kernels/gemm_kernels.h"
#include "profile.h"

namespace cr {

namespace {

// The dot-product form pays ~45 shuffles per output row group at the end and a transpose
// of B up front: worth it only once K and M are long enough (measured: at M = 32 the
// column kernel wins, at M = 128 the dot form by ~30%).
constexpr i64 kDotMinK = 128;
constexpr i64 kDotMinM = 64;

// The rows path reads each weight once and does one multiply-add per weight per row: it is
// bound by reading B (from L2 when B fits there), not by arithmetic. So it goes parallel at a
// lower product size than the blocked path: each thread then reads only its own part of B,
// the same one on every call (a fixed split), which stays in that core's cache. 2^16
// (256 KB of weights per thread) rather than 2^17 also splits the MNIST MLP's 512x256 layer:
// its one-sample core call at 2 threads went from 20.5-22.8 to 19.1-19.5 us (medians of 3
// runs each). The layer after a split one finds the worker still spinning (GOMP_SPINCOUNT),
// so a second region costs little even when the first had to wake it.
constexpr i64 kRowsMinMacsPerThread = i64(1) << 16;
constexpr i64 kRowsColumnGrain = 128;  // columns per split unit: whole register blocks

float* thread_buffer(int which, i64 n);

// Threads split the columns of C into kRowsColumnGrain-wide units. When K is exactly two K
// blocks, they also split K: half of the threads sum the first block into C, the other half
// the last block into a buffer, and after a barrier C = last + C, exactly the addition the
// serial loop makes for its last block (so the bits do not change). Each thread then reads
// whole contiguous rows of B, where a column split alone reads part of every row: the MNIST
// MLP's 784x512 layer at 2 threads went from 10.9 to 8.0 us per one-sample call, the whole
// MLP from 18.4 to 12.7 us (core call; 1 thread: 36 us). With more blocks the last one is too
// small a share to balance the split (and only the last block's sum may be moved).
void sgemm_rows(sgemm_rows_fn rows, i64 M, i64 N, i64 K, i64 kc, const float* A, i64 lda,
                const float* B, i64 ldb, float beta, float* C, i64 ldc) {
#ifdef _OPENMP
  const i64 macs = M * N * K, units = (N + kRowsColumnGrain - 1) / kRowsColumnGrain;
  const int most = int(std::min<i64>(omp_get_max_threads(), macs / kRowsMinMacsPerThread));
  if (most >= 2 && !omp_in_parallel()) {
    const i64 k_last = (K - 1) / kc * kc;  // where the last K block starts
    const bool split_k = k_last == kc && 2 * (K - kc) >= kc;  // two blocks, the last >= half
    const int groups = split_k ? 2 : 1;  // K groups
    const int tn = int(std::min<i64>(most / groups, units));  // column groups
    if (tn * groups >= 2) {
      float* last = split_k ? thread_buffer(1, M * N) : nullptr;  // the last block's sums
      const int tasks = tn * groups;
      auto cols = [&](int g, i64& j0, i64& j1) {
        j0 = std::min(N, units * g / tn * kRowsColumnGrain);
        j1 = std::min(N, units * (g + 1) / tn * kRowsColumnGrain);
      };
#pragma omp parallel num_threads(tasks)
      {
        // OpenMP may grant fewer threads than asked: each takes every nth task.
        const int nth = omp_get_num_threads();
        for (int task = omp_get_thread_num(); task < tasks; task += nth) {
          i64 j0, j1;
          cols(task / groups, j0, j1);
          if (j1 <= j0) continue;
          if (task % groups == 0)
            rows(M, j1 - j0, split_k ? k_last : K, kc, A, lda, B + j0, ldb, beta, C + j0, ldc);
          else
            rows(M, j1 - j0, K - k_last, kc, A + k_last, lda, B + k_last * ldb + j0, ldb, 0.0f,
                 last + j0, N);
        }
        if (split_k) {
#pragma omp barrier
          for (int task = omp_get_thread_num(); task < tasks; task += nth) {
            i64 j0, j1;
            cols(task / 2, j0, j1);
            const i64 mid = j0 + (j1 - j0) / 2, a = task % 2 ? mid : j0, b = task % 2 ? j1 : mid;
            for (i64 i = 0; i < M; ++i)
              for (i64 j = a; j < b; ++j) C[i * ldc + j] = last[i * N + j] + C[i * ldc + j];
          }
        }
      }
      return;
    }
  }
#endif
  rows(M, N, K, kc, A, lda, B, ldb, beta, C, ldc);
}

i64 ceil_div(i64 a, i64 b) { return (a + b - 1) / b; }
i64 round_up(i64 a, i64 b) { return ceil_div(a, b) * b; }

// Pack a block of R-wide micro-panels: element (p, r) of panel q is read from
// src[p*ld_p + (q*R + r)*ld_r] and written to dst[(q*k + p)*R + r]; rows r >= n_valid are 0.
// The two source layouts (r contiguous or p contiguous) are the transposed / plain cases.
template <int R>
void pack_panels(const float* src, i64 ld_p, i64 ld_r, i64 n_valid, i64 k, float* dst) {
  for (i64 q0 = 0; q0 < n_valid; q0 += R, dst += k * R) {
    const i64 nv = std::min<i64>(R, n_valid - q0);
    const float* s = src + q0 * ld_r;
    if (ld_r == 1) {
      if (nv == R) {
        for (i64 p = 0; p < k; ++p) {
          const float* sp = s + p * ld_p;
          float* d = dst + p * R;
          for (int r = 0; r < R; ++r) d[r] = sp[r];
        }
      } else {
        for (i64 p = 0; p < k; ++p) {
          const float* sp = s + p * ld_p;
          float* d = dst + p * R;
          for (i64 r = 0; r < nv; ++r) d[r] = sp[r];
          for (i64 r = nv; r < R; ++r) d[r] = 0.0f;
        }
      }
    } else {
      // p contiguous in the source: go in chunks of 8 p so each source row is read as a
      // short contiguous run and the writes stay within a few cache lines.
      constexpr i64 P = 8;
      i64 p = 0;
      if (nv == R) {
        for (; p + P <= k; p += P) {
          float* d = dst + p * R;
          for (int r = 0; r < R; ++r) {
            const float* sr = s + r * ld_r + p;
            for (i64 pp = 0; pp < P; ++pp) d[pp * R + r] = sr[pp];
          }
        }
      }
      for (; p < k; ++p) {
        float* d = dst + p * R;
        for (i64 r = 0; r < nv; ++r) d[r] = s[r * ld_r + p];
        for (i64 r = nv; r < R; ++r) d[r] = 0.0f;
      }
    }
  }
}

// Any other width (small B panels of the narrow kernels): plain loops.
void pack_any(int R, const float* src, i64 ld_p, i64 ld_r, i64 n_valid, i64 k, float* dst) {
  for (i64 q0 = 0; q0 < n_valid; q0 += R, dst += k * R) {
    const i64 nv = std::min<i64>(R, n_valid - q0);
    const float* s = src + q0 * ld_r;
    for (i64 p = 0; p < k; ++p) {
      float* d = dst + p * R;
      for (i64 r = 0; r < nv; ++r) d[r] = s[p * ld_p + r * ld_r];
      for (i64 r = nv; r < R; ++r) d[r] = 0.0f;
    }
  }
}

void pack(int R, const float* src, i64 ld_p, i64 ld_r, i64 n_valid, i64 k, float* dst) {
  if (n_valid <= 0) return;
  switch (R) {
    case 4: return pack_panels<4>(src, ld_p, ld_r, n_valid, k, dst);
    case 6: return pack_panels<6>(src, ld_p, ld_r, n_valid, k, dst);
    case 8: return pack_panels<8>(src, ld_p, ld_r, n_valid, k, dst);
    case 12: return pack_panels<12>(src, ld_p, ld_r, n_valid, k, dst);
    case 14: return pack_panels<14>(src, ld_p, ld_r, n_valid, k, dst);
    case 24: return pack_panels<24>(src, ld_p, ld_r, n_valid, k, dst);
    case 16: return pack_panels<16>(src, ld_p, ld_r, n_valid, k, dst);
    case 32: return pack_panels<32>(src, ld_p, ld_r, n_valid, k, dst);
    case 48: return pack_panels<48>(src, ld_p, ld_r, n_valid, k, dst);
    default: return pack_any(R, src, ld_p, ld_r, n_valid, k, dst);
  }
}

// Apply the epilogue to rows [0, m) x columns [0, n) of a finished block of C whose first
// column is column j0 of the whole product (the bias index): the activation table's fused
// bias + activation row (kernels/activations.h), the same one Dense and Conv2D use.
void apply_epilogue(const GemmEpilogue* ep, float* c, i64 ldc, i64 m, i64 n, i64 j0) {
  if (!ep) return;
  const float* b = ep->bias + j0;
  const float alpha = ep->alpha;
  dispatch_act(Act(ep->act), [&](auto op) {
    using Op = decltype(op);
    if constexpr (!Op::row_coupled)  // sgemm_bias_act admits element-wise activations only
      for (i64 i = 0; i < m; ++i) bias_act_row<Op>(c + i * ldc, b, n, alpha);
  });
}

// Before any parallel region: the code is in the table and element-wise (softmax couples a
// row, so it cannot run on a tile).
void check_epilogue(const GemmEpilogue& ep) {
  if (ep.act < 0 || ep.act >= kActCount) fail("sgemm_bias_act: unknown activation code ", ep.act);
  if (act_row_coupled(Act(ep.act)))
    fail("sgemm_bias_act: ", act_name(Act(ep.act)), " couples a row and cannot be a tile epilogue");
}

// Per-thread packing buffers, grown on first need and reused: no allocation per call in
// steady state. (OpenMP keeps its worker threads alive, so these persist too.)
float* thread_buffer(int which, i64 n) {
  static thread_local avec<float> bufs[2];
  avec<float>& b = bufs[which];
  if (static_cast<i64>(b.size()) < n) {
    b = avec<float>();  // release first: never hold old and new at once
    b.resize(static_cast<std::size_t>(n));
  }
  return b.data();
}

// Every packing of the driver goes through these two (and the dot form's transpose of B):
// the step profile's gemm_pack phase is timed here, on the thread that runs the training
// call (profile.h: what a multi-threaded product counts).
void pack_a_panels(const SgemmKernel& kern, const float* src, i64 ld_p, i64 ld_i, i64 m,
                   i64 k, float* dst) {
  const profile::PhaseScope timed(profile::Phase::GemmPack);
  if (kern.pack_a)
    kern.pack_a(src, ld_p, ld_i, m, k, dst);
  else
    pack(kern.mr, src, ld_p, ld_i, m, k, dst);
}

void pack_b_panels(const SgemmKernel& kern, const float* src, i64 ld_p, i64 ld_j, i64 n,
                   i64 k, float* dst) {
  const profile::PhaseScope timed(profile::Phase::GemmPack);
  if (kern.pack_b)
    kern.pack_b(src, ld_p, ld_j, n, k, dst);
  else
    pack(kern.nr, src, ld_p, ld_j, n, k, dst);
}

// N fits one B panel (the 10-class layer, a 32-unit layer, small convolutions): every A
// element is used once, so A is read in place where the kernel can, or packed one
// micro-panel at a time right before use (it stays in L1 instead of a whole packed block
// round-tripping through L2). A plain B exactly one panel wide is read in place too.
void sgemm_serial_one_panel(const SgemmKernel& kern, i64 M, i64 N, i64 K, float alpha,
                            const float* A, i64 a_ld_i, i64 a_ld_p, const float* B,
                            i64 b_ld_p, i64 b_ld_j, float beta, float* C, i64 ldc,
                            const GemmEpilogue* ep, i64 j0) {
  const i64 MR = kern.mr, NR = kern.nr;
  const bool direct = kern.fn_direct_a != nullptr;
  const bool a_in_place = direct && (kern.direct_a_any_stride || a_ld_i == 1);
  const bool b_in_place = direct && b_ld_j == 1 && N == NR;
  // With both operands read in place nothing is packed: no reason to split K.
  const i64 kc = a_in_place && b_in_place ? K : ceil_div(K, ceil_div(K, kern.kc));
  float* a_pack = thread_buffer(0, MR * kc);
  float* b_pack = thread_buffer(1, NR * kc);
  for (i64 pc = 0; pc < K; pc += kc) {
    const i64 kb = std::min(kc, K - pc);
    const float beta_k = pc == 0 ? beta : 1.0f;
    const float* b = b_in_place ? B + pc * b_ld_p : b_pack;
    const i64 b_rs_p = b_in_place ? b_ld_p : NR;
    if (!b_in_place) pack_b_panels(kern, B + pc * b_ld_p, b_ld_p, b_ld_j, N, kb, b_pack);
    const bool last = pc + kb >= K;
    for (i64 ir = 0; ir < M; ir += MR) {
      const i64 mr = std::min(MR, M - ir);
      const float* a = A + ir * a_ld_i + pc * a_ld_p;
      float* c = C + ir * ldc;
      if (a_in_place && mr == MR) {
        kern.fn_direct_a(kb, a, a_ld_i, a_ld_p, b, b_rs_p, c, ldc, alpha, beta_k, MR, N);
      } else {
        pack_a_panels(kern, a, a_ld_p, a_ld_i, mr, kb, a_pack);
        if (direct)
          kern.fn_direct_a(kb, a_pack, 1, MR, b, b_rs_p, c, ldc, alpha, beta_k, mr, N);
        else
          kern.fn(kb, a_pack, b_pack, c, ldc, alpha, beta_k, mr, N);
      }
      if (last) apply_epilogue(ep, c, ldc, mr, N, j0);
    }
  }
}

// C = alpha*op(A)op(B) + beta*C on one thread. M, N, K >= 1, alpha != 0.
void sgemm_serial(const SgemmKernel& kern, bool ta, bool tb, i64 M, i64 N, i64 K, float alpha,
                  const float* A, i64 lda, const float* B, i64 ldb, float beta, float* C,
                  i64 ldc, const GemmEpilogue* ep = nullptr, i64 j0 = 0,
                  const float* packed_b = nullptr, i64 packed_np = 0) {
  const i64 MR = kern.mr, NR = kern.nr;
  // op(A)(i, p) = A[i*lda + p] or A[p*lda + i]; op(B)(p, j) = B[p*ldb + j] or B[j*ldb + p].
  const i64 a_ld_p = ta ? lda : 1, a_ld_i = ta ? 1 : lda;
  const i64 b_ld_p = tb ? 1 : ldb, b_ld_j = tb ? ldb : 1;
  // Narrow N over plain A with enough K to amortise the horizontal sums: dot products.
  if (kern.fn_dot && N <= 12 && a_ld_p == 1 && K >= kDotMinK && M >= kDotMinM) {
    const i64 ld_bt = round_up(K, 16), rows = round_up(N, 2);
    float* bt = thread_buffer(1, rows * ld_bt);
    {
      const profile::PhaseScope timed(profile::Phase::GemmPack);
      for (i64 j = 0; j < rows; ++j) {
        float* d = bt + j * ld_bt;
        if (j < N)
          for (i64 p = 0; p < K; ++p) d[p] = B[p * b_ld_p + j * b_ld_j];
        else
          for (i64 p = 0; p < K; ++p) d[p] = 0.0f;
        for (i64 p = K; p < ld_bt; ++p) d[p] = 0.0f;
      }
    }
    kern.fn_dot(M, N, K, alpha, A, lda, bt, ld_bt, beta, C, ldc);
    return apply_epilogue(ep, C, ldc, M, N, j0);  // N <= 12: the whole C is a few KB
  }
  if (N <= NR)
    return sgemm_serial_one_panel(kern, M, N, K, alpha, A, a_ld_i, a_ld_p, B, b_ld_p, b_ld_j,
                                  beta, C, ldc, ep, j0);
  // Balanced blocks: K = 784 with kc = 512 gives 2 x 392 rather than 512 + 272.
  const i64 kc = ceil_div(K, ceil_div(K, kern.kc));
  const i64 mc = round_up(ceil_div(M, ceil_div(M, kern.mc)), MR);
  const i64 nc = round_up(ceil_div(N, ceil_div(N, kern.nc)), NR);
  float* a_pack = thread_buffer(0, mc * kc);
  // packed_b (sgemm_pack_b): all of op(B), K block after K block, each packed_np columns
  // wide (the whole product's N, rounded up to NR); this sub-product starts at column j0.
  float* b_pack = packed_b ? nullptr : thread_buffer(1, nc * kc);

  for (i64 ic = 0; ic < M; ic += mc) {
    const i64 mb = std::min(mc, M - ic);
    for (i64 pc = 0; pc < K; pc += kc) {
      const i64 kb = std::min(kc, K - pc);
      const float beta_k = pc == 0 ? beta : 1.0f;
      const bool last = pc + kb >= K;
      pack_a_panels(kern, A + ic * a_ld_i + pc * a_ld_p, a_ld_p, a_ld_i, mb, kb, a_pack);
      for (i64 jc = 0; jc < N; jc += nc) {
        const i64 nb = std::min(nc, N - jc);
        const float* bp = packed_b ? packed_b + pc * packed_np + (j0 + jc) * kb : b_pack;
        if (!packed_b)
          pack_b_panels(kern, B + pc * b_ld_p + jc * b_ld_j, b_ld_p, b_ld_j, nb, kb, b_pack);
        // A micro-panel (MR x kb) stays in L1 while the B block streams from L2.
        for (i64 ir = 0; ir < mb; ir += MR) {
          const float* ap = a_pack + ir * kb;
          float* c = C + (ic + ir) * ldc + jc;
          for (i64 jr = 0; jr < nb; jr += NR) {
            const i64 mr = std::min(MR, mb - ir), nr = std::min(NR, nb - jr);
            kern.fn(kb, ap, bp + jr * kb, c + jr, ldc, alpha, beta_k, mr, nr);
            if (last) apply_epilogue(ep, c + jr, ldc, mr, nr, j0 + jc + jr);
          }
        }
      }
    }
  }
}

// C = beta*C for the degenerate cases (K == 0 or alpha == 0); beta == 0 writes zeros.
void scale_c(i64 M, i64 N, float beta, float* C, i64 ldc) {
  for (i64 i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    if (beta == 0.0f)
      std::memset(c, 0, sizeof(float) * std::size_t(N));
    else if (beta != 1.0f)
      for (i64 j = 0; j < N; ++j) c[j] *= beta;
  }
}

}  // namespace

void sgemm_with_kernel(const SgemmKernel& wide, bool ta, bool tb, i64 M, i64 N, i64 K,
                       float alpha, const float* A, i64 lda, const float* B, i64 ldb,
                       float beta, float* C, i64 ldc, const GemmEpilogue* ep,
                       const PackedB* packed) {
  if (M <= 0 || N <= 0) return;
  // The whole call, fork/join included, less the packing inside it (profile.h).
  const profile::PhaseScope timed(profile::Phase::GemmCompute);
  if (K <= 0 || alpha == 0.0f) {
    scale_c(M, N, beta, C, ldc);
    return apply_epilogue(ep, C, ldc, M, N, 0);
  }
  // The target may have a kernel whose tile fits this M x N better (N = 10, M = 32).
  const SgemmKernel& kern = wide.select ? *wide.select(&wide, M, N) : wide;
  // A few rows (a batch of one sample): B read in place, not packed. The same K blocks and
  // rounding as the packed path, so a row's result does not depend on the batch it comes in,
  // except where a batch of 64 rows or more takes the dot form (N <= 12, K >= 128).
  if (M <= kRowsMaxM && !ta && !tb && wide.fn_rows && alpha == 1.0f &&
      (beta == 0.0f || beta == 1.0f)) {
    // The K blocks the packed path would use: one panel wide, it reads B (and A, where the
    // kernel can) in place and then does not split K (sgemm_serial_one_panel).
    const bool whole_k = N == kern.nr && kern.fn_direct_a && (kern.direct_a_any_stride || lda == 1);
    sgemm_rows(wide.fn_rows, M, N, K, whole_k ? K : ceil_div(K, ceil_div(K, kern.kc)), A, lda, B,
               ldb, beta, C, ldc);
    return apply_epilogue(ep, C, ldc, M, N, 0);
  }

  const i64 MR = kern.mr, NR = kern.nr;
  // Panels packed beforehand for exactly this B and kernel: read in place by the blocked path
  // (the dot form and the one-panel path of a thread's narrow share ignore them).
  const float* packed_b = packed_panels(packed, &kern, tb, N, K, B, ldb);
  const i64 packed_np = round_up(N, NR);
  int nt = 1;
#ifdef _OPENMP
  if (M * N * K >= 2 * kMinMacsPerThread && !omp_in_parallel())
    nt = int(std::min<i64>(omp_get_max_threads(), M * N * K / kMinMacsPerThread));
#endif
  const i64 blocks_m = ceil_div(M, MR), blocks_n = ceil_div(N, NR);
  // Split C into a tm x tn grid of independent sub-products (each thread packs its own
  // panels: no barriers, no shared buffers). Use as many threads as the tiles allow, and
  // among those grids the one with the smallest per-thread tile plus the packing each
  // thread repeats (its A rows and B columns, K deep: rows + cols per unit of K; rows only
  // when B is packed beforehand).
  const double b_pack_weight = packed_b ? 0.0 : 16.0;
  int best_tm = 1, best_tn = 1;
  if (nt > 1) {
    double best = -1.0;
    for (int t = nt; t >= 2 && best < 0; --t) {
      for (int tm = 1; tm <= t; ++tm) {
        if (t % tm) continue;
        const int tn = t / tm;
        if (tm > blocks_m || tn > blocks_n) continue;
        const double rows = double(ceil_div(blocks_m, tm) * MR);
        const double cols = double(ceil_div(blocks_n, tn) * NR);
        const double cost = rows * cols + 16.0 * rows + b_pack_weight * cols;
        if (best < 0 || cost < best * 0.999) best = cost, best_tm = tm, best_tn = tn;
      }
    }
    nt = best_tm * best_tn;
  }
  if (nt <= 1)
    return sgemm_serial(kern, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ep, 0,
                        packed_b, packed_np);

#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
  {
    // OpenMP may grant fewer threads than asked (nested regions, OMP_THREAD_LIMIT, dynamic
    // teams): each thread takes every team-size-th tile of the nt-tile grid, so all are done.
    const int nth = omp_get_num_threads();
    for (int tile = omp_get_thread_num(); tile < nt; tile += nth) {
      const int ti = tile / best_tn, tj = tile % best_tn;
      const i64 i0 = blocks_m * ti / best_tm * MR;
      const i64 i1 = std::min(M, blocks_m * (ti + 1) / best_tm * MR);
      const i64 j0 = blocks_n * tj / best_tn * NR;
      const i64 j1 = std::min(N, blocks_n * (tj + 1) / best_tn * NR);
      if (i1 > i0 && j1 > j0) {
        const float* a = A + (ta ? i0 : i0 * lda);
        const float* b = B + (tb ? j0 * ldb : j0);
        sgemm_serial(kern, ta, tb, i1 - i0, j1 - j0, K, alpha, a, lda, b, ldb, beta,
                     C + i0 * ldc + j0, ldc, ep, j0, packed_b, packed_np);
      }
    }
  }
#endif
}

namespace {
const PerTarget<SgemmKernel> kSgemmKernels = CR_PER_TARGET(sgemm_kernel);

// The micro-kernel of the process's target, resolved once.
const SgemmKernel& sgemm_kernel_for_cpu() {
  static const SgemmKernel& kern = chosen_table(kSgemmKernels);
  return kern;
}
}  // namespace

const SgemmKernel* sgemm_kernel_for(CpuTarget t) { return table_for(kSgemmKernels, t); }

void sgemm_variant(CpuTarget t, bool ta, bool tb, i64 M, i64 N, i64 K, float alpha,
                   const float* A, i64 lda, const float* B, i64 ldb, float beta, float* C,
                   i64 ldc) {
  const SgemmKernel* k = sgemm_kernel_for(t);
  if (!k) fail("sgemm: kernel variant '", cpu_target_name(t), "' cannot run on this CPU");
  sgemm_with_kernel(*k, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nullptr, nullptr);
}

void sgemm(bool ta, bool tb, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda,
           const float* B, i64 ldb, float beta, float* C, i64 ldc) {
  sgemm_with_kernel(sgemm_kernel_for_cpu(), ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C,
                    ldc, nullptr, nullptr);
}

void sgemm_bias_act(bool ta, bool tb, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda,
                    const float* B, i64 ldb, float* C, i64 ldc, const GemmEpilogue& ep,
                    const PackedB* packed) {
  check_epilogue(ep);
  sgemm_with_kernel(sgemm_kernel_for_cpu(), ta, tb, M, N, K, alpha, A, lda, B, ldb, 0.0f, C,
                    ldc, &ep, packed);
}

// The panels of every K block, as sgemm_serial's blocked path packs them, each block
// round_up(N, NR) columns wide; the kernel is the one a product of many rows selects.
void sgemm_pack_b(bool tb, i64 N, i64 K, const float* B, i64 ldb, PackedB& out) {
  out.kernel_ = nullptr;
  if (N <= 0 || K <= 0) return;
  const SgemmKernel& wide = sgemm_kernel_for_cpu();
  constexpr i64 kManyRows = i64(1) << 20;
  const SgemmKernel& kern = wide.select ? *wide.select(&wide, kManyRows, N) : wide;
  if (N <= kern.nr || (kern.fn_dot && N <= 12)) return;  // never packed whole there
  const i64 kc = ceil_div(K, ceil_div(K, kern.kc)), np = round_up(N, kern.nr);
  out.panels_.resize(std::size_t(np * K));
  const i64 b_ld_p = tb ? 1 : ldb, b_ld_j = tb ? ldb : 1;
  for (i64 pc = 0; pc < K; pc += kc)
    pack_b_panels(kern, B + pc * b_ld_p, b_ld_p, b_ld_j, N, std::min(kc, K - pc),
                  out.panels_.data() + pc * np);
  out.kernel_ = &kern;
  out.source_ = B;
  out.trans_b_ = tb;
  out.N_ = N;
  out.K_ = K;
  out.ldb_ = ldb;
}

const float* packed_panels(const PackedB* packed, const void* kern, bool tb, i64 N, i64 K,
                           const float* B, i64 ldb) {
  if (!packed || packed->kernel_ != kern || packed->source_ != B || packed->trans_b_ != tb ||
      packed->N_ != N || packed->K_ != K || packed->ldb_ != ldb)
    return nullptr;
  return packed->panels_.data();
}

// float64: the simple loop-ordered kernel (row-parallel), kept for gradient checks.
constexpr i64 kSimpleParallelMacs = i64(1) << 18;

template <typename T>
static void gemm_simple(bool ta, bool tb, i64 M, i64 N, i64 K, T alpha, const T* A, i64 lda,
                        const T* B, i64 ldb, T beta, T* C, i64 ldc) {
#pragma omp parallel for schedule(static) if (M * N * K > kSimpleParallelMacs)
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

void dgemm(bool ta, bool tb, i64 M, i64 N, i64 K, double alpha, const double* A, i64 lda,
           const double* B, i64 ldb, double beta, double* C, i64 ldc) {
  const profile::PhaseScope timed(profile::Phase::GemmCompute);
  gemm_simple(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// The rows path (a few rows, untransposed) splits from 2 * kRowsMinMacsPerThread, the
// blocked path from 2 * kMinMacsPerThread; a few transposed rows take the blocked path, so
// the rows path's lower bound is the safe one for them too.
template <>
bool gemm_single_threaded<float>(i64 M, i64 N, i64 K) {
  const i64 macs = M * N * K;
  return macs < (M <= kRowsMaxM ? 2 * kRowsMinMacsPerThread : 2 * kMinMacsPerThread);
}
template <>
bool gemm_single_threaded<double>(i64 M, i64 N, i64 K) {
  return M * N * K <= kSimpleParallelMacs;
}

}  // namespace cr
