"""LeNet-like CNN, one MNIST epoch: chainrule vs PyTorch eager on CPU.

conv(8, 5x5) -> ReLU -> maxpool 2 -> conv(16, 5x5) -> ReLU -> maxpool 2 -> flatten ->
dense(10), softmax cross-entropy, SGD(lr 0.05, momentum 0.9), batch 64, shuffled, float32.

Each contender runs in its own subprocess (fresh interpreter, OMP_NUM_THREADS and
torch.set_num_threads / chainrule.set_num_threads set to the same count), interleaved
A B A B ... so drifting machine load hits both alike. Each subprocess warms up on a few
hundred samples, then times one full epoch (60,000 samples, data already in memory as
float32; the per-epoch shuffle and batch gather are inside the timing for both).

    PYTHONPATH=python python bench/bench_cnn.py [--threads 1 2] [--reps 3] [--json out.json]

Prints median and min seconds per epoch per contender and the PyTorch/chainrule ratio of
medians, and writes all raw times as JSON.
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
REPO = os.path.dirname(HERE)
DEFAULT_MNIST = os.environ.get("CHAINRULE_MNIST_DIR", os.path.join(REPO, "..", "shared", "data", "mnist"))
BATCH, LR, MOMENTUM = 64, 0.05, 0.9


def load(path):
    # The chainrule on PYTHONPATH (e.g. a private build) wins; the source tree is the fallback.
    import importlib.util
    if importlib.util.find_spec("chainrule") is None:
        sys.path.insert(0, os.path.join(REPO, "python"))
    from chainrule.datasets import load_mnist
    (x, y), _ = load_mnist(path, download=False, normalize=True)
    return x, y


def worker_chainrule(x, y, threads, seed):
    import chainrule as cr
    from chainrule.layers import Conv2D, Dense, Flatten, MaxPooling2D
    from chainrule.optimizers import SGD
    if hasattr(cr, "set_num_threads"):
        cr.set_num_threads(threads)
    m = cr.Sequential([Conv2D(8, 5, activation="relu", input_shape=(28, 28, 1)), MaxPooling2D(2),
                       Conv2D(16, 5, activation="relu"), MaxPooling2D(2), Flatten(),
                       Dense(10, activation="softmax")], seed=seed)
    m.compile(optimizer=SGD(LR, momentum=MOMENTUM), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    x = x.reshape(-1, 28, 28, 1)
    m.fit(x[:640], y[:640], epochs=1, batch_size=BATCH, verbose=0, seed=seed)  # warm-up
    t0 = time.perf_counter()
    h = m.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, seed=seed)
    return time.perf_counter() - t0, float(h.history["accuracy"][-1])


def worker_torch(x, y, threads, seed):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 5), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    xt = torch.from_numpy(x.reshape(-1, 1, 28, 28))
    yt = torch.from_numpy(y)

    def epoch(n):
        perm = torch.randperm(n)
        correct = 0
        for i in range(0, n, BATCH):
            idx = perm[i:i + BATCH]
            xb, yb = xt[idx], yt[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            correct += int((out.argmax(1) == yb).sum())
        return correct / n

    perm0 = torch.arange(640)
    xt_full, yt_full = xt, yt
    xt, yt = xt_full[perm0], yt_full[perm0]
    epoch(640)  # warm-up
    xt, yt = xt_full, yt_full
    t0 = time.perf_counter()
    acc = epoch(len(y))
    return time.perf_counter() - t0, acc


def run_worker(args):
    x, y = load(args.data)
    fn = worker_chainrule if args.worker == "chainrule" else worker_torch
    threads = args.threads[0]
    secs, acc = fn(x, y, threads, args.seed)
    print(json.dumps({"contender": args.worker, "threads": threads, "seconds": secs, "train_accuracy": acc}))


def spawn(contender, threads, data, seed):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.environ.get("PYTHONPATH") or os.path.join(REPO, "python"))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", contender, "--threads", str(threads),
           "--data", data, "--seed", str(seed)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{contender} worker failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=3, help="timed epochs per contender and thread count")
    ap.add_argument("--data", default=DEFAULT_MNIST)
    ap.add_argument("--json", default=None, help="write the results here too")
    ap.add_argument("--only", choices=["chainrule", "torch"], default=None)
    ap.add_argument("--worker", choices=["chainrule", "torch"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return run_worker(args)

    contenders = [args.only] if args.only else ["chainrule", "torch"]
    results = {"benchmark": "lenet_mnist_epoch", "batch_size": BATCH, "learning_rate": LR,
               "momentum": MOMENTUM, "runs": [], "summary": {}}
    for threads in args.threads:
        times = {c: [] for c in contenders}
        for rep in range(args.reps):
            for c in contenders:  # interleaved: A B A B ...
                r = spawn(c, threads, args.data, rep)
                results["runs"].append(r)
                times[c].append(r["seconds"])
                print(f"threads={threads} rep={rep} {c:9s} {r['seconds']:.3f} s  "
                      f"(train acc {r['train_accuracy']:.4f})", flush=True)
        summ = {c: {"median_s": statistics.median(t), "min_s": min(t), "n": len(t)} for c, t in times.items()}
        if len(contenders) == 2:
            summ["torch_over_chainrule_median"] = summ["torch"]["median_s"] / summ["chainrule"]["median_s"]
            summ["torch_over_chainrule_min"] = summ["torch"]["min_s"] / summ["chainrule"]["min_s"]
        results["summary"][str(threads)] = summ

    print()
    print(f"{'threads':>7} {'contender':>10} {'median s':>9} {'min s':>7}")
    for threads, summ in results["summary"].items():
        for c in contenders:
            print(f"{threads:>7} {c:>10} {summ[c]['median_s']:9.3f} {summ[c]['min_s']:7.3f}")
        if len(contenders) == 2:
            print(f"{threads:>7} {'ratio':>10} {summ['torch_over_chainrule_median']:8.2f}x "
                  f"{summ['torch_over_chainrule_min']:6.2f}x  (PyTorch time / chainrule time)")
    print(json.dumps(results["summary"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
