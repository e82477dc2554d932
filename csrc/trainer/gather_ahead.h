// Gathering ahead: a helper thread copies the shuffled rows of the batches after the current
// one into spare batch buffers while the calling thread runs the current step.
//
// A shuffled epoch copies each batch's rows (scattered over the whole training set, so read
// from memory) into contiguous buffers: a quarter of a step of the small MLP 784-32-10 at
// batch 32 (11 of 45 us), whose products are too small to go parallel, so at 2 threads the
// second core sat idle. The helper never holds a step up. The rows of a batch are claimed a
// few at a time, by the helper or by the calling thread when it needs the batch: a helper
// that was not scheduled (a busy machine), or not yet woken, leaves its rows to the caller,
// which then waits at most for the chunk the helper is copying. Between batches the helper
// sleeps (no spinning: it holds no CPU the training threads need) and looks for posted work
// every kPoll. The caller does not wake it: a wake-up call cost the caller 8 us per step on
// the 2-core development VM, and the wake-up itself took 28-42 us there, about a small step.
// So batches are posted kAhead steps before they are needed, and the helper finds them at
// its next look. On a busy machine (no idle CPU) the helper shares the caller's CPU: every
// look then preempts the step, and with one busy process beside it a small-MLP epoch at 2
// threads ran 1.4-1.7x slower than at 1 thread (bench/bench_busy.py). On a quiet machine the
// scheduler wakes the helper on an idle CPU (0 of ~1,400 looks per epoch on the caller's CPU,
// against a quarter to a half of them with one busy process): after kMaxSharedCpuLooks looks
// on the caller's CPU the helper retires for the rest of the epoch, and the caller gathers
// alone, as without it. It is started only where a step runs on the calling thread alone
// (Network::step_single_threaded): beside a step's own OpenMP workers it took their CPU at
// every look, and a 2-thread epoch of the MLP 784-512-256-10 ran 2x slower.
//
// The helper is a plain thread of its own, started per epoch and joined at its end (also on
// an exception): OpenMP's pool is not involved, so it is safe in a forked child too, where
// the core keeps to one thread anyway (max_threads() is 1 there and no helper starts).
// The copies are the calling thread's gather_rows: the bits do not change.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <thread>

#ifdef __linux__
#include <sched.h>
#include <sys/prctl.h>
#endif

#include "common.h"
#include "trainer/gather_rows.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define CR_CPU_RELAX() _mm_pause()
#else
#define CR_CPU_RELAX() ((void)0)
#endif

namespace cr {

template <typename T>
class GatherAhead {
 public:
  static constexpr int kAhead = 2;              // batches posted before they are needed
  static constexpr int kSlots = kAhead + 1;     // batch buffer sets: the current one + ahead
  static constexpr i64 kChunkRows = 4;          // rows per claim: ~12 KB of MNIST rows
  static constexpr std::chrono::microseconds kPoll{20};  // the helper's sleep between looks
  static constexpr int kMaxSharedCpuLooks = 4;  // looks on the caller's CPU before retiring
  // Epochs with less input data gather without a helper: starting and joining it, and the
  // batches the caller gathers before it is up, cost ~140 us per epoch, and a small data
  // set's rows come from cache (scikit-learn's digits, 460 KB, ran 18% slower with it).
  static constexpr i64 kMinEpochBytes = i64(16) << 20;

  // Destination buffers of one batch: x (B, in), y (B, tc), w (B) (unused without SW).
  struct Buffers {
    T* x;
    T* y;
    T* w;
  };

