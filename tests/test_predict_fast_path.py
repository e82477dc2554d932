"""predict's fast path: an array that needs no conversion (an ndarray of the model's dtype,
C-contiguous, of the model's input shape, all finite) goes to the core as it is. Its outputs
equal those of the general path (the same values given as another dtype, layout, container
or shape) and a numpy forward pass; every input the general path refuses is still refused,
through predict, predict_on_batch and model(x), with the argument and the value named."""

import re

import numpy as np
import pytest

import chainrule as cr
from chainrule import _checks
from chainrule.layers import Conv2D, Dense, Flatten, MaxPooling2D

N, D, C = 7, 5, 3
ENTRY_POINTS = {
    "predict": lambda m, x: m.predict(x),
    "predict_on_batch": lambda m, x: m.predict_on_batch(x),
    "call": lambda m, x: m(x),
}


def dense_model(dtype="float32"):
    m = cr.Sequential([Dense(4, activation="relu"), Dense(C, activation="softmax")], seed=1, dtype=dtype)
    m.build((D,))
    return m


def image_model(last_conv=False):
    layers = [Conv2D(3, 3, activation="relu", input_shape=(6, 6, 1)), MaxPooling2D(2)]
    if not last_conv:
        layers += [Flatten(), Dense(C, activation="softmax")]
    m = cr.Sequential(layers, seed=2)
    m.build()
    return m


