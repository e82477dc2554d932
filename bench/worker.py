"""One contender on one workload, in its own process (spawned by bench/run.py).

    python bench/worker.py CONTENDER WORKLOAD --threads N --batch B --epochs E --warmup W

Prints one JSON line: per-epoch seconds (warm-up epochs excluded), peak RSS, and extras.
Contenders: chainrule, torch, sklearn, numpy. Workloads: mlp (784-512-256-10), small
(784-32-10), lenet (conv8-5x5 > pool > conv16-5x5 > pool > dense10), cnn (the network of
examples/mnist_cnn.py: conv16-5x5 > pool > conv32-5x5 > pool > dense128 > dropout 0.3 >
dense10, He-normal weights for the ReLU layers, Glorot-uniform for the output, zero biases,
SGD lr 0.03), gemm.
Every training contender does the same work per epoch: a fresh random order, mini-batches
(last one partial), forward, softmax cross-entropy, backward, SGD momentum 0.9 step, and the
running loss and accuracy.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import sys
import time

import numpy as np

LR, MOMENTUM = 0.05, 0.9
LR_FOR = {"cnn": 0.03}  # as examples/mnist_cnn.py; the other workloads use LR
ARCH = {"mlp": (784, 512, 256, 10), "small": (784, 32, 10)}


def mnist_dir():
    d = os.environ.get("CHAINRULE_MNIST_DIR")
    if d:
        return d
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, "..", "..", "shared", "data", "mnist")


def load_mnist_train():
    """Training images as float32 in [0, 1], (60000, 784), and int64 labels — read with
    numpy only, so no contender pays for another's imports, and streamed in chunks so the
    loader's own transient memory stays small next to what training uses."""
    d = mnist_dir()
    with gzip.open(os.path.join(d, "train-images-idx3-ubyte.gz")) as f:
        n = int.from_bytes(f.read(16)[4:8], "big")
        x = np.empty((n, 784), np.float32)
        for i in range(0, n, 5000):
            k = min(5000, n - i)
            x[i:i + k] = np.frombuffer(f.read(784 * k), np.uint8).reshape(k, 784)
    x /= 255.0
    with gzip.open(os.path.join(d, "train-labels-idx1-ubyte.gz")) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return x, y


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- chainrule ------------------------------------------------------------------------------
def run_chainrule(workload, x, y, batch, epochs, warmup, threads):
    import chainrule as cr
    cr.set_num_threads(threads)
    L = cr.layers
    if workload == "lenet":
        x = x.reshape(-1, 28, 28, 1)
        layers = [L.Conv2D(8, 5, activation="relu"), L.MaxPooling2D(2), L.Conv2D(16, 5, activation="relu"),
                  L.MaxPooling2D(2), L.Flatten(), L.Dense(10, activation="softmax")]
    elif workload == "cnn":  # examples/mnist_cnn.py: (28, 28) images read as one channel
        x = x.reshape(-1, 28, 28)
        layers = [L.Conv2D(16, 5, activation="relu"), L.MaxPooling2D(2), L.Conv2D(32, 5, activation="relu"),
                  L.MaxPooling2D(2), L.Flatten(), L.Dense(128, activation="relu"), L.Dropout(0.3),
                  L.Dense(10, activation="softmax")]
    else:
        sizes = ARCH[workload]
        layers = [L.Dense(n, activation="relu") for n in sizes[1:-1]] + [L.Dense(sizes[-1], activation="softmax")]
    model = cr.Sequential(layers, seed=0)
    model.compile(optimizer=cr.optimizers.SGD(LR_FOR.get(workload, LR), momentum=MOMENTUM),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.build(x.shape[1:])
    model._core.set_monitor(os.environ.get("CHAINRULE_BENCH_MONITOR", "1") == "1")
    marks = []
    cb = cr.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: marks.append(time.perf_counter()),
                                     on_epoch_end=lambda e, logs: marks.append(time.perf_counter()))
    h = model.fit(x, y, epochs=warmup + epochs, batch_size=batch, verbose=0, seed=0, callbacks=[cb],
                  gradient_warnings=False)
    times = [marks[2 * i + 1] - marks[2 * i] for i in range(warmup + epochs)][warmup:]
    return times, {"final_loss": h.history["loss"][-1], "kernel": cr.cpu_info()["kernel"]}


