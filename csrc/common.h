// Shared basics of the C++ core: index type, argument errors, aligned buffers, OpenMP shims.
// No Python here: the core is usable (and testable) without the bindings.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define CR_HAVE_MXCSR 1
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define CR_HAVE_ATFORK 1
#endif

namespace cr {

using i64 = std::int64_t;

// Argument errors become ValueError in Python. Throw them before any parallel region:
// an exception escaping an OpenMP region terminates the process.
template <typename... Args>
[[noreturn]] inline void fail(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  throw std::invalid_argument(os.str());
}

// Size limits. Every element count the core allocates is computed through checked_mul, so a
// size that cannot be represented is an argument error, never a wrapped product: a single
// sample's input or output, one parameter tensor, all parameters together, and one sample's
// im2col matrix each hold at most kMaxElems values (2^31 - 1); products with the batch size
// (buffers) are checked against kMaxBufferElems.
constexpr i64 kMaxElems = (i64(1) << 31) - 1;
constexpr i64 kMaxBufferElems = i64(1) << 40;

// a * b for sizes >= 0, or an argument error naming `what` when it exceeds `limit`.
inline i64 checked_mul(i64 a, i64 b, const char* what, i64 limit = kMaxElems) {
  if (a < 0 || b < 0) fail(what, " must be >= 0; received ", a, " x ", b);
  if (a != 0 && b > limit / a)
    fail(what, " is too large: ", a, " x ", b, " exceeds the limit of ", limit, " elements");
  return a * b;
}

// 64-byte aligned allocator: buffers start on a cache line, SIMD loads never split one.
template <typename T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U>&) {}
  T* allocate(std::size_t n) {
    std::size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
    void* p = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) { std::free(p); }
  template <typename U>
  bool operator==(const AlignedAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const AlignedAllocator<U>&) const { return false; }
};
template <typename T>
using avec = std::vector<T, AlignedAllocator<T>>;

// Element-wise loops go parallel only above this many elements: below it the fork/join
// costs more than the work (the small-network regime).
constexpr i64 kParallelElems = 1 << 15;

// Products (GEMM, direct convolution) go parallel only with at least this many multiply-adds
// per thread: below it a fork/join, or waking a sleeping worker, costs more than it saves.
// Tiny products (the small-network regime, a one-sample predict) stay on the calling thread.
constexpr i64 kMinMacsPerThread = i64(1) << 19;

// Whether n values hold no NaN or inf: w * 0 is NaN exactly for NaN and inf, so one
// vectorizable pass with no branches (the input check of predict, the weights after a step).
template <typename T>
bool all_finite(const T* w, i64 n) {
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (i64 i = 0; i < n; ++i) acc += w[i] * T(0);
  return acc == T(0);
}

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// The calling thread's number in its OpenMP team (0 outside a parallel region).
inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Flush denormals to zero (FTZ + DAZ) for the lifetime of the guard. Training drives many
// values toward zero (momentum of weights whose inputs are always 0 decays geometrically);
// once they turn denormal every operation on them costs ~100 cycles. Values below 1.2e-38
// (float) change nothing visible.
// The calling thread gets its previous mode back at the end. The OpenMP worker threads stay
// flushed once set: threads created later inherit the flushed mode of the thread that creates
// them (inside a guard), and restoring the workers would cost a second region per call, which
// on a busy machine waits for every worker to be scheduled (milliseconds per call). So a
// calling thread's worker pool (libgomp keeps one per calling thread, and its threads for
// the process's life) is flushed with one parallel region the first time, and again only
// when a larger team than any flushed before is asked for, or after a fork. Later calls open
// no region for it: a call that runs no parallel work (a one-sample predict) does not wake
// the sleeping workers just to set their mode.
class DenormalsFlushed {
 public:
  DenormalsFlushed() {
#ifdef CR_HAVE_MXCSR
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ | 0x8040u);
#ifdef _OPENMP
    const int want = omp_get_max_threads();
    FlushedPool& pool = flushed_pool();
    const unsigned gen = fork_generation().load(std::memory_order_relaxed);
    if (want > 1 && (pool.generation != gen || pool.team < want)) {
      threads_started().store(true, std::memory_order_relaxed);
      int team = 1;
#pragma omp parallel
      {
        _mm_setcsr(_mm_getcsr() | 0x8040u);
#pragma omp single
        team = omp_get_num_threads();  // OpenMP may grant fewer threads than asked
      }
      pool = {gen, team};
    }
#endif
#endif
  }
  ~DenormalsFlushed() {
#ifdef CR_HAVE_MXCSR
    _mm_setcsr(saved_);
#endif
  }
  DenormalsFlushed(const DenormalsFlushed&) = delete;
  DenormalsFlushed& operator=(const DenormalsFlushed&) = delete;

 private:
  struct FlushedPool {
    unsigned generation;
    int team;  // the largest team of this thread's pool flushed so far
  };
  static FlushedPool& flushed_pool() {
    thread_local FlushedPool pool{0, 1};
    return pool;
  }
  // Bumped in a forked child: every pool counts as unflushed again. And a child forked after
  // the core has run a team of threads stays on one thread (serial_after_fork): GCC's
  // OpenMP runtime cannot start a team in such a child (its first parallel region hangs).
  static std::atomic<unsigned>& fork_generation() {
    static std::atomic<unsigned> generation{[] {
#ifdef CR_HAVE_ATFORK
      pthread_atfork(nullptr, nullptr, [] {
        fork_generation().fetch_add(1, std::memory_order_relaxed);
        if (threads_started().load(std::memory_order_relaxed)) {
          serial_after_fork().store(true, std::memory_order_relaxed);
#ifdef _OPENMP
          omp_set_num_threads(1);
#endif
        }
      });
#endif
      return 1u;
    }()};
    return generation;
  }

 public:
  // Whether this process has run a team of several threads through this guard.
  static std::atomic<bool>& threads_started() {
    static std::atomic<bool> started{false};
    return started;
  }
  // Whether this process is a child forked after threads_started: one thread only.
  static std::atomic<bool>& serial_after_fork() {
    static std::atomic<bool> serial{false};
    return serial;
  }

 private:

  unsigned int saved_ = 0;
};

}  // namespace cr
