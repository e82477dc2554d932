"""chainrule vs its peers on the same CPU: one command, one table, one JSON file.

    python bench/run.py                 # everything, at 1 thread and at all cores
    python bench/run.py --quick         # MLP batch 128 + small MLP + GEMM, fewer rounds
    python bench/run.py --workloads mlp128,lenet --threads 1,2 --rounds 5
    python bench/run.py --quick --baseline /tmp/venv-old/bin/python   # this tree vs another build
    python bench/run.py --workloads small32 --isa avx2   # every contender held to AVX2 + FMA

Every measurement runs in its own process (bench/worker.py); contenders are interleaved
(A B C A B C …, rotating the order each round) because timings on shared machines drift;
the table gives the median and the minimum over rounds of the per-epoch time, the ratio
peer median / chainrule median (> 1: chainrule is faster), the achieved GFLOP/s and its share
of the machine's GEMM peak (numpy's BLAS at 2048³, same thread count, measured in this run),
peak resident memory (RSS MB) and what the contender adds to it on top of Python, numpy and
the loaded data set (+RSS). Results are also written as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# name: (worker workload, batch, contenders, training GFLOP per epoch)
def _mlp_gflop(sizes, n=60000):
    w = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    # forward x·W, weight gradient xᵀ·dY, input gradient dY·Wᵀ (not for the first layer)
    return n * (2 * sum(w) + 2 * sum(w) + 2 * sum(w[1:])) / 1e9


def _lenet_gflop(n=60000):
    conv1 = 2 * 24 * 24 * 8 * 25
    conv2 = 2 * 8 * 8 * 16 * (25 * 8)
    dense = 2 * 256 * 10
    return n * (3 * (conv1 + conv2 + dense) - conv1) / 1e9


def _cnn_gflop(n=60000):
    """examples/mnist_cnn.py: conv16-5x5 > pool > conv32-5x5 > pool > dense128 > dropout > dense10."""
    conv1 = 2 * 24 * 24 * 16 * 25
    conv2 = 2 * 8 * 8 * 32 * (25 * 16)
    dense = 2 * 512 * 128 + 2 * 128 * 10
    return n * (3 * (conv1 + conv2 + dense) - conv1) / 1e9


WORKLOADS = {
    "mlp128": ("mlp", 128, ["chainrule", "torch", "sklearn", "numpy"], _mlp_gflop((784, 512, 256, 10))),
    "mlp32": ("mlp", 32, ["chainrule", "torch", "numpy"], _mlp_gflop((784, 512, 256, 10))),
    "mlp512": ("mlp", 512, ["chainrule", "torch", "numpy"], _mlp_gflop((784, 512, 256, 10))),
    "small32": ("small", 32, ["chainrule", "torch", "sklearn", "numpy"], _mlp_gflop((784, 32, 10))),
    "lenet64": ("lenet", 64, ["chainrule", "torch"], _lenet_gflop()),
    "cnn64": ("cnn", 64, ["chainrule", "torch"], _cnn_gflop()),
}


# --isa avx2: every contender held to AVX2 + FMA, as on a CPU without AVX-512 (chainrule's
# kernel dispatch, PyTorch's ATen kernels and oneDNN, MKL, and numpy's OpenBLAS).
ISA_ENV = {
    "avx2": {"CHAINRULE_CPU_TARGET": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "DNNL_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OPENBLAS_CORETYPE": "Haswell"},
}
ISA = None


def child_env(threads):
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    # Some machines set these to work around old OpenBLAS bugs; they slow a current numpy.
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    if ISA:
        env.update(ISA_ENV[ISA])
    return env


# --baseline: the Python interpreter of another chainrule install, run as the contender
# "baseline" (the same chainrule worker code) to compare two builds in one interleaved run.
BASELINE_PYTHON = None


def run_worker(args, threads, timeout=1800):
    python = sys.executable
    if args and args[0] == "baseline":
        python, args = BASELINE_PYTHON, ["chainrule"] + list(args[1:])
    cmd = [python, os.path.join(HERE, "worker.py")] + [str(a) for a in args] + ["--threads", str(threads)]
    r = subprocess.run(cmd, env=child_env(threads), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1:] or ["failed"]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def available(contender):
    if contender == "baseline":
        if not BASELINE_PYTHON:
            return False
        r = subprocess.run([BASELINE_PYTHON, "-c", "import chainrule"], capture_output=True, cwd="/")
        return r.returncode == 0
    mod = {"chainrule": "chainrule", "torch": "torch", "sklearn": "sklearn", "numpy": "numpy"}[contender]
    r = subprocess.run([sys.executable, "-c", f"import {mod}"], capture_output=True)
    return r.returncode == 0


def bench_training(name, threads, rounds, epochs, warmup, contenders_ok, log):
    workload, batch, contenders, gflop = WORKLOADS[name]
    contenders = [c for c in contenders + ["baseline"] if c in contenders_ok]
    res = {c: {"epoch_s": [], "peak_rss_mb": [], "data_rss_mb": []} for c in contenders}
    for r in range(rounds):
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        for c in order:
            out = run_worker([c, workload, "--batch", batch, "--epochs", epochs, "--warmup", warmup], threads)
            if "error" in out:
                res[c]["error"] = out["error"]
                log(f"  {name} {c} t{threads}: error {out['error']}")
                continue
            res[c]["epoch_s"] += out["epoch_s"]
            res[c]["peak_rss_mb"].append(out["peak_rss_mb"])
            res[c]["data_rss_mb"].append(out.get("data_rss_mb", 0.0))
            log(f"  {name} t{threads} round {r + 1}: {c} {', '.join(f'{t:.3f}' for t in out['epoch_s'])} s")
    for c in contenders:
        ts = res[c]["epoch_s"]
        if ts:
            res[c]["median_s"] = statistics.median(ts)
            res[c]["min_s"] = min(ts)
            res[c]["gflops"] = gflop / res[c]["median_s"]
            res[c]["peak_rss_mb"] = max(res[c]["peak_rss_mb"])
            # what the contender adds on top of Python + numpy + the data set
            res[c]["added_rss_mb"] = res[c]["peak_rss_mb"] - max(res[c]["data_rss_mb"])
    return {"workload": workload, "batch": batch, "threads": threads, "gflop_per_epoch": gflop, "results": res}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma list of {list(WORKLOADS)}")
    p.add_argument("--threads", default=f"1,{os.cpu_count()}", help="comma list of thread counts")
    p.add_argument("--rounds", type=int, default=3, help="processes per contender (interleaved)")
    p.add_argument("--epochs", type=int, default=1, help="timed epochs per process")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs per process first")
    p.add_argument("--contenders", default=None,
                   help="comma list: run only these of chainrule, torch, sklearn, numpy (default: all installed)")
    p.add_argument("--isa", choices=sorted(ISA_ENV), default=None,
                   help="hold every contender to this instruction set (avx2: a CPU without AVX-512)")
    p.add_argument("--no-gemm", action="store_true")
    p.add_argument("--quick", action="store_true", help="mlp128 and small32 only, 3 rounds")
    p.add_argument("--out", default=os.path.join(HERE, "results.json"))
    p.add_argument("--baseline", default=None,
                   help="Python of another chainrule install: its chainrule runs as contender 'baseline'")
    a = p.parse_args()
    global BASELINE_PYTHON, ISA
    BASELINE_PYTHON = a.baseline
    ISA = a.isa
    names = ["mlp128", "small32"] if a.quick else [w for w in a.workloads.split(",") if w]
    for w in names:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}; choose from {list(WORKLOADS)}")
    threads = sorted({int(t) for t in a.threads.split(",")})
    log = lambda m: print(m, file=sys.stderr, flush=True)
    wanted = None if a.contenders is None else {c for c in a.contenders.split(",") if c}
    if wanted is not None and not wanted <= {"chainrule", "torch", "sklearn", "numpy", "baseline"}:
        p.error(f"unknown contender in --contenders {a.contenders!r}")
    ok = [c for c in ("chainrule", "torch", "sklearn", "numpy", "baseline")
          if (wanted is None or c in wanted) and available(c)]
    log(f"contenders available: {ok}")

    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_count": os.cpu_count(), "python": platform.python_version()},
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "training": [], "gemm": {}, "import": {}}
    report["machine"]["isa"] = ISA
    if "chainrule" in ok:
        out = subprocess.run([sys.executable, "-c", "import chainrule, json; print(json.dumps(chainrule.cpu_info()))"],
                             capture_output=True, text=True, env=child_env(1))
        report["machine"]["chainrule_cpu_info"] = info = json.loads(out.stdout) if out.returncode == 0 else None
        if info:
            log(f"CPU: {info['brand']} ({info['vendor']} family {info['family']} model {info['model']}), "
                f"kernel {info['kernel']}")
    if "torch" in ok:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
        report["machine"]["torch"] = out.stdout.strip()

    peaks = {}
    if not a.no_gemm:
        for t in threads:
            rows = {}
            for r in range(max(1, a.rounds // 2 + 1)):
                for c in [x for x in ("chainrule", "numpy") if x in ok]:
                    out = run_worker([c, "gemm"], t)
                    if "error" in out:
                        log(f"  gemm {c} t{t}: error {out['error']}")
                        continue
                    for shape, v in out["gemm"].items():
                        rows.setdefault(shape, {}).setdefault(c, []).append(v["gflops"])
            report["gemm"][t] = {s: {c: statistics.median(v) for c, v in d.items()} for s, d in rows.items()}
            if "peak 2048^3" in report["gemm"][t]:
                peaks[t] = report["gemm"][t]["peak 2048^3"]["numpy"]
    report["gemm_peak_gflops"] = peaks

    for name in names:
        for t in threads:
            log(f"{name} at {t} thread(s)")
            report["training"].append(bench_training(name, t, a.rounds, a.epochs, a.warmup, ok, log))

    # `import X` in a fresh interpreter, numpy included (bench/worker.py imports numpy first)
    code = "import time; t = time.perf_counter(); import {}; print(time.perf_counter() - t)"
    for c in [x for x in ("chainrule", "torch") if x in ok]:
        vals = []
        for _ in range(5):
            r = subprocess.run([sys.executable, "-c", code.format(c)], capture_output=True, text=True,
                               env=child_env(1))
            if r.returncode == 0:
                vals.append(float(r.stdout.strip().splitlines()[-1]))
        if vals:
            report["import"][c] = statistics.median(vals)

    # ---- the table ----
    lines = []
    lines.append(f"chainrule benchmark — {report['machine']['processor'] or platform.machine()}, "
                 f"{os.cpu_count()} cores, torch {report['machine'].get('torch', '-')}; "
                 f"median (min) seconds per MNIST epoch over {a.rounds} processes x {a.epochs} epoch(s)")
    hdr = f"{'workload':<10} {'thr':>3}  {'contender':<10} {'median s':>9} {'min s':>8} {'peer/cr':>8} {'GFLOP/s':>8} {'%peak':>6} {'RSS MB':>7} {'+RSS':>6}"
    lines += [hdr, "-" * len(hdr)]
    for entry in report["training"]:
        res = entry["results"]
        base = res.get("chainrule", {}).get("median_s")
        peak = peaks.get(entry["threads"])
        for c, r in res.items():
            if "median_s" not in r:
                lines.append(f"{entry['workload'] + str(entry['batch']):<10} {entry['threads']:>3}  {c:<10} {'error':>9}")
                continue
            ratio = f"{r['median_s'] / base:.2f}x" if base else "-"
            pk = f"{100 * r['gflops'] / peak:.0f}%" if peak else "-"
            lines.append(f"{entry['workload'] + str(entry['batch']):<10} {entry['threads']:>3}  {c:<10} "
                         f"{r['median_s']:>9.3f} {r['min_s']:>8.3f} {ratio:>8} {r['gflops']:>8.1f} {pk:>6} "
                         f"{r['peak_rss_mb']:>7.0f} {r['added_rss_mb']:>6.0f}")
        lines.append("")
    if report["gemm"]:
        lines.append("GEMM GFLOP/s (median), chainrule vs numpy's BLAS:")
        for t, rows in report["gemm"].items():
            for shape, d in rows.items():
                cr_, np_ = d.get("chainrule"), d.get("numpy")
                ratio = f"{cr_ / np_:.2f}x" if cr_ and np_ else "-"
                fmt = lambda v: f"{v:>7.1f}" if v else f"{'-':>7}"
                lines.append(f"  t{t} {shape:<13} chainrule {fmt(cr_)}  numpy {fmt(np_)}  cr/np {ratio}")
    if report["import"]:
        lines.append("import time (median of 5 fresh processes): " +
                     ", ".join(f"{c} {v:.3f} s" for c, v in report["import"].items()))
    table = "\n".join(lines)
    print(table)
    report["table"] = table
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)
    log(f"results written to {a.out}")


if __name__ == "__main__":
    main()
