"""Where a training step's time goes: one MNIST epoch of an MLP with the core's step profile
on (chainrule._core.set_profile), per step in microseconds and as shares of the recorded
time, by phase — gather (shuffle, batch copy), gemm_pack, gemm_compute, forward_elementwise,
loss, backward_elementwise, optimizer, monitor, other (the loop and the rest) — for the
small MLP 784-32-10 at batch 32 and the MLP 784-512-256-10 at batch 128, at 1 and 2
threads. Epochs with the profile off are interleaved with those with it on: their median
wall times side by side show what the profile itself costs, and the gap between an epoch's
wall time and the core's recorded total is the Python side of fit (callbacks, history).

The phases are the calling thread's wall time (csrc/profile.h): at 2 threads, gemm_pack is
that thread's own packing and gemm_compute includes waiting for the other thread's tiles.

    flock /tmp/bench.lock python bench/step_profile.py [--rounds 5] [--threads 1 2]
                                                       [--models small mlp] [--no-monitor]

--no-monitor turns the gradient monitor off (it is on by default in fit): its phase, and the
per-tensor sums the optimizer step reduces for it, go away.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

import chainrule as cr
import chainrule._core as core

MODELS = {"small": ((32,), 32), "mlp": ((512, 256), 128)}  # hidden units, batch size
PHASES = ("gather", "gemm_pack", "gemm_compute", "forward_elementwise", "loss",
          "backward_elementwise", "optimizer", "monitor", "other")


def mnist_dir():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.environ.get("CHAINRULE_MNIST_DIR") or os.path.join(here, "..", "..", "shared", "data", "mnist")


def build(hidden, monitor):
    L = cr.layers
    m = cr.Sequential([L.Dense(h, activation="relu") for h in hidden] + [L.Dense(10, activation="softmax")],
                      seed=0)
    m.compile(optimizer=cr.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    m.build((784,))
    m._core.set_monitor(monitor)
    return m


def timed_epoch(m, x, y, batch, profile):
    """Wall time of one fit epoch (epoch begin to end, as the callbacks see it) and, when
    profile is on, the core's step profile of it."""
    marks = []
    cb = cr.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: marks.append(time.perf_counter()),
                                     on_epoch_end=lambda e, logs: marks.append(time.perf_counter()))
    core.reset_profile()
    core.set_profile(profile)
    try:
        m.fit(x, y, epochs=1, batch_size=batch, verbose=0, callbacks=[cb])
    finally:
        core.set_profile(False)
    return marks[1] - marks[0], core.profile() if profile else None


def run(name, x, y, threads, rounds, monitor):
    hidden, batch = MODELS[name]
    cr.set_num_threads(threads)
    m = build(hidden, monitor)
    timed_epoch(m, x, y, batch, False)  # warm-up: buffers, packing buffers, page faults
    off, on, profiles = [], [], []
    for _ in range(rounds):
        off.append(timed_epoch(m, x, y, batch, False)[0])
        t, p = timed_epoch(m, x, y, batch, True)
        on.append(t)
        profiles.append(p)
    steps = sum(p["steps"] for p in profiles)
    total = sum(p["total"] for p in profiles)
    arch = "-".join(str(n) for n in (784, *hidden, 10))
    print(f"\n{arch}, batch {batch}, {threads} thread(s), monitor {'on' if monitor else 'off'}: "
          f"{profiles[0]['steps']} steps per epoch, {rounds} epochs each way")
    print(f"  {'phase':<22}{'us/step':>10}{'share':>9}")
    for k in PHASES:
        s = sum(p[k] for p in profiles)
        print(f"  {k:<22}{1e6 * s / steps:>10.2f}{100 * s / total:>8.1f}%")
    print(f"  {'total (core)':<22}{1e6 * total / steps:>10.2f}{100.0:>8.1f}%")
    med_off, med_on = statistics.median(off), statistics.median(on)
    print(f"  epoch wall time, profile off: median {med_off:.4f} s (min {min(off):.4f}); "
          f"{1e6 * med_off / profiles[0]['steps']:.1f} us/step")
    print(f"  epoch wall time, profile on:  median {med_on:.4f} s (min {min(on):.4f}); "
          f"{100 * (med_on / med_off - 1):+.1f}% vs off")
    print(f"  outside the core (fit's Python, profile-on epochs): "
          f"{1e6 * (sum(on) - total) / steps:.2f} us/step")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["small", "mlp"])
    p.add_argument("--no-monitor", action="store_true", help="turn the gradient monitor off")
    a = p.parse_args()
    (x, y), _ = cr.datasets.load_mnist(mnist_dir(), normalize=True)
    x = np.ascontiguousarray(x.reshape(len(x), -1))
    try:
        with open("/proc/loadavg") as f:
            load = f.read().strip()
    except OSError:
        load = "n/a"
    info = cr.cpu_info()
    print(f"CPU: {info['brand']} ({info['vendor']} family {info['family']} model {info['model']}), "
          f"kernel {info['kernel']}, loadavg {load}")
    for name in a.models:
        for t in a.threads:
            run(name, x, y, t, a.rounds, not a.no_monitor)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
