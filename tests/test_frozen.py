"""Frozen layers (``trainable=False``): the weights stay bit for bit through fit and
train_on_batch with every optimizer (weight decay, penalties, momentum and clipping
included), while the gradient still reaches the layers before them (checked against the
unfrozen model's gradient); the penalty of a frozen weight leaves the loss (Keras); the flag
takes effect when changed after compile, round-trips through the config, save/load and
pickle; counts and weight lists split trainable from non-trainable. Convolutions are
frozen on each of their kernel paths (direct, pointwise, im2col, the naive twin)."""

import pickle

import numpy as np
import pytest

import chainrule as cr
from chainrule import optimizers as O
from chainrule.layers import Conv2D, Dense, Flatten, Input

OPTIMIZERS = {
    "sgd": lambda: O.SGD(0.1),
    "sgd_momentum_nesterov": lambda: O.SGD(0.1, momentum=0.9, nesterov=True, clipvalue=0.05),
    "adam": lambda: O.Adam(0.01, clipnorm=0.1),
    "adamw": lambda: O.AdamW(0.01, weight_decay=0.3, amsgrad=True),
    "rmsprop": lambda: O.RMSprop(0.01, momentum=0.5),
    "adagrad": lambda: O.Adagrad(0.1),
}


def _mlp(frozen=(1,), dtype="float64", seed=0):
    """Three Dense layers with L1/L2 penalties on every kernel; ``frozen``: their indices."""
    layers = [Input(shape=(6,))]
    for i, (units, act) in enumerate([(5, "tanh"), (4, "tanh"), (3, "softmax")]):
        layers.append(Dense(units, activation=act, kernel_regularizer=cr.regularizers.L1L2(0.01, 0.02),
                            trainable=i not in frozen))
    return cr.Sequential(layers, dtype=dtype, seed=seed)


def _data(n=20, seed=1, shape=(6,)):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n,) + shape), rng.integers(0, 3, n)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_frozen_weights_stay_bit_identical(opt, dtype):
    m = _mlp(dtype=dtype)
    m.compile(optimizer=OPTIMIZERS[opt](), loss="sparse_categorical_crossentropy")
    x, y = _data()
    before = m.get_weights()
    m.fit(x, y, epochs=3, batch_size=6, verbose=0)
    for _ in range(2):
        m.train_on_batch(x, y)
    after = m.get_weights()
    assert np.array_equal(after[2], before[2]) and np.array_equal(after[3], before[3])
    for i in (0, 1, 4, 5):
        assert not np.array_equal(after[i], before[i]), f"weights[{i}] did not train"


def test_gradient_flows_through_a_frozen_layer():
    """The first layer's gradient and SGD step with the middle layer frozen equal those of
    the same model unfrozen; the frozen layer's own gradient is reported as zero."""
    x, y = _data()
    free, frozen = _mlp(frozen=()), _mlp()
    for m in (free, frozen):
        m.compile(optimizer=O.SGD(0.1), loss="sparse_categorical_crossentropy")
    _, g_free = free.compute_gradients(x, y)
    _, g_frozen = frozen.compute_gradients(x, y)
    for i in (0, 1, 4, 5):
        np.testing.assert_array_equal(g_frozen[i], g_free[i])
    assert not g_frozen[2].any() and not g_frozen[3].any()
    before = frozen.get_weights()
    frozen.train_on_batch(x, y)
    after = frozen.get_weights()
    # the step: -lr * (loss gradient + penalty gradient) on the trainable kernel
    w0 = before[0]
    penalty_grad = 0.01 * np.sign(w0) + 2 * 0.02 * w0
    np.testing.assert_allclose(after[0] - w0, -0.1 * (g_free[0] + penalty_grad), rtol=1e-10, atol=1e-15)
    errs = cr.gradient_check(frozen, x, y)
    assert "dense_1" not in errs  # nothing to check: a frozen weight has no gradient
    assert errs["dense"]["kernel"] < 1e-6 and errs["dense_2"]["kernel"] < 1e-6


def test_a_frozen_weight_has_no_penalty_in_the_loss():
    """Keras counts the regularization of trainable weights only."""
    x, y = _data()
    free, frozen = _mlp(frozen=()), _mlp()
    for m in (free, frozen):
        m.compile(optimizer=O.SGD(0.1), loss="sparse_categorical_crossentropy")
    w = free.get_weights()[2]
    penalty = 0.01 * np.abs(w).sum() + 0.02 * (w ** 2).sum()
    assert frozen.evaluate(x, y) == pytest.approx(free.evaluate(x, y) - penalty, rel=1e-12)


def test_changing_trainable_after_compile_takes_effect():
    x, y = _data()
    m = _mlp(frozen=())
    m.compile(optimizer=O.Adam(0.01), loss="sparse_categorical_crossentropy")
    m.fit(x, y, epochs=1, batch_size=5, verbose=0)
    m.layers[0].trainable = False  # no recompile
    w0 = m.get_weights()[0]
    m.train_on_batch(x, y)
    m.fit(x, y, epochs=1, batch_size=5, verbose=0)
    assert np.array_equal(m.get_weights()[0], w0)
    m.layers[0].trainable = True
    m.train_on_batch(x, y)
    assert not np.array_equal(m.get_weights()[0], w0)


