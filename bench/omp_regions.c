// LD_PRELOAD shim for bench/count_regions.py: counts the OpenMP parallel regions that start a
// team (GOMP_parallel with a thread count other than 1: each is one fork and one join of the
// worker threads) in a process using libgomp (GCC's OpenMP runtime).
//
//   gcc -O2 -shared -fPIC -o /tmp/libompregions.so bench/omp_regions.c -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
static unsigned long n_regions;
typedef void (*par_fn)(void (*)(void *), void *, unsigned, unsigned);
void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags) {
  static par_fn real;
  if (!real) {
    void* h = dlopen("libgomp.so.1", RTLD_LAZY | RTLD_NOLOAD);
    if (!h) h = dlopen("libgomp.so.1", RTLD_LAZY);
    real = (par_fn)dlvsym(h, "GOMP_parallel", "GOMP_4.0");
    if (!real) { fprintf(stderr, "omp_regions: no GOMP_parallel\n"); abort(); }
  }
  if (num_threads != 1) n_regions++;  // 1: an if() clause that was false, or a 1-thread team
  real(fn, data, num_threads, flags);
}
unsigned long omp_regions_count(void) { return n_regions; }
void omp_regions_reset(void) { n_regions = 0; }
