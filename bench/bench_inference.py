"""Inference: chainrule ``predict`` against PyTorch eager and ONNX Runtime, same weights.

Networks (float32, weights from a seeded chainrule model, not trained):

* ``mlp``: MNIST MLP 784-512-256-10, ReLU, softmax;
* ``cnn``: the CNN of examples/mnist_cnn.py on (28, 28, 1) images: Conv2D 16@5x5 relu,
  MaxPooling2D 2, Conv2D 32@5x5 relu, MaxPooling2D 2, Flatten, Dense 128 relu, Dropout 0.3,
  Dense 10 softmax;
* ``tiny``: Dense(1) on one feature: what a call costs beyond its arithmetic.

Contenders, each fed the same weights: ``chainrule`` (``model.predict(x)``, numpy in and
out), ``torch_no_grad`` and ``torch_inference_mode`` (the module ``chainrule.torch_interop.
to_torch`` builds, called on a tensor under ``torch.no_grad()`` / ``torch.inference_mode()``;
images NCHW as PyTorch takes them, laid out before the timing), and ``onnxruntime`` (the file
``model.export`` writes, CPUExecutionProvider, ``intra_op_num_threads`` = the thread count,
``inter_op_num_threads`` = 1, numpy in and out). Before any timing the setup step checks
that the three compute the same outputs on the 10,000 inputs (``np.allclose``, rtol 1e-4,
atol 1e-6) and every timing process checks its own outputs against chainrule's again.

Measures, per network and thread count:

* batch 1 latency: after ``--warmup`` calls, ``--calls`` single-sample calls, each timed on
  its own; the median and the minimum per call;
* batch 10,000 throughput: after one warm-up call, ``--big-calls`` calls on 10,000 samples
  (MNIST's test images, or uniform noise without the data); samples/s of the median and of
  the fastest call. chainrule predicts with its default ``batch_size`` (256) unless
  ``--cr-batch-size`` says otherwise;
* for chainrule on ``tiny`` also the core call alone (``model._core.predict``), so that the
  Python side of ``predict`` (validation, conversion checks, the output's shape) is the
  difference.

Each (contender, network, threads) runs in its own subprocess (a fresh interpreter with
OMP_NUM_THREADS, MKL_NUM_THREADS and the library's own thread setting all equal), the
contenders interleaved in rounds (their order rotating) so that drifting machine load hits
all of them alike. Reported: the median over rounds of each process's median, the minimum
over everything, and the ratios "chainrule vs X": X's latency / chainrule's latency at
batch 1 and chainrule's throughput / X's throughput at batch 10,000, so > 1 means chainrule
is faster either way.

    flock /tmp/bench.lock python bench/bench_inference.py [--threads 1 2] [--rounds 3]
        [--nets mlp cnn tiny] [--json out.json]

Needs torch, onnx and onnxruntime (the contenders that are missing are skipped, and said so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_MNIST = os.environ.get("CHAINRULE_MNIST_DIR", os.path.join(REPO, "..", "shared", "data", "mnist"))
CONTENDERS = ("chainrule", "torch_no_grad", "torch_inference_mode", "onnxruntime")
NETS = ("mlp", "cnn", "tiny")
BIG = 10_000
RTOL, ATOL = 1e-4, 1e-6
SEED = 0


def _import_chainrule():
    import chainrule  # the installed one (pip install . from the repository root)
    return chainrule


# -- setup: models, files, inputs, reference outputs, the equality check -------------------------

def build_model(cr, net):
    from chainrule.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D
    if net == "mlp":
        layers = [Dense(512, activation="relu", input_shape=(784,)), Dense(256, activation="relu"),
                  Dense(10, activation="softmax")]
    elif net == "cnn":
        layers = [Conv2D(16, 5, activation="relu", input_shape=(28, 28, 1)), MaxPooling2D(2),
                  Conv2D(32, 5, activation="relu"), MaxPooling2D(2), Flatten(),
                  Dense(128, activation="relu"), Dropout(0.3), Dense(10, activation="softmax")]
    else:
        layers = [Dense(1, input_shape=(1,))]
    model = cr.Sequential(layers, name=net, seed=SEED)
    model.build()
    return model


def inputs(cr, net, mnist_dir):
    """The 10,000 inputs of ``net`` (float32, C-contiguous, the shape predict takes) and where
    they came from."""
    import numpy as np
    if net == "tiny":
        return np.random.default_rng(SEED).standard_normal((BIG, 1)).astype(np.float32), "normal noise"
    try:
        from chainrule.datasets import load_mnist
        _, (x, _) = load_mnist(mnist_dir, download=False, normalize=True)
        source = "MNIST test images"
    except Exception as e:  # no data here: the timing does not depend on the values
        print(f"MNIST not available ({e}); using uniform noise", file=sys.stderr)
        x = np.random.default_rng(SEED).random((BIG, 28, 28), dtype=np.float32)
        source = "uniform noise"
    x = np.ascontiguousarray(x[:BIG], dtype=np.float32)
    return (x.reshape(BIG, 784) if net == "mlp" else x.reshape(BIG, 28, 28, 1)), source


def torch_input(x, torch):
    """``x`` as the tensor the to_torch module takes (NCHW for images), contiguous."""
    if x.ndim == 4:
        x = x.transpose(0, 3, 1, 2)
    import numpy as np
    return torch.from_numpy(np.ascontiguousarray(x))


def setup(workdir, nets, mnist_dir, available):
    """Write per network the chainrule model file, the ONNX file, the inputs and chainrule's
    outputs; check the contenders against them. Returns the check's record."""
    import numpy as np
    cr = _import_chainrule()
    record = {}
    for net in nets:
        model = build_model(cr, net)
        x, source = inputs(cr, net, mnist_dir)
        ref = model.predict(x)
        model.save(os.path.join(workdir, f"{net}.crm"))
        np.save(os.path.join(workdir, f"{net}_x.npy"), x)
        np.save(os.path.join(workdir, f"{net}_ref.npy"), ref)
        rec = {"inputs": source, "params": int(model.count_params())}
        if "onnxruntime" in available:
            model.export(os.path.join(workdir, f"{net}.onnx"))
            import onnxruntime as ort
            sess = ort.InferenceSession(os.path.join(workdir, f"{net}.onnx"), providers=["CPUExecutionProvider"])
            got = sess.run(["output"], {"input": x})[0]
            rec["onnxruntime_max_abs_diff"] = float(np.max(np.abs(got - ref)))
            if not np.allclose(got, ref, rtol=RTOL, atol=ATOL):
                raise SystemExit(f"{net}: ONNX Runtime's outputs differ from chainrule's "
                                 f"(max |diff| {rec['onnxruntime_max_abs_diff']:.3g})")
        if "torch_no_grad" in available:
            import torch
            from chainrule.torch_interop import to_torch
            tnet = to_torch(model)
            with torch.no_grad():
                got = tnet(torch_input(x, torch)).numpy()
            rec["torch_max_abs_diff"] = float(np.max(np.abs(got - ref)))
            if not np.allclose(got, ref, rtol=RTOL, atol=ATOL):
                raise SystemExit(f"{net}: PyTorch's outputs differ from chainrule's "
                                 f"(max |diff| {rec['torch_max_abs_diff']:.3g})")
        record[net] = rec
    return record


