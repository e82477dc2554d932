"""from_logits on the cross-entropies, metrics computed in the C++ loops (against numpy
oracles), custom losses and metrics as Python callables (against the built-ins they imitate),
and compile's refusal of a cross-entropy on outputs that are not probabilities."""

import math
import warnings

import numpy as np
import pytest

import chainrule as cr
from chainrule.layers import Dense

L = cr.losses
M = cr.metrics


def _data(n=240, d=6, c=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w = rng.normal(size=(d, c))
    labels = np.argmax(x @ w + 0.3 * rng.normal(size=(n, c)), axis=1)
    return x, labels


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# -- from_logits ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", ["sparse", "categorical", "binary"])
def test_a_linear_last_layer_with_from_logits_trains_exactly_as_the_fused_head(case, dtype):
    x, labels = _data()
    if case == "sparse":
        units, head, y = 3, "softmax", labels
        fused, logits = "sparse_categorical_crossentropy", L.SparseCategoricalCrossentropy(from_logits=True)
    elif case == "categorical":
        units, head, y = 3, "softmax", np.eye(3)[labels]
        fused, logits = "categorical_crossentropy", L.CategoricalCrossentropy(from_logits=True)
    else:
        units, head, y = 2, "sigmoid", np.eye(3)[labels][:, :2]
        fused, logits = "binary_crossentropy", L.BinaryCrossentropy(from_logits=True)

    def model(act, loss):
        m = cr.Sequential([Dense(16, activation="relu", input_shape=(6,)), Dense(units, activation=act)],
                          seed=4, dtype=dtype)
        m.compile(optimizer=cr.optimizers.Adam(0.01), loss=loss, metrics=["accuracy"])
        return m

    a, b = model(head, fused), model(None, logits)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert np.array_equal(wa, wb)
    ha = a.fit(x, y, epochs=4, batch_size=32, seed=7, verbose=0, validation_split=0.25)
    hb = b.fit(x, y, epochs=4, batch_size=32, seed=7, verbose=0, validation_split=0.25)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert np.array_equal(wa, wb)
    assert ha.history == hb.history
    # predict returns the logits: the last layer's affine output
    k1, b1, k2, b2 = (w.astype(np.float64) for w in b.get_weights())
    z = np.maximum(x @ k1 + b1, 0) @ k2 + b2
    tol = 1e-12 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(b.predict(x), z, rtol=tol, atol=tol)
    probs = _softmax(b.predict(x)) if head == "softmax" else 1 / (1 + np.exp(-b.predict(x)))
    np.testing.assert_allclose(probs, a.predict(x), rtol=tol, atol=tol)
    assert b.evaluate(x, y) == pytest.approx(a.evaluate(x, y), rel=1e-12)


@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy", "categorical_crossentropy",
                                  "binary_crossentropy", L.SparseCategoricalCrossentropy(),
                                  L.BinaryCrossentropy(from_logits=False)])
@pytest.mark.parametrize("act", [None, "relu", "tanh", "leaky_relu"])
def test_a_cross_entropy_on_outputs_that_are_not_probabilities_is_refused_at_compile(loss, act):
    m = cr.Sequential([Dense(8, activation="relu"), Dense(3, activation=act, name="out"), cr.layers.Dropout(0.2)])
    with pytest.raises(ValueError, match=r"expects probabilities, but the last layer 'out' has activation .*"
                                         r"from_logits=True"):
        m.compile(optimizer="sgd", loss=loss)
    assert not m._compiled


def test_from_logits_after_a_softmax_warns_as_keras_does():
    m = cr.Sequential([Dense(3, activation="softmax", input_shape=(4,))])
    with pytest.warns(UserWarning, match=r"from_logits=True, but the last layer .* 'softmax'"):
        m.compile(optimizer="sgd", loss=L.CategoricalCrossentropy(from_logits=True))
    # and trains on the probabilities as logits (what Keras computes)
    x, labels = _data(n=40, d=4)
    m.fit(x, np.eye(3)[labels], epochs=1, verbose=0)


def test_loss_objects_check_their_arguments_and_configs_round_trip():
    with pytest.raises(TypeError, match="from_logits must be True or False"):
        L.BinaryCrossentropy(from_logits=1)
    with pytest.raises(ValueError, match="from_logits applies to"):
        L.resolve({"name": "mse", "from_logits": True})
    spec = L.resolve(L.SparseCategoricalCrossentropy(from_logits=True).get_config())
    assert (spec.name, spec.from_logits) == ("sparse_categorical_crossentropy", True)
    assert L.get("bce") == "binary_crossentropy"


