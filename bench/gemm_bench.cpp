// Standalone sgemm harness: checks every compiled micro-kernel variant against sgemm_ref on
// odd and edge shapes, then times them against OpenBLAS (numpy's own copy, dlopen'ed) on the
// training shapes. Not part of the library; build with bench/build_gemm_bench.sh.
//   gemm_bench check                    correctness only (exit 1 on any mismatch)
//   gemm_bench time [threads] [set]     medians in GFLOP/s; set = train (default) | all | big
//   gemm_bench tune MC KC NC [set]      best kernel (or BENCH_TUNE_TARGET) with other
//                                       cache blocks; set defaults to big (1024^3)
// OPENBLAS_LIB=path/to/libopenblas.so: the BLAS to compare with (build_gemm_bench.sh
// prints the path of numpy's). BENCH_ONLY=avx512|avx2|generic|openblas times one implementation:
// with 2 threads, run ours and OpenBLAS in separate processes, or their idle spinning
// threads steal each other's cores on a 2-core machine.
#include <dlfcn.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu.h"
#include "kernels/gemm.h"
#include "kernels/gemm_kernels.h"

using namespace cr;

namespace {

struct Shape {
  const char* label;
  bool ta, tb;
  i64 M, N, K;
};

std::vector<CpuTarget> runnable_targets() {
  std::vector<CpuTarget> v;
  for (CpuTarget t : {CpuTarget::generic, CpuTarget::avx2, CpuTarget::avx512})
    if (sgemm_kernel_for(t)) v.push_back(t);
  return v;
}

void fill(std::vector<float>& v, std::mt19937& rng) {
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  for (float& x : v) x = d(rng);
}

// ---------------------------------------------------------------- correctness
int check() {
  std::mt19937 rng(42);
  const i64 dims[][3] = {{1, 1, 1},    {7, 13, 17},  {13, 7, 17},  {1, 33, 5},   {33, 1, 5},
                         {12, 32, 1},  {11, 31, 3},  {25, 65, 2},  {6, 16, 64},  {5, 15, 63},
                         {50, 70, 3000}, {128, 10, 256}, {256, 10, 128}, {97, 131, 389},
                         {130, 530, 785}, {300, 40, 20}, {2, 1000, 7},  {1000, 3, 9},
                         {37, 3, 3000}, {129, 7, 200}, {64, 8, 40}, {33, 12, 130},
                         {32, 32, 784}, {40, 20, 33}, {16, 25, 7}, {784, 32, 32}};
  const float ab[][2] = {{1.0f, 0.0f}, {0.5f, 0.0f}, {1.0f, 1.0f}, {-1.5f, 0.25f}, {2.0f, -1.0f}};
  int failures = 0, checks = 0;
  for (CpuTarget t : runnable_targets()) {
    for (auto& d : dims) {
      const i64 M = d[0], N = d[1], K = d[2];
      for (int tr = 0; tr < 4; ++tr) {
        const bool ta = tr & 1, tb = tr & 2;
        for (auto& s : ab) {
          for (int pad = 0; pad < 2; ++pad) {
            // stored shapes: A (M,K) or (K,M); B (K,N) or (N,K); padded leading dims
            const i64 a_rows = ta ? K : M, a_cols = ta ? M : K;
            const i64 b_rows = tb ? N : K, b_cols = tb ? K : N;
            const i64 lda = a_cols + pad * 3, ldb = b_cols + pad * 5, ldc = N + pad * 2;
            std::vector<float> A(a_rows * lda), B(b_rows * ldb), C0(M * ldc);
            fill(A, rng), fill(B, rng), fill(C0, rng);
            std::vector<float> Cr = C0, Ct = C0;
            if (s[1] == 0.0f) std::fill(Ct.begin(), Ct.end(), NAN);  // must not be read
            sgemm_ref(ta, tb, M, N, K, s[0], A.data(), lda, B.data(), ldb, s[1], Cr.data(), ldc);
            sgemm_variant(t, ta, tb, M, N, K, s[0], A.data(), lda, B.data(), ldb, s[1],
                          Ct.data(), ldc);
            double worst = 0;
            for (i64 i = 0; i < M; ++i)
              for (i64 j = 0; j < N; ++j) {
                double e = std::fabs(double(Ct[i * ldc + j]) - Cr[i * ldc + j]);
                if (!(e <= worst)) worst = std::isnan(e) ? INFINITY : std::max(worst, e);
              }
            ++checks;
            const double tol = 1e-5 * std::sqrt(double(K)) * 4 + 1e-5;
            if (!(worst <= tol)) {
              ++failures;
              std::printf("FAIL %-7s M=%lld N=%lld K=%lld ta=%d tb=%d alpha=%g beta=%g "
                          "pad=%d err=%g\n",
                          cpu_target_name(t), (long long)M, (long long)N, (long long)K, ta, tb,
                          s[0], s[1], pad, worst);
            }
          }
        }
      }
    }
  }
  // K == 0 and alpha == 0: C = beta*C (beta == 0 overwrites NaN).
  for (CpuTarget t : runnable_targets()) {
    std::vector<float> A(12, 1.0f), B(12, 1.0f), C(12, NAN);
    sgemm_variant(t, false, false, 3, 4, 0, 1.0f, A.data(), 1, B.data(), 4, 0.0f, C.data(), 4);
    for (float c : C) failures += c != 0.0f;
    std::fill(C.begin(), C.end(), 2.0f);
    sgemm_variant(t, false, false, 3, 4, 3, 0.0f, A.data(), 3, B.data(), 4, 0.5f, C.data(), 4);
    for (float c : C) failures += c != 1.0f;
    checks += 2;
  }
  std::printf("check: %d cases, %d failures (variants:", checks, failures);
  for (CpuTarget t : runnable_targets()) std::printf(" %s", cpu_target_name(t));
  std::printf(")\n");
  return failures ? 1 : 0;
}

// ---------------------------------------------------------------- OpenBLAS
using cblas_sgemm64_fn = void (*)(int, int, int, long, long, long, float, const float*, long,
                                  const float*, long, float, float*, long);
using blas_set_threads_fn = void (*)(int);
cblas_sgemm64_fn blas_sgemm = nullptr;
blas_set_threads_fn blas_set_threads = nullptr;

void load_blas() {
  const char* path = std::getenv("OPENBLAS_LIB");
  if (!path) return;
  void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) { std::printf("(no BLAS: %s)\n", dlerror()); return; }
  blas_sgemm = (cblas_sgemm64_fn)dlsym(h, "scipy_cblas_sgemm64_");
  if (!blas_sgemm) blas_sgemm = (cblas_sgemm64_fn)dlsym(h, "cblas_sgemm");
  blas_set_threads = (blas_set_threads_fn)dlsym(h, "scipy_openblas_set_num_threads64_");
  if (!blas_set_threads)
    blas_set_threads = (blas_set_threads_fn)dlsym(h, "openblas_set_num_threads");
}

