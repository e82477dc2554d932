"""Gradient checks against independent oracles: central finite differences in float64 for
every activation, every loss (fused and non-fused) and the Dense layer (weights, biases,
inputs); numpy reference losses; and the fused heads at very large logits.
Not here: PyTorch parity (test_torch_parity.py) and the training API (test_model_api.py)."""

import numpy as np
import pytest

import act_reference
import chainrule as cr

EPS = 1e-6          # central-difference step (float64)
RTOL = 1e-5         # relative tolerance analytic vs numeric
ATOL = 1e-9         # absolute floor for entries that are (nearly) zero
KINK_MARGIN = 1e-3  # |pre-activation| kept at least this far from a ReLU kink
PROB_EPS = 1e-7     # Keras's clipping of probabilities for non-fused cross-entropies

# (batch, inputs, hidden, outputs): batch 1, odd and uneven sizes.
SHAPES = [(1, 3, 4, 2), (7, 5, 3, 3), (13, 2, 6, 4)]


# -- numpy oracles (activations: act_reference.py) ---------------------------------------
def np_forward(weights, acts, x):
    """Outputs and the pre-activations of every layer; acts: [(name, alpha)]."""
    h = np.asarray(x, dtype=np.float64)
    pre = []
    for (name, alpha), (k, b) in zip(acts, zip(weights[::2], weights[1::2])):
        z = h @ k + b
        pre.append(z)
        h = act_reference.forward(name, z, alpha)
    return h, pre


def np_loss(loss, out, y):
    """Batch-mean loss of the model outputs ``out`` (probabilities after the last activation),
    with Keras's clipping of probabilities for the cross-entropies."""
    n, c = out.shape
    if loss == "mean_squared_error":
        return np.mean((out - y.reshape(n, c)) ** 2)
    p = np.clip(out, PROB_EPS, 1 - PROB_EPS)
    if loss == "binary_crossentropy":
        t = y.reshape(n, c)
        return np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
    if loss == "categorical_crossentropy":
        return np.mean(-(y * np.log(p)).sum(axis=1))
    if loss == "sparse_categorical_crossentropy":
        return np.mean(-np.log(p[np.arange(n), y]))
    raise AssertionError(loss)


# -- helpers ------------------------------------------------------------------------------
def act_spec(act):
    """(name, alpha) of an activation given as a name or a LeakyReLU object."""
    a = cr.activations.get(act)
    return a.name, a.alpha


def make_model(n_in, units, acts, loss, seed=0, dtype="float64"):
    model = cr.Sequential([cr.layers.Dense(u, activation=a) for u, a in zip(units, acts)],
                          seed=seed, dtype=dtype)
    model.build((n_in,))
    model.compile(optimizer=cr.optimizers.SGD(learning_rate=0.1), loss=loss)
    return model


def make_targets(loss, n, c, rng):
    if loss == "sparse_categorical_crossentropy":
        return rng.integers(0, c, size=n)
    if loss == "categorical_crossentropy":  # soft targets, rows sum to 1
        t = rng.uniform(0.05, 1.0, size=(n, c))
        return t / t.sum(axis=1, keepdims=True)
    if loss == "binary_crossentropy":
        return rng.integers(0, 2, size=(n, c)).astype(np.float64)
    return rng.normal(size=(n, c))


def kink_free_inputs(model, acts, shape, rng, tries=200):
    """Inputs whose ReLU-family pre-activations are all at least KINK_MARGIN from 0."""
    n, n_in = shape
    relu_layers = [i for i, (name, _) in enumerate(acts) if name in act_reference.KINKED]
    for _ in range(tries):
        x = rng.normal(size=(n, n_in))
        _, pre = np_forward(model.get_weights(), acts, x)
        # away from the kinks, and not a dead layer (which would make the check vacuous)
        if all(np.abs(pre[i]).min() > KINK_MARGIN and (pre[i] > 0).any() for i in relu_layers):
            return x
    raise AssertionError("could not draw inputs away from the ReLU kinks")


def batch_loss(model, x, y, sample_weight=None):
    return model.evaluate(x, y, batch_size=len(x), sample_weight=sample_weight)


