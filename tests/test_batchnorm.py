"""BatchNormalization against independent oracles: a numpy reference of Keras's formulas
(batch statistics, biased variance, moving averages), central finite differences in float64
(gamma, beta and the layers before it, through the batch statistics), and torch.nn.BatchNorm1d
/ BatchNorm2d with the same weights in train and eval mode over several optimizer steps,
moving statistics included. Also: batches of one, frozen (inference-mode) normalization,
the non-trainable moving statistics (optimizer, weight decay, penalties, clipping, gradient
norm), regularizers, summary counts, trace, and the checks on its arguments and weights."""

import math

import numpy as np
import pytest

import chainrule as cr
from chainrule.layers import (Activation, BatchNormalization, Conv2D, Dense, Flatten, GlobalAveragePooling2D,
                              Input, MaxPooling2D)

TOL = {"float64": 1e-12, "float32": 2e-5}


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)


def bn_reference(x, gamma, beta, mean, var, eps):
    """Keras's formula; x (..., C), statistics (C,)."""
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


def _dense_bn(dtype="float64", seed=0, **bn):
    m = cr.Sequential([Input(shape=(6,)), Dense(5), BatchNormalization(**bn), Activation("tanh"),
                       Dense(3, activation="softmax")], dtype=dtype, seed=seed)
    m.compile(optimizer=cr.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    return m


def _conv_bn(dtype="float64", seed=0, **bn):
    m = cr.Sequential([Input(shape=(7, 6, 2)), Conv2D(4, 3, padding="same"), BatchNormalization(**bn),
                       Activation("tanh"), MaxPooling2D(2), Flatten(), Dense(3, activation="softmax")],
                      dtype=dtype, seed=seed)
    m.compile(optimizer=cr.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    return m


def _randomize_bn(model, rng):
    """Non-trivial gamma, beta and moving statistics in every BatchNormalization layer."""
    w = model.get_weights()
    i = 0
    for layer in model.layers:
        for name, shape, *_ in layer.param_specs():
            if name in ("gamma", "moving_variance"):
                w[i] = rng.uniform(0.5, 1.5, size=shape)
            elif name in ("beta", "moving_mean"):
                w[i] = rng.normal(scale=0.3, size=shape)
            i += 1
    model.set_weights(w)


# -- the forward pass against the formulas ------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(5,), (4, 3, 6), (3, 7)], ids=["features", "image", "2d"])
def test_training_and_inference_outputs_and_moving_statistics(shape, dtype):
    rng = np.random.default_rng(1)
    m = cr.Sequential([BatchNormalization(momentum=0.9, epsilon=1e-2)], dtype=dtype, seed=0)
    m.build(shape)
    m.compile(optimizer=cr.optimizers.SGD(0.01), loss="mse")
    _randomize_bn(m, rng)
    gamma, beta, mm, mv = m.get_weights()
    x = (rng.normal(size=(9,) + shape) * 3 + 5).astype(dtype)  # mean far from 0: no cancellation
    axes = tuple(range(x.ndim - 1))
    # inference: the moving statistics
    np.testing.assert_allclose(m.predict(x), bn_reference(x, gamma, beta, mm, mv, 1e-2), rtol=TOL[dtype] * 10,
                               atol=TOL[dtype] * 10)
    # training (trace: the training forward without the step) with the batch's statistics
    mean, var = x.astype(np.float64).mean(axis=axes), x.astype(np.float64).var(axis=axes)  # biased, as Keras
    y = np.zeros((len(x), math.prod(shape)))
    t = m.trace(x, y)
    assert rel_err(t.layers[0].a, bn_reference(x, gamma, beta, mean, var, 1e-2)) <= TOL[dtype] * 10
    assert t.layers[0].z is None  # no activation of its own
    # one step: moving = moving * momentum + batch * (1 - momentum)
    m.train_on_batch(x, y)
    _, _, mm1, mv1 = m.get_weights()
    assert rel_err(mm1, mm * 0.9 + mean * 0.1) <= TOL[dtype]
    assert rel_err(mv1, mv * 0.9 + var * 0.1) <= TOL[dtype]


def test_keras_defaults_and_weight_order():
    bn = BatchNormalization()
    assert (bn.axis, bn.momentum, bn.epsilon, bn.center, bn.scale) == (-1, 0.99, 1e-3, True, True)
    m = cr.Sequential([Input(shape=(4, 4, 3)), bn])
    m.build()
    names = [p["name"] for p in m._core.params_info()]
    assert names == ["gamma", "beta", "moving_mean", "moving_variance"]
    g, b, mm, mv = m.get_weights()
    assert np.array_equal(g, np.ones(3)) and np.array_equal(b, np.zeros(3))
    assert np.array_equal(mm, np.zeros(3)) and np.array_equal(mv, np.ones(3))
    for center, scale, want in [(False, True, ["gamma"]), (True, False, ["beta"]), (False, False, [])]:
        m = cr.Sequential([BatchNormalization(center=center, scale=scale, input_shape=(3,))])
        m.build()
        assert [p["name"] for p in m._core.params_info()] == want + ["moving_mean", "moving_variance"]
    # axis 3 counts the batch axis (Keras's channel axis of an image)
    assert cr.Sequential([BatchNormalization(axis=3, input_shape=(4, 4, 3))]).count_params() == 12


# -- gradients: finite differences in float64 ----------------------------------------------------
@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("make", [_dense_bn, _conv_bn], ids=["dense", "conv"])
def test_gradients_match_finite_differences(make, center, scale):
    rng = np.random.default_rng(2)
    m = make(center=center, scale=scale)
    _randomize_bn(m, rng)
    x = rng.normal(size=(8,) + m.input_shape) * 2 + 1
    y = rng.integers(0, 3, 8)
    errs = cr.gradient_check(m, x, y)
    first = m.layers[0].name
    bn = errs.get("batch_normalization", {})
    assert set(bn) == ({"gamma"} if scale else set()) | ({"beta"} if center else set())
    for layer, per_param in errs.items():
        for pname, err in per_param.items():
            if layer == first and pname == "bias":
                continue  # a bias before BatchNormalization has gradient 0: err is noise over noise
            assert err < 1e-6, (layer, pname, err)
    # the bias before BatchNormalization gets (numerically) no gradient, as the math says
    _, grads = m.compute_gradients(x, y)
    assert np.abs(grads[1]).max() < 1e-12


def test_input_gradient_through_batch_statistics_matches_finite_differences():
    """dL/dx of the layer before BatchNormalization, element by element: the batch mean and
    variance depend on every sample, so a change of one sample moves every output."""
    rng = np.random.default_rng(3)
    m = cr.Sequential([Input(shape=(4,)), Dense(3, activation="tanh"), BatchNormalization(),
                       Dense(2, activation="tanh"), Dense(2)], dtype="float64", seed=4)
    m.compile(optimizer=cr.optimizers.SGD(0.1), loss="mse")
    _randomize_bn(m, rng)
    x, y = rng.normal(size=(5, 4)), rng.normal(size=(5, 2))
    t = m.trace(x, y)
    want = np.zeros_like(t.layers[1].input)  # dL/d(BN input) = delta of the Dense before, through tanh
    a = t.layers[0].a

    def loss(a_in):
        g, b, _, _ = m.get_weights()[2:6]
        mu, var = a_in.mean(axis=0), a_in.var(axis=0)
        h = g * (a_in - mu) / np.sqrt(var + 1e-3) + b
        w2, b2, w3, b3 = m.get_weights()[6:]
        return np.mean((np.tanh(h @ w2 + b2) @ w3 + b3 - y) ** 2)
    eps = 1e-6
    for idx in np.ndindex(a.shape):
        ap, am = a.copy(), a.copy()
        ap[idx] += eps
        am[idx] -= eps
        want[idx] = (loss(ap) - loss(am)) / (2 * eps)
    assert t.loss == pytest.approx(loss(a), rel=1e-12)
    got = t.layers[0].delta / (1 - a ** 2)  # delta of the tanh layer is dL/dz = dL/da * (1 - a^2)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-10)


# -- torch ---------------------------------------------------------------------------------------
torch_cases = [("dense", (6,)), ("conv", (7, 6, 2))]


def _torch_twin(model, kind, torch):
    """The same network in torch (float64), written out: Linear/Conv2d, BatchNorm1d/2d with
    torch momentum 1 - momentum, tanh, and the head."""
    nn = torch.nn
    w = model.get_weights()
    bn_layer = model.layers[1]
    if kind == "dense":
        first = nn.Linear(6, 5)
        first.weight.data = torch.tensor(w[0].T.copy())
        bn = nn.BatchNorm1d(5, eps=bn_layer.epsilon, momentum=1 - bn_layer.momentum)
    else:
        first = nn.Conv2d(2, 4, 3, padding=1)
        first.weight.data = torch.tensor(w[0].transpose(3, 2, 0, 1).copy())
        bn = nn.BatchNorm2d(4, eps=bn_layer.epsilon, momentum=1 - bn_layer.momentum)
    first.bias.data = torch.tensor(w[1])
    bn.weight.data, bn.bias.data = torch.tensor(w[2]), torch.tensor(w[3])
    bn.running_mean.data, bn.running_var.data = torch.tensor(w[4]), torch.tensor(w[5])
    head = nn.Linear(w[6].shape[0], 3)
    head.weight.data, head.bias.data = torch.tensor(w[6].T.copy()), torch.tensor(w[7])
    mods = [first, bn, nn.Tanh()]
    if kind == "conv":
        mods += [nn.MaxPool2d(2), Permute(torch), nn.Flatten()]
    return nn.Sequential(*mods, head).double()


def Permute(torch):
    class P(torch.nn.Module):
        def forward(self, x):
            return x.permute(0, 2, 3, 1)  # NCHW -> NHWC: chainrule's Flatten order
    return P()


def _to_torch_input(x, kind, torch):
    return torch.tensor(x if kind == "dense" else x.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("kind,shape", torch_cases, ids=[c[0] for c in torch_cases])
def test_train_and_eval_mode_match_torch_over_optimizer_steps(kind, shape):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(5)
    make = _dense_bn if kind == "dense" else _conv_bn
    m = make(momentum=0.8)
    m.compile(optimizer=cr.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy")
    _randomize_bn(m, rng)
    mv0 = m.get_weights()[5].copy()
    net = _torch_twin(m, kind, torch)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    batch, steps = 6, 4
    rows = batch * (1 if kind == "dense" else shape[0] * shape[1])  # values per channel per batch
    a = 1 - 0.8  # torch's momentum
    for step in range(steps):
        x = rng.normal(size=(batch,) + shape) * 2 + 0.5
        y = rng.integers(0, 3, batch)
        # gradients of the training step, before it
        _, grads = m.compute_gradients(x, y)
        net.train()
        opt.zero_grad()
        loss = F.cross_entropy(net(_to_torch_input(x, kind, torch)), torch.tensor(y))
        loss.backward()
        tgrads = [p.grad.numpy() for p in net.parameters()]
        ours = [grads[0].T if kind == "dense" else grads[0].transpose(3, 2, 0, 1), grads[1], grads[2],
                grads[3], grads[6].T, grads[7]]
        for i, (g, tg) in enumerate(zip(ours, tgrads)):
            if i == 1:  # the bias before BatchNormalization: 0 up to rounding in both
                assert np.abs(g).max() < 1e-14 and np.abs(tg).max() < 1e-14
                continue
            assert rel_err(g, tg) <= 1e-11, i
        opt.step()
        got_loss = m.train_on_batch(x, y)
        assert got_loss == pytest.approx(float(loss.detach()), rel=1e-12)
        w = m.get_weights()
        tw = [p.detach().numpy() for p in net.parameters()]
        mine = [w[0].T if kind == "dense" else w[0].transpose(3, 2, 0, 1), w[1], w[2], w[3], w[6].T, w[7]]
        for u, v in zip(mine, tw):
            np.testing.assert_allclose(u, v, rtol=1e-11, atol=1e-14)
        bn = net[1]
        assert rel_err(w[4], bn.running_mean.numpy()) <= 1e-12
        # torch's running_var averages the unbiased variance: with the same start and decay,
        # (running_var - decay^t * v0) * (n - 1) / n equals chainrule's (Keras's) moving
        # variance minus decay^t * v0
        decay = (1 - a) ** (step + 1)
        want_var = decay * mv0 + (bn.running_var.numpy() - decay * mv0) * (rows - 1) / rows
        assert rel_err(w[5], want_var) <= 1e-12
    # eval mode: torch with chainrule's moving statistics as its running ones
    bn.running_var.data = torch.tensor(m.get_weights()[5])
    net.eval()
    x = rng.normal(size=(7,) + shape)
    with torch.no_grad():
        want = torch.softmax(net(_to_torch_input(x, kind, torch)), dim=1).numpy()
    assert rel_err(m.predict(x), want) <= 1e-12


# -- edge cases ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_of_one_in_training_is_beta_and_finite(dtype):
    rng = np.random.default_rng(6)
    m = _dense_bn(dtype)
    _randomize_bn(m, rng)
    beta = m.get_weights()[3]
    x, y = rng.normal(size=(1, 6)), np.array([1])
    t = m.trace(x, y)
    np.testing.assert_allclose(t.layers[1].a[0], beta, rtol=1e-6)  # variance 0: (x - mean) = 0
    m.train_on_batch(x, y)
    assert all(np.isfinite(w).all() for w in m.get_weights())
    assert np.isfinite(m.predict(x)).all()
    # a 1x1 image batch of one: the same
    c = cr.Sequential([Input(shape=(1, 1, 2)), BatchNormalization(), Flatten(), Dense(2)], dtype=dtype)
    c.compile(optimizer="sgd", loss="mse")
    c.train_on_batch(np.ones((1, 1, 1, 2)), np.ones((1, 2)))
    assert all(np.isfinite(w).all() for w in c.get_weights())


def test_frozen_layer_normalizes_with_moving_statistics_in_training():
    rng = np.random.default_rng(7)
    m = _dense_bn()
    _randomize_bn(m, rng)
    m.layers[1].trainable = False
    x, y = rng.normal(size=(8, 6)) * 2 + 1, rng.integers(0, 3, 8)
    t = m.trace(x, y)
    g, b, mm, mv = m.get_weights()[2:6]
    assert rel_err(t.layers[1].a, bn_reference(t.layers[1].input, g, b, mm, mv, 1e-3)) <= 1e-13
    before = m.get_weights()
    for _ in range(3):
        m.train_on_batch(x, y)
    after = m.get_weights()
    for i in (2, 3, 4, 5):  # gamma, beta and the moving statistics stay bit for bit
        assert np.array_equal(after[i], before[i])
    assert not np.array_equal(after[0], before[0])  # the gradient still reaches the first layer
    # its backward pass is the inference one: dx = gamma / sqrt(var + eps) * dy
    d_in = t.layers[2].delta  # dL/dz of the tanh Activation (its input is BN's output)
    np.testing.assert_allclose(t.layers[1].delta, d_in, rtol=0, atol=0)
    np.testing.assert_allclose(t.layers[0].delta, d_in * g / np.sqrt(mv + 1e-3), rtol=1e-13)
    assert cr.gradient_check(m, x, y)["dense"]["kernel"] < 1e-6


def test_moving_statistics_are_not_trained():
    """No optimizer (with weight decay), penalty, clipping or gradient norm touches them: with
    momentum 1 they stay bit for bit through training."""
    rng = np.random.default_rng(8)
    for opt in [cr.optimizers.AdamW(0.05, weight_decay=0.5), cr.optimizers.SGD(0.1, momentum=0.9, clipnorm=0.01),
                cr.optimizers.RMSprop(0.01, clipvalue=0.001), cr.optimizers.Adagrad(0.1)]:
        m = cr.Sequential([Input(shape=(6,)), Dense(5), BatchNormalization(momentum=1.0, gamma_regularizer="l2"),
                           Dense(3, activation="softmax")], dtype="float64", seed=1)
        m.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
        _randomize_bn(m, rng)
        before = m.get_weights()
        m.fit(rng.normal(size=(30, 6)), rng.integers(0, 3, 30), epochs=2, batch_size=7, verbose=0)
        after = m.get_weights()
        assert np.array_equal(after[4], before[4]) and np.array_equal(after[5], before[5])
        assert not np.array_equal(after[2], before[2])  # gamma is trained
        assert len(m.trainable_weights) == 6 and len(m.non_trainable_weights) == 2


def test_clipnorm_counts_only_trainable_gradients():
    """With clipnorm the update of each weight is -lr * g * clip / ||g||; ||g|| over the
    trainable weights only."""
    rng = np.random.default_rng(9)
    m = _dense_bn()
    _randomize_bn(m, rng)
    x, y = rng.normal(size=(8, 6)), rng.integers(0, 3, 8)
    _, grads = m.compute_gradients(x, y)
    assert all(not np.any(grads[i]) for i in (4, 5))
    norm = math.sqrt(sum(float(np.sum(g ** 2)) for g in grads))
    m.compile(optimizer=cr.optimizers.SGD(0.1, clipnorm=norm / 10), loss="sparse_categorical_crossentropy")
    before = m.get_weights()
    m.train_on_batch(x, y)
    after = m.get_weights()
    for i in (0, 1, 2, 3, 6, 7):
        np.testing.assert_allclose(after[i] - before[i], -0.1 * grads[i] / 10, rtol=1e-9, atol=1e-15)


def test_regularizers_add_their_penalty():
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(8, 6)), rng.integers(0, 3, 8)
    plain = _dense_bn()
    reg = cr.Sequential([Input(shape=(6,)), Dense(5),
                         BatchNormalization(gamma_regularizer=cr.regularizers.L2(0.3),
                                            beta_regularizer=cr.regularizers.L1(0.2)),
                         Activation("tanh"), Dense(3, activation="softmax")], dtype="float64", seed=0)
    reg.compile(optimizer=cr.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    _randomize_bn(plain, rng)
    reg.set_weights(plain.get_weights())
    g, b = plain.get_weights()[2:4]
    assert reg.evaluate(x, y) == pytest.approx(plain.evaluate(x, y) + 0.3 * np.sum(g ** 2) + 0.2 * np.sum(np.abs(b)),
                                               rel=1e-12)
    errs = cr.gradient_check(reg, x, y)
    assert errs["batch_normalization"]["gamma"] < 1e-6 and errs["batch_normalization"]["beta"] < 1e-6


def test_summary_counts_trainable_and_non_trainable():
    m = cr.Sequential([Input(shape=(8, 8, 1)), Conv2D(4, 3), BatchNormalization(), Activation("relu"),
                       GlobalAveragePooling2D(), Dense(3, trainable=False)])
    lines = []
    m.summary(print_fn=lines.append)  # builds from Input, as Keras has built it
    text = lines[0]
    total = 4 * 9 + 4 + 4 * 4 + 4 * 3 + 3
    assert m.count_params() == total
    assert f"Total params: {total:,}" in text
    assert f"Trainable params: {4 * 9 + 4 + 8:,}" in text
    assert f"Non-trainable params: {8 + 15:,}" in text
    assert m.layers[1].count_params(trainable=False) == 8


def test_trace_and_compute_gradients_leave_the_moving_statistics_alone():
    rng = np.random.default_rng(11)
    m = _conv_bn(momentum=0.5)
    x, y = rng.normal(size=(5, 7, 6, 2)) + 3, rng.integers(0, 3, 5)
    before = m.get_weights()
    t = m.trace(x, y)
    m.compute_gradients(x, y)
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), before))
    # the trace's updates are what the step does, moving statistics included
    m.train_on_batch(x, y)
    after = m.get_weights()
    bn = t["batch_normalization"]
    for i, name in enumerate(["gamma", "beta", "moving_mean", "moving_variance"]):
        np.testing.assert_array_equal(bn.updates[name], after[2 + i] - before[2 + i])
    assert np.any(bn.updates["moving_mean"])
    assert not np.any(bn.grads["moving_mean"]) and not np.any(bn.grads["moving_variance"])
    text = str(t)
    assert "γ" in text and "mov_var" in text


def test_same_numbers_whatever_the_thread_count():
    """The per-channel sums are taken in fixed blocks, added in block order."""
    rng = np.random.default_rng(12)
    x, y = rng.normal(size=(64, 12, 12, 3)).astype(np.float32), rng.normal(size=(64, 432)).astype(np.float32)
    results = []
    old = cr.get_num_threads()
    try:
        for threads in (1, 2):
            cr.set_num_threads(threads)
            m = cr.Sequential([Input(shape=(12, 12, 3)), BatchNormalization(), Flatten()], seed=3)
            m.compile(optimizer=cr.optimizers.SGD(0.1), loss="mse")
            m.fit(x, y, epochs=2, batch_size=32, verbose=0, seed=1)
            results.append(m.get_weights() + [m.predict(x)])
    finally:
        cr.set_num_threads(old)
    assert all(np.array_equal(a, b) for a, b in zip(*results))


# -- bad arguments and weights -------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,exc,pattern", [
    ({"momentum": 1.5}, ValueError, r"momentum must be in \[0, 1\]; received 1.5"),
    ({"momentum": "high"}, TypeError, r"momentum must be a number"),
    ({"epsilon": 0}, ValueError, r"epsilon must be a finite number > 0; received 0"),
    ({"epsilon": float("inf")}, ValueError, r"epsilon must be a finite number > 0"),
    ({"center": 1}, TypeError, r"center must be True or False; received 1"),
    ({"axis": 1.0}, TypeError, r"axis must be an integer"),
    ({"gamma_initializer": "nope"}, ValueError, r"unknown name 'nope'"),
    ({"moving_variance_initializer": "he_normal"}, ValueError, r"moving_variance_initializer must give values >= 0"),
    ({"trainable": "no"}, TypeError, r"trainable must be True or False"),
])
def test_bad_arguments(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        BatchNormalization(**kwargs)


def test_only_the_last_axis():
    m = cr.Sequential([BatchNormalization(axis=1, input_shape=(4, 4, 3))])
    with pytest.raises(ValueError, match=r"axis=1 for samples of shape \(4, 4, 3\); only the last axis"):
        m.build()


def test_negative_or_non_finite_moving_variance_is_refused(tmp_path):
    m = _dense_bn()
    w = m.get_weights()
    w[5] = -np.ones(5)
    with pytest.raises(ValueError, match=r"weights\[5\] \(moving_variance of layer 1\) must be >= 0"):
        m.set_weights(w)
    w[5] = np.full(5, np.nan)
    with pytest.raises(ValueError, match=r"weights\[5\]"):
        m.set_weights(w)
    # a file holding a negative moving variance
    path = tmp_path / "bn.npz"
    m.save(path)
    arrays = dict(np.load(path))
    arrays["param_005"] = -np.ones(5)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(cr.ModelFormatError, match=r"moving_variance of layer 'batch_normalization'\) holds negative"):
        cr.load_model(bad)


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(13)
    m = _conv_bn("float32", momentum=0.7)
    x, y = rng.normal(size=(20, 7, 6, 2)), rng.integers(0, 3, 20)
    m.fit(x, y, epochs=2, batch_size=5, verbose=0)
    m.save(tmp_path / "m.npz")
    back = cr.load_model(tmp_path / "m.npz")
    assert back.get_config() == m.get_config()
    assert all(np.array_equal(a, b) for a, b in zip(back.get_weights(), m.get_weights()))
    assert np.array_equal(back.predict(x), m.predict(x))
    m.train_on_batch(x[:5], y[:5])
    back.train_on_batch(x[:5], y[:5])
    assert all(np.array_equal(a, b) for a, b in zip(back.get_weights(), m.get_weights()))
