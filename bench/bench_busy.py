"""chainrule on a busy machine: the default thread setting against 1 thread while another
process burns a CPU, and GridSearchCV(n_jobs=2) against n_jobs=1.

    python bench/bench_busy.py                    # both parts, with one busy process
    python bench/bench_busy.py --part mlp --rounds 5 --samples 12000
    python bench/bench_busy.py --burners 0        # the same on the machine as it is

Part "mlp": an MNIST MLP epoch (784-512-256-10 batch 128, and the small 784-32-10 batch 32)
on the first --samples training images. Contenders, each in its own process, interleaved
(A B A B …, order rotated each round): "default" (no set_num_threads, no OMP_NUM_THREADS:
what a user gets) and "1 thread" (set_num_threads(1)). Per process: one warm-up epoch, then
the median of --epochs epochs; the table gives the median over rounds and the ratio
default / 1 thread (> 1: the default is slower).

Part "grid": GridSearchCV over chainrule.sklearn.MLPClassifier on load_digits (4 candidates x
3 folds, --grid-epochs epochs per fit), n_jobs=1 against n_jobs=2, each in its own process,
interleaved; median wall time. n_jobs=2 pays joblib's fixed costs (starting 2 worker
processes that import scikit-learn and chainrule: seconds), so a grid of a few seconds in
all measures those rather than the training.

The busy process is a pure Python loop (one process, one CPU), started before the
measurements and stopped at the end. The load average is printed before and after: on a
machine shared with other work the timings are noisy — read medians, not single runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def child_env(one_thread_blas=True):
    env = dict(os.environ)
    for k in THREAD_VARS:
        env.pop(k, None)
    # numpy's BLAS is not measured here; keep it from adding threads of its own.
    if one_thread_blas:
        env["OPENBLAS_NUM_THREADS"] = "1"
        env["MKL_NUM_THREADS"] = "1"
    return env


# -- children ---------------------------------------------------------------------------------
def child_mlp(args):
    import numpy as np
    sys.path.insert(0, HERE)
    from worker import load_mnist_train
    x, y = load_mnist_train()
    x, y = x[:args.samples], y[:args.samples]
    import chainrule as cr
    if args.threads is not None:
        cr.set_num_threads(args.threads)
    sizes = {"mlp": (512, 256), "small": (32,)}[args.workload]
    L = cr.layers
    model = cr.Sequential([L.Dense(n, activation="relu") for n in sizes] + [L.Dense(10, activation="softmax")], seed=0)
    model.compile(optimizer=cr.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    marks = []
    cb = cr.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: marks.append(time.perf_counter()),
                                     on_epoch_end=lambda e, logs: marks.append(time.perf_counter()))
    model.fit(x, y, epochs=1 + args.epochs, batch_size=args.batch, verbose=0, seed=0, callbacks=[cb])
    times = [marks[2 * i + 1] - marks[2 * i] for i in range(1 + args.epochs)][1:]
    print(json.dumps({"epoch_s": statistics.median(times), "threads": cr.get_num_threads(),
                      "final": float(np.asarray(model.evaluate(x[:1000], y[:1000], verbose=0)).ravel()[0])}))


def child_grid(args):
    import warnings
    warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter, by design here
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from chainrule.sklearn import MLPClassifier
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    grid = {"hidden_layer_sizes": [(64,), (128,)], "alpha": [1e-4, 1e-3]}
    est = MLPClassifier(max_iter=args.grid_epochs, random_state=0, tol=0.0, n_iter_no_change=1000)
    t0 = time.perf_counter()
    gs = GridSearchCV(est, grid, cv=3, n_jobs=args.n_jobs).fit(X, y)
    print(json.dumps({"wall_s": time.perf_counter() - t0, "best": gs.best_score_}))


# -- parent -----------------------------------------------------------------------------------
def run_child(argv):
    """argv: the child's arguments; a leading dict adds environment variables."""
    env = child_env()
    if argv and isinstance(argv[0], dict):
        env.update(argv[0])
        argv = argv[1:]
    cmd = [sys.executable, os.path.abspath(__file__), "--child"] + [str(a) for a in argv]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def start_burners(n):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def interleave(contenders, rounds):
    """contenders: {name: argv}; returns {name: [results]} measured A B … with the order
    rotated each round."""
    names = list(contenders)
    out = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            out[n].append(run_child(contenders[n]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="mlp,grid")
    ap.add_argument("--burners", type=int, default=1, help="busy processes to run meanwhile (default 1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=12000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workloads", default="mlp128,small32")
    ap.add_argument("--grid-epochs", type=int, default=100, help="max_iter of each grid fit")
    ap.add_argument("--spin", type=int, default=None,
                    help="also run the default setting with GOMP_SPINCOUNT=SPIN (300000: libgomp's own default)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    # child mode
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n_jobs", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_mlp(args) if args.kind == "mlp" else child_grid(args)

    parts = args.part.split(",")
    print(f"CPUs: {os.cpu_count()}  affinity: {len(os.sched_getaffinity(0))}  busy processes: {args.burners}")
    print(f"load average before: {loadavg()}")
    burners = start_burners(args.burners)
    results = {"burners": args.burners, "loadavg_before": loadavg()}
    try:
        time.sleep(1.0)
        if "mlp" in parts:
            for wl in args.workloads.split(","):
                workload, batch = {"mlp128": ("mlp", 128), "small32": ("small", 32)}[wl]
                base = ["--kind", "mlp", "--workload", workload, "--batch", batch, "--samples", args.samples,
                        "--epochs", args.epochs]
                contenders = {"default": base, "1 thread": base + ["--threads", 1]}
                if args.spin is not None:
                    contenders[f"default, GOMP_SPINCOUNT={args.spin}"] = [{"GOMP_SPINCOUNT": str(args.spin)}] + base
                res = interleave(contenders, args.rounds)
                o = [r["epoch_s"] for r in res["1 thread"]]
                results[wl] = {}
                for name in contenders:
                    d = [r["epoch_s"] for r in res[name]]
                    ratio = statistics.median(d) / statistics.median(o)
                    print(f"{wl:8s} ({args.samples} samples) {name:32s} epoch s median {statistics.median(d):.3f} "
                          f"[{', '.join(f'{v:.2f}' for v in d)}]  / 1 thread: {ratio:.2f}", flush=True)
                    results[wl][name] = {"epoch_s": d, "ratio_to_1_thread": ratio}
        if "grid" in parts:
            g = ["--kind", "grid", "--grid-epochs", args.grid_epochs]
            res = interleave({"n_jobs=1": g + ["--n_jobs", 1], "n_jobs=2": g + ["--n_jobs", 2]}, args.rounds)
            a = [r["wall_s"] for r in res["n_jobs=1"]]
            b = [r["wall_s"] for r in res["n_jobs=2"]]
            ratio = statistics.median(b) / statistics.median(a)
            print(f"GridSearchCV (12 fits x {args.grid_epochs} epochs) wall s  "
                  f"n_jobs=1: median {statistics.median(a):.2f} "
                  f"[{', '.join(f'{v:.1f}' for v in a)}]  n_jobs=2: median {statistics.median(b):.2f} "
                  f"[{', '.join(f'{v:.1f}' for v in b)}]  n_jobs=2 / n_jobs=1: {ratio:.2f}", flush=True)
            results["grid"] = {"n_jobs_1": a, "n_jobs_2": b, "ratio": ratio}
    finally:
        for p in burners:
            p.kill()
            p.wait()
    results["loadavg_after"] = loadavg()
    print(f"load average after: {results['loadavg_after']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