def numeric_weight_grads(model, x, y, sample_weight=None):
    weights = model.get_weights()
    grads = []
    for w in weights:
        g = np.zeros_like(w)
        for idx in np.ndindex(w.shape):
            orig = w[idx]
            w[idx] = orig + EPS
            model.set_weights(weights)
            lp = batch_loss(model, x, y, sample_weight)
            w[idx] = orig - EPS
            model.set_weights(weights)
            lm = batch_loss(model, x, y, sample_weight)
            w[idx] = orig
            g[idx] = (lp - lm) / (2 * EPS)
        grads.append(g)
    model.set_weights(weights)
    return grads


def assert_grads_close(analytic, numeric, names, rtol=RTOL, atol=ATOL):
    assert len(analytic) == len(numeric)
    for a, n, name in zip(analytic, numeric, names):
        assert a.shape == n.shape, name
        np.testing.assert_allclose(a, n, rtol=rtol, atol=atol, err_msg=f"gradient of {name}")


def param_names(model):
    return [f"{l.name}.{p}" for l in model.layers for p in ("kernel", "bias")]


def check_weight_gradients(model, acts, x, y, sample_weight=None):
    before = model.get_weights()
    loss, grads = model.compute_gradients(x, y, sample_weight=sample_weight)
    for b, a in zip(before, model.get_weights()):
        assert np.array_equal(a, b), "compute_gradients changed the weights"
    assert [g.shape for g in grads] == [w.shape for w in before]
    numeric = numeric_weight_grads(model, x, y, sample_weight)
    # The check is only meaningful if the loss actually depends on the weights here.
    assert max(np.abs(g).max() for g in numeric) > 1e-4
    assert_grads_close(grads, numeric, param_names(model))
    assert loss == pytest.approx(batch_loss(model, x, y, sample_weight), rel=1e-12, abs=1e-15)
    return loss


# -- finite differences: weights and biases ----------------------------------------------
# Every activation in the core's table, those with an alpha also at a non-default one.
HIDDEN_ACTS = [act_reference.make(spec) for spec in act_reference.specs()]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("hidden", HIDDEN_ACTS, ids=lambda a: "%s%s" % act_spec(a))
def test_hidden_activation_gradients(hidden, shape):
    """Every activation as a hidden layer (two of them, so the input-gradient path of a Dense
    layer is exercised too), under a non-fused tanh + MSE head."""
    n, n_in, n_hid, n_out = shape
    acts = [hidden, hidden, "tanh"]
    model = make_model(n_in, [n_hid, n_hid + 1, n_out], acts, "mse", seed=n)
    rng = np.random.default_rng(100 + n)
    spec = [act_spec(a) for a in acts]
    x = kink_free_inputs(model, spec, (n, n_in), rng)
    y = make_targets("mean_squared_error", n, n_out, rng)
    check_weight_gradients(model, spec, x, y)


HEADS = [(name, "mse") for name in act_reference.NAMES] + [  # every activation in the table
    ("softmax", "categorical_crossentropy"),          # fused
    ("softmax", "sparse_categorical_crossentropy"),   # fused
    ("sigmoid", "binary_crossentropy"),               # fused
    ("sigmoid", "categorical_crossentropy"),          # non-fused, probabilities
    ("sigmoid", "sparse_categorical_crossentropy"),   # non-fused
    ("softmax", "binary_crossentropy"),               # non-fused
    ("tanh", "mean_squared_error"),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("head,loss", HEADS, ids=["%s-%s" % h for h in HEADS])
def test_output_activation_and_loss_gradients(head, loss, shape):
    n, n_in, n_hid, n_out = shape
    acts = ["tanh", head]
    model = make_model(n_in, [n_hid, n_out], acts, loss, seed=7 + n)
    rng = np.random.default_rng(200 + n)
    spec = [act_spec(a) for a in acts]
    x = kink_free_inputs(model, spec, (n, n_in), rng)
    y = make_targets(cr.losses.get(loss), n, n_out, rng)
    loss_value = check_weight_gradients(model, spec, x, y)
    # The loss value itself against the numpy oracle (independent of the library's loss).
    out, _ = np_forward(model.get_weights(), spec, x)
    assert loss_value == pytest.approx(np_loss(cr.losses.get(loss), out, y), rel=1e-10)


@pytest.mark.parametrize("head,loss", [("softmax", "sparse_categorical_crossentropy"),
                                       ("sigmoid", "binary_crossentropy"), ("linear", "mse")])
def test_sample_weighted_gradients(head, loss):
    n, n_in, n_out = 6, 4, 3
    model = make_model(n_in, [5, n_out], ["sigmoid", head], loss, seed=3)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, n_in))
    y = make_targets(cr.losses.get(loss), n, n_out, rng)
    sw = rng.uniform(0.0, 3.0, size=n)
    sw[2] = 0.0
    check_weight_gradients(model, [("sigmoid", 0.0), (head, 0.0)], x, y, sample_weight=sw)
    # sample weights must matter: the unweighted loss differs.
    assert batch_loss(model, x, y, sw) != pytest.approx(batch_loss(model, x, y), rel=1e-6)


