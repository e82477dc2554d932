"""Time numpy's matmul (its OpenBLAS) and chainrule's sgemm (through the _core._gemm hook)
on the MNIST-MLP training shapes, both called from Python: best of three interleaved
medians of many repetitions each.

    OPENBLAS_NUM_THREADS=1 python bench/gemm_numpy.py 1
    OPENBLAS_NUM_THREADS=2 python bench/gemm_numpy.py 2

Thread counts of the two libraries should match (the argument sets chainrule's). Unset
OPENBLAS_CORETYPE first: it pins numpy to a slower kernel."""
import sys
import time

import numpy as np

from chainrule import _core, system


def shapes():
    out = []
    for b in (128, 32, 512):
        for fan_in, fan_out in ((784, 512), (512, 256), (256, 10)):
            out.append((f"fwd b{b}", False, False, b, fan_out, fan_in))
            out.append((f"dX  b{b}", False, True, b, fan_in, fan_out))
            out.append((f"dW  b{b}", True, False, fan_in, fan_out, b))
    for fan_in, fan_out in ((784, 32), (32, 10)):
        out.append(("tiny fwd", False, False, 32, fan_out, fan_in))
        out.append(("tiny dX", False, True, 32, fan_in, fan_out))
        out.append(("tiny dW", True, False, fan_in, fan_out, 32))
    out.append(("1024^3", False, False, 1024, 1024, 1024))
    return out


def median_time(fn, min_total=0.05, rounds=15):
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_total / rounds or n < 1:
        fn()
        n += 1
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        ts.append((time.perf_counter() - t0) / n)
    return float(np.median(ts))


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    system.set_num_threads(threads)
    kernel = system.cpu_info()["kernel"]
    rng = np.random.default_rng(0)
    print(f"chainrule kernel {kernel}, {threads} thread(s); GFLOP/s, medians")
    print(f"{'shape':10} {'M':>5} {'N':>5} {'K':>5} {'chainrule':>10} {'numpy':>8} {'ratio':>7}")
    for label, ta, tb, M, N, K in shapes():
        A = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
        B = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
        C = np.empty((M, N), np.float32)
        a = A.T if ta else A
        b = B.T if tb else B
        ours = lambda: _core._gemm(kernel, ta, tb, A, B, C, 1.0, 0.0)
        theirs = lambda: np.matmul(a, b, out=C)
        t_ours, t_np = [], []
        for _ in range(3):  # interleave: the machine drifts
            t_ours.append(median_time(ours))
            t_np.append(median_time(theirs))
        flops = 2.0 * M * N * K
        g_ours, g_np = flops / min(t_ours) / 1e9, flops / min(t_np) / 1e9
        print(f"{label:10} {M:5d} {N:5d} {K:5d} {g_ours:10.1f} {g_np:8.1f} {g_ours / g_np:6.2f}x")


if __name__ == "__main__":
    main()
