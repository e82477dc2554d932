"""The activation and loss tables: the C++ core owns them (csrc/kernels/activations.h,
csrc/losses/loss.h) and exports them; Python reads them. Checks that the Python side holds
no copy that could drift, that codes outside the tables are rejected where they enter the
core, and — for every activation in the table, found by iterating over it — forward and
derivative in float64 against numpy (tests/act_reference.py) and central differences.
Not here: the GEMM epilogue on every CPU target (test_dense_epilogue.py), Conv2D's paths
(test_conv.py), activations inside deeper networks (test_gradients.py)."""

import numpy as np
import pytest

import act_reference as ref
import chainrule as cr
from chainrule import _core


# -- the tables ---------------------------------------------------------------------------
def test_python_activation_names_and_codes_are_the_cores():
    table = _core.ACTIVATIONS
    assert sorted(table.values()) == list(range(len(table)))  # codes are positions 0..n-1
    assert cr.activations.NAMES == tuple(table)
    for name, code in table.items():
        act = cr.activations.get(name)
        assert (act.name, act.code) == (name, code)
        assert act.takes_alpha == (name in _core.ACTIVATION_ALPHA)
    assert set(_core.ACTIVATION_ALPHA) <= set(table)
    for name, alpha in _core.ACTIVATION_ALPHA.items():
        assert cr.activations.Activation(name).alpha == alpha
        assert cr.activations.Activation(name).get_config() == {"name": name, "alpha": alpha}
    assert cr.activations.LeakyReLU().alpha == _core.ACTIVATION_ALPHA["leaky_relu"]
    # aliases are Python sugar over names in the table
    for alias in ("identity", "none", "leakyrelu", None):
        assert cr.activations.get(alias).name in table


def test_python_loss_names_and_codes_are_the_cores():
    table = _core.LOSSES
    assert sorted(table.values()) == list(range(len(table)))
    assert cr.losses.NAMES == tuple(table)
    for name, code in table.items():
        assert cr.losses.get(name) == name and cr.losses.code(name) == code
    classes = [cr.losses.MeanSquaredError, cr.losses.BinaryCrossentropy,
               cr.losses.CategoricalCrossentropy, cr.losses.SparseCategoricalCrossentropy]
    assert sorted(c.name for c in classes) == sorted(table)
    for alias in ("mse", "bce", "cce", "sparse_cce"):
        assert cr.losses.get(alias) in table


@pytest.mark.parametrize("dtype", ["Network32", "Network64"])
def test_codes_outside_the_tables_are_rejected(dtype):
    net_cls = getattr(_core, dtype)
    n_act, n_loss = len(_core.ACTIVATIONS), len(_core.LOSSES)
    dense = {"kind": "dense", "in": 2, "units": 3}
    for code in range(n_act):
        net_cls([dict(dense, activation=code)])
    for bad in (n_act, -1, 0.5, float("nan")):
        with pytest.raises(ValueError, match="unknown activation code"):
            net_cls([dict(dense, activation=bad)])
    net = net_cls([dense])
    for code in range(n_loss):
        net.compile(code, {"kind": "sgd"})
    for bad in (n_loss, -1):
        with pytest.raises(ValueError, match="unknown loss code"):
            net.compile(bad, {"kind": "sgd"})


def test_every_activation_in_the_table_has_an_oracle():
    z = np.linspace(-2, 2, 12).reshape(3, 4)
    for name in _core.ACTIVATIONS:
        assert np.isfinite(ref.forward(name, z)).all()
        assert np.isfinite(ref.vjp(name, z, np.ones_like(z))).all()


# -- forward and derivative of each activation, float64 --------------------------------------
def identity_layer_model(spec, n, dtype="float64"):
    """One Dense(n) layer with kernel I and bias 0 under MSE: its output is act(x) and the
    gradient of its bias is the batch sum of act's vector-Jacobian product."""
    model = cr.Sequential([cr.layers.Dense(n, activation=ref.make(spec))], dtype=dtype, seed=0)
    model.build((n,))
    model.compile(optimizer=cr.optimizers.SGD(0.1), loss="mse")
    model.set_weights([np.eye(n), np.zeros(n)])
    return model


def kink_free(rng, shape, margin=1e-3):
    z = rng.normal(size=shape)
    return np.where(np.abs(z) < margin, np.copysign(margin, z) * 2, z)


@pytest.mark.parametrize("spec", ref.specs(), ids=ref.spec_id)
@pytest.mark.parametrize("n,batch", [(1, 1), (5, 7), (17, 3)])
def test_activation_forward_and_derivative(spec, n, batch):
    name, alpha = spec
    rng = np.random.default_rng(n * 31 + batch)
    z = kink_free(rng, (batch, n)) * 3
    t = rng.normal(size=(batch, n))
    model = identity_layer_model(spec, n)

    y = model.predict(z)
    np.testing.assert_allclose(y, ref.forward(name, z, alpha), rtol=1e-13, atol=1e-15)

    # analytic gradient of the bias = Σ_batch vjp(z, dL/dy), dL/dy = 2 (y - t) / (batch · n)
    loss, grads = model.compute_gradients(z, t)
    g = 2 * (ref.forward(name, z, alpha) - t) / z.size
    want = ref.vjp(name, z, g, alpha).sum(axis=0)
    np.testing.assert_allclose(grads[1], want, rtol=1e-11, atol=1e-15)

    # and central differences of the library's own loss in the bias
    eps = 1e-6
    numeric = np.zeros(n)
    for j in range(n):
        b = np.zeros(n)
        b[j] = eps
        model.set_weights([np.eye(n), b])
        lp = model.evaluate(z, t, batch_size=batch)
        model.set_weights([np.eye(n), -b])
        lm = model.evaluate(z, t, batch_size=batch)
        numeric[j] = (lp - lm) / (2 * eps)
    np.testing.assert_allclose(grads[1], numeric, rtol=1e-5, atol=1e-9)
    if not (name == "softmax" and n == 1):  # a softmax over one value is constant
        assert np.abs(numeric).max() > 1e-6  # the check means something


@pytest.mark.parametrize("spec", ref.specs(), ids=ref.spec_id)
def test_activation_on_special_values(spec):
    """Large, tiny and signed-zero inputs: finite where the math is, and equal to numpy."""
    name, alpha = spec
    z = np.array([[-1e300, -700.0, -30.0, -1e-300, -0.0, 0.0, 1e-300, 30.0, 700.0, 1e300]])
    model = identity_layer_model(spec, z.shape[1])
    y = model.predict(z)
    with np.errstate(over="ignore", invalid="ignore"):
        want = ref.forward(name, z, alpha)
    np.testing.assert_allclose(y, want, rtol=1e-13, atol=0)
