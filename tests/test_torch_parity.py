"""The same MLP with the same weights in chainrule and in PyTorch (float64 autograd as the
oracle), compared tensor by tensor: outputs, loss, gradients, weights after SGD steps
(momentum, Nesterov) and after fit with mini-batches in order. Skipped without torch."""

import numpy as np
import pytest

import chainrule as cr

torch = pytest.importorskip("torch")
F = torch.nn.functional

# Relative error bound per tensor: max|got - want| / max|want| (losses: relative error).
# float64 measured worst case over this file: 6.4e-16 (gradients; weights after steps 4.0e-16,
# losses 3.0e-16), i.e. rounding only; the bound is ~150x that. float32 (measured 2.9e-7) is
# left loose.
TOL = {"float64": 1e-13, "float32": 1e-4}

# name -> (layer sizes, activations, loss); sizes[0] is the input width.
NETS = {
    "tanh-relu-softmax-sparse": ([20, 16, 12, 5], ["tanh", "relu", "softmax"], "sparse_categorical_crossentropy"),
    "tanh-relu-softmax-onehot": ([20, 16, 12, 5], ["tanh", "relu", "softmax"], "categorical_crossentropy"),
    "relu-tanh-sigmoid-bce": ([20, 16, 12, 3], ["relu", "tanh", "sigmoid"], "binary_crossentropy"),
    "leaky-sigmoid-linear-mse": ([20, 16, 12, 4], [cr.activations.LeakyReLU(0.2), "sigmoid", None], "mse"),
}


def rel_err(got, want):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)


def torch_act(act, z):
    a = cr.activations.get(act)
    return {"linear": lambda t: t, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
            "leaky_relu": lambda t: F.leaky_relu(t, a.alpha),
            "softmax": lambda t: torch.softmax(t, dim=1)}[a.name](z)


class TorchMLP:
    """A float64 PyTorch twin; its parameters are the chainrule weights (kernel = weight.T)."""

    def __init__(self, weights, acts, loss):
        self.params = [torch.tensor(np.asarray(w, dtype=np.float64), requires_grad=True) for w in weights]
        self.acts = acts
        self.loss_name = cr.losses.get(loss)

    def logits(self, x):
        h = torch.as_tensor(np.asarray(x, dtype=np.float64))
        n = len(self.acts)
        for i, act in enumerate(self.acts):
            z = h @ self.params[2 * i] + self.params[2 * i + 1]
            h = z if i == n - 1 else torch_act(act, z)
        return h  # the last layer before its activation

    def outputs(self, x):
        return torch_act(self.acts[-1], self.logits(x))

    def loss(self, x, y):
        z = self.logits(x)
        t = torch.as_tensor(np.asarray(y))
        if self.loss_name == "sparse_categorical_crossentropy":
            return F.cross_entropy(z, t.long())
        if self.loss_name == "categorical_crossentropy":
            return F.cross_entropy(z, t.double())
        if self.loss_name == "binary_crossentropy":
            return F.binary_cross_entropy_with_logits(z, t.double())
        return F.mse_loss(torch_act(self.acts[-1], z), t.double())

    def gradients(self, x, y):
        for p in self.params:
            p.grad = None
        loss = self.loss(x, y)
        loss.backward()
        return float(loss.detach()), [p.grad.numpy().copy() for p in self.params]

    def weights(self):
        return [p.detach().numpy().copy() for p in self.params]


def build(net, dtype, optimizer=None, seed=0):
    sizes, acts, loss = NETS[net]
    model = cr.Sequential([cr.layers.Dense(u, activation=a) for u, a in zip(sizes[1:], acts)],
                          seed=seed, dtype=dtype)
    model.build((sizes[0],))
    model.compile(optimizer=optimizer or cr.optimizers.SGD(0.05), loss=loss)
    # Non-zero biases so that bias handling is compared too.
    rng = np.random.default_rng(seed + 1)
    w = model.get_weights()
    w[1::2] = [rng.normal(scale=0.1, size=b.shape) for b in w[1::2]]
    model.set_weights(w)
    return model, TorchMLP(model.get_weights(), acts, loss)


def data(net, n, seed):
    sizes, _, loss = NETS[net]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, sizes[0]))
    c = sizes[-1]
    loss = cr.losses.get(loss)
    if loss == "sparse_categorical_crossentropy":
        y = rng.integers(0, c, size=n)
    elif loss == "categorical_crossentropy":
        y = np.eye(c)[rng.integers(0, c, size=n)]
    elif loss == "binary_crossentropy":
        y = rng.integers(0, 2, size=(n, c)).astype(np.float64)
    else:
        y = rng.normal(size=(n, c))
    return x, y