def test_a_callback_can_unfreeze_between_epochs():
    x, y = _data()
    m = _mlp(frozen=(0,))
    m.compile(optimizer=O.SGD(0.1), loss="sparse_categorical_crossentropy")
    seen = []

    class Unfreeze(cr.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(self.model.get_weights()[0])
            if epoch == 0:
                self.model.layers[0].trainable = True

    w0 = m.get_weights()[0]
    m.fit(x, y, epochs=3, batch_size=5, verbose=0, callbacks=[Unfreeze()])
    assert np.array_equal(seen[0], w0) and not np.array_equal(seen[1], w0)


def test_counts_and_weight_lists():
    m = _mlp()
    m.build()
    assert m.count_params() == 35 + 24 + 15
    assert [l.count_params(trainable=True) for l in m.layers] == [35, 0, 15]
    assert [w.shape for w in m.trainable_weights] == [(6, 5), (5,), (4, 3), (3,)]
    assert [w.shape for w in m.non_trainable_weights] == [(5, 4), (4,)]
    lines = []
    m.summary(print_fn=lines.append)
    assert "Trainable params: 50" in lines[0] and "Non-trainable params: 24" in lines[0]
    assert "Total params: 74" in lines[0]


def test_layer_stats_leave_out_frozen_weights():
    x, y = _data()
    m = _mlp()
    m.compile(optimizer=O.SGD(0.1), loss="sparse_categorical_crossentropy")
    h = m.fit(x, y, epochs=1, batch_size=5, verbose=0)
    assert "kernel_grad_norm" not in h.layer_stats.get("dense_1", {})
    assert "kernel_grad_norm" in h.layer_stats["dense"]


@pytest.mark.parametrize("how", ["config", "save", "pickle"])
def test_trainable_round_trips(how, tmp_path):
    x, y = _data()
    m = _mlp(frozen=(0, 2))
    m.compile(optimizer=O.SGD(0.1), loss="sparse_categorical_crossentropy")
    m.fit(x, y, epochs=1, verbose=0)
    if how == "config":
        back = cr.Sequential.from_config(m.get_config())
        back.compile(optimizer=O.SGD(0.1), loss="sparse_categorical_crossentropy")
        back.set_weights(m.get_weights())
    elif how == "save":
        m.save(tmp_path / "m.npz")
        back = cr.load_model(tmp_path / "m.npz")
    else:
        back = pickle.loads(pickle.dumps(m))
    assert [l.trainable for l in back.layers] == [False, True, False]
    before = back.get_weights()
    back.train_on_batch(x, y)
    after = back.get_weights()
    assert np.array_equal(after[0], before[0]) and np.array_equal(after[4], before[4])
    assert not np.array_equal(after[2], before[2])


def test_trainable_must_be_a_bool():
    with pytest.raises(TypeError, match=r"Dense: trainable must be True or False; received 0"):
        Dense(3, trainable=0)
    layer = Dense(3)
    with pytest.raises(TypeError, match=r"trainable must be True or False; received 'no'"):
        layer.trainable = "no"


@pytest.mark.parametrize("naive", [False, True], ids=["fast", "naive"])
@pytest.mark.parametrize("conv", [dict(filters=3, kernel_size=1), dict(filters=3, kernel_size=3),
                                  dict(filters=3, kernel_size=(2, 3), strides=2, padding="same")],
                         ids=["pointwise", "im2col", "strided"])
def test_frozen_convolution_passes_the_gradient(conv, naive, monkeypatch):
    """A frozen convolution between two trainable ones (and one with one input channel,
    the direct path, frozen first): its weights stay, the first layer's gradient equals
    the unfrozen model's."""
    if naive:
        monkeypatch.setenv("CHAINRULE_CONV_NAIVE", "1")
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(4, 7, 6, 1)), rng.integers(0, 3, 4)

    def model(frozen):
        m = cr.Sequential([Input(shape=(7, 6, 1)), Conv2D(2, 3, activation="tanh"),
                           Conv2D(activation="tanh", trainable=not frozen, **conv), Flatten(),
                           Dense(3, activation="softmax")], dtype="float64", seed=2)
        m.compile(optimizer=O.SGD(0.1, momentum=0.5), loss="sparse_categorical_crossentropy")
        return m

    free, frozen = model(False), model(True)
    _, g_free = free.compute_gradients(x, y)
    _, g_frozen = frozen.compute_gradients(x, y)
    for i in (0, 1, 4, 5):
        np.testing.assert_allclose(g_frozen[i], g_free[i], rtol=1e-13, atol=1e-16)
    assert not g_frozen[2].any() and not g_frozen[3].any()
    before = frozen.get_weights()
    frozen.fit(x, y, epochs=2, batch_size=2, verbose=0)
    after = frozen.get_weights()
    assert np.array_equal(after[2], before[2]) and np.array_equal(after[3], before[3])
    # the direct (one input channel) path frozen
    first = cr.Sequential([Input(shape=(7, 6, 1)), Conv2D(2, 3, activation="tanh", trainable=False), Flatten(),
                           Dense(3, activation="softmax")], dtype="float64", seed=2)
    first.compile(optimizer=O.Adam(0.1), loss="sparse_categorical_crossentropy")
    w = first.get_weights()
    first.fit(x, y, epochs=2, batch_size=2, verbose=0)
    assert np.array_equal(first.get_weights()[0], w[0]) and not np.array_equal(first.get_weights()[2], w[2])
