"""Gathering ahead (csrc/trainer/gather_ahead.h): in a shuffled epoch on 2+ threads whose
steps run on one thread, a helper thread copies the next batches' rows while the current
step runs. The rows must be exactly those the caller's own gather copies, whoever copies
them, and training must give the same bits with the helper as without it."""
import os

import numpy as np
import pytest

import chainrule as cr
from chainrule import _core


@pytest.fixture
def two_threads():
    before = cr.get_num_threads()
    cr.set_num_threads(2)
    yield
    cr.set_num_threads(before)


@pytest.mark.parametrize("n,batch", [(1, 1), (2, 1), (7, 3), (64, 32), (100, 32), (1000, 7),
                                     (257, 256)])
@pytest.mark.parametrize("step_us", [0.0, 150.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_the_rows_are_those_of_the_order(n, batch, step_us, weighted):
    rng = np.random.default_rng(n * 31 + batch)
    X = rng.standard_normal((n, 13)).astype(np.float32)
    Y = rng.standard_normal((n, 3)).astype(np.float32)
    SW = rng.random(n).astype(np.float32) if weighted else None
    order = rng.permutation(n).astype(np.int64)
    x, y, w, helper_rows = _core._gather_ahead(X, Y, SW, order, batch, step_us)
    np.testing.assert_array_equal(x, X[order])
    np.testing.assert_array_equal(y, Y[order])
    if weighted:
        np.testing.assert_array_equal(w, SW[order])
    else:
        assert w is None
    assert 0 <= helper_rows <= n


def test_the_helper_copies_rows_while_the_caller_is_busy():
    # 128 batches, the caller busy 500 us after each: the helper looks every 20 us, so it
    # finds posted rows long before the caller comes for them (64 ms in all to be scheduled).
    rng = np.random.default_rng(0)
    n = 4096
    X = rng.standard_normal((n, 50)).astype(np.float32)
    Y = rng.standard_normal((n, 1)).astype(np.float32)
    order = rng.permutation(n).astype(np.int64)
    x, y, _, helper_rows = _core._gather_ahead(X, Y, None, order, 32, 500.0)
    np.testing.assert_array_equal(x, X[order])
    np.testing.assert_array_equal(y, Y[order])
    assert helper_rows > 0


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity")
def test_the_helper_retires_when_it_shares_the_callers_cpu():
    # The calling thread held to one CPU: the helper, started from it, inherits that CPU, so
    # every look it takes is on the caller's CPU (a busy machine in small). After 4 such looks
    # it stops; until then each look copies at most the kSlots = 3 batches then posted.
    rng = np.random.default_rng(1)
    n, batch = 4096, 32
    X = rng.standard_normal((n, 50)).astype(np.float32)
    Y = rng.standard_normal((n, 2)).astype(np.float32)
    order = rng.permutation(n).astype(np.int64)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        x, y, _, helper_rows = _core._gather_ahead(X, Y, None, order, batch, 200.0)
    finally:
        os.sched_setaffinity(0, before)
    np.testing.assert_array_equal(x, X[order])
    np.testing.assert_array_equal(y, Y[order])
    assert helper_rows <= 3 * 3 * batch


def _model(dropout=False, dtype="float32", hidden=32, inputs=64):
    L = cr.layers
    layers = [L.Dense(hidden, activation="relu")]
    if dropout:
        layers.append(L.Dropout(0.3))
    layers.append(L.Dense(5, activation="softmax"))
    m = cr.Sequential(layers, dtype=dtype, seed=3)
    m.compile(optimizer=cr.optimizers.SGD(0.05, momentum=0.9),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    m.build((inputs,))
    return m


def _fit(ahead, n, batch, weighted, dropout=False, dtype="float32", lr=None, epochs=3):
    rng = np.random.default_rng(n + batch)
    x = rng.standard_normal((n, 64)).astype(dtype)
    y = rng.integers(0, 5, n)
    sw = rng.random(n) if weighted else None
    m = _model(dropout, dtype)
    if lr is not None:
        m.optimizer.learning_rate = lr
    assert m._core.step_single_threaded(batch)  # the helper's precondition: it does start
    m._core.set_gather_ahead(ahead, 0)  # 0: however small the data set
    hist = m.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, seed=11, sample_weight=sw,
                 gradient_warnings=False)
    return m.get_weights(), hist.history


@pytest.mark.parametrize("n,batch", [(300, 32), (97, 8), (10, 3), (5, 2), (64, 1)])
@pytest.mark.parametrize("weighted", [False, True])
def test_training_gives_the_same_bits_with_the_helper(two_threads, n, batch, weighted):
    w_on, h_on = _fit(True, n, batch, weighted)
    w_off, h_off = _fit(False, n, batch, weighted)
    for a, b in zip(w_on, w_off):
        np.testing.assert_array_equal(a, b)
    assert h_on == h_off


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_bits_with_dropout_and_float64(two_threads, dtype):
    w_on, h_on = _fit(True, 200, 16, False, dropout=True, dtype=dtype)
    w_off, h_off = _fit(False, 200, 16, False, dropout=True, dtype=dtype)
    for a, b in zip(w_on, w_off):
        np.testing.assert_array_equal(a, b)
    assert h_on == h_off


def test_an_epoch_stopped_at_a_nonfinite_loss_ends_the_same(two_threads):
    # A learning rate that overflows the weights mid-epoch: stop_on_nonfinite ends the epoch
    # with batches still posted to the helper, and restores the last finite step.
    w_on, h_on = _fit(True, 400, 8, False, lr=1e30, epochs=1)
    w_off, h_off = _fit(False, 400, 8, False, lr=1e30, epochs=1)
    for a, b in zip(w_on, w_off):
        np.testing.assert_array_equal(a, b)
    assert all(np.isfinite(a).all() for a in w_on)
    assert str(h_on) == str(h_off)  # NaN-safe comparison of the histories


def test_which_steps_run_on_one_thread():
    small = _model()
    assert small._core.step_single_threaded(32)
    assert not small._core.step_single_threaded(4096)  # products go parallel
    L = cr.layers
    big = cr.Sequential([L.Dense(512, activation="relu"), L.Dense(10)], seed=0)
    big.compile(optimizer="sgd", loss="mse")
    big.build((784,))
    assert not big._core.step_single_threaded(1)  # the parameter block alone is parallel
    conv = cr.Sequential([L.Conv2D(2, 3, activation="relu"), L.Flatten(), L.Dense(3)], seed=0)
    conv.compile(optimizer="sgd", loss="mse")
    conv.build((8, 8, 1))
    assert not conv._core.step_single_threaded(1)  # unknown for a convolution: no helper


def test_a_negative_data_size_threshold_is_refused():
    m = _model()
    with pytest.raises(ValueError, match="min_epoch_bytes must be >= 0; received -1"):
        m._core.set_gather_ahead(True, -1)