def test_from_logits_and_metric_objects_survive_save_load_and_pickle(tmp_path):
    import pickle
    x, labels = _data()
    m = cr.Sequential([Dense(8, activation="relu", input_shape=(6,)), Dense(3)], seed=0)
    m.compile(optimizer="adam", loss=L.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["acc", M.SparseTopKCategoricalAccuracy(k=2, name="top2")])
    m.fit(x, labels, epochs=1, verbose=0, seed=0)
    m.save(tmp_path / "m.crm")
    for back in (cr.load_model(tmp_path / "m.crm"), pickle.loads(pickle.dumps(m))):
        assert back._loss_spec.from_logits and back.loss == "sparse_categorical_crossentropy"
        assert back.metrics_names == ["loss", "acc", "top2"] and back.metrics[1] == m.metrics[1]
        np.testing.assert_array_equal(back.predict(x), m.predict(x))
        assert back.evaluate(x, labels, return_dict=True) == m.evaluate(x, labels, return_dict=True)
        h1 = back.fit(x, labels, epochs=2, initial_epoch=1, verbose=0, seed=0)
    assert set(h1.history) == {"loss", "acc", "top2", "lr"}


# -- metrics against numpy oracles ----------------------------------------------------------------
def _in_top_k(p, label, k):
    return (p > p[np.arange(len(p)), label][:, None]).sum(axis=1) < k


def _trained(units, act, loss, metrics, x, y, seed=0):
    m = cr.Sequential([Dense(12, activation="tanh", input_shape=(x.shape[1],)), Dense(units, activation=act)],
                      seed=seed, dtype="float64")
    m.compile(optimizer=cr.optimizers.SGD(0.05), loss=loss, metrics=metrics)
    m.fit(x, y, epochs=2, batch_size=16, verbose=0, seed=seed)
    return m


def test_sparse_metrics_match_numpy():
    x, labels = _data(c=6)
    metrics = ["accuracy", "acc", "sparse_categorical_accuracy", "sparse_top_k_categorical_accuracy",
               M.SparseTopKCategoricalAccuracy(k=2, name="top2"), M.SparseCategoricalAccuracy(name="sca")]
    m = _trained(6, "softmax", "sparse_categorical_crossentropy", metrics, x, labels)
    p = m.predict(x)
    acc = np.mean(np.argmax(p, axis=1) == labels)
    got = m.evaluate(x, labels, return_dict=True, batch_size=50)
    assert list(got) == ["loss", "accuracy", "acc", "sparse_categorical_accuracy",
                         "sparse_top_k_categorical_accuracy", "top2", "sca"]
    assert got["accuracy"] == got["acc"] == got["sparse_categorical_accuracy"] == got["sca"] == pytest.approx(acc)
    assert got["sparse_top_k_categorical_accuracy"] == pytest.approx(np.mean(_in_top_k(p, labels, 5)))
    assert got["top2"] == pytest.approx(np.mean(_in_top_k(p, labels, 2)))
    assert 0 < got["top2"] < 1 and got["sparse_top_k_categorical_accuracy"] < 1
    # evaluate's list is the dict's values, in compile order
    assert m.evaluate(x, labels) == pytest.approx(list(got.values()), rel=1e-12)


def test_dense_target_metrics_match_numpy():
    x, labels = _data(c=7)
    y = np.eye(7)[labels]
    metrics = ["accuracy", "categorical_accuracy", "top_k_categorical_accuracy",
               M.TopKCategoricalAccuracy(k=3, name="top3"), "mae", "mse", M.MeanAbsoluteError(name="MAE2")]
    m = _trained(7, "softmax", "categorical_crossentropy", metrics, x, y)
    p = m.predict(x)
    got = m.evaluate(x, y, return_dict=True)
    assert got["accuracy"] == got["categorical_accuracy"] == pytest.approx(np.mean(p.argmax(1) == labels))
    assert got["top_k_categorical_accuracy"] == pytest.approx(np.mean(_in_top_k(p, labels, 5)))
    assert got["top3"] == pytest.approx(np.mean(_in_top_k(p, labels, 3)))
    assert 0 < got["top3"] < got["top_k_categorical_accuracy"] <= 1
    assert got["mae"] == got["MAE2"] == pytest.approx(np.mean(np.abs(p - y)), rel=1e-12)
    assert got["mse"] == pytest.approx(np.mean((p - y) ** 2), rel=1e-12)


