// Data-parallel training's two pieces that the core owns: the Reducer, the core's whole view
// of the transport (sums and maxima over the processes, started without waiting and waited
// for later), and the StepPlan, which rows each process takes at each step. No transport
// here: the bindings implement the Reducer (over MPI, through mpi4py), so the core builds
// and runs without MPI.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "common.h"

namespace cr {

// In-place reductions over the processes of a data-parallel run. Every process makes the
// same calls, in the same order, with the same sizes; a start returns at once with a ticket,
// and the buffer must not be touched until wait(ticket) has returned. A failure of the
// transport is not reported back: the implementation ends the whole job (a process that
// left the protocol would leave the others waiting for ever).
class Reducer {
 public:
  virtual ~Reducer() = default;
  virtual i64 start_sum(float* data, i64 n) = 0;
  virtual i64 start_sum(double* data, i64 n) = 0;
  virtual i64 start_max(float* data, i64 n) = 0;
  virtual i64 start_max(double* data, i64 n) = 0;
  virtual void wait(i64 ticket) = 0;
};

// Gradients are reduced in buckets: runs of consecutive layers' gradients, contiguous in the
// flat block, started as soon as the lowest layer of the run has finished its backward pass.
// A layer with fewer gradients than this joins the layers below it in one bucket, as PyTorch
// DDP's gradient buckets (bucket_cap_mb) do: one reduction's fixed cost is then not paid for
// a bias or a small output layer.
constexpr i64 kMinBucketBytes = i64(256) << 10;

// The configuration of a data-parallel epoch.
struct DataParallel {
  Reducer* reducer = nullptr;
  int rank = 0, size = 1;
  // Empty: every process holds the same rows, and the epoch is the single-process epoch with
  // each global batch split across the processes. Otherwise process r holds shard_sizes[r]
  // rows of its own (distributed="local").
  std::vector<i64> shard_sizes;
};

// Which rows this process takes at each step of an epoch, as positions in its own row order.
//
// Shared rows (N rows on every process): the single-process epoch — steps of `batch`
// positions of the common order, the last one partial — with step k's B_k positions split
// into `size` contiguous parts, part r = [B_k r / size, B_k (r + 1) / size) (a part may be
// empty when B_k < size).
// Shards (process r holds n_r rows, N = sum of n_r): the same number of steps S as N rows
// would take, ceil(N / batch); process r spreads its rows evenly over them, step k taking
// positions [floor(k n_r / S), floor((k + 1) n_r / S)) of its own order. Step k's global batch
// is the sum of those counts over the processes (about `batch`; exactly it when every n_r is
// a multiple of batch / size).
class StepPlan {
 public:
  struct Part {
    i64 begin, count;  // this process's positions [begin, begin + count)
    i64 global;        // rows in the step's global batch, over all processes
  };

  StepPlan(const DataParallel& dp, i64 rows, i64 batch) : dp_(dp), batch_(batch) {
    if (dp.size < 1 || dp.rank < 0 || dp.rank >= dp.size)
      fail("data-parallel rank ", dp.rank, " is not in [0, ", dp.size, ")");
    if (batch < 1) fail("batch_size must be >= 1; received ", batch);
    if (dp.shard_sizes.empty()) {
      total_ = rows;
    } else {
      if (i64(dp.shard_sizes.size()) != dp.size)
        fail("data-parallel: ", dp.shard_sizes.size(), " shard sizes for ", dp.size, " processes");
      if (dp.shard_sizes[dp.rank] != rows)
        fail("data-parallel: this process holds ", rows, " rows but its shard size says ",
             dp.shard_sizes[dp.rank]);
      total_ = 0;
      for (i64 n : dp.shard_sizes) {
        if (n < 1) fail("data-parallel: every process must hold at least one row; received ", n);
        total_ += n;
      }
    }
    if (total_ < 1) fail("no samples: the input has 0 rows");
    steps_ = (total_ + batch - 1) / batch;
  }

  i64 steps() const { return steps_; }
  i64 total_rows() const { return total_; }

  Part part(i64 k) const {
    const i64 r = dp_.rank, p = dp_.size;
    if (dp_.shard_sizes.empty()) {
      const i64 start = k * batch_, B = std::min(batch_, total_ - start);
      const i64 lo = B * r / p, hi = B * (r + 1) / p;
      return {start + lo, hi - lo, B};
    }
    Part out{0, 0, 0};
    for (i64 q = 0; q < p; ++q) {
      const i64 n = dp_.shard_sizes[q];
      const i64 lo = spread(k, n), hi = spread(k + 1, n);
      out.global += hi - lo;
      if (q == r) {
        out.begin = lo;
        out.count = hi - lo;
      }
    }
    return out;
  }

  // The largest part this process takes at any step (buffers are sized for it; at least 1).
  i64 max_part() const {
    const i64 most = dp_.shard_sizes.empty()
                         ? (std::min(batch_, total_) + dp_.size - 1) / dp_.size
                         : (dp_.shard_sizes[dp_.rank] + steps_ - 1) / steps_;
    return std::max<i64>(most, 1);
  }

 private:
  // floor(k n / S), without overflow for any k <= S and n of int64 range.
  i64 spread(i64 k, i64 n) const {
    return i64((static_cast<unsigned __int128>(k) * static_cast<unsigned __int128>(n)) /
               static_cast<unsigned __int128>(steps_));
  }

  const DataParallel& dp_;
  i64 batch_, total_ = 0, steps_ = 0;
};

}  // namespace cr
