"""The gradient block's contract (csrc/trainer/network.h, GradState): backward passes
accumulate into it, an optimizer step consumes it (reads and zeroes every gradient), and a
pass whose gradients are not known to be zero starts with an explicit zeroing step. Each
test would fail if a pass started from stale gradients or a step left any behind."""

from __future__ import annotations

import numpy as np
import pytest

import chainrule as cr

OPTIMIZERS = {
    # Without clipnorm each layer steps right after its backward pass; with it, after the
    # whole pass. Both must consume every gradient.
    "per-layer-step": lambda: cr.optimizers.SGD(0.1, momentum=0.9),
    "clipnorm-step": lambda: cr.optimizers.Adam(0.01, clipnorm=0.5),
}


def _model(optimizer):
    m = cr.Sequential([cr.layers.Dense(7, activation="tanh", input_shape=(5,),
                                       kernel_regularizer=cr.regularizers.L1L2(0.01, 0.02)),
                       cr.layers.Dense(3, activation="softmax")], dtype="float64", seed=3)
    m.build()
    m.compile(optimizer=OPTIMIZERS[optimizer](), loss="sparse_categorical_crossentropy")
    return m


def _data(seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(16, 5)), rng.integers(0, 3, size=16)


def _assert_same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_compute_gradients_twice_does_not_accumulate(optimizer):
    m = _model(optimizer)
    x, y = _data(0)
    _, g1 = m.compute_gradients(x, y)
    _, g2 = m.compute_gradients(x, y)
    assert any(np.abs(g).max() > 0 for g in g1)
    _assert_same(g1, g2)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_step_after_compute_gradients_starts_from_zero(optimizer):
    x, y = _data(0)
    x2, y2 = _data(1)
    a, b = _model(optimizer), _model(optimizer)
    a.compute_gradients(x, y)  # leaves gradients in the block
    a.train_on_batch(x2, y2)
    b.train_on_batch(x2, y2)
    _assert_same(a.get_weights(), b.get_weights())


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_step_consumes_every_gradient(optimizer):
    x, y = _data(0)
    a = _model(optimizer)
    a.fit(x, y, epochs=1, batch_size=5, verbose=0, seed=0)
    a.train_on_batch(x, y)
    n = len(a._core.params_info())
    for i in range(n):
        assert not a._core.get_param(i, True).any()
    # The next pass relies on that: its gradients equal those of a fresh model at the
    # same weights.
    b = _model(optimizer)
    b.set_weights(a.get_weights())
    _assert_same(a.compute_gradients(x, y)[1], b.compute_gradients(x, y)[1])
