"""How the core's OpenMP threads behave next to other work: the bounded spin set before the
core loads (and only when the user chose no wait policy), the caller's floating-point mode
after a call, and the thread limit joblib's worker processes set."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import chainrule as cr

PROBE = "import os, chainrule; print('SPIN_ENV_LEFT', 'GOMP_SPINCOUNT' in os.environ and os.environ['GOMP_SPINCOUNT'])"


def _import_report(**env_extra):
    """Import chainrule in a fresh process with libgomp's settings report switched on."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(OMP_DISPLAY_ENV="verbose", **env_extra)
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    spin = [line.split("=", 1)[1].strip().strip("'") for line in out.splitlines() if "GOMP_SPINCOUNT" in line
            and "=" in line and "SPIN_ENV_LEFT" not in line]
    left = [line.split(None, 1)[1] for line in out.splitlines() if line.startswith("SPIN_ENV_LEFT")]
    return spin, left


def test_core_openmp_spins_briefly_and_the_setting_does_not_leak():
    spin, left = _import_report()
    if not spin:
        pytest.skip("the core's OpenMP runtime is not libgomp (no GOMP_SPINCOUNT in its report)")
    from chainrule import system
    assert spin == [str(system._SPINCOUNT)]
    assert left == ["False"]  # child processes and libraries loaded later keep their defaults


@pytest.mark.parametrize("env, unexpected", [({"GOMP_SPINCOUNT": "123"}, None),
                                             ({"OMP_WAIT_POLICY": "active"}, None)])
def test_a_users_wait_policy_wins(env, unexpected):
    spin, left = _import_report(**env)
    if not spin:
        pytest.skip("the core's OpenMP runtime is not libgomp")
    from chainrule import system
    if "GOMP_SPINCOUNT" in env:
        assert spin == ["123"]
        assert left == ["123"]
    else:
        assert spin != [str(system._SPINCOUNT)]
        assert left == ["False"]


@pytest.mark.parametrize("threads", [1, 2])
def test_the_callers_denormals_survive_training(threads):
    tiny = np.float32(1e-39)  # a float32 denormal
    assert tiny * np.float32(2) != 0
    previous = cr.get_num_threads()
    cr.set_num_threads(threads)
    try:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((256, 20)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int64)
        m = cr.Sequential([cr.layers.Dense(300, activation="relu"), cr.layers.Dense(2, activation="softmax")], seed=0)
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        m.fit(x, y, epochs=1, batch_size=256, verbose=0)
        m.predict(x)
    finally:
        cr.set_num_threads(previous)
    # the calling thread's mode is restored: denormals are still computed, not flushed
    assert tiny * np.float32(2) == np.float32(2e-39)
    assert np.float32(1e-38) / np.float32(100) != 0


def test_joblib_workers_thread_limit_is_respected():
    joblib = pytest.importorskip("joblib")

    def probe():
        import os
        import chainrule
        return os.environ.get("OMP_NUM_THREADS"), chainrule.get_num_threads()

    out = joblib.Parallel(n_jobs=2, backend="loky")(joblib.delayed(probe)() for _ in range(2))
    for limit, threads in out:
        assert limit is not None  # loky limits the threads of its workers' native libraries
        assert threads == int(limit)


WORKERS_FLUSHED = r"""
import numpy as np, chainrule as cr
# Dense(512) without bias or activation on 1e-20 inputs with 1e-20 weights: every product is
# 1e-40, a float32 denormal, which flush-to-zero makes 0; without it each output is ~1e-38.
m = cr.Sequential([cr.layers.Dense(512)], seed=0)
m.build((784,))
m.set_weights([np.full((784, 512), 1e-20, np.float32), np.zeros(512, np.float32)])
x = np.full((64, 784), 1e-20, np.float32)   # 64 x 512 x 784: the GEMM is split over the threads
def flushed():
    return bool((m.predict(x, batch_size=64) == 0).all())
cr.set_num_threads(1)
ok = [flushed()]          # one thread: the caller alone
cr.set_num_threads(2)
# The worker threads start outside any training or prediction call (the GEMM test hook
# opens a 2-thread region without flushing): they begin unflushed, as when other OpenMP
# code in the process started them.
from chainrule import _core
a = np.ones((256, 256), np.float32)
_core._gemm(cr.cpu_info()["kernel"], False, False, a, a, np.zeros((256, 256), np.float32), 1.0, 0.0)
ok.append(flushed())      # a larger team than flushed so far: its workers are flushed first
ok.append(flushed())      # and stay so (no region opened for them this time)
cr.set_num_threads(1)
ok.append(flushed())
cr.set_num_threads(2)
ok.append(flushed())      # the same pool again
print("FLUSHED", ok)
"""


def test_worker_threads_are_flushed_whatever_the_team_history():
    """The core flushes denormals on every thread that computes for it: after the team grows,
    and on later calls (when the guard opens no region for the workers). Outputs of products
    that are all float32 denormals must be 0."""
    if not cr.cpu_info()["openmp"]:
        pytest.skip("no OpenMP")
    env = dict(os.environ, OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", WORKERS_FLUSHED], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "FLUSHED [True, True, True, True, True]" in r.stdout, r.stdout


FORKED = r"""
import os, warnings, numpy as np, chainrule as cr
cr.set_num_threads(2)
x = np.ones((64, 784), np.float32)
y = np.arange(64) % 10
m = cr.Sequential([cr.layers.Dense(512, activation="relu"), cr.layers.Dense(10, activation="softmax")], seed=0)
m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
m.build((784,))

def child_work():
    m.fit(x, y, epochs=1, batch_size=64, verbose=0)
    return m.predict(x).shape == (64, 10)

pid = os.fork()          # before any parallel work: the child keeps its threads
if pid == 0:
    os._exit(0 if cr.get_num_threads() == 2 and child_work() else 3)
_, st = os.waitpid(pid, 0)
early = os.WEXITSTATUS(st)
m.predict(x)             # a team of 2 threads runs here
pid = os.fork()          # after it: GCC's OpenMP cannot start threads in the child
if pid == 0:
    ok = cr.get_num_threads() == 1 and child_work()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        cr.set_num_threads(2)
    ok = ok and cr.get_num_threads() == 1 and child_work()
    ok = ok and any(issubclass(w.category, RuntimeWarning) and "forked" in str(w.message) for w in rec)
    os._exit(0 if ok else 4)
_, st = os.waitpid(pid, 0)
print("FORKED", early, os.WEXITSTATUS(st), cr.get_num_threads())
"""


def test_a_child_forked_after_threads_ran_works_on_one_thread():
    """os.fork after the core has run a team of threads: the child's first parallel region
    used to hang (GCC's OpenMP runtime cannot start threads there). It now trains and
    predicts on one thread, and a request for more threads warns; a child forked before any
    parallel work keeps its threads, and the parent is unaffected."""
    if not cr.cpu_info()["openmp"]:
        pytest.skip("no OpenMP")
    env = dict(os.environ, OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", FORKED], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "FORKED 0 0 2" in r.stdout, r.stdout + r.stderr
