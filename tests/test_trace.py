"""model.trace: the numbers of the next training step, without taking it (issue 13)."""
import numpy as np
import pytest

import chainrule as cr
from chainrule import layers as L, optimizers as O, regularizers as R


def _dense(act="tanh", loss="mse", out_act="linear", opt=None, units=3):
    m = cr.Sequential([L.Dense(5, activation=act, kernel_regularizer=R.L2(0.01), input_shape=(4,)),
                       L.Dense(units, activation=out_act)], dtype="float64", seed=1)
    m.compile(optimizer=opt or O.SGD(0.1), loss=loss)
    return m


def _cnn(opt=None):
    m = cr.Sequential([L.Conv2D(3, 3, activation="tanh", input_shape=(7, 7, 2)),
                       L.MaxPooling2D(2), L.Conv2D(2, 1, activation="sigmoid", padding="same"),
                       L.AveragePooling2D(1), L.Flatten(), L.Dropout(0.3),
                       L.Dense(3, activation="softmax", kernel_regularizer=R.L2(0.02))],
                      dtype="float64", seed=2)
    m.compile(optimizer=opt or O.SGD(0.1), loss="sparse_categorical_crossentropy")
    return m


def _data(model, n=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n,) + tuple(model._layers[0]._declared_input_shape))
    return x


CASES = [
    ("tanh", "mse", "linear"), ("sigmoid", "mse", "sigmoid"), ("relu", "mse", "linear"),
    ("tanh", "categorical_crossentropy", "softmax"), ("tanh", "binary_crossentropy", "sigmoid"),
]
OPTS = [lambda: O.SGD(0.1, momentum=0.9), lambda: O.Adam(0.01, clipnorm=0.05),
        lambda: O.AdamW(0.01), lambda: O.RMSprop(0.01), lambda: O.Adagrad(0.1)]


def _targets(loss, n, rng):
    if loss == "categorical_crossentropy":
        return np.eye(3)[rng.integers(0, 3, n)]
    if loss == "binary_crossentropy":
        return rng.integers(0, 2, (n, 3)).astype(float)
    return rng.normal(size=(n, 3))


@pytest.mark.parametrize("act,loss,out_act", CASES)
@pytest.mark.parametrize("opt", range(len(OPTS)))
def test_dense_update_is_next_step(act, loss, out_act, opt):
    m = _dense(act, loss, out_act, OPTS[opt]())
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 4))
    y = _targets(loss, 6, rng)
    m.train_on_batch(x, y)  # optimizer state and step count not trivial
    before = m.get_weights()
    t = m.trace(x, y)
    pred = m.predict(x)
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), before))
    loss_step = m.train_on_batch(x, y)
    after = m.get_weights()
    assert t.loss == loss_step
    ups = [u for lt in t.layers for u in (lt.updates["kernel"], lt.updates["bias"])]
    for u, a, b in zip(ups, after, before):
        np.testing.assert_array_equal(u, a - b)
    # The output layer's delta: output_grad when the head is fused or linear, else
    # output_grad * sigmoid'(z); z, a against numpy.
    if out_act == "sigmoid" and loss == "mse":
        a = t.output
        np.testing.assert_allclose(t.layers[-1].delta, t.output_grad * a * (1 - a), rtol=1e-13, atol=1e-17)
    else:
        np.testing.assert_array_equal(t.layers[-1].delta, t.output_grad)
    w0, b0, w1, b1 = before
    z0 = x @ w0 + b0
    np.testing.assert_allclose(t.layers[0].z, z0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t.layers[1].input, t.layers[0].a, rtol=0, atol=0)
    np.testing.assert_allclose(t.layers[1].z, t.layers[0].a @ w1 + b1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t.output, pred, rtol=1e-13, atol=1e-15)


def test_grads_equal_compute_gradients_plus_penalty():
    m = _dense("sigmoid", "mse", "linear")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
    t = m.trace(x, y)
    _, g = m.compute_gradients(x, y)
    w = m.get_weights()
    np.testing.assert_allclose(t.layers[0].grads["kernel"], g[0] + 2 * 0.01 * w[0], rtol=1e-14, atol=1e-16)
    np.testing.assert_array_equal(t.layers[0].grads["bias"], g[1])
    np.testing.assert_array_equal(t.layers[1].grads["kernel"], g[2])


