"""Fuzz suite for the public API (hypothesis, derandomized: every run draws the same cases).

Every case ends in a result or a ValueError/TypeError -- never a signal, a hang, a
MemoryError or an exception of another type -- and the invariants below hold:

* constructors of every layer, optimizer, schedule, regularizer, callback and activation,
  with arguments drawn from a hostile mix (0, negative and huge ints such as 2**31, 2**63,
  10**400; nan, inf, -0.0, 1e308, denormals; bools, None, strings, wrong-length tuples,
  numpy scalars, arbitrary objects). What they accept has a finite, JSON-serialisable
  config that round-trips through from_config. In process (pure Python).
* building a model around such a layer on a hostile input shape, then predicting on a tiny
  input. Sizes beyond the core's limit must be refused up front with ValueError: a MemoryError
  counts as a failure. In a subprocess with a 4 GiB address-space limit (a case that kills
  the interpreter -- SIGFPE, abort, OOM -- is reported, and the run resumes after it).
* compile with optimizer / loss / metrics drawn from names, objects, configs and garbage.
* fit / evaluate / predict / train_on_batch / compute_gradients / set_weights with hostile
  arrays (dtypes, shapes, NaN/inf, values beyond float32, bad labels and targets) and
  hostile keyword arguments. Data the model cannot represent or that breaks the loss's
  domain must be refused with ValueError; a refused call leaves the weights unchanged; an
  accepted call on tame data leaves finite weights and returns finite numbers. In a
  subprocess (a huge batch_size could allocate without bound).
* cr.set_num_threads with hostile values (subprocess), and a round trip in process.

Reproduce a subprocess case: ``python tests/test_fuzz_api.py show TARGET INDEX`` prints the
case and runs it with the full traceback (the failure messages print this command).
"""

from __future__ import annotations

import decimal
import faulthandler
import fractions
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import chainrule as cr

OK = ("ok", "ValueError", "TypeError")
F32_MAX = float(np.finfo(np.float32).max)
CHILD_MEMORY = 4 << 30          # RLIMIT_AS of the subprocess: a huge allocation is a MemoryError
CASE_TIMEOUT = 30               # seconds one subprocess case may take before it counts as a hang
# Few OpenMP threads and malloc arenas in the children: on a many-core machine each thread's
# stack and arena would otherwise reserve gigabytes of address space under the 4 GiB limit.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "2", "MALLOC_ARENA_MAX": "2"}

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink])


# =========================================================================================
# Hostile values
# =========================================================================================

class _Weird:
    """An object that is neither a number nor a string (but has a harmless repr)."""

    def __repr__(self):
        return "_Weird()"


def _lambda():
    return 1


HUGE_INTS = [2**31, 2**32, 2**63, -2**63, 10**400, 46341, 65536]  # 46341**2 > 2**31 - 1
HOSTILE_SCALARS = [
    0, -1, 1, 2, 3, 7, -2**31, 2**31 - 1, 2**63 - 1, *HUGE_INTS,
    float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 0.5, 1.0, 1.5, -1e-7, 1e308, -1e308,
    1e-308, 5e-324, 1e39, 1e-45,
    True, False, None,
    "", "2", "0.1", "nan", "relu", "same", "valid", "sgd", "mse", "\x00", "a" * 40,
    b"bytes", 1 + 2j, fractions.Fraction(1, 3), decimal.Decimal("0.1"),
    np.int64(2), np.int32(-1), np.int8(3), np.uint64(2**64 - 1), np.float32(0.5), np.float64("nan"),
    np.float16(65504), np.float64(1e39), np.bool_(True), np.array(2), np.array([1, 2]),
    _Weird(), _lambda, {}, set(), [], (), {"class_name": "SGD"}, {"name": "relu"},
]
HOSTILE_SEQS = [(1,), (2, 2), [2, 2], (1, 2, 3), (0, 0), (-1, 2), (2**31, 1), (1.5, 2), ("a", 1),
                [None], [[1]], (True, 2), (np.int64(2), np.int64(3)), (10**400, 1), (float("nan"),)]

hostile = st.one_of(
    st.sampled_from(HOSTILE_SCALARS),
    st.sampled_from(HOSTILE_SEQS),
    st.integers(),
    st.floats(),
    st.text(max_size=6),
    st.lists(st.sampled_from(HOSTILE_SCALARS[:30]), max_size=4),
    st.tuples(st.sampled_from(HOSTILE_SCALARS[:30]), st.sampled_from(HOSTILE_SCALARS[:30])),
)


# Rare and occasional events. (hypothesis draws the low end of integers() far more often than
# uniformly, so these are sampled lists with the event last.)
RARE = st.sampled_from([False] * 11 + [True])
SOMETIMES = st.sampled_from([False] * 3 + [True])


# -- plausible values per parameter ---------------------------------------------------------
small_int = st.integers(1, 6)
small_pair = st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)),
                       st.lists(st.integers(1, 3), min_size=2, max_size=2))
activation_good = st.sampled_from([None, "relu", "softmax", "sigmoid", "tanh", "linear", "leaky_relu",
                                   "ReLU", "identity", cr.activations.LeakyReLU(0.2),
                                   {"name": "leaky_relu", "alpha": 0.3}])
init_good = st.sampled_from(list(cr.initializers.NAMES))
reg_good = st.sampled_from([None, "l1", "l2", "l1_l2", cr.regularizers.L2(0.01),
                            {"class_name": "L1L2", "l1": 0.1, "l2": 0.0}])
name_good = st.one_of(st.none(), st.text(max_size=8))
shape_good = st.one_of(st.none(), st.tuples(small_int), st.tuples(small_int, small_int, small_int))
unit_float = st.floats(0.0, 0.99)
pos_float = st.floats(1e-6, 10.0)
schedule_good = st.sampled_from([0.01, 0.1, cr.schedules.StepDecay(0.1, 10),
                                 {"class_name": "CosineDecay", "initial_learning_rate": 0.1, "decay_steps": 5}])

L = cr.layers
O = cr.optimizers
S = cr.schedules
C = cr.callbacks
R = cr.regularizers

