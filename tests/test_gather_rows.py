"""The shuffled batch's rows (csrc/trainer/gather_rows.h): rows of 256 bytes or more are copied
several side by side, a cache line of each in turn, with the bytes past the last whole line
copied at the end; shorter rows one by one. Whatever the row width, batch size or dtype, a
batch must hold exactly the rows of the order."""
import numpy as np
import pytest

import chainrule as cr
from chainrule import _core


# Widths in floats: 13 (52 B, one by one), 64 (256 B: exactly 4 lines), 70 (280 B: 4 lines
# and 24 bytes), 197 (788 B: 12 lines and 20 bytes), 784 (MNIST).
@pytest.mark.parametrize("in_width", [13, 64, 70, 197, 784])
@pytest.mark.parametrize("y_width", [1, 70])
@pytest.mark.parametrize("n,batch", [(3, 3), (41, 17), (100, 32)])
def test_gathered_batches_hold_the_rows_of_the_order(in_width, y_width, n, batch):
    rng = np.random.default_rng(in_width * 7 + y_width + n)
    X = rng.standard_normal((n, in_width)).astype(np.float32)
    Y = rng.standard_normal((n, y_width)).astype(np.float32)
    order = rng.permutation(n).astype(np.int64)
    x, y, _, _ = _core._gather_ahead(X, Y, None, order, batch, 0.0)
    np.testing.assert_array_equal(x, X[order])
    np.testing.assert_array_equal(y, Y[order])


def _one_full_batch_step(shuffle, dtype, n, in_width, out_width):
    rng = np.random.default_rng(n + in_width)
    x = rng.standard_normal((n, in_width)).astype(dtype)
    y = rng.standard_normal((n, out_width)).astype(dtype)
    m = cr.Sequential([cr.layers.Dense(out_width)], dtype=dtype, seed=5)
    m.compile(optimizer=cr.optimizers.SGD(0.1), loss="mse")
    m.build((in_width,))
    m.fit(x, y, batch_size=n, epochs=1, shuffle=shuffle, verbose=0, seed=2,
          gradient_warnings=False)
    return m.get_weights()


# One step on the whole data set: shuffled, the rows go through the gather; in order, the
# step reads the user's array in place. The gradient is a sum over the same rows either way,
# so the weights agree to rounding, and a wrong, missing or partly copied row would not.
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n,in_width,out_width", [(13, 70, 70), (9, 197, 3), (24, 33, 66),
                                                  (50, 784, 10), (5, 8, 1)])
def test_a_shuffled_full_batch_step_equals_the_step_in_order(dtype, n, in_width, out_width):
    shuffled = _one_full_batch_step(True, dtype, n, in_width, out_width)
    in_order = _one_full_batch_step(False, dtype, n, in_width, out_width)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for a, b in zip(shuffled, in_order):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
