"""Every optimizer and option against a plain numpy float64 reference (no torch needed).

The reference (``ReferenceOptimizer``) is written from the documented formulas
(optimizers.py docstrings; torch.optim's update rules), not from the C++ loops. One step,
given the batch-mean loss gradient g of every tensor:

  1. regularization: the kernel's gradient gets l1*sign(w) + 2*l2*w (sign(0) = 0);
  2. clipnorm c: every tensor's g is scaled by c / max(||g||_global, c), the norm taken
     over all tensors together (tf.clip_by_global_norm);
  3. clipvalue c: each element is clipped to [-c, c];
  4. decoupled weight decay: w <- w - lr*wd*w;
  5. the update rule, with lr = the schedule's rate at step t (t = 0 first):
     SGD      v = mu*v + g; w -= lr*v   (Nesterov: w -= lr*(g + mu*v); mu = 0: w -= lr*g)
     Adam     m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; (AMSGrad: vmax = max(vmax, v))
              w -= lr * (m / (1-b1^k)) / (sqrt(v / (1-b2^k)) + eps), k = t + 1
     RMSprop  s = rho*s + (1-rho)*g^2; u = g / (sqrt(s) + eps); (momentum: b = mu*b + u,
              u = b); w -= lr*u
     Adagrad  a = a + g^2 (a starts at initial_accumulator_value); w -= lr*g/(sqrt(a)+eps)

Each case trains a tiny float64 model (Dense 3->4 tanh -> Dense 2, mse) for 5 steps with
``train_on_batch``; before each step ``compute_gradients`` (which changes no weight and
leaves out the regularization) gives g, the reference steps its own copy of the weights,
and the model's weights must match: the displacement from the start to ~1e-12 of its size.
Every case also checks that the weights moved, and that the option under test changes the
result by far more than the tolerance (so an optimizer ignoring it would fail)."""

import math

import numpy as np
import pytest

import chainrule as cr

try:
    from test_schedule_reference import make_schedule, reference_rate
except ImportError:  # --import-mode=importlib: tests/ is not on sys.path
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_schedule_reference import make_schedule, reference_rate


class ReferenceOptimizer:
    """numpy float64 twin of one chainrule optimizer configuration (see the module doc)."""

    DEFAULTS = {
        "sgd": dict(lr=0.01, momentum=0.0, nesterov=False),
        "adam": dict(lr=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8, amsgrad=False),
        "rmsprop": dict(lr=0.001, rho=0.9, momentum=0.0, epsilon=1e-7),
        "adagrad": dict(lr=0.01, initial_accumulator_value=0.1, epsilon=1e-7),
    }

    def __init__(self, kind, schedule=None, weight_decay=0.0, clipvalue=None, clipnorm=None,
                 regularizers=None, **hyper):
        self.kind = kind
        self.h = {**self.DEFAULTS[kind], **hyper}
        self.schedule = schedule  # a reference spec, or None: the constant rate h["lr"]
        self.wd, self.clipvalue, self.clipnorm = weight_decay, clipvalue, clipnorm
        self.regularizers = regularizers or {}  # tensor index -> (l1, l2)
        self.t = 0
        self.slots = None

    def rate(self, t):
        return self.h["lr"] if self.schedule is None else reference_rate(self.schedule, t)

    def full_gradients(self, weights, grads):
        """Loss gradient plus the regularization penalty's gradient."""
        out = [np.array(g, dtype=np.float64) for g in grads]
        for i, (l1, l2) in self.regularizers.items():
            out[i] = out[i] + l1 * np.sign(weights[i]) + 2.0 * l2 * weights[i]
        return out

    def step(self, weights, grads):
        """New weights after one step from `weights` with loss gradients `grads`."""
        weights = [np.array(w, dtype=np.float64) for w in weights]
        g = self.full_gradients(weights, grads)
        if self.clipnorm is not None:
            total = math.sqrt(sum(float(np.vdot(a, a)) for a in g))
            scale = self.clipnorm / max(total, self.clipnorm)
            g = [a * scale for a in g]
        if self.clipvalue is not None:
            g = [np.clip(a, -self.clipvalue, self.clipvalue) for a in g]
        if self.slots is None:
            self.slots = [self._initial_slots(w) for w in weights]
        lr = self.rate(self.t)
        self.t += 1
        return [self._update(w - lr * self.wd * w, gi, s, lr) for w, gi, s in zip(weights, g, self.slots)]

    def _initial_slots(self, w):
        if self.kind == "adagrad":
            return {"acc": np.full(w.shape, float(self.h["initial_accumulator_value"]))}
        return {name: np.zeros(w.shape) for name in ("a", "b", "c")}

    def _update(self, w, g, s, lr):
        h = self.h
        if self.kind == "sgd":
            mu = h["momentum"]
            if mu == 0.0:
                return w - lr * g
            s["a"] = mu * s["a"] + g
            direction = g + mu * s["a"] if h["nesterov"] else s["a"]
            return w - lr * direction
        if self.kind == "adam":
            k = self.t  # already advanced: 1 for the first step
            b1, b2 = h["beta_1"], h["beta_2"]
            s["a"] = b1 * s["a"] + (1.0 - b1) * g
            s["b"] = b2 * s["b"] + (1.0 - b2) * np.square(g)
            v = s["b"]
            if h["amsgrad"]:
                s["c"] = np.maximum(s["c"], s["b"])
                v = s["c"]
            m_hat = s["a"] / (1.0 - b1 ** k)
            v_hat = v / (1.0 - b2 ** k)
            return w - lr * m_hat / (np.sqrt(v_hat) + h["epsilon"])
        if self.kind == "rmsprop":
            rho = h["rho"]
            s["a"] = rho * s["a"] + (1.0 - rho) * np.square(g)
            u = g / (np.sqrt(s["a"]) + h["epsilon"])
            if h["momentum"] != 0.0:
                s["b"] = h["momentum"] * s["b"] + u
                u = s["b"]
            return w - lr * u
        if self.kind == "adagrad":
            s["acc"] = s["acc"] + np.square(g)
            return w - lr * g / (np.sqrt(s["acc"]) + h["epsilon"])
        raise ValueError(self.kind)


