"""What fit's stop at a non-finite loss costs: one MNIST epoch of the 784-512-256-10 MLP with
the stop off (``stop_on_nonfinite=False``), with fit's default (a snapshot of the weights and
optimizer state every 32 steps), and with a snapshot before every step (the model's own
``stop_on_nonfinite = True``, as TerminateOnNaN sets it).

    python bench/nonfinite_guard_bench.py [--repeats 7] [--batch 32] [--samples 20000]

Interleaved in one process after a warm-up; medians and minima, ratios against "off".
Small batches are where a per-step copy weighs most: the copy's size is fixed (weights and
momentum, 2 x 2.1 MB) while a step's work shrinks with the batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from worker import load_mnist_train  # noqa: E402
from stream_bench import cpu_model  # noqa: E402

import chainrule as cr  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--samples", type=int, default=20000)
    args = ap.parse_args()
    x, y = load_mnist_train()
    x, y = x[:args.samples], y[:args.samples]
    m = cr.Sequential([cr.layers.Dense(512, activation="relu"), cr.layers.Dense(256, activation="relu"),
                       cr.layers.Dense(10, activation="softmax")], seed=0)
    m.compile(optimizer=cr.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    m.build((784,))

    def run(mode):
        m.stop_on_nonfinite = mode == "every step"
        t0 = time.perf_counter()
        m.fit(x, y, epochs=1, batch_size=args.batch, verbose=0, gradient_warnings=False,
              stop_on_nonfinite=mode == "every 32")
        return time.perf_counter() - t0

    modes = ["off", "every 32", "every step"]
    for mode in modes:
        run(mode)
    times = {k: [] for k in modes}
    for r in range(args.repeats):
        for mode in modes if r % 2 == 0 else reversed(modes):
            times[mode].append(run(mode))
    med0, min0 = statistics.median(times["off"]), min(times["off"])
    print(f"chainrule non-finite stop bench — {cpu_model()}, {cr.get_num_threads()} threads, MNIST MLP "
          f"784-512-256-10, batch {args.batch}, {args.samples} samples, {args.repeats} interleaved epochs each")
    print(f"{'snapshot':<11} {'median s':>9} {'min s':>8} {'ratio(med)':>11} {'ratio(min)':>11}")
    for mode, ts in times.items():
        print(f"{mode:<11} {statistics.median(ts):9.3f} {min(ts):8.3f} {statistics.median(ts) / med0:10.3f}x "
              f"{min(ts) / min0:10.3f}x")


if __name__ == "__main__":
    main()