def test_binary_metrics_match_numpy_and_accuracy_follows_the_loss():
    x, labels = _data(c=3)
    y = np.eye(3)[labels]
    m = _trained(3, "sigmoid", "binary_crossentropy",
                 ["accuracy", "binary_accuracy", M.BinaryAccuracy(threshold=0.7, name="ba7"), "mae"], x, y)
    p = m.predict(x)
    got = m.evaluate(x, y, return_dict=True)
    assert got["accuracy"] == got["binary_accuracy"] == pytest.approx(np.mean(y == (p > 0.5)))
    assert got["ba7"] == pytest.approx(np.mean(y == (p > 0.7)))
    assert got["ba7"] != got["binary_accuracy"]
    # one-output regression: 'accuracy' is binary accuracy (Keras); several outputs: categorical
    r = _trained(1, None, "mse", ["accuracy"], x, (labels == 1).astype(float))
    assert r.evaluate(x, labels == 1, return_dict=True)["accuracy"] == pytest.approx(
        np.mean((labels == 1) == (r.predict(x)[:, 0] > 0.5)))
    r3 = _trained(3, None, "mse", ["accuracy"], x, y)
    assert r3.evaluate(x, y, return_dict=True)["accuracy"] == pytest.approx(np.mean(r3.predict(x).argmax(1) == labels))


def test_top_k_counts_ties_as_in_and_accuracy_takes_the_first_maximum():
    m = cr.Sequential([Dense(4, activation="softmax", input_shape=(3,))], dtype="float64")
    m.build()
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
              metrics=["accuracy", M.SparseTopKCategoricalAccuracy(k=1, name="top1")])
    m.set_weights([np.zeros((3, 4)), np.zeros(4)])  # every output 0.25: four-way ties
    x = np.ones((8, 3))
    labels = np.array([0, 1, 2, 3, 0, 0, 1, 3])
    got = m.evaluate(x, labels, return_dict=True)
    assert got["accuracy"] == 3 / 8 and got["top1"] == 1.0


def test_metrics_are_not_weighted_by_sample_weight_but_the_loss_is():
    x, labels = _data()
    m = _trained(3, "softmax", "sparse_categorical_crossentropy", ["accuracy"], x, labels)
    sw = np.where(np.arange(len(x)) % 2 == 0, 0.0, 3.0)
    a, b = m.evaluate(x, labels, return_dict=True), m.evaluate(x, labels, sample_weight=sw, return_dict=True)
    assert a["accuracy"] == b["accuracy"] and a["loss"] != b["loss"]


def test_history_carries_metrics_under_keras_names_with_val_prefix():
    x, labels = _data()
    m = cr.Sequential([Dense(8, activation="relu", input_shape=(6,)), Dense(3, activation="softmax")], seed=1)
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
              metrics=["acc", M.SparseTopKCategoricalAccuracy(k=2, name="top2")])
    xv, yv = x[:60], labels[:60]
    h = m.fit(x[60:], labels[60:], epochs=3, verbose=0, seed=1, validation_data=(xv, yv))
    assert list(h.history) == ["loss", "acc", "top2", "val_loss", "val_acc", "val_top2", "lr"]
    last = m.evaluate(xv, yv, return_dict=True)
    for k, v in last.items():
        assert h.history["val_" + k][-1] == pytest.approx(v, rel=1e-12)
    assert set(m.last_epoch_stats) >= {"loss", "acc", "top2", "steps"}


@pytest.mark.parametrize("metrics,err,match", [
    (["auc"], ValueError, r"unknown metric 'auc'"),
    (["sparse_categorical_accuracy"], ValueError, r"integer class labels.*use 'categorical_accuracy'"),
    ([M.SparseTopKCategoricalAccuracy()], ValueError, r"use 'top_k_categorical_accuracy'"),
    (["mae", "mae"], ValueError, r"unique"),
    (["loss"], ValueError, r"unknown metric|unique"),
    ([lambda: 0], TypeError, r"fn\(y_true, y_pred\)"),
    ("accuracy", TypeError, r"must be a list"),
    ([3], TypeError, r"metrics must be names"),
])
def test_bad_metrics_raise_naming_them(metrics, err, match):
    m = cr.Sequential([Dense(3, activation="softmax", input_shape=(4,))])
    with pytest.raises(err, match=match):
        m.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=metrics)
    assert not m._compiled


