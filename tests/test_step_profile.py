"""The step profile (csrc/profile.h, core.set_profile / profile / reset_profile): off by
default and then recording nothing; on, every phase non-negative, the phases adding up to
the recorded total, the steps counted for every kind of training call, the phases landing
where the work is (no packing in float64 products, packing in a blocked float32 one, the
layers' own work in convolution and pooling); and training bit-identical with it on or off,
at one and at two threads."""

import os
import subprocess
import sys

import numpy as np
import pytest

import chainrule as cr
import chainrule._core as core
from chainrule import layers as L

PHASES = ("gather", "gemm_pack", "gemm_compute", "forward_elementwise", "loss",
          "backward_elementwise", "optimizer", "monitor", "other")


@pytest.fixture(autouse=True)
def profile_off_after():
    core.set_profile(False)
    core.reset_profile()
    threads = cr.get_num_threads()
    yield
    core.set_profile(False)
    core.reset_profile()
    cr.set_num_threads(threads)


def _data(n, d, c=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.5, size=(n, d)).astype(np.float32)
    return x, rng.integers(0, c, size=n)


def _mlp(hidden=(32,), d=784, dtype="float32", seed=0, **compile_args):
    m = cr.Sequential([L.Dense(h, activation="relu", input_shape=(d,)) for h in hidden[:1]] +
                      [L.Dense(h, activation="relu") for h in hidden[1:]] +
                      [L.Dense(10, activation="softmax")], seed=seed, dtype=dtype)
    m.compile(optimizer=compile_args.pop("optimizer", cr.optimizers.SGD(0.01, momentum=0.9)),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"], **compile_args)
    return m


def _profile_with(train):
    core.reset_profile()
    core.set_profile(True)
    try:
        train()
    finally:
        core.set_profile(False)
    return core.profile()


def _check_consistent(p, steps):
    assert set(p) == set(PHASES) | {"total", "steps"}
    assert p["steps"] == steps
    for k in PHASES:
        assert p[k] >= 0.0, (k, p[k])
    assert p["total"] > 0.0
    # the phases partition the recorded time: integer nanoseconds, each converted to seconds
    assert sum(p[k] for k in PHASES) == pytest.approx(p["total"], rel=1e-12, abs=1e-9 * len(PHASES))


def test_off_by_default_in_a_fresh_process():
    code = ("import chainrule._core as c; p = c.profile(); "
            "print(c.profile_enabled(), p['steps'], p['total'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.stdout.split() == ["False", "0", "0.0"]


def test_off_records_nothing():
    assert not core.profile_enabled()
    x, y = _data(256, 784)
    _mlp().fit(x, y, epochs=1, batch_size=32, verbose=0)
    p = core.profile()
    assert p["steps"] == 0 and p["total"] == 0.0
    assert all(p[k] == 0.0 for k in PHASES)


def test_set_profile_switches_and_reset_clears():
    core.set_profile(True)
    assert core.profile_enabled()
    x, y = _data(100, 784)
    _mlp().fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert core.profile()["steps"] == 4
    core.set_profile(False)
    assert not core.profile_enabled()
    core.reset_profile()
    p = core.profile()
    assert p["steps"] == 0 and p["total"] == 0.0 and all(p[k] == 0.0 for k in PHASES)


@pytest.mark.parametrize("threads", [1, 2])
def test_phases_partition_the_epoch_and_steps_are_counted(threads):
    cr.set_num_threads(threads)
    x, y = _data(1000, 784)
    m = _mlp()
    p = _profile_with(lambda: m.fit(x, y, epochs=2, batch_size=32, verbose=0))
    _check_consistent(p, steps=2 * 32)  # 1000 rows: 31 batches of 32 and one of 8, per epoch
    for k in ("gather", "gemm_compute", "loss", "optimizer", "monitor"):
        assert p[k] > 0.0, k


def test_every_training_call_counts_its_steps():
    x, y = _data(200, 784)
    m = _mlp()
    p = _profile_with(lambda: [m.train_on_batch(x[:50], y[:50]) for _ in range(3)])
    _check_consistent(p, steps=3)

    def streamed():
        batches = ((x[s:s + 40], y[s:s + 40]) for s in range(0, 200, 40))
        m.fit(batches, steps_per_epoch=5, epochs=1, verbose=0)
    _check_consistent(_profile_with(streamed), steps=5)
    # evaluation and prediction are not training steps: nothing recorded
    p = _profile_with(lambda: (m.evaluate(x, y, verbose=0), m.predict(x, verbose=0)))
    assert p["steps"] == 0 and p["total"] == 0.0


def test_phases_land_where_the_work_is():
    # float64 products are the simple loop: GEMM time, and no packing at all
    x, y = _data(256, 784)
    m64 = _mlp(dtype="float64")
    p = _profile_with(lambda: m64.fit(x, y, epochs=1, batch_size=64, verbose=0))
    _check_consistent(p, steps=4)
    assert p["gemm_compute"] > 0.0 and p["gemm_pack"] == 0.0
    # a 128 x 512 x 784 float32 product is cache-blocked: its A panels are always packed
    m32 = _mlp(hidden=(512,))
    p = _profile_with(lambda: m32.fit(x, y, epochs=1, batch_size=128, verbose=0))
    _check_consistent(p, steps=2)
    assert p["gemm_pack"] > 0.0 and p["gemm_compute"] > 0.0
    # convolution and pooling do im2col / pooling outside their GEMMs
    xi, yi = _data(64, 8 * 8 * 2)
    conv = cr.Sequential([L.Conv2D(4, 3, activation="relu", input_shape=(8, 8, 2)), L.MaxPooling2D(2),
                          L.Flatten(), L.Dense(10, activation="softmax")], seed=0)
    conv.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    p = _profile_with(lambda: conv.fit(xi.reshape(64, 8, 8, 2), yi, epochs=1, batch_size=16, verbose=0))
    _check_consistent(p, steps=4)
    assert p["forward_elementwise"] > 0.0 and p["backward_elementwise"] > 0.0


@pytest.mark.parametrize("threads", [1, 2])
def test_training_is_bit_identical_with_the_profile_on(threads):
    # Every phase exercised: shuffling, dropout, penalties, clipping, the monitor, a product
    # large enough to run on two threads (128 x 512 x 784).
    cr.set_num_threads(threads)
    x, y = _data(512, 784, seed=1)

    def run(on):
        m = cr.Sequential([L.Dense(512, activation="relu", input_shape=(784,),
                                   kernel_regularizer=cr.regularizers.L2(1e-4)),
                           L.Dropout(0.2), L.Dense(32, activation="tanh"),
                           L.Dense(10, activation="softmax")], seed=3)
        m.compile(optimizer=cr.optimizers.Adam(1e-3, clipnorm=1.0),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        core.reset_profile()
        core.set_profile(on)
        try:
            h = m.fit(x, y, epochs=2, batch_size=128, verbose=0, seed=5)
        finally:
            core.set_profile(False)
        assert (core.profile()["steps"] > 0) == on
        return m.get_weights(), h.history

    w_off, h_off = run(False)
    w_on, h_on = run(True)
    assert h_on == h_off
    assert len(w_on) == len(w_off)
    for a, b in zip(w_on, w_off):
        assert a.dtype == b.dtype and np.array_equal(a, b)
