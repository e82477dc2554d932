"""Backprop by hand on Matt Mazur's 2-2-2 sigmoid network ("A Step by Step Backpropagation
Example"): every forward value, δ, gradient and update written out in numpy and compared with
``model.trace`` and ``train_on_batch``. Not a test of the renderer (test_trace_render.py)."""

import numpy as np
import pytest

import chainrule as cr

X = np.array([[0.05, 0.10]])
T = np.array([[0.01, 0.99]])
# Keras layout (in, units): h1 = w1·i1 + w2·i2, h2 = w3·i1 + w4·i2, o1 = w5·h1 + w6·h2, o2 = w7·h1 + w8·h2
K1 = np.array([[0.15, 0.25], [0.20, 0.30]])
K2 = np.array([[0.40, 0.50], [0.45, 0.55]])
B1 = np.array([0.35, 0.35])
B2 = np.array([0.60, 0.60])
LR = 0.5


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def by_hand():
    """Forward, loss, backward and SGD step, formula by formula."""
    z1 = X @ K1 + B1
    a1 = sigmoid(z1)
    z2 = a1 @ K2 + B2
    a2 = sigmoid(z2)
    n = a2.size                                   # chainrule's mse: mean over batch and outputs
    loss = np.sum((T - a2) ** 2) / n
    dL_da2 = 2.0 * (a2 - T) / n                   # = (o − t) here, as Mazur's ∂(Σ½(t−o)²)/∂o
    delta2 = dL_da2 * a2 * (1 - a2)               # σ'(z) = a(1 − a)
    gK2 = a1.T @ delta2
    gB2 = delta2.sum(axis=0)
    delta1 = (delta2 @ K2.T) * a1 * (1 - a1)
    gK1 = X.T @ delta1
    gB1 = delta1.sum(axis=0)
    return dict(z1=z1, a1=a1, z2=z2, a2=a2, loss=loss, dL_da2=dL_da2, delta2=delta2, delta1=delta1,
                gK1=gK1, gB1=gB1, gK2=gK2, gB2=gB2)


def test_hand_numbers_match_mazur():
    h = by_hand()
    np.testing.assert_allclose(h["a1"][0], [0.593269992, 0.596884378], rtol=1e-8)
    np.testing.assert_allclose(h["a2"][0], [0.75136507, 0.772928465], rtol=1e-8)
    mazur_total_error = 0.298371109               # Σ ½ (t − o)²
    assert np.isclose(np.sum(0.5 * (T - h["a2"]) ** 2), mazur_total_error, rtol=1e-8)
    # mean of (t − o)² over 2 outputs = Σ(t − o)²/2 = Σ½(t − o)²: the same number here
    assert np.isclose(h["loss"], mazur_total_error * 2 / 2, rtol=1e-8)
    # with 2 outputs and 1 example the constant factor 2/n is 1, so Mazur's gradients hold
    assert np.isclose(h["gK2"][0, 0], 0.082167041, rtol=1e-7)          # ∂E/∂w5
    assert np.isclose(K2[0, 0] - LR * h["gK2"][0, 0], 0.35891648, rtol=1e-7)  # w5⁺
    assert np.isclose(h["gK1"][0, 0], 0.000438568, rtol=1e-5)          # ∂E/∂w1
    assert np.isclose(K1[0, 0] - LR * h["gK1"][0, 0], 0.149780716, rtol=1e-8)  # w1⁺


def build_model():
    model = cr.Sequential([cr.layers.Dense(2, activation="sigmoid", input_shape=(2,)),
                           cr.layers.Dense(2, activation="sigmoid")], dtype="float64")
    model.build((2,))
    model.compile(optimizer=cr.optimizers.SGD(learning_rate=LR), loss="mse")
    model.set_weights([K1, B1, K2, B2])
    return model


def test_trace_matches_hand_computation():
    h = by_hand()
    model = build_model()
    trace = model.trace(X, T)
    tol = dict(rtol=1e-10, atol=1e-14)
    assert np.isclose(trace.loss, h["loss"], **tol)
    assert trace.learning_rate == LR
    l1, l2 = trace.layers
    assert (l1.kind, l2.kind) == ("Dense", "Dense")
    np.testing.assert_allclose(l1.input, X, **tol)
    np.testing.assert_allclose(l1.z, h["z1"], **tol)
    np.testing.assert_allclose(l1.a, h["a1"], **tol)
    np.testing.assert_allclose(l2.input, h["a1"], **tol)
    np.testing.assert_allclose(l2.z, h["z2"], **tol)
    np.testing.assert_allclose(l2.a, h["a2"], **tol)
    np.testing.assert_allclose(trace.output, h["a2"], **tol)
    np.testing.assert_allclose(trace.output_grad, h["dL_da2"], **tol)  # mse: not fused, ∂L/∂output
    np.testing.assert_allclose(l2.delta, h["delta2"], **tol)
    np.testing.assert_allclose(l1.delta, h["delta1"], **tol)
    np.testing.assert_allclose(l2.grads["kernel"], h["gK2"], **tol)
    np.testing.assert_allclose(l2.grads["bias"], h["gB2"], **tol)
    np.testing.assert_allclose(l1.grads["kernel"], h["gK1"], **tol)
    np.testing.assert_allclose(l1.grads["bias"], h["gB1"], **tol)
    np.testing.assert_allclose(l2.updates["kernel"], -LR * h["gK2"], **tol)
    np.testing.assert_allclose(l1.updates["bias"], -LR * h["gB1"], **tol)
    # tracing does not train
    for w, w0 in zip(model.get_weights(), [K1, B1, K2, B2]):
        np.testing.assert_array_equal(w, w0)
    text = str(trace)
    assert "0.59327" in text and "0.751365" in text   # 6 significant digits: 0.593269992, 0.75136507


def test_train_on_batch_matches_hand_update():
    h = by_hand()
    model = build_model()
    loss = model.train_on_batch(X, T)
    loss = loss[0] if isinstance(loss, (list, tuple)) else loss
    assert np.isclose(loss, h["loss"], rtol=1e-10)
    k1, b1, k2, b2 = model.get_weights()
    np.testing.assert_allclose(k1, K1 - LR * h["gK1"], rtol=1e-10)
    np.testing.assert_allclose(b1, B1 - LR * h["gB1"], rtol=1e-10)
    np.testing.assert_allclose(k2, K2 - LR * h["gK2"], rtol=1e-10)
    np.testing.assert_allclose(b2, B2 - LR * h["gB2"], rtol=1e-10)
    assert np.isclose(k2[0, 0], 0.35891648, rtol=1e-7)    # Mazur's w5⁺
    assert np.isclose(k1[0, 0], 0.149780716, rtol=1e-8)   # Mazur's w1⁺
