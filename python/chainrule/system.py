"""CPU and threading controls of the C++ core: which SIMD kernels run here, and how many
threads its parallel regions use. Thin wrappers over chainrule._core."""

import numbers
import os
import warnings
from typing import Any


def _bounded_spin_env():
    """Bound how long the core's idle OpenMP threads spin before they sleep, unless the user
    chose a wait policy. libgomp spins 300,000 iterations (tens of milliseconds) by default;
    on a machine with other busy processes a spinning thread holds a CPU that the thread it
    waits for needs, and a 2-thread epoch ran 2-4x slower than 1 thread (bench/bench_busy.py).
    A few thousand iterations (~0.1 ms) still bridge the microsecond gaps between the
    parallel regions of one training call, so a quiet machine loses nothing. libgomp reads
    the variable when it loads, i.e. when chainrule._core is imported just below; it is set
    only for that moment, so neither child processes nor libraries loaded later see it."""
    if any(k in os.environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
        return None
    os.environ["GOMP_SPINCOUNT"] = str(_SPINCOUNT)
    return "GOMP_SPINCOUNT"


_SPINCOUNT = 2000
_set = _bounded_spin_env()
try:
    from chainrule import _core
finally:
    if _set:
        del os.environ[_set]
del _set

__all__ = ["cpu_info", "set_num_threads", "get_num_threads", "MAX_THREADS"]

# The most threads set_num_threads accepts: 4x the logical CPUs, at least 64. More threads
# than that only oversubscribe the cores, and OpenMP aborts the process when asked for more
# threads than it can create (e.g. set_num_threads(100000)), so such values are refused up
# front with a ValueError instead.
MAX_THREADS = max(4 * (os.cpu_count() or 1), 64)


def cpu_info() -> dict[str, Any]:
    """What the core sees and chose.

    Keys: ``features`` (dict of bools: sse4_2, avx, avx2, fma, f16c, avx512f, avx512bw,
    avx512dq, avx512vl, os_avx, os_avx512 -- already combined with OS support), ``kernel``
    (the sgemm micro-kernel in use: "avx512", "avx2" or "generic"), ``best_kernel`` (what the
    CPU could run), ``env_override`` (the CHAINRULE_CPU_TARGET value, or None), ``variants``
    (sgemm variants runnable here, "ref" included), ``openmp`` (bool), ``max_threads``, ``x86``,
    and which CPU this is, from cpuid: ``vendor`` ("GenuineIntel", "AuthenticAMD"), ``brand``
    (the processor's name string), ``family``, ``model`` and ``stepping`` (as /proc/cpuinfo
    shows them: AMD Zen 4 is family 25, Intel Sapphire Rapids family 6 model 143). Empty and
    0 off x86. No kernel choice depends on them; benchmarks print them with their results.
    ``l2_bytes``: one core's L2 cache as the system reports it (1 MiB when it does not), which
    sizes predict's passes.

    The kernel is chosen once per process; set CHAINRULE_CPU_TARGET=avx2 or generic before
    importing chainrule to force a lower one (a higher one than the CPU runs is ignored).
    """
    return _core.cpu_info()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in the core's parallel regions (OpenMP; no-op without it).

    ``n`` must be an integer (not a bool) in [1, MAX_THREADS], where MAX_THREADS is
    ``max(4 * os.cpu_count(), 64)``; anything else raises TypeError (not an integer) or
    ValueError (out of range) naming the value.

    A process forked (``os.fork``, multiprocessing's "fork" start method) after the core
    has run on several threads runs on one thread: GCC's OpenMP runtime cannot start threads
    in such a child (its first parallel region would hang). There a request for more
    threads gives a RuntimeWarning and one thread; start such processes with the "spawn" or
    "forkserver" method, or fork before training, to use several.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"set_num_threads expects an integer n in [1, {MAX_THREADS}]; received n={n!r}")
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"set_num_threads expects n in [1, {MAX_THREADS}] (MAX_THREADS = "
                         f"max(4 x {os.cpu_count()} CPUs, 64)); received n={n!r}")
    got = _core.set_num_threads(int(n))
    if got < n:
        warnings.warn(f"set_num_threads({n}): this process was forked after chainrule had run on several "
                      "threads, and GCC's OpenMP runtime cannot start threads in such a child (it would hang): "
                      "it runs on 1 thread. Start it with multiprocessing's 'spawn' or 'forkserver' method, or "
                      "fork before training, to use more.", RuntimeWarning, stacklevel=2)


def get_num_threads() -> int:
    """Threads the core's parallel regions use (1 when built without OpenMP)."""
    return _core.get_num_threads()
