"""The float32 optimizer loops are compiled per CPU target (optim/step_avx2.cpp,
step_avx512.cpp) and chosen at run time like the GEMM kernel. Every target this CPU can run
must give the same weights as the float64 baseline loop after several steps of each
optimizer (CHAINRULE_CPU_TARGET selects the target; it is read once per process)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import chainrule as cr

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
    m.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
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


@pytest.mark.parametrize("target", [v for v in cr.cpu_info()["variants"] if v != "ref"])
def test_every_target_steps_like_float64(target):
    ref = run("generic", "float64")
    got = run(target, "float32")
    assert got["kernel"] == target
    for name in ("sgd_nesterov", "adam_ams", "rmsprop_mom", "adagrad"):
        for a, b in zip(got[name], ref[name]):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=f"{target} {name}")
