"""Training tools checked against independent oracles: optimizers step by step against
torch.optim (or a numpy reference where chainrule's decoupled weight decay differs from
torch's coupled one), clipping and regularization against numpy formulas applied to the
raw gradients, schedules against hand-computed values and torch's schedulers, sample and
class weights, the gradient monitor, callbacks, progress output, History.plot and argument
validation. Tests that need torch or matplotlib skip without them."""

import math
import os
import struct
import warnings

import numpy as np
import pytest

import chainrule as cr

# Optimizer and clipping oracles. float64 measured worst case: 8.5e-16 (weights after 6 steps,
# rounding only); the bound is ~100x that. float32 is left loose.
TOL = {"float64": 1e-13, "float32": 1e-4}
DTYPES = ["float64", "float32"]


def rel_err(got, want):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)


# -- a small MLP and its reference twins --------------------------------------------------
N_IN, N_HID, N_OUT = 5, 7, 3


def make_mlp(dtype="float64", optimizer=None, reg=None, reg2=None, seed=0, hidden_act="tanh"):
    model = cr.Sequential([
        cr.layers.Dense(N_HID, activation=hidden_act, input_shape=(N_IN,), kernel_regularizer=reg),
        cr.layers.Dense(N_OUT, activation="softmax", kernel_regularizer=reg2),
    ], dtype=dtype, seed=seed)
    model.build()
    model.compile(optimizer=optimizer or cr.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    return model


def batches(n_steps=6, size=8, seed=1):
    """Fixed batches whose scale changes from step to step (so that AMSGrad's running
    maximum differs from Adam's plain second moment)."""
    rng = np.random.default_rng(seed)
    scales = [3.0, 1.0, 0.3, 2.0, 0.5, 1.5, 0.2, 1.0]
    out = []
    for s in range(n_steps):
        x = rng.normal(size=(size, N_IN)) * scales[s % len(scales)]
        y = rng.integers(0, N_OUT, size=size)
        out.append((x, y))
    return out


def np_softmax_ce(logits, y):
    z = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return lse - z[np.arange(len(y)), y]


def np_forward_logits(weights, x):
    (w1, b1, w2, b2) = [np.asarray(w, dtype=np.float64) for w in weights]
    h = np.tanh(np.asarray(x, dtype=np.float64) @ w1 + b1)
    return h @ w2 + b2


def torch_grads(torch, weights, x, y, sample_weight=None):
    """d(Σ w_i l_i / B)/dθ of the tanh-softmax MLP, by torch autograd in float64."""
    params = [torch.tensor(np.asarray(w, dtype=np.float64), requires_grad=True) for w in weights]
    loss = torch_loss(torch, params, x, y, sample_weight)
    loss.backward()
    return loss.item(), [p.grad.numpy().copy() for p in params]


def torch_loss(torch, params, x, y, sample_weight=None):
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    h = torch.tanh(xt @ params[0] + params[1])
    z = h @ params[2] + params[3]
    per = torch.nn.functional.cross_entropy(z, torch.as_tensor(np.asarray(y, dtype=np.int64)), reduction="none")
    w = torch.ones(len(y), dtype=torch.float64) if sample_weight is None else torch.as_tensor(
        np.asarray(sample_weight, dtype=np.float64))
    return (w * per).sum() / len(y)


class NumpyOptimizer:
    """The documented update rules with DECOUPLED weight decay (w -= lr·wd·w first)."""

    def __init__(self, kind, lr, wd=0.0, momentum=0.0, nesterov=False, rho=0.9, eps=1e-7,
                 beta_1=0.9, beta_2=0.999, init_acc=0.1):
        self.kind, self.lr, self.wd = kind, lr, wd
        self.momentum, self.nesterov, self.rho, self.eps = momentum, nesterov, rho, eps
        self.b1, self.b2, self.init_acc = beta_1, beta_2, init_acc
        self.state = None
        self.t = 0

    def step(self, params, grads):
        if self.state is None:
            fill = self.init_acc if self.kind == "adagrad" else 0.0
            self.state = [[np.full_like(p, fill) for p in params] for _ in range(2)]
        self.t += 1
        out = []
        for i, (w, g) in enumerate(zip(params, grads)):
            w = w - self.lr * self.wd * w
            s0, s1 = self.state[0][i], self.state[1][i]
            if self.kind == "sgd":
                if self.momentum:
                    s0[...] = self.momentum * s0 + g
                    w = w - self.lr * (g + self.momentum * s0 if self.nesterov else s0)
                else:
                    w = w - self.lr * g
            elif self.kind == "rmsprop":
                s0[...] = self.rho * s0 + (1 - self.rho) * g * g
                u = g / (np.sqrt(s0) + self.eps)
                if self.momentum:
                    s1[...] = self.momentum * s1 + u
                    u = s1
                w = w - self.lr * u
            elif self.kind == "adagrad":
                s0[...] = s0 + g * g
                w = w - self.lr * g / (np.sqrt(s0) + self.eps)
            elif self.kind == "adam":
                s0[...] = self.b1 * s0 + (1 - self.b1) * g
                s1[...] = self.b2 * s1 + (1 - self.b2) * g * g
                mhat = s0 / (1 - self.b1 ** self.t)
                vhat = s1 / (1 - self.b2 ** self.t)
                w = w - self.lr * mhat / (np.sqrt(vhat) + self.eps)
            out.append(w)
        return out


# -- 1. optimizers ---------------------------------------------------------------------------
# name -> (chainrule optimizer factory, torch optimizer factory)
TORCH_CASES = {
    "sgd": (lambda: cr.optimizers.SGD(0.1), lambda t, p: t.optim.SGD(p, lr=0.1)),
    "sgd-momentum": (lambda: cr.optimizers.SGD(0.1, momentum=0.9),
                     lambda t, p: t.optim.SGD(p, lr=0.1, momentum=0.9)),
    "sgd-nesterov": (lambda: cr.optimizers.SGD(0.1, momentum=0.8, nesterov=True),
                     lambda t, p: t.optim.SGD(p, lr=0.1, momentum=0.8, nesterov=True)),
    "adam": (lambda: cr.optimizers.Adam(0.02, beta_1=0.8, beta_2=0.95, epsilon=1e-6),
             lambda t, p: t.optim.Adam(p, lr=0.02, betas=(0.8, 0.95), eps=1e-6)),
    "adam-amsgrad": (lambda: cr.optimizers.Adam(0.02, beta_1=0.8, beta_2=0.5, amsgrad=True),
                     lambda t, p: t.optim.Adam(p, lr=0.02, betas=(0.8, 0.5), eps=1e-8, amsgrad=True)),
    "adamw": (lambda: cr.optimizers.AdamW(0.02, weight_decay=0.5),
              lambda t, p: t.optim.AdamW(p, lr=0.02, weight_decay=0.5)),
    # chainrule's Adam weight_decay is decoupled: exactly torch's AdamW.
    "adam-decoupled-wd": (lambda: cr.optimizers.Adam(0.02, weight_decay=0.5, amsgrad=True),
                          lambda t, p: t.optim.AdamW(p, lr=0.02, weight_decay=0.5, amsgrad=True)),
    "rmsprop": (lambda: cr.optimizers.RMSprop(0.01), lambda t, p: t.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-7)),
    "rmsprop-momentum": (lambda: cr.optimizers.RMSprop(0.01, rho=0.8, momentum=0.5, epsilon=1e-6),
                         lambda t, p: t.optim.RMSprop(p, lr=0.01, alpha=0.8, eps=1e-6, momentum=0.5)),
    "adagrad": (lambda: cr.optimizers.Adagrad(0.1, initial_accumulator_value=0.5, epsilon=1e-6),
                lambda t, p: t.optim.Adagrad(p, lr=0.1, initial_accumulator_value=0.5, eps=1e-6)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_optimizer_matches_torch_step_by_step(case, dtype):
    torch = pytest.importorskip("torch")
    make_cr, make_torch = TORCH_CASES[case]
    model = make_mlp(dtype, make_cr())
    params = [torch.tensor(w.astype(np.float64), requires_grad=True) for w in model.get_weights()]
    opt = make_torch(torch, params)
    w_start = model.get_weights()
    for step, (x, y) in enumerate(batches(6)):
        got_loss = model.train_on_batch(x, y)
        opt.zero_grad()
        loss = torch_loss(torch, params, x, y)
        loss.backward()
        opt.step()
        assert abs(got_loss - loss.item()) <= TOL[dtype] * max(1.0, abs(loss.item())), (case, step)
        for i, (got, want) in enumerate(zip(model.get_weights(), params)):
            err = rel_err(got, want.detach().numpy())
            assert err <= TOL[dtype], f"{case} {dtype} step {step} param {i}: rel err {err:.2e}"
    # The weights moved well beyond the tolerance: the comparison above could have failed.
    assert max(rel_err(a, b) for a, b in zip(model.get_weights(), w_start)) > 100 * TOL[dtype]


def test_amsgrad_differs_from_adam_on_these_batches():
    """Guard for the AMSGrad case above: on these batches the running maximum matters, so
    an implementation ignoring amsgrad would fail it."""
    a = make_mlp("float64", cr.optimizers.Adam(0.02, beta_1=0.8, beta_2=0.5, amsgrad=True))
    b = make_mlp("float64", cr.optimizers.Adam(0.02, beta_1=0.8, beta_2=0.5, amsgrad=False))
    for x, y in batches(6):
        a.train_on_batch(x, y)
        b.train_on_batch(x, y)
    assert max(rel_err(p, q) for p, q in zip(a.get_weights(), b.get_weights())) > 1e-3


NUMPY_WD_CASES = {
    "sgd-wd": (lambda: cr.optimizers.SGD(0.1, weight_decay=0.3), dict(kind="sgd", lr=0.1, wd=0.3)),
    "sgd-momentum-wd": (lambda: cr.optimizers.SGD(0.1, momentum=0.9, weight_decay=0.3),
                        dict(kind="sgd", lr=0.1, wd=0.3, momentum=0.9)),
    "sgd-nesterov-wd": (lambda: cr.optimizers.SGD(0.1, momentum=0.7, nesterov=True, weight_decay=0.3),
                        dict(kind="sgd", lr=0.1, wd=0.3, momentum=0.7, nesterov=True)),
    "rmsprop-momentum-wd": (lambda: cr.optimizers.RMSprop(0.01, rho=0.8, momentum=0.5, weight_decay=2.0),
                            dict(kind="rmsprop", lr=0.01, wd=2.0, rho=0.8, momentum=0.5, eps=1e-7)),
    "adagrad-wd": (lambda: cr.optimizers.Adagrad(0.1, initial_accumulator_value=0.2, weight_decay=0.5),
                   dict(kind="adagrad", lr=0.1, wd=0.5, init_acc=0.2, eps=1e-7)),
    "adam-wd": (lambda: cr.optimizers.Adam(0.02, beta_1=0.8, beta_2=0.9, weight_decay=0.5),
                dict(kind="adam", lr=0.02, wd=0.5, beta_1=0.8, beta_2=0.9, eps=1e-8)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(NUMPY_WD_CASES))
def test_decoupled_weight_decay_matches_numpy_reference(case, dtype):
    torch = pytest.importorskip("torch")  # autograd gives the reference gradients
    make_cr, ref_kwargs = NUMPY_WD_CASES[case]
    model = make_mlp(dtype, make_cr())
    ref = NumpyOptimizer(**ref_kwargs)
    no_wd = NumpyOptimizer(**{**ref_kwargs, "wd": 0.0})
    w = [p.astype(np.float64) for p in model.get_weights()]
    w_no_wd = list(w)
    for step, (x, y) in enumerate(batches(6)):
        model.train_on_batch(x, y)
        _, g = torch_grads(torch, w, x, y)
        w = ref.step(w, g)
        _, g2 = torch_grads(torch, w_no_wd, x, y)
        w_no_wd = no_wd.step(w_no_wd, g2)
        for i, (got, want) in enumerate(zip(model.get_weights(), w)):
            err = rel_err(got, want)
            assert err <= TOL[dtype], f"{case} {dtype} step {step} param {i}: rel err {err:.2e}"
    # weight decay changed the result by far more than the tolerance
    assert max(rel_err(a, b) for a, b in zip(w, w_no_wd)) > 100 * TOL[dtype]


def _one_clipped_sgd_step(dtype, lr, clip_kwargs, reg=None):
    x, y = batches(1, size=16, seed=5)[0]
    model = make_mlp(dtype, cr.optimizers.SGD(lr, **clip_kwargs), reg=reg)
    w0 = [w.astype(np.float64) for w in model.get_weights()]
    _, g = model.compute_gradients(x, y)
    g = [a.astype(np.float64) for a in g]
    model.train_on_batch(x, y)
    return w0, g, [w.astype(np.float64) for w in model.get_weights()]


@pytest.mark.parametrize("dtype", DTYPES)
def test_clipvalue_clips_each_element(dtype):
    # pick c between the smallest and largest |g| so that some, not all, elements clip
    w0, g, _ = _one_clipped_sgd_step(dtype, 0.5, {})
    mags = np.sort(np.concatenate([np.abs(a).ravel() for a in g]))
    c = float(mags[len(mags) // 2])
    w0, g, got = _one_clipped_sgd_step(dtype, 0.5, {"clipvalue": c})
    want = [w - 0.5 * np.clip(gi, -c, c) for w, gi in zip(w0, g)]
    unclipped = [w - 0.5 * gi for w, gi in zip(w0, g)]
    for a, b in zip(got, want):
        assert rel_err(a, b) <= TOL[dtype]
    assert max(rel_err(a, b) for a, b in zip(got, unclipped)) > 100 * TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_clipnorm_scales_by_the_global_norm_of_all_parameters(dtype):
    w0, g, _ = _one_clipped_sgd_step(dtype, 0.5, {})
    norms = [np.linalg.norm(a) for a in g]
    total = math.sqrt(sum(n * n for n in norms))
    c = 0.5 * total
    assert c > max(norms) * 0.5  # per-tensor clipping would scale differently
    w0, g, got = _one_clipped_sgd_step(dtype, 0.5, {"clipnorm": c})
    want = [w - 0.5 * gi * c / max(total, c) for w, gi in zip(w0, g)]
    per_tensor = [w - 0.5 * gi * c / max(np.linalg.norm(gi), c) for w, gi in zip(w0, g)]
    for a, b in zip(got, want):
        assert rel_err(a, b) <= TOL[dtype]
    assert max(rel_err(a, b) for a, b in zip(got, per_tensor)) > 100 * TOL[dtype]
    # a norm below clipnorm leaves the gradient alone
    w0, g, got = _one_clipped_sgd_step(dtype, 0.5, {"clipnorm": 2 * total})
    for a, b in zip(got, [w - 0.5 * gi for w, gi in zip(w0, g)]):
        assert rel_err(a, b) <= TOL[dtype]


def test_clipping_sees_the_regularization_gradient():
    """clipnorm and clipvalue apply to data gradient + penalty gradient (the documented
    order: penalty, global-norm scaling, value clipping, update)."""
    reg = cr.regularizers.L1L2(l1=0.05, l2=0.2)
    w0, g, got = _one_clipped_sgd_step("float64", 0.5, {"clipnorm": 0.05, "clipvalue": 0.01}, reg=reg)
    g = list(g)
    g[0] = g[0] + 0.05 * np.sign(w0[0]) + 2 * 0.2 * w0[0]  # only the first kernel is regularized
    total = math.sqrt(sum(float(np.sum(a * a)) for a in g))
    assert total > 0.05
    want = [w - 0.5 * np.clip(gi * 0.05 / total, -0.01, 0.01) for w, gi in zip(w0, g)]
    for a, b in zip(got, want):
        assert rel_err(a, b) <= 1e-10


# -- 2. regularization -------------------------------------------------------------------
def test_penalty_is_added_to_evaluate_train_on_batch_and_fit_loss():
    reg1, reg2 = cr.regularizers.L1L2(l1=0.01, l2=0.03), cr.regularizers.L2(0.2)
    x, y = batches(1, size=20, seed=7)[0]
    plain = make_mlp("float64", cr.optimizers.SGD(0.1))
    regd = make_mlp("float64", cr.optimizers.SGD(0.1), reg=reg1, reg2=reg2)
    regd.set_weights(plain.get_weights())
    w1, b1, w2, b2 = plain.get_weights()
    penalty = 0.01 * np.abs(w1).sum() + 0.03 * np.square(w1).sum() + 0.2 * np.square(w2).sum()
    data_loss = float(np.mean(np_softmax_ce(np_forward_logits(plain.get_weights(), x), y)))
    assert plain.evaluate(x, y) == pytest.approx(data_loss, rel=1e-12)
    assert regd.evaluate(x, y) == pytest.approx(data_loss + penalty, rel=1e-12)
    assert penalty > 0.01 * data_loss
    # compute_gradients reports the data loss and its gradient only
    loss_c, g_c = regd.compute_gradients(x, y)
    loss_p, g_p = plain.compute_gradients(x, y)
    assert loss_c == pytest.approx(data_loss, rel=1e-12)
    for a, b in zip(g_c, g_p):
        np.testing.assert_array_equal(a, b)
    # train_on_batch and fit report the loss before the step, penalty included
    assert regd.train_on_batch(x, y) == pytest.approx(data_loss + penalty, rel=1e-12)
    regd.set_weights(plain.get_weights())
    hist = regd.fit(x, y, epochs=1, batch_size=len(x), shuffle=False, verbose=0)
    assert hist.history["loss"][0] == pytest.approx(data_loss + penalty, rel=1e-12)


def test_regularized_sgd_step_matches_numpy():
    torch = pytest.importorskip("torch")
    l1, l2, lr = 0.02, 0.1, 0.3
    x, y = batches(1, size=12, seed=8)[0]
    model = make_mlp("float64", cr.optimizers.SGD(lr), reg=cr.regularizers.L1L2(l1, l2),
                     reg2=cr.regularizers.L1(l1))
    w0 = model.get_weights()
    _, g = torch_grads(torch, w0, x, y)
    model.train_on_batch(x, y)
    want = [w0[0] - lr * (g[0] + l1 * np.sign(w0[0]) + 2 * l2 * w0[0]),
            w0[1] - lr * g[1],
            w0[2] - lr * (g[2] + l1 * np.sign(w0[2])),
            w0[3] - lr * g[3]]
    for got, w in zip(model.get_weights(), want):
        assert rel_err(got, w) <= 1e-12


def test_l1_uses_zero_subgradient_at_zero():
    """sign(0) = 0: a kernel entry that is exactly zero gets only the data gradient."""
    lr, l1 = 0.1, 0.5
    x, y = batches(1, size=12, seed=9)[0]
    model = make_mlp("float64", cr.optimizers.SGD(lr), reg=cr.regularizers.L1(l1))
    w = model.get_weights()
    w[0][0, :] = 0.0
    w[0][1, 0] = -0.25
    model.set_weights(w)
    _, g = model.compute_gradients(x, y)
    model.train_on_batch(x, y)
    got = model.get_weights()[0]
    np.testing.assert_allclose(got[0, :], -lr * g[0][0, :], rtol=1e-12, atol=1e-15)
    assert got[1, 0] == pytest.approx(-0.25 - lr * (g[0][1, 0] - l1), rel=1e-12)
    np.testing.assert_allclose(got, w[0] - lr * (g[0] + l1 * np.sign(w[0])), rtol=1e-12, atol=1e-15)


# -- 3. schedules --------------------------------------------------------------------------
def test_schedule_formulas_known_values():
    s = cr.schedules.StepDecay(1.0, drop_every=3, factor=0.5)
    assert [s(t) for t in range(8)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25]
    e = cr.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    assert e(0) == pytest.approx(0.1) and e(10) == pytest.approx(0.05) and e(5) == pytest.approx(0.1 / math.sqrt(2))
    es = cr.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5, staircase=True)
    assert es(9) == pytest.approx(0.1) and es(15) == pytest.approx(0.05) and es(20) == pytest.approx(0.025)
    c = cr.schedules.CosineDecay(1.0, decay_steps=10, alpha=0.1, warmup_steps=5, warmup_start=0.2)
    assert c(0) == pytest.approx(0.2)
    assert c(2) == pytest.approx(0.2 + 0.8 * 2 / 5)
    assert c(5) == pytest.approx(1.0)
    assert c(10) == pytest.approx(0.1 + 0.9 * 0.5)
    assert c(15) == pytest.approx(0.1) and c(100) == pytest.approx(0.1)


def test_schedules_match_torch_schedulers():
    torch = pytest.importorskip("torch")

    def torch_rates(make_sched, base, n):
        p = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([p], lr=base)
        sched = make_sched(opt)
        rates = []
        for _ in range(n):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return rates

    lrs = torch.optim.lr_scheduler
    s = cr.schedules.StepDecay(0.3, drop_every=4, factor=0.7)
    np.testing.assert_allclose([s(t) for t in range(20)],
                               torch_rates(lambda o: lrs.StepLR(o, 4, gamma=0.7), 0.3, 20), rtol=1e-12)
    e = cr.schedules.ExponentialDecay(0.3, decay_steps=1, decay_rate=0.9)
    np.testing.assert_allclose([e(t) for t in range(20)],
                               torch_rates(lambda o: lrs.ExponentialLR(o, gamma=0.9), 0.3, 20), rtol=1e-10)
    c = cr.schedules.CosineDecay(0.3, decay_steps=12, alpha=0.1)
    np.testing.assert_allclose([c(t) for t in range(13)],
                               torch_rates(lambda o: lrs.CosineAnnealingLR(o, T_max=12, eta_min=0.03), 0.3, 13),
                               rtol=1e-9)


SCHEDULES = {
    "step": lambda: cr.schedules.StepDecay(0.2, drop_every=3, factor=0.5),
    "exponential": lambda: cr.schedules.ExponentialDecay(0.2, decay_steps=4, decay_rate=0.3),
    "exponential-staircase": lambda: cr.schedules.ExponentialDecay(0.2, decay_steps=4, decay_rate=0.3,
                                                                   staircase=True),
    "cosine-warmup": lambda: cr.schedules.CosineDecay(0.2, decay_steps=8, alpha=0.05, warmup_steps=3,
                                                      warmup_start=0.01),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_history_lr_is_the_rate_of_each_epochs_last_step(name):
    sched = SCHEDULES[name]()
    x, y = batches(1, size=30, seed=3)[0]
    model = make_mlp("float64", cr.optimizers.SGD(sched, momentum=0.5))
    hist = model.fit(x, y, epochs=5, batch_size=7, verbose=0, seed=0)  # 5 steps per epoch
    want = [sched(5 * (e + 1) - 1) for e in range(5)]
    np.testing.assert_allclose(hist.history["lr"], want, rtol=1e-12)
    assert len(set(np.round(want, 12))) > 1


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_training_with_a_schedule_matches_manual_numpy_stepping(name):
    torch = pytest.importorskip("torch")
    sched = SCHEDULES[name]()
    model = make_mlp("float64", cr.optimizers.SGD(sched, momentum=0.5))
    const = make_mlp("float64", cr.optimizers.SGD(0.2, momentum=0.5))
    ref = NumpyOptimizer("sgd", lr=None, momentum=0.5)
    w = model.get_weights()
    for t, (x, y) in enumerate(batches(8)):
        model.train_on_batch(x, y)
        const.train_on_batch(x, y)
        _, g = torch_grads(torch, w, x, y)
        ref.lr = sched(t)
        w = ref.step(w, g)
        for got, want in zip(model.get_weights(), w):
            assert rel_err(got, want) <= 1e-10, f"step {t}"
    assert max(rel_err(a, b) for a, b in zip(model.get_weights(), const.get_weights())) > 1e-4


def test_reduce_lr_on_plateau_lowers_the_rate_when_the_loss_stalls():
    x, y = batches(1, size=30, seed=3)[0]
    # a rate so small that the loss cannot improve by min_delta: a genuine plateau
    model = make_mlp("float64", cr.optimizers.SGD(1e-9))
    cb = cr.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, min_delta=1e-4, min_lr=1.5e-10)
    hist = model.fit(x, y, epochs=7, batch_size=30, verbose=0, callbacks=[cb])
    # epoch 0 sets the best; epochs 1 and 2 do not improve -> reduced after epoch 2, then
    # again after epoch 4, then floored at min_lr after epoch 6
    np.testing.assert_allclose(hist.history["lr"], [1e-9, 1e-9, 1e-9, 5e-10, 5e-10, 2.5e-10, 2.5e-10], rtol=1e-12)
    assert model._core.current_learning_rate() == pytest.approx(1.5e-10, rel=1e-12)


def test_reduce_lr_on_plateau_does_not_reduce_while_improving():
    x, y = batches(1, size=30, seed=3)[0]
    model = make_mlp("float64", cr.optimizers.SGD(0.1))
    cb = cr.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=0.0)
    hist = model.fit(x, y, epochs=5, batch_size=30, verbose=0, callbacks=[cb])
    assert all(b < a for a, b in zip(hist.history["loss"], hist.history["loss"][1:]))
    assert hist.history["lr"] == [pytest.approx(0.1)] * 5


def test_reduce_lr_on_plateau_scales_a_schedule_and_the_steps_use_it():
    """With a constant val_loss (validation labels the model cannot see move), the rate is
    halved after `patience` epochs on top of the schedule, and the weights follow the
    reduced rate (checked against a numpy replay)."""
    torch = pytest.importorskip("torch")
    sched = cr.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.9)
    x, y = batches(1, size=10, seed=4)[0]
    model = make_mlp("float64", cr.optimizers.SGD(sched))
    w = model.get_weights()

    class ConstantMetric(cr.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["plateau"] = 1.0

    cb = cr.callbacks.ReduceLROnPlateau(monitor="plateau", factor=0.5, patience=1, min_delta=0.0)
    hist = model.fit(x, y, epochs=4, batch_size=10, shuffle=False, verbose=0, callbacks=[ConstantMetric(), cb])
    scale = [1.0, 1.0, 0.5, 0.25]
    want_lr = [sched(t) * s for t, s in enumerate(scale)]
    np.testing.assert_allclose(hist.history["lr"], want_lr, rtol=1e-12)
    for t in range(4):
        _, g = torch_grads(torch, w, x, y)
        w = [p - want_lr[t] * gi for p, gi in zip(w, g)]
    for got, want in zip(model.get_weights(), w):
        assert rel_err(got, want) <= 1e-10


# -- 4. sample and class weights ------------------------------------------------------------
def test_weighted_loss_and_gradient_match_numpy_and_torch():
    torch = pytest.importorskip("torch")
    x, y = batches(1, size=16, seed=11)[0]
    sw = np.random.default_rng(2).uniform(0.0, 3.0, size=16)
    model = make_mlp("float64")
    per = np_softmax_ce(np_forward_logits(model.get_weights(), x), y)
    want = float(np.sum(sw * per) / 16)
    assert abs(want - float(per.mean())) > 1e-3
    assert model.evaluate(x, y, sample_weight=sw) == pytest.approx(want, rel=1e-12)
    loss, g = model.compute_gradients(x, y, sample_weight=sw)
    assert loss == pytest.approx(want, rel=1e-12)
    t_loss, t_g = torch_grads(torch, model.get_weights(), x, y, sw)
    for a, b in zip(g, t_g):
        assert rel_err(a, b) <= 1e-10
    assert model.train_on_batch(x, y, sample_weight=sw) == pytest.approx(want, rel=1e-12)


def test_class_weight_equals_the_matching_sample_weight():
    x, y = batches(1, size=40, seed=12)[0]
    assert 0 < np.sum(y == 0) < len(y)
    a = make_mlp("float64")
    b = make_mlp("float64")
    c = make_mlp("float64")
    ha = a.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0, class_weight={0: 2.0})
    hb = b.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0, sample_weight=np.where(y == 0, 2.0, 1.0))
    c.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0)
    for p, q in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(p, q)
    assert ha.history["loss"] == hb.history["loss"]
    assert max(rel_err(p, q) for p, q in zip(a.get_weights(), c.get_weights())) > 1e-4
    # class_weight and sample_weight multiply
    d = make_mlp("float64")
    e = make_mlp("float64")
    sw = np.linspace(0.5, 1.5, len(y))
    d.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, class_weight={0: 2.0, 2: 0.5}, sample_weight=sw)
    e.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0,
          sample_weight=sw * np.choose(y, [2.0, 1.0, 0.5]))
    for p, q in zip(d.get_weights(), e.get_weights()):
        np.testing.assert_allclose(p, q, rtol=1e-13, atol=1e-15)


