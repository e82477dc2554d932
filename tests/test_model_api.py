"""The Sequential training API: fit/evaluate/predict semantics checked against numpy
oracles (batching, partial last batch, validation split, metrics), reproducibility, inputs
left untouched, weights, save/load, config and summary. Gradients are checked in
test_gradients.py; rejected inputs in test_bad_input.py."""

import json

import numpy as np
import pytest

import chainrule as cr


def classifier(seed=0, dtype="float32", compile=True, lr=0.05, momentum=0.9, metrics=("accuracy",)):
    model = cr.Sequential([cr.layers.Dense(8, activation="relu"), cr.layers.Dense(3, activation="softmax")],
                          seed=seed, dtype=dtype)
    if compile:
        model.compile(optimizer=cr.optimizers.SGD(learning_rate=lr, momentum=momentum),
                      loss="sparse_categorical_crossentropy", metrics=list(metrics))
    return model


def blobs(n=120, d=5, c=3, seed=0):
    """Separable-ish classes: class k is centred at 2*e_k."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, size=n)
    x = rng.normal(scale=0.7, size=(n, d))
    x[np.arange(n), y] += 2.0
    return x.astype(np.float32), y


def linear_regression(lr, n_in=3, seed=0):
    model = cr.Sequential([cr.layers.Dense(1, bias_initializer="glorot_uniform")], seed=seed, dtype="float64")
    model.build((n_in,))
    model.compile(optimizer=cr.optimizers.SGD(learning_rate=lr), loss="mse")
    return model


def np_linear_sgd_step(k, b, x, y, lr):
    """One SGD step of a 1-unit linear model under batch-mean MSE; returns (k, b, loss)."""
    r = x @ k + b - y.reshape(-1, 1)
    loss = np.mean(r ** 2)
    gk = 2.0 * x.T @ r / len(x)
    gb = 2.0 * r.sum(axis=0) / len(x)
    return k - lr * gk, b - lr * gb, loss


# -- fit -------------------------------------------------------------------------------------
def test_history_keys_and_lengths():
    x, y = blobs()
    model = classifier()
    h = model.fit(x, y, epochs=4, batch_size=16, validation_split=0.25, seed=0, verbose=0)
    assert isinstance(h, cr.History)
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert all(len(v) == 4 for v in h.history.values())
    assert h.history["lr"] == pytest.approx([0.05] * 4)
    assert h.epoch == [0, 1, 2, 3]
    assert all(np.isfinite(v).all() for v in h.history.values())
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert h["loss"] == h.history["loss"]

    plain = classifier(metrics=())
    h2 = plain.fit(x, y, epochs=2, verbose=0, seed=0)
    assert set(h2.history) == {"loss", "lr"} and len(h2.history["loss"]) == 2


def test_verbose_output(capsys):
    """verbose=0 silent; 2 one line per epoch; 1 an "Epoch i/N" header and a progress bar
    (redrawn with carriage returns) that ends on the epoch's metrics (Keras's convention)."""
    x, y = blobs(40)
    model = classifier()
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, seed=0)
    assert capsys.readouterr().out == ""

    model.fit(x, y, epochs=3, batch_size=8, verbose=2, seed=0, validation_split=0.25)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines, 1):
        assert line.startswith(f"Epoch {i}/3")
        assert "loss:" in line and "accuracy:" in line and "val_loss:" in line

    model.fit(x, y, epochs=3, batch_size=8, verbose=1, seed=0, validation_split=0.25)
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    assert len(lines) == 6
    for i in range(3):
        assert lines[2 * i] == f"Epoch {i + 1}/3"
        final = lines[2 * i + 1].split("\r")[-1]
        assert final.startswith("4/4 [") and "val_loss:" in final and "accuracy:" in final


def test_validation_split_holds_out_the_last_samples():
    """Training with validation_split=0.2 is training on the first 80% only, and val_* is
    measured on the last 20% with the final weights."""
    x, y = blobs(100)
    a = classifier(seed=3)
    h = a.fit(x, y, epochs=2, batch_size=16, validation_split=0.2, seed=5, verbose=0)
    b = classifier(seed=3)
    b.fit(x[:80], y[:80], epochs=2, batch_size=16, seed=5, verbose=0)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert np.array_equal(wa, wb)
    val_loss, val_acc = b.evaluate(x[80:], y[80:])
    assert h.history["val_loss"][-1] == pytest.approx(val_loss, rel=1e-6)
    assert h.history["val_accuracy"][-1] == pytest.approx(val_acc)
    # ...and not on the first 20%
    assert h.history["val_loss"][-1] != pytest.approx(b.evaluate(x[:20], y[:20])[0], rel=1e-6)


def test_validation_data():
    x, y = blobs(90, seed=1)
    xv, yv = blobs(30, seed=2)
    model = classifier()
    h = model.fit(x, y, epochs=2, batch_size=10, validation_data=(xv, yv), seed=0, verbose=0)
    loss, acc = model.evaluate(xv, yv)
    assert h.history["val_loss"][-1] == pytest.approx(loss, rel=1e-6)
    assert h.history["val_accuracy"][-1] == pytest.approx(acc)
    assert h.history["val_loss"][-1] != pytest.approx(model.evaluate(x, y)[0], rel=1e-6)


def test_seeded_fit_is_reproducible_and_seed_dependent():
    x, y = blobs()

    def trained(fit_seed, shuffle=True):
        m = classifier(seed=0)
        m.fit(x, y, epochs=2, batch_size=16, seed=fit_seed, shuffle=shuffle, verbose=0)
        return m.get_weights()

    same_a, same_b = trained(1), trained(1)
    assert all(np.array_equal(p, q) for p, q in zip(same_a, same_b))
    other = trained(2)
    assert not all(np.array_equal(p, q) for p, q in zip(same_a, other))
    unshuffled = trained(1, shuffle=False)
    assert not all(np.array_equal(p, q) for p, q in zip(same_a, unshuffled))
    assert all(np.array_equal(p, q) for p, q in zip(unshuffled, trained(2, shuffle=False)))


def test_model_seed_fixes_initial_weights():
    a = cr.Sequential([cr.layers.Dense(6), cr.layers.Dense(2)], seed=4)
    b = cr.Sequential([cr.layers.Dense(6), cr.layers.Dense(2)], seed=4)
    c = cr.Sequential([cr.layers.Dense(6), cr.layers.Dense(2)], seed=5)
    for m in (a, b, c):
        m.build((5,))
    assert all(np.array_equal(p, q) for p, q in zip(a.get_weights(), b.get_weights()))
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])


def test_last_partial_batch_numpy_oracle():
    """n=10, batch_size=4, no shuffling: exactly three steps on rows 0-3, 4-7 and 8-9."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3))
    y = rng.normal(size=10)
    lr = 0.1
    model = linear_regression(lr)
    k, b = model.get_weights()
    k = k.copy()
    b = b.copy()
    expected_loss = 0.0
    for s in (0, 4, 8):
        xb, yb = x[s:s + 4], y[s:s + 4]
        k, b, loss = np_linear_sgd_step(k, b, xb, yb, lr)
        expected_loss += loss * len(xb)
    h = model.fit(x, y, epochs=1, batch_size=4, shuffle=False, verbose=0)
    np.testing.assert_allclose(model.get_weights()[0], k, rtol=1e-12)
    np.testing.assert_allclose(model.get_weights()[1], b, rtol=1e-12)
    assert h.history["loss"][0] == pytest.approx(expected_loss / 10, rel=1e-12)
    assert h.params["steps"] == 3