def _fd_loss(m, x, y):
    return m.trace(x, y).loss


@pytest.mark.parametrize("build", [lambda: _dense("tanh", "categorical_crossentropy", "softmax"), _cnn])
def test_grads_match_central_differences(build):
    m = build()
    rng = np.random.default_rng(5)
    x = _data(m, 4)
    y = np.eye(3)[rng.integers(0, 3, 4)] if m.loss == "categorical_crossentropy" else rng.integers(0, 3, 4)
    t = m.trace(x, y)
    ws = m.get_weights()
    grads = [g for lt in t.layers for g in lt.grads.values()]
    eps = 1e-6
    for i, w in enumerate(ws):
        num = np.zeros_like(w)
        for j in range(w.size):
            wp = [v.copy() for v in ws]
            wp[i].flat[j] += eps
            m.set_weights(wp)
            lp = _fd_loss(m, x, y)
            wp[i].flat[j] -= 2 * eps
            m.set_weights(wp)
            lm = _fd_loss(m, x, y)
            num.flat[j] = (lp - lm) / (2 * eps)
        m.set_weights(ws)
        scale = max(np.abs(grads[i]).max(), 1e-8)
        assert np.abs(num - grads[i]).max() / scale < 1e-7, i


def test_cnn_trace_is_the_next_step_and_changes_nothing():
    m = _cnn(O.Adam(0.01, clipnorm=0.1))
    x = _data(m, 5)
    y = np.array([0, 1, 2, 1, 0])
    m.fit(x, y, epochs=1, batch_size=5, verbose=0, seed=3)
    m2 = cr.Sequential.from_config(m.get_config())
    m2.compile(optimizer=O.Adam(0.01, clipnorm=0.1), loss="sparse_categorical_crossentropy")
    m2.set_weights(m.get_weights())
    m2._core.set_optimizer_state(m._core.get_optimizer_state())
    m2._core.set_step_count(m._core.step_count)
    before = m.get_weights()
    state = m._core.get_optimizer_state()
    t = m.trace(x, y)
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), before))
    assert all(np.array_equal(a, b) for a, b in zip(m._core.get_optimizer_state(), state))
    assert m._core.step_count == m2._core.step_count
    # Subsequent training (dropout included) is bit-identical to a model that was not traced.
    m.fit(x, y, epochs=1, batch_size=5, verbose=0, seed=9, shuffle=False)
    m2.fit(x, y, epochs=1, batch_size=5, verbose=0, seed=9, shuffle=False)
    for a, b in zip(m.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)
    # The trace's update is the step train_on_batch takes (same dropout masks).
    m3 = cr.Sequential.from_config(m2.get_config()); m3.compile(optimizer=O.SGD(0.1), loss="sparse_categorical_crossentropy")
    m3.set_weights(m2.get_weights())
    b3 = m3.get_weights()
    t3 = m3.trace(x, y)
    m3.train_on_batch(x, y)
    ups = [u for lt in t3.layers for u in lt.updates.values()]
    for u, a, b in zip(ups, m3.get_weights(), b3):
        np.testing.assert_array_equal(u, a - b)
    # Shapes, kinds, winners point at the max.
    kinds = [lt.kind for lt in t.layers]
    assert kinds == ["Conv2D", "MaxPooling2D", "Conv2D", "AveragePooling2D", "Flatten", "Dropout", "Dense"]
    mp = t.layers[1]
    assert mp.z is None and mp.winners.shape == mp.a.shape
    flat_in = mp.input.reshape(5, -1)
    picked = np.take_along_axis(flat_in, mp.winners.reshape(5, -1), axis=1)
    np.testing.assert_array_equal(picked, mp.a.reshape(5, -1))
    np.testing.assert_array_equal(t.layers[4].delta.reshape(5, -1), t.layers[3].delta.reshape(5, -1))
    np.testing.assert_array_equal(t.layers[-1].delta, t.output_grad)
    np.testing.assert_allclose(t.output.sum(axis=1), 1.0)