# -- worker: one contender, one network, one thread count ----------------------------------------

def time_calls(fn, warmup, calls):
    """Per-call seconds of ``calls`` calls of ``fn`` after ``warmup`` untimed ones."""
    clock = time.perf_counter_ns
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(calls):
        t0 = clock()
        fn()
        out.append(clock() - t0)
    return [t * 1e-9 for t in out]


def worker(args):
    import numpy as np
    threads, net, who, d = args.threads[0], args.net, args.worker, args.dir
    x = np.load(os.path.join(d, f"{net}_x.npy"))
    ref = np.load(os.path.join(d, f"{net}_ref.npy"))
    x1 = np.ascontiguousarray(x[:1])
    result = {"contender": who, "net": net, "threads": threads}

    if who == "chainrule":
        cr = _import_chainrule()
        cr.set_num_threads(threads)
        model = cr.load_model(os.path.join(d, f"{net}.crm"))
        kw = {} if args.cr_batch_size is None else {"batch_size": args.cr_batch_size}
        one = lambda: model.predict(x1)  # noqa: E731
        big = lambda: model.predict(x, **kw)  # noqa: E731
        result["batch_size"] = args.cr_batch_size or 256
        result["threads_seen"] = cr.get_num_threads()
    elif who.startswith("torch"):
        import torch
        torch.set_num_threads(threads)
        cr = _import_chainrule()
        from chainrule.torch_interop import to_torch
        tnet = to_torch(cr.load_model(os.path.join(d, f"{net}.crm")))
        xt, xt1 = torch_input(x, torch), torch_input(x1, torch)
        mode = torch.no_grad if who == "torch_no_grad" else torch.inference_mode

        def one():
            with mode():
                return tnet(xt1)

        def big():
            with mode():
                return tnet(xt).numpy()
        result["threads_seen"] = torch.get_num_threads()
    else:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(os.path.join(d, f"{net}.onnx"), so, providers=["CPUExecutionProvider"])
        run = sess.run
        one = lambda: run(["output"], {"input": x1})[0]  # noqa: E731
        big = lambda: run(["output"], {"input": x})[0]  # noqa: E731
        result["threads_seen"] = threads

    got = np.asarray(big())
    if not np.allclose(got, ref, rtol=RTOL, atol=ATOL):
        raise SystemExit(f"{who} on {net}: outputs differ from chainrule's (max |diff| "
                         f"{float(np.max(np.abs(got - ref))):.3g})")
    lat = time_calls(one, args.warmup, args.calls)
    result["batch1_s"] = lat
    result["batch1_median_s"] = statistics.median(lat)
    result["batch1_min_s"] = min(lat)
    if net != "tiny":
        bt = time_calls(big, 1, args.big_calls)
        result["big_s"] = bt
        result["big_median_sps"] = BIG / statistics.median(bt)
        result["big_best_sps"] = BIG / min(bt)
    if who == "chainrule" and net == "tiny":  # the core call alone: predict minus Python
        core, X1 = model._core, x1.reshape(1, -1)
        c = time_calls(lambda: core.predict(X1, 256), args.warmup, args.calls)
        result["core_median_s"] = statistics.median(c)
        result["core_min_s"] = min(c)
    json.dump(result, sys.stdout)


