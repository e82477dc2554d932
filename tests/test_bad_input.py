"""Bad input is rejected with ValueError/TypeError whose message names the argument and the
value received, before any work starts; the model is still usable afterwards. The C++ core
repeats the essential checks, so calling it directly with bad input cannot crash either."""

import re

import numpy as np
import pytest

import chainrule as cr

N, D, C = 6, 5, 3


def model(compile=True, loss="sparse_categorical_crossentropy", dtype="float32"):
    m = cr.Sequential([cr.layers.Dense(4, activation="relu"), cr.layers.Dense(C, activation="softmax")],
                      seed=0, dtype=dtype)
    m.build((D,))
    if compile:
        m.compile(optimizer=cr.optimizers.SGD(0.1), loss=loss, metrics=["accuracy"])
    return m


def good_xy():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, D)).astype(np.float32), np.array([0, 1, 2, 0, 1, 2])


def with_value(arr, index, value):
    arr = np.array(arr, dtype=np.float64)
    arr[index] = value
    return arr


X, Y = good_xy()

# (id, callable taking a compiled model, exception type, regex the message must match)
DATA_CASES = [
    ("x-wrong-features", lambda m: m.fit(np.zeros((N, D + 1)), Y, verbose=0), ValueError,
     r"x must have shape \(None, 5\); received shape \(6, 6\)"),
    ("x-3d", lambda m: m.predict(np.zeros((N, D, 1))), ValueError,
     r"x must have shape \(None, 5\); received shape \(6, 5, 1\)"),
    ("x-1d", lambda m: m.evaluate(np.zeros(D), Y[:1]), ValueError, r"x must have shape .*received shape \(5,\)"),
    ("xy-lengths", lambda m: m.fit(X, Y[:5], verbose=0), ValueError,
     r"x and y must have the same number of samples; received 6 and 5"),
    ("xy-lengths-train_on_batch", lambda m: m.train_on_batch(X[:4], Y), ValueError,
     r"same number of samples; received 4 and 6"),
    ("x-nan", lambda m: m.fit(with_value(X, (2, 3), np.nan), Y, verbose=0), ValueError,
     r"x contains NaN or infinite values \(first at index \(2, 3\).*nan"),
    ("x-inf", lambda m: m.predict(with_value(X, (4, 0), np.inf)), ValueError,
     r"x contains NaN or infinite values \(first at index \(4, 0\).*inf"),
    ("x-neg-inf-evaluate", lambda m: m.evaluate(with_value(X, (0, 1), -np.inf), Y), ValueError,
     r"x contains NaN or infinite.*-inf"),
    ("y-nan-labels", lambda m: m.fit(X, with_value(Y, 3, np.nan), verbose=0), ValueError,
     r"y contains NaN or infinite values \(first at index \(3,\)"),
    ("y-inf-labels", lambda m: m.compute_gradients(X, with_value(Y, 1, np.inf)), ValueError,
     r"y contains NaN or infinite values.*inf"),
    ("label-negative", lambda m: m.fit(X, with_value(Y, 2, -1).astype(int), verbose=0), ValueError,
     r"y: labels must be in \[0, 3\).*received .*-1.* at index 2"),
    ("label-too-large", lambda m: m.fit(X, with_value(Y, 5, 3).astype(int), verbose=0), ValueError,
     r"y: labels must be in \[0, 3\).*received .*3.* at index 5"),
    ("label-too-large-evaluate", lambda m: m.evaluate(X, with_value(Y, 0, 7).astype(int)), ValueError,
     r"labels must be in \[0, 3\).*7"),
    ("label-non-integer", lambda m: m.fit(X, with_value(Y, 4, 1.5), verbose=0), ValueError,
     r"y must hold integer class labels; received .*1\.5.* at index 4"),
    ("label-float-too-large", lambda m: m.train_on_batch(X, with_value(Y, 1, 3.0)), ValueError,
     r"labels must be in \[0, 3\).*3\.0"),
    ("x-empty", lambda m: m.fit(np.zeros((0, D)), np.zeros(0, int), verbose=0), ValueError,
     r"x is empty: received shape \(0, 5\)"),
    ("x-empty-predict", lambda m: m.predict(np.zeros((0, D))), ValueError, r"x is empty"),
    ("y-empty", lambda m: m.evaluate(X, np.zeros(0, int)), ValueError, r"y is empty: received shape \(0,\)"),
    ("x-strings", lambda m: m.fit(np.full((N, D), "a"), Y, verbose=0), TypeError,
     r"x must hold numbers; received an array of dtype <U1"),
    ("x-string-list", lambda m: m.predict([["1", "2", "3", "4", "5"]]), TypeError, r"x must hold numbers"),
    ("y-strings", lambda m: m.fit(X, np.array(["cat"] * N), verbose=0), TypeError, r"y must hold numbers.*<U3"),
    ("x-objects", lambda m: m.predict(np.array([object()] * D, dtype=object).reshape(1, D)), TypeError,
     r"x must hold numbers.*object"),
    ("x-complex", lambda m: m.predict(X.astype(np.complex64)), TypeError, r"x must hold real numbers.*complex64"),
    ("x-none", lambda m: m.fit(None, Y, verbose=0), TypeError, r"x must be an array; received None"),
    ("onehot-y-for-sparse", lambda m: m.fit(X, np.eye(C)[Y], verbose=0), ValueError,
     r"y must hold integer class labels of shape \(6,\).*received shape \(6, 3\)"),
    ("batch_size-0", lambda m: m.fit(X, Y, batch_size=0, verbose=0), ValueError,
     r"batch_size must be a positive integer; received 0"),
    ("batch_size-negative", lambda m: m.fit(X, Y, batch_size=-3, verbose=0), ValueError,
     r"batch_size must be a positive integer; received -3"),
    ("batch_size-float", lambda m: m.fit(X, Y, batch_size=4.0, verbose=0), ValueError,
     r"batch_size must be a positive integer; received 4\.0"),
    ("batch_size-bool", lambda m: m.fit(X, Y, batch_size=True, verbose=0), ValueError,
     r"batch_size must be a positive integer; received True"),
    ("batch_size-0-evaluate", lambda m: m.evaluate(X, Y, batch_size=0), ValueError,
     r"batch_size must be a positive integer; received 0"),
    ("batch_size-0-predict", lambda m: m.predict(X, batch_size=0), ValueError,
     r"batch_size must be a positive integer; received 0"),
    ("epochs-0", lambda m: m.fit(X, Y, epochs=0, verbose=0), ValueError,
     r"epochs must be a positive integer; received 0"),
    ("epochs-float", lambda m: m.fit(X, Y, epochs=2.5, verbose=0), ValueError,
     r"epochs must be a positive integer; received 2\.5"),
    ("validation_split-1.5", lambda m: m.fit(X, Y, validation_split=1.5, verbose=0), ValueError,
     r"validation_split must be in \[0, 1\); received 1\.5"),
    ("validation_split-negative", lambda m: m.fit(X, Y, validation_split=-0.1, verbose=0), ValueError,
     r"validation_split must be in \[0, 1\); received -0\.1"),
    ("validation_split-string", lambda m: m.fit(X, Y, validation_split="half", verbose=0), TypeError,
     r"validation_split must be a number.*'half'"),
    ("validation_data-shape", lambda m: m.fit(X, Y, validation_data=(np.zeros((3, 4)), Y[:3]), verbose=0),
     ValueError, r"validation_data x must have shape \(None, 5\); received shape \(3, 4\)"),
    ("verbose-3", lambda m: m.fit(X, Y, verbose=3), ValueError, r"verbose must be 0, 1 or 2; received 3"),
    ("set_weights-count", lambda m: m.set_weights(m.get_weights()[:3]), ValueError,
     r"set_weights expects a list of 4 arrays; received 3"),
    ("set_weights-shape", lambda m: m.set_weights([np.zeros((D, 5)), np.zeros(4), np.zeros((4, C)), np.zeros(C)]),
     ValueError, r"weights\[0\] \(kernel of layer 0\) must have shape \(5, 4\); received shape \(5, 5\)"),
    ("set_weights-bias-shape", lambda m: m.set_weights(m.get_weights()[:3] + [np.zeros((1, C))]), ValueError,
     r"weights\[3\].*must have shape \(3,\); received shape \(1, 3\)"),
    ("set_weights-nan", lambda m: m.set_weights(m.get_weights()[:1] + [np.full(4, np.nan)] + m.get_weights()[2:]),
     ValueError, r"weights\[1\] contains NaN"),
    ("sample_weight-shape", lambda m: m.fit(X, Y, sample_weight=np.ones(N + 1), verbose=0), ValueError,
     r"sample_weight must have shape \(6,\); received shape \(7,\)"),
    ("sample_weight-negative", lambda m: m.evaluate(X, Y, sample_weight=with_value(np.ones(N), 2, -1.0)),
     ValueError, r"sample_weight must be >= 0; received .*-1\.0.* at index 2"),
]