def test_fit_weighted_loss_is_sum_of_weighted_losses_over_batch_size():
    x, y = batches(1, size=12, seed=13)[0]
    sw = np.arange(12, dtype=np.float64) / 6.0
    model = make_mlp("float64")
    per = np_softmax_ce(np_forward_logits(model.get_weights(), x), y)
    hist = model.fit(x, y, epochs=1, batch_size=12, shuffle=False, verbose=0, sample_weight=sw)
    assert hist.history["loss"][0] == pytest.approx(float(np.sum(sw * per) / 12), rel=1e-12)


# -- 5. gradient monitor ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    (x, y), _ = cr.datasets.load_digits()
    return x[:600], y[:600]


def _deep(act, depth=10, seed=0):
    layers = [cr.layers.Dense(32, activation=act, input_shape=(64,))]
    layers += [cr.layers.Dense(32, activation=act) for _ in range(depth - 1)]
    layers += [cr.layers.Dense(10, activation="softmax")]
    model = cr.Sequential(layers, seed=seed)
    model.compile(optimizer=cr.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
    return model


def test_deep_sigmoid_net_vanishes_and_warns_naming_the_first_layer(digits):
    x, y = digits
    model = _deep("sigmoid")
    with pytest.warns(cr.GradientWarning, match="vanishing") as rec:
        hist = model.fit(x, y, epochs=2, batch_size=100, verbose=0, seed=0)
    st = hist.layer_stats
    first, last = model.layers[0].name, model.layers[-1].name
    assert st[first]["kernel_grad_norm"][0] < 1e-3 * st[last]["kernel_grad_norm"][0]
    vanishing = [w for w in rec if issubclass(w.category, cr.GradientWarning) and "vanishing" in str(w.message)]
    assert len(vanishing) == 1  # one per kind per fit, although both epochs vanish
    assert f"{first!r}" in str(vanishing[0].message)
    assert f"{last!r} (" not in str(vanishing[0].message)
    assert len(st[first]["kernel_grad_norm"]) == 2


def test_deep_relu_he_net_gives_no_gradient_warning(digits):
    x, y = digits
    model = _deep("relu")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        hist = model.fit(x, y, epochs=2, batch_size=100, verbose=0, seed=0)
    assert not [w for w in rec if issubclass(w.category, cr.GradientWarning)]
    st = hist.layer_stats
    first, last = model.layers[0].name, model.layers[-1].name
    assert st[first]["kernel_grad_rms"][0] > 1e-3 * st[last]["kernel_grad_rms"][0]
    assert st[first]["dead_fraction"][0] < 0.1


def test_gradient_warnings_false_is_silent(digits):
    x, y = digits
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _deep("sigmoid").fit(x, y, epochs=1, batch_size=100, verbose=0, seed=0, gradient_warnings=False)
    assert not [w for w in rec if issubclass(w.category, cr.GradientWarning)]


def _diverging_model(optimizer):
    """A deep linear regression that blows up in float32 within a few full-batch steps."""
    model = cr.Sequential([cr.layers.Dense(8, input_shape=(4,)), cr.layers.Dense(8), cr.layers.Dense(1)],
                          dtype="float32", seed=3)
    model.build()
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = rng.normal(size=(32, 1)).astype(np.float32)
    return model, x, y


def test_divergence_with_the_stop_turned_off_gives_nonfinite_weights_and_an_exploding_warning():
    # stop_on_nonfinite=False: training runs every epoch through NaN, as before that default.
    model, x, y = _diverging_model(cr.optimizers.SGD(1.0))
    with pytest.warns(cr.GradientWarning, match="exploding"):
        hist = model.fit(x, y, epochs=12, batch_size=32, verbose=0, stop_on_nonfinite=False)
    assert len(hist.epoch) == 12
    assert not all(np.isfinite(w).all() for w in model.get_weights())
    assert not np.isfinite(hist.history["loss"][-1])


def test_terminate_on_nan_stops_and_restores_the_weights_before_the_diverging_step(capsys):
    model, x, y = _diverging_model(cr.optimizers.SGD(1.0))
    w_init = model.get_weights()
    per_epoch = []
    rec = cr.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: per_epoch.append(model.get_weights()))
    term = cr.callbacks.TerminateOnNaN()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cr.GradientWarning)
        hist = model.fit(x, y, epochs=30, batch_size=32, shuffle=False, verbose=0, callbacks=[term, rec])
    stop = term.stopped_epoch
    assert stop is not None and len(hist.epoch) == stop + 1 < 30
    assert "TerminateOnNaN" in capsys.readouterr().err
    losses = hist.history["loss"]
    assert np.isfinite(losses[:stop]).all()
    final = model.get_weights()
    assert all(np.isfinite(w).all() for w in final)
    # One step per epoch. The step of epoch `stop` either found a non-finite loss (measured on
    # the weights left by epoch stop-1: the diverging step was stop-1's) or made non-finite
    # weights (the diverging step was its own). Either way the weights put back are those
    # before the diverging step, whose loss was finite: measured by the next epoch's step.
    states = [w_init] + per_epoch[:stop]
    if np.isfinite(losses[stop]):
        k = stop          # the weights this step made were not finite: back to before it
    else:
        k = stop - 1      # the loss of the weights left by step stop-1 was not finite
    for a, b in zip(final, states[k]):
        np.testing.assert_array_equal(a, b)
    assert model.evaluate(x, y) == pytest.approx(losses[k], rel=1e-5)


