"""The Activation, GlobalAveragePooling2D and Input layers and Dense(input_dim=): outputs
against numpy, gradients against central finite differences in float64 and against PyTorch
autograd with the same weights, Activation against the same activation inside Dense, and
Input's Keras behaviour (first entry only, not in model.layers, sets and checks the input
shape, round-trips through config, save and pickle)."""

import pickle

import numpy as np
import pytest

import act_reference
import chainrule as cr
from chainrule.layers import (Activation, Conv2D, Dense, Flatten, GlobalAveragePooling2D, Input, InputLayer,
                              MaxPooling2D)

ACTIVATIONS = ["linear", "sigmoid", "tanh", "relu", cr.activations.LeakyReLU(0.2), "softmax"]
IDS = ["linear", "sigmoid", "tanh", "relu", "leaky_relu", "softmax"]


def _act_name(a):
    return cr.activations.get(a).name


# -- Activation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("act", ACTIVATIONS, ids=IDS)
def test_activation_layer_equals_the_dense_activation(act):
    """Dense(act) and Dense() + Activation(act), same weights: the same outputs, loss,
    gradients and training, as the last layer (softmax/sigmoid fused into the loss) and in
    the middle."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 5)), rng.integers(0, 4, 9)
    for where in ("middle", "last"):
        def layers(inline):
            act_here = act if where == "middle" else "tanh"
            out_act = act if where == "last" else "softmax"
            mid = [Dense(6, activation=act_here)] if inline else [Dense(6), Activation(act_here)]
            last = [Dense(4, activation=out_act)] if inline else [Dense(4), Activation(out_act)]
            return mid + last
        loss = "sparse_categorical_crossentropy" if where == "middle" or _act_name(act) == "softmax" else "mse"
        yy = y if loss != "mse" else rng.normal(size=(9, 4))
        a = cr.Sequential(layers(True), dtype="float64", seed=1)
        b = cr.Sequential(layers(False), dtype="float64", seed=1)
        for m in (a, b):
            m.build((5,))
            m.compile(optimizer=cr.optimizers.SGD(0.1, momentum=0.9), loss=loss)
        b.set_weights(a.get_weights())
        np.testing.assert_allclose(b.predict(x), a.predict(x), rtol=1e-14, atol=1e-15)
        la, ga = a.compute_gradients(x, yy)
        lb, gb = b.compute_gradients(x, yy)
        assert lb == pytest.approx(la, rel=1e-14)
        for u, v in zip(ga, gb):
            np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-15)
        a.fit(x, yy, epochs=2, batch_size=3, shuffle=False, verbose=0)
        b.fit(x, yy, epochs=2, batch_size=3, shuffle=False, verbose=0)
        for u, v in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("act", ACTIVATIONS, ids=IDS)
def test_activation_layer_output_and_gradients(act):
    """On an image (softmax over the channels): outputs against numpy, gradients against
    finite differences (inputs kept away from the ReLU kink)."""
    rng = np.random.default_rng(2)
    m = cr.Sequential([Input(shape=(4, 3, 2)), Conv2D(3, 2, padding="same"), Activation(act), Flatten(),
                       Dense(2)], dtype="float64", seed=3)
    m.compile(optimizer=cr.optimizers.SGD(0.1), loss="mse")
    name = _act_name(act)
    alpha = cr.activations.get(act).alpha
    for _ in range(100):
        x, y = rng.normal(size=(5, 4, 3, 2)), rng.normal(size=(5, 2))
        t = m.trace(x, y)
        z = t.layers[1].input
        if np.abs(z).min() > 1e-3:
            break
    want = act_reference.forward(name, z.reshape(-1, 3), alpha).reshape(z.shape)
    np.testing.assert_allclose(t.layers[1].a, want, rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(t.layers[1].z, z)  # z of an Activation layer is its input
    errs = cr.gradient_check(m, x, y)
    assert max(e for per in errs.values() for e in per.values()) < 1e-6, errs


def test_activation_layer_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    m = cr.Sequential([Input(shape=(6, 5, 2)), Conv2D(4, 3), Activation(cr.activations.LeakyReLU(0.1)),
                       GlobalAveragePooling2D(), Dense(3), Activation("softmax")], dtype="float64", seed=5)
    m.compile(optimizer=cr.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    x, y = rng.normal(size=(7, 6, 5, 2)), rng.integers(0, 3, 7)
    k, b, k2, b2 = [torch.tensor(w, requires_grad=True) for w in m.get_weights()]
    xt = torch.tensor(x.transpose(0, 3, 1, 2))
    h = F.leaky_relu(F.conv2d(xt, k.permute(3, 2, 0, 1), b), 0.1).mean(dim=(2, 3))
    logits = h @ k2 + b2
    loss = F.cross_entropy(logits, torch.tensor(y))
    loss.backward()
    np.testing.assert_allclose(m.predict(x), torch.softmax(logits, 1).detach().numpy(), rtol=1e-13)
    got_loss, grads = m.compute_gradients(x, y)
    assert got_loss == pytest.approx(float(loss.detach()), rel=1e-13)
    for g, t in zip(grads, (k, b, k2, b2)):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-11, atol=1e-15)


def test_activation_config_and_bad_names():
    assert Activation(cr.activations.LeakyReLU(0.3)).get_config()["activation"] == {"name": "leaky_relu",
                                                                                     "alpha": 0.3}
    back = Activation.from_config(Activation("tanh", name="t").get_config())
    assert back.activation.name == "tanh" and back.name == "t"
    with pytest.raises(ValueError, match=r"unknown name 'swishy'"):
        Activation("swishy")
    with pytest.raises(TypeError, match=r"activation must be a name"):
        Activation(3)


# -- GlobalAveragePooling2D ------------------------------------------------------------------------
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_average_pooling_output_and_gradients(keepdims):
    rng = np.random.default_rng(6)
    m = cr.Sequential([Input(shape=(5, 4, 3)), Conv2D(3, 2, activation="tanh"), GlobalAveragePooling2D(keepdims),
                       Flatten(), Dense(2)], dtype="float64", seed=7)
    m.compile(optimizer=cr.optimizers.SGD(0.1), loss="mse")
    x, y = rng.normal(size=(6, 5, 4, 3)), rng.normal(size=(6, 2))
    t = m.trace(x, y)
    gap = t.layers[1]
    assert gap.a.shape == ((6, 1, 1, 3) if keepdims else (6, 3))
    np.testing.assert_allclose(gap.a.reshape(6, 3), gap.input.mean(axis=(1, 2)), rtol=1e-14)
    # backward: each pixel gets dy / (H*W)
    np.testing.assert_allclose(t.layers[0].delta,
                               np.broadcast_to(gap.delta.reshape(6, 1, 1, 3) / 12, (6, 4, 3, 3))
                               * (1 - t.layers[0].a ** 2), rtol=1e-13)
    errs = cr.gradient_check(m, x, y)
    assert max(e for per in errs.values() for e in per.values()) < 1e-6
    assert m.layers[1].get_config()["keepdims"] is keepdims


def test_global_average_pooling_bad_input():
    m = cr.Sequential([GlobalAveragePooling2D(input_shape=(5, 4))])
    with pytest.raises(ValueError, match=r"GlobalAveragePooling2D layer .* expects samples of shape \(height, width, channels\)"):
        m.build()
    with pytest.raises(TypeError, match=r"keepdims must be True or False"):
        GlobalAveragePooling2D(keepdims="yes")


# -- Input and input_dim -------------------------------------------------------------------------
def test_input_sets_the_shape_and_is_not_a_layer_of_the_model():
    m = cr.Sequential([Input(shape=(28, 28, 1), name="pixels"), Conv2D(2, 3), Flatten(), Dense(3)])
    assert [type(l).__name__ for l in m.layers] == ["Conv2D", "Flatten", "Dense"]
    lines = []
    m.summary(print_fn=lines.append)  # builds from the Input, as Keras has
    assert m.built and m.input_shape == (28, 28, 1)
    assert "InputLayer" not in lines[0]
    cfg = m.get_config()
    assert cfg["layers"][0] == {"class_name": "InputLayer", "config": {"name": "pixels", "batch_shape": [None, 28, 28, 1]}}
    back = cr.Sequential.from_config(cfg)
    assert back.get_config() == cfg
    m2 = cr.Sequential()
    m2.add(InputLayer(batch_shape=(None, 4)))
    m2.add(Dense(2))
    assert m2.get_weights()[0].shape == (4, 2)


def test_input_round_trips_through_save_and_pickle(tmp_path):
    m = cr.Sequential([Input(shape=(4,)), Dense(3, activation="softmax")], seed=0)
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = np.ones((2, 4))
    m.save(tmp_path / "m.npz")
    for back in (cr.load_model(tmp_path / "m.npz"), pickle.loads(pickle.dumps(m))):
        assert back.get_config() == m.get_config() and np.array_equal(back.predict(x), m.predict(x))
    unbuilt = cr.Sequential([Input(shape=(4,)), Dense(3)])
    back = pickle.loads(pickle.dumps(unbuilt))
    assert back.get_config() == unbuilt.get_config()


def test_input_checks():
    with pytest.raises(ValueError, match=r"must be the model's first entry"):
        cr.Sequential([Dense(3), Input(shape=(4,))])
    with pytest.raises(ValueError, match=r"must be the model's first entry"):
        cr.Sequential([Input(shape=(4,)), Input(shape=(4,))])
    with pytest.raises(ValueError, match=r"exactly one of shape and batch_shape"):
        Input()
    with pytest.raises(ValueError, match=r"sizes in \[1,"):
        Input(shape=(0, 3))
    with pytest.raises(ValueError, match=r"batch_shape must be \(batch size or None, \*sample shape\)"):
        Input(batch_shape=(4,))
    m = cr.Sequential([Input(shape=(4,)), Dense(3)])
    m.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"declares its input with Input\(shape=\(4,\)\); received samples of shape \(5,\)"):
        m.fit(np.ones((3, 5)), np.ones((3, 3)), verbose=0)


def test_dense_input_dim():
    a = cr.Sequential([Dense(3, input_dim=7)])
    b = cr.Sequential([Dense(3, input_shape=(7,))])
    assert a.count_params() == b.count_params() == 24
    assert a.layers[0].get_config()["input_shape"] == [7]
    with pytest.raises(ValueError, match=r"pass input_shape or input_dim, not both"):
        Dense(3, input_dim=7, input_shape=(7,))
    with pytest.raises(ValueError, match=r"input_dim must be a positive integer"):
        Dense(3, input_dim=0)


def test_a_keras_style_cnn_with_the_new_layers_trains():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(64, 8, 8, 1))
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype(int)
    m = cr.Sequential([Input(shape=(8, 8, 1)), Conv2D(8, 3, padding="same"), cr.layers.BatchNormalization(),
                       Activation("relu"), MaxPooling2D(2), Conv2D(8, 3, padding="same"), Activation("relu"),
                       GlobalAveragePooling2D(), Dense(2), Activation("softmax")], seed=1)
    m.compile(optimizer=cr.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    # 60 epochs: after 30 the training loss is the same on every kernel target (0.181), but the
    # accuracy with the moving statistics was 0.875 with the generic kernels and 0.95 with
    # the SIMD ones; after 60 it is 1.0 on all three
    h = m.fit(x, y, epochs=60, batch_size=16, verbose=0, seed=0)
    assert h.history["loss"][-1] < h.history["loss"][0] / 4
    assert m.evaluate(x, y)[1] > 0.9