  // X: (N, in), Y: (N, tc), SW: (N) or null, the user's arrays for the whole epoch.
  GatherAhead(const T* X, const T* Y, const T* SW, i64 in, i64 tc)
      : X_(X), Y_(Y), SW_(SW), in_(in), tc_(tc), helper_([this] { run(); }) {}
  ~GatherAhead() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
    }
    helper_.join();  // within kPoll: the helper looks at stop_ at every look
  }
  // Rows the helper has copied so far (the rest, the caller).
  i64 helper_rows() const { return helper_rows_.load(std::memory_order_relaxed); }

  GatherAhead(const GatherAhead&) = delete;
  GatherAhead& operator=(const GatherAhead&) = delete;

  // Posts batch `seq` (0, 1, 2, ... in order): rows idx[0..B) into `into`, for the helper to
  // find at its next look. Batch seq - kSlots must have been collected, and its buffers no
  // longer read. No wake-up call: one costs the caller a system call (8 us per step measured
  // on the development VM, where it interrupts the other, idle virtual CPU).
  void post(std::uint64_t seq, const i64* idx, i64 B, Buffers into) {
    Job& job = jobs_[seq % kSlots];
    {
      std::lock_guard<std::mutex> lk(m_);
      job.seq = seq;
      job.idx = idx;
      job.B = B;
      job.into = into;
      job.next = 0;
      job.done.store(0, std::memory_order_relaxed);
      posted_ = seq + 1;
    }
    caller_cpu_.store(current_cpu(), std::memory_order_relaxed);
  }

  // Returns when every row of batch `seq` (posted) is in its buffers: copies the rows no
  // thread has claimed yet, then waits for the helper's chunk in progress, if any.
  void collect(std::uint64_t seq) {
    const i64 B = work(seq, false);
    const Job& job = jobs_[seq % kSlots];
    for (int spins = 0; job.done.load(std::memory_order_acquire) < B; ++spins) {
      if (spins < 4096) CR_CPU_RELAX();
      else std::this_thread::yield();  // the helper was descheduled mid-chunk
    }
  }

 private:
  struct Job {
    std::uint64_t seq = ~std::uint64_t(0);
    const i64* idx = nullptr;
    i64 B = 0;
    Buffers into{};
    i64 next = 0;              // the first row not yet claimed
    std::atomic<i64> done{0};  // rows copied
  };

  // Copies chunks of batch `seq` until none is left unclaimed (none at all when its slot
  // has since been posted again: the caller collected it). Returns its row count.
  i64 work(std::uint64_t seq, bool helper) {
    Job& job = jobs_[seq % kSlots];
    for (;;) {
      const i64* idx;
      Buffers into;
      i64 r0, r1, B;
      {
        std::lock_guard<std::mutex> lk(m_);
        B = job.B;
        if (job.seq != seq || job.next >= B) return B;
        idx = job.idx;
        into = job.into;
        r0 = job.next;
        r1 = std::min(r0 + kChunkRows, B);
        job.next = r1;
      }
      gather_rows(into.x + r0 * in_, X_, idx + r0, r1 - r0, in_);
      gather_rows(into.y + r0 * tc_, Y_, idx + r0, r1 - r0, tc_);
      if (SW_)
        for (i64 r = r0; r < r1; ++r) into.w[r] = SW_[idx[r]];
      if (helper) helper_rows_.fetch_add(r1 - r0, std::memory_order_relaxed);
      job.done.fetch_add(r1 - r0, std::memory_order_release);
    }
  }

  static int current_cpu() {
#ifdef __linux__
    return sched_getcpu();  // -1 where unknown
#else
    return -1;
#endif
  }

  // The helper: every posted batch in order, oldest (the one needed soonest) first.
  void run() {
#ifdef __linux__
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);  // its timed waits end on time, not 50 us late
#endif
    std::uint64_t cursor = 0;  // the next batch to work on
    int shared_cpu_looks = 0;
    for (;;) {
      std::uint64_t posted;
      for (;;) {
        {
          std::lock_guard<std::mutex> lk(m_);
          if (stop_) return;
          posted = posted_;
        }
        if (posted > cursor) break;
        // A plain timed sleep (nanosleep), not a condition variable's timed wait: nobody
        // signals the helper, and libstdc++'s wait_for on the steady clock calls
        // pthread_cond_clockwait (glibc 2.30), which a manylinux_2_28 wheel cannot import.
        std::this_thread::sleep_for(kPoll);
      }
      const int cpu = current_cpu();
      if (cpu >= 0 && cpu == caller_cpu_.load(std::memory_order_relaxed) &&
          ++shared_cpu_looks >= kMaxSharedCpuLooks)
        return;  // no idle CPU: the caller gathers alone for the rest of the epoch
      // Batches more than kSlots behind were collected and their slots reposted: skip them.
      cursor = std::max(cursor, posted > kSlots ? posted - kSlots : 0);
      for (; cursor < posted; ++cursor) work(cursor, true);
    }
  }

  const T *X_, *Y_, *SW_;
  const i64 in_, tc_;
  std::mutex m_;
  bool stop_ = false;          // guarded by m_
  std::uint64_t posted_ = 0;   // guarded by m_: batches posted so far
  Job jobs_[kSlots];           // guarded by m_ but for done
  std::atomic<i64> helper_rows_{0};
  std::atomic<int> caller_cpu_{-1};  // the CPU the caller last posted from
  std::thread helper_;         // last: started once the members above exist
};

}  // namespace cr