@pytest.mark.parametrize("call,exc,pattern", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_and_arguments(call, exc, pattern):
    m = model()
    before = m.get_weights()
    with pytest.raises(exc, match=pattern):
        call(m)
    # Nothing was changed by the rejected call, and the model still works.
    for a, b in zip(before, m.get_weights()):
        assert np.array_equal(a, b)
    loss, acc = m.evaluate(X, Y)
    assert np.isfinite(loss)


def test_categorical_targets_shape():
    m = model(loss="categorical_crossentropy")
    with pytest.raises(ValueError, match=r"y must have shape \(6, 3\) for categorical_crossentropy; "
                                         r"received shape \(6,\).*sparse_categorical_crossentropy"):
        m.fit(X, Y, verbose=0)
    with pytest.raises(ValueError, match=r"y must have shape \(6, 3\).*received shape \(6, 4\)"):
        m.fit(X, np.zeros((N, 4)), verbose=0)
    with pytest.raises(ValueError, match=r"y contains NaN.*\(1, 2\)"):
        m.fit(X, with_value(np.eye(C)[Y], (1, 2), np.nan), verbose=0)


CONFIG_CASES = [
    ("activation", lambda: cr.layers.Dense(3, activation="relux"), ValueError,
     r"activation: unknown name 'relux'; expected one of \[.*'leaky_relu'"),
    ("activation-type", lambda: cr.layers.Dense(3, activation=3.5), TypeError, r"activation must be .*3\.5"),
    ("leaky-alpha", lambda: cr.activations.LeakyReLU(-0.2), ValueError, r"alpha must be .*>= 0; received -0\.2"),
    ("kernel_initializer", lambda: cr.layers.Dense(3, kernel_initializer="orthogonalx"), ValueError,
     r"initializer: unknown name 'orthogonalx'; expected one of \[.*'he_normal'"),
    ("bias_initializer", lambda: cr.layers.Dense(3, bias_initializer="onez"), ValueError,
     r"initializer: unknown name 'onez'"),
    ("units-0", lambda: cr.layers.Dense(0), ValueError, r"Dense: units must be a positive integer; received 0"),
    ("units-float", lambda: cr.layers.Dense(2.5), TypeError, r"Dense: units must be a positive integer; received 2\.5"),
    ("loss", lambda: model(False).compile(optimizer="sgd", loss="hinge"), ValueError,
     r"loss: unknown name 'hinge'; expected one of \[.*'mean_squared_error'"),
    ("loss-missing", lambda: model(False).compile(optimizer="sgd"), ValueError, r"loss is required"),
    ("optimizer", lambda: model(False).compile(optimizer="adamx", loss="mse"), ValueError,
     r"optimizer: unknown name 'adamx'; expected one of \[.*'sgd'"),
    ("optimizer-type", lambda: model(False).compile(optimizer=0.1, loss="mse"), TypeError,
     r"optimizer must be .*0\.1"),
    ("metric", lambda: model(False).compile(optimizer="sgd", loss="mse", metrics=["auc"]), ValueError,
     r"unknown metric 'auc'"),
    ("learning_rate-negative", lambda: cr.optimizers.SGD(learning_rate=-0.1), ValueError,
     r"learning_rate must be .*received -0\.1"),
    ("learning_rate-nan", lambda: cr.optimizers.SGD(learning_rate=float("nan")), ValueError,
     r"learning_rate must be .*received nan"),
    ("learning_rate-string", lambda: cr.optimizers.SGD(learning_rate="fast"), TypeError,
     r"learning_rate must be .*'fast'"),
    ("momentum-1", lambda: cr.optimizers.SGD(0.1, momentum=1.0), ValueError, r"momentum must be .*received 1\.0"),
    ("momentum-negative", lambda: cr.optimizers.SGD(0.1, momentum=-0.5), ValueError,
     r"momentum must be .*received -0\.5"),
    ("dtype", lambda: cr.Sequential([cr.layers.Dense(2)], dtype="float16"), ValueError,
     r"dtype must be 'float32' or 'float64'; received 'float16'"),
    ("seed", lambda: cr.Sequential([cr.layers.Dense(2)], seed=-1), ValueError,
     r"seed must be a non-negative integer or None; received -1"),
    ("not-a-layer", lambda: cr.Sequential(["dense"]), TypeError, r"expects a chainrule layer; received 'dense'"),
    ("fit-before-compile", lambda: model(False).fit(X, Y, verbose=0), ValueError,
     r"fit: the model must be compiled first"),
    ("evaluate-before-compile", lambda: model(False).evaluate(X, Y), ValueError,
     r"evaluate: the model must be compiled first"),
    ("train_on_batch-before-compile", lambda: model(False).train_on_batch(X, Y), ValueError,
     r"train_on_batch: the model must be compiled first"),
    ("compute_gradients-before-compile", lambda: model(False).compute_gradients(X, Y), ValueError,
     r"compute_gradients: the model must be compiled first"),
    ("x-1d-unbuilt", lambda: cr.Sequential([cr.layers.Dense(2)]).predict(np.zeros(5)), ValueError,
     r"x must have shape \(n, features...\); received shape \(5,\)"),
    ("set_weights-unbuilt", lambda: cr.Sequential([cr.layers.Dense(2)]).set_weights([]), ValueError,
     r"not built yet"),
    ("summary-unbuilt", lambda: cr.Sequential([cr.layers.Dense(2)]).summary(), ValueError, r"not built yet"),
    ("empty-model", lambda: cr.Sequential([]).build((3,)), ValueError, r"no layers"),
    ("load-missing-file", lambda: cr.load_model("/nonexistent/dir/model.npz"), FileNotFoundError,
     r"model\.npz"),
]


@pytest.mark.parametrize("call,exc,pattern", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_configuration(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_load_model_rejects_foreign_and_pickled_files(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(ValueError, match=re.escape(repr(str(plain))) + r" is not a chainrule model file"):
        cr.load_model(plain)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, __chainrule__=np.array([{"format": "chainrule.model"}], dtype=object))
    with pytest.raises(ValueError, match=r"allow_pickle"):
        cr.load_model(pickled)


# -- the C++ core validates on its own (defence in depth: no crash, a clear ValueError) -------
@pytest.mark.parametrize("dtype,np_dtype", [("float32", np.float32), ("float64", np.float64)])
def test_core_rejects_bad_input_directly(dtype, np_dtype):
    m = model(dtype=dtype)
    core = m._core
    x = X.astype(np_dtype)
    y = Y.astype(np_dtype).reshape(-1, 1)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 5\); received shape \(6, 4\)"):
        core.evaluate(np.zeros((N, 4), np_dtype), y)
    with pytest.raises(ValueError, match=r"y must have shape \(6, 1\).*received shape \(5, 1\)"):
        core.train_epoch(x, y[:5], batch_size=2)
    for bad in (-1.0, 3.0, 0.5, np.nan):
        yb = y.copy()
        yb[4, 0] = bad
        with pytest.raises(ValueError, match=r"labels must be integers in \[0, 3\); received .* at index 4"):
            core.train_epoch(x, yb, batch_size=2)
        with pytest.raises(ValueError, match=r"labels must be integers"):
            core.compute_gradients(x, yb)
    with pytest.raises(ValueError, match=r"batch_size must be >= 1; received 0"):
        core.train_epoch(x, y, batch_size=0)
    with pytest.raises(ValueError, match=r"batch_size must be >= 1; received -2"):
        core.evaluate(x, y, batch_size=-2)
    with pytest.raises(ValueError, match=r"batch_size must be >= 1; received 0"):
        core.predict(x, batch_size=0)
    with pytest.raises(ValueError, match=r"no samples"):
        core.train_batch(np.zeros((0, D), np_dtype), np.zeros((0, 1), np_dtype))
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(6,\)"):
        core.evaluate(x, y, np.ones(4, np_dtype))
    # the wrong float type is refused rather than silently copied
    other = np.float64 if np_dtype == np.float32 else np.float32
    with pytest.raises(TypeError):
        core.predict(x.astype(other))
    assert np.isfinite(m.evaluate(X, Y)[0])
