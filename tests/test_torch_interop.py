"""chainrule.torch_interop: the torch module to_torch builds computes what the model computes
(random MLPs and CNNs: 'same'/'valid' padding, strides, max/average pooling, every
activation, Flatten/Reshape/Dropout; float64 to 1e-10, float32 to 1e-5), weights go back
exactly, a hand-written channels-first torch CNN loads into the matching model, and
mismatched architectures raise errors naming the layer. Skipped without torch."""

import io
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import chainrule as cr
from chainrule.layers import AveragePooling2D, Conv2D, Dense, Dropout, Flatten, MaxPooling2D, Reshape

torch = pytest.importorskip("torch")
from chainrule.torch_interop import load_state_dict, to_torch  # noqa: E402

TOL = {"float64": 1e-10, "float32": 1e-5}
ACTIVATIONS = [None, "relu", "sigmoid", "tanh", "softmax", "leaky_relu", cr.activations.LeakyReLU(0.37)]


def _torch_in(model, x):
    """predict's input -> the torch module's: image samples (h, w, c) go NCHW."""
    x = np.asarray(x, dtype=model.dtype)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy() if x.ndim == 4 else x)


def _torch_out(model, y):
    """the torch module's output -> predict's layout: image outputs come back NHWC."""
    y = y.detach().numpy()
    return y.transpose(0, 2, 3, 1) if y.ndim == 4 else y


def _assert_outputs_match(model, x, net=None):
    net = to_torch(model) if net is None else net
    want = model.predict(x)
    with torch.no_grad():
        got = _torch_out(model, net(_torch_in(model, x)))
    assert got.shape == want.shape and got.dtype == want.dtype
    err = np.abs(got.astype(np.float64) - want).max() / max(1.0, np.abs(want).max())
    assert err <= TOL[model.dtype], err
    return err


def _fresh_twin(model, seed=12345):
    """A model with the same architecture and other weights."""
    cfg = model.get_config()
    twin = cr.Sequential.from_config({**cfg, "seed": seed})
    assert not all(np.array_equal(a, b) for a, b in zip(twin.get_weights(), model.get_weights()))
    return twin


def _assert_round_trip(model):
    net = to_torch(model)
    twin = _fresh_twin(model)
    load_state_dict(twin, net.state_dict())
    for a, b in zip(twin.get_weights(), model.get_weights()):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    twin2 = _fresh_twin(model, seed=777)
    load_state_dict(twin2, net)  # the module itself
    for a, b in zip(twin2.get_weights(), model.get_weights()):
        assert np.array_equal(a, b)


def _random_mlp(rng, dtype):
    n_in = int(rng.integers(1, 9))
    layers = [Dense(int(rng.integers(1, 10)), activation=ACTIVATIONS[rng.integers(len(ACTIVATIONS))],
                    input_shape=(n_in,))]
    for _ in range(int(rng.integers(0, 4))):
        if rng.random() < 0.3:
            layers.append(Dropout(float(rng.uniform(0, 0.8))))
        layers.append(Dense(int(rng.integers(1, 10)), activation=ACTIVATIONS[rng.integers(len(ACTIVATIONS))]))
    model = cr.Sequential(layers, seed=int(rng.integers(1 << 30)), dtype=dtype)
    model.build()
    return model, rng.normal(size=(7, n_in)) * 2


def _pick_window(rng, size, padding, max_k=3):
    """A window no larger than ``size`` for 'valid' padding."""
    limit = max_k if padding == "same" else min(max_k, size)
    return int(rng.integers(1, limit + 1))


