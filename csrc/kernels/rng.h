// Small, portable, seeded random numbers (identical streams on every platform and
// compiler, unlike std::uniform_int_distribution): the trainer's shuffles and the dropout
// masks. Here, below both, so a layer never includes the trainer.
#pragma once
#include <cstdint>

#include "common.h"

namespace cr {

struct SplitMix64 {
  std::uint64_t state;
  explicit SplitMix64(std::uint64_t seed) : state(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform integer in [0, n): Lemire's multiply-shift (bias < n / 2^64, negligible here).
  std::uint64_t below(std::uint64_t n) {
    return static_cast<std::uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64);
  }
  // Uniform float in [0, 1) with 24 random bits.
  float uniform01() { return float(next() >> 40) * (1.0f / 16777216.0f); }
};

// Fisher-Yates shuffle of idx[0..n).
inline void shuffle_indices(i64* idx, i64 n, std::uint64_t seed) {
  SplitMix64 rng(seed);
  for (i64 i = n - 1; i > 0; --i) {
    i64 j = static_cast<i64>(rng.below(static_cast<std::uint64_t>(i + 1)));
    i64 t = idx[i];
    idx[i] = idx[j];
    idx[j] = t;
  }
}

}  // namespace cr
