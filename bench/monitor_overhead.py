"""What the gradient monitor and the progress bar cost: MLP 784-512-256-10, batch 128, one
MNIST epoch, with the monitor on/off (verbose=0) and with the progress bar (verbose=1),
interleaved, median of --rounds epochs each (the second epoch of each fit is timed).

    python bench/monitor_overhead.py [--threads 1] [--rounds 5]
"""

import argparse
import contextlib
import io
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import worker  # noqa: E402  (the benchmark's MNIST loader)

import chainrule as cr  # noqa: E402


def epoch_time(x, y, verbose, monitor):
    L = cr.layers
    m = cr.Sequential([L.Dense(512, activation="relu"), L.Dense(256, activation="relu"),
                       L.Dense(10, activation="softmax")], seed=0)
    m.compile(optimizer=cr.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    m.build((784,))
    m._core.set_monitor(monitor)
    marks = []
    cb = cr.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: marks.append(time.perf_counter()),
                                     on_epoch_end=lambda e, logs: marks.append(time.perf_counter()))
    with contextlib.redirect_stdout(io.StringIO()):
        m.fit(x, y, epochs=2, batch_size=128, verbose=verbose, seed=0, callbacks=[cb])
    return marks[3] - marks[2]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    cr.set_num_threads(a.threads)
    x, y = worker.load_mnist_train()
    cases = {"monitor off, verbose=0": (0, False), "monitor on,  verbose=0": (0, True),
             "monitor on,  verbose=1": (1, True)}
    times = {k: [] for k in cases}
    for _ in range(a.rounds):
        for k, (v, mon) in cases.items():
            times[k].append(epoch_time(x, y, v, mon))
    base = statistics.median(times["monitor off, verbose=0"])
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"{k}: median {med:.3f} s (min {min(ts):.3f}), {100 * (med / base - 1):+.1f}% vs monitor off")


if __name__ == "__main__":
    main()