def test_terminate_on_nan_never_restores_weights_from_an_earlier_fit():
    model, x, y = _diverging_model(cr.optimizers.SGD(0.01))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cr.GradientWarning)
        model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[cr.callbacks.TerminateOnNaN()])
        model.compile(optimizer=cr.optimizers.SGD(1.0), loss="mse")
        for _ in range(20):  # diverge outside fit
            if not np.isfinite(model.train_on_batch(x, y)):
                break
        w_start = model.get_weights()
        assert not all(np.isfinite(w).all() for w in w_start)
        term = cr.callbacks.TerminateOnNaN()
        hist = model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[term])
    assert term.stopped_epoch == 0 and hist.epoch == [0]
    # No step of this fit had a finite loss: there is nothing of this fit to put back.
    for a, b in zip(model.get_weights(), w_start):
        np.testing.assert_array_equal(a, b)


def test_clipnorm_tames_the_same_divergence():
    model, x, y = _diverging_model(cr.optimizers.SGD(1.0, clipnorm=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cr.GradientWarning)
        hist = model.fit(x, y, epochs=12, batch_size=32, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_dead_fraction_is_one_for_a_dead_relu_layer_and_zero_otherwise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6))
    y = rng.integers(0, 3, size=64)
    model = cr.Sequential([cr.layers.Dense(16, activation="relu", input_shape=(6,), name="alive"),
                           cr.layers.Dense(12, activation=cr.activations.LeakyReLU(0.1), name="dead"),
                           cr.layers.Dense(8, activation="tanh", name="smooth"),
                           cr.layers.Dense(3, activation="softmax", name="out")], dtype="float64", seed=0)
    model.build()
    model.compile(optimizer=cr.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    hist = model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert hist.layer_stats["alive"]["dead_fraction"] == [0.0]
    assert hist.layer_stats["dead"]["dead_fraction"] == [0.0]
    assert "dead_fraction" not in hist.layer_stats["smooth"]
    w = model.get_weights()
    w[3] = np.full_like(w[3], -1e3)  # bias of "dead": no unit is ever positive
    w[1][:5] = -1e3                   # five of the 16 units of "alive"
    model.set_weights(w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cr.GradientWarning)  # the dead layer starves the ones below
        hist = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert hist.layer_stats["dead"]["dead_fraction"] == [1.0, 1.0]
    assert hist.layer_stats["alive"]["dead_fraction"] == [5 / 16, 5 / 16]


@pytest.mark.parametrize("reg", [None, cr.regularizers.L1L2(0.01, 0.05)], ids=["plain", "regularized"])
def test_layer_stats_of_a_full_batch_epoch_match_compute_gradients(reg):
    x, y = batches(1, size=24, seed=14)[0]
    model = make_mlp("float64", cr.optimizers.SGD(0.3, momentum=0.9), reg=reg)
    w0 = model.get_weights()
    _, g = model.compute_gradients(x, y)
    if reg is not None:
        g[0] = g[0] + reg.l1 * np.sign(w0[0]) + 2 * reg.l2 * w0[0]
    hist = model.fit(x, y, epochs=1, batch_size=24, shuffle=False, verbose=0)
    w1 = model.get_weights()
    names = [l.name for l in model.layers]
    for li, name in enumerate(names):
        st = hist.layer_stats[name]
        gk, gb = g[2 * li], g[2 * li + 1]
        assert st["kernel_grad_norm"][0] == pytest.approx(np.linalg.norm(gk), rel=1e-12)
        assert st["kernel_grad_norm_max"][0] == pytest.approx(np.linalg.norm(gk), rel=1e-12)
        assert st["bias_grad_norm"][0] == pytest.approx(np.linalg.norm(gb), rel=1e-12)
        assert st["kernel_grad_rms"][0] == pytest.approx(np.sqrt(np.mean(gk ** 2)), rel=1e-12)
        dk = w1[2 * li] - w0[2 * li]
        assert st["kernel_update_ratio"][0] == pytest.approx(np.linalg.norm(dk) / np.linalg.norm(w1[2 * li]),
                                                              rel=1e-10)
        assert st["kernel_weight_norm"][0] == pytest.approx(np.linalg.norm(w1[2 * li]), rel=1e-12)


def test_layer_stats_average_over_steps_and_keep_the_max():
    x, y = batches(1, size=24, seed=15)[0]
    a = make_mlp("float64", cr.optimizers.SGD(0.5))
    b = make_mlp("float64", cr.optimizers.SGD(0.5))
    norms, ratios = [], []
    for half in (slice(0, 12), slice(12, 24)):
        w_before = b.get_weights()
        _, g = b.compute_gradients(x[half], y[half])
        b.train_on_batch(x[half], y[half])
        w_after = b.get_weights()
        norms.append(np.linalg.norm(g[0]))
        ratios.append(np.linalg.norm(w_after[0] - w_before[0]) / np.linalg.norm(w_after[0]))
    assert abs(norms[0] - norms[1]) > 1e-3 * norms[0]
    hist = a.fit(x, y, epochs=1, batch_size=12, shuffle=False, verbose=0)
    st = hist.layer_stats[a.layers[0].name]
    assert st["kernel_grad_norm"][0] == pytest.approx(np.mean(norms), rel=1e-12)
    assert st["kernel_grad_norm_max"][0] == pytest.approx(max(norms), rel=1e-12)
    assert st["kernel_update_ratio"][0] == pytest.approx(np.mean(ratios), rel=1e-10)
    for p, q in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(p, q, rtol=1e-14, atol=1e-15)


# -- 6. callbacks ------------------------------------------------------------------------------
def _inject(values, key="score"):
    """A callback that puts a scripted metric into the epoch's logs (before the callbacks
    that monitor it), so the monitoring logic can be checked epoch by epoch."""
    return cr.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: logs.__setitem__(key, values[e]))


