"""The float32 Dense forward pass applies bias + activation inside the GEMM, tile by tile
(kernels/gemm.cpp GemmEpilogue). Check it against numpy in float64 across the GEMM's paths:
narrow N (dot-product and one-panel kernels), wide N, edge tiles, multi-threaded splits,
and K, M and N split into several cache blocks (the epilogue must run once, on the last K
block, with the bias index of each N block) — on every CPU target this machine can run
(CHAINRULE_CPU_TARGET, read once per process: one child process per target, which checks
that cpu_info()['kernel'] is the target asked for)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import act_reference
import chainrule as cr

TARGETS = [v for v in cr.cpu_info()["variants"] if v != "ref"]
# Every activation in the core's table (softmax: the Dense row pass after the GEMM, the
# others the tile epilogue), those with an alpha also at a non-default one.
ACTS = [act_reference.spec_id(s) for s in act_reference.specs()]

# float32 GEMM against the float64 product of the same float32 inputs (outputs are O(1)).
# Measured worst case: 3.6e-6 absolute (avx512, 257x512x256; generic 2.4e-6, avx2 2.1e-6),
# at most 0.11 of the bound |err| <= ATOL + RTOL*|want|; a misplaced bias (~0.5) or a
# missed activation is far beyond it.
RTOL = ATOL = 2e-5


def reference(x, w, b, spec):
    z = x.astype(np.float64) @ w.astype(np.float64) + b.astype(np.float64)
    return activate(z, spec)


def parse(spec):
    """'leaky_relu:0.3' -> ('leaky_relu', 0.3); 'relu' -> ('relu', None)."""
    name, _, alpha = spec.partition(":")
    return name, float(alpha) if alpha else None


def activate(z, spec):
    name, alpha = parse(spec)
    return act_reference.forward(name, z, alpha)


def make_activation(spec):
    name, alpha = parse(spec)
    return cr.activations.Activation(name, alpha)


def case_data(n, k, units):
    rng = np.random.default_rng(n * 1000 + k + units)
    w = rng.normal(0, 1 / np.sqrt(k), size=(k, units)).astype(np.float32)
    b = rng.normal(0, 0.5, size=units).astype(np.float32)  # distinct per column: a misplaced bias shows
    x = rng.normal(size=(n, k)).astype(np.float32)
    return x, w, b


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("n,k,units", [(1, 3, 1), (7, 300, 10), (130, 256, 12), (33, 20, 37),
                                       (128, 784, 512), (257, 512, 256), (64, 129, 40)])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_bias_activation_matches_numpy(act, n, k, units, threads):
    """The default (best) target, in this process."""
    x, w, b = case_data(n, k, units)
    model = cr.Sequential([cr.layers.Dense(units, activation=make_activation(act))], seed=1)
    model.build((k,))
    model.set_weights([w, b])
    old = cr.get_num_threads()
    cr.set_num_threads(threads)
    try:
        out = model.predict(x, batch_size=n)
    finally:
        cr.set_num_threads(old)
    np.testing.assert_allclose(out, reference(x, w, b, act), rtol=RTOL, atol=ATOL)


# (batch M, inputs K, units N) and the driver path each one takes (avx512 blocking: kc 512,
# mc 1536, nc 480, 12x32 tile; narrow 24x16; 8x32; column kernels for N <= 12 with the
# dot-product form once K >= 128 and M >= 64; avx2 6x16 and generic 4x8 have kc 256, and
# generic mc 128). Every target runs every shape; the comments name the avx512 path.
SHAPES = [
    (1, 3, 1),          # smallest: one partial tile
    (64, 128, 1),       # dot product, N = 1 (odd, padded to 2)
    (65, 129, 5),       # dot product, odd N, M and K
    (130, 256, 12),     # dot product, N = 12
    (200, 700, 3),      # dot product, K longer than any K block
    (63, 200, 7),       # M just under the dot form: column kernel, one B panel
    (7, 300, 10),       # column kernel, small M
    (30, 1100, 6),      # column kernel, K in 3 blocks: the epilogue only after the last
    (100, 100, 11),     # K just under the dot form
    (40, 20, 16),       # narrow 24x16, one panel read in place
    (50, 33, 13),       # narrow, N edge
    (50, 1100, 16),     # narrow, K in several blocks
    (70, 40, 48),       # narrow, three B panels
    (32, 50, 32),       # 8x32, one panel read in place
    (40, 64, 30),       # 8x32, N edge
    (36, 50, 32),       # 12x32, one panel
    (33, 20, 37),       # 12x32, two panels, M and N edges
    (13, 17, 29),       # odd everything
    (97, 33, 71),       # odd everything, several tiles
    (64, 1100, 40),     # K in 3 blocks (2 threads: split over M)
    (1600, 20, 40),     # M in 2 blocks (13 on generic); 2 threads split it
    (40, 30, 1000),     # N in 3 blocks; 2 threads split over N: the bias index of each part
    (64, 129, 40),
    (257, 512, 256),    # multi-threaded 2-D split with edges
    (128, 784, 512),    # MNIST's first layer shape, N in 2 blocks
]

# Products this large are split over 2 threads (gemm.cpp: kMinMacsPerThread = 2^19 per
# thread); smaller ones run on the calling thread whatever the team size, so only these are
# repeated with 2 threads.
MULTI_THREAD_MACS = 1 << 20

CHILD = r"""
import json, sys
import numpy as np
import chainrule as cr
sys.path.insert(0, sys.argv[1])
from test_dense_epilogue import ACTS, MULTI_THREAD_MACS, SHAPES, activate, case_data, make_activation
cases = []
for n, k, units in SHAPES:
    x, w, b = case_data(n, k, units)
    z = x.astype(np.float64) @ w.astype(np.float64) + b.astype(np.float64)
    for spec in ACTS:
        model = cr.Sequential([cr.layers.Dense(units, activation=make_activation(spec))], seed=1)
        model.build((k,))
        model.set_weights([w, b])
        cases.append(((n, k, units), spec, model, x, activate(z, spec)))
