"""The float32 optimizer loops are compiled per CPU target (optim/step_avx2.cpp,
step_avx512.cpp) and chosen at run time like the GEMM kernel. On every target this CPU can
run (CHAINRULE_CPU_TARGET selects it; it is read once per process, so each target runs in
its own child process):

- several steps of each optimizer must give the same weights as the float64 baseline loop;
- each step must match the numpy float64 reference of test_optimizer_reference.py, fed the
  model's own float32 gradients (compute_gradients before each train_on_batch), for every
  branch-free variant of the loop (SGD plain / momentum / Nesterov, Adam / AMSGrad, RMSprop
  plain / momentum, Adagrad; with and without clipvalue; clipnorm, weight decay, L1/L2);
- the weights must have moved, so an optimizer step that does nothing fails."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import chainrule as cr

try:
    from test_optimizer_reference import chainrule_optimizer, reference_optimizer
except ImportError:  # --import-mode=importlib: tests/ is not on sys.path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_optimizer_reference import chainrule_optimizer, reference_optimizer

TARGETS = [v for v in cr.cpu_info()["variants"] if v != "ref"]

SCRIPT = r"""
import json, sys, numpy as np, chainrule as cr
dtype = sys.argv[1]
out = {"kernel": cr.cpu_info()["kernel"]}
rng = np.random.default_rng(0)
x = rng.normal(size=(40, 6)); y = rng.integers(0, 3, size=40)
opts = {
    "sgd_nesterov": cr.optimizers.SGD(0.1, momentum=0.9, nesterov=True, clipvalue=0.05, weight_decay=0.01),
    "adam_ams": cr.optimizers.Adam(0.01, amsgrad=True, clipnorm=0.5),
    "rmsprop_mom": cr.optimizers.RMSprop(0.01, momentum=0.5),
    "adagrad": cr.optimizers.Adagrad(0.05),
}
for name, opt in opts.items():
    m = cr.Sequential([cr.layers.Dense(37, activation="tanh"), cr.layers.Dense(3, activation="softmax")],
                      seed=1, dtype=dtype)
    m.build((6,))
    m.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    out[name + "/initial"] = [w.astype(float).ravel().tolist() for w in m.get_weights()]
    m.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0, gradient_warnings=False)
    out[name] = [w.astype(float).ravel().tolist() for w in m.get_weights()]
print(json.dumps(out))
"""


def run(target, dtype):
    env = dict(os.environ, CHAINRULE_CPU_TARGET=target, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT, dtype], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def float64_baseline():
    return run("generic", "float64")


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_steps_like_float64(target, float64_baseline):
    ref = float64_baseline
    got = run(target, "float32")
    assert got["kernel"] == target
    for name in ("sgd_nesterov", "adam_ams", "rmsprop_mom", "adagrad"):
        for a, b in zip(got[name], ref[name]):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=f"{target} {name}")
        # the 15 steps moved every tensor far beyond the tolerance (a no-op step fails)
        for i, (a, w) in enumerate(zip(got[name], got[name + "/initial"])):
            moved = np.abs(np.asarray(a) - np.asarray(w)).max()
            assert moved > 100 * 2e-4 * np.abs(w).max() + 100 * 2e-5, f"{target} {name}: tensor {i} moved {moved:.1e}"


# -- every loop variant against the numpy reference, on every target --------------------
# Cases in test_optimizer_reference.py's format. The first kernel (60 x 37 = 2220 values)
# spans more than one 2048-element block of the step loop; every tensor has a SIMD tail.
TARGET_CASES = {
    "sgd-clipvalue": dict(kind="sgd", hyper=dict(lr=0.2), options=dict(clipvalue=0.02)),
    "sgd-momentum-wd": dict(kind="sgd", hyper=dict(lr=0.2, momentum=0.9), options=dict(weight_decay=0.1)),
    "sgd-nesterov-clipvalue-l2": dict(kind="sgd", hyper=dict(lr=0.2, momentum=0.8, nesterov=True),
                                      options=dict(clipvalue=0.02), reg=[(0.0, 0.05), None]),
    "adam-clipnorm": dict(kind="adam", hyper=dict(lr=0.01), options=dict(clipnorm=0.3)),
    "adam-amsgrad-clipvalue-wd": dict(kind="adam", hyper=dict(lr=0.01, beta_2=0.5, amsgrad=True),
                                      options=dict(clipvalue=0.02, weight_decay=0.5)),
    "rmsprop": dict(kind="rmsprop", hyper=dict(lr=0.005)),
    "rmsprop-momentum-clipvalue": dict(kind="rmsprop", hyper=dict(lr=0.005, momentum=0.5),
                                       options=dict(clipvalue=0.02)),
    "adagrad-l1-wd": dict(kind="adagrad", hyper=dict(lr=0.05), options=dict(weight_decay=0.2),
                          reg=[None, (0.01, 0.0)]),
}
N_IN, N_HID, N_OUT, N_STEPS = 60, 37, 3, 5

STEP_SCRIPT = r"""
import json, sys, numpy as np, chainrule as cr
dtype, path = sys.argv[1], sys.argv[2]
cases = json.loads(sys.stdin.read())
n_in, n_hid, n_out, n_steps = %d, %d, %d, %d
rng = np.random.default_rng(5)
scales = [2.0, 0.5, 3.0, 0.3, 1.0]
data = [(rng.normal(size=(16, n_in)) * scales[s], rng.integers(0, n_out, size=16)) for s in range(n_steps)]
arrays = {}
for name, c in cases.items():
    regs = [cr.regularizers.L1L2(*r) if r else None for r in c["reg"]]
    m = cr.Sequential([cr.layers.Dense(n_hid, activation="tanh", kernel_regularizer=regs[0]),
                       cr.layers.Dense(n_out, activation="softmax", kernel_regularizer=regs[1])],
                      seed=2, dtype=dtype)
    m.build((n_in,))
    m.compile(optimizer=cr.optimizers.get(c["optimizer"]), loss="sparse_categorical_crossentropy")
    w = m.get_weights()
    w[1::2] = [np.full(b.shape, 0.1) for b in w[1::2]]
    m.set_weights(w)
    for i, a in enumerate(m.get_weights()):
        arrays[f"{name}/w0/{i}"] = a
    for s, (x, y) in enumerate(data):
        _, g = m.compute_gradients(x, y)
        m.train_on_batch(x, y)
        for i, (gi, wi) in enumerate(zip(g, m.get_weights())):
            arrays[f"{name}/g/{s}/{i}"] = gi
            arrays[f"{name}/w/{s}/{i}"] = wi