def test_early_stopping_stops_after_patience_and_restores_the_best_weights():
    x, y = batches(1, size=20, seed=16)[0]
    model = make_mlp("float64", cr.optimizers.SGD(0.2))
    per_epoch = []
    rec = cr.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: per_epoch.append(model.get_weights()))
    es = cr.callbacks.EarlyStopping(monitor="score", patience=2, mode="min", restore_best_weights=True)
    scores = [5.0, 3.0, 1.0, 2.0, 1.5, 1.2, 0.1, 0.0]
    hist = model.fit(x, y, epochs=8, batch_size=5, verbose=0, callbacks=[_inject(scores), rec, es])
    assert es.best_epoch == 2 and es.stopped_epoch is not None and len(hist.epoch) == es.stopped_epoch + 1 < 8
    for a, b in zip(model.get_weights(), per_epoch[2]):
        np.testing.assert_array_equal(a, b)
    assert max(rel_err(a, b) for a, b in zip(per_epoch[-1], per_epoch[2])) > 1e-4


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    x, y = batches(1, size=20, seed=16)[0]
    scores = [3.0, 1.0] + [2.0] * 8  # best at epoch 1, no improvement from epoch 2 on
    for patience in (1, 2, 3):
        model = make_mlp("float64", cr.optimizers.SGD(0.2))
        es = cr.callbacks.EarlyStopping(monitor="score", patience=patience)
        hist = model.fit(x, y, epochs=10, batch_size=20, verbose=0, callbacks=[_inject(scores), es])
        # epochs 2 .. 1+patience are the `patience` epochs without improvement
        assert es.stopped_epoch == 1 + patience and len(hist.epoch) == 2 + patience, patience