# -- driver ------------------------------------------------------------------------------------

def available_contenders():
    import importlib.util
    have = {m: importlib.util.find_spec(m) is not None for m in ("torch", "onnx", "onnxruntime")}
    out = ["chainrule"]
    if have["torch"]:
        out += ["torch_no_grad", "torch_inference_mode"]
    if have["onnx"] and have["onnxruntime"]:
        out.append("onnxruntime")
    return out, [m for m, ok in have.items() if not ok]


def run_worker(args, workdir, who, net, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", who, "--net", net, "--threads", str(threads),
           "--dir", workdir, "--calls", str(args.calls), "--warmup", str(args.warmup),
           "--big-calls", str(args.big_calls)]
    if args.cr_batch_size is not None:
        cmd += ["--cr-batch-size", str(args.cr_batch_size)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"worker {who}/{net}/{threads} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout)


def summarize(raw, contenders):
    """{(net, threads): {contender: stats}} with medians of the per-process medians and the
    minima over everything."""
    out = {}
    for r in raw:
        out.setdefault((r["net"], r["threads"]), {}).setdefault(r["contender"], []).append(r)
    summary = {}
    for key, by in out.items():
        s = {}
        for who, runs in by.items():
            e = {"batch1_median_us": statistics.median(r["batch1_median_s"] for r in runs) * 1e6,
                 "batch1_min_us": min(r["batch1_min_s"] for r in runs) * 1e6}
            if "big_median_sps" in runs[0]:
                e["big_median_sps"] = statistics.median(r["big_median_sps"] for r in runs)
                e["big_best_sps"] = max(r["big_best_sps"] for r in runs)
            if "core_median_s" in runs[0]:
                e["core_median_us"] = statistics.median(r["core_median_s"] for r in runs) * 1e6
                e["core_min_us"] = min(r["core_min_s"] for r in runs) * 1e6
                e["python_side_median_us"] = e["batch1_median_us"] - e["core_median_us"]
            s[who] = e
        cr_ = s.get("chainrule")
        if cr_:
            for who, e in s.items():
                if who == "chainrule":
                    continue
                e["latency_ratio_median"] = e["batch1_median_us"] / cr_["batch1_median_us"]
                e["latency_ratio_min"] = e["batch1_min_us"] / cr_["batch1_min_us"]
                if "big_median_sps" in e:
                    e["throughput_ratio_median"] = cr_["big_median_sps"] / e["big_median_sps"]
                    e["throughput_ratio_best"] = cr_["big_best_sps"] / e["big_best_sps"]
        summary[f"{key[0]}@{key[1]}"] = s
    return summary


def print_table(summary, contenders):
    short = {"chainrule": "chainrule", "torch_no_grad": "torch(no_grad)",
             "torch_inference_mode": "torch(inf_mode)", "onnxruntime": "onnxruntime"}
    def table(title, width, keys, cell):
        print()
        print(title)
        print(f"{'net@threads':<12}" + "".join(f"{short[c]:>{width}}" for c in contenders))
        for key in keys:
            row = f"{key:<12}"
            for c in contenders:
                e = summary[key].get(c)
                row += f"{'-' if e is None else cell(c, e):>{width}}"
            print(row)

    def latency(c, e):
        cell = f"{e['batch1_median_us']:.1f} [{e['batch1_min_us']:.1f}]"
        return cell + (f" {e['latency_ratio_median']:.2f}x" if c != "chainrule" and "latency_ratio_median" in e else "")

    def throughput(c, e):
        cell = f"{e['big_median_sps']:,.0f} [{e['big_best_sps']:,.0f}]"
        return cell + (f" {e['throughput_ratio_median']:.2f}x" if c != "chainrule" else "")

    table("batch 1 latency, us per call: median [min]; ratio = X / chainrule (> 1: chainrule faster)", 24,
          list(summary), latency)
    table(f"batch {BIG:,} throughput, samples/s: median [best]; ratio = chainrule / X (> 1: chainrule faster)", 26,
          [k for k, s in summary.items() if "big_median_sps" in s.get("chainrule", {})], throughput)
    print()
    for key, s in summary.items():
        e = s.get("chainrule", {})
        if "core_median_us" in e:
            print(f"chainrule predict on one sample of Dense(1) ({key}): {e['batch1_median_us']:.2f} us median "
                  f"[{e['batch1_min_us']:.2f} min]; the core call alone {e['core_median_us']:.2f} us "
                  f"[{e['core_min_us']:.2f}]; Python side {e['python_side_median_us']:.2f} us")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS))
    ap.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    ap.add_argument("--calls", type=int, default=2000, help="timed batch-1 calls per process")
    ap.add_argument("--warmup", type=int, default=200, help="untimed batch-1 calls first")
    ap.add_argument("--big-calls", type=int, default=5, help=f"timed batch-{BIG} calls per process")
    ap.add_argument("--cr-batch-size", type=int, default=None, help="chainrule predict's batch_size (256)")
    ap.add_argument("--data", default=DEFAULT_MNIST, help="folder with the MNIST .gz files")
    ap.add_argument("--json", default=None, help="write the raw times and the summary here")
    ap.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    ap.add_argument("--net", choices=NETS, help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    available, missing = available_contenders()
    contenders = [c for c in args.contenders if c in available]
    if missing:
        print(f"not installed: {', '.join(missing)}; skipped: "
              f"{', '.join(c for c in args.contenders if c not in available) or 'none'}", file=sys.stderr)
    load_before = os.getloadavg()
    t_start = time.time()
    raw = []
    with tempfile.TemporaryDirectory(prefix="cr_bench_inference_") as workdir:
        check = setup(workdir, args.nets, args.data, contenders)
        print(f"outputs agree (rtol {RTOL}, atol {ATOL}): {json.dumps(check)}", flush=True)
        for rnd in range(args.rounds):
            for threads in args.threads:
                for net in args.nets:
                    k = rnd % len(contenders)
                    for who in contenders[k:] + contenders[:k]:
                        r = run_worker(args, workdir, who, net, threads)
                        r["round"] = rnd
                        raw.append(r)
                        print(f"round {rnd} {net}@{threads} {who}: batch1 {r['batch1_median_s'] * 1e6:.1f} us"
                              + (f", batch {BIG} {r['big_median_sps']:,.0f} samples/s" if "big_median_sps" in r else ""),
                              flush=True)
    summary = summarize(raw, contenders)
    print_table(summary, contenders)
    load_after = os.getloadavg()
    print(f"\nload average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; {time.time() - t_start:.0f} s")
    if args.json:
        versions = {}
        for m in ("numpy", "torch", "onnx", "onnxruntime", "chainrule"):
            try:
                versions[m] = __import__(m).__version__
            except Exception:
                pass
        try:
            commit = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"], capture_output=True,
                                    text=True).stdout.strip()
        except OSError:
            commit = None
        meta = {"argv": sys.argv, "commit": commit, "chainrule_file": _import_chainrule().__file__, "machine": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(), "python": sys.version.split()[0], "versions": versions,
                "load_before": load_before, "load_after": load_after, "outputs_check": check,
                "contenders": contenders, "missing": missing}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "summary": summary, "raw": raw}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
