"""Streamed batches against arrays in memory: the time of one MNIST training epoch with
``fit(x, y)`` (one C++ call per epoch), ``fit(cr.data.Dataset(x, y, shuffle=True))`` and
``fit(generator)`` over the same in-memory arrays (one C++ call per batch, the next batch read
and converted by the background reader meanwhile).

    python bench/stream_bench.py [--repeats 7] [--batch 128] [--arch mlp] [--threads N]

Runs are interleaved (arrays, dataset, generator, arrays, ...) in one process after a warm-up
epoch each, and the medians (and minima) are compared: ratio = streamed / arrays (lower is
better; 1.2 is the bound the streaming path is held to). Same work in all three: a fresh
random order each epoch, mini-batches, forward, softmax cross-entropy, backward, SGD momentum
step, loss and accuracy.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from worker import load_mnist_train  # noqa: E402  (numpy-only MNIST reader)

import chainrule as cr  # noqa: E402

ARCH = {"mlp": (512, 256), "small": (32,)}


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def make_model(hidden):
    layers = [cr.layers.Dense(h, activation="relu") for h in hidden]
    layers.append(cr.layers.Dense(10, activation="softmax"))
    m = cr.Sequential(layers, seed=0)
    m.compile(optimizer=cr.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    m.build((784,))
    return m


def shuffled_batches(x, y, batch, seed):
    """A plain generator over arrays in memory, a new order each pass, forever."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(x))
        for s in range(0, len(x), batch):
            idx = order[s:s + batch]
            yield x[idx], y[idx]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--arch", choices=sorted(ARCH), default="mlp")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="sys.setswitchinterval for the run (Python's default: 0.005 s)")
    args = ap.parse_args()
    if args.threads:
        cr.set_num_threads(args.threads)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    x, y = load_mnist_train()
    steps = -(-len(x) // args.batch)
    model = make_model(ARCH[args.arch])
    gen = shuffled_batches(x, y, args.batch, seed=1)
    ds = cr.data.Dataset(x, y, batch_size=args.batch, shuffle=True, seed=1)

    def arrays():
        model.fit(x, y, epochs=1, batch_size=args.batch, verbose=0, seed=1, gradient_warnings=False)

    def dataset():
        model.fit(ds, epochs=1, verbose=0, seed=1, gradient_warnings=False)

    def generator():
        model.fit(gen, steps_per_epoch=steps, epochs=1, verbose=0, seed=1, gradient_warnings=False)

    contenders = {"arrays": arrays, "dataset": dataset, "generator": generator}
    times = {k: [] for k in contenders}
    for fn in contenders.values():  # warm-up
        fn()
    for r in range(args.repeats):
        names = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in names:
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
    base_med, base_min = statistics.median(times["arrays"]), min(times["arrays"])
    print(f"chainrule streaming bench — {cpu_model()}, {cr.get_num_threads()} threads, MNIST 784-"
          f"{'-'.join(map(str, ARCH[args.arch]))}-10, batch {args.batch}, {steps} steps/epoch, "
          f"{args.repeats} interleaved epochs each, switch interval {sys.getswitchinterval() * 1e3:g} ms")
    print(f"{'contender':<10} {'median s':>9} {'min s':>8} {'ratio(med)':>11} {'ratio(min)':>11}")
    for name, ts in times.items():
        med, mn = statistics.median(ts), min(ts)
        print(f"{name:<10} {med:9.3f} {mn:8.3f} {med / base_med:10.3f}x {mn / base_min:10.3f}x")


if __name__ == "__main__":
    main()