def test_early_stopping_verbose_report_when_the_monitored_value_is_never_finite(capsys):
    # Was: with verbose=1 the end-of-training report formatted best=None and best_epoch=None
    # and raised TypeError after training had stopped.
    x, y = batches(1, size=20, seed=16)[0]
    model = make_mlp("float64", cr.optimizers.SGD(0.2))
    es = cr.callbacks.EarlyStopping(monitor="score", patience=1, verbose=1, restore_best_weights=True)
    hist = model.fit(x, y, epochs=5, batch_size=20, verbose=0, callbacks=[_inject([math.nan] * 5), es])
    assert es.best is None and es.best_epoch is None and es.stopped_epoch == 0 and len(hist.epoch) == 1
    assert "Early stopping after epoch 1: no finite score in any epoch" in capsys.readouterr().out


def test_early_stopping_patience_zero_stops_at_the_first_epoch_without_improvement():
    x, y = batches(1, size=20, seed=16)[0]
    model = make_mlp("float64", cr.optimizers.SGD(0.2))
    es = cr.callbacks.EarlyStopping(monitor="score", patience=0)
    hist = model.fit(x, y, epochs=10, batch_size=20, verbose=0, callbacks=[_inject([3.0, 1.0, 0.5, 0.7, 0.1]), es])
    assert hist.epoch == [0, 1, 2, 3] and es.best_epoch == 2