out = {"kernel": cr.cpu_info()["kernel"], "results": []}
for threads in (1, 2):
    cr.set_num_threads(threads)
    for shape, spec, model, x, want in cases:
        if threads > 1 and shape[0] * shape[1] * shape[2] < MULTI_THREAD_MACS:
            continue
        got = model.predict(x, batch_size=shape[0]).astype(np.float64)
        err = np.abs(got - want)
        out["results"].append({"shape": shape, "act": spec, "threads": threads,
                               "max_abs": float(err.max()),
                               "ratio": float((err / (ATOL + RTOL * np.abs(want))).max()),
                               "finite": bool(np.isfinite(got).all())})
print(json.dumps(out))
""".replace("ATOL", repr(ATOL)).replace("RTOL", repr(RTOL))


def run_target(target):
    env = dict(os.environ, CHAINRULE_CPU_TARGET=target)
    env.pop("OMP_NUM_THREADS", None)
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, "-c", CHILD, here], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("target", TARGETS)
def test_fused_bias_activation_on_every_target(target):
    got = run_target(target)
    assert got["kernel"] == target, f"asked for {target}, the GEMM ran {got['kernel']}"
    results = got["results"]
    n_multi = sum(n * k * u >= MULTI_THREAD_MACS for n, k, u in SHAPES)
    assert n_multi >= 5 and len(results) == (len(SHAPES) + n_multi) * len(ACTS)
    bad = [r for r in results if not r["finite"] or r["ratio"] > 1.0]
    assert not bad, f"{target}: {len(bad)} cases beyond rtol=atol={RTOL}: " + "; ".join(
        f"{tuple(r['shape'])} {r['act']} threads={r['threads']} max|err|={r['max_abs']:.2e}" for r in bad[:8])