def test_fused_cce_gradient_with_unnormalised_targets():
    """Targets whose rows do not sum to 1 (an all-zero row, a row summing to 2): the fused
    softmax-CE computes sum_j t_j (lse - z_j), whose gradient is p * sum(t) - t."""
    model = make_model(3, [4, 3], ["tanh", "softmax"], "categorical_crossentropy", seed=5)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 3))
    y = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.2, 0.3, 0.1], [0.0, 1.0, 0.0]])
    check_weight_gradients(model, [("tanh", 0.0), ("softmax", 0.0)], x, y)


# -- finite differences: inputs ----------------------------------------------------------
INPUT_CASES = [("tanh", "softmax", "sparse_categorical_crossentropy"),
               ("relu", "sigmoid", "binary_crossentropy"),
               ("leaky_relu", "linear", "mse"),
               ("softmax", "sigmoid", "categorical_crossentropy"),
               ("sigmoid", "tanh", "mse")]


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("hidden,head,loss", INPUT_CASES, ids=["-".join(c) for c in INPUT_CASES])
def test_input_gradients(hidden, head, loss, n):
    """d loss / d x via an identity first layer: with z1 = x I + b1, d loss_i / d x_i equals
    d loss_i / d b1 on the 1-sample batch {i}. Compared with central differences of the
    batch-mean loss in x, which are (1/n) d loss_i / d x_i."""
    n_in, n_hid, n_out = 4, 5, 3
    acts = ["linear", hidden, head]
    model = make_model(n_in, [n_in, n_hid, n_out], acts, loss, seed=11)
    w = model.get_weights()
    w[0] = np.eye(n_in)
    w[1] = np.zeros(n_in)
    model.set_weights(w)
    spec = [act_spec(a) for a in acts]
    rng = np.random.default_rng(11 + n)
    x = kink_free_inputs(model, spec, (n, n_in), rng)
    y = make_targets(cr.losses.get(loss), n, n_out, rng)
    numeric = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp = x.copy()
        xp[idx] += EPS
        xm = x.copy()
        xm[idx] -= EPS
        numeric[idx] = (batch_loss(model, xp, y) - batch_loss(model, xm, y)) / (2 * EPS)
    analytic = np.stack([model.compute_gradients(x[i:i + 1], y[i:i + 1])[1][1] for i in range(n)]) / n
    assert np.abs(numeric).max() > 1e-4
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL)


# -- loss values at saturated / clipped probabilities ------------------------------------
@pytest.mark.parametrize("head,loss", [
    ("sigmoid", "categorical_crossentropy"),
    ("softmax", "binary_crossentropy")])