// ---------------------------------------------------------------- timing
double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Impl {
  std::string name;
  const SgemmKernel* kern;  // nullptr: OpenBLAS
};

void run_impl(const Impl& im, const Shape& s, const float* A, i64 lda, const float* B, i64 ldb,
              float* C) {
  if (im.kern)
    sgemm_with_kernel(*im.kern, s.ta, s.tb, s.M, s.N, s.K, 1.0f, A, lda, B, ldb, 0.0f, C, s.N);
  else
    blas_sgemm(101, s.ta ? 112 : 111, s.tb ? 112 : 111, s.M, s.N, s.K, 1.0f, A, lda, B, ldb, 0.0f,
               C, s.N);
}

void time_shapes(const std::vector<Shape>& shapes, const std::vector<Impl>& impls, int threads) {
  omp_set_num_threads(threads);
  if (blas_set_threads) blas_set_threads(threads);
  std::mt19937 rng(1);
  std::printf("%-14s %5s %5s %5s", "shape", "M", "N", "K");
  for (auto& im : impls) std::printf(" %9s", im.name.c_str());
  if (blas_sgemm && impls.size() > 1) std::printf("  best/blas");
  std::printf("   (GFLOP/s, median, %d thread%s)\n", threads, threads > 1 ? "s" : "");
  const char* batch_env = std::getenv("BENCH_BATCH_S");
  const double target_batch = batch_env ? std::atof(batch_env) : 0.002;
  const int rounds = std::atoi(std::getenv("BENCH_ROUNDS") ? std::getenv("BENCH_ROUNDS") : "31");
  for (const Shape& s : shapes) {
    const i64 lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N;
    std::vector<float> A(s.M * s.K), B(s.K * s.N), C(s.M * s.N);
    fill(A, rng), fill(B, rng);
    const double flops = 2.0 * s.M * s.N * s.K;
    std::vector<int> reps(impls.size());
    for (std::size_t q = 0; q < impls.size(); ++q) {
      for (int w = 0; w < 3; ++w) run_impl(impls[q], s, A.data(), lda, B.data(), ldb, C.data());
      double t0 = now();
      int n = 0;
      while (now() - t0 < target_batch / 2 || n < 1) {
        run_impl(impls[q], s, A.data(), lda, B.data(), ldb, C.data());
        ++n;
      }
      reps[q] = std::max(1, int(n * target_batch / (now() - t0)));
    }
    std::vector<std::vector<double>> times(impls.size());
    for (int r = 0; r < rounds; ++r)
      for (std::size_t q = 0; q < impls.size(); ++q) {
        double t0 = now();
        for (int i = 0; i < reps[q]; ++i)
          run_impl(impls[q], s, A.data(), lda, B.data(), ldb, C.data());
        times[q].push_back((now() - t0) / reps[q]);
      }
    std::printf("%-14s %5lld %5lld %5lld", s.label, (long long)s.M, (long long)s.N, (long long)s.K);
    double best_ours = 0, blas = 0;
    for (std::size_t q = 0; q < impls.size(); ++q) {
      auto& t = times[q];
      std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
      double g = flops / t[t.size() / 2] / 1e9;
      std::printf(" %9.1f", g);
      if (impls[q].kern) best_ours = std::max(best_ours, g); else blas = g;
    }
    if (blas > 0 && best_ours > 0) std::printf("  %8.2fx", best_ours / blas);
    std::printf("\n");
    std::fflush(stdout);
  }
}