# target name -> (callable, {param: plausible strategy}, required params)
CONSTRUCTORS = {
    "Dense": (L.Dense, {"units": small_int, "activation": activation_good, "kernel_initializer": init_good,
                        "bias_initializer": init_good, "kernel_regularizer": reg_good, "name": name_good,
                        "input_shape": shape_good}, ["units"]),
    "Conv2D": (L.Conv2D, {"filters": small_int, "kernel_size": small_pair, "strides": small_pair,
                          "padding": st.sampled_from(["valid", "same", "SAME"]), "activation": activation_good,
                          "kernel_initializer": init_good, "bias_initializer": init_good,
                          "kernel_regularizer": reg_good, "input_shape": shape_good, "name": name_good},
               ["filters", "kernel_size"]),
    "MaxPooling2D": (L.MaxPooling2D, {"pool_size": small_pair, "strides": st.one_of(st.none(), small_pair),
                                      "padding": st.sampled_from(["valid", "same"]), "input_shape": shape_good,
                                      "name": name_good}, []),
    "AveragePooling2D": (L.AveragePooling2D, {"pool_size": small_pair, "strides": st.one_of(st.none(), small_pair),
                                              "padding": st.sampled_from(["valid", "same"]),
                                              "input_shape": shape_good, "name": name_good}, []),
    "Flatten": (L.Flatten, {"name": name_good, "input_shape": shape_good}, []),
    "Reshape": (L.Reshape, {"target_shape": st.lists(st.sampled_from([-1, 1, 2, 3, 4]), min_size=1, max_size=3),
                            "input_shape": shape_good, "name": name_good}, ["target_shape"]),
    "Dropout": (L.Dropout, {"rate": unit_float, "input_shape": shape_good, "name": name_good}, ["rate"]),
    "BatchNormalization": (L.BatchNormalization, {"axis": st.sampled_from([-1, 1, 2, 3]), "momentum": unit_float,
                                                  "epsilon": pos_float, "center": st.booleans(),
                                                  "scale": st.booleans(), "gamma_initializer": init_good,
                                                  "beta_initializer": init_good,
                                                  "moving_mean_initializer": init_good,
                                                  "moving_variance_initializer": st.sampled_from(["ones", "zeros"]),
                                                  "gamma_regularizer": reg_good, "beta_regularizer": reg_good,
                                                  "trainable": st.booleans(), "input_shape": shape_good,
                                                  "name": name_good}, []),
    "GlobalAveragePooling2D": (L.GlobalAveragePooling2D, {"keepdims": st.booleans(), "input_shape": shape_good,
                                                          "name": name_good}, []),
    "ActivationLayer": (L.Activation, {"activation": activation_good, "input_shape": shape_good,
                                       "name": name_good, "trainable": st.booleans()}, ["activation"]),
    "Input": (L.Input, {"shape": shape_good, "name": name_good}, ["shape"]),
    "SGD": (O.SGD, {"learning_rate": schedule_good, "momentum": unit_float, "nesterov": st.booleans(),
                    "clipvalue": st.one_of(st.none(), pos_float), "clipnorm": st.one_of(st.none(), pos_float),
                    "weight_decay": unit_float}, []),
    "Adam": (O.Adam, {"learning_rate": schedule_good, "beta_1": unit_float, "beta_2": unit_float,
                      "epsilon": pos_float, "amsgrad": st.booleans(), "clipvalue": st.one_of(st.none(), pos_float),
                      "clipnorm": st.one_of(st.none(), pos_float), "weight_decay": unit_float}, []),
    "AdamW": (O.AdamW, {"learning_rate": schedule_good, "weight_decay": unit_float, "beta_1": unit_float,
                        "epsilon": pos_float, "amsgrad": st.booleans()}, []),
    "RMSprop": (O.RMSprop, {"learning_rate": schedule_good, "rho": unit_float, "momentum": unit_float,
                            "epsilon": pos_float, "clipvalue": st.one_of(st.none(), pos_float)}, []),
    "Adagrad": (O.Adagrad, {"learning_rate": schedule_good, "initial_accumulator_value": unit_float,
                            "epsilon": pos_float, "clipnorm": st.one_of(st.none(), pos_float)}, []),
    "StepDecay": (S.StepDecay, {"initial_learning_rate": pos_float, "drop_every": pos_float,
                                "factor": st.floats(0.01, 1.0)}, ["initial_learning_rate", "drop_every"]),
    "ExponentialDecay": (S.ExponentialDecay, {"initial_learning_rate": pos_float, "decay_steps": pos_float,
                                              "decay_rate": st.floats(0.01, 1.0), "staircase": st.booleans()},
                         ["initial_learning_rate", "decay_steps", "decay_rate"]),
    "CosineDecay": (S.CosineDecay, {"initial_learning_rate": pos_float, "decay_steps": pos_float,
                                    "alpha": unit_float, "warmup_steps": st.integers(0, 10),
                                    "warmup_start": unit_float}, ["initial_learning_rate", "decay_steps"]),
    "L1": (R.L1, {"l1": unit_float}, []),
    "L2": (R.L2, {"l2": unit_float}, []),
    "L1L2": (R.L1L2, {"l1": unit_float, "l2": unit_float}, []),
    "LeakyReLU": (cr.activations.LeakyReLU, {"alpha": unit_float}, []),
    "Activation": (cr.activations.Activation, {"name": st.sampled_from(list(cr.activations.NAMES)),
                                               "alpha": st.one_of(st.none(), unit_float)}, ["name"]),
    "EarlyStopping": (C.EarlyStopping, {"monitor": st.sampled_from(["loss", "val_loss", "val_accuracy"]),
                                        "min_delta": unit_float, "patience": st.integers(0, 5),
                                        "mode": st.sampled_from(["auto", "min", "max"]),
                                        "restore_best_weights": st.booleans(),
                                        "verbose": st.sampled_from([0, 1])}, []),
    "ModelCheckpoint": (C.ModelCheckpoint, {"filepath": st.sampled_from(["m.crm", "m-{epoch:02d}.crm",
                                                                         "m-{loss:.3f}.crm"]),
                                            "monitor": st.sampled_from(["loss", "val_loss"]),
                                            "save_best_only": st.booleans(),
                                            "mode": st.sampled_from(["auto", "min", "max"]),
                                            "verbose": st.sampled_from([0, 1])}, ["filepath"]),
    "ReduceLROnPlateau": (C.ReduceLROnPlateau, {"monitor": st.sampled_from(["loss", "val_loss"]),
                                                "factor": st.floats(0.01, 0.99), "patience": st.integers(0, 5),
                                                "mode": st.sampled_from(["auto", "min", "max"]),
                                                "min_delta": unit_float, "cooldown": st.integers(0, 3),
                                                "min_lr": unit_float, "verbose": st.sampled_from([0, 1])}, []),
    "LambdaCallback": (C.LambdaCallback, {"on_epoch_end": st.sampled_from([None, lambda e, logs: None]),
                                          "on_train_begin": st.sampled_from([None, lambda logs: None])}, []),
    # identifier lookups
    "activations.get": (cr.activations.get, {"identifier": activation_good}, ["identifier"]),
    "initializers.get": (cr.initializers.get, {"name": init_good}, ["name"]),
    "regularizers.get": (cr.regularizers.get, {"identifier": reg_good}, ["identifier"]),
    "losses.get": (cr.losses.get, {"identifier": st.sampled_from(list(cr.losses.NAMES) + ["mse", "BCE"])},
                   ["identifier"]),
    "optimizers.get": (cr.optimizers.get, {"identifier": st.sampled_from(
        ["sgd", "Adam", "adamw", "rmsprop", "adagrad", {"class_name": "SGD", "learning_rate": 0.1},
         {"class_name": "Adam", "learning_rate": {"class_name": "StepDecay", "initial_learning_rate": 0.1,
                                                  "drop_every": 3}}])}, ["identifier"]),
    "schedules.get": (cr.schedules.get, {"config": st.sampled_from(
        [{"class_name": "StepDecay", "initial_learning_rate": 0.1, "drop_every": 3},
         {"class_name": "ExponentialDecay", "initial_learning_rate": 0.1, "decay_steps": 3, "decay_rate": 0.5}])},
        ["config"]),
    "Sequential": (cr.Sequential, {"layers": st.sampled_from([None, []]),
                                   "name": name_good, "dtype": st.sampled_from(["float32", "float64"]),
                                   "seed": st.one_of(st.none(), st.integers(0, 2**32))}, []),
}


@st.composite
def hostile_kwargs(draw, target, hostile_values=hostile):
    """kwargs for CONSTRUCTORS[target]: optional parameters sometimes left out, the others
    plausible except for up to three drawn as hostile; now and then an unknown keyword."""
    _, params, required = CONSTRUCTORS[target]
    names = [p for p in params if p in required or draw(st.booleans())]
    n_bad = min(len(names), draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3])))
    bad = set(draw(st.permutations(names))[:n_bad]) if n_bad else set()
    kwargs = {p: draw(hostile_values if p in bad else params[p]) for p in names}
    if draw(RARE):
        kwargs["no_such_argument"] = draw(hostile_values)
    return kwargs


@st.composite
def some_kwargs(draw, good, bad):
    """Keyword arguments: each key of ``good`` sometimes present, plausible except for up to
    two drawn from ``bad``."""
    names = [k for k in good if draw(st.booleans())]
    n_bad = min(len(names), draw(st.sampled_from([0, 0, 0, 1, 1, 2])))
    hostile_keys = set(draw(st.permutations(names))[:n_bad]) if n_bad else set()
    return {k: draw(bad[k] if k in hostile_keys else good[k]) for k in names}


# =========================================================================================
# Outcomes
# =========================================================================================

def _src(v, depth=0):
    """Python source that recreates ``v`` (for repro lines)."""
    if depth > 4:
        return "..."
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, int):
        if v.bit_length() > 64:
            for b in (2, 10):
                k = round(math.log(abs(v), b))
                if abs(v) == b**k:
                    return f"{'-' if v < 0 else ''}{b}**{k}"
            return f"int({hex(v)!r}, 16)"
        return repr(v)
    if isinstance(v, float):
        return f"float({repr(v)!r})" if not math.isfinite(v) else repr(v)
    if isinstance(v, np.ndarray):
        if v.dtype == object or v.size > 64:
            return f"<ndarray shape={v.shape} dtype={v.dtype}>"
        return f"np.array({_src(v.tolist(), depth + 1)}, dtype={str(v.dtype)!r})"
    if isinstance(v, np.generic):
        return f"np.{type(v).__name__}({_src(v.item(), depth + 1)})"
    if isinstance(v, (list, tuple)):
        inner = ", ".join(_src(x, depth + 1) for x in v)
        if not isinstance(v, tuple):
            return f"[{inner}]"
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_src(k, depth + 1)}: {_src(x, depth + 1)}" for k, x in v.items()) + "}"
    if isinstance(v, (str, bytes, complex)):
        return repr(v)
    if isinstance(v, fractions.Fraction):
        return f"Fraction({v.numerator}, {v.denominator})"
    if isinstance(v, decimal.Decimal):
        return f"Decimal({str(v)!r})"
    if isinstance(v, set):
        return "set()" if not v else repr(v)
    if callable(v) and getattr(v, "__name__", "") == "<lambda>":
        return "lambda *a: None"
    if callable(v) and getattr(v, "__name__", "") == "_lambda":
        return "(lambda: 1)"
    if isinstance(v, (cr.activations.Activation, cr.regularizers.Regularizer, cr.schedules.LearningRateSchedule,
                      cr.optimizers.Optimizer)):
        return repr(v)
    return repr(v) if len(repr(v)) < 80 else f"<{type(v).__name__}>"


