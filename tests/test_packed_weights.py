"""predict and evaluate over several passes pack each Dense layer's kernel once for all of
them (the GEMM's B panels, kernels/gemm.h PackedB) instead of once per pass. The panels are
the ones every pass would pack, so the outputs are the same bits as one call per pass; they
never outlive the call, so new weights (set_weights, a fit) are always the ones used."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import chainrule as cr
from chainrule import _core
from chainrule.layers import Dense

# 1100 inputs: three K blocks of the AVX-512 and AVX2 tiles; 131 units: a ragged last panel;
# 40 units: the 24x16 tile on AVX-512; 10 units: the narrow head (left unpacked).
SIZES = (1100, 131, 40, 10)


def mlp(seed=0):
    m = cr.Sequential([Dense(SIZES[1], activation="relu"), Dense(SIZES[2], activation="tanh"),
                       Dense(SIZES[3], activation="softmax")], seed=seed)
    m.build((SIZES[0],))
    m.compile(optimizer=cr.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    return m


def numpy_forward(weights, x):
    w1, b1, w2, b2, w3, b3 = (w.astype(np.float64) for w in weights)
    h = np.maximum(x.astype(np.float64) @ w1 + b1, 0.0)
    h = np.tanh(h @ w2 + b2)
    z = h @ w3 + b3
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def data(n=392, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[3], size=n).astype(np.float32)
    return x, y


@pytest.mark.parametrize("threads", [1, 2])
def test_passes_equal_one_call_per_pass_and_numpy(threads):
    m = mlp()
    x, _ = data()
    before = cr.get_num_threads()
    cr.set_num_threads(threads)
    try:
        got = m.predict(x, batch_size=64)  # 7 passes, the last of 8 rows: packed once
        per_pass = np.concatenate([m.predict(x[i:i + 64], batch_size=64) for i in range(0, len(x), 64)])
    finally:
        cr.set_num_threads(before)
    np.testing.assert_array_equal(got, per_pass)
    np.testing.assert_allclose(got, numpy_forward(m.get_weights(), x), rtol=1e-4, atol=1e-6)


def test_new_weights_are_used_after_a_packed_predict():
    m = mlp()
    x, y = data()
    m.predict(x, batch_size=64)
    new = [w * 0.5 + 0.01 for w in mlp(seed=3).get_weights()]
    m.set_weights(new)
    np.testing.assert_allclose(m.predict(x, batch_size=64), numpy_forward(new, x), rtol=1e-4, atol=1e-6)
    m.fit(x, y, epochs=1, batch_size=32, verbose=0)
    trained = m.get_weights()
    assert not np.array_equal(trained[0], new[0])
    np.testing.assert_allclose(m.predict(x, batch_size=64), numpy_forward(trained, x), rtol=1e-4,
                               atol=1e-6)
    fresh = mlp()
    fresh.set_weights(trained)
    np.testing.assert_array_equal(m.predict(x, batch_size=64), fresh.predict(x, batch_size=64))


def test_evaluate_over_passes_matches_numpy():
    m = mlp()
    x, y = data()
    loss, acc = m.evaluate(x, y, batch_size=64, verbose=0)
    p = numpy_forward(m.get_weights(), x)
    want_loss = -np.mean(np.log(p[np.arange(len(y)), y.astype(int)]))
    want_acc = np.mean(p.argmax(axis=1) == y)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(acc, want_acc)
    m.fit(x, y, epochs=1, batch_size=32, verbose=0)
    p = numpy_forward(m.get_weights(), x)
    loss, _ = m.evaluate(x, y, batch_size=64, verbose=0)
    np.testing.assert_allclose(loss, -np.mean(np.log(p[np.arange(len(y)), y.astype(int)])), rtol=1e-5)


@pytest.mark.parametrize("target", ["generic", "avx2", "avx512"])
def test_every_kernel_target_packs_the_same_panels(target):
    # Each target has its own tiles (4x8, 6x16, 12x32 and 24x16) and blocking: the first
    # test's check at 2 threads, in a process forced onto that target.
    if target not in _core._gemm_variants():
        pytest.skip(f"{target} cannot run here")
    script = ("import sys; sys.path.insert(0, %r); import chainrule as cr, test_packed_weights as t; "
              "assert cr.cpu_info()['kernel'] == %r; t.test_passes_equal_one_call_per_pass_and_numpy(2)"
              % (str(Path(__file__).parent), target))
    env = dict(os.environ, CHAINRULE_CPU_TARGET=target)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