# -- PyTorch eager ----------------------------------------------------------------------------
def run_torch(workload, x, y, batch, epochs, warmup, threads):
    import torch
    from torch import nn
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if workload == "lenet":
        x = x.reshape(-1, 1, 28, 28)
        model = nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 5), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    elif workload == "cnn":
        x = x.reshape(-1, 1, 28, 28)
        model = nn.Sequential(nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 5), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 128), nn.ReLU(),
                              nn.Dropout(0.3), nn.Linear(128, 10))
        # chainrule's defaults, as the example uses them: He normal (fan_in) before a ReLU,
        # Glorot uniform for the output layer, zero biases
        with torch.no_grad():
            for m in model:
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    if m is model[-1]:
                        nn.init.xavier_uniform_(m.weight)
                    else:
                        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)
    else:
        sizes = ARCH[workload]
        mods = []
        for a, b in zip(sizes[:-2], sizes[1:-1]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        model = nn.Sequential(*mods, nn.Linear(sizes[-2], sizes[-1]))
    X, Y = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=LR_FOR.get(workload, LR), momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    n = X.shape[0]
    times = []
    for epoch in range(warmup + epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n)
        total, correct = 0.0, 0
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            xb, yb = X[idx], Y[idx]
            opt.zero_grad()
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            correct += (out.argmax(1) == yb).sum().item()
        times.append(time.perf_counter() - t0)
    return times[warmup:], {"final_loss": total / n}


# -- scikit-learn ------------------------------------------------------------------------------
def run_sklearn(workload, x, y, batch, epochs, warmup, threads):
    import warnings
    from sklearn.neural_network import MLPClassifier
    sizes = ARCH[workload]
    clf = MLPClassifier(hidden_layer_sizes=sizes[1:-1], activation="relu", solver="sgd", alpha=0.0,
                        batch_size=batch, learning_rate_init=LR, momentum=MOMENTUM, nesterovs_momentum=False,
                        shuffle=True, random_state=0)
    classes = np.arange(10)
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in range(warmup + epochs):
            t0 = time.perf_counter()
            clf.partial_fit(x, y, classes=classes)  # one epoch of mini-batch SGD
            times.append(time.perf_counter() - t0)
    return times[warmup:], {"final_loss": float(clf.loss_)}


# -- plain numpy -------------------------------------------------------------------------------
def run_numpy(workload, x, y, batch, epochs, warmup, threads):
    sizes = ARCH[workload]
    rng = np.random.default_rng(0)
    W = [(rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32) for a, b in zip(sizes[:-1], sizes[1:])]
    bvec = [np.zeros(b, np.float32) for b in sizes[1:]]
    vW = [np.zeros_like(w) for w in W]
    vb = [np.zeros_like(b) for b in bvec]
    n = x.shape[0]
    times = []
    for epoch in range(warmup + epochs):
        t0 = time.perf_counter()
        perm = rng.permutation(n)
        total, correct = 0.0, 0
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            xb, yb = x[idx], y[idx]
            acts = [xb]
            for k, (w, b) in enumerate(zip(W, bvec)):
                z = acts[-1] @ w + b
                acts.append(np.maximum(z, 0) if k < len(W) - 1 else z)
            z = acts[-1]
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            p = e / e.sum(axis=1, keepdims=True)
            B = len(idx)
            total += float(-np.log(p[np.arange(B), yb] + 1e-12).sum())
            correct += int((p.argmax(1) == yb).sum())
            d = p
            d[np.arange(B), yb] -= 1.0
            d /= B
            for k in range(len(W) - 1, -1, -1):
                gW = acts[k].T @ d
                gb = d.sum(axis=0)
                if k > 0:
                    d = (d @ W[k].T) * (acts[k] > 0)
                vW[k] *= MOMENTUM
                vW[k] += gW
                W[k] -= LR * vW[k]
                vb[k] *= MOMENTUM
                vb[k] += gb
                bvec[k] -= LR * vb[k]
        times.append(time.perf_counter() - t0)
    return times[warmup:], {"final_loss": total / n}


# -- GEMM alone --------------------------------------------------------------------------------
# (M, N, K, trans_a, trans_b): 1024³, and the products of a batch-128 step of 784-512-256-10.
GEMM_SHAPES = [
    ("1024^3", 1024, 1024, 1024, False, False),
    ("fwd 784>512", 128, 512, 784, False, False), ("fwd 512>256", 128, 256, 512, False, False),
    ("fwd 256>10", 128, 10, 256, False, False),
    ("dW 784x512", 784, 512, 128, True, False), ("dW 512x256", 512, 256, 128, True, False),
    ("dW 256x10", 256, 10, 128, True, False),
    ("dx 512>256", 128, 512, 256, False, True), ("dx 256>10", 128, 256, 10, False, True),
]


def _time_best(fn, flops, min_time=0.3):
    fn()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.05:
        fn()
        reps += 1
    per = max(1, int(reps * min_time / 0.05 / 5))
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(per):
            fn()
        samples.append((time.perf_counter() - t) / per)
    samples.sort()
    return {"median_s": samples[2], "gflops": flops / samples[2] / 1e9, "best_gflops": flops / samples[0] / 1e9}


def run_gemm(contender, threads):
    rng = np.random.default_rng(0)
    out = {}
    shapes = list(GEMM_SHAPES)
    if contender == "numpy":
        shapes.append(("peak 2048^3", 2048, 2048, 2048, False, False))
    if contender == "chainrule":
        import chainrule as cr
        from chainrule import _core
        cr.set_num_threads(threads)
        kernel = cr.cpu_info()["kernel"]
    for name, M, N, K, ta, tb in shapes:
        A = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
        Bm = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
        C = np.zeros((M, N), np.float32)
        if contender == "chainrule":
            fn = lambda: _core._gemm(kernel, ta, tb, A, Bm, C, 1.0, 0.0)
        else:
            a = A.T if ta else A
            b = Bm.T if tb else Bm
            fn = lambda: np.matmul(a, b, out=C)
        out[name] = _time_best(fn, 2.0 * M * N * K)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("contender", choices=["chainrule", "torch", "sklearn", "numpy"])
    p.add_argument("workload", choices=["mlp", "small", "lenet", "cnn", "gemm"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    a = p.parse_args()
    if a.workload == "gemm":
        print(json.dumps({"gemm": run_gemm(a.contender, a.threads), "peak_rss_mb": peak_rss_mb()}))
        return
    x, y = load_mnist_train()
    data_rss = current_rss_mb()  # Python + numpy + the data, before the contender is imported
    fn = {"chainrule": run_chainrule, "torch": run_torch, "sklearn": run_sklearn, "numpy": run_numpy}[a.contender]
    times, extra = fn(a.workload, x, y, a.batch, a.epochs, a.warmup, a.threads)
    print(json.dumps({"epoch_s": times, "peak_rss_mb": peak_rss_mb(), "data_rss_mb": data_rss, **extra}))


if __name__ == "__main__":
    sys.exit(main())
