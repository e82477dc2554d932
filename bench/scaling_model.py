"""Work per thread per training step, on paper: how chainrule's float32 GEMM driver splits the
MNIST MLP's products over 1..16 threads, and what that leaves each thread to do.

The grid choice mirrors ``sgemm_with_kernel`` in csrc/kernels/gemm.cpp (keep the two in step):
a product of M x N x K multiply-adds uses nt = min(threads, MNK / 2^19) threads when MNK >=
2^20 (otherwise one), and splits C into a tm x tn grid of MR x NR tiles (tm * tn = nt, the
largest nt the tiles allow) minimising rows * cols + 16 (rows + cols) per thread. Each thread
then packs its own A rows and B columns (K deep) and runs the micro-kernel on its tile; the
only synchronisation is the region's fork and join. The AVX-512 wide kernel's tile is 12 x 32
(``sgemm_kernel`` in gemm_ukernel_avx512.cpp).

    python bench/scaling_model.py [--batch 128 512] [--threads 1 2 4 8 16]

Columns: the product (forward y = x W, backward dW = x^T dy, dx = dy W^T), its multiply-adds,
the threads it gets, the grid, the largest tile a thread computes (rows x cols, padding
included), that thread's multiply-adds and packing (floats), and the efficiency: useful
multiply-adds / (threads x the largest thread's multiply-adds). The step's critical path is
the sum over products of the largest thread's work (every region ends at a join).
"""

from __future__ import annotations

import argparse

MR, NR = 12, 32                  # the AVX-512 wide kernel's tile
MIN_MACS_PER_THREAD = 1 << 19    # gemm.cpp kMinMacsPerThread
LAYERS = (784, 512, 256, 10)


def ceil_div(a, b):
    return -(-a // b)


def grid(M, N, K, threads):
    """(nt, tm, tn) as gemm.cpp chooses them for the wide kernel."""
    nt = 1
    if M * N * K >= 2 * MIN_MACS_PER_THREAD:
        nt = int(min(threads, M * N * K // MIN_MACS_PER_THREAD))
    bm, bn = ceil_div(M, MR), ceil_div(N, NR)
    best, best_tm, best_tn = -1.0, 1, 1
    if nt > 1:
        for t in range(nt, 1, -1):
            if best >= 0:
                break
            for tm in range(1, t + 1):
                if t % tm:
                    continue
                tn = t // tm
                if tm > bm or tn > bn:
                    continue
                rows, cols = ceil_div(bm, tm) * MR, ceil_div(bn, tn) * NR
                cost = rows * cols + 16.0 * (rows + cols)
                if best < 0 or cost < best * 0.999:
                    best, best_tm, best_tn = cost, tm, tn
        nt = best_tm * best_tn
    if nt <= 1:
        return 1, 1, 1
    return nt, best_tm, best_tn


def products(batch):
    """(name, M, N, K) of one training step of the MLP (the first layer's dx is not needed)."""
    out = []
    for i, (a, b) in enumerate(zip(LAYERS[:-1], LAYERS[1:])):
        out.append((f"fwd{i + 1}", batch, b, a))
    for i in reversed(range(len(LAYERS) - 1)):
        a, b = LAYERS[i], LAYERS[i + 1]
        out.append((f"dW{i + 1}", a, b, batch))
        if i > 0:
            out.append((f"dx{i + 1}", batch, a, b))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[128, 512])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    a = p.parse_args()
    for batch in a.batch:
        total = sum(M * N * K for _, M, N, K in products(batch))
        print(f"\nMLP 784-512-256-10, batch {batch}: {total / 1e6:.1f} M multiply-adds per step")
        print(f"{'threads':>7} {'critical path (M MAC)':>22} {'speed-up bound':>15} {'GEMM regions':>13}")
        for t in a.threads:
            crit, regions = 0.0, 0
            for _, M, N, K in products(batch):
                nt, tm, tn = grid(M, N, K, t)
                rows = ceil_div(ceil_div(M, MR), tm) * MR
                cols = ceil_div(ceil_div(N, NR), tn) * NR
                crit += min(rows, M) * min(cols, N) * K if nt > 1 else M * N * K
                regions += nt > 1
            print(f"{t:>7} {crit / 1e6:>22.2f} {total / crit:>15.2f} {regions:>13}")
        print(f"\n  per product at {max(a.threads)} threads:")
        print(f"  {'product':<6} {'M x N x K':>16} {'M MAC':>7} {'nt':>3} {'grid':>6} {'tile':>9} "
              f"{'tile M MAC':>10} {'packed floats':>13} {'efficiency':>10}")
        t = max(a.threads)
        for name, M, N, K in products(batch):
            nt, tm, tn = grid(M, N, K, t)
            rows = min(M, ceil_div(ceil_div(M, MR), tm) * MR)
            cols = min(N, ceil_div(ceil_div(N, NR), tn) * NR)
            tile = rows * cols * K
            eff = M * N * K / (nt * tile)
            print(f"  {name:<6} {f'{M}x{N}x{K}':>16} {M * N * K / 1e6:>7.2f} {nt:>3} {f'{tm}x{tn}':>6} "
                  f"{f'{rows}x{cols}':>9} {tile / 1e6:>10.2f} {(rows + cols) * K:>13} {eff:>10.0%}")


if __name__ == "__main__":
    main()