def _call_src(fn_name, kwargs):
    return f"{fn_name}(" + ", ".join(f"{k}={_src(v)}" for k, v in kwargs.items()) + ")"


def _outcome(exc):
    if isinstance(exc, (ValueError, TypeError)):
        return "ValueError" if isinstance(exc, ValueError) else "TypeError"
    return type(exc).__name__


def _all_finite_numbers(obj):
    """Every float in a (nested) config is finite, and no bool sits where a number should."""
    if isinstance(obj, dict):
        return all(_all_finite_numbers(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_all_finite_numbers(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


def _check_constructed(target, obj):
    """Invariants of an accepted construction: printable, and a finite JSON config that
    rebuilds an equal object."""
    repr(obj)
    cfg = None
    if isinstance(obj, cr.layers.Layer):
        cfg = obj.get_config()
        again = type(obj).from_config(json.loads(json.dumps(cfg, allow_nan=False)))
        assert again.get_config() == cfg
    elif isinstance(obj, cr.optimizers.Optimizer):
        cfg = obj.get_config()
        again = cr.optimizers.get(json.loads(json.dumps(cfg, allow_nan=False)))
        assert again.get_config() == cfg
        core = obj._core_config()
        assert _all_finite_numbers(core), core
        assert 0 < obj.base_learning_rate < math.inf
    elif isinstance(obj, cr.schedules.LearningRateSchedule):
        cfg = obj.get_config()
        again = cr.schedules.get(json.loads(json.dumps(cfg, allow_nan=False)))
        assert again.get_config() == cfg
        for step in (0, 1, 7, 1000):
            assert math.isfinite(obj(step)) and obj(step) >= 0, (step, obj(step))
    elif isinstance(obj, cr.regularizers.Regularizer):
        cfg = obj.get_config()
        again = cr.regularizers.get(json.loads(json.dumps(cfg, allow_nan=False)))
        assert again.get_config() == cfg
    elif isinstance(obj, cr.activations.Activation):
        cfg = obj.get_config()
        assert cr.activations.get(json.loads(json.dumps(cfg, allow_nan=False))) == obj
        assert math.isfinite(obj.alpha) and obj.alpha >= 0
    elif isinstance(obj, cr.callbacks.Callback):
        for attr in ("min_delta", "factor", "min_lr", "patience", "cooldown"):
            v = getattr(obj, attr, 0)
            assert not isinstance(v, bool) and math.isfinite(v) and v >= 0, (attr, v)
    if cfg is not None:
        assert _all_finite_numbers(cfg), cfg
        json.dumps(cfg, allow_nan=False)


# =========================================================================================
# 1. Constructors (in process: pure Python)
# =========================================================================================

@pytest.mark.parametrize("target", list(CONSTRUCTORS))
@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_constructor_fuzz(target, data):
    fn = CONSTRUCTORS[target][0]
    kwargs = data.draw(hostile_kwargs(target), label="kwargs")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = fn(**kwargs)
    except (ValueError, TypeError):
        return
    except BaseException as e:  # noqa: BLE001 -- any other type is the failure under test
        raise AssertionError(f"{_call_src(target, kwargs)} raised {type(e).__name__}: {e}") from e
    _check_constructed(target, obj)


# =========================================================================================
# The subprocess runner: a target's cases are drawn (deterministically) in the child, run one
# by one, and each outcome is appended as a JSON line to a file before the next starts; a
# case that kills the child is found as the one begun but not ended, and a new child resumes
# after it.
# =========================================================================================

def _gather(strategy, n):
    """The first ``n`` examples hypothesis draws from ``strategy`` (same list every run)."""
    out = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(strategy)
    def gather(case):
        out.append(case)

    gather()
    return out


def _child(target, start, out_path, show=False):
    """Run the cases of ``target`` from index ``start`` (child process entry point)."""
    strategy, n, run, describe, limit_memory = SUBPROCESS_TARGETS[target]
    if limit_memory:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    cases = _gather(strategy, n) if strategy is not None else list(n)
    if show:
        case = cases[start]
        print(f"case {target}[{start}]:\n{describe(case)}", flush=True)
        print("outcome:", run(case, raise_errors=True), flush=True)
        return
    fd = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def emit(**rec):
        os.write(fd, (json.dumps(rec) + "\n").encode())

    emit(event="start", count=len(cases))
    for i in range(start, len(cases)):
        emit(event="begin", i=i, repro=describe(cases[i]))
        faulthandler.dump_traceback_later(CASE_TIMEOUT, exit=True)
        t0 = time.perf_counter()
        try:
            outcome = run(cases[i])
        except BaseException as e:  # noqa: BLE001 -- the runner's own bug: report, keep going
            outcome = f"runner error {type(e).__name__}: {e}"
        faulthandler.cancel_dump_traceback_later()
        emit(event="end", i=i, outcome=outcome, seconds=round(time.perf_counter() - t0, 3))
    emit(event="done")
    os.close(fd)


def _run_subprocess_target(target, max_restarts=12, timeout=240):
    """Run every case of ``target`` in child processes: ({index: outcome}, {index: repro},
    number of cases)."""
    results, repros = {}, {}
    start, restarts, count = 0, 0, None
    deadline = time.monotonic() + timeout
    while True:
        with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as f:
            out_path = f.name
        try:
            try:
                cmd = [sys.executable, os.path.abspath(__file__), "child", target, str(start), out_path]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=CHILD_ENV,
                                      timeout=max(deadline - time.monotonic(), 10))
                rc, err = proc.returncode, proc.stderr
            except subprocess.TimeoutExpired as e:
                err = e.stderr or ""
                rc, err = "timeout", err.decode(errors="replace") if isinstance(err, bytes) else err
            with open(out_path) as f:
                records = [json.loads(line) for line in f if line.strip()]
        finally:
            os.unlink(out_path)
        begun = None
        done = False
        for r in records:
            if r["event"] == "start":
                assert count in (None, r["count"]), "the child drew different cases on a rerun"
                count = r["count"]
            elif r["event"] == "begin":
                begun = r["i"]
                repros[begun] = r["repro"]
            elif r["event"] == "end":
                results[r["i"]] = r["outcome"]
                begun = None
            elif r["event"] == "done":
                done = True
        if done and rc == 0:
            return results, repros, count
        if begun is None:  # died outside a case: the runner itself failed
            raise AssertionError(f"fuzz child for {target!r} failed outside a case (rc={rc}):\n{err[-3000:]}")
        if rc == "timeout" or "Timeout (" in err:
            why = "hang (no result within the time limit)"
        elif isinstance(rc, int) and rc < 0:
            why = f"killed by {signal.Signals(-rc).name}"
        else:
            why = f"interpreter died (exit status {rc}): {err.strip().splitlines()[-1] if err.strip() else ''}"
        results[begun] = why
        restarts += 1
        start = begun + 1
        if restarts > max_restarts or time.monotonic() > deadline or (count is not None and start >= count):
            if count is not None and start < count:
                results[-1] = f"stopped after {restarts} crashes; cases {start}..{count - 1} not run"
            return results, repros, count


def _assert_subprocess_target(target, max_shown=25):
    results, repros, count = _run_subprocess_target(target)
    bad = {i: o for i, o in results.items() if o not in OK}
    assert count and len(results) >= count or bad
    if bad:
        lines = [f"{len(bad)} of {count} {target} cases failed "
                 f"(outcomes must be ok/ValueError/TypeError; rerun one with "
                 f"`python tests/test_fuzz_api.py show {target} INDEX`):"]
        for i, o in sorted(bad.items())[:max_shown]:
            lines.append(f"  [{i}] {o}\n      {repros.get(i, '')}")
        if len(bad) > max_shown:
            lines.append(f"  ... and {len(bad) - max_shown} more")
        pytest.fail("\n".join(lines), pytrace=False)


# =========================================================================================
# 2. Build: a model around one hostile layer, on a hostile input shape (subprocess)
# =========================================================================================

# Sizes the build fuzz draws: small ones, and ones whose products exceed the core's limit of
# 2**31 - 1 values (46341**2 and 65536**2 do; 2**31 - 1 itself does with any bias added). No
# medium sizes: a model just under the limit is legal and needs up to 8 GiB, more than the
# child may allocate, and would be a slow success rather than a finding.
BUILD_DIMS = st.one_of(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6),
                       st.sampled_from([0, -1, 2**31 - 1, 2**31, 2**32, 2**63, 10**400, 46341, 65536, -2**31,
                                        np.int64(4), np.int32(3), True, 1.5, None, "3", float("nan")]))
build_hostile = st.one_of(
    BUILD_DIMS,
    st.sampled_from(HOSTILE_SEQS),
    st.sampled_from([v for v in HOSTILE_SCALARS if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                        and 1000 < abs(int(v)) < 2**31)]),
    st.tuples(BUILD_DIMS, BUILD_DIMS),
    st.lists(BUILD_DIMS, min_size=0, max_size=3),
)
BUILD_LAYERS = ["Dense", "Conv2D", "MaxPooling2D", "AveragePooling2D", "Flatten", "Reshape", "Dropout",
                "BatchNormalization", "GlobalAveragePooling2D"]