# -- the cases -----------------------------------------------------------------------------
# name -> dict(kind, hyper (reference names), options, reg (kernel regularizers of the two
# Dense layers), schedule, ablate: the option(s) whose removal must change the result).
# The chainrule optimizer is built from the same numbers by `chainrule_optimizer`.
STEP = ("step", dict(base=0.1, every=2, factor=0.5))
EXPO = ("exponential", dict(base=0.02, steps=2, rate=0.3, staircase=False))
EXPO_STAIR = ("exponential", dict(base=0.02, steps=2, rate=0.3, staircase=True))
COSINE = ("cosine", dict(base=0.3, steps=3, alpha=0.1, warmup=2, start=0.05))

CASES = {
    "sgd": dict(kind="sgd", hyper=dict(lr=0.1)),
    "sgd-momentum": dict(kind="sgd", hyper=dict(lr=0.1, momentum=0.9), ablate=dict(momentum=0.0)),
    "sgd-nesterov": dict(kind="sgd", hyper=dict(lr=0.1, momentum=0.8, nesterov=True),
                         ablate=dict(nesterov=False)),
    "sgd-weight-decay": dict(kind="sgd", hyper=dict(lr=0.1), options=dict(weight_decay=0.5),
                             ablate=dict(weight_decay=0.0)),
    "sgd-momentum-weight-decay": dict(kind="sgd", hyper=dict(lr=0.1, momentum=0.7),
                                      options=dict(weight_decay=0.5), ablate=dict(weight_decay=0.0)),
    "sgd-clipvalue": dict(kind="sgd", hyper=dict(lr=0.1, momentum=0.5), options=dict(clipvalue=0.05),
                          ablate=dict(clipvalue=None)),
    "sgd-clipnorm": dict(kind="sgd", hyper=dict(lr=0.1), options=dict(clipnorm=0.2),
                         ablate=dict(clipnorm=None)),
    "sgd-l2": dict(kind="sgd", hyper=dict(lr=0.1), reg=[(0.0, 0.3), None], ablate=dict(reg=[None, None])),
    "sgd-l1": dict(kind="sgd", hyper=dict(lr=0.1), reg=[None, (0.05, 0.0)], ablate=dict(reg=[None, None])),
    # the documented order: penalty, then global-norm scaling, then value clipping
    "sgd-l1l2-clipnorm-clipvalue": dict(kind="sgd", hyper=dict(lr=0.1, momentum=0.9, nesterov=True),
                                        options=dict(clipnorm=0.3, clipvalue=0.04),
                                        reg=[(0.02, 0.1), (0.01, 0.0)], ablate=dict(reg=[None, None])),
    "adam": dict(kind="adam", hyper=dict(lr=0.02, beta_1=0.8, beta_2=0.95, epsilon=1e-6)),
    "adam-amsgrad": dict(kind="adam", hyper=dict(lr=0.02, beta_1=0.8, beta_2=0.5, amsgrad=True),
                         ablate=dict(amsgrad=False)),
    "adam-weight-decay": dict(kind="adam", hyper=dict(lr=0.02), options=dict(weight_decay=0.5),
                              ablate=dict(weight_decay=0.0)),
    "adamw-defaults": dict(kind="adamw", hyper=dict(lr=0.01), ablate=dict(weight_decay=0.0)),
    "adam-amsgrad-clipnorm-l2": dict(kind="adam", hyper=dict(lr=0.02, beta_2=0.5, amsgrad=True),
                                     options=dict(clipnorm=0.1), reg=[(0.0, 0.2), (0.0, 0.2)],
                                     ablate=dict(clipnorm=None)),
    "rmsprop": dict(kind="rmsprop", hyper=dict(lr=0.01)),
    "rmsprop-momentum": dict(kind="rmsprop", hyper=dict(lr=0.01, rho=0.8, momentum=0.5, epsilon=1e-6),
                             ablate=dict(momentum=0.0)),
    "rmsprop-weight-decay-clipvalue": dict(kind="rmsprop", hyper=dict(lr=0.01, momentum=0.3),
                                           options=dict(weight_decay=2.0, clipvalue=0.05),
                                           ablate=dict(clipvalue=None)),
    "adagrad": dict(kind="adagrad", hyper=dict(lr=0.1)),
    "adagrad-accumulator": dict(kind="adagrad", hyper=dict(lr=0.1, initial_accumulator_value=0.01,
                                                           epsilon=1e-6),
                                ablate=dict(initial_accumulator_value=1.0)),
    "adagrad-weight-decay-l1": dict(kind="adagrad", hyper=dict(lr=0.1), options=dict(weight_decay=0.5),
                                    reg=[(0.05, 0.0), None], ablate=dict(weight_decay=0.0)),
    "sgd-momentum-step-decay": dict(kind="sgd", hyper=dict(momentum=0.5), schedule=STEP,
                                    ablate=dict(schedule=None, lr=0.1)),
    "adam-exponential-decay": dict(kind="adam", hyper=dict(amsgrad=True), schedule=EXPO,
                                   ablate=dict(schedule=None, lr=0.02)),
    "rmsprop-exponential-staircase": dict(kind="rmsprop", hyper=dict(momentum=0.5), schedule=EXPO_STAIR,
                                          ablate=dict(schedule=EXPO)),
    "adagrad-cosine-warmup": dict(kind="adagrad", hyper=dict(), schedule=COSINE,
                                  options=dict(clipnorm=0.5), ablate=dict(schedule=None, lr=0.3)),
}