def test_early_stopping_min_delta_and_max_mode():
    x, y = batches(1, size=20, seed=16)[0]
    model = make_mlp("float64", cr.optimizers.SGD(0.2))
    es = cr.callbacks.EarlyStopping(monitor="score", patience=0, mode="max", min_delta=0.5)
    # +0.6 improves; +0.3 is not an improvement by more than min_delta=0.5
    hist = model.fit(x, y, epochs=6, batch_size=20, verbose=0,
                     callbacks=[_inject([1.0, 2.0, 2.6, 2.9, 9.0, 9.0]), es])
    assert len(hist.epoch) == 4 and es.best_epoch == 2
    # mode="auto" on an accuracy-like name maximizes
    model2 = make_mlp("float64", cr.optimizers.SGD(0.2))
    es2 = cr.callbacks.EarlyStopping(monitor="val_accuracy", patience=0)
    hist = model2.fit(x, y, epochs=6, batch_size=20, verbose=0,
                      callbacks=[_inject([0.1, 0.5, 0.4, 0.9, 0.9, 0.9], key="val_accuracy"), es2])
    assert len(hist.epoch) == 3 and es2.best_epoch == 1


def test_early_stopping_on_a_real_plateau_without_restore():
    x, y = batches(1, size=20, seed=16)[0]
    model = make_mlp("float64", cr.optimizers.SGD(1e-12))
    es = cr.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e-6)
    hist = model.fit(x, y, epochs=10, batch_size=20, verbose=0, callbacks=[es])
    assert len(hist.epoch) == 2 and es.best_epoch == 0


