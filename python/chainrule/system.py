"""CPU and threading controls of the C++ core: which SIMD kernels run here, and how many
threads its parallel regions use. Thin wrappers over chainrule._core."""

from chainrule import _core

__all__ = ["cpu_info", "set_num_threads", "get_num_threads"]


def cpu_info() -> dict:
    """What the core sees and chose.

    Keys: ``features`` (dict of bools: sse4_2, avx, avx2, fma, f16c, avx512f, avx512bw,
    avx512dq, avx512vl, os_avx, os_avx512 -- already combined with OS support), ``kernel``
    (the sgemm micro-kernel in use: "avx512", "avx2" or "generic"), ``best_kernel`` (what the
    CPU could run), ``env_override`` (the CHAINRULE_CPU_TARGET value, or None), ``variants``
    (sgemm variants runnable here, "ref" included), ``openmp`` (bool), ``max_threads``, ``x86``.

    The kernel is chosen once per process; set CHAINRULE_CPU_TARGET=avx2 or generic before
    importing chainrule to force a lower one (a higher one than the CPU runs is ignored).
    """
    return _core.cpu_info()


def set_num_threads(n: int) -> None:
    """Use ``n`` (>= 1) threads in the core's parallel regions (OpenMP; no-op without it)."""
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """Threads the core's parallel regions use (1 when built without OpenMP)."""
    return _core.get_num_threads()