CR_NAMES = {"lr": "learning_rate", "initial_accumulator_value": "initial_accumulator_value"}


def chainrule_optimizer(case):
    kind, hyper = case["kind"], dict(case.get("hyper", {}))
    schedule = case.get("schedule")
    lr = make_schedule(schedule) if schedule is not None else hyper.pop("lr")
    hyper.pop("lr", None)
    cls = {"sgd": cr.optimizers.SGD, "adam": cr.optimizers.Adam, "adamw": cr.optimizers.AdamW,
           "rmsprop": cr.optimizers.RMSprop, "adagrad": cr.optimizers.Adagrad}[kind]
    return cls(lr, **hyper, **case.get("options", {}))


def reference_optimizer(case):
    kind, hyper = case["kind"], dict(case.get("hyper", {}))
    options = dict(case.get("options", {}))
    if kind == "adamw":  # AdamW = Adam with decoupled weight decay, 0.01 by default
        kind = "adam"
        options.setdefault("weight_decay", 0.01)
    regs = {2 * i: r for i, r in enumerate(case.get("reg", [None, None])) if r is not None}
    return ReferenceOptimizer(kind, schedule=case.get("schedule"), regularizers=regs, **hyper, **options)


def ablated(case):
    """The case with its option under test removed (the reference must then differ)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in case.items()}
    for key, value in case["ablate"].items():
        if key in ("reg", "schedule"):
            out[key] = value
        elif key in ("weight_decay", "clipvalue", "clipnorm"):
            out.setdefault("options", {})[key] = value
            if value is None:
                del out["options"][key]
            if case["kind"] == "adamw":
                out["kind"] = "adam"
                out["options"]["weight_decay"] = value
        else:
            out["hyper"][key] = value
    return out


def make_model(case, dtype="float64"):
    regs = [cr.regularizers.L1L2(*r) if r is not None else None for r in case.get("reg", [None, None])]
    model = cr.Sequential([cr.layers.Dense(4, activation="tanh", kernel_regularizer=regs[0]),
                           cr.layers.Dense(2, kernel_regularizer=regs[1])], seed=7, dtype=dtype)
    model.build((3,))
    model.compile(optimizer=chainrule_optimizer(case), loss="mse")
    rng = np.random.default_rng(11)
    w = model.get_weights()
    w[1::2] = [rng.normal(scale=0.2, size=b.shape) for b in w[1::2]]  # non-zero biases
    model.set_weights(w)
    return model


def batches(n_steps=5, size=6, seed=2):
    """Fixed batches whose scale changes from step to step (so AMSGrad's running maximum,
    clipping and the accumulators see different gradient sizes)."""
    rng = np.random.default_rng(seed)
    scales = [2.0, 0.5, 3.0, 0.3, 1.0, 1.5]
    return [(rng.normal(size=(size, 3)) * scales[s % len(scales)], rng.normal(size=(size, 2)) * 2.0)
            for s in range(n_steps)]


def run_reference(case, w0, grads_per_step):
    """The reference's weights after each step, from w0 and the recorded loss gradients."""
    ref = reference_optimizer(case)
    w, out = [np.array(a, dtype=np.float64) for a in w0], []
    for g in grads_per_step:
        w = ref.step(w, g)
        out.append(w)
    return out