@st.composite
def build_case(draw):
    target = draw(st.sampled_from(BUILD_LAYERS))
    kwargs = draw(hostile_kwargs(target, hostile_values=build_hostile))
    kwargs.pop("input_shape", None) if draw(st.booleans()) else None
    image = st.tuples(st.integers(3, 9), st.integers(3, 9), small_int)
    good_shape = {"Dense": st.tuples(small_int), "Conv2D": st.one_of(image, st.tuples(small_int, small_int)),
                  "MaxPooling2D": image, "AveragePooling2D": image, "GlobalAveragePooling2D": image,
                  "Reshape": st.sampled_from([(12,), (24,), (2, 3, 4), (4, 3)])}.get(
        target, st.one_of(image, st.tuples(small_int)))
    shape = draw(st.one_of(good_shape, good_shape, st.one_of(
        st.tuples(BUILD_DIMS), st.tuples(BUILD_DIMS, BUILD_DIMS), st.tuples(BUILD_DIMS, BUILD_DIMS, BUILD_DIMS),
        st.lists(BUILD_DIMS, max_size=4), st.sampled_from([None, 5, "abc", (None, 4), (None,), ()]))))
    # follow with Flatten + Dense(3): exercises the next layer's sizes (and gives a model of
    # Flatten, Reshape or Dropout alone a layer with weights)
    weightless = target in ("Flatten", "Reshape", "Dropout", "GlobalAveragePooling2D")
    head = draw(st.sampled_from([False, True, True] if weightless else [False, True]))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    return {"layer": target, "kwargs": kwargs, "shape": shape, "head": head, "dtype": dtype}


def _describe_build(case):
    layers = [f"cr.layers.{_call_src(case['layer'], case['kwargs'])}"]
    if case["head"]:
        layers += ["cr.layers.Flatten()", "cr.layers.Dense(3)"]
    shape = "" if case["shape"] is None else _src(case["shape"])
    return f"cr.Sequential([{', '.join(layers)}], dtype={case['dtype']!r}).build({shape})"


def _run_build(case, raise_errors=False):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = getattr(cr.layers, case["layer"])(**case["kwargs"])
            layers = [layer] + ([cr.layers.Flatten(), cr.layers.Dense(3)] if case["head"] else [])
            model = cr.Sequential(layers, dtype=case["dtype"], seed=0)
            model.build() if case["shape"] is None else model.build(case["shape"])
    except (ValueError, TypeError) as e:
        if raise_errors:
            raise
        return _outcome(e)
    except BaseException as e:  # noqa: BLE001
        if raise_errors:
            raise
        return f"{type(e).__name__}: {str(e)[:300]}"
    # Accepted: sizes within limits; a tiny forward pass gives finite outputs of the stated shape.
    in_shape = model.input_shape
    if math.prod(in_shape) <= 4096 and model.count_params() <= 100_000:
        x = np.random.default_rng(0).normal(size=(2,) + tuple(in_shape))
        try:
            out = model.predict(x)
        except BaseException as e:  # noqa: BLE001 -- a built model must predict
            if raise_errors:
                raise
            return f"built, but predict raised {type(e).__name__}: {str(e)[:300]}"
        if out.shape != (2,) + tuple(model.output_shape):
            return f"built, but predict returned shape {out.shape} for output_shape {model.output_shape}"
        if not np.isfinite(out).all():
            return "built, but predict returned NaN/inf on a small normal input"
    return "ok"


def test_build_fuzz():
    _assert_subprocess_target("build")


# =========================================================================================
# 3. compile (in process)
# =========================================================================================

OPTIMIZERS_GOOD = st.one_of(
    st.sampled_from(["sgd", "SGD", "adam", "adamw", "rmsprop", "adagrad", "Adagrad"]),
    st.builds(lambda cls: cls(), st.sampled_from([O.SGD, O.Adam, O.AdamW, O.RMSprop, O.Adagrad])),
    st.sampled_from([{"class_name": "SGD"}, {"class_name": "Adam", "learning_rate": 0.01},
                     {"class_name": "RMSprop", "learning_rate": {"class_name": "StepDecay",
                                                                 "initial_learning_rate": 0.01, "drop_every": 2}},
                     O.SGD(0.1, momentum=0.9, nesterov=True, clipnorm=1.0), O.Adam(amsgrad=True, clipvalue=0.5),
                     O.AdamW(S.CosineDecay(0.01, 5, warmup_steps=2))]))
OPTIMIZERS_BAD = st.one_of(
    st.sampled_from(["adamx", "", " sgd", {"class_name": "SGD", "momentum": 2.0}, {"class_name": "SGD", "bogus": 1},
                     {"class_name": ["SGD"]}, {"class_name": None}, {"learning_rate": 0.1},
                     {"class_name": "Adam", "learning_rate": {"class_name": ["x"]}},
                     {"class_name": "SGD", "learning_rate": float("nan")}, {1: 2}, O.SGD, O.Optimizer,
                     O.Optimizer(0.1)]),
    hostile)
LOSSES_GOOD = st.sampled_from(list(cr.losses.NAMES) + ["mse", "bce", "cce", "sparse_cce", "MSE",
                                                       cr.losses.MeanSquaredError(), cr.losses.BinaryCrossentropy(),
                                                       cr.losses.CategoricalCrossentropy(),
                                                       cr.losses.SparseCategoricalCrossentropy()])
LOSSES_BAD = st.one_of(st.sampled_from(["hinge", "", None, cr.losses.Loss, cr.losses.Loss()]), hostile)
METRICS_GOOD = st.sampled_from([None, [], ["accuracy"], ["acc"], ("accuracy",), ["accuracy", "acc"]])
METRICS_BAD = st.one_of(st.sampled_from(["accuracy", ["auc"], [None], [_Weird()], {"accuracy"}, [["accuracy"]],
                                         {"accuracy": 1}]), hostile)


def _targets_for(loss, n, units, rng):
    if loss == "sparse_categorical_crossentropy":
        return rng.integers(0, units, size=n)
    if loss == "categorical_crossentropy":
        return np.eye(units)[rng.integers(0, units, size=n)]
    if loss == "binary_crossentropy":
        return rng.integers(0, 2, size=(n, units)).astype(np.float64)
    return rng.normal(size=(n, units))


@settings(FUZZ, max_examples=400)
@given(args=some_kwargs({"optimizer": OPTIMIZERS_GOOD, "loss": LOSSES_GOOD, "metrics": METRICS_GOOD},
                       {"optimizer": OPTIMIZERS_BAD, "loss": LOSSES_BAD, "metrics": METRICS_BAD}),
       build_first=st.booleans(), activation=st.sampled_from(["softmax", "sigmoid", "linear", "relu"]),
       dtype=st.sampled_from(["float32", "float64"]))
