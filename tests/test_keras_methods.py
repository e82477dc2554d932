"""Keras's model methods and callbacks (test_on_batch, predict_on_batch, model(x),
predict(verbose=), save_weights / load_weights, layer get_weights / set_weights, CSVLogger,
LearningRateScheduler, History) and the mistakes fit says out loud: inputs far outside the
usual range, a layer whose units all died, a loss that became NaN."""

import csv
import math
import os
import warnings
import zipfile

import numpy as np
import pytest

import chainrule as cr
from chainrule.layers import Dense

C = cr.callbacks


def _data(n=120, d=5, c=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    return x, np.argmax(x @ rng.normal(size=(d, c)), axis=1)


def _model(seed=0, metrics=("accuracy",), optimizer=None, dtype="float32"):
    m = cr.Sequential([Dense(8, activation="relu", input_shape=(5,)), cr.layers.Dropout(0.2),
                       Dense(3, activation="softmax")], seed=seed, dtype=dtype)
    m.compile(optimizer=optimizer or cr.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
              metrics=list(metrics))
    return m


# -- batch methods and calling the model ------------------------------------------------------------
def test_test_on_batch_predict_on_batch_and_call_match_evaluate_and_predict():
    x, y = _data()
    m = _model(metrics=["accuracy", "sparse_top_k_categorical_accuracy"])
    m.fit(x, y, epochs=2, verbose=0, seed=0)
    before = m.get_weights()
    xb, yb = x[:17], y[:17]
    assert m.test_on_batch(xb, yb) == m.evaluate(xb, yb, batch_size=17)
    assert m.test_on_batch(xb, yb, return_dict=True) == m.evaluate(xb, yb, batch_size=17, return_dict=True)
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(m.predict_on_batch(xb), m.predict(xb, batch_size=17))
    np.testing.assert_array_equal(m(xb), m.predict(xb))
    with pytest.raises(ValueError, match=r"training=True\) is not supported"):
        m(xb, training=True)
    logs = m.train_on_batch(xb, yb, return_dict=True)
    assert list(logs) == ["loss", "accuracy", "sparse_top_k_categorical_accuracy"]
    lone = _model(metrics=())
    lone.build()
    assert isinstance(lone.test_on_batch(xb, yb), float) and isinstance(lone.train_on_batch(xb, yb), float)


def test_train_on_batch_takes_class_weight():
    x, y = _data()
    a, b = _model(), _model()
    cw = {0: 2.0, 1: 0.5, 2: 1.0}
    a.train_on_batch(x[:20], y[:20], class_weight=cw)
    b.train_on_batch(x[:20], y[:20], sample_weight=np.array([cw[int(k)] for k in y[:20]]))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_predict_verbose_prints_and_returns_the_same(capsys):
    x, _ = _data(n=1000)
    m = _model()
    m.build()
    quiet = m.predict(x)
    assert capsys.readouterr().out == ""
    np.testing.assert_array_equal(m.predict(x, batch_size=10, verbose=1), quiet)
    out = capsys.readouterr().out
    assert "100/100 [" in out and out.count("\r") >= 20
    np.testing.assert_array_equal(m.predict(x, verbose="auto"), quiet)
    assert "4/4 [" in capsys.readouterr().out
    np.testing.assert_array_equal(m.predict(x, verbose=2), quiet)
    assert capsys.readouterr().out.startswith("predict: 1000 samples")
    with pytest.raises(ValueError, match="verbose must be 0, 1 or 2"):
        m.predict(x, verbose=3)
    gen = (x[i:i + 100] for i in range(0, 1000, 100))  # a stream of unknown length
    np.testing.assert_array_equal(m.predict(gen, verbose=1), quiet)
    out = capsys.readouterr().out
    assert "10/Unknown" in out and "\r10/10 [" in out


# -- weights files ---------------------------------------------------------------------------------
def test_save_weights_and_load_weights_round_trip(tmp_path):
    x, y = _data()
    m = _model()
    m.fit(x, y, epochs=2, verbose=0, seed=0)
    path = tmp_path / "m.weights.npz"
    m.save_weights(path)
    fresh = _model(seed=9)  # not built: load_weights builds it for the stored input shape
    assert not fresh.built
    fresh.load_weights(path)
    for a, b in zip(m.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fresh.predict(x), m.predict(x))
    # names may differ; float64 weights load into a float32 model and back
    other = cr.Sequential([Dense(8, activation="relu", name="a"), cr.layers.Dropout(0.5, name="b"),
                           Dense(3, activation="softmax", name="c")], dtype="float64")
    other.load_weights(str(path))
    np.testing.assert_allclose(other.predict(x), m.predict(x), rtol=1e-5)
    other.save_weights(tmp_path / "o.weights.npz")
    m.load_weights(tmp_path / "o.weights.npz")
    with pytest.raises(FileExistsError):
        m.save_weights(path, overwrite=False)
    m.save_weights(path, overwrite=True)


@pytest.mark.parametrize("name", ["m.npz", "m.weights.h5", "m.crm", "weights.npz"])
def test_weights_files_need_the_suffix(tmp_path, name):
    m = _model()
    m.build()
    with pytest.raises(ValueError, match=r"must end in '\.weights\.npz'"):
        m.save_weights(tmp_path / name)
    with pytest.raises(ValueError, match=r"must end in '\.weights\.npz'"):
        m.load_weights(tmp_path / name)


def test_load_weights_refuses_another_architecture_and_changes_nothing(tmp_path):
    m = _model()
    m.build()
    m.save_weights(tmp_path / "m.weights.npz")
    other = cr.Sequential([Dense(9, activation="relu", input_shape=(5,)), cr.layers.Dropout(0.2),
                           Dense(3, activation="softmax")])
    other.build()
    before = other.get_weights()
    with pytest.raises(ValueError, match=r"layer 0 of model .* \(Dense 'dense', parameters \[\(5, 9\), \(9,\)\]\) "
                                         r"does not match the file's \(Dense 'dense', parameters \[\(5, 8\)"):
        other.load_weights(tmp_path / "m.weights.npz")
    for a, b in zip(before, other.get_weights()):
        np.testing.assert_array_equal(a, b)
    short = cr.Sequential([Dense(8, activation="relu", input_shape=(5,))])
    with pytest.raises(ValueError, match="holds the weights of 3 layers; model .* has 1"):
        short.load_weights(tmp_path / "m.weights.npz")


def test_damaged_weights_files_raise_model_format_error(tmp_path):
    m = _model()
    m.build()
    path = tmp_path / "m.weights.npz"
    m.save_weights(path)
    data = path.read_bytes()
    cases = {"truncated": data[: len(data) // 2], "flipped": bytearray(data), "empty": b"", "text": b"hello"}
    cases["flipped"][len(data) // 2] ^= 0xFF
    model_file = tmp_path / "model.crm"
    m.save(model_file)
    cases["a model file"] = model_file.read_bytes()
    for what, blob in cases.items():
        p = tmp_path / f"bad-{what.replace(' ', '_')}.weights.npz"
        p.write_bytes(bytes(blob))
        with pytest.raises(cr.ModelFormatError, match=r"weights file"):
            m.load_weights(p)
    with pytest.raises(FileNotFoundError):
        m.load_weights(tmp_path / "missing.weights.npz")
    # crafted metadata: a weights entry too many
    crafted = tmp_path / "crafted.weights.npz"
    with zipfile.ZipFile(path) as zin:
        entries = {name: zin.read(name) for name in zin.namelist()}
    entries["param_004.npy"] = entries["param_000.npy"]
    with zipfile.ZipFile(crafted, "w", zipfile.ZIP_STORED) as zout:
        for name, blob in entries.items():
            zout.writestr(name, blob)
    with pytest.raises(cr.ModelFormatError, match="holds 5 weight arrays; its metadata lists 4"):
        m.load_weights(crafted)


def test_save_weights_refuses_nonfinite_weights(tmp_path):
    m = _model(optimizer=cr.optimizers.SGD(1e30))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(np.full((8, 5), 1e10), np.zeros(8), epochs=1, verbose=0, stop_on_nonfinite=False)
    with pytest.raises(ValueError, match="holds NaN or infinite values"):
        m.save_weights(tmp_path / "m.weights.npz")
    assert not (tmp_path / "m.weights.npz").exists()


# -- layer weights ------------------------------------------------------------------------------------
def test_layer_get_and_set_weights_are_slices_of_the_model():
    x, y = _data()
    m = _model()
    d1, drop, d2 = m.layers
    assert d1.get_weights() == [] and drop.get_weights() == []  # not built yet
    with pytest.raises(ValueError, match="has no weights yet"):
        d1.set_weights([np.zeros((5, 8)), np.zeros(8)])
    m.fit(x, y, epochs=1, verbose=0)
    w = m.get_weights()
    assert [a.shape for a in d1.get_weights()] == [(5, 8), (8,)] and drop.get_weights() == []
    np.testing.assert_array_equal(d2.get_weights()[0], w[2])
    k = np.full((8, 3), 0.1, dtype=np.float32)
    d2.set_weights([k, np.arange(3, dtype=np.float32)])
    np.testing.assert_array_equal(m.get_weights()[2], k)
    np.testing.assert_array_equal(m.get_weights()[0], w[0])
    drop.set_weights([])
    with pytest.raises(ValueError, match=r"must have shape \(8, 3\); received shape \(3, 8\)"):
        d2.set_weights([k.T, np.zeros(3)])
    with pytest.raises(ValueError, match="expects a list of 2 arrays; received 1"):
        d2.set_weights([k])
    with pytest.raises(ValueError, match="contains NaN"):
        d2.set_weights([np.full((8, 3), np.nan), np.zeros(3)])
    np.testing.assert_array_equal(m.get_weights()[2], k)  # nothing set by a refused call
    import pickle
    assert pickle.loads(pickle.dumps(d2)).units == 3  # layers still pickle


# -- callbacks -------------------------------------------------------------------------------------
def test_csv_logger_writes_one_row_per_epoch_and_appends(tmp_path):
    x, y = _data()
    path = tmp_path / "log.csv"
    m = _model()
    h = m.fit(x, y, epochs=3, verbose=0, validation_split=0.2, callbacks=[C.CSVLogger(path)])
    rows = list(csv.DictReader(open(path)))
    assert list(rows[0]) == ["epoch", "accuracy", "loss", "lr", "val_accuracy", "val_loss"]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert [float(r["loss"]) for r in rows] == h.history["loss"]
    m.fit(x, y, epochs=5, initial_epoch=3, verbose=0, validation_split=0.2,
          callbacks=[C.CSVLogger(path, append=True)])
    lines = open(path).read().splitlines()
    assert len(lines) == 6 and lines[0].startswith("epoch,") and lines[4].startswith("3,")
    m.fit(x, y, epochs=1, verbose=0, callbacks=[C.CSVLogger(path, separator=";")])
    assert open(path).read().splitlines()[0] == "epoch;accuracy;loss;lr"
    with pytest.raises(ValueError, match="separator must be one character"):
        C.CSVLogger(path, separator=";;")


def test_learning_rate_scheduler_sets_each_epochs_rate(capsys):
    x, y = _data()
    m = _model(optimizer=cr.optimizers.SGD(0.1))
    sched = C.LearningRateScheduler(lambda epoch, lr: lr * 0.5 if epoch > 0 else lr, verbose=1)
    h = m.fit(x, y, epochs=4, verbose=0, callbacks=[sched])
    np.testing.assert_allclose(h.history["lr"], [0.1, 0.05, 0.025, 0.0125], rtol=1e-12)
    np.testing.assert_allclose(h.history["learning_rate"], h.history["lr"], rtol=1e-12)
    assert "Epoch 2: LearningRateScheduler setting learning rate to 0.05" in capsys.readouterr().out
    m2 = _model(optimizer=cr.optimizers.SGD(0.1))
    h2 = m2.fit(x, y, epochs=3, verbose=0, callbacks=[C.LearningRateScheduler(lambda e: 0.01 * (e + 1))])
    np.testing.assert_allclose(h2.history["lr"], [0.01, 0.02, 0.03], rtol=1e-12)
    # the same run with the rate given by hand: the same weights
    m3 = _model(optimizer=cr.optimizers.SGD(0.1))
    m3.build()
    for e in range(3):
        m3.lr_scale = 0.01 * (e + 1) / 0.1
        m3.fit(x, y, epochs=e + 1, initial_epoch=e, verbose=0, seed=5)
    m4 = _model(optimizer=cr.optimizers.SGD(0.1))
    m4.fit(x, y, epochs=3, verbose=0, seed=5, callbacks=[C.LearningRateScheduler(lambda e: 0.01 * (e + 1))])
    for a, b in zip(m3.get_weights(), m4.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_learning_rate_scheduler_mistakes():
    x, y = _data()
    with pytest.raises(ValueError, match="must return a learning rate > 0"):
        _model().fit(x, y, verbose=0, callbacks=[C.LearningRateScheduler(lambda e, lr: 0.0)])
    with pytest.raises(TypeError, match="must be a number"):
        _model().fit(x, y, verbose=0, callbacks=[C.LearningRateScheduler(lambda e, lr: "fast")])
    sched_opt = cr.optimizers.SGD(cr.schedules.ExponentialDecay(0.1, 10, 0.9))
    with pytest.raises(ValueError, match="learning_rate is a schedule"):
        _model(optimizer=sched_opt).fit(x, y, verbose=0, callbacks=[C.LearningRateScheduler(lambda e, lr: lr)])
    with pytest.raises(TypeError, match="schedule must be callable"):
        C.LearningRateScheduler(0.1)
    with pytest.raises(TypeError, match=r"schedule\(epoch, lr\) or schedule\(epoch\)"):
        C.LearningRateScheduler(lambda: 0.1)


def test_history_is_a_callback_and_fit_records_into_the_one_passed():
    x, y = _data()
    m = _model()
    mine = C.History()
    assert isinstance(mine, C.Callback) and C.History is cr.History
    order = []
    spy = C.LambdaCallback(on_epoch_end=lambda e, logs: order.append(("spy", len(mine.epoch))))
    got = m.fit(x, y, epochs=2, verbose=0, callbacks=[mine, spy])
    assert got is mine and m.history is mine
    assert mine.epoch == [0, 1] and len(mine.history["loss"]) == 2
    assert order == [("spy", 0), ("spy", 1)]  # History records after the other callbacks, as Keras
    assert mine.layer_stats["dense"]["kernel_grad_norm"] and mine.params["epochs"] == 2


# -- mistakes said out loud ------------------------------------------------------------------------------
def _digits():
    (x, y), (xt, yt) = cr.datasets.load_digits(normalize=False)
    return x, y, xt, yt


def _digits_mlp():
    m = cr.Sequential([Dense(64, activation="relu"), Dense(10, activation="softmax")], seed=0)
    m.compile(optimizer=cr.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    return m


def test_raw_pixels_warn_once_and_dead_units_are_named_with_remedies():
    x, y, _, _ = _digits()
    raw = (x * 16).clip(0, 255).astype(np.uint8)  # 8-bit pixels, as images come
    m = _digits_mlp()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        h = m.fit(raw, y, epochs=3, verbose=0, seed=0)
        m.fit(raw, y, epochs=1, verbose=0, seed=0)
    ranges = [str(w.message) for w in rec if w.category is cr.InputRangeWarning]
    assert len(ranges) == 1 and "up to |x| = 240" in ranges[0]
    assert "cr.datasets.scale" in ranges[0] and "cr.datasets.standardize" in ranges[0]
    dead = [str(w.message) for w in rec if w.category is cr.GradientWarning and "dead" in str(w.message)]
    assert len(dead) == 2  # one per fit
    assert "layer(s) 'dense'" in dead[0]
    for remedy in ("lower learning rate", "leaky_relu", "he_normal", "cr.datasets.scale"):
        assert remedy in dead[0]
    assert h.layer_stats["dense"]["dead_fraction"][-1] == 1.0
    assert h.history["accuracy"][-1] < 0.2
    # the same data scaled: no warning, and it learns
    m2 = _digits_mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h2 = m2.fit(cr.datasets.scale(raw), y, epochs=3, verbose=0, seed=0)
    assert h2.history["accuracy"][-1] > 0.8


def test_inputs_beyond_a_thousand_warn_and_streams_are_checked_on_their_first_batch():
    x, y = _data()
    m = _model()
    with pytest.warns(cr.InputRangeWarning, match=r"inputs up to \|x\| = \d{4}\b"):
        m.fit(x * 2000, y, epochs=1, verbose=0)
    m2 = _model()
    with pytest.warns(cr.InputRangeWarning):
        m2.fit(cr.data.Dataset(x * 2000, y, batch_size=10), epochs=1, verbose=0)


@pytest.mark.parametrize("lr", [10.0, 1.2])  # diverges in the first epoch / after four epochs
def test_a_nan_loss_stops_fit_with_the_last_finite_weights_by_default(lr):
    # The case that ran every remaining epoch on NaN: a learning rate of 10.
    x, y, _, _ = _digits()
    x, y = cr.datasets.scale(x, 0, 16), y.astype(np.float64)

    def regression():
        m = cr.Sequential([Dense(64, activation="relu"), Dense(1)], seed=0)
        m.compile(optimizer=cr.optimizers.SGD(lr), loss="mse", metrics=["mae"])
        return m

    m = regression()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        h = m.fit(x, y, epochs=20, verbose=0, seed=0, shuffle=False)
    stops = [str(w.message) for w in rec if w.category is cr.NonFiniteWarning]
    assert len(stops) == 1 and f"fit stopped in epoch {len(h.epoch)}" in stops[0], stops
    assert "stop_on_nonfinite=False" in stops[0] and "Lower the learning rate" in stops[0]
    assert len(h.epoch) < 20  # (the stopped epoch's loss is NaN, or finite when new weights were)
    assert all(np.isfinite(w).all() for w in m.get_weights())
    assert all(math.isfinite(v) for v in m.evaluate(x, y))
    assert m.last_epoch_stats["stopped_nan"] and m.stop_on_nonfinite is False
    # the state put back is a real past one, at most 32 steps before the refused step: the
    # same number of steps replayed one batch at a time reaches exactly these weights
    taken = m.last_epoch_stats["steps"] + h.params["steps"] * (len(h.epoch) - 1)
    k = m._core.step_count
    assert 0 <= taken - k <= 32
    replay = regression()
    replay.build(x.shape[1:])
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)]
    for i in range(k):
        replay.train_on_batch(*batches[i % len(batches)])
    for a, b in zip(m.get_weights(), replay.get_weights()):
        np.testing.assert_array_equal(a, b)
    # opting out: every epoch runs (on NaN), as before
    m2 = regression()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h2 = m2.fit(x, y, epochs=20, verbose=0, seed=0, stop_on_nonfinite=False)
    assert len(h2.epoch) == 20 and not math.isfinite(h2.history["loss"][-1])
    with pytest.raises(TypeError, match="stop_on_nonfinite must be True or False"):
        m2.fit(x, y, verbose=0, stop_on_nonfinite=1)