np.savez(path, **arrays)
print(json.dumps({"kernel": cr.cpu_info()["kernel"]}))
""" % (N_IN, N_HID, N_OUT, N_STEPS)


def run_steps(target, dtype, path):
    cases = {name: {"optimizer": chainrule_optimizer(c).get_config(), "reg": c.get("reg", [None, None])}
             for name, c in TARGET_CASES.items()}
    env = dict(os.environ, CHAINRULE_CPU_TARGET=target, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", STEP_SCRIPT, dtype, str(path)], input=json.dumps(cases),
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    with np.load(path) as f:
        return info, {k: f[k] for k in f.files}


# Relative error of the displacement from the start (max |Δgot - Δref| / max |Δref| per
# tensor) after each of the 5 steps, the reference being fed the model's own gradients.
# Measured worst case, the same on generic, avx2 and avx512: float32 8.2e-6 (adam-clipnorm:
# the float32 loop forms 1 - beta_2 from float32(0.999), 1.3e-5 off, while the bias
# correction uses the exact 1 - 0.999^t; the SGD cases reach 3.5e-6 from rounding the float32
# weights); float64 5.6e-15. A wrong formula or a missing option gives O(1e-2) and more.
STEP_RTOL = {"float32": 1e-4, "float64": 1e-12}


def _check_against_reference(target, dtype, info, arrays):
    assert info["kernel"] == target, f"asked for {target}, ran {info['kernel']}"
    worst = 0.0
    for name, case in TARGET_CASES.items():
        n_tensors = 4
        w0 = [arrays[f"{name}/w0/{i}"].astype(np.float64) for i in range(n_tensors)]
        ref = reference_optimizer(case)
        w = w0
        for s in range(N_STEPS):
            g = [arrays[f"{name}/g/{s}/{i}"].astype(np.float64) for i in range(n_tensors)]
            w = ref.step(w, g)
            for i in range(n_tensors):
                got = arrays[f"{name}/w/{s}/{i}"].astype(np.float64)
                d_ref, d_got = w[i] - w0[i], got - w0[i]
                size = np.abs(d_ref).max()
                assert size > 0, f"{target} {name} step {s + 1} tensor {i}: reference did not move"
                err = np.abs(d_got - d_ref).max() / size
                worst = max(worst, err)
                assert err <= STEP_RTOL[dtype], (
                    f"{target} {dtype} {name} step {s + 1} tensor {i}: displacement rel err {err:.2e}")
        # each option of the case matters here: without it the reference ends far away
        final = w
        for key in [*case.get("options", {}), *(["reg"] if "reg" in case else [])]:
            other = {**case, "options": {k: v for k, v in case.get("options", {}).items() if k != key}}
            if key == "reg":
                other["reg"] = [None, None]
            alt = reference_optimizer(other)
            wa = w0
            for s in range(N_STEPS):
                wa = alt.step(wa, [arrays[f"{name}/g/{s}/{i}"].astype(np.float64) for i in range(n_tensors)])
            diff = max(np.abs(a - b).max() / np.abs(b - c).max() for a, b, c in zip(wa, final, w0))
            assert diff > 100 * STEP_RTOL["float32"], f"{name}: {key} changes the result by only {diff:.1e}"
        # every tensor moved by far more than float32 rounding of the weights
        for i in range(n_tensors):
            moved = np.abs(arrays[f"{name}/w/{N_STEPS - 1}/{i}"].astype(np.float64) - w0[i]).max()
            assert moved > 1e-3 * max(np.abs(w0[i]).max(), 1e-2), f"{target} {name}: tensor {i} did not move"
    return worst


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_float32_step_matches_numpy_reference(target, tmp_path):
    info, arrays = run_steps(target, "float32", tmp_path / "steps.npz")
    _check_against_reference(target, "float32", info, arrays)


def test_float64_step_matches_numpy_reference_in_a_child(tmp_path):
    """The same cases in float64 (one loop for every target): the reference to 1e-12."""
    info, arrays = run_steps(TARGETS[0], "float64", tmp_path / "steps.npz")
    _check_against_reference(TARGETS[0], "float64", info, arrays)