def numpy_dense(m, x):
    """The Dense model's outputs, computed in float64 from its weights."""
    w1, b1, w2, b2 = (w.astype(np.float64) for w in m.get_weights())
    h = np.maximum(np.asarray(x, dtype=np.float64) @ w1 + b1, 0.0)
    z = h @ w2 + b2
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def x32(shape=(N, D), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# -- which arrays take the fast path --------------------------------------------------------------

def test_ready_x_takes_the_array_itself_or_a_view():
    x = x32()
    assert _checks.ready_x(x, (D,), np.float32) is x
    img = x32((N, 6, 6, 1))
    flat = _checks.ready_x(img, (6, 6, 1), np.float32)
    assert flat.shape == (N, 36) and np.shares_memory(flat, img)
    assert _checks.prepare_x("x", x, (D,), np.float32) is x


@pytest.mark.parametrize("case, make", [
    ("float64", lambda: x32().astype(np.float64)),
    ("big-endian", lambda: x32().astype(">f4")),
    ("fortran", lambda: np.asfortranarray(x32())),
    ("strided", lambda: x32((N, 2 * D))[:, ::2]),
    ("subclass", lambda: x32().view(np.matrix)),
    ("list", lambda: x32().tolist()),
    ("wrong-features", lambda: x32((N, D + 1))),
    ("3-d", lambda: x32((N, D, 1))),
    ("1-d", lambda: x32((D,))),
    ("0-d", lambda: np.float32(1.0)),
    ("empty", lambda: x32((0, D))),
    ("nan", lambda: np.where(np.arange(N * D).reshape(N, D) == 9, np.nan, x32()).astype(np.float32)),
    ("inf", lambda: np.where(np.arange(N * D).reshape(N, D) == 9, -np.inf, x32()).astype(np.float32)),
])
def test_ready_x_declines_what_needs_the_general_path(case, make):
    assert _checks.ready_x(make(), (D,), np.float32) is None


def test_ready_x_finds_a_nan_in_the_last_chunk():
    x = np.zeros(((1 << 20) // 1000 + 3, 1000), dtype=np.float32)
    assert _checks.ready_x(x, (1000,), np.float32) is x
    x[-1, -1] = np.nan
    assert _checks.ready_x(x, (1000,), np.float32) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 784, (1 << 16) - 1, (1 << 16) + 5])
def test_core_finiteness_scan_agrees_with_numpy(dtype, n):
    # The scan the fast path (and check_finite) runs in the core: every position, NaN and
    # both infinities, below and above the size at which it releases the GIL; the largest
    # finite value and denormals are finite.
    from chainrule import _core
    x = np.linspace(-1.0, 1.0, n).astype(dtype)
    x[::7] = np.finfo(dtype).max
    x[1::7] = np.finfo(dtype).tiny / 4  # a denormal
    assert _core.all_finite(x) and np.isfinite(x).all()
    for pos in {0, n // 2, n - 1}:
        for bad in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y[pos] = bad
            assert not _core.all_finite(y), (n, pos, bad)
            assert _checks.ready_x(y.reshape(1, -1), (n,), dtype) is None


def test_finiteness_scan_refuses_other_layouts_and_types():
    # The core takes only C-contiguous float32/float64; _checks routes the rest to numpy.
    from chainrule import _core
    with pytest.raises(TypeError):
        _core.all_finite(np.ones(8, np.float32)[::2])
    with pytest.raises(TypeError):
        _core.all_finite(np.ones(8, np.float16))
    assert not _checks._all_finite(np.array([1, np.nan], np.float16))
    assert not _checks._all_finite(np.array([1, np.inf], ">f4"))
    assert _checks._all_finite(np.array([1, 2], ">f8"))


# -- same outputs as the general path and as numpy ------------------------------------------------

@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_dense_outputs_equal_the_general_path_and_numpy(entry):
    m, x = dense_model(), x32()
    call = ENTRY_POINTS[entry]
    fast = call(m, x)
    assert fast.shape == (N, C) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, numpy_dense(m, x), rtol=1e-5, atol=1e-7)
    wide = x32((N, 2 * D))
    wide[:, ::2] = x
    for other in (x.astype(np.float64), np.asfortranarray(x), wide[:, ::2], x.tolist(), x.view(np.matrix),
                  tuple(map(tuple, x.tolist()))):
        np.testing.assert_array_equal(call(m, other), fast)


def test_float64_model_takes_float64_arrays_as_they_are():
    m = dense_model("float64")
    x = x32().astype(np.float64)
    assert _checks.ready_x(x, (D,), m._np_dtype()) is x
    out = m.predict(x)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, numpy_dense(m, x), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(m.predict(x.astype(np.float32)), m.predict(x.astype(np.float32).astype(np.float64)))


@pytest.mark.parametrize("last_conv", [False, True])
def test_images_equal_the_general_path(last_conv):
    m = image_model(last_conv)
    x = x32((N, 6, 6, 1), seed=3)
    fast = m.predict(x)
    assert fast.shape == (N,) + tuple(m.output_shape)
    np.testing.assert_array_equal(m.predict(x[..., 0]), fast)  # (n, H, W) for (H, W, 1)
    np.testing.assert_array_equal(m.predict(x.astype(np.float64)), fast)
    np.testing.assert_array_equal(m.predict_on_batch(x), fast)
    np.testing.assert_array_equal(m(x), fast)


def test_memmap_and_batch_sizes(tmp_path):
    m, x = dense_model(), x32((300, D))
    ref = m.predict(x)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=x.shape)
    mm[:] = x
    np.testing.assert_array_equal(m.predict(mm), ref)
    for bs in (1, 7, 256, 300, 10_000):
        np.testing.assert_allclose(m.predict(x, batch_size=bs), ref, rtol=1e-6, atol=1e-7)


def test_the_input_is_left_alone_and_not_aliased():
    m, x = dense_model(), x32()
    before = x.copy()
    for call in ENTRY_POINTS.values():
        out = call(m, x)
        assert not np.shares_memory(out, x)
    np.testing.assert_array_equal(x, before)