def assert_weights_match(model, tm, tol, what):
    for i, (got, want) in enumerate(zip(model.get_weights(), tm.weights())):
        err = rel_err(got, want)
        assert err <= tol, f"{what}: weights[{i}] relative error {err:.2e} > {tol:.0e}"


DTYPES = ["float64", "float32"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("net", list(NETS))
def test_outputs_loss_and_gradients_match(net, dtype):
    model, tm = build(net, dtype)
    x, y = data(net, 33, seed=1)
    tol = TOL[dtype]
    with torch.no_grad():
        want_out = tm.outputs(x).numpy()
    assert rel_err(model.predict(x), want_out) <= tol
    want_loss, want_grads = tm.gradients(x, y)
    loss, grads = model.compute_gradients(x, y)
    assert loss == pytest.approx(want_loss, rel=tol)
    assert model.evaluate(x, y) == pytest.approx(want_loss, rel=tol)
    assert len(grads) == len(want_grads)
    for i, (g, w) in enumerate(zip(grads, want_grads)):
        assert np.abs(w).max() > 0, "vacuous comparison"
        err = rel_err(g, w)
        assert err <= tol, f"gradient {i}: relative error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
@pytest.mark.parametrize("net", list(NETS))
def test_sgd_momentum_steps_match(net, nesterov, dtype):
    """Five train_on_batch steps on fixed batches of varying size vs torch.optim.SGD."""
    lr, mu = 0.05, 0.9
    model, tm = build(net, dtype, cr.optimizers.SGD(lr, momentum=mu, nesterov=nesterov))
    opt = torch.optim.SGD(tm.params, lr=lr, momentum=mu, nesterov=nesterov)
    initial = model.get_weights()
    for step, n in enumerate([8, 5, 8, 1, 13]):
        x, y = data(net, n, seed=10 + step)
        opt.zero_grad()
        want_loss = tm.loss(x, y)
        want_loss.backward()
        opt.step()
        got_loss = model.train_on_batch(x, y)
        assert got_loss == pytest.approx(float(want_loss.detach()), rel=TOL[dtype]), f"step {step}: loss before the step"
        assert_weights_match(model, tm, TOL[dtype], f"after step {step + 1}")
    assert any(not np.allclose(a, b) for a, b in zip(initial, model.get_weights()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("net", ["tanh-relu-softmax-sparse", "relu-tanh-sigmoid-bce", "leaky-sigmoid-linear-mse"])
def test_fit_full_batch_matches_torch(net, dtype):
    """fit(shuffle=False, batch_size=n) is plain full-batch SGD; history['loss'] is the loss
    before each epoch's step."""
    lr, mu, epochs = 0.1, 0.9, 4
    model, tm = build(net, dtype, cr.optimizers.SGD(lr, momentum=mu))
    x, y = data(net, 40, seed=3)
    opt = torch.optim.SGD(tm.params, lr=lr, momentum=mu)
    want_losses = []
    for _ in range(epochs):
        opt.zero_grad()
        loss = tm.loss(x, y)
        loss.backward()
        opt.step()
        want_losses.append(float(loss.detach()))
    h = model.fit(x, y, epochs=epochs, batch_size=len(x), shuffle=False, verbose=0)
    np.testing.assert_allclose(h.history["loss"], want_losses, rtol=TOL[dtype])
    assert_weights_match(model, tm, TOL[dtype], "after fit")


@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_in_order_minibatches_with_partial_last_batch_matches_torch(dtype):
    """50 samples in batches of 16 without shuffling: steps on rows 0-15, 16-31, 32-47 and
    the partial batch 48-49, every epoch, with Nesterov momentum carried across epochs."""
    net = "tanh-relu-softmax-sparse"
    lr, mu, epochs, bs = 0.05, 0.9, 2, 16
    model, tm = build(net, dtype, cr.optimizers.SGD(lr, momentum=mu, nesterov=True))
    x, y = data(net, 50, seed=4)
    opt = torch.optim.SGD(tm.params, lr=lr, momentum=mu, nesterov=True)
    want_epoch_loss = []
    for _ in range(epochs):
        total = 0.0
        for s in range(0, len(x), bs):
            opt.zero_grad()
            loss = tm.loss(x[s:s + bs], y[s:s + bs])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(x[s:s + bs])
        want_epoch_loss.append(total / len(x))
    h = model.fit(x, y, epochs=epochs, batch_size=bs, shuffle=False, verbose=0)
    assert h.params["steps"] == 4
    np.testing.assert_allclose(h.history["loss"], want_epoch_loss, rtol=TOL[dtype])
    assert_weights_match(model, tm, TOL[dtype], "after fit")