def test_dense_metrics_with_sparse_labels_point_to_the_sparse_ones():
    m = cr.Sequential([Dense(3, activation="softmax", input_shape=(4,))])
    with pytest.raises(ValueError, match=r"use 'sparse_categorical_accuracy'"):
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["categorical_accuracy"])
    with pytest.raises(ValueError, match=r"one target per output"):
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["mae"])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        M.TopKCategoricalAccuracy(k=0)
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        M.BinaryAccuracy(threshold=float("nan"))


# -- custom metrics and losses ----------------------------------------------------------------------
def test_a_custom_metric_equals_the_builtin_it_imitates_in_fit_and_evaluate():
    def my_mae(y_true, y_pred):
        return np.abs(y_true - y_pred).mean(axis=1)

    def batch_mean_acc(y_true, y_pred):  # one number per batch: its mean
        return float(np.mean(y_pred.argmax(axis=1) == y_true.argmax(axis=1)))

    x, labels = _data()
    y = np.eye(3)[labels]
    m = _trained(3, "softmax", "categorical_crossentropy", ["mae", my_mae, batch_mean_acc, "accuracy"], x, y)
    h = m.fit(x, y, epochs=2, batch_size=32, verbose=0, seed=3, validation_data=(x[:50], y[:50]))
    assert list(h.history)[:5] == ["loss", "mae", "my_mae", "batch_mean_acc", "accuracy"]
    for pre in ("", "val_"):
        np.testing.assert_allclose(h.history[pre + "my_mae"], h.history[pre + "mae"], rtol=1e-12)
        np.testing.assert_allclose(h.history[pre + "batch_mean_acc"], h.history[pre + "accuracy"], rtol=1e-12)
    got = m.evaluate(x, y, return_dict=True, batch_size=37)
    assert got["my_mae"] == pytest.approx(got["mae"], rel=1e-12)


def test_a_custom_metric_sees_sparse_labels_as_a_column():
    seen = []

    def check(y_true, y_pred):
        seen.append((y_true.shape, y_pred.shape, y_true.dtype))
        return (y_pred.argmax(axis=1) == y_true[:, 0]).astype(float)

    x, labels = _data()
    m = _trained(3, "softmax", "sparse_categorical_crossentropy", ["accuracy", check], x, labels)
    got = m.evaluate(x, labels, batch_size=100, return_dict=True)
    assert got["check"] == pytest.approx(got["accuracy"])
    assert seen[-1] == ((40, 1), (40, 3), np.float64)


def _mse_with_grad(y_true, y_pred):
    d = y_pred - y_true
    return (d ** 2).mean(axis=1), 2 * d / y_pred.shape[1]


def _cce_with_grad(y_true, y_pred):  # on probabilities, as the unfused built-in
    return -(y_true * np.log(y_pred)).sum(axis=1), -y_true / y_pred


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-9), ("float32", 2e-4)])
@pytest.mark.parametrize("case", ["mse", "cce"])
def test_a_custom_loss_trains_as_the_builtin_it_imitates(case, dtype, rtol):
    x, labels = _data()
    y = np.eye(3)[labels]
    act, builtin, custom = (("tanh", "mse", _mse_with_grad) if case == "mse"
                            else ("softmax", "categorical_crossentropy", _cce_with_grad))
    sw = np.linspace(0.5, 1.5, len(x))

    def model(loss):
        m = cr.Sequential([Dense(10, activation="tanh", input_shape=(6,)), Dense(3, activation=act)],
                          seed=2, dtype=dtype)
        m.compile(optimizer=cr.optimizers.SGD(0.1, momentum=0.9), loss=loss, metrics=["accuracy"])
        return m

    a, b = model(builtin), model(custom)
    ha = a.fit(x, y, epochs=3, batch_size=32, seed=5, verbose=0, sample_weight=sw)
    hb = b.fit(x, y, epochs=3, batch_size=32, seed=5, verbose=0, sample_weight=sw)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wb, wa, rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(hb.history["loss"], ha.history["loss"], rtol=rtol)
    assert b.evaluate(x, y, sample_weight=sw) == pytest.approx(a.evaluate(x, y, sample_weight=sw), rel=rtol)
    # a Loss subclass with call() is a custom loss too
    class MyLoss(L.Loss):
        def call(self, y_true, y_pred):
            return custom(y_true, y_pred)

    c = model(MyLoss())
    c.fit(x, y, epochs=3, batch_size=32, seed=5, verbose=0, sample_weight=sw)
    for wb, wc in zip(b.get_weights(), c.get_weights()):
        np.testing.assert_array_equal(wb, wc)