def test_unbuilt_model_builds_on_a_fast_path_array():
    m = cr.Sequential([Dense(4, activation="relu"), Dense(C, activation="softmax")], seed=1)
    x = x32()
    out = m.predict(x)
    assert m.built and m.input_shape == (D,)
    np.testing.assert_allclose(out, numpy_dense(m, x), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("verbose", [0, False, np.int64(0), 2, 1, "auto", True])
def test_verbose_values_still_accepted(verbose, capsys):
    m, x = dense_model(), x32()
    np.testing.assert_array_equal(m.predict(x, verbose=verbose), m.predict(x))
    printed = capsys.readouterr().out
    assert bool(printed) == (verbose not in (0, False))


# -- bad input is refused as before ---------------------------------------------------------------

def with_value(index, value, dtype=np.float32, shape=(N, D)):
    x = x32(shape).astype(dtype)
    x[index] = value
    return x


BAD_X = [
    ("nan", with_value((2, 3), np.nan), ValueError, r"x contains NaN or infinite values \(first at index \(2, 3\)"),
    ("inf", with_value((0, 0), np.inf), ValueError, r"x contains NaN or infinite values \(first at index \(0, 0\)"),
    ("-inf-last", with_value((N - 1, D - 1), -np.inf), ValueError,
     rf"x contains NaN or infinite values \(first at index \({N - 1}, {D - 1}\)"),
    ("nan-float64", with_value((1, 1), np.nan, np.float64), ValueError, r"x contains NaN or infinite values"),
    ("beyond-float32", with_value((1, 2), 1e39, np.float64), ValueError, r"x holds values outside the float32 range"),
    ("wrong-features", x32((N, D + 1)), ValueError, r"x must have shape \(None, 5\); received shape \(7, 6\)"),
    ("1-d", x32((D,)), ValueError, r"x must have shape \(None, 5\); received shape \(5,\)"),
    ("3-d", x32((N, D, 2)), ValueError, r"x must have shape \(None, 5\); received shape \(7, 5, 2\)"),
    ("empty", x32((0, D)), ValueError, r"x is empty: received shape \(0, 5\)"),
    ("scalar", np.float32(1.0), ValueError, r"x is empty: received shape \(\)"),
    ("none", None, TypeError, r"x must be an array; received None"),
    ("strings", [["a"] * D] * N, TypeError, r"x must hold numbers"),
    ("objects", np.array([object()] * D, dtype=object).reshape(1, D), TypeError, r"x must hold numbers"),
    ("complex", x32().astype(np.complex64), TypeError, r"x must hold real numbers.*complex64"),
    ("ragged", [[1.0] * D, [1.0] * (D - 1)], ValueError, r"x must be a rectangular array of numbers"),
]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case, x, exc, pattern", BAD_X, ids=[c[0] for c in BAD_X])
def test_bad_x_is_refused_with_its_name(entry, case, x, exc, pattern):
    m = dense_model()
    with pytest.raises(exc, match=pattern):
        ENTRY_POINTS[entry](m, x)
    good = x32()
    np.testing.assert_allclose(m.predict(good), numpy_dense(m, good), rtol=1e-5, atol=1e-7)


def test_nan_in_a_large_array_is_refused_at_its_index():
    m = cr.Sequential([Dense(1, input_shape=(1000,))], seed=0)
    x = np.zeros(((1 << 20) // 1000 + 3, 1000), dtype=np.float32)
    x[-1, -1] = np.nan
    with pytest.raises(ValueError, match=re.escape(f"first at index ({x.shape[0] - 1}, 999)")):
        m.predict(x)


def test_nan_in_an_image_is_refused_at_its_index():
    m = image_model()
    x = x32((N, 6, 6, 1))
    x[3, 4, 5, 0] = np.nan
    for call in ENTRY_POINTS.values():
        with pytest.raises(ValueError, match=r"x contains NaN or infinite values \(first at index \(3, 4, 5, 0\)"):
            call(m, x)


@pytest.mark.parametrize("value", [0, -1, True, 2.5, "8", 2**62 + 1])
def test_bad_batch_size_is_refused(value):
    with pytest.raises(ValueError, match=rf"batch_size must be a positive integer; received {re.escape(repr(value))}"):
        dense_model().predict(x32(), batch_size=value)


@pytest.mark.parametrize("value", [3, -1, 1.0, "loud", None])
def test_bad_verbose_is_refused(value):
    with pytest.raises(ValueError, match=rf"verbose must be 0, 1 or 2; received {re.escape(repr(value))}"):
        dense_model().predict(x32(), verbose=value)


def test_steps_and_training_are_refused_for_arrays():
    m = dense_model()
    with pytest.raises(ValueError, match="predict: steps applies to a generator, iterable or Dataset"):
        m.predict(x32(), steps=1)
    with pytest.raises(ValueError, match=r"model\(x, training=True\) is not supported"):
        m(x32(), training=True)