def test_trace_bad_input():
    m = _dense()
    m.build((4,))
    with pytest.raises(ValueError):
        m.trace(np.zeros((2, 5)), np.zeros((2, 3)))
    with pytest.raises(ValueError):
        m.trace(np.zeros((2, 4)), np.zeros((3, 3)))
    u = cr.Sequential([L.Dense(2, input_shape=(3,))])
    with pytest.raises(ValueError):
        u.trace(np.zeros((1, 3)), np.zeros((1, 2)))  # not compiled
    with pytest.raises(ValueError):
        m.trace(np.full((2, 4), np.nan), np.zeros((2, 3)))
    with pytest.raises(ValueError):
        m.trace(np.zeros((2, 4)), np.zeros((2, 3)), sample_weight=np.ones(3))


def test_gradient_check_small_errors_and_model_untouched():
    m = _cnn(O.Adam(0.01))
    m2 = cr.Sequential.from_config({**m.get_config(), "dtype": "float32"})
    m2.compile(optimizer=O.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy")
    x = _data(m, 3)
    y = np.array([0, 2, 1])
    for model in (m, m2):
        model.train_on_batch(x, y)
        before = model.get_weights()
        state = model._core.get_optimizer_state()
        step = model._core.step_count
        errs = cr.gradient_check(model, x, y)
        assert set(errs) == {"conv2d", "conv2d_1", "dense"}
        assert all(set(e) == {"kernel", "bias"} for e in errs.values())
        assert max(v for e in errs.values() for v in e.values()) < 1e-7
        assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))
        assert all(np.array_equal(a, b) for a, b in zip(model._core.get_optimizer_state(), state))
        assert model._core.step_count == step and model.dtype in ("float32", "float64")


def test_gradient_check_detects_a_wrong_gradient(monkeypatch):
    m = _dense("tanh", "mse", "linear")
    x, y = np.ones((2, 4)), np.zeros((2, 3))
    m.build((4,))
    from chainrule import tracing
    real = tracing.build_trace

    def broken(*a, **k):
        t = real(*a, **k)
        t.layers[0].grads["kernel"] = t.layers[0].grads["kernel"] * 1.01
        return t
    monkeypatch.setattr(tracing, "build_trace", broken)
    errs = cr.gradient_check(m, x, y)
    assert errs["dense"]["kernel"] > 1e-3 and errs["dense"]["bias"] < 1e-7


def test_gradient_check_bad_input():
    m = _dense()
    x, y = np.ones((2, 4)), np.zeros((2, 3))
    m.build((4,))
    for eps in (0.0, -1e-6, float("nan"), 2.0):
        with pytest.raises(ValueError, match="eps"):
            cr.gradient_check(m, x, y, eps=eps)
    with pytest.raises(TypeError, match="eps"):
        cr.gradient_check(m, x, y, eps="small")
    with pytest.raises(TypeError, match="model"):
        cr.gradient_check("model", x, y)
    with pytest.raises(ValueError):
        cr.gradient_check(m, np.ones((2, 5)), y)
    u = cr.Sequential([L.Dense(2, input_shape=(3,))])
    u.build((3,))
    with pytest.raises(ValueError, match="compiled"):
        cr.gradient_check(u, np.ones((1, 3)), np.zeros((1, 2)))