def test_a_custom_loss_without_a_gradient_is_differentiated_numerically():
    x, labels = _data(n=50)
    y = np.eye(3)[labels]

    def loss_only(y_true, y_pred):
        return _cce_with_grad(y_true, y_pred)[0]

    ms = []
    for loss in (_cce_with_grad, loss_only):
        m = cr.Sequential([Dense(5, activation="tanh", input_shape=(6,)), Dense(3, activation="softmax")],
                          seed=0, dtype="float64")
        m.compile(optimizer="sgd", loss=loss)
        ms.append(m)
    (la, ga), (lb, gb) = ms[0].compute_gradients(x, y), ms[1].compute_gradients(x, y)
    assert la == lb
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-9)


def test_custom_loss_mistakes_are_reported():
    x, labels = _data(n=20)
    y = np.eye(3)[labels]

    def m_with(loss):
        m = cr.Sequential([Dense(3, activation="softmax", input_shape=(6,))], seed=0)
        m.compile(optimizer="sgd", loss=loss)
        return m

    with pytest.raises(ValueError, match=r"per-sample losses, shape \(20,\)"):
        m_with(lambda t, p: (np.zeros(3), np.zeros_like(p))).fit(x, y, batch_size=20, verbose=0)
    with pytest.raises(ValueError, match=r"gradient of shape \(20, 3\)"):
        m_with(lambda t, p: (np.zeros(20), np.zeros(3))).fit(x, y, batch_size=20, verbose=0)

    def boom(t, p):
        raise ZeroDivisionError("inside the loss")

    m = m_with(boom)
    before = m.get_weights()
    with pytest.raises(ZeroDivisionError, match="inside the loss"):
        m.fit(x, y, verbose=0)
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match=r"fn\(y_true, y_pred\)"):
        m_with(lambda t: 0)
    with pytest.raises(ValueError, match="not a built-in loss"):
        m_with(L.Loss())
    # the targets of a custom loss have the output's shape
    with pytest.raises(ValueError, match=r"y must have shape \(20, 3\) for the custom loss"):
        m_with(_cce_with_grad).fit(x, labels, verbose=0)


def test_a_model_with_a_custom_loss_or_metric_cannot_be_saved_but_its_weights_can(tmp_path):
    m = cr.Sequential([Dense(3, activation="softmax", input_shape=(6,))], seed=0)
    m.build()
    m.compile(optimizer="sgd", loss=_cce_with_grad)
    with pytest.raises(ValueError, match=r"custom loss .* cannot be stored .*save_weights"):
        m.save(tmp_path / "m.crm")
    m.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=[lambda t, p: t[:, 0]])
    with pytest.raises(ValueError, match=r"custom metric .* cannot be stored"):
        m.save(tmp_path / "m.crm")
    m.save_weights(tmp_path / "m.weights.npz")


def test_gradient_check_keeps_from_logits_and_custom_losses():
    x, labels = _data(n=12)
    for loss in (L.SparseCategoricalCrossentropy(from_logits=True), "sparse_categorical_crossentropy"):
        m = cr.Sequential([Dense(4, activation="tanh", input_shape=(6,)),
                           Dense(3, activation=None if loss != "sparse_categorical_crossentropy" else "softmax")],
                          seed=0)
        m.build()
        m.compile(optimizer="sgd", loss=loss)
        errs = cr.gradient_check(m, x, labels)
        assert max(e for d in errs.values() for e in d.values()) < 1e-6
    c = cr.Sequential([Dense(4, activation="tanh", input_shape=(6,)), Dense(3, activation="softmax")], seed=0)
    c.build()
    c.compile(optimizer="sgd", loss=_cce_with_grad)
    errs = cr.gradient_check(c, x, np.eye(3)[labels])
    assert max(e for d in errs.values() for e in d.values()) < 1e-6