def test_shuffled_epoch_visits_every_sample_once():
    """n=10, batch_size=4, shuffled. With one-hot inputs x_i = e_i, row i of the kernel is
    moved only by sample i, by -lr * 2 r_i / |batch of i|; with a tiny lr the residuals r_i
    stay put, so the update reveals the batch size each sample was used in: every sample
    exactly once, eight in full batches of 4 and two in the partial batch of 2."""
    n = 10
    x = np.eye(n)
    y = np.linspace(-2.0, 3.0, n)
    lr = 1e-8
    partials = set()
    for seed in range(4):
        model = linear_regression(lr, n_in=n)
        k0, b0 = model.get_weights()
        residual = (x @ k0 + b0)[:, 0] - y
        model.fit(x, y, epochs=1, batch_size=4, shuffle=True, seed=seed, verbose=0)
        sizes = -lr * 2 * residual / (model.get_weights()[0][:, 0] - k0[:, 0])
        np.testing.assert_allclose(np.sort(sizes), [2, 2] + [4] * 8, rtol=1e-5)
        partials.add(tuple(np.flatnonzero(np.abs(sizes - 2) < 0.1)))
    assert len(partials) > 1, "every seed put the same samples in the partial batch: not shuffled"
    # the same measurement without shuffling: rows 8 and 9 form the partial batch
    model = linear_regression(lr, n_in=n)
    model.fit(x, y, epochs=1, batch_size=4, shuffle=False, verbose=0)
    sizes = -lr * 2 * residual / (model.get_weights()[0][:, 0] - k0[:, 0])
    np.testing.assert_allclose(sizes, [4] * 8 + [2, 2], rtol=1e-5)


