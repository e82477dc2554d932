"""How many OpenMP parallel regions (each one fork and one join of the worker threads) one
training step of chainrule runs, counted in libgomp itself by the bench/omp_regions.c shim.

    gcc -O2 -shared -fPIC -o /tmp/libompregions.so bench/omp_regions.c -ldl
    python bench/count_regions.py --lib /tmp/libompregions.so [--threads 2 16]

Runs each network in a subprocess with the shim preloaded and OMP_NUM_THREADS set (the
count depends on the thread count only through the size thresholds, not on the cores the
machine has): one fit of 20 steps and one of 10, so that the difference is per step and the
rest is the fixed cost of a fit call. Networks: the MNIST MLP 784-512-256-10 at batch 32,
128 and 512, and the CNN of examples/mnist_cnn.py at batch 64, SGD with momentum.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = r"""
import ctypes, os, sys
import numpy as np
lib = ctypes.CDLL(os.environ["CR_REGIONS_LIB"])
lib.omp_regions_count.restype = ctypes.c_ulong
import chainrule as cr
L = cr.layers
threads, arch, batch = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cr.set_num_threads(threads)
rng = np.random.default_rng(0)
if arch == "mlp":
    x = rng.random((batch * 20, 784), dtype=np.float32)
    layers = [L.Dense(512, activation="relu"), L.Dense(256, activation="relu"), L.Dense(10, activation="softmax")]
else:
    x = rng.random((batch * 20, 28, 28, 1), dtype=np.float32)
    layers = [L.Conv2D(16, 5, activation="relu"), L.MaxPooling2D(2), L.Conv2D(32, 5, activation="relu"),
              L.MaxPooling2D(2), L.Flatten(), L.Dense(128, activation="relu"), L.Dropout(0.3),
              L.Dense(10, activation="softmax")]
y = rng.integers(0, 10, len(x))
model = cr.Sequential(layers, seed=0)
model.compile(optimizer=cr.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
model.build(x.shape[1:])
kw = dict(epochs=1, batch_size=batch, verbose=0, gradient_warnings=False)
model.fit(x[:batch], y[:batch], **kw)  # warm-up: buffers, thread pool
counts = []
for steps in (20, 10):
    lib.omp_regions_reset()
    model.fit(x[:batch * steps], y[:batch * steps], **kw)
    counts.append(lib.omp_regions_count())
per_step = (counts[0] - counts[1]) / 10
print(f"{per_step:g} {counts[1] - 10 * per_step:g}")
"""

NETWORKS = [("mlp", 32), ("mlp", 128), ("mlp", 512), ("cnn", 64)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lib", required=True, help="the shim built from bench/omp_regions.c")
    p.add_argument("--threads", type=int, nargs="+", default=[2, 16])
    a = p.parse_args()
    lib = os.path.abspath(a.lib)
    print(f"{'network':<12} {'threads':>7} {'regions per step':>17} {'per fit call':>13}")
    for arch, batch in NETWORKS:
        for t in a.threads:
            env = dict(os.environ, LD_PRELOAD=lib, CR_REGIONS_LIB=lib, OMP_NUM_THREADS=str(t))
            r = subprocess.run([sys.executable, "-c", CHILD, str(t), arch, str(batch)], env=env,
                               capture_output=True, text=True, timeout=600)
            if r.returncode != 0:
                sys.exit(f"{arch} b{batch} t{t} failed:\n{r.stderr}")
            per_step, fixed = r.stdout.split()
            print(f"{arch + ' b' + str(batch):<12} {t:>7} {per_step:>17} {fixed:>13}")


if __name__ == "__main__":
    main()
