"""Learning-rate schedules against a reference written here from the documented formulas
(no torch needed): the Python ``schedule(t)``, the rate the C++ core uses at each step
(``_core.current_learning_rate()`` before the step, step t = 0 first) and History's ``lr``
(the rate of each epoch's last step), over ~50 steps that cross every regime (drops,
staircase plateaus, warm-up, cosine decay, the constant tail).

``reference_rate`` is also the schedule oracle of test_optimizer_reference.py, which checks
that the steps really use these rates (the weights, not only the reported number)."""

import math

import numpy as np
import pytest

import chainrule as cr


def reference_rate(spec, t):
    """The learning rate at optimizer step t (t = 0 for the first update) of a schedule
    given as (kind, params). Written from the formulas, not from chainrule's code:
      step:        base * factor^floor(t / every)
      exponential: base * rate^(t / steps)      (staircase: floor(t / steps))
      cosine:      linear warm-up from `start` to base over `warmup` steps, then
                   alpha*base + (1-alpha)*base * (1 + cos(pi * min(t-warmup, steps)/steps)) / 2
    """
    kind, p = spec
    t = float(t)
    if kind == "constant":
        return p["base"]
    if kind == "step":
        return p["base"] * p["factor"] ** math.floor(t / p["every"])
    if kind == "exponential":
        e = t / p["steps"]
        if p["staircase"]:
            e = math.floor(e)
        return p["base"] * p["rate"] ** e
    if kind == "cosine":
        warm = p["warmup"]
        if t < warm:
            frac = t / warm
            return p["start"] + frac * (p["base"] - p["start"])
        progress = min(t - warm, p["steps"]) / p["steps"]
        cos_part = (1.0 + math.cos(math.pi * progress)) / 2.0
        return p["base"] * (p["alpha"] + (1.0 - p["alpha"]) * cos_part)
    raise ValueError(kind)


def make_schedule(spec):
    """The chainrule schedule object for a reference spec (None for a constant rate)."""
    kind, p = spec
    if kind == "constant":
        return p["base"]
    if kind == "step":
        return cr.schedules.StepDecay(p["base"], drop_every=p["every"], factor=p["factor"])
    if kind == "exponential":
        return cr.schedules.ExponentialDecay(p["base"], decay_steps=p["steps"], decay_rate=p["rate"],
                                             staircase=p["staircase"])
    if kind == "cosine":
        return cr.schedules.CosineDecay(p["base"], decay_steps=p["steps"], alpha=p["alpha"],
                                        warmup_steps=p["warmup"], warmup_start=p["start"])
    raise ValueError(kind)


SPECS = {
    "step": ("step", dict(base=0.2, every=7, factor=0.5)),
    "step-fractional-period": ("step", dict(base=0.3, every=2.5, factor=0.8)),
    "exponential": ("exponential", dict(base=0.2, steps=10, rate=0.3, staircase=False)),
    "exponential-staircase": ("exponential", dict(base=0.2, steps=10, rate=0.3, staircase=True)),
    "cosine": ("cosine", dict(base=0.1, steps=30, alpha=0.0, warmup=0, start=0.0)),
    "cosine-warmup": ("cosine", dict(base=0.1, steps=30, alpha=0.05, warmup=8, start=0.01)),
}

N_STEPS = 50
# The C++ and Python formulas and this reference differ only in rounding (a few ulp).
RATE_RTOL = 1e-13


def test_reference_sanity_known_values():
    """The reference itself, on values worked out by hand."""
    assert [reference_rate(SPECS["step"], t) for t in (0, 6, 7, 13, 14)] == [0.2, 0.2, 0.1, 0.1, 0.05]
    assert reference_rate(SPECS["exponential"], 5) == pytest.approx(0.2 * math.sqrt(0.3), rel=1e-15)
    assert reference_rate(SPECS["exponential-staircase"], 19) == pytest.approx(0.06, rel=1e-15)
    c = SPECS["cosine-warmup"]
    assert reference_rate(c, 0) == 0.01
    assert reference_rate(c, 4) == pytest.approx(0.055, rel=1e-15)
    assert reference_rate(c, 8) == pytest.approx(0.1, rel=1e-15)
    assert reference_rate(c, 8 + 15) == pytest.approx(0.1 * (0.05 + 0.95 * 0.5), rel=1e-15)
    assert reference_rate(c, 8 + 30) == pytest.approx(0.005, rel=1e-15)
    assert reference_rate(c, 49) == pytest.approx(0.005, rel=1e-15)


@pytest.mark.parametrize("name", list(SPECS))
def test_schedule_call_matches_reference(name):
    spec = SPECS[name]
    sched = make_schedule(spec)
    want = [reference_rate(spec, t) for t in range(N_STEPS)]
    np.testing.assert_allclose([sched(t) for t in range(N_STEPS)], want, rtol=RATE_RTOL, atol=0)
    assert len(set(np.round(want, 12))) > 3  # the schedule does change over these steps


def _tiny_model(optimizer, dtype="float64"):
    model = cr.Sequential([cr.layers.Dense(4, activation="tanh"), cr.layers.Dense(2)], seed=3, dtype=dtype)
    model.build((3,))
    model.compile(optimizer=optimizer, loss="mse")
    return model


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(SPECS))
def test_core_rate_at_each_step_matches_reference(name, dtype):
    """The rate the core uses for step t, read before that step, for t = 0 .. 49."""
    spec = SPECS[name]
    model = _tiny_model(cr.optimizers.SGD(make_schedule(spec), momentum=0.5), dtype)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    got = []
    for t in range(N_STEPS):
        assert model._core.step_count == t
        got.append(model._core.current_learning_rate())
        model.train_on_batch(x, y)
    want = [reference_rate(spec, t) for t in range(N_STEPS)]
    np.testing.assert_allclose(got, want, rtol=RATE_RTOL, atol=0)


@pytest.mark.parametrize("name", list(SPECS))
def test_history_lr_is_the_reference_rate_of_each_epochs_last_step(name):
    spec = SPECS[name]
    model = _tiny_model(cr.optimizers.Adam(make_schedule(spec)))
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 2))
    # 20 samples in batches of 6: 4 steps per epoch (the last one partial), 12 epochs.
    h = model.fit(x, y, epochs=12, batch_size=6, verbose=0, seed=0, gradient_warnings=False)
    want = [reference_rate(spec, 4 * (e + 1) - 1) for e in range(12)]
    np.testing.assert_allclose(h.history["lr"], want, rtol=RATE_RTOL, atol=0)
    assert model._core.step_count == 48


def test_step_count_resumes_the_schedule():
    """set_step_count (the resume hook) moves the schedule to that step."""
    spec = SPECS["cosine-warmup"]
    model = _tiny_model(cr.optimizers.SGD(make_schedule(spec)))
    for t in (0, 5, 8, 20, 37, 38, 100):
        model._core.set_step_count(t)
        assert model._core.current_learning_rate() == pytest.approx(reference_rate(spec, t), rel=RATE_RTOL)