def test_compile_fuzz(args, build_first, activation, dtype):
    model = cr.Sequential([cr.layers.Dense(3, activation="tanh"), cr.layers.Dense(2, activation=activation)],
                          dtype=dtype, seed=0)
    if build_first:
        model.build((4,))
    repro = _call_src("model.compile", args)
    try:
        model.compile(**args)
    except (ValueError, TypeError):
        assert not model._compiled, f"{repro} raised but left the model compiled"
        return
    except BaseException as e:  # noqa: BLE001
        raise AssertionError(f"{repro} raised {type(e).__name__}: {e}") from e
    # Accepted: training works and, with a moderate learning rate, stays finite.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4))
    y = _targets_for(model.loss, 6, 2, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hist = model.fit(x, y, epochs=2, batch_size=4, verbose=0, seed=0)
        ev = model.evaluate(x, y)
    assert len(hist.history["loss"]) == 2
    assert all(math.isfinite(v) for v in np.atleast_1d(ev)), (repro, ev)
    if model.optimizer.base_learning_rate <= 1.0 and model.optimizer.weight_decay <= 1.0:
        assert all(np.isfinite(w).all() for w in model.get_weights()), repro
    assert np.isfinite(model.predict(x)).all(), repro


# =========================================================================================
# 4. Data: fit / evaluate / predict / train_on_batch / compute_gradients / set_weights (subprocess)
# =========================================================================================

D_IN, N_CLASSES = 4, 3
MODEL_KINDS = {
    # kind: (loss, layers factory, per-sample input shape, output units)
    "sparse": ("sparse_categorical_crossentropy",
               lambda: [cr.layers.Dense(5, activation="relu"), cr.layers.Dense(N_CLASSES, activation="softmax")],
               (D_IN,), N_CLASSES),
    "cce": ("categorical_crossentropy", lambda: [cr.layers.Dense(N_CLASSES, activation="softmax")],
            (D_IN,), N_CLASSES),
    # the unfused cross-entropy on probabilities (compile refuses it after a linear layer)
    "cce_sigmoid": ("categorical_crossentropy", lambda: [cr.layers.Dense(N_CLASSES, activation="sigmoid")],
                    (D_IN,), N_CLASSES),
    "bce": ("binary_crossentropy", lambda: [cr.layers.Dense(1, activation="sigmoid")], (D_IN,), 1),
    "bce2": ("binary_crossentropy", lambda: [cr.layers.Dense(2, activation="sigmoid")], (D_IN,), 2),
    "mse": ("mse", lambda: [cr.layers.Dense(2, activation="tanh"), cr.layers.Dense(2)], (D_IN,), 2),
    "conv": ("sparse_categorical_crossentropy",
             lambda: [cr.layers.Conv2D(2, 2, activation="relu"), cr.layers.MaxPooling2D(2, padding="same"),
                      cr.layers.Flatten(), cr.layers.Dense(N_CLASSES, activation="softmax")], (4, 4, 1), N_CLASSES),
}
SPECIALS = [float("nan"), float("inf"), float("-inf"), 1e39, -1e39, 1e308, 3.4e38, 65504.0, 1e6, -0.0,
            5e-324, 1e-45, 2.5, -3.0, 0.5]
ARRAY_DTYPES = ["float32", "float64", "float64", "float16", "int8", "uint8", "int64", "uint64", "bool",
                "complex64", "object", "<U3"]


@st.composite
def hostile_array(draw, n, sample_shape, kind="x", units=N_CLASSES):
    """An array for x (kind "x") or targets, mostly of the right shape, with hostile
    dtypes, shapes and values."""
    layout = draw(st.sampled_from(["good"] * 16 + ["rank+1", "rank-1", "size", "n0", "n+1", "scalar", "list",
                                                 "ragged", "none", "str", "1d"]))
    shape = (n,) + tuple(sample_shape)
    if layout == "rank+1":
        shape = shape + (1,)
    elif layout == "rank-1":
        shape = shape[:-1] if len(shape) > 1 else ()
    elif layout == "size":
        shape = shape[:-1] + (shape[-1] + draw(st.sampled_from([-1, 1, 2])),) if shape[-1] > 1 else shape + (2,)
    elif layout == "n0":
        shape = (0,) + shape[1:]
    elif layout == "n+1":
        shape = (n + 1,) + shape[1:]
    elif layout == "1d":
        shape = (n,)
    elif layout == "scalar":
        return draw(st.sampled_from([0, 1.5, float("nan"), None, "x", np.float32(1)]))
    elif layout == "none":
        return None
    elif layout == "str":
        return draw(st.sampled_from(["abc", b"abc", _Weird(), {"x": 1}]))
    elif layout == "ragged":
        return [[1.0, 2.0], [3.0]]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "labels":
        base = rng.integers(0, units, size=shape).astype(np.float64)
        if draw(SOMETIMES):
            base.flat[:] = draw(st.sampled_from([-1.0, float(units), 0.5, 1e10, -0.0, 2**31, 2.0**63]))
    elif kind == "onehot":
        base = np.zeros(shape)
        if len(shape) == 2 and shape[1] > 0 and shape[0] > 0:
            base[np.arange(shape[0]), rng.integers(0, shape[1], size=shape[0])] = 1.0
    elif kind == "binary":
        base = rng.integers(0, 2, size=shape).astype(np.float64)
        if draw(st.booleans()):
            base = rng.uniform(0, 1, size=shape)
    else:
        base = rng.normal(size=shape) * draw(st.sampled_from([1.0, 1.0, 10.0, 1e3]))
    if base.size and draw(SOMETIMES):  # a few special values at drawn places
        for _ in range(draw(st.integers(1, 3))):
            base.flat[draw(st.integers(0, base.size - 1))] = draw(st.sampled_from(SPECIALS))
    dtype = draw(st.sampled_from(["float64", "float64", "float32"] if draw(st.booleans()) else ARRAY_DTYPES))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if dtype == "object":
            arr = base.astype(object)
        elif dtype == "<U3":
            arr = base.astype("<U3")
        elif np.dtype(dtype).kind in "iub":
            arr = np.nan_to_num(base, nan=0, posinf=0, neginf=0).clip(-1e18, 1e18).astype(dtype)
        else:
            arr = base.astype(dtype)
    if layout == "list" or draw(RARE):
        return arr.tolist()
    return arr


def _sample_weights(n):
    good = st.sampled_from([np.ones(n), np.linspace(0.0, 2.0, n), [1.0] * n, np.ones(n, np.float32),
                            np.arange(n, dtype=np.int64) % 3])
    bad = st.one_of(hostile_array(n, (), kind="binary").map(
        lambda a: a if not isinstance(a, np.ndarray) or a.ndim != 2 else a[:, 0]),
        st.sampled_from([-np.ones(n), np.full(n, np.nan), np.full(n, np.inf), np.ones(n + 1), np.full(n, 1e39),
                         np.array(["a"] * n), np.ones((n, 1)), "w", 1.0]))
    return good, bad


def _method_kwargs(method, n, kind):
    sw_good, sw_bad = _sample_weights(n)
    bs_bad = st.sampled_from([0, -1, 1.5, True, None, "4", 2**31, 2**62, 2**63, 10**400, np.uint8(2),
                              float("nan")])
    if method == "fit":
        x_val = np.zeros((2,) + MODEL_KINDS[kind][2])
        y_val = {"sparse_categorical_crossentropy": np.zeros(2)}.get(MODEL_KINDS[kind][0],
                                                                     np.zeros((2, MODEL_KINDS[kind][3])))
        good = {
            "batch_size": st.one_of(st.integers(1, 8), st.just(np.int64(3))),
            "epochs": st.sampled_from([1, 2, np.int64(1)]),
            "verbose": st.sampled_from([0, 0, 0, 2]),
            "validation_split": st.sampled_from([0.0, 0.2, 0.5]),
            "seed": st.one_of(st.none(), st.integers(0, 10), st.sampled_from([2**63, np.uint64(2**64 - 1)])),
            "shuffle": st.booleans(),
            "class_weight": st.sampled_from([None, {0: 1.0, 1: 2.0}, {np.int64(1): 0.5}, {0: 0}]),
            "sample_weight": sw_good,
            "callbacks": st.sampled_from([None, [], (cr.callbacks.Callback(),)]),
            "validation_data": st.sampled_from([None, (x_val, y_val), [x_val, y_val, np.ones(2)]]),
        }
        bad = {
            "batch_size": bs_bad,
            # huge epoch counts are left out: fit(epochs=10**9) is a long fit, not a bug
            "epochs": st.sampled_from([0, -1, 1.5, True, None, "2", float("inf"), 2.0]),
            "verbose": st.sampled_from([3, -1, None, "0", 0.0, 1.0, [0]]),
            "validation_split": st.sampled_from([1.0, -0.1, float("nan"), True, None, "0.2", 10**400, 1e-300,
                                                 0.999999]),
            "seed": st.sampled_from([-1, 2**64 + 1, 10**400, 1.5, True, "1", float("nan"), np.float64(1)]),
            "shuffle": st.sampled_from([0, 1, None, "yes", np.bool_(True)]),
            "class_weight": st.sampled_from([{0: float("nan")}, {5: 1.0}, {True: 1.0}, {0: "2"}, {0: 10**400},
                                             {0: 1e39}, {0: -1.0}, {0: None}, {0.0: 1.0}, [1.0, 2.0], "balanced",
                                             {0: 1e308}, {-1: 1.0}, {2**63: 1.0}, {0: _Weird()}]),
            "sample_weight": sw_bad,
            "callbacks": st.sampled_from([[_Weird()], "abc", [cr.callbacks.Callback], 5, [None]]),
            "validation_data": st.sampled_from(["bad", (1,), (None, None), (x_val,), (x_val, y_val, 1, 2),
                                                (np.zeros((2, 7)), y_val), (np.full_like(x_val, np.nan), y_val),
                                                (x_val, y_val[:1]), (x_val[:0], y_val[:0]), {"x": x_val}]),
        }
    elif method == "evaluate":
        good = {"batch_size": st.sampled_from([1, 3, 256]), "verbose": st.sampled_from([0, 1]),
                "sample_weight": sw_good, "return_dict": st.booleans()}
        bad = {"batch_size": bs_bad, "verbose": st.sampled_from([None, "x", 5, -1]), "sample_weight": sw_bad,
               "return_dict": st.sampled_from([None, "yes", 1])}
    elif method == "predict":
        good = {"batch_size": st.sampled_from([1, 3, 256, np.int64(2)])}
        bad = {"batch_size": bs_bad}
    else:  # train_on_batch, compute_gradients
        good = {"sample_weight": sw_good}
        bad = {"sample_weight": sw_bad}
    return some_kwargs(good, bad)


@st.composite
def data_case(draw):
    kind = draw(st.sampled_from(list(MODEL_KINDS)))
    loss, _, sample_shape, units = MODEL_KINDS[kind]
    dtype = draw(st.sampled_from(["float32", "float64"]))
    method = draw(st.sampled_from(["fit", "fit", "fit", "evaluate", "evaluate", "predict", "train_on_batch",
                                   "compute_gradients", "set_weights"]))
    n = draw(st.sampled_from([1, 2, 5, 6]))
    case = {"kind": kind, "dtype": dtype, "method": method, "n": n}
    if method == "set_weights":
        case["weights"] = draw(weights_strategy(kind))
        return case
    case["x"] = draw(hostile_array(n, sample_shape))
    if method != "predict":
        y_kind = {"sparse_categorical_crossentropy": "labels", "categorical_crossentropy": "onehot",
                  "binary_crossentropy": "binary", "mse": "x"}[loss]
        y_shape = () if y_kind == "labels" else (units,)
        case["y"] = draw(hostile_array(n, y_shape, kind=y_kind, units=units))
    case["kwargs"] = draw(_method_kwargs(method, n, kind))
    return case


def _make_model(kind, dtype):
    loss, layers, sample_shape, _ = MODEL_KINDS[kind]
    model = cr.Sequential(layers(), dtype=dtype, seed=0)
    model.build(sample_shape)
    # clipnorm keeps every step small: training on tame data can never diverge
    model.compile(optimizer=cr.optimizers.SGD(0.05, momentum=0.5, clipnorm=1.0), loss=loss, metrics=["accuracy"])
    return model


@st.composite
def weights_strategy(draw, kind):
    shapes = [w.shape for w in _make_model(kind, "float64").get_weights()]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ws = [rng.normal(size=s) * 0.5 for s in shapes]
    how = draw(st.sampled_from(["good", "good", "dtype", "special", "count", "shape", "none", "generator",
                                "not-list", "list-of-lists", "scalar-entry", "strings"]))
    if how == "dtype":
        dt = draw(st.sampled_from(ARRAY_DTYPES))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            i = draw(st.integers(0, len(ws) - 1))
            ws[i] = ws[i].astype(dt)
    elif how == "special":
        i = draw(st.integers(0, len(ws) - 1))
        ws[i] = ws[i].copy()
        ws[i].flat[draw(st.integers(0, ws[i].size - 1))] = draw(st.sampled_from(SPECIALS))
    elif how == "count":
        ws = ws[:-1] if draw(st.booleans()) else ws + [np.zeros(1)]
    elif how == "shape":
        i = draw(st.integers(0, len(ws) - 1))
        ws[i] = draw(st.sampled_from([ws[i].T, ws[i].reshape(-1), ws[i][..., None], np.zeros((0,)), ws[i][:1]]))
    elif how == "none":
        ws[draw(st.integers(0, len(ws) - 1))] = None
    elif how == "generator":
        return iter(ws)
    elif how == "not-list":
        return draw(st.sampled_from([None, 5, "abc", np.zeros(3), {"a": 1}, _Weird()]))
    elif how == "list-of-lists":
        return [w.tolist() for w in ws]
    elif how == "scalar-entry":
        ws[draw(st.integers(0, len(ws) - 1))] = draw(st.sampled_from([0.0, float("nan"), "w", _Weird()]))
    elif how == "strings":
        ws[0] = ws[0].astype("<U4")
    return ws


def _describe_data(case):
    lines = [f"model = _make_model({case['kind']!r}, {case['dtype']!r})   # in tests/test_fuzz_api.py"]
    if case["method"] == "set_weights":
        ws = case["weights"]
        lines.append(f"model.set_weights({'iter([...])' if hasattr(ws, '__next__') else _src(ws)})")
        return "; ".join(lines)
    args = ["_X" if case["x"] is globals().get("_X") else _src(case["x"])]
    args += [_src(case["y"])] if "y" in case else []
    args += [f"{k}={_src(v)}" for k, v in case.get("kwargs", {}).items()]
    lines.append(f"model.{case['method']}({', '.join(args)})")
    return "; ".join(lines)


def _as_num(v):
    """``v`` as a float64 ndarray when it is numeric data, else None."""
    try:
        a = np.asarray(v)
    except Exception:  # noqa: BLE001
        return None
    if a.dtype == object or a.dtype.kind not in "biuf":
        return None
    with np.errstate(all="ignore"):
        return a.astype(np.float64)


def _must_reject(case, model):
    """Why this call has to raise ValueError/TypeError (None if it may succeed)."""
    kind, dtype = case["kind"], case["dtype"]
    loss, _, sample_shape, units = MODEL_KINDS[kind]
    limit = F32_MAX if dtype == "float32" else math.inf
    arrays = [("x", case.get("x")), ("y", case.get("y")),
              ("sample_weight", case.get("kwargs", {}).get("sample_weight"))]
    vd = case.get("kwargs", {}).get("validation_data")
    if isinstance(vd, (tuple, list)):
        arrays += [(f"validation_data[{i}]", v) for i, v in enumerate(vd)]
    for name, v in arrays:
        a = _as_num(v)
        if a is None or a.size == 0:
            continue
        if not np.isfinite(a).all():
            return f"{name} holds NaN/inf"
        if np.abs(a).max() > limit:
            return f"{name} holds {np.abs(a).max():.3g}, beyond the {dtype} range"
    y = _as_num(case.get("y"))
    if y is not None and y.size and np.isfinite(y).all():
        if loss == "binary_crossentropy" and ((y < 0) | (y > 1)).any():
            return "binary_crossentropy targets outside [0, 1]"
        if loss == "categorical_crossentropy" and (y < 0).any():
            return "negative categorical_crossentropy targets"
        if loss == "sparse_categorical_crossentropy" and ((y < 0) | (y >= units) | (y != np.floor(y))).any():
            return "sparse labels not integers in [0, classes)"
    sw = _as_num(case.get("kwargs", {}).get("sample_weight"))
    if sw is not None and sw.size and (sw < 0).any():
        return "negative sample_weight"
    cw = case.get("kwargs", {}).get("class_weight")
    if isinstance(cw, dict):
        for w in cw.values():
            if isinstance(w, (int, float, np.number)) and not isinstance(w, bool):
                try:
                    v = float(w)
                except OverflowError:
                    v = math.inf
                if not (0 <= v <= limit and math.isfinite(v)):
                    return f"class_weight value {_src(w)} is negative, NaN/inf or beyond the {dtype} range"
    if case["method"] == "set_weights":
        ws = case["weights"]
        if isinstance(ws, list):
            for w in ws:
                a = _as_num(w)
                if a is not None and a.size and (not np.isfinite(a).all() or np.abs(a).max() > limit):
                    return "weights hold NaN/inf or values beyond the model's dtype"
    return None


def _tame(case):
    """All numbers involved are moderate: an accepted call must leave finite weights."""
    kw = case.get("kwargs", {})
    for v in (case.get("x"), case.get("y"), kw.get("sample_weight")):
        a = _as_num(v)
        if a is not None and a.size and not (np.isfinite(a).all() and np.abs(a).max() <= 1e4):
            return False
    cw = kw.get("class_weight")
    if isinstance(cw, dict):
        try:
            if any(not (0 <= float(w) <= 1e4) for w in cw.values()):
                return False
        except (TypeError, ValueError, OverflowError):
            return False
    return True


def _run_data(case, raise_errors=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _make_model(case["kind"], case["dtype"])
        before = model.get_weights()
        method = case["method"]
        try:
            if method == "set_weights":
                result = model.set_weights(case["weights"])
            else:
                args = [case["x"]] + ([case["y"]] if "y" in case else [])
                result = getattr(model, method)(*args, **case.get("kwargs", {}))
        except (ValueError, TypeError) as e:
            if raise_errors:
                raise
            after = model.get_weights()
            if any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(before, after)):
                return f"raised {type(e).__name__} but changed the weights: {str(e)[:200]}"
            return _outcome(e)
        except BaseException as e:  # noqa: BLE001
            if raise_errors:
                raise
            return f"{type(e).__name__}: {str(e)[:300]}"
    why = _must_reject(case, model)
    if why:
        return f"accepted ({why}); returned {_src(result)[:120]}"
    weights = model.get_weights()
    if method == "set_weights":
        ws = case["weights"]
        expect = [np.asarray(w, dtype=weights[0].dtype) for w in ws] if isinstance(ws, list) else None
        if expect is not None and not all(np.array_equal(a, b) for a, b in zip(weights, expect)):
            return "set_weights accepted the arrays but the model holds different values"
        return "ok"
    if _tame(case):
        if not all(np.isfinite(w).all() for w in weights):
            return f"accepted tame data but left NaN/inf weights; returned {_src(result)[:120]}"
        if method == "predict":
            if not np.isfinite(result).all():
                return "predict returned NaN/inf on tame data"
        elif method == "fit":
            if not all(math.isfinite(v) for vals in result.history.values() for v in vals):
                return f"fit logged NaN/inf on tame data: {result.history}"
        elif method == "compute_gradients":
            if not (math.isfinite(result[0]) and all(np.isfinite(g).all() for g in result[1])):
                return "compute_gradients returned NaN/inf on tame data"
        elif isinstance(result, dict):
            if not all(math.isfinite(v) for v in result.values()):
                return f"{method} returned NaN/inf on tame data: {result}"
        elif not all(math.isfinite(v) for v in np.atleast_1d(result)):
            return f"{method} returned NaN/inf on tame data: {result}"
    if method == "predict":
        n = len(case["x"]) if hasattr(case["x"], "__len__") else None
        if result.shape != (n,) + tuple(model.output_shape):
            return f"predict returned shape {result.shape}"
    return "ok"


def test_data_fuzz():
    _assert_subprocess_target("data")


_DEFAULT = object()
_X = np.random.default_rng(0).normal(size=(6, D_IN))


def _dc(method, x=None, y=_DEFAULT, kind="sparse", dtype="float32", **kwargs):
    case = {"kind": kind, "dtype": dtype, "method": method, "n": 6, "kwargs": kwargs}
    if method == "set_weights":
        case["weights"] = x
        return case
    case["x"] = (_X if MODEL_KINDS[kind][2] == (D_IN,) else np.zeros((6,) + MODEL_KINDS[kind][2])) if x is None else x
    if method != "predict":
        if y is _DEFAULT:
            y = {"sparse": np.arange(6) % 3, "bce": np.ones(6), "cce": np.eye(3)[np.arange(6) % 3],
                 "mse": np.zeros((6, 2))}[kind]
        case["y"] = y
    return case


_W32 = [np.zeros((D_IN, 5)), np.zeros(5), np.zeros((5, N_CLASSES)), np.zeros(N_CLASSES)]
# Hand-picked cases that must always run (the random draw need not hit them): the known
# overflow and domain bugs of the issue, and huge integer arguments.
DATA_TABLE = [
    _dc("fit", np.where(np.arange(24).reshape(6, 4) == 5, 1e39, _X)),           # beyond float32 -> inf
    _dc("predict", np.full((2, D_IN), -1e39)),
    _dc("evaluate", _X, np.full(6, 1e39), kind="mse"),
    _dc("fit", _X, np.array([0, 1, 2.5, 0, 1, 0]), kind="bce"),                  # BCE targets outside [0, 1]
    _dc("evaluate", _X, np.array([0, 1, -1.0, 0, 1, 0]), kind="bce"),
    _dc("train_on_batch", _X, -np.eye(3)[np.arange(6) % 3], kind="cce"),         # negative one-hot
    _dc("fit", _X, np.array([0, 1, 3, 0, 1, 2])),                                # labels out of range
    _dc("fit", _X, np.array([0, 1, 0.5, 0, 1, 2])),
    _dc("fit", _X, np.array([0, 1, -1, 0, 1, 2])),
    _dc("fit", _X, np.array([0, 1, 2**63, 0, 1, 2], dtype=np.uint64)),
    _dc("fit", class_weight={0: 10**400}),
    _dc("fit", class_weight={0: float("inf")}),
    _dc("fit", class_weight={0: 1e39}),
    _dc("fit", class_weight={2**63: 1.0}),
    _dc("fit", class_weight={0: "2"}, verbose=0),
    _dc("fit", validation_split=10**400),
    _dc("fit", validation_split=float("nan")),
    _dc("fit", batch_size=2**62, verbose=0),
    _dc("fit", batch_size=2**63),
    _dc("fit", batch_size=10**400),
    _dc("evaluate", batch_size=2**63),
    _dc("predict", batch_size=10**400),
    _dc("predict", batch_size=2**62),
    _dc("fit", seed=10**400, verbose=0),
    _dc("fit", seed=2**64, verbose=0),
    _dc("fit", epochs=np.int64(2), verbose=np.int64(0)),
    _dc("fit", sample_weight=np.full(6, 1e39)),
    _dc("fit", sample_weight=np.full(6, np.uint64(10**19)), verbose=0),
    _dc("fit", validation_data=(_X, np.array([0, 1, 7, 0, 1, 2]))),
    _dc("fit", validation_data=(np.full((2, D_IN), 1e39), np.zeros(2))),
    _dc("fit", _X.astype(np.complex128)),
    _dc("fit", _X.astype(object)),
    _dc("fit", np.full((6, D_IN), 65504, np.float16), verbose=0),
    _dc("fit", np.full((6, D_IN), np.iinfo(np.uint64).max, np.uint64), verbose=0),
    _dc("fit", np.ones((6, D_IN), bool), verbose=0),
    _dc("fit", _X[:, :0]),
    _dc("fit", _X[:0], np.zeros(0)),
    _dc("fit", _X, None, kind="sparse"),
    _dc("set_weights", [w + 1e39 if i == 0 else w for i, w in enumerate(_W32)]),
    _dc("set_weights", [w.astype(np.float16) for w in _W32]),
    _dc("set_weights", [w.tolist() for w in _W32]),
    _dc("set_weights", _W32[:3] + [np.array([1e308, 0, 0])]),
    _dc("set_weights", _W32[:3] + [np.array([1e308, 0, 0])], dtype="float64"),
]


def test_data_table():
    _assert_subprocess_target("data_table")


# =========================================================================================
# 5. set_num_threads (subprocess: a bad value used to reach OpenMP and abort the process)
# =========================================================================================

THREAD_VALUES = [0, -1, 1000, 100000, 2**31 - 1, 2**31, 2**63, 10**400, 1.5, "2", None, True, False,
                 np.int64(2), np.int32(1), 2.0, 1, 2, "MAX", "MAX+1"]


def _run_threads(value, raise_errors=False):
    from chainrule import system
    old = cr.get_num_threads()
    n = {"MAX": system.MAX_THREADS, "MAX+1": system.MAX_THREADS + 1}.get(value, value) \
        if isinstance(value, str) else value
    try:
        cr.set_num_threads(n)
    except (ValueError, TypeError) as e:
        if raise_errors:
            raise
        if cr.get_num_threads() != old:
            return f"raised {type(e).__name__} but changed the thread count to {cr.get_num_threads()}"
        msg = str(e)
        if "n=" not in msg and repr(n) not in msg:
            return f"{type(e).__name__} without the value: {msg}"
        return _outcome(e)
    except BaseException as e:  # noqa: BLE001
        if raise_errors:
            raise
        return f"{type(e).__name__}: {e}"
    try:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= system.MAX_THREADS:
            return f"accepted {n!r}"
        if cr.get_num_threads() != int(n):
            return f"get_num_threads() == {cr.get_num_threads()} after set_num_threads({n!r})"
        model = _make_model("conv", "float32")
        x = np.random.default_rng(0).normal(size=(8, 4, 4, 1))
        model.fit(x, np.arange(8) % N_CLASSES, epochs=1, batch_size=4, verbose=0, seed=0)
        if not all(np.isfinite(w).all() for w in model.get_weights()):
            return "a tiny fit left NaN/inf weights"
        return "ok"
    finally:
        cr.set_num_threads(old)


def test_set_num_threads_fuzz():
    _assert_subprocess_target("threads")


@pytest.mark.parametrize("n", [1, 2, np.int64(3)])
def test_set_num_threads_roundtrip_in_process(n):
    old = cr.get_num_threads()
    try:
        cr.set_num_threads(n)
        if cr.cpu_info()["openmp"]:
            assert cr.get_num_threads() == n
        model = _make_model("sparse", "float32")
        x = np.random.default_rng(0).normal(size=(16, D_IN))
        model.fit(x, np.arange(16) % N_CLASSES, epochs=1, verbose=0, seed=0)
        assert all(np.isfinite(w).all() for w in model.get_weights())
    finally:
        cr.set_num_threads(old)
    assert cr.get_num_threads() == old


@pytest.mark.parametrize("n,exc", [(0, ValueError), (-1, ValueError), (100000, ValueError), (2**63, ValueError),
                                   (1.5, TypeError), ("2", TypeError), (None, TypeError), (True, TypeError)])
def test_set_num_threads_rejects_with_the_value(n, exc):
    old = cr.get_num_threads()
    with pytest.raises(exc, match=r"set_num_threads.*n=" + __import__("re").escape(repr(n))):
        cr.set_num_threads(n)
    assert cr.get_num_threads() == old


SUBPROCESS_TARGETS = {
    # name: (strategy or None, number of examples or the list of cases, run, describe,
    #        whether to cap the address space at CHILD_MEMORY)
    "build": (build_case(), 600, _run_build, _describe_build, True),
    "data": (data_case(), 900, _run_data, _describe_data, True),
    "data_table": (None, DATA_TABLE, _run_data, _describe_data, True),
    # no cap: nothing here allocates much, but MAX_THREADS threads reserve stacks
    "threads": (None, THREAD_VALUES, _run_threads, lambda v: f"cr.set_num_threads({_src(v)})", False),
}


# =========================================================================================
# 6. Regressions: hostile values once accepted or answered with the wrong exception type
# =========================================================================================

REGRESSIONS = [
    # integers too large for a float: OverflowError before
    (lambda: O.SGD(10**400), ValueError, r"SGD: learning_rate must be a finite number.*received 1000"),
    (lambda: O.Adam(beta_1=10**400), ValueError, r"Adam: beta_1"),
    (lambda: S.StepDecay(0.1, drop_every=10**400), ValueError, r"StepDecay: drop_every"),
    (lambda: R.L2(10**400), ValueError, r"regularizer l2"),
    (lambda: cr.activations.LeakyReLU(10**400), ValueError, r"alpha must be a finite number"),
    (lambda: C.ReduceLROnPlateau(factor=10**400), ValueError, r"factor"),
    (lambda: C.EarlyStopping(min_delta=10**400), ValueError, r"EarlyStopping: min_delta"),
    # bools and strings are not numbers (True was 1.0, "0.1" was 0.1)
    (lambda: O.SGD(True), TypeError, r"SGD: learning_rate must be a number; received True"),
    (lambda: O.SGD("0.1"), TypeError, r"learning_rate must be a number; received '0.1'"),
    (lambda: O.Adam(epsilon=True), TypeError, r"epsilon"),
    (lambda: O.SGD(0.1, momentum=np.bool_(True)), TypeError, r"momentum"),
    (lambda: S.CosineDecay(True, 10), TypeError, r"initial_learning_rate"),
    (lambda: R.L1(True), TypeError, r"regularizer l1 must be a number; received True"),
    (lambda: R.L1L2(l2="0.5"), TypeError, r"regularizer l2"),
    (lambda: cr.activations.LeakyReLU(True), TypeError, r"alpha must be a number; received True"),
    (lambda: cr.activations.LeakyReLU("0.2"), TypeError, r"alpha must be a number"),
    (lambda: O.SGD(np.array([0.1])), TypeError, r"learning_rate"),
    # a growing "decay" overflows the learning rate to inf; a tiny period overflowed floor()
    (lambda: S.ExponentialDecay(0.1, decay_steps=1, decay_rate=1.5), ValueError, r"decay_rate.*<= 1\.0"),
    # beyond the float32 range: inf in a float32 model, NaN weights after one step
    (lambda: O.SGD(1e39), ValueError, r"SGD: learning_rate must be at most 3\.4028235e\+38"),
    (lambda: O.AdamW(weight_decay=1e39), ValueError, r"AdamW: weight_decay must be at most"),
    (lambda: S.CosineDecay(1e39, 10), ValueError, r"CosineDecay: initial_learning_rate must be at most"),
    (lambda: R.L2(1e39), ValueError, r"regularizer l2 must be at most"),
    (lambda: cr.activations.LeakyReLU(1e39), ValueError, r"alpha must be at most"),
    # epsilon below the smallest normal float32 is 0 in a float32 model: 0/0 = NaN weights
    (lambda: O.Adam(epsilon=1e-50), ValueError, r"Adam: epsilon must be >= 1\.17"),
    (lambda: O.RMSprop(epsilon=5e-324), ValueError, r"RMSprop: epsilon"),
    (lambda: O.Adagrad(epsilon=1e-40), ValueError, r"Adagrad: epsilon"),
    # identifier lookups with unhashable names: "unhashable type" TypeErrors before
    (lambda: O.get({"class_name": ["SGD"]}), ValueError, r"optimizer: unknown class_name \['SGD'\]"),
    (lambda: S.get({"class_name": ["StepDecay"]}), ValueError, r"unknown learning-rate schedule"),
    (lambda: cr.activations.Activation(["relu"]), TypeError, r"activation: name must be a string"),
    (lambda: cr.activations.get({"name": {"relu": 1}}), TypeError, r"activation: name must be a string"),
    # a Loss that is not one of the built-in ones: KeyError at compile (or at build) before
    (lambda: cr.Sequential([L.Dense(2)]).compile("sgd", loss=cr.losses.Loss()), ValueError,
     r"loss: Loss\(\) is not a built-in loss"),
    (lambda: cr.losses.get(type("Hinge", (cr.losses.Loss,), {"name": "hinge"})()), ValueError, r"'hinge'"),
    # base classes (and user subclasses) the core cannot run: ValueError at compile, not an
    # AttributeError / a core error with an empty name
    (lambda: O.get(O.Optimizer(0.1)), ValueError, r"optimizer: Optimizer is not a built-in optimizer"),
    (lambda: O.SGD(type("Mine", (S.LearningRateSchedule,), {})()), ValueError,
     r"learning-rate schedule Mine is not a built-in one"),
    # callbacks: garbage was accepted (nan min_delta, truthy strings, int() truncation)
    (lambda: C.EarlyStopping(min_delta=float("nan")), ValueError, r"min_delta"),
    (lambda: C.EarlyStopping(min_delta="0.1"), TypeError, r"min_delta"),
    (lambda: C.EarlyStopping(patience=2.5), TypeError, r"patience"),
    (lambda: C.EarlyStopping(patience=True), TypeError, r"patience"),
    (lambda: C.EarlyStopping(restore_best_weights="no"), TypeError, r"restore_best_weights"),
    (lambda: C.EarlyStopping(verbose="loud"), ValueError, r"verbose"),
    (lambda: C.ReduceLROnPlateau(patience=2.7), TypeError, r"patience"),
    (lambda: C.ReduceLROnPlateau(patience=float("inf")), TypeError, r"patience"),
    (lambda: C.ReduceLROnPlateau(cooldown=-1), ValueError, r"cooldown"),
    (lambda: C.ReduceLROnPlateau(min_lr=float("nan")), ValueError, r"min_lr"),
    (lambda: C.ReduceLROnPlateau(min_lr=-1.0), ValueError, r"min_lr"),
    (lambda: C.ReduceLROnPlateau(factor="0.5"), TypeError, r"factor"),
    (lambda: C.ModelCheckpoint(None), TypeError, r"ModelCheckpoint: filepath"),
    (lambda: C.ModelCheckpoint(""), ValueError, r"ModelCheckpoint: filepath"),
    (lambda: C.ModelCheckpoint("m-{epoch"), ValueError, r"not a valid format string"),
    (lambda: C.ModelCheckpoint("m-{}.crm"), ValueError, r"named fields"),
    (lambda: C.ModelCheckpoint("m.crm", save_best_only="yes"), TypeError, r"save_best_only"),
]


@pytest.mark.parametrize("make,exc,pattern", REGRESSIONS)
def test_regressions(make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make()


def test_schedules_with_a_tiny_period_evaluate_without_overflow():
    # floor(step / 1e-308) was floor(inf): OverflowError
    assert S.StepDecay(0.1, drop_every=1e-308)(1000) == 0.0
    assert S.StepDecay(0.1, drop_every=1e-308, factor=1.0)(1000) == 0.1
    assert S.ExponentialDecay(0.1, 1e-308, 0.5, staircase=True)(1000) == 0.0
    assert S.ExponentialDecay(0.1, 1e-308, 0.5)(1000) == 0.0


def test_hostile_numbers_that_are_fine_are_kept():
    assert O.SGD(np.float32(0.5)).learning_rate == 0.5
    assert O.SGD(np.int64(1)).learning_rate == 1.0
    assert O.SGD(fractions.Fraction(1, 4)).learning_rate == 0.25
    assert O.Adam(epsilon=O.MIN_EPSILON).epsilon == O.MIN_EPSILON
    assert R.L2(np.float64(0.1)).l2 == 0.1
    assert C.EarlyStopping(min_delta=-0.5, patience=np.int64(2)).min_delta == 0.5
    assert C.ReduceLROnPlateau(patience=0).patience == 0
    assert C.ModelCheckpoint(os.path.join("d", b"m.crm".decode())).filepath.endswith("m.crm")
    assert C.ModelCheckpoint(b"m-{epoch}.crm").filepath == "m-{epoch}.crm"


def test_model_checkpoint_unknown_field_is_a_value_error(tmp_path):
    model = _make_model("sparse", "float32")
    x = np.random.default_rng(0).normal(size=(6, D_IN))
    ck = C.ModelCheckpoint(str(tmp_path / "m-{val_los:.3f}.crm"), monitor="loss")
    with pytest.raises(ValueError, match=r"ModelCheckpoint: cannot fill in filepath .*'loss'.*KeyError"):
        model.fit(x, np.arange(6) % N_CLASSES, epochs=1, verbose=0, callbacks=[ck])


# =========================================================================================

if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "child":
        _child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) == 4 and sys.argv[1] == "show":
        _child(sys.argv[2], int(sys.argv[3]), None, show=True)
    else:
        sys.exit("usage: python tests/test_fuzz_api.py show {build|data|threads} INDEX")
