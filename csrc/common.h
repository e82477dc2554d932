// Shared basics of the C++ core: index type, argument errors, aligned buffers, OpenMP shims.
// No Python here: the core is usable (and testable) without the bindings.
#pragma once
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

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Flush denormals to zero (FTZ + DAZ) for the lifetime of the guard. Training drives many
// values toward zero (momentum of weights whose inputs are always 0 decays geometrically);
// once they turn denormal every operation on them costs ~100 cycles. Values below 1.2e-38
// (float) change nothing visible.
// The calling thread gets its previous mode back at the end. The OpenMP worker threads are
// flushed with one parallel region on entry (none when the team is this thread alone) and
// stay flushed: threads created later inherit the flushed mode of the thread that creates
// them, and restoring the workers would cost a second region per call, which on a busy
// machine waits for every worker to be scheduled (milliseconds per call).
class DenormalsFlushed {
 public:
  DenormalsFlushed() {
#ifdef CR_HAVE_MXCSR
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ | 0x8040u);
#ifdef _OPENMP
    if (omp_get_max_threads() > 1) {
#pragma omp parallel
      _mm_setcsr(_mm_getcsr() | 0x8040u);
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
  unsigned int saved_ = 0;
};

}  // namespace cr