def _random_cnn(rng, dtype):
    h, w = int(rng.integers(4, 13)), int(rng.integers(4, 13))
    c = int(rng.integers(1, 4))
    form = rng.integers(3)
    if form == 0:  # (h, w, c) images, NCHW on the torch side
        layers, shape, x_shape = [], (h, w, c), (h, w, c)
    elif form == 1:  # (h, w): one channel, no channel axis on either side
        layers, shape, x_shape, c = [], (h, w, 1), (h, w), 1
    else:  # flat vectors reshaped into images by the model
        layers, shape, x_shape = [Reshape((h, w, c))], (h, w, c), (h * w * c,)
    for i in range(int(rng.integers(1, 4))):
        padding = ["same", "valid"][rng.integers(2)]
        k = (_pick_window(rng, shape[0], padding), _pick_window(rng, shape[1], padding))
        strides = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        conv = Conv2D(int(rng.integers(1, 5)), k, strides=strides, padding=padding,
                      activation=ACTIVATIONS[rng.integers(len(ACTIVATIONS))])
        layers.append(conv)
        shape = conv.compute_output_shape(shape if i or form != 1 else shape[:2])
        if rng.random() < 0.6:
            padding = ["same", "valid"][rng.integers(2)]
            pool_cls = [MaxPooling2D, AveragePooling2D][rng.integers(2)]
            k = (_pick_window(rng, shape[0], padding), _pick_window(rng, shape[1], padding))
            strides = None if rng.random() < 0.5 else (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
            pool = pool_cls(k, strides=strides, padding=padding)
            layers.append(pool)
            shape = pool.compute_output_shape(shape)
        if rng.random() < 0.3:
            layers.append(Dropout(0.3))
    ending = rng.integers(4)
    if ending == 0:  # Flatten -> Dense: the kernel rows are permuted
        layers += [Flatten(), Dropout(0.1), Dense(int(rng.integers(1, 6)), activation="tanh"),
                   Dense(3, activation="softmax")]
    elif ending == 1:  # Reshape((-1,)) -> Dense
        layers += [Reshape((-1,)), Dense(4, activation=ACTIVATIONS[rng.integers(len(ACTIVATIONS))])]
    elif ending == 2:  # an image output (NCHW from torch)
        pass
    else:  # a reshape to a non-image shape, e.g. (h * w, c)
        layers.append(Reshape((-1, shape[2])))
    model = cr.Sequential(layers, seed=int(rng.integers(1 << 30)), dtype=dtype)
    model.build(x_shape)
    return model, rng.normal(size=(5,) + x_shape)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("seed", range(12))
def test_random_mlps(seed, dtype):
    model, x = _random_mlp(np.random.default_rng(seed), dtype)
    _assert_outputs_match(model, x)
    _assert_round_trip(model)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("seed", range(40))
def test_random_cnns(seed, dtype):
    model, x = _random_cnn(np.random.default_rng(1000 + seed), dtype)
    _assert_outputs_match(model, x)
    _assert_round_trip(model)


def test_the_random_cnns_cover_every_case():
    """The generator above reaches every layout move and padding kind (else the tests would
    pass without testing them)."""
    kinds = set()
    for seed in range(40):
        model, _ = _random_cnn(np.random.default_rng(1000 + seed), "float64")
        net = to_torch(model)
        kinds |= {type(m).__name__ for m in net}
        kinds |= {f"{type(l).__name__}-{l.padding}" for l in model.layers if hasattr(l, "padding")}
        flat = [l for l in model.layers if isinstance(l, Flatten)]
        if flat and flat[0].input_shape[-1] > 1:
            kinds.add("permuted-dense")
    need = {"Conv2d", "MaxPool2d", "AvgPool2d", "AvgPool2dSame", "ZeroPad2d", "ConstantPad2d", "Permute",
            "Unflatten", "Flatten", "Dropout", "Linear", "ReLU", "Sigmoid", "Tanh", "Softmax", "LeakyReLU",
            "Conv2D-same", "Conv2D-valid", "MaxPooling2D-same", "MaxPooling2D-valid", "AveragePooling2D-same",
            "AveragePooling2D-valid", "permuted-dense"}
    assert need <= kinds, need - kinds


def test_module_is_eval_mode_in_the_model_dtype_and_trains():
    model = cr.Sequential([Dense(4, activation="relu", input_shape=(3,)), Dropout(0.5), Dense(2)], seed=1,
                          dtype="float64")
    model.build()
    net = to_torch(model)
    assert not net.training
    assert all(p.dtype == torch.float64 for p in net.parameters())
    assert all(p.dtype == torch.float32 for p in to_torch(cr.Sequential.from_config(
        {**model.get_config(), "dtype": "float32"})).parameters())
    x = torch.ones((64, 3), dtype=torch.float64)
    net.train()
    assert not torch.equal(net(x), net.eval()(x))  # dropout is on in train mode
    # the copies are the module's own: changing them leaves the model alone
    before = model.get_weights()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_fine_tuned_torch_weights_come_back():
    model, x = _random_cnn(np.random.default_rng(7), "float64")
    net = to_torch(model).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        net(_torch_in(model, x)).square().mean().backward()
        opt.step()
    net.eval()
    load_state_dict(model, net.state_dict())
    _assert_outputs_match(model, x, net)
    assert _assert_outputs_match(model, x) <= TOL["float64"]


def test_hand_written_channels_first_cnn_loads():
    """A torch CNN written the usual way (NCHW, flatten in (c, h, w) order, a bias-free
    convolution) gives its weights to the equivalent chainrule model."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1, bias=False), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 4, (2, 3), stride=(1, 2)), torch.nn.Tanh(), torch.nn.AvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(4 * 2 * 1, 5), torch.nn.Sigmoid(),
        torch.nn.Linear(5, 3), torch.nn.Softmax(dim=1)).double().eval()
    model = cr.Sequential([Conv2D(6, 3, padding="same", activation="relu", input_shape=(12, 10, 3)), MaxPooling2D(2),
                           Conv2D(4, (2, 3), strides=(1, 2), activation="tanh"), AveragePooling2D(2), Flatten(),
                           Dense(5, activation="sigmoid"), Dense(3, activation="softmax")], dtype="float64", seed=0)
    model.build()
    load_state_dict(model, net)
    assert np.array_equal(model.get_weights()[1], np.zeros(6))  # bias=False: zeros
    x = np.random.default_rng(0).normal(size=(4, 12, 10, 3))
    _assert_outputs_match(model, x, net)


def test_mnist_style_reshape_model():
    """Flat inputs reshaped to one-channel images: plain reshapes in torch, no Permute."""
    model = cr.Sequential([Reshape((28, 28, 1), input_shape=(784,)), Conv2D(4, 3, activation="relu"),
                           MaxPooling2D(2), Flatten(), Dense(10, activation="softmax")], seed=3)
    model.build()
    net = to_torch(model)
    assert [type(m).__name__ for m in net] == ["Unflatten", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear",
                                               "Softmax"]
    _assert_outputs_match(model, np.random.default_rng(1).random((6, 784)).astype(np.float32))


def test_whole_module_saves_and_loads_with_torch():
    model = cr.Sequential([Reshape((5, 5, 2), input_shape=(50,)), Conv2D(3, 2, padding="same"),
                           AveragePooling2D(2, padding="same"), Flatten(), Dense(2)], seed=2)
    model.build()
    net = to_torch(model)
    assert {"Permute", "AvgPool2dSame"} <= {type(m).__name__ for m in net}
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    x = np.random.default_rng(0).normal(size=(3, 50)).astype(np.float32)
    _assert_outputs_match(model, x, back)


def test_importing_does_not_import_torch():
    code = ("import sys, chainrule, chainrule.torch_interop as t; assert 'torch' not in sys.modules, 'torch'; "
            "t.Permute; assert 'torch' in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 0, r.stderr


# -- mismatches ------------------------------------------------------------------------------------
def _cnn():
    model = cr.Sequential([Conv2D(4, 3, activation="relu", input_shape=(6, 6, 2), name="c1"), MaxPooling2D(2),
                           Flatten(), Dense(5, activation="relu", name="d1"), Dense(3, name="d2")], seed=0)
    model.build()
    return model


def _rejects(model, state_dict, exc, pattern):
    before = model.get_weights()
    with pytest.raises(exc, match=pattern):
        load_state_dict(model, state_dict)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # unchanged


def test_mismatched_layer_counts():
    model = _cnn()
    sd = to_torch(model).state_dict()
    items = list(sd.items())
    _rejects(model, dict(items[:4]), ValueError,
             r"the state_dict has no weight for layer 'd2' \(Dense\): it holds weights for 2 layers; the model has 3")
    extra = dict(items + [("9.weight", torch.zeros(2, 3)), ("9.bias", torch.zeros(2))])
    _rejects(model, extra, ValueError, r"more weights than the model's 3 layers with weights: entry '9.weight' "
                                       r"\(shape \(2, 3\)\) and 1 more are left over")
    _rejects(model, {}, ValueError, r"no weight for layer 'c1' \(Conv2D\)")


def test_mismatched_shapes_name_the_layer():
    model = _cnn()
    sd = to_torch(model).state_dict()
    keys = list(sd)
    bad = dict(sd)
    bad[keys[0]] = torch.zeros(4, 2, 5, 5)
    _rejects(model, bad, ValueError, r"layer 'c1' \(Conv2D\) needs a Conv2d weight of shape \(4, 2, 3, 3\); "
                                     r"state_dict entry '0.weight' has shape \(4, 2, 5, 5\)")
    bad = dict(sd)
    bad[keys[2]] = torch.zeros(5, 17)
    _rejects(model, bad, ValueError, r"layer 'd1' \(Dense\) needs a Linear weight of shape \(5, 16\)")
    bad = dict(sd)
    bad[keys[5]] = torch.zeros(4)
    _rejects(model, bad, ValueError, r"layer 'd2' \(Dense\) needs a bias of shape \(3,\); state_dict entry "
                                     r"'\d+.bias' has shape \(4,\)")
    # a torch MLP for a CNN model: the first weight has the wrong rank
    mlp = torch.nn.Sequential(torch.nn.Linear(72, 5), torch.nn.Linear(5, 3))
    _rejects(model, mlp, ValueError, r"layer 'c1' \(Conv2D\) needs a Conv2d weight of shape \(4, 2, 3, 3\)")


def test_entries_that_are_not_weights():
    model = _cnn()
    sd = to_torch(model).state_dict()
    _rejects(model, {**sd, "1.scale": torch.ones(4)}, ValueError,
             r"entry '1.scale' \(shape \(4,\)\) is not a layer's weight, bias or BatchNorm statistic")
    # BatchNorm entries where the model has a Dense layer
    bn = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4, affine=False)).state_dict()
    _rejects(model, bn, ValueError, r"layer 'd1' \(Dense\) expects a Linear weight; state_dict entry "
                                    r"'1.running_mean' \(shape \(4,\)\) is a BatchNorm statistic")
    items = list(sd.items())
    _rejects(model, dict([items[1], items[0]] + items[2:]), ValueError,
             r"layer 'c1' \(Conv2D\) expects a Conv2d weight; state_dict entry '0.bias' \(shape \(4,\)\) is a bias")
    _rejects(model, {**sd, list(sd)[0]: np.zeros((4, 2, 3, 3))}, TypeError, r"entry '0.weight' must be a torch tensor")
    _rejects(model, {**sd, list(sd)[0]: torch.zeros((4, 2, 3, 3), dtype=torch.int64)}, TypeError,
             r"entry '0.weight' has dtype torch.int64")
    _rejects(model, {**sd, list(sd)[1]: torch.full((4,), math.nan)}, ValueError,
             r"the bias for layer 'c1' \(Conv2D\) holds NaN or infinite values")
    _rejects(model, [1, 2], TypeError, r"state_dict must be a torch module or its state_dict\(\)")
    _rejects(model, {1: torch.zeros(1)}, TypeError, r"state_dict keys must be strings")


def test_models_that_cannot_be_converted():
    with pytest.raises(ValueError, match=r"to_torch: the model is not built yet"):
        to_torch(cr.Sequential([Dense(2)]))
    with pytest.raises(ValueError, match=r"load_state_dict: the model is not built yet"):
        load_state_dict(cr.Sequential([Dense(2)]), {})
    with pytest.raises(TypeError, match=r"to_torch: model must be a chainrule Sequential; received Sequential"):
        to_torch(torch.nn.Sequential())

    @cr.layers.register
    class Doubler(cr.layers.Layer):
        def compute_output_shape(self, input_shape):
            return input_shape

        def core_spec(self):
            return {"kind": "dropout", "size": math.prod(self.input_shape), "rate": 0.0}

    try:
        model = cr.Sequential([Dense(2, input_shape=(3,)), Doubler(name="twice")])
        model.build()
        with pytest.raises(TypeError, match=r"layer 'twice' \(Doubler\) has no PyTorch counterpart"):
            to_torch(model)
    finally:
        cr.layers._REGISTRY.pop("Doubler", None)


# -- BatchNormalization, GlobalAveragePooling2D, Activation -------------------------------------

def _with_statistics(model, seed=0):
    """Random gamma, beta and moving statistics (variance > 0) in every BatchNormalization."""
    rng = np.random.default_rng(seed)
    w = model.get_weights()
    i = 0
    for layer in model.layers:
        for name, shape, *_ in layer.param_specs():
            if name in ("gamma", "moving_variance"):
                w[i] = rng.uniform(0.3, 2.0, shape)
            elif name in ("beta", "moving_mean"):
                w[i] = rng.normal(0.0, 0.5, shape)
            i += 1
    model.set_weights(w)
    return model


def _bn_models(dtype):
    from chainrule.layers import Activation, BatchNormalization, GlobalAveragePooling2D, Input
    image = cr.Sequential([Input(shape=(7, 6, 3)), Conv2D(4, 3, padding="same"), BatchNormalization(momentum=0.9),
                           Activation("relu"), MaxPooling2D(2), BatchNormalization(center=False),
                           Activation("softmax"), GlobalAveragePooling2D(), Dense(5),
                           BatchNormalization(scale=False), Activation(cr.activations.LeakyReLU(0.2)), Dense(3),
                           Activation("softmax")], dtype=dtype, seed=1)
    flat = cr.Sequential([Input(shape=(6, 5, 2)), Conv2D(3, 2), Flatten(),  # BN over features in chainrule's order
                          BatchNormalization(center=False, scale=False), Dense(4), Activation("tanh")],
                         dtype=dtype, seed=2)
    two_d = cr.Sequential([Input(shape=(4, 5)), BatchNormalization(), Activation("softmax"), Flatten(), Dense(2)],
                          dtype=dtype, seed=3)
    keep = cr.Sequential([Input(shape=(5, 5, 2)), Conv2D(3, 3), GlobalAveragePooling2D(keepdims=True)],
                         dtype=dtype, seed=4)
    return {"image": image, "flat": flat, "2d": two_d, "keepdims": keep}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["image", "flat", "2d", "keepdims"])
def test_batchnorm_gap_activation_outputs_and_round_trip(name, dtype):
    model = _with_statistics(_bn_models(dtype)[name])
    rng = np.random.default_rng(5)
    _assert_outputs_match(model, rng.normal(size=(6,) + model.input_shape) * 2 + 0.5)
    _assert_round_trip(model)
    net = to_torch(model)
    bns = [m for m in net if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    layers = [l for l in model.layers if type(l).__name__ == "BatchNormalization"]
    assert len(bns) == len(layers)
    for bn, layer in zip(bns, layers):
        assert bn.momentum == pytest.approx(1 - layer.momentum) and bn.eps == layer.epsilon
        assert bn.affine == (layer.center or layer.scale)


def test_batchnorm_state_dict_checks():
    model = _with_statistics(_bn_models("float64")["2d"])
    sd = to_torch(model).state_dict()
    keys = list(sd)
    assert keys[:5] == ["1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    bad = dict(sd)
    bad["1.running_var"] = -torch.ones(5, dtype=torch.float64)
    _rejects(model, bad, ValueError, r"the running_var for layer 'batch_normalization' .* holds negative values")
    _rejects(model, {k: v for k, v in sd.items() if k != "1.running_mean"}, ValueError,
             r"expects a BatchNorm entry 1.running_mean \(after 1.weight and 1.bias, if any\); the state_dict has none")
    bad = dict(sd)
    bad["1.weight"] = torch.ones(4, dtype=torch.float64)
    _rejects(model, bad, ValueError, r"needs a BatchNorm weight of shape \(5,\); state_dict entry '1.weight' has shape \(4,\)")
    # a BatchNorm without affine weights loads as gamma 1, beta 0
    nets = to_torch(model)
    plain = torch.nn.BatchNorm1d(5, affine=False).double()
    plain.running_mean.data, plain.running_var.data = nets[1].running_mean.clone(), nets[1].running_var.clone()
    sd2 = {f"1.{k}": v for k, v in plain.state_dict().items()}
    sd2.update({k: v for k, v in sd.items() if not k.startswith("1.")})
    load_state_dict(model, dict(sorted(sd2.items(), key=lambda kv: keys.index(kv[0]) if kv[0] in keys else 0)))
    g, b = model.get_weights()[:2]
    assert np.array_equal(g, np.ones(5)) and np.array_equal(b, np.zeros(5))
    # a layer without scale takes only a weight of ones
    noscale = _with_statistics(_bn_models("float64")["image"])
    sd = to_torch(noscale).state_dict()
    key = [k for k in sd if k.endswith("weight") and sd[k].shape == (5,)][0]  # the scale=False one
    sd[key] = sd[key] * 2
    _rejects(noscale, sd, ValueError, r"has no gamma \(scale=False\), so its BatchNorm weight must be all 1")