def test_train_on_batch_is_one_step():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(7, 3))
    y = rng.normal(size=(7, 1))
    model = linear_regression(0.05)
    k, b = model.get_weights()
    k1, b1, loss = np_linear_sgd_step(k, b, x, y, 0.05)
    got = model.train_on_batch(x, y)
    assert got == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(model.get_weights()[0], k1, rtol=1e-12)
    np.testing.assert_allclose(model.get_weights()[1], b1, rtol=1e-12)


def test_evaluate_against_predict():
    x, y = blobs(50)
    model = classifier()
    model.fit(x, y, epochs=1, verbose=0, seed=0)
    p = model.predict(x).astype(np.float64)
    loss, acc = model.evaluate(x, y, batch_size=7)
    assert acc == pytest.approx(np.mean(p.argmax(axis=1) == y))
    assert loss == pytest.approx(np.mean(-np.log(p[np.arange(len(y)), y])), rel=1e-5)
    assert model.evaluate(x, y, return_dict=True) == pytest.approx({"loss": loss, "accuracy": acc})


# -- inputs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("x_dtype", [np.float32, np.float64, np.int64, np.uint8])
@pytest.mark.parametrize("model_dtype", ["float32", "float64"])
def test_inputs_are_never_modified(x_dtype, model_dtype):
    x, y = blobs(24)
    x = (x * 10).astype(x_dtype) if np.issubdtype(x_dtype, np.integer) else x.astype(x_dtype)
    if x_dtype == np.uint8:
        x = np.abs(x.astype(np.int64)).astype(np.uint8)
    xv, yv = x[:6].copy(), y[:6].copy()
    copies = [a.copy() for a in (x, y, xv, yv)]
    model = classifier(dtype=model_dtype)
    model.fit(x, y, epochs=2, batch_size=5, validation_data=(xv, yv), seed=0, verbose=0)
    model.fit(x, y, epochs=1, batch_size=5, validation_split=0.25, shuffle=True, seed=0, verbose=0)
    model.evaluate(x, y)
    model.predict(x)
    model.train_on_batch(x, y)
    model.compute_gradients(x, y)
    for arr, orig in zip((x, y, xv, yv), copies):
        assert arr.dtype == orig.dtype
        assert np.array_equal(arr, orig)


def test_read_only_and_non_contiguous_inputs_are_accepted():
    x, y = blobs(30)
    model = classifier(dtype="float64")
    model.build((5,))
    ref = model.predict(x)
    xr = x.copy()
    xr.flags.writeable = False
    yr = y.copy()
    yr.flags.writeable = False
    model2 = classifier(dtype="float64")
    model2.build((5,))
    model2.fit(xr, yr, epochs=1, verbose=0, seed=0)
    xf = np.asfortranarray(x)
    assert np.array_equal(model.predict(xf), ref)
    wide = np.zeros((30, 10), dtype=np.float32)
    wide[:, ::2] = x
    assert np.array_equal(model.predict(wide[:, ::2]), ref)


def test_float64_and_int_input_to_float32_model():
    x, y = blobs(20)
    model = classifier(dtype="float32")
    x64 = x.astype(np.float64) + 1e-12  # rounds to the same float32 values
    p32 = model.predict(x)
    assert p32.dtype == np.float32
    assert np.array_equal(model.predict(x64), p32)
    xi = np.rint(x * 3).astype(np.int32)
    assert np.array_equal(model.predict(xi), model.predict(xi.astype(np.float32)))
    assert model.evaluate(x64, y) == model.evaluate(x, y)


# -- weights ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_get_set_weights_round_trip(dtype):
    model = classifier(dtype=dtype)
    model.build((5,))
    w = model.get_weights()
    assert [a.shape for a in w] == [(5, 8), (8,), (8, 3), (3,)]
    assert all(a.dtype == np.dtype(dtype) for a in w)
    rng = np.random.default_rng(0)
    new = [rng.normal(size=a.shape) for a in w]
    model.set_weights(new)
    got = model.get_weights()
    for g, n in zip(got, new):
        assert np.array_equal(g, n.astype(dtype))
    got[0][:] = 123.0  # get_weights returns copies
    assert not np.any(model.get_weights()[0] == 123.0)
    # set_weights copies as well: changing the list afterwards does nothing
    new[2][:] = 7.0
    assert not np.any(model.get_weights()[2] == 7.0)
    # predict uses the weights that were set: numpy forward
    x = rng.normal(size=(4, 5))
    k0, b0, k1, b1 = [a.astype(np.float64) for a in model.get_weights()]
    z = np.maximum(x @ k0 + b0, 0) @ k1 + b1
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.predict(x), p, rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-7)