def test_model_checkpoint_best_only_writes_on_improvement(tmp_path):
    x, y = batches(1, size=20, seed=17)[0]
    model = make_mlp("float64", cr.optimizers.SGD(0.3))
    preds = []
    rec = cr.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: preds.append(model.predict(x)))
    ck = cr.callbacks.ModelCheckpoint(str(tmp_path / "ckpt-{epoch:02d}.crm"), monitor="score", save_best_only=True)
    model.fit(x, y, epochs=5, batch_size=5, verbose=0, callbacks=[_inject([3.0, 1.0, 2.0, 0.5, 0.7]), rec, ck])
    assert sorted(os.listdir(tmp_path)) == ["ckpt-01.crm", "ckpt-02.crm", "ckpt-04.crm"]
    for epoch in (1, 2, 4):
        loaded = cr.load_model(tmp_path / f"ckpt-{epoch:02d}.crm")
        np.testing.assert_array_equal(loaded.predict(x), preds[epoch - 1])
    assert np.abs(preds[3] - preds[4]).max() > 1e-6


def test_model_checkpoint_best_only_single_file_holds_the_best(tmp_path):
    x, y = batches(1, size=20, seed=17)[0]
    model = make_mlp("float64", cr.optimizers.SGD(0.3))
    preds = []
    rec = cr.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: preds.append(model.predict(x)))
    path = tmp_path / "best.crm"
    ck = cr.callbacks.ModelCheckpoint(path, monitor="score", mode="max", save_best_only=True)
    model.fit(x, y, epochs=4, batch_size=5, verbose=0, callbacks=[_inject([1.0, 4.0, 2.0, 3.0]), rec, ck])
    assert os.listdir(tmp_path) == ["best.crm"]
    np.testing.assert_array_equal(cr.load_model(path).predict(x), preds[1])