def test_non_fused_cross_entropy_clips_both_ends(head, loss):
    """Non-fused cross-entropies clip probabilities to [1e-7, 1 - 1e-7] (Keras): outputs
    that are exactly 1.0 and ~1e-27 in float64 cost -log(1 - 1e-7) and -log(1e-7)."""
    model = make_model(1, [2], [head], loss)
    model.set_weights([np.array([[60.0, -60.0]]), np.zeros(2)])
    x = np.array([[1.0], [1.0]])
    out = model.predict(x)
    assert (out[:, 0] == 1.0).all() and (out[:, 1] < 1e-20).all()
    y = np.array([[1.0, 0.0], [0.0, 1.0]]) if loss == "categorical_crossentropy" else np.array([[1.0, 1.0], [0.0, 0.0]])
    assert model.evaluate(x, y) == pytest.approx(np_loss(loss, out, y), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("head,loss,k", [
    ("sigmoid", "categorical_crossentropy", [[60.0, -0.4, 0.9], [0.2, 0.5, -40.0]]),
    ("softmax", "binary_crossentropy", [[0.3, -0.4, 30.0], [0.2, 0.5, -0.3]])])
def test_clipped_probabilities_get_the_gradient_of_the_clipped_loss(head, loss, k):
    """Where a non-fused cross-entropy clips a probability, the loss is flat in it (Keras's
    clip has zero gradient there): the reported gradient must be that of the loss reported.
    Non-fused: a sigmoid under categorical and a softmax under binary cross-entropy, with
    logits large enough to saturate some probabilities past the clip (a linear last layer is
    refused by compile for these losses)."""
    model = make_model(2, [3], [head], loss, seed=1)
    k = np.array(k)
    b = np.array([0.4, 0.5, -0.6])
    model.set_weights([k, b])
    x = np.array([[0.5, 0.2], [-0.4, 0.6], [1.5, -1.0]])
    out = act_reference.forward(head, x @ k + b, 0.0)
    clipped = (out < PROB_EPS) | (out > 1 - PROB_EPS)
    assert clipped.any() and ((out > 0.05) & (out < 0.95)).any()
    y = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    if loss == "categorical_crossentropy":
        y = y / y.sum(axis=1, keepdims=True)
    check_weight_gradients(model, [(head, 0.0)], x, y)


# -- fused heads at very large logits ------------------------------------------------------
def _logsumexp(z):
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy", "categorical_crossentropy"])
def test_softmax_cross_entropy_large_logits(loss, dtype):
    """Logits of order 1e4 (integers, so exact in float32 too): the fused softmax-CE loss and
    gradients are finite and match a float64 log-sum-exp oracle."""
    n_in, c = 3, 4
    model = make_model(n_in, [c], ["softmax"], loss, dtype=dtype)
    k = np.array([[10000.0, -10000.0, 9990.0, 3.0],
                  [-20000.0, 15000.0, 14999.0, 0.0],
                  [5000.0, 5000.0, -30000.0, 5001.0]])
    b = np.array([1.0, -2.0, 0.0, 2.0])
    model.set_weights([k, b])
    x = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    labels = np.array([2, 1, 0, 3, 1])
    y = labels if loss == "sparse_categorical_crossentropy" else np.eye(c)[labels]
    z = x @ k + b
    assert np.abs(z).max() >= 1e4
    lse = _logsumexp(z)
    nll = lse - z[np.arange(len(x)), labels]
    p = np.exp(z - lse[:, None])
    dz = (p - np.eye(c)[labels]) / len(x)

    loss_value, grads = model.compute_gradients(x, y)
    rel = 1e-12 if dtype == "float64" else 1e-6
    grad_tol = dict(rtol=1e-9, atol=1e-15) if dtype == "float64" else dict(rtol=1e-5, atol=1e-7)
    assert np.isfinite(loss_value) and loss_value == pytest.approx(nll.mean(), rel=rel)
    assert model.evaluate(x, y) == pytest.approx(nll.mean(), rel=rel)
    assert all(np.isfinite(g).all() for g in grads)
    np.testing.assert_allclose(grads[0], x.T @ dz, **grad_tol)
    np.testing.assert_allclose(grads[1], dz.sum(axis=0), **grad_tol)
    probs = model.predict(x)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs, p, **grad_tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sigmoid_binary_cross_entropy_large_logits(dtype):
    model = make_model(2, [3], ["sigmoid"], "binary_crossentropy", dtype=dtype)
    k = np.array([[10000.0, -10000.0, 3.0], [-12000.0, 20000.0, -1.0]])
    b = np.array([0.0, 1.0, 0.5])
    model.set_weights([k, b])
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]])
    t = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    z = x @ k + b
    assert np.abs(z).max() >= 1e4
    per = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
    sig = np.where(z >= 0, 1 / (1 + np.exp(-np.minimum(np.abs(z), 700))),
                   np.exp(-np.minimum(np.abs(z), 700)) / (1 + np.exp(-np.minimum(np.abs(z), 700))))
    dz = (sig - t) / z.size

    loss_value, grads = model.compute_gradients(x, t)
    rel = 1e-12 if dtype == "float64" else 1e-6
    grad_tol = dict(rtol=1e-9, atol=1e-15) if dtype == "float64" else dict(rtol=1e-5, atol=1e-7)
    assert np.isfinite(loss_value) and loss_value == pytest.approx(per.mean(), rel=rel)
    assert all(np.isfinite(g).all() for g in grads)
    np.testing.assert_allclose(grads[0], x.T @ dz, **grad_tol)
    np.testing.assert_allclose(grads[1], dz.sum(axis=0), **grad_tol)
    np.testing.assert_allclose(model.predict(x), sig, **grad_tol)