def train_and_record(model, data):
    """Weights before, loss gradients before each step, and weights after each step."""
    w0 = [a.copy() for a in model.get_weights()]
    grads, after = [], []
    for x, y in data:
        before = model.get_weights()
        _, g = model.compute_gradients(x, y)
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)  # compute_gradients changes no weight
        grads.append([np.array(a, dtype=np.float64) for a in g])
        model.train_on_batch(x, y)
        after.append(model.get_weights())
    return w0, grads, after


def displacement_error(got, want, w0):
    """max |(got - w0) - (want - w0)| / max |want - w0| over one tensor, and that size."""
    d_want = np.asarray(want, np.float64) - np.asarray(w0, np.float64)
    d_got = np.asarray(got, np.float64) - np.asarray(w0, np.float64)
    size = np.abs(d_want).max()
    return np.abs(d_got - d_want).max() / max(size, 1e-300), size


# Measured worst case over these cases: 5.5e-15 of the displacement (adamw-defaults) and
# 7.0e-16 of the weights (sgd-weight-decay): rounding only, as the C++ loop and this reference
# order the same float64 operations a little differently. Tolerances ~150x above that.
DISP_RTOL = 1e-12
WEIGHT_RTOL = 1e-13


@pytest.mark.parametrize("name", list(CASES))
def test_float64_steps_match_numpy_reference(name):
    case = CASES[name]
    model = make_model(case)
    w0, grads, after = train_and_record(model, batches())
    want = run_reference(case, w0, grads)
    for step, (got_w, want_w) in enumerate(zip(after, want)):
        for i, (got, ref) in enumerate(zip(got_w, want_w)):
            err, _ = displacement_error(got, ref, w0[i])
            assert err <= DISP_RTOL, f"{name} step {step + 1} tensor {i}: displacement rel err {err:.2e}"
            werr = np.abs(got - ref).max() / np.abs(ref).max()
            assert werr <= WEIGHT_RTOL, f"{name} step {step + 1} tensor {i}: weight rel err {werr:.2e}"
    # Every tensor moved, by far more than the tolerance: a no-op optimizer fails.
    for i, (a, b) in enumerate(zip(after[-1], w0)):
        moved = np.linalg.norm(a - b)
        assert moved > 1e-4 * max(np.linalg.norm(b), 1e-3), f"{name}: tensor {i} did not move ({moved:.2e})"
    # The option under test matters here: without it the reference ends elsewhere.
    if "ablate" in case:
        other = run_reference(ablated(case), w0, grads)[-1]
        diff = max(displacement_error(o, r, w)[0] for o, r, w in zip(other, want[-1], w0))
        assert diff > 1e4 * DISP_RTOL, f"{name}: removing {sorted(case['ablate'])} changes only {diff:.2e}"