def _drop_mlp(dtype="float64", opt=None):
    m = cr.Sequential([L.Reshape((2, 3), input_shape=(6,)), L.Flatten(), L.Dense(8, activation="relu"),
                       L.Dropout(0.5), L.Dense(4, activation="softmax"), L.Reshape((2, 2))],
                      dtype=dtype, seed=4)
    m.compile(optimizer=opt or O.SGD(0.05, momentum=0.9, clipvalue=0.5), loss="categorical_crossentropy")
    return m


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_trace_between_steps_changes_nothing(dtype):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(5, 6))
    y = np.eye(4)[rng.integers(0, 4, 5)]
    a, b = _drop_mlp(dtype), _drop_mlp(dtype)
    for m in (a, b):
        m.stop_on_nonfinite = True
        m.fit(x, y, epochs=1, batch_size=2, verbose=0, seed=1)
    grads_before = [a._core.get_param(i, True) for i in range(4)]
    health, dead = a._core.param_health(), a._core.dead_fraction()
    t = a.trace(x, y)
    assert [a._core.get_param(i, True).tolist() for i in range(4)] == [g.tolist() for g in grads_before]
    assert a._core.param_health() == health and a._core.dead_fraction() == dead
    for _ in range(3):
        la, lb = a.train_on_batch(x, y), b.train_on_batch(x, y)
        assert la == lb
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    # Flatten/Reshape: shapes and deltas routed from the neighbouring core layers.
    assert [lt.kind for lt in t.layers] == ["Reshape", "Flatten", "Dense", "Dropout", "Dense", "Reshape"]
    assert t.layers[0].a.shape == (5, 2, 3) and t.layers[-1].a.shape == (5, 2, 2)
    np.testing.assert_array_equal(t.layers[1].delta.reshape(5, -1), t.layers[0].delta.reshape(5, -1))
    assert t.layers[0].z is None and t.layers[3].z is None and t.layers[3].winners is None
    np.testing.assert_array_equal(t.layers[-1].delta.reshape(5, -1), t.output_grad.reshape(5, -1))
    np.testing.assert_array_equal(t.output, t.layers[-1].a)
    np.testing.assert_array_equal(t.targets, y)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_trace_update_matches_step_with_dropout(dtype):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(4, 6))
    y = np.eye(4)[rng.integers(0, 4, 4)]
    m = _drop_mlp(dtype, O.Adam(0.01, clipnorm=0.3, weight_decay=0.01))
    m.train_on_batch(x, y)
    before = m.get_weights()
    t = m.trace(x, y)
    loss = m.train_on_batch(x, y)
    assert t.loss == pytest.approx(loss, rel=1e-6 if dtype == "float32" else 0)
    ups = [u for lt in t.layers for u in lt.updates.values()]
    assert len(ups) == 4
    for u, a, b in zip(ups, m.get_weights(), before):
        np.testing.assert_array_equal(u, a - b)
    drop = t.layers[3]
    kept = drop.a != 0
    assert 0 < kept.mean() < 1  # dropout was active in the trace, with the step's masks
    np.testing.assert_allclose(drop.a[kept], 2 * drop.input[kept], rtol=1e-6)
    assert t.learning_rate == m.learning_rate


def test_maxpool_winners_overlapping_same_windows_and_sample_weight():
    m = cr.Sequential([L.MaxPooling2D(3, strides=2, padding="same", input_shape=(5, 6, 2)), L.Flatten(),
                       L.Dense(2, activation="sigmoid")], dtype="float64", seed=0)
    m.compile(optimizer=O.RMSprop(0.01, momentum=0.5), loss="binary_crossentropy")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 5, 6, 2))
    y = rng.integers(0, 2, (3, 2)).astype(float)
    sw = np.array([0.5, 2.0, 1.0])
    t = m.trace(x, y, sample_weight=sw)
    mp = t.layers[0]
    assert mp.winners.shape == (3, 3, 3, 2) and mp.winners.dtype.kind == "i"
    picked = np.take_along_axis(x.reshape(3, -1), mp.winners.reshape(3, -1), axis=1)
    np.testing.assert_array_equal(picked, mp.a.reshape(3, -1))
    # Each winner lies in its window (pad_before: 1 row, 0 columns) and has the output's channel.
    h = mp.winners // (6 * 2)
    w = (mp.winners // 2) % 6
    c = mp.winners % 2
    oh, ow, oc = np.meshgrid(np.arange(3), np.arange(3), np.arange(2), indexing="ij")
    assert np.all((h >= 2 * oh - 1) & (h <= 2 * oh + 1) & (w >= 2 * ow) & (w <= 2 * ow + 2) & (c == oc))
    before = m.get_weights()
    m.train_on_batch(x, y, sample_weight=sw)
    for u, a, b in zip([t.layers[2].updates["kernel"], t.layers[2].updates["bias"]], m.get_weights(), before):
        np.testing.assert_array_equal(u, a - b)
    assert max(v for e in cr.gradient_check(m, x, y, sample_weight=sw).values() for v in e.values()) < 1e-7