def test_count_params():
    model = cr.Sequential([cr.layers.Dense(128, activation="relu"), cr.layers.Dense(10, activation="softmax")])
    model.build((784,))
    assert model.count_params() == 784 * 128 + 128 + 128 * 10 + 10
    assert model.count_params() == sum(w.size for w in model.get_weights())


def test_predict_before_compile_builds_lazily():
    model = classifier(compile=False)
    assert not model.built
    x, _ = blobs(9)
    p = model.predict(x)
    assert model.built and model.input_shape == (5,)
    assert p.shape == (9, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    assert (p > 0).all()


def test_initializers():
    def kernel(init, units=300, fan_in=200, act=None):
        m = cr.Sequential([cr.layers.Dense(units, activation=act, kernel_initializer=init,
                                           bias_initializer="zeros")], seed=1, dtype="float64")
        m.build((fan_in,))
        return m.get_weights()

    k, b = kernel("zeros")
    assert not k.any() and not b.any()
    limit = np.sqrt(6.0 / 500)
    k, b = kernel("glorot_uniform")
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.95 * limit and not b.any()
    assert k.std() == pytest.approx(limit / np.sqrt(3), rel=0.03)
    assert kernel("glorot_normal")[0].std() == pytest.approx(np.sqrt(2.0 / 500), rel=0.03)
    assert kernel("he_normal")[0].std() == pytest.approx(np.sqrt(2.0 / 200), rel=0.03)
    k = kernel("he_uniform")[0]
    assert np.abs(k).max() <= np.sqrt(6.0 / 200) and k.std() == pytest.approx(np.sqrt(2.0 / 200), rel=0.03)
    # Dense with relu defaults to He, otherwise to Glorot
    assert kernel(None, act="relu")[0].std() == pytest.approx(np.sqrt(2.0 / 200), rel=0.03)
    assert kernel(None, act="tanh")[0].std() == pytest.approx(limit / np.sqrt(3), rel=0.03)


# -- persistence and config -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_load_round_trip(tmp_path, dtype):
    x, y = blobs(60)
    model = cr.Sequential([cr.layers.Dense(7, activation=cr.activations.LeakyReLU(0.2)),
                           cr.layers.Dense(5, activation="tanh"),
                           cr.layers.Dense(3, activation="softmax")], seed=2, dtype=dtype, name="net")
    model.compile(optimizer=cr.optimizers.SGD(0.03, momentum=0.0), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=2, verbose=0, seed=0)
    path = tmp_path / "model.npz"
    model.save(path)

    loaded = cr.load_model(path)
    assert loaded.get_config() == model.get_config()
    assert loaded.dtype == dtype
    assert np.array_equal(loaded.predict(x), model.predict(x))
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert loaded.evaluate(x, y) == model.evaluate(x, y)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    # Compile settings are restored: training continues identically (no momentum state).
    model.fit(x, y, epochs=1, verbose=0, seed=9)
    loaded.fit(x, y, epochs=1, verbose=0, seed=9)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        assert np.array_equal(a, b)

    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == {"__chainrule__", "param_000", "param_001", "param_002",
                                   "param_003", "param_004", "param_005"}
        meta = json.loads(bytes(data["__chainrule__"]).decode("utf-8"))
        assert meta["config"]["layers"][0]["config"]["activation"] == {"name": "leaky_relu", "alpha": 0.2}
        assert data["param_002"].shape == (7, 5)


def test_get_config_from_config():
    model = cr.Sequential([cr.layers.Dense(6, activation=cr.activations.LeakyReLU(0.3), kernel_initializer="he_uniform"),
                           cr.layers.Dense(2, activation="sigmoid", bias_initializer="zeros")],
                          seed=11, dtype="float64", name="m")
    model.build((4,))
    cfg = model.get_config()
    assert json.loads(json.dumps(cfg)) == cfg  # plain JSON
    clone = cr.Sequential.from_config(cfg)
    assert clone.get_config() == cfg
    assert clone.built and clone.input_shape == (4,)
    assert clone.layers[0].activation == cr.activations.LeakyReLU(0.3)
    # same seed in the config -> same initial weights
    for a, b in zip(clone.get_weights(), model.get_weights()):
        assert np.array_equal(a, b)


def test_summary(capsys):
    model = cr.Sequential([cr.layers.Dense(128, activation="relu", name="hidden"),
                           cr.layers.Dense(10, activation="softmax", name="out")])
    model.build((784,))
    model.summary()
    out = capsys.readouterr().out
    assert "hidden (Dense)" in out and "out (Dense)" in out
    assert "(None, 128)" in out and "(None, 10)" in out
    assert "100480" in out and "1290" in out
    assert "Total params: 101,770" in out
    lines = []
    model.summary(print_fn=lines.append)
    assert lines and "(None, 128)" in lines[0]