def test_reference_optimizer_hand_computed_single_steps():
    """The reference itself on one scalar, against values worked out by hand."""
    w, g = [np.array([2.0])], [np.array([0.5])]
    sgd = ReferenceOptimizer("sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.5)
    # decay: 2 - 0.1*0.5*2 = 1.9; v = 0.5; w = 1.9 - 0.1*(0.5 + 0.9*0.5) = 1.805
    assert sgd.step(w, g)[0][0] == pytest.approx(1.805, rel=1e-15)
    adam = ReferenceOptimizer("adam", lr=0.1, epsilon=0.0)
    # first Adam step: m_hat = g, v_hat = g^2: w -= lr * sign(g)
    assert adam.step(w, g)[0][0] == pytest.approx(1.9, rel=1e-15)
    rms = ReferenceOptimizer("rmsprop", lr=0.1, rho=0.75, epsilon=0.0)
    # s = 0.25*0.25 = 0.0625, sqrt = 0.25, u = 2: w = 2 - 0.2
    assert rms.step(w, g)[0][0] == pytest.approx(1.8, rel=1e-15)
    ada = ReferenceOptimizer("adagrad", lr=0.1, initial_accumulator_value=0.0, epsilon=0.0)
    assert ada.step(w, g)[0][0] == pytest.approx(1.9, rel=1e-15)
    clip = ReferenceOptimizer("sgd", lr=1.0, clipnorm=0.5, regularizers={0: (0.1, 0.25)})
    # g + 0.1*sign(2) + 2*0.25*2 = 1.6 (with a second tensor's 1.2: norm 2), scaled by 0.5/2
    out = clip.step([np.array([2.0]), np.array([1.0])], [np.array([0.5]), np.array([1.2])])
    assert out[0][0] == pytest.approx(2.0 - 0.4, rel=1e-15) and out[1][0] == pytest.approx(1.0 - 0.3, rel=1e-15)


def test_l1_subgradient_is_zero_at_zero():
    """A kernel entry that is exactly 0 gets no L1 push (sign(0) = 0), in both."""
    case = dict(kind="sgd", hyper=dict(lr=0.1), reg=[(0.5, 0.0), None])
    model = make_model(case)
    w = model.get_weights()
    w[0][0, :] = 0.0
    model.set_weights(w)
    x, y = batches(1)[0]
    _, g = model.compute_gradients(x, y)
    model.train_on_batch(x, y)
    want = run_reference(case, w, [g])[0]
    np.testing.assert_allclose(model.get_weights()[0][0, :], want[0][0, :], rtol=1e-14, atol=1e-17)
    np.testing.assert_allclose(want[0][0, :], -0.1 * g[0][0, :], rtol=1e-15)


def test_reduce_lr_scale_multiplies_every_step():
    """The plateau callback's lr_scale multiplies the scheduled rate of each later step."""
    case = dict(kind="adam", hyper=dict(), schedule=COSINE)
    model = make_model(case)
    model._core.set_lr_scale(0.25)
    w0, grads, after = train_and_record(model, batches())
    spec = ("cosine", {**COSINE[1], "base": COSINE[1]["base"] * 0.25, "start": COSINE[1]["start"] * 0.25})
    want = run_reference({**case, "schedule": spec}, w0, grads)
    for got, ref, w in zip(after[-1], want[-1], w0):
        assert displacement_error(got, ref, w)[0] <= DISP_RTOL