def test_model_checkpoint_every_epoch_formats_epoch_and_metrics(tmp_path):
    x, y = batches(1, size=20, seed=18)[0]
    model = make_mlp("float64", cr.optimizers.SGD(0.3))
    ck = cr.callbacks.ModelCheckpoint(str(tmp_path / "m-{epoch}-{loss:.3f}.crm"), monitor="loss")
    hist = model.fit(x, y, epochs=3, batch_size=5, verbose=0, callbacks=[ck])
    want = sorted(f"m-{e + 1}-{hist.history['loss'][e]:.3f}.crm" for e in range(3))
    assert sorted(os.listdir(tmp_path)) == want  # no temporary files left behind
    last = cr.load_model(tmp_path / f"m-3-{hist.history['loss'][2]:.3f}.crm")
    np.testing.assert_array_equal(last.predict(x), model.predict(x))
    for a, b in zip(last.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_lambda_callback_hooks_run_in_order_with_the_right_epochs():
    x, y = batches(1, size=20, seed=19)[0]
    model = make_mlp("float64", cr.optimizers.SGD(0.3))
    model.compile(optimizer=cr.optimizers.SGD(0.3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    events, logs_seen = [], []
    cb = cr.callbacks.LambdaCallback(
        on_train_begin=lambda logs: events.append("train_begin"),
        on_epoch_begin=lambda e, logs: events.append(("begin", e)),
        on_epoch_end=lambda e, logs: (events.append(("end", e)), logs_seen.append(dict(logs))),
        on_train_end=lambda logs: events.append("train_end"))
    hist = model.fit(x, y, epochs=3, batch_size=5, verbose=0, callbacks=[cb],
                     validation_data=batches(1, size=6, seed=20)[0])
    assert events == ["train_begin", ("begin", 0), ("end", 0), ("begin", 1), ("end", 1),
                      ("begin", 2), ("end", 2), "train_end"]
    for e, logs in enumerate(logs_seen):
        assert set(logs) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
        for k, v in logs.items():
            assert hist.history[k][e] == v
    assert cb.model is model


def test_custom_callback_setting_stop_training_stops_after_that_epoch():
    class StopAt(cr.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seen = []

        def on_epoch_end(self, epoch, logs=None):
            self.seen.append(epoch)
            if epoch == 1:
                self.model.stop_training = True

    x, y = batches(1, size=20, seed=21)[0]
    model = make_mlp("float64")
    cb = StopAt()
    hist = model.fit(x, y, epochs=6, batch_size=5, verbose=0, callbacks=[cb])
    assert hist.epoch == [0, 1] and cb.seen == [0, 1]
    # stop_training is reset by the next fit
    assert len(model.fit(x, y, epochs=2, verbose=0).epoch) == 2


def test_callbacks_argument_must_hold_callbacks():
    x, y = batches(1, size=8)[0]
    model = make_mlp("float64")
    with pytest.raises(TypeError, match="callbacks"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[lambda epoch, logs: None])
    with pytest.raises(TypeError, match="on_epoch_end"):
        cr.callbacks.LambdaCallback(on_epoch_end=3)
    with pytest.raises(ValueError, match="monitor"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[cr.callbacks.EarlyStopping(monitor="val_loss")])


# -- 7. progress output ----------------------------------------------------------------------
def test_verbose_1_prints_a_progress_bar_per_epoch(capsys):
    x, y = batches(1, size=200, seed=22)[0]
    model = make_mlp("float64")
    model.fit(x, y, epochs=3, batch_size=2, verbose=1)  # 100 steps an epoch
    out = capsys.readouterr().out
    for e in range(1, 4):
        assert out.count(f"Epoch {e}/3\n") == 1
    assert "[=" in out and "/100 [" in out
    assert out.count("100/100 [" + "=" * 30 + "]") >= 3
    # updated during the epoch, about 50 times, not once per batch
    updates = out.count("\r")
    assert 3 * 40 <= updates <= 3 * 60, updates
    assert "50/100 [" in out


def test_verbose_2_prints_one_line_per_epoch(capsys):
    x, y = batches(1, size=40, seed=23)[0]
    model = make_mlp("float64")
    model.fit(x, y, epochs=4, batch_size=4, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    for e, line in enumerate(lines):
        assert line.startswith(f"Epoch {e + 1}/4") and "loss:" in line and "[" not in line


def test_verbose_0_prints_nothing(capsys):
    x, y = batches(1, size=40, seed=23)[0]
    make_mlp("float64").fit(x, y, epochs=2, batch_size=4, verbose=0)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# -- 8. History.plot ---------------------------------------------------------------------------
def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_history_plot_writes_a_1000x800_png(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    x, y = batches(1, size=40, seed=24)[0]
    model = make_mlp("float64")
    model.compile(optimizer=cr.optimizers.SGD(0.2), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(x, y, epochs=3, batch_size=10, verbose=0, validation_split=0.25)
    path = tmp_path / "history.png"
    fig = hist.plot(path)
    assert isinstance(fig, Figure)
    assert path.stat().st_size > 1000
    assert _png_size(path) == (1000, 800)
    hist.plot(tmp_path / "small.png", dpi=50)
    assert _png_size(tmp_path / "small.png") == (500, 400)
    assert hist.plot() is not None and not (tmp_path / "None").exists()


def test_history_plot_on_an_empty_history_raises():
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="empty"):
        cr.History().plot()


# -- 9. bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("make, exc, name", [
    (lambda: cr.optimizers.SGD(-0.1), ValueError, "learning_rate"),
    (lambda: cr.optimizers.Adam(0.0), ValueError, "learning_rate"),
    (lambda: cr.optimizers.Adam("fast"), TypeError, "learning_rate"),
    (lambda: cr.optimizers.Adam(beta_1=1.0), ValueError, "beta_1"),
    (lambda: cr.optimizers.Adam(beta_2=-0.1), ValueError, "beta_2"),
    (lambda: cr.optimizers.SGD(0.1, clipnorm=0), ValueError, "clipnorm"),
    (lambda: cr.optimizers.SGD(0.1, clipvalue=-1.0), ValueError, "clipvalue"),
    (lambda: cr.optimizers.AdamW(weight_decay=-0.01), ValueError, "weight_decay"),
    (lambda: cr.optimizers.RMSprop(rho=1.0), ValueError, "rho"),
    (lambda: cr.optimizers.RMSprop(momentum=1.5), ValueError, "momentum"),
    (lambda: cr.optimizers.Adagrad(initial_accumulator_value=-1), ValueError, "initial_accumulator_value"),
    (lambda: cr.optimizers.SGD(0.1, nesterov=True), ValueError, "nesterov"),
    (lambda: cr.optimizers.SGD({"class_name": "Polynomial", "initial_learning_rate": 0.1}), ValueError,
     "learning.rate"),
    (lambda: cr.schedules.get("cosine"), ValueError, "schedule"),
    (lambda: cr.schedules.StepDecay(0.1, drop_every=0), ValueError, "drop_every"),
    (lambda: cr.schedules.CosineDecay(0.1, decay_steps=10, alpha=2.0), ValueError, "alpha"),
    (lambda: cr.regularizers.L2(-0.1), ValueError, "l2"),
    (lambda: cr.regularizers.L1(float("nan")), ValueError, "l1"),
    (lambda: cr.regularizers.L1L2(l1="much"), TypeError, "l1"),
    (lambda: cr.layers.Dense(3, kernel_regularizer="l3"), ValueError, "kernel_regularizer"),
    (lambda: cr.callbacks.ReduceLROnPlateau(factor=1.0), ValueError, "factor"),
    (lambda: cr.callbacks.EarlyStopping(patience=-1), ValueError, "patience"),
    (lambda: cr.callbacks.EarlyStopping(mode="up"), ValueError, "mode"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_configuration_is_rejected_naming_the_argument(make, exc, name):
    with pytest.raises(exc, match=name):
        make()


@pytest.mark.parametrize("class_weight, exc, name", [
    ({3: 1.0}, ValueError, "class_weight"),
    ({-1: 1.0}, ValueError, "class_weight"),
    ({"0": 1.0}, ValueError, "class_weight"),
    ({0.0: 1.0}, ValueError, "class_weight"),
    ({0: -2.0}, ValueError, "class_weight"),
    ({0: float("inf")}, ValueError, "class_weight"),
    ([2.0, 1.0, 1.0], TypeError, "class_weight"),
])
def test_bad_class_weight_is_rejected(class_weight, exc, name):
    x, y = batches(1, size=8)[0]
    model = make_mlp("float64")
    w = model.get_weights()
    with pytest.raises(exc, match=name):
        model.fit(x, y, epochs=1, verbose=0, class_weight=class_weight)
    for a, b in zip(model.get_weights(), w):
        np.testing.assert_array_equal(a, b)