std::vector<Shape> shape_set(const std::string& set) {
  std::vector<Shape> v;
  static std::vector<std::string> names;
  auto add = [&](const std::string& l, bool ta, bool tb, i64 M, i64 N, i64 K) {
    names.push_back(l);
    v.push_back({nullptr, ta, tb, M, N, K});
  };
  auto add_mlp = [&](i64 b, std::vector<std::pair<i64, i64>> layers) {
    for (auto& [in, out] : layers) {
      add("fwd b" + std::to_string(b), false, false, b, out, in);
      add("dX  b" + std::to_string(b), false, true, b, in, out);
      add("dW  b" + std::to_string(b), true, false, in, out, b);
    }
  };
  const std::vector<std::pair<i64, i64>> mnist = {{784, 512}, {512, 256}, {256, 10}};
  if (set == "train" || set == "all") add_mlp(128, mnist);
  if (set == "all") {
    add_mlp(32, mnist);
    add_mlp(512, mnist);
    add_mlp(32, {{784, 32}, {32, 10}});
    add("conv1", false, false, 32 * 24 * 24, 8, 25);
    add("conv2", false, false, 32 * 8 * 8, 16, 200);
  }
  if (set == "big" || set == "all" || set == "train") add("1024^3", false, false, 1024, 1024, 1024);
  for (std::size_t i = 0; i < v.size(); ++i)
    v[i].label = names[names.size() - v.size() + i].c_str();
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "check";
  const CpuFeatures& f = cpu_features();
  std::printf("cpu: avx2=%d fma=%d avx512f=%d os_avx512=%d -> %s (best %s, env '%s')\n", f.avx2,
              f.fma, f.avx512f, f.os_avx512, cpu_target_name(cpu_target()),
              cpu_target_name(cpu_best_target()), cpu_target_env().c_str());
  if (mode == "check") return check();
  // Only load OpenBLAS when it is timed: once its thread pool exists, its idle workers spin
  // and take the cores our OpenMP threads need (the 2-thread numbers drop ~20x).
  const char* only = std::getenv("BENCH_ONLY");
  if (!only || std::string(only) == "openblas") load_blas();
  std::vector<Impl> impls;
  if (mode == "tune") {
    CpuTarget tt = cpu_best_target();
    if (const char* v = std::getenv("BENCH_TUNE_TARGET")) cpu_target_from_name(v, &tt);
    if (!sgemm_kernel_for(tt)) return 2;
    static SgemmKernel k = *sgemm_kernel_for(tt);
    if (argc > 4) k.mc = std::atol(argv[2]), k.kc = std::atol(argv[3]), k.nc = std::atol(argv[4]);
    impls.push_back({std::string(k.name) + "*", &k});
    if (blas_sgemm) impls.push_back({"openblas", nullptr});
    time_shapes(shape_set(argc > 5 ? argv[5] : "big"), impls, 1);
    return 0;
  }
  int threads = argc > 2 ? std::atoi(argv[2]) : 1;
  std::string set = argc > 3 ? argv[3] : "train";
  const std::string only_name = only ? only : "";
  const bool blas_only = only_name == "openblas";
  for (CpuTarget t : runnable_targets()) {
    if (blas_only) break;
    if (t == CpuTarget::generic && std::getenv("BENCH_NO_GENERIC")) continue;
    if (only && only_name != cpu_target_name(t)) continue;
    impls.push_back({cpu_target_name(t), sgemm_kernel_for(t)});
  }
  if (blas_sgemm && !std::getenv("BENCH_NO_BLAS")) impls.push_back({"openblas", nullptr});
  time_shapes(shape_set(set), impls, threads);
  return 0;
}
